"""Prompt templates (assets/prompts/*.yaml) and their safe rendering.

Titles and genres come from user data. Before they enter a prompt they are flattened to one line
and any chat-template marker or special-token text in them is defused, so data can never open a
new role, end a turn, or be tokenized as a special token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import mean

import yaml

from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.exploration.writers import frequent_genres, genre_stats
from lettingo_dagster.models.base import ChatPrompt
from lettingo_dagster.paths import ASSETS_DIR

PROMPTS_DIR = ASSETS_DIR / "prompts"
USER_PLACEHOLDERS = {
    "count", "history", "genres", "best_genres", "worst_genres", "frequent_genres", "average",
}  # fmt: skip

# Markers of common chat templates (ChatML, Llama 2/3, Gemma, Mistral) and tokenizer specials.
_MARKERS = re.compile(
    r"<\|[^<>|\n]{0,40}\|>"
    r"|\[/?INST\]|<</?SYS>>|</?s>|<(?:unk|pad|bos|eos|mask|cls|sep)>"
    r"|<(?:start|end)_of_turn>",
    re.IGNORECASE,
)


class PromptError(ValueError):
    """A prompt template is missing a part or has an unknown placeholder."""


_LOOKALIKES = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧"})


def _defuse(marker: str) -> str:
    """Visually the same to a reader, but no longer the text a tokenizer matches."""
    defused = marker.translate(_LOOKALIKES)
    return defused if defused != marker else marker[0] + "\u2060" + marker[1:]


def sanitize_field(text: str, special_tokens: Iterable[str] = ()) -> str:
    """One line of plain text that cannot act as markup or a special token."""
    flat = " ".join(str(text).split())
    for token in sorted(set(special_tokens), key=len, reverse=True):
        if token and token in flat:
            flat = flat.replace(token, _defuse(token))
    return _MARKERS.sub(lambda match: _defuse(match.group()), flat)


def render_item_line(item_line: str, item: RatedItem, special_tokens: tuple[str, ...] = ()) -> str:
    """One rated item through a template's `item_line`, its text sanitized."""
    return item_line.format(
        title=sanitize_field(item.title, special_tokens),
        year=item.year if item.year is not None else "year unknown",
        genres=sanitize_field(", ".join(item.genres) or "no genre", special_tokens),
        sentiment=item.label,
        rating=f"{item.rating:g}",
    )


def render_genre_digest(history: UserHistory, special_tokens: tuple[str, ...] = ()) -> str:
    """The window's genres from the best rated to the worst, each with its mean rating and item
    count ("Comedy 4.6 (7); Horror 1.8 (4)"): the aggregate a reader would otherwise compute
    over every item line (genres with fewer than two items are left out, as the writers do)."""
    return (
        "; ".join(
            f"{sanitize_field(genre, special_tokens)} {mean:.1f} ({count})"
            for genre, count, mean in genre_stats(history)
        )
        or "too few items per genre"
    )


# How many genres `{best_genres}` and `{worst_genres}` name.
GENRE_EXTREMES = 4


def render_genre_extremes(
    history: UserHistory, special_tokens: tuple[str, ...] = (), separator: str = ", "
) -> tuple[str, str]:
    """The names of the window's best rated genres, best first, and of its worst rated, worst
    first ("Comedy, Fantasy, Animation, Thriller"), GENRE_EXTREMES of each: the genres a taste
    profile names, in the order it names them, so that a small model only has to copy them."""
    names = [sanitize_field(genre, special_tokens) for genre, _, _ in genre_stats(history)]
    if not names:
        return "too few items per genre", "too few items per genre"
    return separator.join(names[:GENRE_EXTREMES]), separator.join(names[::-1][:GENRE_EXTREMES])


def render_frequent_genres(
    history: UserHistory, special_tokens: tuple[str, ...] = (), separator: str = ", "
) -> str:
    """The names of the window's most rated genres, most first, GENRE_EXTREMES of them."""
    names = [sanitize_field(genre, special_tokens) for genre, _, _ in frequent_genres(history)]
    return separator.join(names[:GENRE_EXTREMES]) if names else "too few items per genre"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str | None
    user: str
    item_line: str
    # Between the names of `{frequent_genres}`, `{best_genres}` and `{worst_genres}`.
    genre_separator: str = ", "

    def render(self, history: UserHistory, special_tokens: Iterable[str] = ()) -> ChatPrompt:
        specials = tuple(special_tokens)
        lines = [render_item_line(self.item_line, item, specials) for item in history.items]
        # The digests are only computed for a template that shows them.
        digest = render_genre_digest(history, specials) if "{genres}" in self.user else ""
        shows_extremes = "{best_genres}" in self.user or "{worst_genres}" in self.user
        sep = self.genre_separator
        best, worst = render_genre_extremes(history, specials, sep) if shows_extremes else ("", "")
        frequent = (
            render_frequent_genres(history, specials, sep)
            if "{frequent_genres}" in self.user
            else ""
        )
        average = (
            mean(item.rating for item in history.items)
            if "{average}" in self.user and history.items
            else 0.0
        )
        return ChatPrompt(
            system=self.system,
            user=self.user.format(
                count=len(lines),
                history="\n".join(lines),
                genres=digest,
                best_genres=best,
                worst_genres=worst,
                frequent_genres=frequent,
                average=f"{average:.1f}",
            ),
        )


def _check_placeholders(path: Path, part: str, text: str, allowed: set[str]) -> None:
    used = set(re.findall(r"\{(\w+)[^}]*\}", text))
    unknown = used - allowed
    if unknown:
        raise PromptError(
            f"{path}: {part}: unknown placeholder(s) {sorted(unknown)}; allowed {sorted(allowed)}"
        )


@lru_cache(maxsize=8)
def load_template(name: str = "exploration", prompts_dir: Path = PROMPTS_DIR) -> PromptTemplate:
    path = prompts_dir / f"{name}.yaml"
    if not path.is_file():
        raise PromptError(f"{path}: prompt template not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [part for part in ("user", "item_line") if not raw.get(part)]
    if missing:
        raise PromptError(f"{path}: missing {', '.join(missing)}")
    _check_placeholders(path, "user", raw["user"], USER_PLACEHOLDERS)
    _check_placeholders(
        path, "item_line", raw["item_line"], {"title", "year", "genres", "sentiment", "rating"}
    )
    separator = raw.get("genre_separator", ", ")
    if not isinstance(separator, str) or not separator or "\n" in separator:
        raise PromptError(f"{path}: genre_separator must be a non-empty one-line string")
    return PromptTemplate(
        name=name,
        system=raw.get("system"),
        user=raw["user"],
        item_line=raw["item_line"],
        genre_separator=separator,
    )
