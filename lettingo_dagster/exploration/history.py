"""User histories as the profile generator sees them: the long window with item text and the
user's sentiment, read from the warehouse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lettingo_dagster.data.samples import rating_label
from lettingo_dagster.settings import TaskSettings

if TYPE_CHECKING:  # the training process on a cluster node needs no warehouse client
    import duckdb


@dataclass(frozen=True)
class RatedItem:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]
    rating: float
    label: str  # like / neutral / dislike, by the task's thresholds


@dataclass(frozen=True)
class UserHistory:
    user_id: str
    split: str
    items: tuple[RatedItem, ...]  # the long window, oldest first


def sentiment(rating: float, task: TaskSettings) -> str:
    """The user's sentiment for a rating: the same rule as the task's labels."""
    return rating_label(rating, task)


def load_long_windows(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    task: TaskSettings,
    splits: tuple[str, ...] = ("train", "calibration", "test"),
) -> list[UserHistory]:
    """Each user's long window (identical across the user's targets) with item metadata."""
    rows = con.execute(
        """
        WITH users AS (
            SELECT user_id, any_value(split) AS split,
                   any_value(long_item_ids) AS item_ids, any_value(long_ratings) AS ratings
            FROM task_samples WHERE dataset = $dataset AND list_contains($splits, split)
            GROUP BY user_id
        ),
        flat AS (
            SELECT u.user_id, u.split, i.pos, u.item_ids[i.pos] AS item_id, u.ratings[i.pos] AS rating
            FROM users u, range(1, len(u.item_ids) + 1) AS i(pos)
        )
        SELECT f.user_id, f.split, f.item_id, coalesce(m.title, 'item ' || f.item_id) AS title,
               m.year, coalesce(m.genres, '') AS genres, f.rating
        FROM flat f
        LEFT JOIN items m ON m.dataset = $dataset AND m.item_id = f.item_id
        ORDER BY f.user_id, f.pos
        """,
        {"dataset": dataset, "splits": list(splits)},
    ).fetchall()
    histories: list[UserHistory] = []
    current: list[RatedItem] = []
    for index, (user_id, split, item_id, title, year, genres, rating) in enumerate(rows):
        current.append(
            RatedItem(
                item_id=item_id,
                title=title,
                year=int(year) if year is not None else None,
                genres=tuple(g for g in genres.split("|") if g),
                rating=float(rating),
                label=sentiment(float(rating), task),
            )
        )
        if index + 1 == len(rows) or rows[index + 1][0] != user_id:
            histories.append(UserHistory(user_id=user_id, split=split, items=tuple(current)))
            current = []
    return histories
