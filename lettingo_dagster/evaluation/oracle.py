"""The oracle study: how much could a profile add at all, before any generator is trained?

On CALIBRATION users only (choices are never made on test users), for each task it compares:

- `none`: the recent window only (10H);
- `long_window_text`: the raw long window written out as the profile text;
- one row per writer style: that deterministic writer's profile of the long window;
- `ceiling`: the long window given to the recommender directly as features (the information
  ceiling of the long window for this recommender; `oracle=True` in the factory);
- `none_only_fit`: a recommender fit without any profile, scored without one (a control: does
  fitting on profiles cost the no-profile prediction anything?).

Protocol: cross-fitting over users. Calibration users are split into `n_folds` folds (default 5)
by a seeded hash of the user id; for each fold a recommender is fit on the other folds (each example paired
with every writer profile, the raw long window text and no profile, as the production
recommender is) and predicts the held-out fold, so every user gets out-of-fold predictions and
the whole calibration set is evaluated. Five folds fit each recommender on 80% of the users,
close to the production recommender fit on all of them; two folds (half the users) under-train
the heads and give noisier, larger-looking differences. Metrics are over all T targets of every user; intervals
are 95% percentile bootstraps over users, and each condition's paired difference against `none`
resamples the same users in both arms.

Findings on MovieLens-100K (default preset: K=10, L=30, T=5, N=19; 152 calibration users, 760
targets; `OfflineRecommender` defaults, 5 folds): for `sentiment` neither the ceiling (+1.1
accuracy points, 95% interval -0.9 to +3.2) nor any writer profile (-0.4 to +1.1) moves accuracy
measurably. For `ranking` the ceiling adds +1.8 HR@5 (-0.4 to +4.1) and the raw long window text
+2.8 HR@10 (+0.9 to +4.7); with `use_item_stats` the ceiling is clearly positive (+2.9 HR@5, +1.2
to +4.7; +1.0 NDCG, +0.1 to +2.0) while writer profiles stay within noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from lettingo_dagster.data.samples import LABELS, stable_unit_hash
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.evaluation.examples import TargetExample, long_window_text
from lettingo_dagster.exploration.writers import write_profiles

RAW_STYLE = "long_window_text"
BASELINE = "none"
CEILING = "ceiling"
CONTROL = "none_only_fit"

TABLE_COLUMNS = [
    "task",
    "condition",
    "metric",
    "value",
    "low",
    "high",
    "diff_vs_none",
    "diff_low",
    "diff_high",
    "users",
    "targets",
]

SENTIMENT_METRICS: dict[str, metrics.Statistic] = {
    "accuracy": metrics.accuracy_statistic,
    "macro_f1": metrics.macro_f1_statistic,
}
RANKING_METRICS: dict[str, metrics.Statistic] = {
    "hit_rate_1": metrics.hit_rate_statistic(1),
    "hit_rate_5": metrics.hit_rate_statistic(5),
    "hit_rate_10": metrics.hit_rate_statistic(10),
    "ndcg": metrics.ndcg_statistic(),
    "mrr": metrics.mrr_statistic,
}


class FittableRecommender(Protocol):
    """A `Recommender` that can also be fit (e.g. `OfflineRecommender`)."""

    def fit(
        self,
        examples: Sequence[TargetExample],
        profiles_by_example: Sequence[Mapping[str, str | None]],
        task: str | Sequence[str] = ...,
        *,
        holdout: bool = ...,
    ) -> dict[str, float]: ...

    def predict_sentiment(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> np.ndarray: ...

    def score_candidates(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> list[np.ndarray]: ...


RecommenderFactory = Callable[[bool], FittableRecommender]  # oracle -> a fresh recommender


def writer_profiles(
    examples: Sequence[TargetExample], styles: tuple[str, ...] | None = None
) -> list[dict[str, str]]:
    """Each example's writer profiles (computed once per user; identical across targets)."""
    by_user: dict[str, dict[str, str]] = {}
    for example in examples:
        if example.user_id not in by_user:
            by_user[example.user_id] = write_profiles(example.history(), styles)
    return [by_user[e.user_id] for e in examples]


def _folds(examples: Sequence[TargetExample], n_folds: int, seed: int) -> np.ndarray:
    """Users in seeded hash order dealt round-robin: folds never come out empty or lopsided."""
    users = sorted(
        {e.user_id for e in examples}, key=lambda u: stable_unit_hash(seed, f"oracle-fold:{u}")
    )
    fold_of = {user: rank % n_folds for rank, user in enumerate(users)}
    return np.array([fold_of[e.user_id] for e in examples])


def _values_by_user(examples: Sequence[TargetExample], rows: np.ndarray) -> dict[str, np.ndarray]:
    grouped: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        grouped.setdefault(example.user_id, []).append(i)
    return {user: rows[idx] for user, idx in grouped.items()}


