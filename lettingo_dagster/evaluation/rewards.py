"""Stage 2: score every candidate profile by its effect on the frozen recommender.

For each profile and each of its user's targets: the prediction and the probability of the
truth (sentiment: the true label's probability; ranking: the true item's rank among its
negatives). Per profile: the binary reward (fraction of targets right; with T = 1 exactly the
paper's) and the graded reward (mean probability of the truth, or mean reciprocal rank).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.evaluation.recommender import Recommender
from lettingo_dagster.models.cache import CacheStats, ChunkProgress, ModelCallCache, cached_map

REWARD_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "profile_id": "VARCHAR",
    "split": "VARCHAR",
    "explorer": "VARCHAR",
    "style": "VARCHAR",
    "sample_index": "INTEGER",
    "task": "VARCHAR",
    "targets": "INTEGER",
    "binary_reward": "DOUBLE",  # fraction of the user's targets predicted right
    "graded_reward": "DOUBLE",  # mean probability of the truth / mean reciprocal rank
    "target_predictions": "VARCHAR[]",  # label, or the predicted top item; NULL when unparseable
    "target_truth_scores": "DOUBLE[]",  # probability of the truth, or 1 / rank of the truth
}


def _key(recommender: Recommender, task: str, example: TargetExample, profile: str | None) -> str:
    payload = (
        f"{recommender.fingerprint}|{task}|{example.user_id}|{example.target_index}|{profile or ''}"
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def outcome(
    task: str, example: TargetExample, value: Sequence[float]
) -> tuple[str | None, bool, float]:
    """(prediction, correct, truth score) of one recommender output."""
    scores = np.asarray(value, dtype=float)
    if np.isnan(scores).any():
        return None, False, 0.0  # unparseable: recorded as such, counted wrong
    if task == "sentiment":
        predicted = LABELS[int(np.argmax(scores))]
        return predicted, predicted == example.label, float(scores[LABELS.index(example.label)])
    # Ties rank against the target, so a constant scorer never looks right.
    rank = 1 + int(np.sum(scores[1:] >= scores[0]))
    return example.candidates[int(np.argmax(scores))].item_id, rank == 1, 1.0 / rank


def score_pairs(
    recommender: Recommender,
    task: str,
    examples: Sequence[TargetExample],
    profiles: Sequence[str | None],
    cache: ModelCallCache,
    *,
    chunk_size: int = 512,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> tuple[list[Any], CacheStats]:
    """Raw recommender outputs for (example, profile) pairs, through the cache."""
    keys = [_key(recommender, task, e, p) for e, p in zip(examples, profiles, strict=True)]

    def compute(indexes: list[int]) -> list[Any]:
        # One target's profiles side by side: their prompts share the recent window, which a
        # local LLM recommender then computes once for all of them (LocalCausalLM.score_options).
        order = sorted(
            range(len(indexes)),
            key=lambda k: (examples[indexes[k]].user_id, examples[indexes[k]].target_index),
        )
        chosen_examples = [examples[indexes[k]] for k in order]
        chosen_profiles = [profiles[indexes[k]] for k in order]
        if task == "sentiment":
            values = recommender.predict_sentiment(chosen_examples, chosen_profiles).tolist()
        else:
            values = [
                scores.tolist()
                for scores in recommender.score_candidates(chosen_examples, chosen_profiles)
            ]
        restored: list[Any] = [None] * len(indexes)
        for position, k in enumerate(order):
            restored[k] = values[position]
        return restored

    return cached_map(
        cache,
        f"recommend-{task}",
        recommender.fingerprint,
        keys,
        compute,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )


def profile_rewards(
    recommender: Recommender,
    task: str,
    profiles: pd.DataFrame,
    examples_by_user: dict[str, list[TargetExample]],
    cache: ModelCallCache,
    *,
    chunk_size: int = 512,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> tuple[pd.DataFrame, CacheStats]:
    """One row per profile with its rewards (REWARD_COLUMNS)."""
    flat_examples: list[TargetExample] = []
    flat_profiles: list[str | None] = []
    owners: list[int] = []
    for row, (user_id, text) in enumerate(
        zip(profiles["user_id"], profiles["profile"], strict=True)
    ):
        for example in examples_by_user[user_id]:
            flat_examples.append(example)
            flat_profiles.append(text)
            owners.append(row)
    values, stats = score_pairs(
        recommender,
        task,
        flat_examples,
        flat_profiles,
        cache,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )
    per_profile: list[list[tuple[str | None, bool, float]]] = [[] for _ in range(len(profiles))]
    for owner, example, value in zip(owners, flat_examples, values, strict=True):
        per_profile[owner].append(outcome(task, example, value))
    frame = profiles[
        ["dataset", "user_id", "profile_id", "split", "explorer", "style", "sample_index"]
    ].copy()
    frame["task"] = task
    frame["targets"] = [len(results) for results in per_profile]
    frame["binary_reward"] = [float(np.mean([r[1] for r in results])) for results in per_profile]
    frame["graded_reward"] = [float(np.mean([r[2] for r in results])) for results in per_profile]
    frame["target_predictions"] = [[r[0] for r in results] for results in per_profile]
    frame["target_truth_scores"] = [[r[2] for r in results] for results in per_profile]
    return frame[list(REWARD_COLUMNS)].reset_index(drop=True), stats


def no_profile_accuracy(
    recommender: Recommender,
    task: str,
    examples: Sequence[TargetExample],
    cache: ModelCallCache,
) -> float:
    """The recommender without any profile on the same targets: the reference point."""
    values, _ = score_pairs(recommender, task, examples, [None] * len(examples), cache)
    return float(np.mean([outcome(task, e, v)[1] for e, v in zip(examples, values, strict=True)]))


def split_half_reliability(rewards: pd.DataFrame) -> float:
    """Does a profile's reward replicate across its user's targets? The within-user correlation
    between each profile's mean truth score on the even-numbered targets and on the odd-numbered
    ones (user means removed, so only differences between one user's profiles count).

    Near 0, the differences that preference pairs are built from are noise of the targets, not a
    property of the profiles, and DPO can only memorize them; NaN with fewer than two targets.
    """
    scores = [np.asarray(s, dtype=float) for s in rewards["target_truth_scores"]]
    if not scores or min(len(s) for s in scores) < 2:
        return float("nan")
    frame = pd.DataFrame(
        {
            "user": rewards["user_id"].to_numpy(),
            "even": [s[0::2].mean() for s in scores],
            "odd": [s[1::2].mean() for s in scores],
        }
    )
    centred = frame[["even", "odd"]] - frame.groupby("user")[["even", "odd"]].transform("mean")
    if centred["even"].std() == 0 or centred["odd"].std() == 0:
        return float("nan")
    return float(np.corrcoef(centred["even"], centred["odd"])[0, 1])
