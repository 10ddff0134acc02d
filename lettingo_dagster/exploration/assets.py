"""Dagster assets of stage 1: the base generator and the sampled candidate profiles."""

import time
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_MODEL
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.exploration.explorers import CALL_FAILURE_COLUMNS, call_failure_frame
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.exploration.pretraining import loss_table, samples_markdown, train_or_reuse
from lettingo_dagster.exploration.profile_quality import profile_frames, profile_rules
from lettingo_dagster.exploration.sampling import (
    PROFILE_COLUMNS,
    ExplorationRun,
    generated_frame,
    profile_table,
    run_explorers,
)
from lettingo_dagster.models.cache import ModelCallCache
from lettingo_dagster.paths import model_cache_path
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.resources import MODEL_CALL_RETRY_POLICY, SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)


def _over_budget(run: ExplorationRun) -> dg.Failure:
    return dg.Failure(
        description=run.over_budget,
        metadata={
            "failed_model_calls": len(run.failures),
            "explorers": dg.MetadataValue.md(
                markdown_preview(pd.DataFrame(run.per_explorer), rows=50)
            ),
        },
    )


def _sampling_metadata(
    run: ExplorationRun,
    frame: pd.DataFrame,
    failure_frame: pd.DataFrame,
    users: int,
    count: int,
    empty: int,
    seconds: float,
) -> dict:
    explorer_table = pd.DataFrame(run.per_explorer)
    model_profiles = int((frame["explorer_kind"] != "writers").sum())
    examples = frame.groupby("explorer", sort=False).head(2)[
        ["user_id", "explorer", "style", "profile"]
    ]
    total_calls = int(explorer_table["new_model_calls"].sum())
    return {
        "dagster/row_count": count,
        "users": users,
        "profiles_per_user": round(count / max(users, 1), 2),
        "explorers": dg.MetadataValue.md(markdown_preview(explorer_table, rows=50)),
        "cache_hit_rate": round(1 - total_calls / model_profiles, 3) if model_profiles else 1.0,
        "new_model_calls": total_calls,
        "failed_model_calls": len(run.failures),
        "model_call_failures": dg.MetadataValue.md(
            markdown_preview(
                failure_frame[["user_id", "explorer", "error_class", "attempts"]], rows=20
            )
        ),
        "rate_limit_wait_s": round(
            sum(r.get("rate_limit_wait_s") or 0.0 for r in run.per_explorer), 2
        ),
        "empty_samples_dropped": empty,
        "seconds": round(seconds, 2),
        "examples": dg.MetadataValue.md(markdown_preview(examples, rows=20, width=400)),
    }


@dataset_asset(
    key="base_generator",
    group_name="exploration",
    kinds={"pytorch", "transformers"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "The project's own small Llama-architecture causal LM with a tokenizer trained on the "
        "dataset's text, pretrained on the deterministic writers' profiles of training users. "
        "Saved with save_pretrained to a versioned folder (the asset's value is its path); "
        "sampling it gives diverse candidate profiles, and it is the policy DPO aligns."
    ),
)
def base_generator(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> dg.Output[str]:
    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=("train",))
    if not histories:
        raise dg.Failure(description=f"{dataset}: no training users in task_samples")
    outcome = train_or_reuse(preset, dataset, histories, log=context.log.info)
    report, out_dir = outcome.report, str(outcome.folder)
    return dg.Output(
        out_dir,
        metadata={
            "model_path": dg.MetadataValue.path(out_dir),
            "version": outcome.version,
            "parameters": report["parameters"],
            "training_users": len(outcome.train),
            "examples": report["examples"],
            "train_tokens": report["train_tokens"],
            "epochs": report["epochs"],
            "train_seconds": round(report["seconds"], 1),
            "final_loss": round(report["final_loss"], 4),
            "loss_curve": dg.MetadataValue.md(
                markdown_preview(loss_table(report["loss_curve"]), rows=20)
            ),
            "samples": dg.MetadataValue.md(samples_markdown(preset, outcome)),
        },
    )


@dataset_asset(
    key="sampled_profiles",
    group_name="exploration",
    kinds={"duckdb", "pytorch"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "Stage 1 of LettinGo: candidate profiles of every train and calibration user from every "
        "explorer of the preset (the base generator sampled at temperature 1.0, the "
        "deterministic writers, any local or OpenAI-compatible model). Model calls go through a "
        "persistent cache: an unchanged rerun makes no call and a killed run resumes. An "
        "endpoint's calls that still fail after their retries are listed in the "
        "model_call_failures table; past the explorer's max_failed_call_share the step fails "
        "and is retried."
    ),
    check_specs=check_specs("sampled_profiles", profile_rules()),
    retry_policy=MODEL_CALL_RETRY_POLICY,
)
def sampled_profiles(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    base_generator: str,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        splits = tuple(preset.exploration.splits)
        histories = load_long_windows(con, dataset, preset.task, splits=splits)
    cache = ModelCallCache(model_cache_path())
    started = time.perf_counter()
    run = run_explorers(preset, histories, base_generator, cache, log=context.log.info)
    # Written even when the step fails, so the failed calls can be looked at before a retry.
    failure_frame = call_failure_frame(dataset, context.run.run_id, run.failures)
    with warehouse.get_connection() as con:
        replace_partition_from_frame(
            con, "model_call_failures", dataset, failure_frame, CALL_FAILURE_COLUMNS
        )
    if run.over_budget:
        raise _over_budget(run)
    generated = generated_frame(run)
    frame = profile_table(dataset, generated)
    empty = len(generated) - len(frame)
    if empty:
        context.log.warning(f"dropping {empty} empty samples of {len(generated)}")
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(
            con, "sampled_profiles", dataset, frame, PROFILE_COLUMNS
        )
    seconds = time.perf_counter() - started
    yield dg.MaterializeResult(
        metadata=_sampling_metadata(
            run, frame, failure_frame, len(histories), count, empty, seconds
        )
    )
    yield from check_results(validate_rules(profile_frames(generated), profile_rules()))


exploration_assets = [base_generator, sampled_profiles]
