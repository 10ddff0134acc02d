"""The trial an LLM recommender must pass before it may serve: real recommenders on a constructed
world where the profile decides the label, and the serving rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evaluation.offline.test_recommender import build_world
from evaluation.test_llm_recommender_and_rewards import tiny_model  # noqa: F401 (fixture)

from lettingo_dagster.evaluation.offline import MiniLMEncoder, OfflineConfig, OfflineRecommender
from lettingo_dagster.evaluation.recommender_trial import (
    LLM,
    MAJORITY,
    OFFLINE,
    TRIAL_COLUMNS,
    decide,
    first_users,
    paired_accuracy_difference,
    run_trial,
)


def _trial(
    llm: float, majority: tuple[float, float, float], offline: tuple[float, float, float]
) -> pd.DataFrame:
    """A trial table: the LLM's best accuracy, and per other row the LLM's best minus it."""
    rows = [
        (MAJORITY, "none", llm - majority[0], majority),
        (OFFLINE, "none", llm - offline[0] - 0.1, (offline[0] + 0.1, -1.0, 1.0)),
        (OFFLINE, "genre_affinity", llm - offline[0], offline),
        (LLM, "none", llm, (np.nan, np.nan, np.nan)),
        (LLM, "genre_affinity", llm - 0.2, (0.2, 0.1, 0.3)),
    ]
    return pd.DataFrame(
        [
            {"recommender": r, "profile": p, "users": 20, "accuracy": a, "llm_minus_this": d[0],
             "llm_minus_this_low": d[1], "llm_minus_this_high": d[2]}
            for r, p, a, d in rows
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("majority", "offline", "serves", "why"),
    [
        ((0.10, 0.02, 0.18), (0.05, -0.02, 0.12), True, "beats the majority label beyond noise"),
        ((0.10, 0.02, 0.18), (0.00, -0.08, 0.08), True, "matches the offline"),  # a tie serves
        ((0.04, -0.02, 0.10), (0.15, 0.05, 0.25), False, "not shown to beat the majority"),
        ((0.10, 0.02, 0.18), (-0.01, -0.09, 0.07), False, "less accurate than the offline"),
    ],
)
def test_the_serving_rule_needs_the_majority_beaten_beyond_noise(
    majority: tuple, offline: tuple, serves: bool, why: str
) -> None:
    decision = decide(_trial(0.8, majority, offline))
    assert decision.serves is serves
    assert decision.versus_majority == majority and decision.versus_offline == offline
    assert decision.llm == 0.8 and decision.users == 20
    assert ("may serve" if serves else "may not serve") in decision.verdict
    assert why in decision.verdict


def test_paired_difference_is_exact_and_resamples_users() -> None:
    users = ["a"] * 4 + ["b"] * 4
    truth = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    right, wrong = truth.copy(), (truth + 1) % 3
    assert paired_accuracy_difference(users, truth, right, wrong) == (1.0, 1.0, 1.0)
    half = np.where(np.array(users) == "a", truth, wrong)  # right for a, wrong for b
    estimate, low, high = paired_accuracy_difference(users, truth, half, wrong)
    assert estimate == 0.5 and low == 0.0 and high == 1.0  # a alone, b alone, or both


def test_first_users_keeps_every_target_of_the_first_users() -> None:
    examples = build_world(4, seed=3, targets=3)
    kept = first_users(examples, 2)
    assert len({e.user_id for e in kept}) == 2 and len(kept) == 6
    assert kept == examples[:6]


def test_an_untrained_llm_may_not_serve_where_the_offline_recommender_reads_profiles(
    tiny_model,  # noqa: F811
) -> None:
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender

    train, calibration = build_world(40, seed=1), build_world(6, seed=2)
    offline = OfflineRecommender(
        OfflineConfig(item_dims=8, text_dims=8, c_sentiment=0.1), MiniLMEncoder(torch_threads=2)
    )
    trial = run_trial(
        LLMRecommender(tiny_model),
        offline,
        train,
        calibration,
        "genre_affinity",
        log=lambda _: None,
    )
    assert ["dataset", *trial.columns] == list(TRIAL_COLUMNS)
    assert list(zip(trial["recommender"], trial["profile"], strict=True)) == [
        (MAJORITY, "none (always like)"),
        (OFFLINE, "none"),
        (OFFLINE, "genre_affinity"),
        (LLM, "none"),
        (LLM, "genre_affinity"),
    ]
    assert (trial["targets"] == len(calibration)).all() and (trial["users"] == 6).all()
    assert trial["llm_minus_this"].isna().sum() == 1  # every row but the LLM's best
    by = trial.set_index(["recommender", "profile"])["accuracy"]
    # The world's labels follow the genres a profile states; the offline head learns that.
    assert by[(OFFLINE, "genre_affinity")] > by[(MAJORITY, "none (always like)")]
    decision = decide(trial)
    assert not decision.serves, decision.verdict
    assert trial["predicted"].str.len().gt(0).all()
