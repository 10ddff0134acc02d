"""Metrics and bootstrap intervals over users, as the oracle study and the report use them.

Every interval resamples users, never targets: a resampled user brings all of their T targets,
so the intervals respect the correlation between one user's targets. Values are passed per user
as arrays whose rows are that user's targets (e.g. columns [y_true, y_pred] or the target's
rank); a statistic maps the stacked rows of a resample to a number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

Statistic = Callable[[np.ndarray], float]
ValuesByUser = Mapping[str, np.ndarray] | Sequence[np.ndarray]


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on all users
    low: float
    high: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {prefix: self.estimate, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


# ---- point metrics -------------------------------------------------------------------------


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> float:
    """Macro-F1 over all `n_classes` labels (a label never true nor predicted scores 0)."""
    return float(
        f1_score(y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0)
    )


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> float:
    return float(
        f1_score(y_true, y_pred, labels=list(range(n_classes)), average="weighted", zero_division=0)
    )


def multiclass_log_loss(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    return float(log_loss(y_true, probabilities, labels=list(range(probabilities.shape[1]))))


def fast_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> float:
    """The same number as `macro_f1`, from a confusion matrix (bootstraps call it thousands of
    times)."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(float)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    f1 = np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1.mean())


def target_ranks(scores: Sequence[np.ndarray]) -> np.ndarray:
    """1-based rank of the target (index 0) among each example's candidates; ties count
    against the target (a constant scorer ranks it last), so no metric rewards a flat model."""
    return np.array([1 + int(np.sum(s[1:] >= s[0])) for s in scores], dtype=int)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of targets ranked in the top k."""
    return float(np.mean(np.asarray(ranks) <= k))


def ndcg_gains(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    """Each target's NDCG with one relevant item: 1 / log2(rank + 1), 0 past rank k (k=None:
    no cut-off)."""
    ranks = np.asarray(ranks, dtype=float)
    gains = 1.0 / np.log2(ranks + 1.0)
    return gains if k is None else np.where(ranks <= k, gains, 0.0)


def ndcg(ranks: np.ndarray, k: int | None = None) -> float:
    return float(np.mean(ndcg_gains(ranks, k)))


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / np.asarray(ranks, dtype=float)))


# ---- bootstrap over users ------------------------------------------------------------------


def _per_user(values_by_user: ValuesByUser) -> list[np.ndarray]:
    users = list(values_by_user.values()) if isinstance(values_by_user, Mapping) else values_by_user
    arrays = [np.asarray(v) for v in users]
    if not arrays:
        raise ValueError("no users to bootstrap over")
    return arrays


def _resample_indices(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


def _stack(arrays: list[np.ndarray], users: np.ndarray) -> np.ndarray:
    return np.concatenate([arrays[u] for u in users], axis=0)


@functools.lru_cache(maxsize=8)
def _resample_counts(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_users): how often each user is drawn in each resample (the same draws as
    `_resample_indices`). Cached: a report draws the same resamples for every method and
    metric; the array is read-only."""
    draws = _resample_indices(n_users, n_boot, seed)
    offsets = np.arange(n_boot)[:, None] * n_users
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_users)
    counts = counts.reshape(n_boot, n_users).astype(float)
    counts.flags.writeable = False
    return counts


def _row_mean_draws(
    statistic: RowMeanStatistic, arrays: list[np.ndarray], counts: np.ndarray
) -> np.ndarray:
    """The statistic on every resample from per-user sums: a resample's mean over its stacked
    rows is its users' summed values over their summed row counts."""
    rows = np.array([len(a) for a in arrays])
    values = np.asarray(statistic.per_row(np.concatenate(arrays, axis=0)), dtype=float)
    sums = np.bincount(np.repeat(np.arange(len(arrays)), rows), weights=values,
                       minlength=len(arrays))  # fmt: skip
    return (counts @ sums) / (counts @ rows.astype(float))


def bootstrap_ci(
    values_by_user: ValuesByUser,
    statistic: Statistic,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """The statistic on all users with a percentile (1 - alpha) interval from resampling users
    with replacement (each resampled user keeps all of their rows)."""
    arrays = _per_user(values_by_user)
    estimate = float(statistic(np.concatenate(arrays, axis=0)))
    if isinstance(statistic, RowMeanStatistic):
        draws = _row_mean_draws(statistic, arrays, _resample_counts(len(arrays), n_boot, seed))
    else:
        draws = np.array(
            [
                statistic(_stack(arrays, users))
                for users in _resample_indices(len(arrays), n_boot, seed)
            ]
        )
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high))


def paired_bootstrap_diff(
    a_by_user: ValuesByUser,
    b_by_user: ValuesByUser,
    statistic: Statistic,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """statistic(a) - statistic(b) on the same users, with a percentile interval from resampling
    users (the same resample for both arms, so user-level noise cancels). Users must be aligned:
    same order (sequences) or same keys (mappings)."""
    if isinstance(a_by_user, Mapping) and isinstance(b_by_user, Mapping):
        if set(a_by_user) != set(b_by_user):
            raise ValueError("paired arms must have the same users")
        b_by_user = {user: b_by_user[user] for user in a_by_user}
    a = _per_user(a_by_user)
    b = _per_user(b_by_user)
    if len(a) != len(b):
        raise ValueError(f"paired arms have {len(a)} and {len(b)} users")
    estimate = float(statistic(np.concatenate(a, axis=0)) - statistic(np.concatenate(b, axis=0)))
    if isinstance(statistic, RowMeanStatistic):
        counts = _resample_counts(len(a), n_boot, seed)
        draws = _row_mean_draws(statistic, a, counts) - _row_mean_draws(statistic, b, counts)
    else:
        draws = np.array(
            [
                statistic(_stack(a, users)) - statistic(_stack(b, users))
                for users in _resample_indices(len(a), n_boot, seed)
            ]
        )
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high))


# Statistics over stacked rows, for the bootstrap helpers.
@dataclass(frozen=True)
class RowMeanStatistic:
    """A statistic that is the mean of one value per row (a hit, a gain, a reciprocal rank).
    The bootstraps then draw from per-user sums, one matrix product for all resamples, instead
    of stacking each resample's rows: the same draws and the same figures, a hundred times
    faster (bench/bootstrap_benchmark.py)."""

    per_row: Callable[[np.ndarray], np.ndarray]

    def __call__(self, rows: np.ndarray) -> float:
        return float(np.mean(self.per_row(rows)))


def _correct(rows: np.ndarray) -> np.ndarray:
    return rows[:, 0] == rows[:, 1]


accuracy_statistic = RowMeanStatistic(_correct)  # rows: columns [y_true, y_pred]


def macro_f1_statistic(rows: np.ndarray) -> float:
    """rows: columns [y_true, y_pred]."""
    return fast_macro_f1(rows[:, 0], rows[:, 1])


def hit_rate_statistic(k: int) -> Statistic:
    """rows: the target's rank (a column vector or 1-D)."""
    return RowMeanStatistic(lambda rows: np.ravel(rows) <= k)


def ndcg_statistic(k: int | None = None) -> Statistic:
    return RowMeanStatistic(lambda rows: ndcg_gains(np.ravel(rows), k))


mrr_statistic = RowMeanStatistic(lambda rows: 1.0 / np.ravel(rows).astype(float))
