"""Target examples: what a recommender sees for one (user, target), read from `task_samples`.

A `TargetExample` holds the K recent items (with the user's rating and label), the target's
metadata, its true rating and label, and the ranking task's negatives. It also carries the long
window, but only for the oracle study (`oracle.py`): a recommender never reads it otherwise; the
long window reaches a recommender only through a profile's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import duckdb

from lettingo_dagster.exploration.history import RatedItem, UserHistory, sentiment
from lettingo_dagster.settings import TaskSettings


@dataclass(frozen=True)
class ItemText:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class TargetExample:
    user_id: str
    split: str
    target_index: int  # 0 = the user's last interaction
    recent: tuple[RatedItem, ...]  # the K recent items, oldest first
    target: ItemText
    target_rating: float
    label: str  # the true label (like / neutral / dislike)
    negatives: tuple[ItemText, ...]  # ranking candidates besides the target
    long_window: tuple[RatedItem, ...]  # ONLY for the oracle study

    @property
    def candidates(self) -> tuple[ItemText, ...]:
        """The ranking task's candidates: the target first, then the negatives."""
        return (self.target, *self.negatives)

    def history(self) -> UserHistory:
        """The long window as the profile writers and generators see it."""
        return UserHistory(user_id=self.user_id, split=self.split, items=self.long_window)


def item_text(item: ItemText | RatedItem) -> str:
    """The text a recommender reads for an item: title, year and genres."""
    year = f" ({item.year})" if item.year is not None else ""
    genres = ", ".join(item.genres) if item.genres else "unknown genre"
    return f"{item.title}{year}. Genres: {genres}."


def long_window_text(items: Iterable[RatedItem]) -> str:
    """The raw long window written as a profile (the oracle's "raw long window" condition):
    one clause per item with the user's sentiment in words, oldest first."""
    parts = []
    for item in items:
        year = f" ({item.year})" if item.year is not None else ""
        genres = ", ".join(item.genres) or "unknown genre"
        parts.append(f"{item.label}: {item.title}{year}, {genres}")
    return "; ".join(parts) + "." if parts else ""


_SAMPLES_SQL = """
SELECT user_id, split, target_index, target_item_id, target_rating, label,
       recent_item_ids, recent_ratings, long_item_ids, long_ratings, negative_item_ids
FROM {table}
WHERE dataset = $dataset AND list_contains($splits, split)
ORDER BY user_id, target_index
"""

# Every item the selected samples mention, joined with its metadata (items without metadata get
# a placeholder title so a recommender can still describe them).
_ITEMS_SQL = """
WITH wanted AS (
    SELECT DISTINCT unnest(
        list_concat([target_item_id], recent_item_ids, long_item_ids,
                    coalesce(negative_item_ids, []))) AS item_id
    FROM {table}
    WHERE dataset = $dataset AND list_contains($splits, split)
)
SELECT w.item_id, coalesce(m.title, 'item ' || w.item_id) AS title, m.year,
       coalesce(m.genres, '') AS genres
FROM wanted w
LEFT JOIN items m ON m.dataset = $dataset AND m.item_id = w.item_id
"""


def load_target_examples(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    task: TaskSettings,
    splits: tuple[str, ...] = ("calibration",),
    *,
    table: str = "task_samples",
) -> list[TargetExample]:
    """One example per (user, target) of the given splits, ordered by user then target index."""
    params = {"dataset": dataset, "splits": list(splits)}
    items: dict[str, ItemText] = {}
    for item_id, title, year, genres in con.execute(
        _ITEMS_SQL.format(table=table), params
    ).fetchall():
        items[str(item_id)] = ItemText(
            item_id=str(item_id),
            title=str(title),
            year=int(year) if year is not None else None,
            genres=tuple(g for g in str(genres).split("|") if g),
        )

    def rated(item_ids: list[str], ratings: list[float]) -> tuple[RatedItem, ...]:
        out = []
        for item_id, rating in zip(item_ids, ratings, strict=True):
            meta = items[str(item_id)]
            out.append(
                RatedItem(
                    item_id=meta.item_id,
                    title=meta.title,
                    year=meta.year,
                    genres=meta.genres,
                    rating=float(rating),
                    label=sentiment(float(rating), task),
                )
            )
        return tuple(out)

    examples = []
    long_cache: dict[str, tuple[RatedItem, ...]] = {}
    for row in con.execute(_SAMPLES_SQL.format(table=table), params).fetchall():
        (user_id, split, target_index, target_id, target_rating, label) = row[:6]
        recent_ids, recent_ratings, long_ids, long_ratings, negative_ids = row[6:]
        if user_id not in long_cache:
            long_cache[user_id] = rated(long_ids, long_ratings)
        examples.append(
            TargetExample(
                user_id=str(user_id),
                split=str(split),
                target_index=int(target_index),
                recent=rated(recent_ids, recent_ratings),
                target=items[str(target_id)],
                target_rating=float(target_rating),
                label=str(label),
                negatives=tuple(items[str(i)] for i in negative_ids or ()),
                long_window=long_cache[user_id],
            )
        )
    return examples


SESSION_GAP_SECONDS = 3600

_SESSION_GUARD_SQL = """
SELECT user_id, target_index
FROM {table}
WHERE dataset = $dataset AND list_contains($splits, split)
  AND list_min(list_transform(list_concat(recent_timestamps, long_timestamps),
                              lambda x: abs(x - target_timestamp))) > $gap
"""


def session_guarded_targets(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    splits: tuple[str, ...] = ("calibration",),
    *,
    table: str = "task_samples",
    gap_seconds: int = SESSION_GAP_SECONDS,
) -> set[tuple[str, int]]:
    """(user, target index) of the targets none of whose window items was rated within
    `gap_seconds` of them. Ratings come in sessions: on the other targets, part of what any
    window predicts is its session mates, not the user's taste."""
    rows = con.execute(
        _SESSION_GUARD_SQL.format(table=table),
        {"dataset": dataset, "splits": list(splits), "gap": gap_seconds},
    ).fetchall()
    return {(str(user), int(index)) for user, index in rows}
