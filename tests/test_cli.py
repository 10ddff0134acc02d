"""The `lettingo` command as a user runs it: a real subprocess, exit codes, no tracebacks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_movielens_atomic


def lettingo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lettingo_dagster.cli", *args],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_validate_valid_files_prints_a_summary(tmp_path: Path) -> None:
    inter, item = write_movielens_atomic(tmp_path, users=7, items=40, min_ratings=5, max_ratings=9)
    rows = len(inter.read_text().splitlines()) - 1
    done = lettingo(
        "data",
        "validate",
        "--format",
        "movielens-atomic",
        "--interactions",
        str(inter),
        "--items",
        str(item),
    )
    assert done.returncode == 0, done.stderr
    assert f"{rows:,}" in done.stdout or str(rows) in done.stdout
    assert "users" in done.stdout and "7" in done.stdout
    assert "rating" in done.stdout


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"1,2,3,881250949\n", "line 1"),
        (b"1\t2\tfive\t881250949\n", "line 1"),
        (b"1\t2\t3\t881250949\n1\t\t4\t881250950\n", "line 2"),
        (b"", "empty"),
        (b"\x00\xff\xfe\x00garbage\x00", "line 1"),
    ],
)
def test_validate_malformed_file_names_file_line_and_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "u.data"
    path.write_bytes(content)
    done = lettingo("data", "validate", "--format", "movielens-100k", "--interactions", str(path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert str(path) in done.stderr and problem in done.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    done = lettingo(
        "data", "validate", "--format", "yelp", "--interactions", str(tmp_path / "review.json")
    )
    assert done.returncode == 1 and "not found" in done.stderr and "Traceback" not in done.stderr


def test_preset_show_lists_settings_with_descriptions() -> None:
    done = lettingo("preset", "show", "ci")
    assert done.returncode == 0
    assert "task.recent_window = 5" in done.stdout
    assert "K: raw recent interactions" in done.stdout


def test_preset_show_bad_preset_is_a_clear_error() -> None:
    done = lettingo("preset", "show", "nope")
    assert (
        done.returncode == 1
        and "no such preset 'nope'" in done.stderr
        and "Traceback" not in done.stderr
    )


@pytest.mark.integration
def test_run_materializes_into_the_persistent_instance(tmp_path: Path, data_dir: Path) -> None:
    write_movielens_atomic(
        data_dir / "synthetic", users=60, items=150, min_ratings=8, max_ratings=70
    )
    home = tmp_path / "home"
    done = lettingo(
        "run", "--preset", "ci", "--dataset", "synthetic", env={"LETTINGO_HOME": str(home)}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    materialized = done.stdout.split("materialized: ")[1].split(";")[0].split(", ")
    assert {"interactions", "items", "task_samples", "base_generator", "sampled_profiles"} <= set(
        materialized
    )
    assert "check failed" not in done.stdout
    assert {"dpo_checkpoint", "heldout_profiles", "evaluation_report"} <= set(materialized)
    # The results table and where to look next come with the run, and again from `report`.
    assert "dpo_generator" in done.stdout and "null check" in done.stdout
    assert "MLflow UI" in done.stdout
    report = lettingo("report", "--dataset", "synthetic", env={"LETTINGO_HOME": str(home)})
    assert report.returncode == 0, report.stderr
    assert "| recent_only |" in report.stdout and "DPO minus base" in report.stdout
    missing = lettingo("report", "--dataset", "synthetic", env={"LETTINGO_HOME": str(tmp_path)})
    assert missing.returncode == 1 and "no evaluation report yet" in missing.stderr

    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        [run] = instance.get_runs()
        assert run.job_name == "lettingo_pipeline" and run.tags["dagster/partition"] == "synthetic"
        assert instance.get_latest_materialization_event(dg.AssetKey("task_samples")) is not None
