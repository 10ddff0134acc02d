"""May an LLM serve as the recommender? A trial on calibration users before it scores any pair.

The paper's recommender is an LLM that reads the recent window, the profile and the target and
answers like / neutral / dislike. A small LLM can answer fluently and still carry no signal (it
may say "like" to every prompt, profile or not), and rewards made of such scores would be noise.
So a candidate is measured first, on the sentiment task, against two recommenders that need no
LLM:

- the majority label of training users' targets (what a constant answer scores);
- the offline recommender, fit on training users' targets with their writer profiles;

each with no profile and with one writer profile. It may serve only when its best accuracy beats
the majority label and is at least the offline recommender's best.
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
    "targets": "INTEGER",
    "accuracy": "DOUBLE",
    "macro_f1": "DOUBLE",
    "predicted": "VARCHAR",
    "seconds": "DOUBLE",
}
MAJORITY, OFFLINE, LLM = "majority label", "offline", "llm"


@dataclass(frozen=True)
class TrialDecision:
    serves: bool
    llm: float  # the candidate's best accuracy
    majority: float
    offline: float

    @property
    def verdict(self) -> str:
        return (
            f"LLM recommender: best accuracy {self.llm:.3f} against the majority label "
            f"{self.majority:.3f} and the offline recommender {self.offline:.3f}: "
            f"{'may serve' if self.serves else 'may not serve'}"
        )


def first_users(examples: Sequence[TargetExample], count: int) -> list[TargetExample]:
    """All targets of the first `count` users, in the examples' order."""
    keep = set(list(dict.fromkeys(e.user_id for e in examples))[:count])
    return [e for e in examples if e.user_id in keep]


def _row(
    recommender: str, profile: str, truth: np.ndarray, probabilities: np.ndarray, seconds: float
) -> dict:
    from sklearn.metrics import f1_score

    # A row the LLM could not answer (NaN) counts as wrong: argmax of NaN is label 0, so mark it.
    answered = ~np.isnan(probabilities).any(axis=1)
    predicted = np.where(answered, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1), -1)
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
) -> pd.DataFrame:
    """Accuracy and macro-F1 of the majority label, the offline recommender (fit here on `train`)
    and `candidate` on `calibration`'s targets, with no profile and with `profile_style`."""
    if not train or not calibration:
        raise ValueError("the trial needs training and calibration users")
    truth = np.array([LABELS.index(e.label) for e in calibration])
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    profiles = [p[profile_style] for p in writer_profiles(calibration, (profile_style,))]
    blank: list[str | None] = [None] * len(calibration)
    constant = np.zeros((len(calibration), len(LABELS)))
    constant[:, LABELS.index(majority)] = 1.0
    rows = [_row(MAJORITY, f"none (always {majority})", truth, constant, 0.0)]

    started = time.perf_counter()
    offline.fit(train, writer_profiles(train), "sentiment", holdout=False)
    log(f"offline recommender fit on {len(train)} training targets")
    for recommender, name in ((offline, OFFLINE), (candidate, LLM)):
        for label, shown in (("none", blank), (profile_style, profiles)):
            began = time.perf_counter()
            probabilities = recommender.predict_sentiment(calibration, shown)
            rows.append(_row(name, label, truth, probabilities, time.perf_counter() - began))
            log(f"{name}, profile {label}: accuracy {rows[-1]['accuracy']:.3f}")
    log(f"trial took {time.perf_counter() - started:.0f} s")
    return pd.DataFrame(rows, columns=[c for c in TRIAL_COLUMNS if c != "dataset"])


def decide(trial: pd.DataFrame) -> TrialDecision:
    """The serving rule: the LLM's best accuracy beats the majority label's and is at least the
    offline recommender's best."""
    best = trial.groupby("recommender")["accuracy"].max()
    llm, majority, offline = (float(best.get(k, np.nan)) for k in (LLM, MAJORITY, OFFLINE))
    return TrialDecision(bool(llm > majority and llm >= offline), llm, majority, offline)
