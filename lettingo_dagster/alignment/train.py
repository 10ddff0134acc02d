"""The DPO trainer as a process of its own: `python -m lettingo_dagster.alignment.train --job FILE`.

The `dpo_checkpoint` asset launches it through Dagster Pipes under torchrun:

    torchrun --standalone --nproc-per-node N -m lettingo_dagster.alignment.train --job job.json

transformers reads torchrun's RANK / WORLD_SIZE and runs data-parallel (gloo on CPU, NCCL on
GPU). Only rank 0 talks back: it opens the Pipes channel (logs and the materialization's
figures reach Dagster), logs the TRL metrics of every logging step to the MLflow run named in the
job, and writes the model and the report. The same command runs unchanged on a cluster node; run
outside Dagster it logs to stderr.

Exit codes: 0 done, 2 bad job file, 3 non-finite loss (nothing saved), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lettingo_dagster.alignment.dpo import DpoJob, NonFiniteLossError, TrainingReport, train_dpo

FAILURE_FILE = "failure.json"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _MlflowSteps:
    """Per-step TRL metrics to one MLflow run, in small batches (rank 0 only)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()]
        )


def report_metadata(report: TrainingReport) -> dict[str, Any]:
    """The figures rank 0 reports to the asset through Pipes."""
    after = report.heldout_after
    return {
        "global_step": report.global_step,
        "world_size": report.world_size,
        "device": report.device,
        "train_pairs": report.train_pairs,
        "heldout_pairs": report.heldout_pairs,
        "final_loss": round(report.final_loss, 4),
        "heldout_preference_accuracy": round(after.get("rewards/accuracies", float("nan")), 4),
        "heldout_margin": round(after.get("rewards/margins", float("nan")), 4),
        "train_seconds": round(report.seconds, 1),
        "pairs_per_second": round(report.pairs_per_second, 2),
        "trained_parameters": report.trained_parameters,
        "resumed_from_step": report.resumed_from_step if report.resumed_from_step else 0,
    }


def run(job_file: Path) -> int:
    try:
        job = DpoJob.read(job_file)
    except (OSError, ValueError, TypeError) as exc:
        print(f"{job_file}: not a DPO job file: {exc}", file=sys.stderr)
        return 2
    main = _rank() == 0
    pipes = None
    if main:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

        if PipesEnvVarParamsLoader().is_dagster_pipes_process():
            pipes = open_dagster_pipes()

    def log(message: str) -> None:
        if not main:
            return
        if pipes is not None:
            pipes.log.info(message)
        else:
            print(message, file=sys.stderr, flush=True)

    steps = None
    if main and job.mlflow_tracking_uri and job.mlflow_run_id:
        steps = _MlflowSteps(job.mlflow_tracking_uri, job.mlflow_run_id)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if steps is not None:
            steps(step, metrics)
        shown = ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("loss", "rewards/margins", "rewards/accuracies")
            if k in metrics
        )  # fmt: skip
        log(f"step {step}: {shown}")

    failure = Path(job.output_dir) / FAILURE_FILE
    failure.unlink(missing_ok=True)
    try:
        report = train_dpo(job, on_metrics=on_metrics, log=log)
        if pipes is not None:
            pipes.report_asset_materialization(metadata=report_metadata(report))
        return 0
    except NonFiniteLossError as exc:
        if main:
            failure.write_text(json.dumps({"kind": "non_finite_loss", "message": str(exc)}))
            log(str(exc))
        return 3
    except Exception as exc:
        if main:
            failure.write_text(json.dumps({"kind": type(exc).__name__, "message": str(exc)}))
        raise
    finally:
        if pipes is not None:
            pipes.close()
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    """Tear down the process group torchrun's ranks joined (NCCL warns when it is left open)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path, help="the job's JSON file")
    args = parser.parse_args(argv)
    return run(args.job)


if __name__ == "__main__":
    sys.exit(main())
