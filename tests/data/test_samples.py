from pathlib import Path

import duckdb
import pandas as pd
import pytest
from synthetic import write_movielens_atomic

from lettingo_dagster.data.samples import assign_split, build_task_samples, rating_label
from lettingo_dagster.settings import SplitSettings, TaskSettings

TASK = TaskSettings(
    recent_window=4,
    long_window=6,
    targets="next",
    targets_per_user=3,
    negatives_per_target=5,
    split=SplitSettings(calibration_fraction=0.3, test_fraction=0.3),
)


def _connection(tmp_path: Path, **kwargs: int) -> tuple[duckdb.DuckDBPyConnection, pd.DataFrame]:
    inter, item = write_movielens_atomic(tmp_path, **kwargs)
    raw = pd.read_csv(inter, sep="\t", dtype=str)
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    frame = raw.assign(
        dataset="syn", rating=raw.rating.astype(float), timestamp=raw.timestamp.astype(int)
    )[["dataset", "user_id", "item_id", "rating", "timestamp"]]
    items = pd.read_csv(item, sep="\t", dtype=str).iloc[:, :1].set_axis(["item_id"], axis=1)
    con = duckdb.connect()
    con.register("raw_interactions", frame)
    con.register("raw_items", items)
    con.execute("CREATE TABLE interactions AS SELECT * FROM raw_interactions")
    con.execute("CREATE TABLE items AS SELECT 'syn' AS dataset, item_id FROM raw_items")
    return con, frame


def test_windows_targets_and_labels_follow_the_method(tmp_path: Path) -> None:
    con, frame = _connection(tmp_path, users=25, min_ratings=5, max_ratings=40)
    samples, stats = build_task_samples(con, "syn", TASK)
    counts = frame.groupby("user_id").size()
    eligible = set(counts[counts >= TASK.min_interactions].index)
    assert stats.users_eligible == len(eligible) > 0
    assert set(samples.user_id) == eligible
    assert len(samples) == len(eligible) * TASK.targets_per_user

    # An independent, plain-Python construction for every user.
    for user_id, rows in samples.groupby("user_id"):
        history = frame[frame.user_id == user_id].sort_values(["timestamp", "item_id"])
        items, ratings = list(history.item_id), list(history.rating)
        n = len(items)
        first_target = n - TASK.targets_per_user
        expected_long = items[
            max(0, first_target - TASK.recent_window - TASK.long_window) : first_target
            - TASK.recent_window
        ]
        for row in rows.itertuples():
            position = n - 1 - row.target_index
            assert row.target_item_id == items[position]
            assert row.target_rating == ratings[position]
            assert row.label == rating_label(ratings[position], TASK)
            assert list(row.recent_item_ids) == items[position - TASK.recent_window : position]
            assert list(row.long_item_ids) == expected_long
            assert len(row.long_item_ids) == TASK.long_window
            assert not set(row.long_item_ids) & set(items[first_target - TASK.recent_window :])


def test_labels_use_thresholds() -> None:
    assert [rating_label(r, TASK) for r in (1, 2, 2.5, 3, 3.5, 4, 5)] == [
        "dislike", "dislike", "neutral", "neutral", "neutral", "like", "like",
    ]  # fmt: skip


def test_negatives_are_unrated_distinct_and_seeded(tmp_path: Path) -> None:
    con, frame = _connection(tmp_path, users=20, items=80, min_ratings=20, max_ratings=50)
    first, _ = build_task_samples(con, "syn", TASK)
    second, _ = build_task_samples(con, "syn", TASK)
    rated = frame.groupby("user_id").item_id.agg(set)
    for row in first.itertuples():
        negatives = list(row.negative_item_ids)
        assert len(negatives) == len(set(negatives)) == TASK.negatives_per_target
        assert not set(negatives) & rated[row.user_id]
    assert list(first.negative_item_ids) == list(second.negative_item_ids)
    reseeded, _ = build_task_samples(con, "syn", TASK.model_copy(update={"negative_seed": 99}))
    assert list(first.negative_item_ids) != list(reseeded.negative_item_ids)


def test_split_is_stable_when_users_are_added() -> None:
    split = SplitSettings(seed=5, calibration_fraction=0.2, test_fraction=0.2)
    before = assign_split([f"u{i}" for i in range(500)], split).set_index("user_id").split
    after = assign_split([f"u{i}" for i in range(1500)], split).set_index("user_id").split
    assert (after.loc[before.index] == before).all()
    shares = after.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.6, abs=0.05)
    assert shares["test"] == pytest.approx(0.2, abs=0.05)
    reseeded = assign_split([f"u{i}" for i in range(500)], split.model_copy(update={"seed": 6}))
    assert (reseeded.set_index("user_id").split != before).any()


