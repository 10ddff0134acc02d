"""Preference pairs (stage 3): every (better, worse) pair of a user's candidates.

Candidates are compared on `reward` (continuous gain over no profile, or the binary fraction of
targets right). With `min_z` > 0 a pair also needs its paired difference over the user's targets
to exceed min_z standard errors: with few targets most differences are target noise, and DPO
would learn whatever style the noise favoured. With the binary reward, one target per user and
min_z 0 this is exactly the paper's right-versus-wrong rule. Options: a graded margin (the probability of the truth must also differ
by at least the margin, in the same direction), a cap per user, pairs only within one explorer,
and balancing so that no explorer or style is preferred over another just by its format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import duckdb

    from lettingo_dagster.settings import PairSettings

PAIR_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "split": "VARCHAR",
    "prompt_system": "VARCHAR",
    "prompt_user": "VARCHAR",
    "chosen": "VARCHAR",
    "rejected": "VARCHAR",
    "chosen_profile_id": "VARCHAR",
    "rejected_profile_id": "VARCHAR",
    "chosen_reward": "DOUBLE",
    "rejected_reward": "DOUBLE",
    "chosen_graded": "DOUBLE",
    "rejected_graded": "DOUBLE",
    "chosen_source": "VARCHAR",
    "rejected_source": "VARCHAR",
}


@dataclass(frozen=True)
class PairOptions:
    graded_margin: float = 0.0  # 0: binary rule only
    min_z: float = 0.0  # paired difference over targets / its standard error must exceed this
    swap: bool = False  # negative control: training pairs' chosen and rejected trade places
    max_pairs_per_user: int | None = None
    scope: Literal["all", "within_explorer", "policy"] = "all"
    policy: str | None = None  # the explorer DPO trains (scope "policy")
    balance_sources: bool = False
    seed: int = 0


def pair_options(settings: PairSettings, policy: str | None = None) -> PairOptions:
    """The preset's `pairs` section as options; `policy` is `dpo.policy`."""
    if settings.scope == "policy" and policy is None:
        raise ValueError("pairs.scope 'policy' needs the policy's explorer name")
    return PairOptions(
        graded_margin=settings.graded_margin, min_z=settings.min_z,
        swap=settings.swap_chosen_rejected,
        max_pairs_per_user=settings.max_pairs_per_user,
        scope=settings.scope, policy=policy,
        balance_sources=settings.balance_sources, seed=settings.seed,
    )  # fmt: skip


