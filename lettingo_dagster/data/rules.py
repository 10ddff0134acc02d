"""The data checks of the data stage: which expectations guard `interactions`, `items` and
`task_samples`, and the SQL that prepares the frames they run on."""

from __future__ import annotations

import duckdb
import pandas as pd

from lettingo_dagster.constants import SPLITS
from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.quality import CheckRule, expect
from lettingo_dagster.settings import TaskSettings


def interaction_rules(rating_min: float, rating_max: float) -> list[CheckRule]:
    return [
        CheckRule(
            name="keys_not_null",
            description="user_id, item_id, rating and timestamp are never null or empty.",
            frame="interactions",
            expectations=tuple(
                expect("ExpectColumnValuesToNotBeNull", column=column)
                for column in ("user_id", "item_id", "rating", "timestamp")
            )
            + tuple(
                expect("ExpectColumnValueLengthsToBeBetween", column=column, min_value=1)
                for column in ("user_id", "item_id")
            ),
        ),
        CheckRule(
            name="ratings_within_scale",
            description=f"Every rating lies on the dataset's scale [{rating_min:g}, {rating_max:g}].",
            frame="interactions",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="rating",
                    min_value=rating_min,
                    max_value=rating_max,
                ),
            ),
        ),
        CheckRule(
            name="unique_events",
            description="(user_id, item_id, timestamp) identifies one interaction.",
            frame="interactions",
            expectations=(
                expect(
                    "ExpectCompoundColumnsToBeUnique",
                    column_list=["user_id", "item_id", "timestamp"],
                ),
            ),
        ),
    ]


def item_rules() -> list[CheckRule]:
    return [
        CheckRule(
            name="item_ids_unique",
            description="Each item appears once, with a title.",
            frame="items",
            expectations=(
                expect("ExpectColumnValuesToBeUnique", column="item_id"),
                expect("ExpectColumnValuesToNotBeNull", column="title"),
            ),
            blocking=False,
        ),
    ]


def task_sample_rules(task: TaskSettings | None = None) -> list[CheckRule]:
    """The task_samples checks. Names and descriptions never depend on the preset (check specs
    are made when the definitions load); the bounds come from `task` when the checks run."""
    task = task or TaskSettings()
    label_rules = [
        CheckRule(
            name=f"labels_present_{split}",
            description=f"Every label ({', '.join(LABELS)}) occurs among the {split} targets.",
            frame=f"labels_{split}",
            expectations=(
                expect(
                    "ExpectColumnDistinctValuesToContainSet", column="label", value_set=list(LABELS)
                ),
            ),
        )
        for split in SPLITS
    ]
    return [
        CheckRule(
            name="window_lengths",
            description=(
                "Every target has exactly the preset's K recent items, a long window of L items "
                "and N distinct negatives."
            ),
            frame="windows",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="recent_length",
                    min_value=task.recent_window,
                    max_value=task.recent_window,
                ),
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="long_length",
                    min_value=task.long_window,
                    max_value=task.long_window,
                ),
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="distinct_negatives",
                    min_value=task.negatives_per_target,
                    max_value=task.negatives_per_target,
                ),
            ),
        ),
        CheckRule(
            name="no_leakage",
            description=(
                "No target or recent-window item appears in any long window of the user, no target "
                "in its own recent window, and the long window ends before the recent window."
            ),
            frame="windows",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween", column="leaked_items", min_value=0, max_value=0
                ),
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="target_in_recent",
                    min_value=0,
                    max_value=0,
                ),
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="long_after_recent",
                    min_value=0,
                    max_value=0,
                ),
            ),
        ),
        CheckRule(
            name="negatives_unrated",
            description="No negative item was ever rated by the user (nor is it the target).",
            frame="windows",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="rated_negatives",
                    min_value=0,
                    max_value=0,
                ),
            ),
        ),
        *label_rules,
    ]


def interaction_frame(con: duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    return con.execute(
        'SELECT user_id, item_id, rating, "timestamp" FROM interactions WHERE dataset = ?',
        [dataset],
    ).df()


def item_frame(con: duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    return con.execute("SELECT item_id, title FROM items WHERE dataset = ?", [dataset]).df()


def task_sample_frames(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, pd.DataFrame]:
    """Per-target facts computed independently of how the samples were built."""
    windows = con.execute(
        """
        WITH s AS (SELECT * FROM task_samples WHERE dataset = $dataset),
        user_windows AS (
            -- every item any target of the user sees raw: the targets and their recent windows
            SELECT user_id, list_distinct(flatten(list(list_append(recent_item_ids, target_item_id))))
                       AS raw_items,
                   min(list_min(recent_timestamps)) AS earliest_recent
            FROM s GROUP BY user_id
        ),
        rated AS (
            SELECT s.user_id, s.target_index, count(i.item_id) AS rated_negatives
            FROM s, unnest(s.negative_item_ids) AS n(item_id)
            LEFT JOIN interactions i
              ON i.dataset = $dataset AND i.user_id = s.user_id AND i.item_id = n.item_id
            GROUP BY s.user_id, s.target_index
        )
        SELECT s.user_id, s.target_index, s.split,
               len(s.recent_item_ids) AS recent_length,
               len(s.long_item_ids) AS long_length,
               len(list_distinct(list_filter(s.negative_item_ids, lambda x: x <> s.target_item_id)))
                   AS distinct_negatives,
               len(list_intersect(s.long_item_ids, u.raw_items)) AS leaked_items,
               CAST(list_contains(s.recent_item_ids, s.target_item_id) AS INTEGER)
                   AS target_in_recent,
               CAST(list_max(s.long_timestamps) > u.earliest_recent AS INTEGER) AS long_after_recent,
               r.rated_negatives
        FROM s JOIN user_windows u USING (user_id)
        JOIN rated r ON r.user_id = s.user_id AND r.target_index = s.target_index
        ORDER BY s.user_id, s.target_index
        """,
        {"dataset": dataset},
    ).df()
    labels = con.execute("SELECT split, label FROM task_samples WHERE dataset = ?", [dataset]).df()
    frames = {"windows": windows}
    for split in SPLITS:
        frames[f"labels_{split}"] = labels[labels["split"] == split].reset_index(drop=True)
    return frames
