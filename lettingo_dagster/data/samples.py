"""Task samples: targets, recent and long windows, labels, negatives, split.

Two target protocols (`task.targets`):

- `next` (the paper's): the last T interactions are targets. Each target keeps its own K recent
  interactions; the long window holds up to L older interactions and ends before the earliest
  target's recent window.
- `heldout`: T interactions drawn at random (seeded by user and item, so adding data does not
  redraw a user's targets) are held out; the recent window is the K latest remaining
  interactions, the long window the L before them. With `targets_per_user: all` the windows are
  the K + L latest interactions and every earlier one is a target. Ratings come in sessions, so
  next-item targets are mostly predicted by their session mates in the recent window; held-out
  targets measure taste, which is what a profile of the long window can carry.

Either way no profile ever sees a target or a recent window. Users are split by a seeded hash of
their id alone, so adding users never moves existing ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from lettingo_dagster.settings import SplitSettings, TaskSettings

LABELS = ("dislike", "neutral", "like")

TASK_SAMPLE_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "split": "VARCHAR",
    "target_index": "INTEGER",  # 0 = the user's latest target (with `next`: the last interaction)
    "target_item_id": "VARCHAR",
    "target_rating": "DOUBLE",
    "target_timestamp": "BIGINT",
    "label": "VARCHAR",
    "recent_item_ids": "VARCHAR[]",
    "recent_ratings": "DOUBLE[]",
    "recent_timestamps": "BIGINT[]",
    "long_item_ids": "VARCHAR[]",
    "long_ratings": "DOUBLE[]",
    "long_timestamps": "BIGINT[]",
    "negative_item_ids": "VARCHAR[]",
    "user_interactions": "INTEGER",
}


@dataclass(frozen=True)
class TaskSampleStats:
    users_total: int
    users_eligible: int
    users_kept: int
    duplicate_events_dropped: int
    candidate_items: int


def stable_unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(user_ids: list[str], split: SplitSettings) -> pd.DataFrame:
    """user_id, split, split_hash; train below 1 - cal - test, then calibration, then test."""
    hashes = np.array([stable_unit_hash(split.seed, uid) for uid in user_ids], dtype=float)
    train_end = 1.0 - split.calibration_fraction - split.test_fraction
    calibration_end = 1.0 - split.test_fraction
    names = np.where(
        hashes < train_end, "train", np.where(hashes < calibration_end, "calibration", "test")
    )
    frame = pd.DataFrame({"user_id": user_ids, "split": names, "split_hash": hashes})
    if split.max_users_per_split is not None:
        frame = (
            frame.sort_values("split_hash")
            .groupby("split", sort=False)
            .head(split.max_users_per_split)
        )
    return frame.sort_values("user_id").reset_index(drop=True)


def rating_label(rating: float, task: TaskSettings) -> str:
    if rating >= task.like_threshold:
        return "like"
    if rating <= task.dislike_threshold:
        return "dislike"
    return "neutral"


_EVENTS_SQL = """
WITH events AS (
    -- A re-rated item counts once, at its latest rating, so windows never repeat an item.
    SELECT user_id, item_id, rating, "timestamp"
    FROM {interactions}
    WHERE dataset = $dataset
    QUALIFY row_number() OVER (
        PARTITION BY user_id, item_id ORDER BY "timestamp" DESC, rating DESC) = 1
),
sequenced AS (
    SELECT *,
        row_number() OVER (PARTITION BY user_id ORDER BY "timestamp", item_id) - 1 AS pos,
        count(*) OVER (PARTITION BY user_id) AS n
    FROM events
),
eligible AS (
    SELECT s.* FROM sequenced s JOIN kept_users k USING (user_id) WHERE s.n >= $min_n
)
"""

_NEXT_SQL = """
, targets AS (
    SELECT user_id, pos, item_id, rating, "timestamp", n
    FROM eligible WHERE pos >= n - $t
),
recent AS (
    SELECT t.user_id, t.pos AS target_pos,
        list(e.item_id ORDER BY e.pos) AS recent_item_ids,
        list(e.rating ORDER BY e.pos) AS recent_ratings,
        list(e."timestamp" ORDER BY e.pos) AS recent_timestamps
    FROM targets t
    JOIN eligible e ON e.user_id = t.user_id AND e.pos BETWEEN t.pos - $k AND t.pos - 1
    GROUP BY t.user_id, t.pos
),
long_window AS (
    SELECT user_id,
        list(item_id ORDER BY pos) AS long_item_ids,
        list(rating ORDER BY pos) AS long_ratings,
        list("timestamp" ORDER BY pos) AS long_timestamps
    FROM eligible
    WHERE pos BETWEEN n - $t - $k - $l AND n - $t - $k - 1
    GROUP BY user_id
)
"""

# Held-out targets: a draw ordered by md5(seed, user, item), stable across runs and machines and
# independent of the user's other items; the windows are the latest remaining interactions.
_HELDOUT_SQL = """
, drawn AS (
    SELECT *, row_number() OVER (
        PARTITION BY user_id ORDER BY md5($seed || ':' || user_id || ':' || item_id)) AS draw
    FROM eligible
),
remaining AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY pos DESC) AS back
    FROM drawn WHERE $all_targets OR draw > $t
),
targets AS (
    SELECT user_id, pos, item_id, rating, "timestamp", n FROM drawn
    WHERE NOT $all_targets AND draw <= $t
    UNION ALL
    SELECT user_id, pos, item_id, rating, "timestamp", n FROM remaining
    WHERE $all_targets AND back > $k + $l
),
shared_recent AS (
    SELECT user_id,
        list(item_id ORDER BY pos) AS recent_item_ids,
        list(rating ORDER BY pos) AS recent_ratings,
        list("timestamp" ORDER BY pos) AS recent_timestamps
    FROM remaining WHERE back <= $k
    GROUP BY user_id
),
recent AS (
    SELECT t.user_id, t.pos AS target_pos, r.recent_item_ids, r.recent_ratings,
        r.recent_timestamps
    FROM targets t JOIN shared_recent r USING (user_id)
),
long_window AS (
    SELECT user_id,
        list(item_id ORDER BY pos) AS long_item_ids,
        list(rating ORDER BY pos) AS long_ratings,
        list("timestamp" ORDER BY pos) AS long_timestamps
    FROM remaining WHERE back > $k AND back <= $k + $l
    GROUP BY user_id
)
"""

_SELECT_SQL = """
SELECT
    t.user_id,
    k.split,
    CAST(row_number() OVER (PARTITION BY t.user_id ORDER BY t.pos DESC) - 1 AS INTEGER)
        AS target_index,
    t.item_id AS target_item_id,
    t.rating AS target_rating,
    t."timestamp" AS target_timestamp,
    r.recent_item_ids, r.recent_ratings, r.recent_timestamps,
    l.long_item_ids, l.long_ratings, l.long_timestamps,
    CAST(t.n AS INTEGER) AS user_interactions
