"""Dagster asset of stage 3's input: the preference pairs DPO trains on."""

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.errors import DagsterPipesExecutionError  # not exported by dagster 1.13
from pydantic import Field

from lettingo_dagster.alignment.pairs import PAIR_COLUMNS, PairOptions, build_pairs, pair_summary
from lettingo_dagster.alignment.policy import policy_folder, policy_kind
from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_MODEL, POOL_WAREHOUSE
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.exploration.base_generator import SPECIAL_TOKENS
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.paths import models_dir
from lettingo_dagster.quality import CheckRule, expect, validate_rules
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import DpoSettings, Preset
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)
from lettingo_dagster.tracking import MlflowTracking, experiment_name, registered_model_name


def pair_rules(min_pairs: int = 1) -> list[CheckRule]:
    """The pair checks; descriptions do not depend on the preset (specs are made at import)."""
    return [
        CheckRule(
            name="texts_present_and_distinct",
            description="Prompt, chosen and rejected texts are non-empty and chosen differs from rejected.",
            frame="pairs",
            expectations=(
                expect("ExpectColumnValueLengthsToBeBetween", column="prompt_user", min_value=1),
                expect(
                    "ExpectColumnValueLengthsToBeBetween", column="chosen_stripped", min_value=1
                ),
                expect(
                    "ExpectColumnValueLengthsToBeBetween", column="rejected_stripped", min_value=1
                ),
                expect("ExpectColumnValuesToBeInSet", column="same_text", value_set=[False]),
            ),
        ),
        CheckRule(
            name="no_test_users",
            description="Pairs come from train and calibration users only; test users stay unseen.",
            frame="pairs",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeInSet",
                    column="split",
                    value_set=["train", "calibration"],
                ),
            ),
        ),
        CheckRule(
            name="enough_pairs",
            description="At least the preset's pairs.min_pairs training pairs.",
            frame="train_pairs",
            expectations=(expect("ExpectTableRowCountToBeBetween", min_value=min_pairs),),
        ),
    ]