def load_scored_candidates(con: duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    """Every scored candidate of a dataset with its text, in a stable order."""
    return con.execute(
        """
        SELECT r.dataset, r.user_id, r.split, r.explorer, r.style, r.profile_id, p.profile,
               r.binary_reward, r.graded_reward, r.reward, r.target_rewards
        FROM reward_scores r JOIN sampled_profiles p USING (dataset, profile_id)
        WHERE r.dataset = ? ORDER BY r.user_id, r.explorer, r.style, r.sample_index
        """,
        [dataset],
    ).df()


def profile_source(explorer: str, style: str | None) -> str:
    """What a pair's side came from: the explorer, and the writer style when there is one."""
    return f"{explorer}/{style}" if style else explorer


def _seeded_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def clears_noise(a: object, b: object, min_z: float) -> bool:
    """Does the mean paired difference of two profiles' per-target rewards exceed min_z
    standard errors? With fewer than two targets there is no standard error: any difference."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return bool(np.any(d != 0))
    se = d.std(ddof=1) / np.sqrt(len(d))
    return bool(abs(d.mean()) > min_z * se) if se > 0 else bool(d.mean() != 0)


def _user_pairs(user: pd.DataFrame, options: PairOptions) -> list[tuple[int, int]]:
    """(chosen row, rejected row) index pairs of one user's candidates."""
    pairs = []
    rows = list(user.itertuples())
    for a, b in combinations(rows, 2):
        if a.reward == b.reward or a.profile == b.profile:
            continue
        if options.scope == "within_explorer" and a.explorer != b.explorer:
            continue
        if options.scope == "policy" and not a.explorer == b.explorer == options.policy:
            continue
        if options.min_z > 0 and not clears_noise(
            a.target_rewards, b.target_rewards, options.min_z
        ):
            continue
        better, worse = (a, b) if a.reward > b.reward else (b, a)
        if (
            options.graded_margin > 0
            and better.graded_reward - worse.graded_reward < options.graded_margin
        ):
            continue
        pairs.append((better.Index, worse.Index))
    if options.max_pairs_per_user is not None and len(pairs) > options.max_pairs_per_user:
        rng = _seeded_rng(options.seed, str(user["user_id"].iloc[0]))
        keep = sorted(rng.choice(len(pairs), size=options.max_pairs_per_user, replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


def _balance(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Keep as many A-over-B pairs as B-over-A pairs for every two different sources."""
    if pairs.empty:
        return pairs
    keep: list[int] = []
    ordered = pairs.assign(
        low=np.minimum(pairs.chosen_source, pairs.rejected_source),
        high=np.maximum(pairs.chosen_source, pairs.rejected_source),
    )
    for (low, high), group in ordered.groupby(["low", "high"], sort=True):
        if low == high:
            keep.extend(group.index)
            continue
        forward = group[group.chosen_source == low]
        backward = group[group.chosen_source == high]
        n = min(len(forward), len(backward))
        rng = _seeded_rng(seed, f"{low}|{high}")
        for side in (forward, backward):
            keep.extend(
                side.index[np.sort(rng.choice(len(side), size=n, replace=False))] if n else []
            )
    return pairs.loc[sorted(keep)]


def build_pairs(
    rewards: pd.DataFrame, prompts: dict[str, tuple[str | None, str]], options: PairOptions
) -> pd.DataFrame:
    """Pairs from per-profile rewards.

    `rewards` has one row per candidate profile: dataset, user_id, split, explorer, style,
    profile_id, profile, reward, target_rewards, graded_reward. `prompts` maps a user to the DPO prompt
    (system, user): the exploration prompt over the user's long window.
    """
    frame = rewards.reset_index(drop=True)
    chosen_idx: list[int] = []
    rejected_idx: list[int] = []
    for _user, group in frame.groupby("user_id", sort=True):
        for better, worse in _user_pairs(group, options):
            chosen_idx.append(better)
            rejected_idx.append(worse)
    chosen = frame.loc[chosen_idx].reset_index(drop=True)
    rejected = frame.loc[rejected_idx].reset_index(drop=True)
    pairs = pd.DataFrame(
        {
            "dataset": chosen["dataset"],
            "user_id": chosen["user_id"],
            "split": chosen["split"],
            "prompt_system": [prompts[u][0] for u in chosen["user_id"]],
            "prompt_user": [prompts[u][1] for u in chosen["user_id"]],
            "chosen": chosen["profile"],
            "rejected": rejected["profile"],
            "chosen_profile_id": chosen["profile_id"],
            "rejected_profile_id": rejected["profile_id"],
            "chosen_reward": chosen["reward"].astype(float),
            "rejected_reward": rejected["reward"].astype(float),
            "chosen_graded": chosen["graded_reward"].astype(float),
            "rejected_graded": rejected["graded_reward"].astype(float),
            "chosen_source": [
                profile_source(e, s)
                for e, s in zip(chosen["explorer"], chosen["style"], strict=True)
            ],
            "rejected_source": [
                profile_source(e, s)
                for e, s in zip(rejected["explorer"], rejected["style"], strict=True)
            ],
        },
        columns=list(PAIR_COLUMNS),
    )
    if options.balance_sources:
        pairs = _balance(pairs, options.seed)
    if options.swap:
        train = pairs["split"] == "train"
        pairs = pd.concat([swap_sides(pairs[train]), pairs[~train]]).sort_index()
    return pairs.reset_index(drop=True)


def swap_sides(pairs: pd.DataFrame) -> pd.DataFrame:
    """Every pair with chosen and rejected exchanged (the negative control). Only training
    pairs are swapped, so DPO's held-out preference accuracy on calibration users' pairs still
    measures agreement with the true preferences and must fall below 0.5."""
    renamed = {}
    for column in pairs.columns:
        if column.startswith("chosen"):
            renamed[column] = "rejected" + column[len("chosen") :]
        elif column.startswith("rejected"):
            renamed[column] = "chosen" + column[len("rejected") :]
    return pairs.rename(columns=renamed)[list(pairs.columns)]


def pair_summary(pairs: pd.DataFrame, users_with_candidates: int) -> dict[str, float]:
    users = pairs["user_id"].nunique() if len(pairs) else 0
    return {
        "pairs": len(pairs),
        "users_with_pairs": users,
        "share_of_users_with_pairs": round(users / users_with_candidates, 3)
        if users_with_candidates
        else 0.0,
        "pairs_per_user_with_pairs": round(len(pairs) / users, 2) if users else 0.0,
    }


def split_summaries(pairs: pd.DataFrame, candidates: pd.DataFrame) -> dict[str, dict[str, float]]:
    """`pair_summary` of the train and the calibration users."""
    return {
        split: pair_summary(
            pairs[pairs.split == split], candidates[candidates.split == split]["user_id"].nunique()
        )
        for split in ("train", "calibration")
    }


def source_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """How often each source is chosen and rejected."""
    return (
        pd.concat([pairs["chosen_source"].value_counts().rename("chosen"),
                   pairs["rejected_source"].value_counts().rename("rejected")], axis=1)
        .fillna(0).astype(int).rename_axis("source").reset_index()
    )  # fmt: skip