FROM targets t
JOIN recent r ON r.user_id = t.user_id AND r.target_pos = t.pos
JOIN long_window l ON l.user_id = t.user_id
JOIN kept_users k ON k.user_id = t.user_id
ORDER BY t.user_id, target_index
"""


def windows_sql(task: TaskSettings, interactions_table: str = "interactions") -> str:
    """The query that builds targets and windows under the task's target protocol."""
    protocol = _NEXT_SQL if task.targets == "next" else _HELDOUT_SQL
    return _EVENTS_SQL.format(interactions=interactions_table) + protocol + _SELECT_SQL


def _draw_negatives(
    samples: pd.DataFrame,
    rated_by_user: dict[str, set[str]],
    candidates: np.ndarray,
    task: TaskSettings,
) -> list[list[str]]:
    """N distinct items the user never rated, seeded by (seed, user, target index)."""
    n_wanted = task.negatives_per_target
    negatives: list[list[str]] = []
    for user_id, target_index in zip(samples["user_id"], samples["target_index"], strict=True):
        rated = rated_by_user[user_id]
        if len(candidates) - len(rated) < n_wanted:
            raise ValueError(
                f"user {user_id!r} rated all but {len(candidates) - len(rated)} of "
                f"{len(candidates)} items; cannot draw {n_wanted} negatives"
            )
        seed_key = int(stable_unit_hash(task.negative_seed, f"{user_id}:{target_index}") * 2**63)
        rng = np.random.default_rng(seed_key)
        chosen: list[str] = []
        seen: set[str] = set()
        # Rejection sampling: users rate a small share of the catalog, so few draws are rejected.
        while len(chosen) < n_wanted:
            for index in rng.integers(0, len(candidates), size=2 * n_wanted):
                item = str(candidates[index])
                if item in rated or item in seen:
                    continue
                seen.add(item)
                chosen.append(item)
                if len(chosen) == n_wanted:
                    break
        negatives.append(chosen)
    return negatives


