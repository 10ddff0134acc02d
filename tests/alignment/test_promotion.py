"""The champion rule against a real MLflow sqlite registry: promotion only by paired interval,
against the champion itself, with the null check as a guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lettingo_dagster.alignment.promotion import apply_promotion, decide_promotion
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.tracking import MlflowTracking

METRIC = "hit_rate@1"
FLAT_NULL = {"estimate": 0.002, "low": -0.01, "high": 0.012}


def paired(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """The report's paired bootstrap difference of hit rates over users."""
    diff = metrics.paired_bootstrap_diff(
        candidate, reference, metrics.hit_rate_statistic(1), 1000, 0
    )
    return {"estimate": diff.estimate, "low": diff.low, "high": diff.high}


def ranks(rng: np.random.Generator, users: int, p_hit: float) -> dict[str, np.ndarray]:
    """Per user, 10 targets' ranks: rank 1 with probability p_hit, else rank 2-10."""
    out = {}
    for user in range(users):
        hits = rng.random(10) < p_hit
        out[f"u{user}"] = np.where(hits, 1, rng.integers(2, 11, size=10)).reshape(-1, 1)
    return out


@pytest.fixture()
def tracking(tmp_path: Path) -> MlflowTracking:
    return MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _register(tracking: MlflowTracking, name: str) -> str:
    run = tracking.client().create_run(tracking.experiment_id("lettingo-promotion"))
    return tracking.register(name, run, "model")


def test_a_point_win_without_an_interval_is_not_promoted(tracking: MlflowTracking) -> None:
    base = ranks(np.random.default_rng(0), 150, 0.30)
    candidate = ranks(np.random.default_rng(10), 150, 0.32)
    difference = paired(candidate, base)
    assert difference["estimate"] > 0 > difference["low"]  # wins on the point, not the interval
    name = "lettingo-profile-generator-pointwin"
    version = _register(tracking, name)
    decision = decide_promotion(
        difference, FLAT_NULL, metric=METRIC, compared_with="base generator"
    )
    apply_promotion(tracking, name, version, decision)
    assert not decision.promote
    assert "lower bound is not above 0" in decision.reason
    assert tracking.alias_version(name) is None
    tags = tracking.version_tags(name, version)
    assert tags["promotion.promote"] == "False" and tags["promotion.metric"] == METRIC
    assert "lower 95% bound above 0" in tags["promotion.rule"]


def test_a_clear_winner_is_promoted_and_a_worse_second_version_is_not(
    tracking: MlflowTracking,
) -> None:
    rng = np.random.default_rng(1)
    base = ranks(rng, 200, 0.25)
    winner = ranks(np.random.default_rng(2), 200, 0.45)
    name = "lettingo-profile-generator-clear"
    first = _register(tracking, name)
    decision = decide_promotion(
        paired(winner, base), FLAT_NULL, metric=METRIC, compared_with="base generator"
    )
    before = apply_promotion(tracking, name, first, decision)
    assert before is None and decision.promote, decision.reason
    assert tracking.alias_version(name) == first

    # A second version, compared with the champion itself (not with base), is worse.
    second = _register(tracking, name)
    worse = ranks(np.random.default_rng(3), 200, 0.35)
    decision = decide_promotion(
        paired(worse, winner), FLAT_NULL, metric=METRIC, compared_with=f"champion v{first}"
    )
    before = apply_promotion(tracking, name, second, decision)
    assert before == first and not decision.promote
    assert tracking.alias_version(name) == first
    assert tracking.version_tags(name, second)["promotion.compared_with"] == f"champion v{first}"


def test_a_noisy_null_check_refuses_promotion(tracking: MlflowTracking) -> None:
    rng = np.random.default_rng(4)
    base = ranks(rng, 200, 0.25)
    winner = ranks(np.random.default_rng(5), 200, 0.45)
    noisy_null = {"estimate": 0.02, "low": 0.004, "high": 0.036}  # excludes 0
    name = "lettingo-profile-generator-noisy"
    version = _register(tracking, name)
    decision = decide_promotion(
        paired(winner, base), noisy_null, metric=METRIC, compared_with="base generator"
    )
    apply_promotion(tracking, name, version, decision)
    assert not decision.promote and "too noisy to decide" in decision.reason
    assert tracking.alias_version(name) is None


def test_the_gain_must_also_clear_what_resampling_moves() -> None:
    difference = {"estimate": 0.05, "low": 0.01, "high": 0.09}
    null = {"estimate": -0.02, "low": -0.05, "high": 0.01}  # contains 0, but moves 2 points
    assert not decide_promotion(
        difference, null, metric=METRIC, compared_with="base generator"
    ).promote
    assert decide_promotion(
        difference, null, metric=METRIC, compared_with="base generator", null_margin=0.25
    ).promote
