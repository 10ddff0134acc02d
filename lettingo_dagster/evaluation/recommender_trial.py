"""May an LLM serve as the recommender? A trial on calibration users before it scores any pair.

The paper's recommender is an LLM that reads the recent window, the profile and the target and
answers like / neutral / dislike. A small LLM can answer fluently and still carry no signal (it
may say "like" to every prompt, profile or not), and rewards made of such scores would be noise.
So a candidate is measured first, on the sentiment task, against two recommenders that need no
LLM:

- the majority label of training users' targets (what a constant answer scores);
- the offline recommender, fit on training users' targets with their writer profiles;

each with no profile and with one writer profile. Its best condition is compared with each, on
the same users: accuracy differences with 95% bootstrap intervals over users (all targets of a
user together). It may serve only when it beats the majority label beyond noise (the interval's
lower bound above 0) and is at least as accurate as the offline recommender's best condition. A
handful of users shows nothing either way, and then it may not serve.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.evaluation.oracle import writer_profiles
from lettingo_dagster.evaluation.recommender import Recommender

TRIAL_COLUMNS = {
    "dataset": "VARCHAR",
    "recommender": "VARCHAR",
    "profile": "VARCHAR",
    "users": "INTEGER",
    "targets": "INTEGER",
    "accuracy": "DOUBLE",
    "macro_f1": "DOUBLE",
    "predicted": "VARCHAR",
    "seconds": "DOUBLE",
    # The LLM's best condition minus this row, paired over users (NULL on the LLM's best row).
    "llm_minus_this": "DOUBLE",
    "llm_minus_this_low": "DOUBLE",
    "llm_minus_this_high": "DOUBLE",
}
MAJORITY, OFFLINE, LLM = "majority label", "offline", "llm"


@dataclass(frozen=True)
class TrialDecision:
    serves: bool
    llm: float  # the candidate's best accuracy
    majority: float
    offline: float  # the offline recommender's best accuracy
    versus_majority: tuple[float, float, float]  # LLM minus majority: estimate, low, high
    versus_offline: tuple[float, float, float]  # LLM minus the offline recommender's best
    users: int

    @property
    def verdict(self) -> str:
        def points(d: tuple[float, float, float]) -> str:
            return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"

        why = (
            "beats the majority label beyond noise and matches the offline recommender"
            if self.serves
            else "not shown to beat the majority label"
            if not self.versus_majority[1] > 0
            else "less accurate than the offline recommender"
        )
        return (
            f"LLM recommender on {self.users} calibration users: best accuracy {self.llm:.3f}, "
            f"majority label {self.majority:.3f}, offline recommender {self.offline:.3f}; LLM "
            f"minus majority {points(self.versus_majority)} points, minus offline "
            f"{points(self.versus_offline)}: {'may serve' if self.serves else 'may not serve'} "
            f"({why})"
        )


def first_users(examples: Sequence[TargetExample], count: int) -> list[TargetExample]:
    """All targets of the first `count` users, in the examples' order."""
    keep = set(list(dict.fromkeys(e.user_id for e in examples))[:count])
    return [e for e in examples if e.user_id in keep]


def _predicted(probabilities: np.ndarray) -> np.ndarray:
    # A row the LLM could not answer (NaN) counts as wrong: -1, never a label.
    answered = ~np.isnan(probabilities).any(axis=1)
    return np.where(answered, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1), -1)


def _row(
    recommender: str, profile: str, truth: np.ndarray, predicted: np.ndarray, seconds: float
) -> dict:
    from sklearn.metrics import f1_score

    shares = Counter(LABELS[i] if i >= 0 else "no answer" for i in predicted)
    return {
        "recommender": recommender,
        "profile": profile,
        "targets": len(truth),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(
            f1_score(truth, predicted, average="macro", labels=range(len(LABELS)), zero_division=0)
        ),
        "predicted": ", ".join(f"{label} {count}" for label, count in shares.most_common()),
        "seconds": round(seconds, 1),
    }


