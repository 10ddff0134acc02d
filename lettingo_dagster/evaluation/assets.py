"""Dagster assets of stage 2: the frozen recommender, the oracle study, and reward scores."""

import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.evaluation.examples import TargetExample, load_target_examples
from lettingo_dagster.evaluation.recommender import Recommender
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.paths import model_cache_path, models_dir
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import Preset
from lettingo_dagster.storage import markdown_preview, replace_partition_from_frame

RECOMMENDER_SPEC = "recommender.json"


def load_recommender(
    folder: str | Path, preset: Preset, base_generator_dir: str | None = None
) -> Recommender:
    """The frozen recommender saved by the `recommender` asset."""
    spec = json.loads((Path(folder) / RECOMMENDER_SPEC).read_text())
    if spec["kind"] == "offline":
        from lettingo_dagster.evaluation.offline import OfflineRecommender

        return OfflineRecommender.load(folder)
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.exploration.explorers import build_model

    assert preset.recommender.model is not None
    model = build_model(
        preset.recommender.model, base_generator_dir, preset.exploration.torch_threads
    )
    return LLMRecommender(model, preset.recommender.prompt_template)


def _figures_table(figures: dict[str, float]) -> pd.DataFrame:
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in figures.items():
        source, _, metric = key.partition("/")
        if metric:
            rows[source][metric] = round(float(value), 4)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("profile").reset_index()


@dataset_asset(
    key="recommender",
    group_name="evaluation",
    kinds={"scikitlearn", "pytorch"},
    pool="gpu",
    deps=["task_samples"],
    description=(
        "The frozen recommender that scores profiles (stage 2). offline: all-MiniLM-L6-v2 "
        "sentence features of the recent window, the profile and the target, with a small head "
        "fit once on calibration users' writer profiles (and without a profile), then saved and "
        "never refit; llm: the paper's LLM recommender. The value is the saved folder's path."
    ),
)
def recommender(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> dg.Output[str]:
    preset = settings.load()
    config = preset.recommender
    dataset = context.partition_key
    if config.kind == "llm":
        folder = models_dir() / "recommender" / dataset / "llm"
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"kind": "llm", "model": config.model.model_dump() if config.model else None,
                "prompt_template": config.prompt_template}  # fmt: skip
        (folder / RECOMMENDER_SPEC).write_text(json.dumps(spec, indent=1))
        return dg.Output(str(folder), metadata={"kind": "llm", "task": config.task})

    from lettingo_dagster.evaluation.offline import OfflineConfig, OfflineRecommender
    from lettingo_dagster.evaluation.oracle import writer_profiles

    with warehouse.get_connection() as con:
        examples = load_target_examples(con, dataset, preset.task, ("calibration",))
    if not examples:
        raise dg.Failure(description=f"{dataset}: no calibration users in task_samples")
    started = time.perf_counter()
    model = OfflineRecommender(
        OfflineConfig(use_item_stats=config.use_item_stats, seed=config.seed)
    )
    figures = model.fit(examples, writer_profiles(examples), ("sentiment", "ranking"))
    folder = models_dir() / "recommender" / dataset / model.fingerprint
    if not (folder / RECOMMENDER_SPEC).is_file():
        scratch = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        model.save(scratch)
        (scratch / RECOMMENDER_SPEC).write_text(
            json.dumps({"kind": "offline", "figures": figures}, indent=1)
        )
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    context.log.info(
        f"recommender {model.fingerprint} fit in {time.perf_counter() - started:.0f} s"
    )
    return dg.Output(
        str(folder),
        metadata={
            "model_path": dg.MetadataValue.path(str(folder)),
            "kind": "offline",
            "task": config.task,
            "fingerprint": model.fingerprint,
            "calibration_users": int(figures.get("fit_users", 0)),
            "calibration_figures": dg.MetadataValue.md(
                markdown_preview(_figures_table(figures), rows=30)
            ),
            "fit_seconds": round(figures.get("fit_seconds", 0.0), 1),
        },
    )


