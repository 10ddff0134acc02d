"""Reading a profile as an LLM recommender would: the items it names, the genres it likes or
dislikes, and the average rating it states.

An LLM that reads "Favourites: Apollo 13 (1995) 5/5" knows the film; the offline recommender
matches the title to the catalog (exact after normalization, else fuzzy with rapidfuzz) and then
knows the item through its factors (`knowledge.ItemKnowledge`). Each mention carries a polarity
from its stated rating ("5/5") or, failing that, from the last cue word before it ("Disliked:",
"enjoys", "avoids"). Genre statements take their polarity the same way, or from a stated
average next to the genre ("Drama (12 rated, avg 4.1)") relative to the user's overall average.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

_YEAR = re.compile(r"\(\s*(1[89]\d\d|20\d\d)\s*\)")
_RATING = re.compile(r"^\s*(?:\(|,|:|-)?\s*(\d(?:\.\d)?)\s*/\s*5")
_NON_WORD = re.compile(r"[^a-z0-9]+")
# Coarse segments: titles never contain these separators (commas and colons they do contain).
_COARSE = re.compile(r";|\n|\(|\)|\[|\]|\{|\}|\"|(?<=[a-z0-9])\.\s+|(?<=\d/5)\s")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_IN_PIECE_RATING = re.compile(r"(\d(?:\.\d)?)\s*/\s*5")
_STATED_RATING = re.compile(r"\s*\d(?:\.\d)?\s*/\s*5.*$")
_GENRE_AVERAGE = re.compile(r"^\s*\(?\s*(?:\d+\s+rated,?\s*)?(?:avg|average)\s*(\d(?:\.\d+)?)")
_AVERAGE = re.compile(r"(?:avg|average(?: rating)?(?: of)?)\s*[:=]?\s*(\d(?:\.\d+)?)")
_POSITIVE = ("favourite", "favorite", "enjoy", "love", "like", "prefer", "highlight", "keywords",
             "high", "best", "fan of")  # fmt: skip
_NEGATIVE = ("dislike", "avoid", "hate", "low", "poor", "worst", "harsh", "not a fan")
_FUZZY_CUTOFF = 88.0
_MIN_TITLE_CHARS = 4


def normalize_title(text: str) -> str:
    """Lower case, no year, no punctuation: 'Usual Suspects, The (1995)' -> 'usual suspects the'."""
    return _NON_WORD.sub(" ", _YEAR.sub(" ", text.lower())).strip()


def _polarity_of(context: str) -> int:
    """+1 / -1 from the last cue word in `context`, 0 when there is none."""
    text = context.lower()
    best, sign = -1, 0
    for cue in _NEGATIVE:
        at = text.rfind(cue)
        if at > best:
            best, sign = at, -1
        # Blank negative cues out, so "like" is not found inside "dislike".
        text = text.replace(cue, " " * len(cue))
    for cue in _POSITIVE:
        at = text.rfind(cue)
        if at > best:
            best, sign = at, 1
    return sign


@dataclass(frozen=True)
class ProfileReading:
    """What a profile says: item ids with polarity, genre polarities, a stated average rating."""

    items: tuple[tuple[str, float], ...] = ()
    genres: dict[str, float] = field(default_factory=dict)
    stated_mean: float | None = None


class ProfileReader:
    """Reads profiles against one catalog (ids, titles, genres); results are cached by text."""

    def __init__(
        self, item_ids: Sequence[str], titles: Sequence[str], genres: Sequence[str]
    ) -> None:
        self._by_title: dict[str, str] = {}
        for item_id, title in zip(item_ids, titles, strict=True):
            key = normalize_title(title)
            if len(key) >= _MIN_TITLE_CHARS:
                self._by_title.setdefault(key, str(item_id))
        self._choices = list(self._by_title)
        self._genres = sorted({g for g in genres if g}, key=len, reverse=True)
        self._genre_patterns = {
            g: re.compile(r"(?<![a-z])" + re.escape(g.lower()) + r"(?![a-z])") for g in self._genres
        }
        self.read = lru_cache(maxsize=200_000)(self._read)
        # Writers repeat the same titles across users: a segment is matched once.
        self._match = lru_cache(maxsize=200_000)(self._match_segment)

    def _match_segment(self, segment: str) -> str | None:
        key = normalize_title(_STATED_RATING.sub("", segment))
        if len(key) < _MIN_TITLE_CHARS:
            return None
        # Catalogs write "Wizard of Oz, The"; profiles often drop the moved article.
        found = self._by_title.get(key) or self._by_title.get(f"{key} the")
        if found is not None or not self._choices or len(key) > 80:
            return found
        from rapidfuzz import fuzz, process

        best = process.extractOne(key, self._choices, scorer=fuzz.ratio, score_cutoff=_FUZZY_CUTOFF)
        return self._by_title[best[0]] if best else None

    def _items(self, text: str) -> tuple[tuple[str, float], ...]:
        found: dict[str, float] = {}
        position = 0
        for coarse in _COARSE.split(text):
            start = text.find(coarse, position)
            position = max(position, start) if start >= 0 else position
            pieces = [coarse]
            if self._match(coarse) is None:
                pieces = [p for p in re.split(r",\s+|:\s+", coarse) if p]
            for piece in pieces:
                item = self._match(piece.strip())
                if item is None or item in found:
                    continue
                at = text.find(piece, position)
                after = text[at + len(piece) : at + len(piece) + 16] if at >= 0 else ""
                rating = _IN_PIECE_RATING.search(piece) or _RATING.match(after)
                if rating:
                    value = float(rating.group(1))
                    polarity = 1.0 if value >= 4 else -1.0 if value <= 2 else 0.0
                else:
                    sentence_start = max(text.rfind(". ", 0, max(at, 0)), 0)
                    polarity = float(_polarity_of(text[sentence_start : max(at, 0)]) or 1)
                found[item] = polarity
        return tuple(found.items())

    def _read(self, text: str | None) -> ProfileReading:
        if not text or not text.strip():
            return ProfileReading()
        averages = [float(m.group(1)) for m in _AVERAGE.finditer(text.lower())]
        averages = [a for a in averages if 0.5 <= a <= 5.0]
        genres: dict[str, float] = {}
        overall = averages[-1] if averages else None
        for sentence in _SENTENCE.split(text):
            lowered = sentence.lower()
            for genre, pattern in self._genre_patterns.items():
                match = pattern.search(lowered)
                if match is None or genre in genres:
                    continue
                stated = _GENRE_AVERAGE.match(lowered[match.end() :])
                if stated and overall is not None:
                    genres[genre] = max(-1.0, min(1.0, float(stated.group(1)) - overall))
                else:
                    genres[genre] = float(_polarity_of(lowered[: match.start()]) or 1)
        return ProfileReading(items=self._items(text), genres=genres, stated_mean=overall)