def run_trial(
    candidate: Recommender,
    offline: Recommender,
    train: Sequence[TargetExample],
    calibration: Sequence[TargetExample],
    profile_style: str,
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy and macro-F1 of the majority label, the offline recommender (fit here on `train`)
    and `candidate` on `calibration`'s targets, with no profile and with `profile_style`."""
    if not train or not calibration:
        raise ValueError("the trial needs training and calibration users")
    truth = np.array([LABELS.index(e.label) for e in calibration])
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    profiles = [p[profile_style] for p in writer_profiles(calibration, (profile_style,))]
    blank: list[str | None] = [None] * len(calibration)
    constant = np.full(len(truth), LABELS.index(majority))
    rows = [_row(MAJORITY, f"none (always {majority})", truth, constant, 0.0)]
    predictions = [constant]

    started = time.perf_counter()
    offline.fit(train, writer_profiles(train), "sentiment", holdout=False)
    log(f"offline recommender fit on {len(train)} training targets")
    for recommender, name in ((offline, OFFLINE), (candidate, LLM)):
        for label, shown in (("none", blank), (profile_style, profiles)):
            began = time.perf_counter()
            predicted = _predicted(recommender.predict_sentiment(calibration, shown))
            rows.append(_row(name, label, truth, predicted, time.perf_counter() - began))
            predictions.append(predicted)
            log(f"{name}, profile {label}: accuracy {rows[-1]['accuracy']:.3f}")
    log(f"trial took {time.perf_counter() - started:.0f} s")
    table = pd.DataFrame(rows).assign(users=len({e.user_id for e in calibration}))
    best = max((i for i, row in enumerate(rows) if row["recommender"] == LLM),
               key=lambda i: rows[i]["accuracy"])  # fmt: skip
    users = [e.user_id for e in calibration]
    for i, predicted in enumerate(predictions):
        if i == best:
            continue
        interval = paired_accuracy_difference(users, truth, predictions[best], predicted, seed)
        table.loc[i, ["llm_minus_this", "llm_minus_this_low", "llm_minus_this_high"]] = interval
    return table.reindex(columns=[c for c in TRIAL_COLUMNS if c != "dataset"])


def paired_accuracy_difference(
    users: Sequence[str], truth: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy of predictions `a` minus `b` on the same targets, with a 95% bootstrap interval
    over users (each resampled user brings all of their targets)."""
    from lettingo_dagster.evaluation.metrics import accuracy_statistic, paired_bootstrap_diff

    index: dict[str, list[int]] = {}
    for row, user in enumerate(users):
        index.setdefault(user, []).append(row)
    arm_a = {u: np.column_stack([truth[rows], a[rows]]) for u, rows in index.items()}
    arm_b = {u: np.column_stack([truth[rows], b[rows]]) for u, rows in index.items()}
    d = paired_bootstrap_diff(arm_a, arm_b, accuracy_statistic, seed=seed)
    return (d.estimate, d.low, d.high)


def decide(trial: pd.DataFrame) -> TrialDecision:
    """The serving rule: the LLM's best condition beats the majority label beyond noise (lower
    bound of the paired difference above 0) and is at least as accurate as the offline
    recommender's best condition."""
    best = trial.groupby("recommender")["accuracy"].max()
    llm, majority, offline = (float(best.get(k, np.nan)) for k in (LLM, MAJORITY, OFFLINE))

    def versus(recommender: str) -> tuple[float, float, float]:
        rows = trial[trial.recommender == recommender]
        row = rows.loc[rows.accuracy.idxmax()]
        return tuple(
            float(row[c]) for c in ("llm_minus_this", "llm_minus_this_low", "llm_minus_this_high")
        )  # type: ignore[return-value]

    vs_majority, vs_offline = versus(MAJORITY), versus(OFFLINE)
    serves = bool(vs_majority[1] > 0 and vs_offline[0] >= 0)
    return TrialDecision(
        serves, llm, majority, offline, vs_majority, vs_offline, int(trial["users"].max())
    )
