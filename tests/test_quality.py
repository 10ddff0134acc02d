import pandas as pd

from lettingo_dagster.data.rules import interaction_rules, task_sample_rules
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.settings import TaskSettings


def _by_name(outcomes):
    return {outcome.rule.name: outcome for outcome in outcomes}


def test_clean_interactions_pass() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["1", "1", "2"],
            "item_id": ["a", "b", "a"],
            "rating": [1.0, 5.0, 3.0],
            "timestamp": [1, 2, 3],
        }
    )
    outcomes = validate_rules({"interactions": frame}, interaction_rules(1, 5))
    assert all(outcome.passed for outcome in outcomes), [o.summary() for o in outcomes]


def test_bad_interactions_name_expectation_and_show_examples() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["1", "1", "", "3"],
            "item_id": ["a", "a", "b", None],
            "rating": [1.0, 1.0, 7.0, 3.0],
            "timestamp": [10, 10, 11, 12],
        }
    )
    outcomes = _by_name(validate_rules({"interactions": frame}, interaction_rules(1, 5)))
    assert not outcomes["keys_not_null"].passed
    assert "ExpectColumnValuesToNotBeNull(column='item_id')" in outcomes["keys_not_null"].summary()
    scale = outcomes["ratings_within_scale"]
    assert not scale.passed
    assert scale.failures[0].unexpected_count == 1
    assert scale.failures[0].examples == [
        {"user_id": "", "item_id": "b", "rating": 7.0, "timestamp": 11}
    ]
    unique = outcomes["unique_events"]
    assert not unique.passed and unique.failures[0].unexpected_count == 2


def test_task_sample_rules_catch_leaks_and_missing_labels() -> None:
    task = TaskSettings(recent_window=2, long_window=3, negatives_per_target=2)
    windows = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "target_index": [0, 0],
            "split": ["train", "test"],
            "recent_length": [2, 2],
            "long_length": [3, 1],
            "distinct_negatives": [2, 2],
            "leaked_items": [0, 1],
            "long_after_recent": [0, 0],
            "rated_negatives": [0, 0],
        }
    )
    labels = pd.DataFrame({"split": ["train"] * 3, "label": ["like", "neutral", "dislike"]})
    frames = {
        "windows": windows,
        "labels_train": labels,
        "labels_calibration": labels.iloc[:2],
        "labels_test": labels,
    }
    outcomes = _by_name(validate_rules(frames, task_sample_rules(task)))
    assert not outcomes["window_lengths"].passed
    assert outcomes["window_lengths"].failures[0].examples[0]["user_id"] == "u2"
    assert not outcomes["no_leakage"].passed
    assert outcomes["negatives_unrated"].passed
    assert outcomes["labels_present_train"].passed
    calibration = outcomes["labels_present_calibration"]
    assert not calibration.passed
    assert "'partial_missing_list': ['dislike']" in calibration.summary()
