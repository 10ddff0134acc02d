"""The landing sensor, the run-failure sensor and the landing-file ingest, against a real instance."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from synthetic import write_movielens_atomic

import lettingo_dagster.data.landing as landing
from lettingo_dagster.automation import (
    landing_run_config,
    landing_sensor,
    redact,
    retrain_job,
    run_failure_sensor,
    run_failures_path,
)
from lettingo_dagster.data.assets import interactions
from lettingo_dagster.data.landing import LandingState, file_sha256, scan_landing
from lettingo_dagster.definitions import defs
from lettingo_dagster.paths import landing_dir
from lettingo_dagster.resources import Warehouse


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(autouse=True)
def no_quiet_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landing.QUIET_SECONDS_ENV, "0")


@pytest.fixture
def source_files(tmp_path: Path) -> tuple[Path, Path]:
    """Two different interaction files of the synthetic dataset's format (not yet landed)."""
    first, _ = write_movielens_atomic(tmp_path / "a", users=20, seed=1, name="first")
    second, _ = write_movielens_atomic(tmp_path / "b", users=25, seed=2, name="second")
    return first, second


@pytest.fixture
def landing_folder(fresh_home: Path) -> Path:
    folder = landing_dir("synthetic")
    folder.mkdir(parents=True)
    return folder