@dataset_asset(
    key="oracle_study",
    group_name="evaluation",
    kinds={"scikitlearn"},
    pool="gpu",
    deps=["task_samples"],
    description=(
        "How much could a profile add at all? On calibration users (cross-fitted), the "
        "recommender with no profile, the raw long window as text, the long window given "
        "directly as features (the information ceiling) and each writer style, for both tasks, "
        "with paired bootstrap intervals against no profile. Run before any generator is trained."
    ),
)
def oracle_study(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> dg.MaterializeResult:
    from lettingo_dagster.evaluation.offline import OfflineConfig, OfflineRecommender
    from lettingo_dagster.evaluation.oracle import oracle_table

    preset = settings.load()
    with warehouse.get_connection() as con:
        examples = load_target_examples(con, context.partition_key, preset.task, ("calibration",))

    def factory(oracle: bool) -> OfflineRecommender:
        return OfflineRecommender(
            OfflineConfig(use_item_stats=preset.recommender.use_item_stats, oracle_long_window=oracle,
                          seed=preset.recommender.seed)
        )  # fmt: skip

    started = time.perf_counter()
    users = len({e.user_id for e in examples})
    table = oracle_table(
        factory, examples, n_folds=max(2, min(5, users // 4)), log=context.log.info
    )
    metadata: dict[str, Any] = {
        "calibration_users": len({e.user_id for e in examples}),
        "targets": len(examples),
        "seconds": round(time.perf_counter() - started, 1),
        "preset_task": preset.recommender.task,
    }
    for task, group in table.groupby("task"):
        metadata[f"oracle_{task}"] = dg.MetadataValue.md(
            markdown_preview(oracle_pivot(group), rows=40, width=60)
        )
    return dg.MaterializeResult(metadata=metadata)


def oracle_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """One row per condition; each metric as `value (difference vs none [95% interval])`."""
    cells = table.assign(
        cell=[
            f"{r.value:.3f} ({r.diff_vs_none:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}])"
            for r in table.itertuples()
        ]
    )
    order = list(dict.fromkeys(table["condition"]))
    return (
        cells.pivot(index="condition", columns="metric", values="cell").reindex(order).reset_index()
    )


def examples_by_user(examples: list[TargetExample]) -> dict[str, list[TargetExample]]:
    grouped: dict[str, list[TargetExample]] = defaultdict(list)
    for example in examples:
        grouped[example.user_id].append(example)
    return grouped


@dataset_asset(
    key="reward_scores",
    group_name="evaluation",
    kinds={"duckdb"},
    pool="duckdb",
    deps=["sampled_profiles", "task_samples"],
    description=(
        "Stage 2 of LettinGo: every candidate profile scored by the frozen recommender on all of "
        "its user's targets. Per profile: the predictions, the probability of the truth (or the "
        "true item's reciprocal rank), the binary reward (fraction of targets right; with T = 1 "
        "the paper's) and the graded reward. Cached and resumable like generations."
    ),
)
def reward_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    recommender: str,
    base_generator: str,
) -> dg.MaterializeResult:
    from lettingo_dagster.evaluation.rewards import (
        REWARD_COLUMNS,
        no_profile_accuracy,
        profile_rewards,
        split_half_reliability,
    )

    preset = settings.load()
    dataset = context.partition_key
    task = preset.recommender.task
    with warehouse.get_connection() as con:
        profiles = con.execute("SELECT * FROM sampled_profiles WHERE dataset = ?", [dataset]).df()
        examples = load_target_examples(
            con, dataset, preset.task, tuple(sorted(set(profiles["split"])))
        )
    model = load_recommender(recommender, preset, base_generator)
    cache = ModelCallCache(model_cache_path())
    grouped = examples_by_user(examples)

    def progress(update: ChunkProgress) -> None:
        context.log.info(f"reward scores: {update.done}/{update.total} (profile, target) pairs, "
                         f"cache hits {update.stats.hits}")  # fmt: skip

    started = time.perf_counter()
    rewards, stats = profile_rewards(
        model,
        task,
        profiles,
        grouped,
        cache,
        chunk_size=preset.recommender.chunk_size,
        on_chunk=progress,
    )
    baseline = no_profile_accuracy(model, task, examples, cache)
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(con, "reward_scores", dataset, rewards, REWARD_COLUMNS)
    per_explorer = (
        rewards.assign(
            source=[
                f"{e}/{s}" if isinstance(s, str) else e
                for e, s in zip(rewards.explorer, rewards["style"], strict=True)
            ]
        )
        .groupby("source")
        .agg(
            profiles=("profile_id", "size"),
            accuracy=("binary_reward", "mean"),
            graded=("graded_reward", "mean"),
        )
        .sort_values("accuracy", ascending=False)
        .round(4)
        .reset_index()
    )
    histogram = (
        rewards["binary_reward"].round(2).value_counts().sort_index().rename_axis("binary_reward")
        .rename("profiles").reset_index()
    )  # fmt: skip
    users_mixed = rewards.groupby("user_id")["binary_reward"].nunique().gt(1).mean()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "task": task,
            "recommender": model.name,
            "accuracy_per_explorer": dg.MetadataValue.md(markdown_preview(per_explorer, rows=50)),
            "no_profile_accuracy": round(baseline, 4),
            "mean_binary_reward": round(float(rewards["binary_reward"].mean()), 4),
            "reward_histogram": dg.MetadataValue.md(markdown_preview(histogram, rows=50)),
            "share_of_users_with_differing_rewards": round(float(users_mixed), 3),
            # How much of the reward differences between one user's profiles is signal: near 0,
            # preference pairs are noise that DPO can only memorize.
            "reward_split_half_reliability": round(split_half_reliability(rewards), 4),
            "scored_pairs": stats.hits + stats.misses,
            "cache_hit_rate": round(stats.hit_rate, 3),
            "seconds": round(time.perf_counter() - started, 1),
            "pairs_per_second": round(stats.misses / stats.model_seconds, 1)
            if stats.model_seconds
            else 0.0,
        }
    )


evaluation_assets = [recommender, oracle_study, reward_scores]
