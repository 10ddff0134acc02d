"""Dagster asset of stage 3's input: the preference pairs DPO trains on."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.errors import DagsterPipesExecutionError  # not exported by dagster 1.13

from lettingo_dagster.alignment.pairs import (
    PAIR_COLUMNS,
    build_pairs,
    load_scored_candidates,
    pair_options,
    source_counts,
    split_summaries,
)
from lettingo_dagster.alignment.policy import policy_folder, policy_prompts
from lettingo_dagster.alignment.registration import (
    DpoOutcome,
    DpoRequest,
    DpoTrainingFailed,
    TrainerFailed,
    reload_and_generate,
    run_and_register,
    sample_pairs,
)
from lettingo_dagster.alignment.rules import pair_frames, pair_rules
from lettingo_dagster.alignment.run_config import DpoRunConfig
from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_MODEL, POOL_WAREHOUSE
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)
from lettingo_dagster.tracking import MlflowTracking


@dataset_asset(
    key="preference_pairs",
    group_name="alignment",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    deps=["reward_scores", "sampled_profiles"],
    description=(
        "Stage 3 input: every (better, worse) pair of a user's candidate profiles whose rewards "
        "differ by more than pairs.min_z standard errors of their paired difference over the "
        "user's targets (binary rewards, one target and min_z 0: the paper's right-versus-wrong "
        "rule), with the DPO prompt "
        "(the generator's exploration prompt over the long window), both texts, rewards and "
        "sources. Train users' pairs train DPO; calibration users' pairs are its held-out slice."
    ),
    check_specs=check_specs("preference_pairs", pair_rules()),
)
def preference_pairs(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, ("reward_scores", "sampled_profiles", "task_samples"), dataset)
        rewards = load_scored_candidates(con, dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=("train", "calibration"))
    pairs = build_pairs(
        rewards, policy_prompts(preset, histories), pair_options(preset.pairs, preset.dpo.policy)
    )
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(con, "preference_pairs", dataset, pairs, PAIR_COLUMNS)
    users = rewards["user_id"].nunique()
    summary = split_summaries(pairs, rewards)
    context.log.info(f"{count} pairs from {users} users: {summary}")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "train_pairs": summary["train"]["pairs"],
            "calibration_pairs": summary["calibration"]["pairs"],
            "share_of_train_users_with_pairs": summary["train"]["share_of_users_with_pairs"],
            "pairs_per_train_user_with_pairs": summary["train"]["pairs_per_user_with_pairs"],
            "chosen_and_rejected_by_source": dg.MetadataValue.md(
                markdown_preview(source_counts(pairs), rows=50)
            ),
            "preview": dg.MetadataValue.md(
                markdown_preview(
                    pairs[["user_id", "chosen", "rejected", "chosen_reward", "rejected_reward"]],
                    width=120,
                )
            ),
        }
    )
    yield from check_results(validate_rules(pair_frames(pairs), pair_rules(preset.pairs.min_pairs)))


# --------------------------------------------------------------------------- dpo_checkpoint


def _dpo_rules() -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "heldout_preference_accuracy",
            asset="dpo_checkpoint",
            description="On calibration users' pairs (never trained on), the trained policy "
            "prefers the chosen profile more often than not: implicit-reward accuracy above 0.5.",
        ),
        dg.AssetCheckSpec(
            "margin_grew",
            asset="dpo_checkpoint",
            description="The held-out reward margin (chosen minus rejected) grew during training.",
        ),
        dg.AssetCheckSpec(
            "reloads_and_generates",
            asset="dpo_checkpoint",
            blocking=True,
            description="The saved checkpoint loads offline from its folder and writes a "
            "non-empty profile for a calibration user.",
        ),
    ]


def _pipes_launch(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient) -> Any:
    """The trainer run through Dagster Pipes: its logs and reported figures reach the run."""

    def launch(command: list[str], env: dict[str, str]) -> dict[str, Any]:
        try:
            invocation = client.run(command=command, context=context, env=env)
        except DagsterPipesExecutionError as exc:
            raise TrainerFailed(str(exc)) from None
        return invocation.get_materialize_result().metadata or {}

    return launch


def _dpo_metadata(outcome: DpoOutcome, policy: str, lora: bool, sample: str) -> dict[str, Any]:
    report, registration = outcome.report, outcome.registration
    after = report.heldout_after
    curve = pd.DataFrame(report.history)
    shown = [c for c in ("step", "loss", "rewards/margins", "rewards/accuracies") if c in curve]
    return {
        "model_path": dg.MetadataValue.path(report.model_dir),
        "version": outcome.version,
        "mlflow_run": dg.MetadataValue.url(registration["run_url"]),
        "mlflow_run_id": registration["run_id"],
        "registered_model": outcome.registered_model,
        "model_version": registration["version"],
        "registered_model_url": dg.MetadataValue.url(registration["model_url"]),
        "policy": policy,
        "lora": lora,
        "train_pairs": report.train_pairs,
        "heldout_pairs": report.heldout_pairs,
        "global_step": report.global_step,
        "world_size": report.world_size,
        "device": report.device,
        "final_loss": round(report.final_loss, 4),
        "heldout_preference_accuracy": round(after.get("rewards/accuracies", float("nan")), 4),
        "heldout_margin": round(after.get("rewards/margins", 0.0), 4),
        "train_seconds": round(report.seconds, 1),
        "pairs_per_second": round(report.pairs_per_second, 2),
        "trained_parameters": report.trained_parameters,
        "resumed_from_step": report.resumed_from_step or 0,
        "metric_curve": dg.MetadataValue.md(
            markdown_preview(curve[shown].round(4), rows=40) if shown else "(no steps logged)"
        ),
        "sample": sample,
    }


def _dpo_checks(outcome: DpoOutcome, reload_ok: bool, sample: str) -> Iterator[dg.AssetCheckResult]:
    report = outcome.report
    after, before = report.heldout_after, report.heldout_before
    accuracy = after.get("rewards/accuracies", float("nan"))
    margin_before, margin_after = (
        before.get("rewards/margins", 0.0),
        after.get("rewards/margins", 0.0),
    )
    yield dg.AssetCheckResult(
        check_name="heldout_preference_accuracy",
        passed=bool(accuracy > 0.5),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": round(accuracy, 4), "pairs": report.heldout_pairs, "threshold": 0.5},
    )
    yield dg.AssetCheckResult(
        check_name="margin_grew",
        passed=bool(margin_after > margin_before),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"margin_before": round(margin_before, 4), "margin_after": round(margin_after, 4)},
    )
    yield dg.AssetCheckResult(
        check_name="reloads_and_generates",
        passed=reload_ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"sample": sample[:500]},
    )


@dataset_asset(
    key="dpo_checkpoint",
    group_name="alignment",
    kinds={"pytorch", "mlflow"},
    pool=POOL_MODEL,
    deps=["preference_pairs"],
    description=(
        "Stage 3 of LettinGo: the profile generator aligned with DPO (TRL's DPOTrainer) on the "
        "training users' preference pairs; the reference is the policy before training. The "
        "trainer runs as its own process under torchrun through Dagster Pipes (CUDA when "
        "present), resumes from its last checkpoint after an interruption, and is tracked in "
        "MLflow: per-step metrics, the model, and a new version of the registered model "
        "`lettingo-profile-generator-{dataset}`. The value is the saved model folder."
    ),
    check_specs=_dpo_rules(),
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext,
    config: DpoRunConfig,
    settings: SettingsResource,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    base_generator: str,
) -> Iterator[dg.Output[str] | dg.AssetCheckResult]:
    preset = settings.load()
    dataset = context.partition_key
    dpo = config.apply(preset.dpo)
    policy = config.policy_path or policy_folder(preset, dpo.policy, base_generator)
    with warehouse.get_connection() as con:
        require_partition(con, "preference_pairs", dataset)
        train = sample_pairs(con, dataset, "train", dpo.max_train_pairs, dpo.seed)
        heldout = sample_pairs(con, dataset, "calibration", dpo.heldout_pairs, dpo.seed)
    if train.empty:
        raise dg.Failure(description=f"{dataset}: preference_pairs has no training pairs")
    try:
        outcome = run_and_register(
            DpoRequest(
                preset, dpo, dataset, policy, train, heldout, tracker=mlflow,
                launch=_pipes_launch(context, pipes_subprocess_client),
                dagster_run_id=context.run.run_id, log=context.log.info,
                code_version=context.assets_def.code_versions_by_key[context.asset_key] or "",
            )
        )  # fmt: skip
    except DpoTrainingFailed as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"checkpoint_folder": dg.MetadataValue.path(str(exc.folder))},
        ) from None
    reload_ok, sample = reload_and_generate(
        outcome.report.model_dir, heldout if len(heldout) else train, preset.compute.torch_threads
    )
    yield dg.Output(
        outcome.report.model_dir,
        metadata=_dpo_metadata(outcome, dpo.policy, dpo.lora.enabled, sample),
    )
    yield from _dpo_checks(outcome, reload_ok, sample)


alignment_assets = [preference_pairs, dpo_checkpoint]