def _evaluate(instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = landing_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _land(source: Path, folder: Path, name: str) -> Path:
    target = folder / name
    shutil.copyfile(source, target)
    return target


def test_new_file_requests_one_run(instance, landing_folder, source_files) -> None:
    landed = _land(source_files[0], landing_folder, "ratings-1.inter")
    sha = file_sha256(landed)
    result = _evaluate(instance)
    [request] = result.run_requests
    assert request.run_key == f"synthetic:{sha}"
    assert request.partition_key == "synthetic"
    assert request.run_config == {"ops": {"interactions": {"config": {"source_file": str(landed)}}}}
    assert request.tags["lettingo/landing_file"] == str(landed)
    assert request.tags["lettingo/sha256"] == sha
    assert result.skip_reason is None and result.cursor
    # The request is valid for the job the sensor targets.
    assert landing_sensor.job_name == "lettingo_retrain"
    retrain_job_def = defs.resolve_job_def("lettingo_retrain")
    assert retrain_job_def.partitions_def.has_partition_key("synthetic")


def test_same_content_again_starts_nothing(instance, landing_folder, source_files) -> None:
    landed = _land(source_files[0], landing_folder, "ratings-1.inter")
    cursor = _evaluate(instance).cursor
    stat = landed.stat()
    os.utime(landed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched
    _land(landed, landing_folder, "ratings-copy.inter")  # the same content, another name
    landed.rename(landing_folder / "ratings-renamed.inter")
    result = _evaluate(instance, cursor)
    assert not result.run_requests
    assert "no new landed" in result.skip_reason.skip_message


def test_changed_content_requests_a_new_run(instance, landing_folder, source_files) -> None:
    landed = _land(source_files[0], landing_folder, "ratings.inter")
    first = _evaluate(instance)
    shutil.copyfile(source_files[1], landed)  # the same name, new content
    second = _evaluate(instance, first.cursor)
    [request] = second.run_requests
    assert request.run_key == f"synthetic:{file_sha256(source_files[1])}"
    assert request.run_key != first.run_requests[0].run_key
    # Changing it back to the first content starts nothing: that content was ingested already.
    shutil.copyfile(source_files[0], landed)
    assert not _evaluate(instance, second.cursor).run_requests


def test_hidden_and_partial_files_are_ignored(instance, landing_folder, source_files) -> None:
    for name in (".ratings.inter", "ratings.inter.tmp", "ratings.inter.part", "ratings.inter~"):
        _land(source_files[0], landing_folder, name)
    (landing_folder / "a-folder").mkdir()
    result = _evaluate(instance)
    assert not result.run_requests and result.skip_reason


def test_a_file_being_written_waits_for_the_quiet_period(
    instance, landing_folder, source_files, monkeypatch
) -> None:
    landed = _land(source_files[0], landing_folder, "ratings.inter")
    monkeypatch.setenv(landing.QUIET_SECONDS_ENV, "3600")
    waiting = _evaluate(instance)
    assert not waiting.run_requests
    assert "1 file(s) not quiet for 3600 s" in waiting.skip_reason.skip_message
    # mtime in the past (as `cp -p` leaves it) does not count: ctime says it just changed.
    os.utime(landed, (0, 0))
    assert not _evaluate(instance, waiting.cursor).run_requests
    monkeypatch.setenv(landing.QUIET_SECONDS_ENV, "0")
    assert len(_evaluate(instance, waiting.cursor).run_requests) == 1


def test_cursor_round_trips_and_unchanged_files_are_not_rehashed(
    instance, landing_folder, source_files, monkeypatch
) -> None:
    _land(source_files[0], landing_folder, "ratings.inter")
    cursor = _evaluate(instance).cursor
    state = LandingState.from_cursor(cursor)
    assert LandingState.from_cursor(state.to_cursor()) == state
    assert state.to_cursor() == cursor

    hashed: list[Path] = []
    real_hash = landing.file_sha256
    monkeypatch.setattr(landing, "file_sha256", lambda p: hashed.append(p) or real_hash(p))
    again = _evaluate(instance, cursor)
    assert not again.run_requests and hashed == []
    assert again.cursor == cursor

    with pytest.raises(ValueError, match="cursor"):
        LandingState.from_cursor("{not json")
    # An unreadable cursor is reset, not fatal (Dagster's run keys still dedupe).
    assert len(_evaluate(instance, "{not json").run_requests) == 1


def test_several_new_files_ingest_only_the_newest(landing_folder, source_files) -> None:
    older = _land(source_files[0], landing_folder, "monday.inter")
    newer = _land(source_files[1], landing_folder, "tuesday.inter")
    os.utime(older, (1_000, 1_000))
    state = LandingState()
    scan = scan_landing("synthetic", state, quiet=0)
    assert scan.to_ingest is not None and scan.to_ingest[0].path == newer
    assert [f.path for f, _ in scan.superseded] == [older]
    assert scan_landing("synthetic", state, quiet=0).to_ingest is None


def test_redact_masks_secrets() -> None:
    text = "failed: token sk-live-123456 at postgresql://lettingo:hunter22@db/x"
    masked = redact({"m": [text]}, environ={"OPENAI_API_KEY": "sk-live-123456", "HOME": "/h"})
    assert masked == {"m": ["failed: token *** at postgresql://lettingo:***@db/x"]}


def _row_count(result: dg.ExecuteInProcessResult) -> tuple[int, dict]:
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    return metadata["dagster/row_count"], metadata


def test_interactions_reads_source_file_then_landing_folder(
    tmp_path: Path, data_dir: Path, landing_folder: Path, source_files
) -> None:
    registry_inter, _ = write_movielens_atomic(
        data_dir / "synthetic", users=60, items=150, min_ratings=8, max_ratings=70
    )
    resources = {"warehouse": Warehouse(database=str(tmp_path / "warehouse.duckdb"))}
    common = dict(partition_key="synthetic", resources=resources, raise_on_error=False)
    registry_rows = len(registry_inter.read_text().splitlines()) - 1

    configured = dg.materialize(
        [interactions],
        run_config={"ops": {"interactions": {"config": {"source_file": str(source_files[1])}}}},
        **common,
    )
    assert configured.success
    rows, metadata = _row_count(configured)
    assert rows == len(source_files[1].read_text().splitlines()) - 1 != registry_rows
    assert metadata["source_file"] == str(source_files[1])
    assert metadata["source_sha256"] == file_sha256(source_files[1])
    assert metadata["source_origin"] == "run config"

    landed = _land(source_files[0], landing_folder, "ratings.inter")
    from_landing = dg.materialize([interactions], **common)
    assert from_landing.success
    rows, metadata = _row_count(from_landing)
    assert rows == len(landed.read_text().splitlines()) - 1
    assert metadata["source_file"] == str(landed)
    assert metadata["source_origin"].startswith("landing folder")


def _retrain(
    instance: dg.DagsterInstance,
    warehouse: Path,
    source: Path,
    selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """The `lettingo_retrain` job on the `broken` dataset, reading `source`, as the sensor asks."""
    test_defs = dg.Definitions(
        assets=defs.assets,
        jobs=[retrain_job],
        resources={**(defs.resources or {}), "warehouse": Warehouse(database=str(warehouse))},
    )
    return test_defs.resolve_job_def("lettingo_retrain").execute_in_process(
        instance=instance,
        partition_key="broken",
        asset_selection=selection,
        run_config=landing_run_config(source),
        tags={"lettingo/landing_file": str(source), "lettingo/sha256": file_sha256(source)},
        raise_on_error=False,
    )


def _record_failure(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> dict:
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_sensor",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        partition_key="broken",
    )
    run_failure_sensor(context)
    return json.loads(run_failures_path().read_text().splitlines()[-1])


def test_run_failure_sensor_records_what_failed_and_where(
    instance, tmp_path: Path, data_dir: Path, fresh_home: Path
) -> None:
    write_movielens_atomic(data_dir / "broken", name="broken", users=20)  # the registry's files
    bad, _ = write_movielens_atomic(tmp_path / "bad", name="bad", users=20)
    lines = bad.read_text().splitlines()
    lines[5] = lines[5].split("\t")[0] + "\tnot-an-item-row"
    bad.write_text("\n".join(lines) + "\n")
    result = _retrain(instance, tmp_path / "w.duckdb", bad, [dg.AssetKey("interactions")])
    assert not result.success

    record = _record_failure(instance, result)
    assert len(run_failures_path().read_text().splitlines()) == 1
    assert record["job"] == "lettingo_retrain"
    assert record["run_id"] == result.run_id
    assert record["partition"] == "broken"
    assert record["failed_steps"] == ["interactions"]
    assert record["failed_assets"] == ["interactions"]
    assert record["failed_checks"] == []  # the file did not load: no check ran
    [error] = record["errors"]
    assert "bad.inter" in error["message"] and "line 6" in error["message"]
    assert error["where"] and "File" in error["where"]
    assert record["tags"]["lettingo/landing_file"] == str(bad)
    assert "run_config" not in record


def test_retrain_stops_at_a_failed_blocking_check(
    instance, tmp_path: Path, data_dir: Path, fresh_home: Path
) -> None:
    write_movielens_atomic(data_dir / "broken", name="broken", users=20)
    dup, _ = write_movielens_atomic(tmp_path / "dup", name="dup", users=20)
    lines = dup.read_text().splitlines()
    dup.write_text("\n".join([*lines, lines[3]]) + "\n")  # the same event twice
    result = _retrain(instance, tmp_path / "w.duckdb", dup)
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "task_samples" not in materialized  # nothing downstream of bad data ran

    record = _record_failure(instance, result)
    assert record["failed_steps"] == ["interactions"]
    assert "interactions:unique_events (ERROR)" in record["failed_checks"]