def build_task_samples(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    task: TaskSettings,
    *,
    interactions_table: str = "interactions",
    items_table: str | None = "items",
) -> tuple[pd.DataFrame, TaskSampleStats]:
    """One row per (eligible user, target), with the columns of TASK_SAMPLE_COLUMNS."""
    counts = con.execute(
        f"""
        SELECT count(DISTINCT user_id) AS users,
               count(*) - count(DISTINCT (user_id, item_id)) AS duplicates
        FROM {interactions_table} WHERE dataset = $dataset
        """,
        {"dataset": dataset},
    ).fetchone()
    users_total, duplicates = int(counts[0]), int(counts[1])
    eligible_users = [
        row[0]
        for row in con.execute(
            f"""
            SELECT user_id FROM {interactions_table} WHERE dataset = $dataset
            GROUP BY user_id HAVING count(DISTINCT item_id) >= $min_n ORDER BY user_id
            """,
            {"dataset": dataset, "min_n": task.min_interactions},
        ).fetchall()
    ]
    kept_users = assign_split(eligible_users, task.split)
    con.register("kept_users", kept_users)
    try:
        return _build_registered(
            con,
            dataset,
            task,
            kept_users,
            interactions_table,
            items_table,
            users_total,
            duplicates,
            len(eligible_users),
        )
    finally:
        con.unregister("kept_users")


def _build_registered(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    task: TaskSettings,
    kept_users: pd.DataFrame,
    interactions_table: str,
    items_table: str | None,
    users_total: int,
    duplicates: int,
    users_eligible: int,
) -> tuple[pd.DataFrame, TaskSampleStats]:
    params: dict[str, object] = {
        "dataset": dataset,
        "min_n": task.min_interactions,
        "t": task.min_targets,
        "k": task.recent_window,
        "l": task.long_window,
    }
    if task.targets == "heldout":
        params["seed"] = str(task.target_seed)
        params["all_targets"] = task.targets_per_user == "all"
    samples = con.execute(windows_sql(task, interactions_table), params).df()

    # Negatives come from items with metadata when the dataset has an items table, so the
    # ranking task can describe every candidate.
    catalog_sql = f"SELECT DISTINCT item_id FROM {interactions_table} WHERE dataset = $dataset"
    if items_table is not None:
        catalog_sql += f" INTERSECT SELECT item_id FROM {items_table} WHERE dataset = $dataset"
    candidates = np.array(
        sorted(r[0] for r in con.execute(catalog_sql, {"dataset": dataset}).fetchall()),
        dtype=object,
    )
    rated_by_user: dict[str, set[str]] = {uid: set() for uid in kept_users["user_id"]}
    for uid, iid in con.execute(
        f"""
        SELECT i.user_id, i.item_id FROM {interactions_table} i
        JOIN kept_users k USING (user_id) WHERE i.dataset = $dataset
        """,
        {"dataset": dataset},
    ).fetchall():
        rated_by_user[uid].add(iid)
    samples["negative_item_ids"] = _draw_negatives(samples, rated_by_user, candidates, task)
    samples["label"] = [rating_label(r, task) for r in samples["target_rating"]]
    samples.insert(0, "dataset", dataset)
    samples = samples[list(TASK_SAMPLE_COLUMNS)]
    stats = TaskSampleStats(
        users_total=users_total,
        users_eligible=users_eligible,
        users_kept=int(samples["user_id"].nunique()),
        duplicate_events_dropped=duplicates,
        candidate_items=len(candidates),
    )
    return samples, stats
