"""Automation: the retrain job, the landing-folder sensor and the run-failure sensor.

The rules of the landing folders (ignored names, the quiet period, ingest-once by content hash)
live in `lettingo_dagster.data.landing`; this module only wires them to Dagster.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from lettingo_dagster.data.landing import (
    LandingState,
    forget_missing_files,
    quiet_seconds,
    scan_landing,
)
from lettingo_dagster.data.run_config import InteractionsConfig
from lettingo_dagster.data.sources import INTERACTIONS_FILE, SOURCE_KEYS, file_observation
from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.paths import lettingo_home

LANDING_FILE_TAG = "lettingo/landing_file"
SHA256_TAG = "lettingo/sha256"

retrain_job = dg.define_asset_job(
    name="lettingo_retrain",
    selection=dg.AssetSelection.assets("interactions").downstream()
    | dg.AssetSelection.assets("items", *SOURCE_KEYS),
    partitions_def=dataset_partitions,
    description=(
        "Ingest a dataset's interactions (with the registry's items) and retrain everything "
        "downstream through the evaluation report. A failed blocking check fails its step, so "
        "nothing downstream of bad data runs. The landing sensor launches it."
    ),
)


def landing_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Run config that makes the `interactions` asset read `path` (see InteractionsConfig)."""
    config = InteractionsConfig(source_file=str(path))
    return {"ops": {"interactions": {"config": config.model_dump(exclude_none=True)}}}


def run_failures_path() -> Path:
    """The JSON-lines log the run-failure sensor appends to."""
    return lettingo_home() / "logs" / "run_failures.jsonl"


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches `LETTINGO_HOME/landing/{dataset}/` for new interaction files (full snapshots in "
        "the registry's format) and requests a `lettingo_retrain` run for each new content "
        "(run key = dataset:sha256, so a content is ingested once). Hidden, *.tmp and *.part "
        "files are ignored; a file must stay unchanged for LETTINGO_LANDING_QUIET_SECONDS "
        "(default 30) before it is read."
    ),
)
def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Request an ingest-and-retrain run for each new landed interactions file.

    Runs by default (DefaultSensorStatus.RUNNING): it acts only on files a user put in a
    landing folder, whose sole purpose is this, so an untouched deployment never starts a run;
    each content starts at most one run (the cursor's seen hashes, and Dagster's run-key
    deduplication should the cursor be reset); and the runs go through the run queue and the
    `duckdb` / `gpu` pools like any other. Stop it in the UI to pause automatic retrains.

    Files being written are skipped until they have been quiet (max of mtime and ctime) for
    LETTINGO_LANDING_QUIET_SECONDS; writing under a hidden or *.part name and renaming when
    done is the sure way. When several new contents settle in one tick, the newest is ingested
    and the older ones are recorded as superseded (each file is a full snapshot).
    """
    try:
        state = LandingState.from_cursor(context.cursor)
    except ValueError as exc:
        context.log.warning(f"{exc}; starting from an empty cursor (run keys still dedupe)")
        state = LandingState()
    now = time.time()
    quiet = quiet_seconds()
    requests: list[dg.RunRequest] = []
    observations: list[dg.AssetObservation] = []
    present: set[str] = set()
    waiting = 0
    for dataset in dataset_partitions.get_partition_keys():
        scan = scan_landing(dataset, state, now=now, quiet=quiet)
        present |= scan.present
        waiting += len(scan.waiting)
        for landed, sha in scan.superseded:
            context.log.info(
                f"{dataset}: {landed.path} (sha256 {sha}) superseded by a newer landed file"
            )
        if scan.to_ingest is None:
            continue
        landed, sha = scan.to_ingest
        context.log.info(f"{dataset}: new landed file {landed.path} (sha256 {sha})")
        # The UI marks `interactions` unsynced as soon as the file is seen, before its run.
        observations.append(
            file_observation(INTERACTIONS_FILE, dataset, landed.path, "landing sensor", sha)
        )
        requests.append(
            dg.RunRequest(
                run_key=f"{dataset}:{sha}",
                partition_key=dataset,
                run_config=landing_run_config(landed.path),
                tags={LANDING_FILE_TAG: str(landed.path), SHA256_TAG: sha},
            )
        )
    forget_missing_files(state, present)
    cursor = state.to_cursor()
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor, asset_events=observations)
    reason = "no new landed interaction files"
    if waiting:
        reason += f"; {waiting} file(s) not quiet for {quiet:g} s yet"
    return dg.SensorResult(skip_reason=reason, cursor=cursor)


# Names of environment variables whose values must never reach the failure log.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+:)[^/\s@]+@")


def redact(value: Any, environ: dict[str, str] | None = None) -> Any:
    """`value` (a string, or lists and dicts of them) with the values of secret-looking
    environment variables and the passwords of URLs masked."""
    environ = dict(os.environ) if environ is None else environ
    secrets = sorted(
        (v for k, v in environ.items() if _SECRET_NAME.search(k) and len(v) >= 6),
        key=len,
        reverse=True,
    )

    def mask(item: Any) -> Any:
        if isinstance(item, str):
            for secret in secrets:
                item = item.replace(secret, "***")
            return _URL_PASSWORD.sub(r"\1***@", item)
        if isinstance(item, list):
            return [mask(x) for x in item]
        if isinstance(item, dict):
            return {k: mask(v) for k, v in item.items()}
        return item

    return mask(value)


def _step_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, list[str]]:
    """Step key -> the asset keys its outputs materialize, from the run's execution plan."""
    if not run.execution_plan_snapshot_id:
        return {}
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return {
        step.key: sorted(
            {
                output.properties.asset_key.to_user_string()
                for output in step.outputs
                if output.properties is not None and output.properties.asset_key is not None
            }
        )
        for step in plan.steps
    }


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """`asset:check (severity)` of every asset check that ran in the run and did not pass."""
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    failed = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            failed.append(
                f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name} "
                f"({evaluation.severity.value})"
            )
    return sorted(failed)


