"""One evaluation protocol for the oracle study and the evaluation report: the names of the
methods (conditions), the metrics of each task, and how a metric is computed from the rows.

Rows follow one convention: for `sentiment` each row is [true label index, predicted label
index] (indices into `LABELS`); for `ranking` each row is [1-based rank of the target among its
candidates].
"""

from __future__ import annotations

import numpy as np

from lettingo_dagster.constants import TASKS
from lettingo_dagster.evaluation import metrics

RECENT_ONLY = "recent_only"
POPULARITY = "popularity"  # sanity baselines: no profile, no learned head
ITEM_KNN = "item_knn"
RAW_LONG_WINDOW = "raw_long_window"
ORACLE_CEILING = "oracle_ceiling"
RLMREC_LIKE = "rlmrec_like"
PALR_LIKE = "palr_like"
BASE_GENERATOR = "base_generator"
DPO_GENERATOR = "dpo_generator"
BASE_GENERATOR_NULL = "base_generator_null"
CHAMPION_GENERATOR = "champion_generator"  # the registry's champion, when there is one

METHODS = (
    RECENT_ONLY,
    POPULARITY,
    ITEM_KNN,
    RAW_LONG_WINDOW,
    ORACLE_CEILING,
    RLMREC_LIKE,
    PALR_LIKE,
    BASE_GENERATOR,
    DPO_GENERATOR,
    BASE_GENERATOR_NULL,
)
BASELINE = RECENT_ONLY
GENERATOR_METHODS = (BASE_GENERATOR, DPO_GENERATOR, BASE_GENERATOR_NULL)
WRITER_METHODS: dict[str, str] = {RLMREC_LIKE: "rlmrec_summary", PALR_LIKE: "palr_keywords"}
FIXED_METHODS = (
    RECENT_ONLY,
    POPULARITY,
    ITEM_KNN,
    RAW_LONG_WINDOW,
    ORACLE_CEILING,
    *WRITER_METHODS,
)

# The oracle study's extra conditions (calibration users, cross-fitted).
NONE_ONLY_FIT = "none_only_fit"  # a head fit without profiles, scored without one (a control)


def fast_weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> float:
    """Support-weighted F1 over the `n_classes` labels from a confusion matrix: the same number
    as `metrics.weighted_f1` (sklearn), fast enough for thousands of bootstrap draws."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    denominator = confusion.sum(axis=0) + support
    f1 = np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    total = support.sum()
    return float(f1 @ support / total) if total else 0.0


def weighted_f1_statistic(rows: np.ndarray) -> float:
    """rows: columns [y_true, y_pred]."""
    return fast_weighted_f1(rows[:, 0], rows[:, 1])


SENTIMENT_METRICS: dict[str, metrics.Statistic] = {
    "accuracy": metrics.accuracy_statistic,
    "macro_f1": metrics.macro_f1_statistic,
    "weighted_f1": weighted_f1_statistic,
}
RANKING_METRICS: dict[str, metrics.Statistic] = {
    "hit_rate@1": metrics.hit_rate_statistic(1),
    "hit_rate@5": metrics.hit_rate_statistic(5),
    "hit_rate@10": metrics.hit_rate_statistic(10),
    "ndcg@10": metrics.ndcg_statistic(10),
}


def task_metrics(task: str) -> dict[str, metrics.Statistic]:
    """The report's metrics for a task, in display order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return SENTIMENT_METRICS if task == "sentiment" else RANKING_METRICS
