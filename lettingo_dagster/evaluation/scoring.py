"""Stage 2 as plain steps: every candidate profile scored by the frozen recommender on all of
its user's targets (`rewards.profile_rewards`), the no-profile reference, and how reliable the
rewards are. The `reward_scores` asset stores the rewards and emits the metadata."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

from lettingo_dagster.evaluation.examples import TargetExample, load_target_examples
from lettingo_dagster.evaluation.recommender import load_recommender
from lettingo_dagster.models.cache import CacheStats, ChunkProgress, ModelCallCache
from lettingo_dagster.settings import Preset


def examples_by_user(examples: Sequence[TargetExample]) -> dict[str, list[TargetExample]]:
    grouped: dict[str, list[TargetExample]] = defaultdict(list)
    for example in examples:
        grouped[example.user_id].append(example)
    return grouped


def load_scoring_inputs(
    con: duckdb.DuckDBPyConnection, dataset: str, preset: Preset
) -> tuple[pd.DataFrame, list[TargetExample]]:
    """The dataset's sampled profiles and the targets of every split they cover."""
    profiles = con.execute("SELECT * FROM sampled_profiles WHERE dataset = ?", [dataset]).df()
    examples = load_target_examples(
        con, dataset, preset.task, tuple(sorted(set(profiles["split"])))
    )
    return profiles, examples


@dataclass(frozen=True)
class RewardRun:
    rewards: pd.DataFrame  # rows in `rewards.REWARD_COLUMNS`
    stats: CacheStats
    no_profile_accuracy: float
    recommender: str  # the recommender's name
    reliability: dict[str, float]  # split-half reliability over training users (else all)
    started: float  # time.perf_counter() when scoring began


def score_profiles(
    preset: Preset,
    profiles: pd.DataFrame,
    examples: Sequence[TargetExample],
    *,
    recommender_dir: str,
    base_generator_dir: str,
    cache: ModelCallCache,
    log: Callable[[str], None] = print,
) -> RewardRun:
    from lettingo_dagster.evaluation.rewards import (
        no_profile_accuracy,
        profile_rewards,
        reliability_interval,
    )

    task = preset.recommender.task
    model = load_recommender(recommender_dir, preset, base_generator_dir)

    def progress(update: ChunkProgress) -> None:
        log(f"reward scores: {update.done}/{update.total} (profile, target) pairs, "
            f"cache hits {update.stats.hits}")  # fmt: skip

    started = time.perf_counter()
    rewards, stats = profile_rewards(
        model, task, profiles, examples_by_user(examples), cache,
        chunk_size=preset.recommender.chunk_size, on_chunk=progress,
        reward=preset.recommender.reward,
    )  # fmt: skip
    baseline = no_profile_accuracy(model, task, examples, cache)
    train = rewards[rewards["split"] == "train"]
    reliability = reliability_interval(train if len(train) else rewards, seed=preset.report.seed)
    return RewardRun(rewards, stats, baseline, model.name, reliability, started)
