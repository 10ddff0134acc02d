"""Stage 3 trained for real under the ci preset: TRL's DPO on the pairs of a dataset the tests
write, launched through Dagster Pipes under torchrun, tracked in a real MLflow sqlite store."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from lettingo_dagster.alignment.dpo import (
    DpoJob,
    NonFiniteLossError,
    dpo_losses,
    last_checkpoint,
    read_report,
    train_dpo,
    write_pair_file,
)
from lettingo_dagster.definitions import all_assets
from lettingo_dagster.models.base import ChatPrompt, Decoding
from lettingo_dagster.models.local import LocalCausalLM
from lettingo_dagster.settings import load_preset
from lettingo_dagster.tracking import MlflowTracking, registered_model_name

pytestmark = pytest.mark.integration

SECRET = "sk-lettingo-test-secret-0042"


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "dpo_checkpoint"
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _pairs(world, split: str, limit: int) -> pd.DataFrame:
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        return con.execute(
            "SELECT * FROM preference_pairs WHERE split = ? ORDER BY user_id, chosen_profile_id, "
            "rejected_profile_id LIMIT ?",
            [split, limit],
        ).df()


def _job(world, folder: Path, policy: Path, **overrides) -> DpoJob:
    folder.mkdir(parents=True, exist_ok=True)
    settings = load_preset("ci").dpo.model_dump()
    settings.update(overrides)
    return DpoJob(
        policy_path=str(policy),
        train_pairs=str(write_pair_file(_pairs(world, "train", 48), policy, folder / "t.parquet")),
        heldout_pairs=str(
            write_pair_file(_pairs(world, "calibration", 16), policy, folder / "h.parquet")
        ),
        output_dir=str(folder),
        settings=settings,
    )


def test_dpo_checkpoint_two_processes_mlflow_and_reload(pipeline_world, monkeypatch) -> None:
    # A secret in the environment is inherited by the trainer processes; it must not reach MLflow.
    monkeypatch.setenv("LETTINGO_TEST_API_KEY", SECRET)
    tracking = MlflowTracking(tracking_uri=pipeline_world.mlflow_uri)
    name = registered_model_name("synthetic")
    versions_before = len(tracking.client().search_model_versions(f"name = '{name}'"))

    run_config = {"ops": {"dpo_checkpoint": {"config": {"processes": 2, "batch_size": 4}}}}
    result = pipeline_world.materialize(all_assets, ["dpo_checkpoint"], run_config=run_config)
    assert result.success
    meta = _metadata(result)
    assert meta["world_size"] == 2 and meta["device"] == "cpu"
    assert meta["global_step"] >= 2 and meta["train_pairs"] > 0
    assert 0.0 <= meta["heldout_preference_accuracy"] <= 1.0
    assert "| step |" in meta["metric_curve"]
    assert _checks(result)["reloads_and_generates"] is True

    # MLflow: one run with per-step curves, the whole config, Dagster tags, a new version.
    client = tracking.client()
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.asset_key"] == "dpo_checkpoint"
    assert run.data.tags["dagster.partition"] == "synthetic"
    assert run.data.params["dpo.beta"] == "0.1" and run.data.params["dpo.processes"] == "2"
    loss_curve = client.get_metric_history(run.info.run_id, "loss")
    assert len({m.step for m in loss_curve}) >= 2
    for metric in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert client.get_metric_history(run.info.run_id, metric), metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "pairs_summary.json", "training_report.json"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == versions_before + 1
    assert str(meta["model_version"]) in {str(v.version) for v in versions}
    assert meta["mlflow_run"].endswith(run.info.run_id)

    everything = json.dumps([run.data.params, run.data.tags, [v.tags for v in versions]])
    assert SECRET not in everything

    # The checkpoint reloads offline from its folder and writes profiles.
    model = LocalCausalLM(meta["model_path"], torch_threads=1)
    [[sample]] = model.generate(
        [ChatPrompt(system=None, user="Movies this user rated:\n- Fargo (1996): 5/5")],
        Decoding(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=0),
        1,
    )
    assert sample.completion_tokens > 0

    # Unchanged inputs and settings: the trained checkpoint is reused, not retrained.
    again = pipeline_world.materialize(all_assets, ["dpo_checkpoint"], run_config=run_config)
    assert again.success
    assert _metadata(again)["model_version"] == meta["model_version"]
    assert len(client.search_model_versions(f"name = '{name}'")) == versions_before + 1


def test_non_finite_loss_fails_and_registers_nothing(pipeline_world, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    poisoned = tmp_path / "poisoned"
    shutil.copytree(pipeline_world.base_generator, poisoned)
    model = AutoModelForCausalLM.from_pretrained(poisoned, local_files_only=True)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(poisoned)

    tracking = MlflowTracking(tracking_uri=pipeline_world.mlflow_uri)
    name = registered_model_name("synthetic")
    before = len(tracking.client().search_model_versions(f"name = '{name}'"))
    result = pipeline_world.materialize(
        all_assets,
        ["dpo_checkpoint"],
        run_config={"ops": {"dpo_checkpoint": {"config": {"policy_path": str(poisoned)}}}},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert "nothing was registered" in message and "nan" in message.lower()
    assert len(tracking.client().search_model_versions(f"name = '{name}'")) == before
    failed = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name("lettingo-synthetic").experiment_id],
        filter_string="attributes.status = 'FAILED'",
    )
    assert failed, "the MLflow run of a failed training is marked FAILED"


def test_train_dpo_nan_guard_names_the_step(pipeline_world, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    poisoned = tmp_path / "poisoned"
    shutil.copytree(pipeline_world.base_generator, poisoned)
    model = AutoModelForCausalLM.from_pretrained(poisoned, local_files_only=True)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("inf"))
    model.save_pretrained(poisoned)
    job = _job(pipeline_world, tmp_path / "job", poisoned, precompute_ref_log_probs=False)
    with pytest.raises(NonFiniteLossError, match="at step"):
        train_dpo(job, log=lambda _: None)
    assert not (tmp_path / "job" / "model").exists()
    assert read_report(tmp_path / "job") is None


def test_interrupted_training_resumes_from_its_last_checkpoint(
    pipeline_world, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated interruption at step 3")

    folder = tmp_path / "job"
    job = _job(pipeline_world, folder, pipeline_world.base_generator, save_steps=2, batch_size=4)
    total_steps = math.ceil(len(pd.read_parquet(job.train_pairs)) / 4)  # 1 epoch
    assert total_steps >= 4
    with pytest.raises(KeyboardInterrupt):
        train_dpo(job, callbacks=[Interrupt()], log=lambda _: None)
    checkpoint = last_checkpoint(folder / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    assert read_report(folder) is None  # nothing final was written

    report = train_dpo(job, log=lambda _: None)
    assert report.resumed_from_step == 2
    assert report.global_step == total_steps  # the full schedule, not 3 + a new one
    assert [h["step"] for h in report.history][:2] == [1, 2]  # curves carried over
    assert (folder / "model" / "config.json").is_file()
    assert read_report(folder).global_step == total_steps


def test_lora_training_saves_a_merged_model_and_the_adapter(pipeline_world, tmp_path: Path) -> None:
    job = _job(
        pipeline_world,
        tmp_path / "lora",
        pipeline_world.base_generator,
        lora={"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.0,
              "target_modules": ["q_proj", "v_proj"]},
    )  # fmt: skip
    report = train_dpo(job, log=lambda _: None)
    assert report.trained_parameters < report.total_parameters / 5
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    merged = LocalCausalLM(report.model_dir, torch_threads=1)
    assert merged.fingerprint


def test_sft_weight_adds_the_chosen_profiles_nll_to_the_dpo_loss(
    pipeline_world, tmp_path: Path
) -> None:
    from trl import DPOConfig

    assert dpo_losses("sigmoid", 0.0) == {"loss_type": ["sigmoid"]}
    config = DPOConfig(
        output_dir=str(tmp_path / "c"), use_cpu=True, bf16=False, **dpo_losses("sigmoid", 0.5)
    )
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.5]

    job = _job(pipeline_world, tmp_path / "sft", pipeline_world.base_generator, sft_weight=1.0)
    report = train_dpo(job, log=lambda _: None)
    # At the first step the policy is the reference, so plain DPO's loss is exactly ln 2; the
    # chosen profiles' negative log-likelihood comes on top of it.
    first = report.history[0]
    assert first["step"] <= 1 and first["loss"] > math.log(2) + 0.05


def test_bf16_without_cuda_stops_before_loading_anything(tmp_path: Path) -> None:
    """bf16 mixed precision is for CUDA: a CPU job says so before it reads a file."""
    job = DpoJob(
        policy_path=str(tmp_path / "no-model"),
        train_pairs=str(tmp_path / "no-pairs.parquet"),
        heldout_pairs=str(tmp_path / "no-pairs.parquet"),
        output_dir=str(tmp_path / "run"),
        settings=load_preset("ci").dpo.model_dump(),
        device="cpu",
        bf16=True,
    )
    with pytest.raises(ValueError, match="bf16 mixed precision needs a CUDA device"):
        train_dpo(job, log=lambda _line: None)
    assert not (tmp_path / "run").exists()