def _innermost_frame(error: Any) -> str | None:
    """`File "...", line N, in fn` of the deepest frame of the error's innermost cause."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    stack = getattr(error, "stack", None) or []
    return stack[-1].strip().splitlines()[0] if stack else None


def _step_failure(event: dg.DagsterEvent, assets: dict[str, list[str]]) -> dict[str, Any]:
    data = event.step_failure_data
    error = data.error if data else None
    user = data.user_failure_data if data else None
    if user is not None and user.description:
        message = user.description
    elif error is not None:
        message = error.message.strip()
    else:
        message = event.message or ""
    causes: list[str] = []
    cause = error.cause if error is not None else None
    while cause is not None:
        causes.append(f"{cause.cls_name}: {cause.message.strip()}")
        cause = cause.cause
    return {
        "step_key": event.step_key,
        "assets": assets.get(event.step_key or "", []),
        "error_class": error.cls_name if error is not None else None,
        "message": message,
        "causes": causes,
        "where": _innermost_frame(error),
    }


def failure_record(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_failures: Iterable[dg.DagsterEvent],
    run_message: str | None,
    partition: str | None = None,
) -> dict[str, Any]:
    """What the failure log keeps of a failed run: no run config, only lettingo/* tags."""
    assets = _step_assets(instance, run)
    steps = [_step_failure(event, assets) for event in step_failures]
    origin = run.remote_job_origin
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": partition or run.tags.get("dagster/partition"),
        "code_location": origin.location_name if origin is not None else None,
        "sensor": run.tags.get("dagster/sensor_name"),
        "failed_steps": [step["step_key"] for step in steps],
        "failed_assets": sorted({key for step in steps for key in step["assets"]}),
        "failed_checks": _failed_checks(instance, run.run_id),
        "errors": steps,
        "run_message": run_message,
        "tags": {k: v for k, v in sorted(run.tags.items()) if k.startswith("lettingo/")},
    }
    return redact(record)


@dg.run_failure_sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Records every failed run of this code location (job, run id, partition, failed steps "
        "and assets, error message and location) as one JSON line in "
        "LETTINGO_HOME/logs/run_failures.jsonl, and logs it."
    ),
)
def run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """Append one JSON line per failed run to LETTINGO_HOME/logs/run_failures.jsonl.

    Runs by default: it only writes a local log file. Secrets never reach the file: it keeps no
    run config and no tags but lettingo/*, and masks the values of secret-looking environment
    variables (…KEY, …TOKEN, …SECRET, …PASSWORD) and URL passwords in error messages.
    """
    run = context.dagster_run
    record = failure_record(
        context.instance,
        run,
        context.get_step_failure_events(),
        context.failure_event.message,
        partition=context.partition_key,
    )
    path = run_failures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    where = ", ".join(record["failed_assets"] or record["failed_steps"]) or "before any step"
    first = record["errors"][0]["message"] if record["errors"] else record["run_message"]
    context.log.error(
        f"run {run.run_id} of {run.job_name} (partition {record['partition']}) failed at "
        f"{where}: {first}; recorded in {path}"
    )


automation_jobs = [retrain_job]
automation_sensors = [landing_sensor, run_failure_sensor]
