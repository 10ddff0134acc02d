"""Metrics and bootstrap intervals over users."""

from __future__ import annotations

import numpy as np
import pytest

from lettingo_dagster.evaluation import metrics


def _users(n_users: int, seed: int = 0, p: float = 0.6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"u{u}": (rng.random((5, 1)) < p).astype(float) for u in range(n_users)}


def _mean(rows: np.ndarray) -> float:
    return float(np.mean(rows))


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_users() -> None:
    small = metrics.bootstrap_ci(_users(20), _mean, n_boot=500, seed=1)
    large = metrics.bootstrap_ci(_users(500), _mean, n_boot=500, seed=1)
    for interval in (small, large):
        assert interval.low <= interval.estimate <= interval.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_bootstrap_is_seeded_and_accepts_sequences() -> None:
    users = _users(30)
    a = metrics.bootstrap_ci(users, _mean, n_boot=200, seed=3)
    b = metrics.bootstrap_ci(list(users.values()), _mean, n_boot=200, seed=3)
    assert a == b
    assert a.as_dict("acc") == {"acc": a.estimate, "acc_low": a.low, "acc_high": a.high}


def test_bootstrap_resamples_users_not_rows() -> None:
    # Users are all-correct or all-wrong: rows inside a user are perfectly correlated, so the
    # interval must be as wide as for 10 independent draws, not 1,000.
    users = {f"u{u}": np.full((100, 1), float(u % 2)) for u in range(10)}
    interval = metrics.bootstrap_ci(users, _mean, n_boot=1000, seed=0)
    assert interval.high - interval.low > 0.4


def test_paired_difference_of_identical_arms_is_zero_and_degenerate() -> None:
    users = _users(40)
    diff = metrics.paired_bootstrap_diff(users, users, _mean, n_boot=300, seed=0)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_paired_difference_detects_a_shift_and_checks_users() -> None:
    a = _users(200, seed=1, p=0.7)
    b = {user: np.zeros_like(rows) for user, rows in a.items()}
    diff = metrics.paired_bootstrap_diff(a, b, _mean, n_boot=300, seed=0)
    assert diff.low > 0.6 and diff.estimate == pytest.approx(_mean(np.vstack(list(a.values()))))
    with pytest.raises(ValueError):
        metrics.paired_bootstrap_diff(a, {"other": np.zeros((5, 1))}, _mean, n_boot=10)


@pytest.mark.parametrize("name", ["hit_rate@1", "hit_rate@10", "ndcg@10", "accuracy"])
def test_row_mean_statistics_bootstrap_from_sums_like_the_per_draw_path(name: str) -> None:
    # The fast path must give the per-draw path's figures: same resamples, same statistic.
    from lettingo_dagster.evaluation.protocol import RANKING_METRICS, SENTIMENT_METRICS

    statistic = {**RANKING_METRICS, **SENTIMENT_METRICS}[name]
    assert isinstance(statistic, metrics.RowMeanStatistic)
    rng = np.random.default_rng(5)
    # Users with different numbers of rows, so a resample's mean weighs users by their rows.
    if name == "accuracy":
        a = [rng.integers(0, 3, size=(rng.integers(1, 9), 2)) for _ in range(60)]
        b = [rng.integers(0, 3, size=(len(rows), 2)) for rows in a]
    else:
        a = [rng.integers(1, 21, size=(rng.integers(1, 9), 1)) for _ in range(60)]
        b = [rng.integers(1, 21, size=(len(rows), 1)) for rows in a]

    def per_draw(rows: np.ndarray) -> float:
        return statistic(rows)

    for fast, slow in [
        (metrics.bootstrap_ci(a, statistic, 400, 3), metrics.bootstrap_ci(a, per_draw, 400, 3)),
        (
            metrics.paired_bootstrap_diff(a, b, statistic, 400, 3),
            metrics.paired_bootstrap_diff(a, b, per_draw, 400, 3),
        ),
    ]:
        assert fast.low < fast.high
        for field in ("estimate", "low", "high"):
            assert getattr(fast, field) == pytest.approx(getattr(slow, field), abs=1e-12)


def test_ranking_metrics_known_values() -> None:
    ranks = np.array([1, 2, 5, 10])
    assert metrics.hit_rate(ranks, 1) == 0.25
    assert metrics.hit_rate(ranks, 5) == 0.75
    expected = np.mean([1.0, 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(11)])
    assert metrics.ndcg(ranks) == pytest.approx(expected)
    assert metrics.ndcg(ranks, k=5) == pytest.approx(
        np.mean([1.0, 1 / np.log2(3), 1 / np.log2(6), 0])
    )
    assert metrics.mrr(ranks) == pytest.approx(np.mean([1, 0.5, 0.2, 0.1]))


def test_target_ranks_count_ties_against_the_target() -> None:
    scores = [np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 1.0])]
    assert metrics.target_ranks(scores).tolist() == [1, 2, 3]


def test_classification_metrics_and_fast_f1_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 3, 300))
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))
    assert metrics.fast_macro_f1(y_true, y_pred) == pytest.approx(metrics.macro_f1(y_true, y_pred))
    # A class never predicted nor true still counts (as 0) in the macro average.
    assert metrics.fast_macro_f1(np.array([0, 0]), np.array([0, 0])) == pytest.approx(1 / 3)
    assert metrics.macro_f1(np.array([0, 0]), np.array([0, 0])) == pytest.approx(1 / 3)
    rows = np.column_stack([y_true, y_pred])
    assert metrics.accuracy_statistic(rows) == pytest.approx(metrics.accuracy(y_true, y_pred))
    assert 0 < metrics.weighted_f1(y_true, y_pred) < 1
    probabilities = np.full((300, 3), 1 / 3)
    assert metrics.multiclass_log_loss(y_true, probabilities) == pytest.approx(np.log(3))