def pair_frames(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    frame = pairs[["user_id", "split", "prompt_user", "chosen", "rejected"]].copy()
    frame["chosen_stripped"] = frame["chosen"].str.strip()
    frame["rejected_stripped"] = frame["rejected"].str.strip()
    frame["same_text"] = frame["chosen_stripped"] == frame["rejected_stripped"]
    return {"pairs": frame, "train_pairs": frame[frame["split"] == "train"].reset_index(drop=True)}


@dataset_asset(
    key="preference_pairs",
    group_name="alignment",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    deps=["reward_scores", "sampled_profiles"],
    description=(
        "Stage 3 input: every (better, worse) pair of a user's candidate profiles whose binary "
        "rewards differ (with T = 1 the paper's right-versus-wrong rule), with the DPO prompt "
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
    config = preset.pairs
    with warehouse.get_connection() as con:
        require_partition(con, ("reward_scores", "sampled_profiles", "task_samples"), dataset)
        rewards = con.execute(
            """
            SELECT r.dataset, r.user_id, r.split, r.explorer, r.style, r.profile_id, p.profile,
                   r.binary_reward, r.graded_reward, r.reward, r.target_rewards
            FROM reward_scores r JOIN sampled_profiles p USING (dataset, profile_id)
            WHERE r.dataset = ? ORDER BY r.user_id, r.explorer, r.style, r.sample_index
            """,
            [dataset],
        ).df()
        histories = load_long_windows(con, dataset, preset.task, splits=("train", "calibration"))
    template = load_template(preset.base_generator.prompt_template)
    # Rendered as the policy sees it when sampling: its special tokens defused in the data.
    specials = SPECIAL_TOKENS if policy_kind(preset) == "base_generator" else ()
    prompts = {}
    for history in histories:
        prompt = template.render(history, specials)
        prompts[history.user_id] = (prompt.system, prompt.user)
    options = PairOptions(
        graded_margin=config.graded_margin, min_z=config.min_z,
        swap=config.swap_chosen_rejected,
        max_pairs_per_user=config.max_pairs_per_user,
        scope=config.scope, balance_sources=config.balance_sources, seed=config.seed,
    )  # fmt: skip
    pairs = build_pairs(rewards, prompts, options)
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(con, "preference_pairs", dataset, pairs, PAIR_COLUMNS)
    users = rewards["user_id"].nunique()
    summary = {split: pair_summary(pairs[pairs.split == split], rewards[rewards.split == split]["user_id"].nunique())
               for split in ("train", "calibration")}  # fmt: skip
    sources = (
        pd.concat([pairs["chosen_source"].value_counts().rename("chosen"),
                   pairs["rejected_source"].value_counts().rename("rejected")], axis=1)
        .fillna(0).astype(int).rename_axis("source").reset_index()
    )  # fmt: skip
    context.log.info(f"{count} pairs from {users} users: {summary}")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "train_pairs": summary["train"]["pairs"],
            "calibration_pairs": summary["calibration"]["pairs"],
            "share_of_train_users_with_pairs": summary["train"]["share_of_users_with_pairs"],
            "pairs_per_train_user_with_pairs": summary["train"]["pairs_per_user_with_pairs"],
            "chosen_and_rejected_by_source": dg.MetadataValue.md(
                markdown_preview(sources, rows=50)
            ),
            "preview": dg.MetadataValue.md(
                markdown_preview(
                    pairs[["user_id", "chosen", "rejected", "chosen_reward", "rejected_reward"]],
                    width=120,
                )
            ),
        }
    )
    yield from check_results(validate_rules(pair_frames(pairs), pair_rules(config.min_pairs)))


# --------------------------------------------------------------------------- dpo_checkpoint


class DpoRunConfig(dg.Config):
    """Per-run overrides of the preset's `dpo` section (empty fields keep the preset's value)."""

    beta: float | None = Field(None, description="DPO beta (KL anchor strength).")
    loss_type: str | None = Field(None, description="TRL loss type, e.g. sigmoid, ipo, hinge.")
    learning_rate: float | None = Field(None, description="Peak learning rate.")
    epochs: float | None = Field(None, description="Epochs over the training pairs.")
    batch_size: int | None = Field(None, description="Pairs per step and process.")
    max_length: int | None = Field(None, description="Longest prompt plus profile in tokens.")
    lora: bool | None = Field(None, description="LoRA adapters (true) or full fine-tuning (false).")
    lora_rank: int | None = Field(None, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, description="LoRA alpha.")
    lora_target_modules: list[str] | None = Field(None, description="Modules that get adapters.")
    precompute_ref_log_probs: bool | None = Field(
        None, description="Score pairs with the reference once before training."
    )
    max_train_pairs: int | None = Field(None, description="Train on at most this many pairs.")
    processes: int | None = Field(None, description="Training processes under torchrun.")
    seed: int | None = Field(None, description="Seed of data order and initialization.")
    policy_path: str | None = Field(
        None, description="Train this model folder instead of the preset's policy explorer."
    )

    def apply(self, settings: DpoSettings) -> DpoSettings:
        update = {
            key: value
            for key, value in self.model_dump().items()
            if value is not None and key in DpoSettings.model_fields
        }
        lora = {
            field: value
            for field, value in (
                ("enabled", self.lora), ("rank", self.lora_rank), ("alpha", self.lora_alpha),
                ("target_modules", self.lora_target_modules),
            )
            if value is not None
        }  # fmt: skip
        raw = settings.model_dump()
        raw.update(update)
        raw["lora"].update(lora)
        return DpoSettings.model_validate(raw)


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


def _sample_pairs(con: Any, dataset: str, split: str, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of one split's pairs, in a stable order (hash of the pair and seed)."""
    query = f"""
        SELECT * FROM preference_pairs WHERE dataset = ? AND split = ?
        ORDER BY hash(chosen_profile_id || '|' || rejected_profile_id || '|' || ?::VARCHAR)
        {"LIMIT " + str(int(limit)) if limit else ""}
    """
    return con.execute(query, [dataset, split, seed]).df()


def _frame_digest(frame: pd.DataFrame, columns: list[str]) -> str:
    digest = hashlib.sha256()
    for row in frame[columns].itertuples(index=False):
        digest.update(json.dumps(list(row), default=str).encode())
    return digest.hexdigest()


def _reload_and_generate(model_dir: str, pairs: pd.DataFrame, preset: Preset) -> tuple[bool, str]:
    from lettingo_dagster.models.base import ChatPrompt, Decoding
    from lettingo_dagster.models.local import LocalCausalLM

    try:
        model = LocalCausalLM(model_dir, torch_threads=preset.compute.torch_threads)
        rows = pairs.head(2)
        prompts = [
            ChatPrompt(system=s or None, user=u)
            for s, u in zip(rows["prompt_system"], rows["prompt_user"], strict=True)
        ]
        [[sample], *_] = model.generate(
            prompts, Decoding(temperature=1.0, top_p=1.0, max_new_tokens=48, seed=0), 1
        )
    except Exception as exc:  # any failure to load or run is the finding
        return False, f"{type(exc).__name__}: {exc}"
    return bool(sample.text.strip()), sample.text


def _launch_command(job_file: Path, processes: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}",
        "-m", "lettingo_dagster.alignment.train", "--job", str(job_file),
    ]  # fmt: skip


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
    from lettingo_dagster.alignment.dpo import DpoJob, read_report, write_pair_file
    from lettingo_dagster.alignment.train import FAILURE_FILE
    from lettingo_dagster.models.local import folder_digest

    preset = settings.load()
    dataset = context.partition_key
    dpo = config.apply(preset.dpo)
    policy = config.policy_path or policy_folder(preset, dpo.policy, base_generator)
    with warehouse.get_connection() as con:
        require_partition(con, "preference_pairs", dataset)
        train = _sample_pairs(con, dataset, "train", dpo.max_train_pairs, dpo.seed)
        heldout = _sample_pairs(con, dataset, "calibration", dpo.heldout_pairs, dpo.seed)
    if train.empty:
        raise dg.Failure(description=f"{dataset}: preference_pairs has no training pairs")
    text_columns = ["prompt_system", "prompt_user", "chosen", "rejected"]
    version = hashlib.sha256(
        json.dumps(
            {
                "policy": folder_digest(Path(policy)),
                "settings": dpo.model_dump(exclude={"processes"}),
                "train": _frame_digest(train, text_columns),
                "heldout": _frame_digest(heldout, text_columns),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    out = models_dir() / "dpo" / dataset / version
    registration_file = out / "registration.json"
    name = registered_model_name(dataset)
    if read_report(out) is not None and registration_file.is_file():
        registration = json.loads(registration_file.read_text())
        context.log.info(
            f"DPO checkpoint {version} already trained and registered as {name} "
            f"v{registration['version']}; reusing it"
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_pair_file(train, policy, out / "pairs_train.parquet")
        write_pair_file(heldout, policy, out / "pairs_heldout.parquet")
        run_file = out / "mlflow_run.json"
        resumed_run = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": "dpo_checkpoint",
            "dagster.partition": dataset,
            "dagster.code_version": "1",
            "lettingo.preset": preset.name,
            "lettingo.checkpoint_version": version,
        }
        with mlflow.start_run(
            experiment_name(dataset), f"dpo-{dataset}-{version}", tags, run_id=resumed_run
        ) as run:
            run_id = run.info.run_id
            run_file.write_text(json.dumps({"run_id": run_id}))
            if resumed_run:
                context.log.info(f"resuming MLflow run {run_id} of an interrupted training")
                mlflow.client().set_tag(run_id, "dagster.resumed_by_run_id", context.run.run_id)
            mlflow.log_params(
                run_id,
                {
                    "dpo": dpo.model_dump(),
                    "policy": dpo.policy,
                    "policy_path": policy,
                    "train_pairs": len(train),
                    "heldout_pairs": len(heldout),
                    "preset": preset.name,
                },
            )
            threads = max(1, preset.compute.torch_threads // dpo.processes)
            job = DpoJob(
                policy_path=policy,
                train_pairs=str(out / "pairs_train.parquet"),
                heldout_pairs=str(out / "pairs_heldout.parquet"),
                output_dir=str(out),
                settings=dpo.model_dump(),
                torch_threads=threads,
                device=preset.compute.device,
                mlflow_tracking_uri=mlflow.tracking_uri,
                mlflow_run_id=run_id,
            )
            job_file = job.write(out / "job.json")
            context.log.info(
                f"DPO on {len(train)} pairs ({len(heldout)} held out) with {dpo.processes} "
                f"process(es): {' '.join(_launch_command(job_file, dpo.processes))}"
            )
            try:
                invocation = pipes_subprocess_client.run(
                    command=_launch_command(job_file, dpo.processes),
                    context=context,
                    env={
                        "OMP_NUM_THREADS": str(threads),
                        "TOKENIZERS_PARALLELISM": "false",
                        # Progress reaches the run through Pipes; bars would flood its stderr.
                        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                        "TQDM_DISABLE": "1",
                    },
                )
            except DagsterPipesExecutionError as exc:
                failure = out / FAILURE_FILE
                reason = (
                    json.loads(failure.read_text())["message"] if failure.is_file() else str(exc)
                )
                raise dg.Failure(
                    description=f"DPO training failed; nothing was registered: {reason}",
                    metadata={"checkpoint_folder": dg.MetadataValue.path(str(out))},
                ) from None
            reported = invocation.get_materialize_result().metadata or {}
            report = read_report(out)
            assert report is not None, "the trainer exited 0 without a report"
            summary = {
                f"heldout_{phase}/{key}": value
                for phase, figures in (("before", report.heldout_before), ("after", report.heldout_after))
                for key, value in figures.items() if key.startswith(("rewards/", "logps/", "loss"))
            }  # fmt: skip
            mlflow.log_metrics(
                run_id,
                {**summary, "train_seconds": report.seconds, "pairs_per_second": report.pairs_per_second},
                step=report.global_step,
            )  # fmt: skip
            pairs_summary = out / "pairs_summary.json"
            pairs_summary.write_text(
                json.dumps(
                    {
                        "train": pair_summary(train, train["user_id"].nunique()),
                        "heldout": pair_summary(heldout, heldout["user_id"].nunique()),
                        "chosen_sources": train["chosen_source"].value_counts().to_dict(),
                        "rejected_sources": train["rejected_source"].value_counts().to_dict(),
                    },
                    indent=1,
                    default=str,
                )
            )
            mlflow.log_artifacts(run_id, Path(report.model_dir), "model")
            if report.adapter_dir:
                mlflow.log_artifacts(run_id, Path(report.adapter_dir), "adapter")
            mlflow.log_artifact(run_id, pairs_summary)
            mlflow.log_artifact(run_id, out / "training_report.json")
            model_version = mlflow.register(
                name, run, "model",
                tags={"dagster.run_id": context.run.run_id, "dataset": dataset,
                      # heldout_profiles samples the champion from here on later runs.
                      "lettingo.model_dir": report.model_dir},
            )  # fmt: skip
            registration = {
                "run_id": run_id,
                "version": model_version,
                "run_url": mlflow.run_url(run),
                "model_url": mlflow.model_url(name, model_version),
                "reported": {k: getattr(v, "value", v) for k, v in reported.items()},
            }
            registration_file.write_text(json.dumps(registration, indent=1, default=str))
    report = read_report(out)
    assert report is not None
    after, before = report.heldout_after, report.heldout_before
    accuracy = after.get("rewards/accuracies", float("nan"))
    margin_before, margin_after = (
        before.get("rewards/margins", 0.0),
        after.get("rewards/margins", 0.0),
    )
    curve = pd.DataFrame(report.history)
    shown = [c for c in ("step", "loss", "rewards/margins", "rewards/accuracies") if c in curve]
    reload_ok, sample = _reload_and_generate(
        report.model_dir, heldout if len(heldout) else train, preset
    )
    yield dg.Output(
        report.model_dir,
        metadata={
            "model_path": dg.MetadataValue.path(report.model_dir),
            "version": version,
            "mlflow_run": dg.MetadataValue.url(registration["run_url"]),
            "mlflow_run_id": registration["run_id"],
            "registered_model": name,
            "model_version": registration["version"],
            "registered_model_url": dg.MetadataValue.url(registration["model_url"]),
            "policy": dpo.policy,
            "lora": dpo.lora.enabled,
            "train_pairs": report.train_pairs,
            "heldout_pairs": report.heldout_pairs,
            "global_step": report.global_step,
            "world_size": report.world_size,
            "device": report.device,
            "final_loss": round(report.final_loss, 4),
            "heldout_preference_accuracy": round(accuracy, 4),
            "heldout_margin": round(margin_after, 4),
            "train_seconds": round(report.seconds, 1),
            "pairs_per_second": round(report.pairs_per_second, 2),
            "trained_parameters": report.trained_parameters,
            "resumed_from_step": report.resumed_from_step or 0,
            "metric_curve": dg.MetadataValue.md(
                markdown_preview(curve[shown].round(4), rows=40) if shown else "(no steps logged)"
            ),
            "sample": sample,
        },
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


alignment_assets = [preference_pairs, dpo_checkpoint]