def test_max_users_per_split_keeps_smallest_hashes() -> None:
    split = SplitSettings(max_users_per_split=10)
    frame = assign_split([f"u{i}" for i in range(300)], split)
    assert frame.split.value_counts().max() == 10
    full = assign_split([f"u{i}" for i in range(300)], SplitSettings())
    for name, group in full.groupby("split"):
        kept = set(frame[frame.split == name].user_id)
        assert kept == set(group.nsmallest(10, "split_hash").user_id)


def test_rerated_item_counts_once(tmp_path: Path) -> None:
    con, frame = _connection(tmp_path, users=5, min_ratings=30, max_ratings=30)
    user = frame.user_id.iloc[0]
    early = frame[frame.user_id == user].sort_values("timestamp").iloc[0]
    con.execute(
        "INSERT INTO interactions VALUES ('syn', ?, ?, 1.0, ?)",
        [user, early.item_id, int(frame.timestamp.max()) + 10],
    )
    samples, stats = build_task_samples(con, "syn", TASK)
    assert stats.duplicate_events_dropped == 1
    rows = samples[samples.user_id == user]
    last = rows[rows.target_index == 0].iloc[0]
    assert last.target_item_id == early.item_id and last.target_rating == 1.0
    assert early.item_id not in set(rows.long_item_ids.iloc[0])


HELDOUT = TASK.model_copy(update={"targets": "heldout", "targets_per_user": 3, "target_seed": 5})


def test_heldout_targets_are_a_stable_sample_and_windows_the_latest_rest(tmp_path: Path) -> None:
    con, frame = _connection(tmp_path, users=25, min_ratings=5, max_ratings=40)
    samples, _ = build_task_samples(con, "syn", HELDOUT)
    assert len(samples) == samples.user_id.nunique() * 3
    ordered = frame.sort_values(["user_id", "timestamp", "item_id"])
    for user, rows in samples.groupby("user_id"):
        history = ordered[ordered.user_id == user].drop_duplicates("item_id", keep="last")
        targets = set(rows.target_item_id)
        rest = [i for i in history.item_id if i not in targets]
        first = rows.iloc[0]
        # The recent window is the K latest non-target items, the long window the L before.
        assert list(first.recent_item_ids) == rest[-HELDOUT.recent_window :]
        assert list(first.long_item_ids) == rest[-10:-4]
        assert not targets & set(first.recent_item_ids) | set(first.long_item_ids) & targets
        # Every target of a user shares the windows; target_index 0 is the latest target.
        assert all(list(r) == list(first.recent_item_ids) for r in rows.recent_item_ids)
        assert rows.sort_values("target_index").target_timestamp.is_monotonic_decreasing
    # Not just the last interactions: held-out targets come from the whole history.
    last = ordered.groupby("user_id").tail(3)
    assert set(samples.target_item_id) != set(last[last.user_id.isin(samples.user_id)].item_id)
    again, _ = build_task_samples(con, "syn", HELDOUT)
    assert again.equals(samples)  # seeded: the same draw every time
    other, _ = build_task_samples(con, "syn", HELDOUT.model_copy(update={"target_seed": 6}))
    assert set(other.target_item_id) != set(samples.target_item_id)


def test_all_targets_take_everything_before_the_windows(tmp_path: Path) -> None:
    con, frame = _connection(tmp_path, users=10, min_ratings=12, max_ratings=30)
    task = HELDOUT.model_copy(update={"targets_per_user": "all"})
    samples, _ = build_task_samples(con, "syn", task)
    per_user = frame.drop_duplicates(["user_id", "item_id"]).groupby("user_id").size()
    for user, rows in samples.groupby("user_id"):
        assert len(rows) == per_user[user] - task.recent_window - task.long_window
        window = set(rows.iloc[0].recent_item_ids) | set(rows.iloc[0].long_item_ids)
        assert not window & set(rows.target_item_id)
        assert rows.target_timestamp.max() <= min(rows.iloc[0].long_timestamps)


def test_all_targets_need_the_heldout_protocol() -> None:
    with pytest.raises(ValueError, match="heldout"):
        TaskSettings(targets="next", targets_per_user="all")