def cross_fit_predictions(
    recommender_factory: RecommenderFactory,
    examples: Sequence[TargetExample],
    profiles_by_example: Sequence[Mapping[str, str]],
    tasks: Sequence[str] = ("sentiment", "ranking"),
    *,
    n_folds: int = 5,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Out-of-fold outputs per task and condition: for `sentiment` an (n, 2) array of
    [true label index, predicted label index]; for `ranking` an (n, 1) array of target ranks."""
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    raw = [long_window_text(e.long_window) for e in examples]
    training_profiles = [{**p, RAW_STYLE: r} for p, r in zip(profiles_by_example, raw, strict=True)]
    styles = list(dict.fromkeys(s for p in profiles_by_example for s in p))
    conditions = [BASELINE, RAW_STYLE, *styles, CEILING, CONTROL]
    n = len(examples)
    outputs = {
        task: {c: np.zeros((n, 2 if task == "sentiment" else 1), dtype=int) for c in conditions}
        for task in tasks
    }
    folds = _folds(examples, n_folds, seed)
    truth = np.array([LABELS.index(e.label) for e in examples])

    def record(
        task: str, condition: str, model: FittableRecommender, idx: np.ndarray, profiles
    ) -> None:
        chosen = [examples[i] for i in idx]
        if task == "sentiment":
            predicted = model.predict_sentiment(chosen, profiles).argmax(axis=1)
            outputs[task][condition][idx] = np.column_stack([truth[idx], predicted])
        else:
            ranks = metrics.target_ranks(model.score_candidates(chosen, profiles))
            outputs[task][condition][idx, 0] = ranks

    for fold in range(n_folds):
        train = np.flatnonzero(folds != fold)
        test = np.flatnonzero(folds == fold)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"fold {fold} is empty: too few users for {n_folds} folds")
        train_examples = [examples[i] for i in train]
        started = time.perf_counter()
        shared = recommender_factory(False)
        shared.fit(train_examples, [training_profiles[i] for i in train], tasks, holdout=False)
        oracle = recommender_factory(True)
        oracle.fit(train_examples, [{} for _ in train], tasks, holdout=False)
        control = recommender_factory(False)
        control.fit(train_examples, [{} for _ in train], tasks, holdout=False)
        fitted = time.perf_counter() - started
        for task in tasks:
            record(task, BASELINE, shared, test, [None] * len(test))
            record(task, RAW_STYLE, shared, test, [raw[i] for i in test])
            for style in styles:
                record(task, style, shared, test, [profiles_by_example[i].get(style) for i in test])
            record(task, CEILING, oracle, test, [None] * len(test))
            record(task, CONTROL, control, test, [None] * len(test))
        if log is not None:
            log(
                f"fold {fold + 1}/{n_folds}: fit {fitted:.0f}s, "
                f"total {time.perf_counter() - started:.0f}s"
            )
    return outputs


def summarize(
    examples: Sequence[TargetExample],
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The table: per task, condition and metric, the value with its interval and the paired
    difference against `none` with its interval."""
    records = []
    users = len({e.user_id for e in examples})
    for task, by_condition in outputs.items():
        statistics = SENTIMENT_METRICS if task == "sentiment" else RANKING_METRICS
        baseline = _values_by_user(examples, by_condition[BASELINE])
        for condition, rows in by_condition.items():
            values = _values_by_user(examples, rows)
            for name, statistic in statistics.items():
                point = metrics.bootstrap_ci(values, statistic, n_boot, seed)
                diff = metrics.paired_bootstrap_diff(values, baseline, statistic, n_boot, seed)
                records.append(
                    {
                        "task": task,
                        "condition": condition,
                        "metric": name,
                        "value": point.estimate,
                        "low": point.low,
                        "high": point.high,
                        "diff_vs_none": diff.estimate,
                        "diff_low": diff.low,
                        "diff_high": diff.high,
                        "users": users,
                        "targets": len(examples),
                    }
                )
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)


def oracle_table(
    recommender_factory: RecommenderFactory,
    examples_cal: Sequence[TargetExample],
    profiles_by_example: Sequence[Mapping[str, str]] | None = None,
    tasks: Sequence[str] = ("sentiment", "ranking"),
    *,
    n_folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run the study on calibration examples (see the module docstring); `profiles_by_example`
    defaults to every deterministic writer's profile of each user's long window.

    `recommender_factory(oracle)` returns a fresh, unfitted recommender; with `oracle=True` it
    must read the examples' long windows as features (for `OfflineRecommender`:
    `OfflineConfig(oracle_long_window=True)`)."""
    not_calibration = {e.split for e in examples_cal} - {"calibration"}
    if not_calibration:
        raise ValueError(f"the oracle study runs on calibration users only, got {not_calibration}")
    profiles = writer_profiles(examples_cal) if profiles_by_example is None else profiles_by_example
    outputs = cross_fit_predictions(
        recommender_factory, examples_cal, profiles, tasks, n_folds=n_folds, seed=seed, log=log
    )
    return summarize(examples_cal, outputs, n_boot=n_boot, seed=seed)
