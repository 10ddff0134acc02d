"""The oracle study: how much could a profile add at all, before any generator is trained?

On CALIBRATION users only (choices are never made on test users), for each task it compares:

- `none`: the recent window only (10H);
- `long_window_text`: the raw long window written out as the profile text;
- one row per writer style: that deterministic writer's profile of the long window;
- `ceiling`: the long window given to the recommender directly as features (the information
  ceiling of the long window for this recommender; `oracle=True` in the factory);
- `none_only_fit`: a recommender fit without any profile, scored without one (a control: does
  fitting on profiles cost the no-profile prediction anything?).

Protocol: cross-fitting over users. Calibration users are split into `n_folds` folds (default 3)
by a seeded hash of the user id; for each fold a recommender is fit on the other folds (each example paired
with every writer profile, the raw long window text and no profile, as the production
recommender is) and predicts the held-out fold, so every user gets out-of-fold predictions and
the whole calibration set is evaluated. Three folds fit each recommender on two thirds of the
users, five on 80% (closer to the production recommender fit on all of them, for two more fits
each); two folds (half the users) under-train the heads and give noisier, larger-looking
differences. Metrics are over all T targets of every user; intervals
are 95% percentile bootstraps over users, and each condition's paired difference against `none`
resamples the same users in both arms.

What the study found on MovieLens-100K, and the choices it settled, are in docs/architecture.md
("Measured choices") and beside those choices in `assets/presets/default.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from lettingo_dagster.data.samples import LABELS, stable_unit_hash
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.evaluation.examples import TargetExample, long_window_text
from lettingo_dagster.evaluation.protocol import (
    NONE_ONLY_FIT,
    ORACLE_CEILING,
    RAW_LONG_WINDOW,
    RECENT_ONLY,
    task_metrics,
)
from lettingo_dagster.exploration.writers import write_profiles

# One set of names with the evaluation report (evaluation.protocol).
RAW_STYLE = RAW_LONG_WINDOW
BASELINE = RECENT_ONLY
CEILING = ORACLE_CEILING
CONTROL = NONE_ONLY_FIT

TABLE_COLUMNS = [
    "subset",
    "task",
    "condition",
    "metric",
    "value",
    "low",
    "high",
    "diff_vs_recent_only",
    "diff_low",
    "diff_high",
    "users",
    "targets",
]


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
    targets_subset: set[tuple[str, int]] | None = None,
    subset: str = "all",
) -> pd.DataFrame:
    """The table: per task, condition and metric, the value with its interval and the paired
    difference against `none` with its interval."""
    records = []
    for task, by_condition in outputs.items():
        statistics = task_metrics(task)
        keep = (
            np.array([(e.user_id, e.target_index) in targets_subset for e in examples])
            if targets_subset is not None
            else np.ones(len(examples), dtype=bool)
        )
        kept = [e for e, k in zip(examples, keep, strict=True) if k]
        if not kept:
            continue
        baseline = _values_by_user(kept, by_condition[BASELINE][keep])
        for condition, rows in by_condition.items():
            values = _values_by_user(kept, rows[keep])
            for name, statistic in statistics.items():
                point = metrics.bootstrap_ci(values, statistic, n_boot, seed)
                diff = metrics.paired_bootstrap_diff(values, baseline, statistic, n_boot, seed)
                records.append(
                    {
                        "subset": subset,
                        "task": task,
                        "condition": condition,
                        "metric": name,
                        "value": point.estimate,
                        "low": point.low,
                        "high": point.high,
                        "diff_vs_recent_only": diff.estimate,
                        "diff_low": diff.low,
                        "diff_high": diff.high,
                        "users": len({e.user_id for e in kept}),
                        "targets": len(kept),
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
    session_guarded: set[tuple[str, int]] | None = None,
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
    table = summarize(examples_cal, outputs, n_boot=n_boot, seed=seed)
    if session_guarded is not None:
        # The same out-of-fold predictions on the targets whose windows hold no item rated
        # within an hour of them: how much of the room is taste rather than session.
        guarded = summarize(examples_cal, outputs, n_boot=n_boot, seed=seed,
                            targets_subset=session_guarded, subset="session_guard")  # fmt: skip
        table = pd.concat([table, guarded], ignore_index=True)
    return table


@dataclass(frozen=True)
class OracleStudy:
    table: pd.DataFrame  # oracle_table rows with a `protocol` column
    ceilings: pd.DataFrame  # the ceiling per (protocol, task, subset) on each task's first metric
    users: int
    choice: tuple[str, str]  # (task, protocol) with the largest lower bound of the ceiling
    preset_matches: bool

    @property
    def choice_text(self) -> str:
        task, protocol = self.choice
        row = self.ceilings[
            (self.ceilings.task == task) & (self.ceilings.protocol == protocol)
            & (self.ceilings.subset == "all")
        ].iloc[0]  # fmt: skip
        return (
            f"largest ceiling lower bound: task {task}, targets {protocol}: {row.metric} "
            f"{100 * row.diff_vs_recent_only:+.1f} [{100 * row.diff_low:+.1f}, "
            f"{100 * row.diff_high:+.1f}] points over recent only"
            + ("" if self.preset_matches else "; the preset uses another task or protocol")
        )


def oracle_grid(
    con,
    dataset: str,
    preset,
    factory: RecommenderFactory,
    *,
    log: Callable[[str], None] | None = None,
) -> OracleStudy:
    """The study for every (task, protocol) of the preset's oracle section on calibration users.
    Protocols other than the preset's are built on the fly from `interactions` (same K, L, T)."""
    from lettingo_dagster.data.samples import build_task_samples
    from lettingo_dagster.evaluation.examples import load_target_examples, session_guarded_targets

    settings = preset.oracle
    protocols = list(dict.fromkeys([preset.task.targets, *settings.protocols]))
    tasks = tuple(dict.fromkeys([preset.recommender.task, *settings.tasks]))
    frames, users = [], 0
    for protocol in protocols:
        table = "task_samples"
        if protocol != preset.task.targets:
            task = preset.task.model_copy(update={"targets": protocol})
            if task.targets_per_user == "all" and protocol == "next":
                task = task.model_copy(update={"targets_per_user": 1})
            samples, _ = build_task_samples(con, dataset, task)
            table = f"_oracle_samples_{protocol}"
            con.register(table, samples)
        try:
            examples = load_target_examples(
                con, dataset, preset.task, ("calibration",), table=table
            )
            guarded = session_guarded_targets(con, dataset, ("calibration",), table=table)
        finally:
            if table != "task_samples":
                con.unregister(table)
        if not examples:
            raise ValueError(f"{dataset}: no calibration users for the oracle study")
        users = max(users, len({e.user_id for e in examples}))
        if log is not None:
            log(f"oracle study, targets {protocol}: {len(examples)} calibration targets, "
                f"{len(guarded)} of them pass the session guard")  # fmt: skip
        n_folds = max(2, min(settings.n_folds, len({e.user_id for e in examples}) // 4))
        frame = oracle_table(factory, examples, tasks=tasks, n_folds=n_folds,
                             n_boot=preset.report.n_boot, seed=preset.report.seed, log=log,
                             session_guarded=guarded)  # fmt: skip
        frames.append(frame.assign(protocol=protocol))
    table = pd.concat(frames, ignore_index=True)
    first_metric = {task: next(iter(task_metrics(task))) for task in tasks}
    ceilings = table[
        (table.condition == CEILING) & (table.metric == table.task.map(first_metric))
    ][["protocol", "task", "subset", "metric", "diff_vs_recent_only", "diff_low", "diff_high",
       "users", "targets"]].reset_index(drop=True)  # fmt: skip
    overall = ceilings[ceilings.subset == "all"]
    best = overall.loc[overall.diff_low.idxmax()]
    choice = (str(best.task), str(best.protocol))
    matches = choice == (preset.recommender.task, preset.task.targets)
    return OracleStudy(table, ceilings, users, choice, matches)
