"""Stage 2: score every candidate profile by its effect on the frozen recommender.

For each profile and each of its user's targets: the prediction and the probability of the
truth (sentiment: the true label's probability; ranking: the true item's rank among its
negatives). Per profile: the binary reward (fraction of targets right; with T = 1 exactly the
paper's), the graded reward (mean probability of the truth, or mean reciprocal rank), and the
reward pairs are built from (`recommender.reward`):

- `continuous` (default): per target, the log-probability of the truth (sentiment) or the
  target's log-softmax among its candidates (ranking), minus the same user's no-profile score on
  the same target; averaged over the targets. Continuous scores separate profiles that a 0/1
  outcome ties, and subtracting the no-profile score removes what the target alone explains (an
  easy or a hard target), so the differences between one user's profiles are about the profiles.
- `binary`: the paper's fraction of targets right.

`target_rewards` keeps the per-target values, so pairs can ask whether a difference clears its
standard error over the user's targets.
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
    "reward": "DOUBLE",  # what pairs compare: the mean of target_rewards
    "target_rewards": "DOUBLE[]",  # per target: gain over no profile, or 1 / 0 (binary)
}


def log_score(task: str, example: TargetExample, value: Sequence[float]) -> float:
    """The continuous per-target score of one recommender output (higher is better)."""
    scores = np.asarray(value, dtype=float)
    if np.isnan(scores).any():
        return float("nan")
    if task == "ranking":  # the target is candidate 0: its log-softmax among the candidates
        top = scores.max()
        return float(scores[0] - top - np.log(np.exp(scores - top).sum()))
    return float(np.log(max(scores[LABELS.index(example.label)], 1e-9)))


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
    reward: str = "continuous",
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
    gains: list[list[float]] = [[] for _ in range(len(profiles))]
    baseline: dict[tuple[str, int], float] = {}
    if reward == "continuous":
        # The same user's no-profile score on each target (cached like every score).
        targets = list({(e.user_id, e.target_index): e for e in flat_examples}.values())
        base_values, _ = score_pairs(recommender, task, targets, [None] * len(targets), cache,
                                     chunk_size=chunk_size)  # fmt: skip
        baseline = {
            (e.user_id, e.target_index): log_score(task, e, v)
            for e, v in zip(targets, base_values, strict=True)
        }
    for owner, example, value in zip(owners, flat_examples, values, strict=True):
        result = outcome(task, example, value)
        per_profile[owner].append(result)
        if reward == "continuous":
            score = log_score(task, example, value)
            gain = score - baseline[(example.user_id, example.target_index)]
            gains[owner].append(gain if np.isfinite(gain) else 0.0)
        else:
            gains[owner].append(float(result[1]))
    frame = profiles[
        ["dataset", "user_id", "profile_id", "split", "explorer", "style", "sample_index"]
    ].copy()
    frame["task"] = task
    frame["targets"] = [len(results) for results in per_profile]
    frame["binary_reward"] = [float(np.mean([r[1] for r in results])) for results in per_profile]
    frame["graded_reward"] = [float(np.mean([r[2] for r in results])) for results in per_profile]
    frame["target_predictions"] = [[r[0] for r in results] for results in per_profile]
    frame["target_truth_scores"] = [[r[2] for r in results] for results in per_profile]
    frame["target_rewards"] = gains
    frame["reward"] = [float(np.mean(g)) if g else 0.0 for g in gains]
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


def spearman_brown(r: float) -> float:
    """The reliability of the whole from the correlation of its two halves."""
    return 2 * r / (1 + r) if np.isfinite(r) and r > -1 else float("nan")


def reliability_interval(
    rewards: pd.DataFrame, column: str = "target_rewards", n_boot: int = 200, seed: int = 0
) -> dict[str, float]:
    """Spearman-Brown corrected split-half reliability of the reward, with a 95% bootstrap
    interval over users (a resampled user keeps all of their profiles)."""
    point = spearman_brown(split_half_reliability(rewards, column))
    users = rewards["user_id"].unique()
    rng = np.random.default_rng(seed)
    halves = _centred_halves(rewards, column)
    draws: list[float] = []
    if halves is not None:
        even, odd = halves
        # Centred within each user, the halves sum to 0 over any set of whole users, so a
        # resample's correlation is sum(even*odd) / sqrt(sum(even^2) sum(odd^2)) over its users:
        # per-user sums weighted by how often the draw took each user, one product for all
        # draws instead of a data frame per draw.
        codes = pd.Index(users).get_indexer(rewards["user_id"])
        per_user = np.stack(
            [np.bincount(codes, weights=w, minlength=len(users))
             for w in (even * odd, even * even, odd * odd)],
            axis=1,
        )  # fmt: skip
        counts = np.stack(
            [
                np.bincount(rng.choice(len(users), size=len(users)), minlength=len(users))
                for _ in range(n_boot)
            ]
        )
        cross, even_sq, odd_sq = (counts @ per_user).T
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cross / np.sqrt(even_sq * odd_sq)
        draws = [spearman_brown(float(x)) for x in r]
    draws = [d for d in draws if np.isfinite(d)]
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"),) * 2
    return {"estimate": float(point), "low": float(low), "high": float(high)}


def explorer_rewards(rewards: pd.DataFrame) -> pd.DataFrame:
    """Each explorer's (and writer style's) mean reward with its standard error over users."""
    frame = rewards.assign(
        source=[
            f"{e}/{s}" if isinstance(s, str) else e
            for e, s in zip(rewards["explorer"], rewards["style"], strict=True)
        ]
    )
    per_user = frame.groupby(["source", "user_id"])["reward"].mean().reset_index()
    table = per_user.groupby("source")["reward"].agg(["mean", "std", "count"])
    table["se"] = table["std"] / np.sqrt(table["count"].clip(lower=1))
    table = table.rename(columns={"mean": "mean_reward", "count": "users"})
    return table[["mean_reward", "se", "users"]].sort_values("mean_reward", ascending=False)


def split_half_reliability(rewards: pd.DataFrame, column: str = "target_truth_scores") -> float:
    """Does a profile's reward replicate across its user's targets? The within-user correlation
    between each profile's mean truth score on the even-numbered targets and on the odd-numbered
    ones (user means removed, so only differences between one user's profiles count).

    Near 0, the differences that preference pairs are built from are noise of the targets, not a
    property of the profiles, and DPO can only memorize them; NaN with fewer than two targets.
    """
    halves = _centred_halves(rewards, column)
    if halves is None:
        return float("nan")
    even, odd = halves
    if even.std() == 0 or odd.std() == 0:
        return float("nan")
    return float(np.corrcoef(even, odd)[0, 1])


def _centred_halves(rewards: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Each profile's mean score on its even- and on its odd-numbered targets, less its user's
    mean of the same; None with fewer than two targets."""
    scores = [np.asarray(s, dtype=float) for s in rewards[column]]
    if not scores or min(len(s) for s in scores) < 2:
        return None
    frame = pd.DataFrame(
        {
            "user": rewards["user_id"].to_numpy(),
            "even": [s[0::2].mean() for s in scores],
            "odd": [s[1::2].mean() for s in scores],
        }
    )
    centred = frame[["even", "odd"]] - frame.groupby("user")[["even", "odd"]].transform("mean")
    return centred["even"].to_numpy(), centred["odd"].to_numpy()
