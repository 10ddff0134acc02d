"""Stage 3 as plain steps: pick the pairs, name the checkpoint after what it is trained from,
launch the trainer, log the run to MLflow and register the model as a new version.

The `dpo_checkpoint` asset reads the pairs, calls `run_and_register` with a `launch` function
(Dagster Pipes under torchrun) and turns the outcome into metadata and check results. A
checkpoint already trained and registered under the same version is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lettingo_dagster.alignment.pairs import pair_summary
from lettingo_dagster.paths import models_dir
from lettingo_dagster.settings import DpoSettings, Preset
from lettingo_dagster.tracking import experiment_name, registered_model_name

if TYPE_CHECKING:
    import duckdb

    from lettingo_dagster.alignment.dpo import TrainingReport
    from lettingo_dagster.tracking import MlflowTracking

TEXT_COLUMNS = ["prompt_system", "prompt_user", "chosen", "rejected"]
REGISTRATION_FILE = "registration.json"
# Launches the trainer's command with extra environment variables; returns what the trainer
# reported (its materialization's metadata) and raises `TrainerFailed` when it fails.
Launch = Callable[[list[str], dict[str, str]], Mapping[str, Any]]


class TrainerFailed(RuntimeError):
    """The trainer's process failed (raised by a `Launch`)."""


class DpoTrainingFailed(RuntimeError):
    """Training failed and nothing was registered; `reason` is the trainer's own message."""

    def __init__(self, reason: str, folder: Path) -> None:
        super().__init__(f"DPO training failed; nothing was registered: {reason}")
        self.reason = reason
        self.folder = folder


def sample_pairs(
    con: duckdb.DuckDBPyConnection, dataset: str, split: str, limit: int | None, seed: int
) -> pd.DataFrame:
    """A seeded sample of one split's pairs, in a stable order (hash of the pair and seed)."""
    query = f"""
        SELECT * FROM preference_pairs WHERE dataset = ? AND split = ?
        ORDER BY hash(chosen_profile_id || '|' || rejected_profile_id || '|' || ?::VARCHAR)
        {"LIMIT " + str(int(limit)) if limit else ""}
    """
    return con.execute(query, [dataset, split, seed]).df()


def frame_digest(frame: pd.DataFrame, columns: list[str]) -> str:
    digest = hashlib.sha256()
    for row in frame[columns].itertuples(index=False):
        digest.update(json.dumps(list(row), default=str).encode())
    return digest.hexdigest()


