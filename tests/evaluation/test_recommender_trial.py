"""The trial an LLM recommender must pass before it may serve: real recommenders on a constructed
world where the profile decides the label, and the serving rule."""

from __future__ import annotations

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
    run_trial,
)


def _trial(llm: float, majority: float, offline: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"recommender": MAJORITY, "profile": "none", "accuracy": majority},
            {"recommender": OFFLINE, "profile": "none", "accuracy": offline - 0.1},
            {"recommender": OFFLINE, "profile": "genre_affinity", "accuracy": offline},
            {"recommender": LLM, "profile": "none", "accuracy": llm},
            {"recommender": LLM, "profile": "genre_affinity", "accuracy": llm - 0.2},
        ]
    )


@pytest.mark.parametrize(
    ("llm", "majority", "offline", "serves"),
    [
        (0.80, 0.70, 0.75, True),  # beats both
        (0.75, 0.70, 0.75, True),  # ties the offline recommender, beats the constant answer
        (0.70, 0.70, 0.60, False),  # a constant answer's accuracy is not a recommender's
        (0.74, 0.70, 0.75, False),  # worse than the recommender it would replace
    ],
)
def test_the_serving_rule_takes_each_recommenders_best_accuracy(
    llm: float, majority: float, offline: float, serves: bool
) -> None:
    decision = decide(_trial(llm, majority, offline))
    assert decision.serves is serves
    assert (decision.llm, decision.majority, decision.offline) == (llm, majority, offline)
    assert ("may serve" if serves else "may not serve") in decision.verdict


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
    assert (trial["targets"] == len(calibration)).all()
    by = trial.set_index(["recommender", "profile"])["accuracy"]
    # The world's labels follow the genres a profile states; the offline head learns that.
    assert by[(OFFLINE, "genre_affinity")] > by[(MAJORITY, "none (always like)")]
    decision = decide(trial)
    assert not decision.serves, decision.verdict
    assert trial["predicted"].str.len().gt(0).all()