def checkpoint_version(
    policy: str, dpo: DpoSettings, train: pd.DataFrame, heldout: pd.DataFrame
) -> str:
    """The checkpoint's name: a hash of the policy's files, the settings and both pair sets."""
    from lettingo_dagster.models.local import folder_digest

    return hashlib.sha256(
        json.dumps(
            {
                "policy": folder_digest(Path(policy)),
                "settings": dpo.model_dump(exclude={"processes"}),
                "train": frame_digest(train, TEXT_COLUMNS),
                "heldout": frame_digest(heldout, TEXT_COLUMNS),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]


def launch_command(job_file: Path, processes: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}",
        "-m", "lettingo_dagster.alignment.train", "--job", str(job_file),
    ]  # fmt: skip


def reload_and_generate(
    model_dir: str, pairs: pd.DataFrame, torch_threads: int
) -> tuple[bool, str]:
    """Whether the saved model loads from its folder and writes a non-empty profile for one of
    two calibration prompts, and that profile (or the error). Two prompts, because one sample
    of a small policy can be an immediate end of sequence, a draw rather than a broken model
    (the swapped-pairs control's policy at the ci sizes)."""
    from lettingo_dagster.models.base import ChatPrompt, Decoding
    from lettingo_dagster.models.local import LocalCausalLM

    try:
        model = LocalCausalLM(model_dir, torch_threads=torch_threads)
        rows = pairs.head(2)
        prompts = [
            ChatPrompt(system=s or None, user=u)
            for s, u in zip(rows["prompt_system"], rows["prompt_user"], strict=True)
        ]
        samples = model.generate(
            prompts, Decoding(temperature=1.0, top_p=1.0, max_new_tokens=48, seed=0), 1
        )
    except Exception as exc:  # any failure to load or run is the finding
        return False, f"{type(exc).__name__}: {exc}"
    texts = [sample.text for [sample] in samples]
    written = next((text for text in texts if text.strip()), "")
    return bool(written), written or " | ".join(map(repr, texts))


@dataclass(frozen=True)
class DpoOutcome:
    """A trained and registered checkpoint."""

    version: str  # the checkpoint's name (see `checkpoint_version`)
    folder: Path
    registered_model: str
    registration: dict[str, Any]  # run_id, version, run_url, model_url, reported
    report: TrainingReport


@dataclass(frozen=True)
class DpoRequest:
    """One training: the policy, the pairs, and where the run is tracked and launched."""

    preset: Preset
    dpo: DpoSettings  # the preset's dpo section with the run's overrides
    dataset: str
    policy: str  # the model folder to train
    train: pd.DataFrame
    heldout: pd.DataFrame
    tracker: MlflowTracking
    launch: Launch
    dagster_run_id: str
    log: Callable[[str], None] = print
    code_version: str = ""  # the asset's, derived from its logic and settings (versioning)


def run_and_register(request: DpoRequest) -> DpoOutcome:
    """Train the policy on the pairs (unless this very checkpoint is already registered) and
    register it; the folder is `models/dpo/{dataset}/{version}`."""
    from lettingo_dagster.alignment.dpo import read_report

    version = checkpoint_version(request.policy, request.dpo, request.train, request.heldout)
    out = models_dir() / "dpo" / request.dataset / version
    registration_file = out / REGISTRATION_FILE
    name = registered_model_name(request.dataset)
    if read_report(out) is not None and registration_file.is_file():
        registration = json.loads(registration_file.read_text())
        request.log(
            f"DPO checkpoint {version} already trained and registered as {name} "
            f"v{registration['version']}; reusing it"
        )
    else:
        registration = _train_and_register(request, out, version)
    report = read_report(out)
    assert report is not None
    return DpoOutcome(version, out, name, registration, report)


def _train_and_register(request: DpoRequest, out: Path, version: str) -> dict[str, Any]:
    from lettingo_dagster.alignment.dpo import write_pair_file

    dataset, tracker, train, heldout = (
        request.dataset, request.tracker, request.train, request.heldout
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_pair_file(train, request.policy, out / "pairs_train.parquet")
    write_pair_file(heldout, request.policy, out / "pairs_heldout.parquet")
    run_file = out / "mlflow_run.json"
    resumed_run = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    tags = {
        "dagster.run_id": request.dagster_run_id,
        "dagster.asset_key": "dpo_checkpoint",
        "dagster.partition": dataset,
        "dagster.code_version": request.code_version,
        "lettingo.preset": request.preset.name,
        "lettingo.checkpoint_version": version,
    }
    with tracker.start_run(
        experiment_name(dataset), f"dpo-{dataset}-{version}", tags, run_id=resumed_run
    ) as run:
        run_id = run.info.run_id
        run_file.write_text(json.dumps({"run_id": run_id}))
        if resumed_run:
            request.log(f"resuming MLflow run {run_id} of an interrupted training")
            tracker.client().set_tag(run_id, "dagster.resumed_by_run_id", request.dagster_run_id)
        tracker.log_params(
            run_id,
            {
                "dpo": request.dpo.model_dump(),
                "policy": request.dpo.policy,
                "policy_path": request.policy,
                "train_pairs": len(train),
                "heldout_pairs": len(heldout),
                "preset": request.preset.name,
            },
        )
        reported = _train(request, out, run_id)
        report = _log_training(tracker, run_id, out, train, heldout)
        name = registered_model_name(dataset)
        model_version = tracker.register(
            name, run, "model",
            tags={"dagster.run_id": request.dagster_run_id, "dataset": dataset,
                  # heldout_profiles samples the champion from here on later runs.
                  "lettingo.model_dir": report.model_dir},
        )  # fmt: skip
        registration = {
            "run_id": run_id,
            "version": model_version,
            "run_url": tracker.run_url(run),
            "model_url": tracker.model_url(name, model_version),
            "reported": {k: getattr(v, "value", v) for k, v in reported.items()},
        }
        (out / REGISTRATION_FILE).write_text(json.dumps(registration, indent=1, default=str))
        return registration


def _train(request: DpoRequest, out: Path, run_id: str) -> Mapping[str, Any]:
    """Write the job file and run the trainer; returns what it reported."""
    from lettingo_dagster.alignment.dpo import DpoJob
    from lettingo_dagster.alignment.train import FAILURE_FILE

    preset, dpo = request.preset, request.dpo
    threads = max(1, preset.compute.torch_threads // dpo.processes)
    job = DpoJob(
        policy_path=request.policy,
        train_pairs=str(out / "pairs_train.parquet"),
        heldout_pairs=str(out / "pairs_heldout.parquet"),
        output_dir=str(out),
        settings=dpo.model_dump(),
        torch_threads=threads,
        device=preset.compute.device,
        mlflow_tracking_uri=request.tracker.tracking_uri,
        mlflow_run_id=run_id,
    )
    job_file = job.write(out / "job.json")
    request.log(
        f"DPO on {len(request.train)} pairs ({len(request.heldout)} held out) with "
        f"{dpo.processes} process(es): {' '.join(launch_command(job_file, dpo.processes))}"
    )
    env = {
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        # Progress reaches the run through Pipes; bars would flood its stderr.
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
    }
    try:
        return request.launch(launch_command(job_file, dpo.processes), env)
    except TrainerFailed as exc:
        failure = out / FAILURE_FILE
        reason = json.loads(failure.read_text())["message"] if failure.is_file() else str(exc)
        raise DpoTrainingFailed(reason, out) from None


def _log_training(
    tracker: MlflowTracking, run_id: str, out: Path, train: pd.DataFrame, heldout: pd.DataFrame
) -> TrainingReport:
    """The held-out figures, the pair summary, the model and the report to the MLflow run."""
    from lettingo_dagster.alignment.dpo import read_report

    report = read_report(out)
    assert report is not None, "the trainer exited 0 without a report"
    summary = {
        f"heldout_{phase}/{key}": value
        for phase, figures in (("before", report.heldout_before), ("after", report.heldout_after))
        for key, value in figures.items() if key.startswith(("rewards/", "logps/", "loss"))
    }  # fmt: skip
    tracker.log_metrics(
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
    tracker.log_artifacts(run_id, Path(report.model_dir), "model")
    if report.adapter_dir:
        tracker.log_artifacts(run_id, Path(report.adapter_dir), "adapter")
    tracker.log_artifact(run_id, pairs_summary)
    tracker.log_artifact(run_id, out / "training_report.json")
    return report
