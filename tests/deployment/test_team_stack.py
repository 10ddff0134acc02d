"""The team deployment end to end (slow, `make test-team`): PostgreSQL, Redis, the MLflow server
and two Celery workers started on free loopback ports under a fresh LETTINGO_HOME, the whole ci
graph for two dataset partitions at once through the workers, then a local run to compare with,
then each service taken away in turn, then everything stopped.

Multi-threaded CPU arithmetic is not bit-for-bit reproducible from one process to the next, so
both deployments run on one thread: the ci preset with `torch_threads: 1` (a copy of the assets
folder) and one BLAS/OpenMP thread. Then equal figures mean the deployment changed nothing, not
that two runs happened to agree.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from synthetic import write_movielens_atomic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("synthetic", "synthetic-b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_thread(values: object) -> object:
    """The preset with every `torch_threads` set to 1, wherever the setting lives."""
    if isinstance(values, dict):
        return {k: 1 if k == "torch_threads" else one_thread(v) for k, v in values.items()}
    if isinstance(values, list):
        return [one_thread(v) for v in values]
    return values


@dataclass
class Stack:
    root: Path
    env: dict[str, str]  # the team environment (what `make team-up` is given)
    local_env: dict[str, str]  # the same data and assets, local deployment, another home

    @property
    def home(self) -> Path:
        return Path(self.env["LETTINGO_HOME"])

    def deployment(self, *args: str, env: dict[str, str] | None = None, timeout: float = 1200):
        return subprocess.run(
            [sys.executable, "-m", "lettingo_dagster.deployment", *args],
            env=env or self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not pytest's tmp_path: the postgres user must be able to reach the cluster's folder.
    root = Path(tempfile.mkdtemp(prefix="lettingo-team-", dir="/tmp"))
    root.chmod(0o755)
    data = root / "data"
    registry = {}
    for seed, name in enumerate(DATASETS, start=5):
        write_movielens_atomic(data / name, users=90, items=160, min_ratings=20, max_ratings=70, seed=seed, name=name)  # fmt: skip
        registry[name] = {
            "format": "movielens-atomic",
            "interactions": f"{name}/{name}.inter",
            "items": f"{name}/{name}.item",
        }
    (root / "datasets.yaml").write_text(yaml.safe_dump(registry))
    assets = root / "assets"
    shutil.copytree(ROOT / "assets", assets)
    ci = assets / "presets" / "ci.yaml"
    ci.write_text(yaml.safe_dump(one_thread(yaml.safe_load(ci.read_text())), sort_keys=False))

    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LETTINGO_", "DAGSTER_", "MLFLOW_TRACKING"))
    }
    base.update(
        LETTINGO_DATA=str(data), LETTINGO_DATASETS=str(root / "datasets.yaml"),
        LETTINGO_ASSETS_DIR=str(assets), LETTINGO_PRESET="ci", GX_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_ENABLE_TELEMETRY="false",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )  # fmt: skip
    pg, redis, mlflow = free_port(), free_port(), free_port()
    env = {
        **base,
        "LETTINGO_DEPLOYMENT": "team",
        "LETTINGO_HOME": str(root / "team-home"),
        "LETTINGO_PG_URL": f"postgresql://lettingo@127.0.0.1:{pg}/dagster",
        "LETTINGO_MLFLOW_DB_URL": f"postgresql://lettingo@127.0.0.1:{pg}/mlflow",
        "LETTINGO_BROKER_URL": f"redis://127.0.0.1:{redis}/0",
        "LETTINGO_RESULT_BACKEND": f"redis://127.0.0.1:{redis}/1",
        "LETTINGO_MLFLOW_URI": f"http://127.0.0.1:{mlflow}",
    }
    local_env = {**base, "LETTINGO_HOME": str(root / "local-home")}
    stack = Stack(root, env, local_env)
    try:
        started = stack.deployment("up", timeout=600)
        assert started.returncode == 0, started.stdout + started.stderr
        yield stack
    finally:
        stopped = stack.deployment("down", timeout=300)
        status = stack.deployment("status")
        print(stopped.stdout, stopped.stderr, status.stdout)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "running" not in status.stdout, status.stdout
        for port in (pg, redis, mlflow):
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team_runs(stack: Stack) -> dict[str, subprocess.CompletedProcess]:
    """Two runs for two partitions at once, each its own orchestrating process, as two users (or
    a backfill) would launch them: one with `lettingo run` under LETTINGO_DEPLOYMENT=team, the
    other with `make team-run`'s command."""
    commands = {
        DATASETS[0]: ["lettingo_dagster.cli", "run"],
        DATASETS[1]: ["lettingo_dagster.deployment", "run"],
    }
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", *commands[name], "--preset", "ci", "--dataset", name],
            env=stack.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for name in DATASETS
    }
    done = {}
    for name, process in runs.items():
        out, _ = process.communicate(timeout=1800)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, "")
    return done


@pytest.fixture(scope="module")
def local_run(stack: Stack) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lettingo_dagster.cli", "run", "--preset", "ci", "--dataset",
         DATASETS[0], "--log-level", "WARNING"],
        env=stack.local_env, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip


def team_instance(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    import dagster as dg

    monkeypatch.setenv("LETTINGO_PG_URL", stack.env["LETTINGO_PG_URL"].replace("postgresql://", "postgresql+psycopg2://"))  # fmt: skip
    return dg.DagsterInstance.from_config(str(stack.home / "team" / "dagster"))


def order(row: tuple) -> str:
    """Rows sort on their values other than floats, whose last digits may differ (`close`)."""

    def has_float(value: object) -> bool:
        if isinstance(value, list | tuple):
            return any(has_float(v) for v in value)
        return isinstance(value, float)

    return repr([value for value in row if not has_float(value)])


def warehouse_rows(home: Path, dataset: str) -> dict[str, list[tuple]]:
    import duckdb

    rows = {}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            columns = [
                c for (c,) in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
                ).fetchall() if not c.endswith("seconds")  # timings differ between runs
            ]  # fmt: skip
            if "dataset" not in columns:
                continue
            select = ", ".join(f'"{c}"' for c in columns)
            found = con.execute(f'SELECT {select} FROM "{table}" WHERE dataset = ?', [dataset])
            rows[table] = sorted(found.fetchall(), key=order)
    return rows


def close(a: object, b: object) -> bool:
    """Equal, floats to within 1e-5 (NaN equals NaN). Model outputs are computed in batches of
    what the caches miss (the encoder's in memory, and the model-call cache both partitions' runs
    fill at once), and a batch's make-up moves float32 results (and log-scores built on them)
    around their sixth digit."""
    if isinstance(a, float) or isinstance(b, float):
        if not all(isinstance(v, int | float) for v in (a, b)):
            return False
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def report(home: Path) -> tuple[dict, list[list[object]]]:
    """report.json and results.csv (numbers parsed) of the first dataset."""
    folder = home / "reports" / DATASETS[0]
    summary = json.loads((folder / "report.json").read_text().replace(str(home), "$LETTINGO_HOME"))

    def parsed(cell: str) -> object:
        try:
            return float(cell)
        except ValueError:
            return cell

    with (folder / "results.csv").open(newline="") as handle:
        table = [[parsed(cell) for cell in row] for row in csv.reader(handle)]
    return summary, table


def test_whole_graph_through_celery_matches_a_local_run(stack, team_runs, local_run) -> None:
    for name, run in team_runs.items():
        assert run.returncode == 0, f"{name}:\n{run.stdout[-6000:]}"
    assert local_run.returncode == 0, local_run.stdout[-3000:] + local_run.stderr[-3000:]

    # The whole report (figures, intervals, differences, the promotion decision) and its table.
    local_home = Path(stack.local_env["LETTINGO_HOME"])
    team_report, team_table = report(stack.home)
    local_report, local_table = report(local_home)
    assert team_report["results_markdown"] and team_report["dpo_minus_base"]
    # What the report prints (the table in points, the decision) is equal to the character.
    assert team_report["results_markdown"] == local_report["results_markdown"]
    assert team_report["promotion"] == local_report["promotion"]
    differing = sorted(k for k in team_report.keys() | local_report.keys() if not close(team_report.get(k), local_report.get(k)))  # fmt: skip
    assert not differing, {k: (team_report.get(k), local_report.get(k)) for k in differing}
    assert close(team_table, local_table)

    # Every warehouse table holds the same rows for the dataset as the local run's: nothing lost,
    # nothing of the other partition's run mixed in.
    team_rows = warehouse_rows(stack.home, DATASETS[0])
    local_rows = warehouse_rows(local_home, DATASETS[0])
    assert team_rows.keys() == local_rows.keys()
    for table, rows in team_rows.items():
        theirs = local_rows[table]
        assert len(rows) == len(theirs), table
        for ours, expected in zip(rows, theirs, strict=True):
            differing = [(i, a, b) for i, (a, b) in enumerate(zip(ours, expected, strict=True)) if not close(a, b)]  # fmt: skip
            assert not differing, (table, ours[:4], differing)
    assert team_rows["interactions"] and team_rows["preference_pairs"]
    other = warehouse_rows(stack.home, DATASETS[1])
    lines = (stack.root / "data" / DATASETS[1] / f"{DATASETS[1]}.inter").read_text().splitlines()
    assert len(other["interactions"]) == len(lines) - 1  # the header
    # The other partition filled the same tables (some, like failures, may rightly be empty).
    assert {t for t, rows in other.items() if rows} == {t for t, rows in team_rows.items() if rows}


def test_runs_and_events_are_in_postgres_and_steps_ran_on_the_workers(
    stack, team_runs, monkeypatch
) -> None:
    import dagster as dg

    from lettingo_dagster.deployment import TRAINING_STEPS

    with team_instance(stack, monkeypatch) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        runs = {r.tags["dagster/partition"]: r for r in instance.get_runs(dg.RunsFilter(job_name="lettingo_pipeline"))}  # fmt: skip
        assert set(runs) == set(DATASETS)
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs.values())

        pools = {}
        spans: dict[str, list[tuple[float, float, str]]] = {}
        for name, run in runs.items():
            records = instance.all_logs(run.run_id)
            assert len(records) > 100
            workers = {}
            started = {}
            for record in records:
                event = record.dagster_event
                if event is None:
                    continue
                if event.event_type_value == "ENGINE_EVENT" and "in celery worker" in (event.message or ""):  # fmt: skip
                    workers[event.step_key] = event.event_specific_data.metadata["Celery worker"].value  # fmt: skip
                elif event.event_type_value == "STEP_START":
                    started[event.step_key] = record.timestamp
                elif event.event_type_value == "STEP_SUCCESS":
                    spans.setdefault(name, []).append((started[event.step_key], record.timestamp, event.step_key))  # fmt: skip
            assert set(workers) == set(started)  # every step went through a Celery worker
            for step, worker in workers.items():
                queue = "training" if step in TRAINING_STEPS else "dagster"
                assert worker.startswith(f"lettingo-{queue}@"), (step, worker)
        # The pools' slots are held in PostgreSQL with the limit of dagster.yaml.
        for pool in instance.event_log_storage.get_concurrency_keys():
            pools[pool] = instance.event_log_storage.get_concurrency_info(pool).slot_count
        assert pools and set(pools.values()) == {1}

    # One warehouse writer at a time: the pool of the data assets' steps never overlapped across
    # the two runs, while the runs themselves did run at the same time.
    from lettingo_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    (warehouse_pool,) = graph.get(dg.AssetKey("interactions")).pools
    writers = {k.to_user_string() for k in graph.get_all_asset_keys() if warehouse_pool in graph.get(k).pools}  # fmt: skip
    held = sorted((s, e, f"{n}:{k}") for n, found in spans.items() for s, e, k in found if k in writers)  # fmt: skip
    assert len(held) == 2 * len(writers)
    for (_, end, first), (start, _, second) in zip(held, held[1:], strict=False):
        assert start >= end, f"{first} and {second} wrote at the same time"
    (a_start, a_end), (b_start, b_end) = (
        (min(s for s, _, _ in spans[name]), max(e for _, e, _ in spans[name])) for name in DATASETS
    )
    assert a_start < b_end and b_start < a_end


def test_mlflow_run_and_registered_version_are_on_the_server(stack, team_runs) -> None:
    from mlflow.tracking import MlflowClient

    from lettingo_dagster.tracking import experiment_name, registered_model_name

    client = MlflowClient(tracking_uri=stack.env["LETTINGO_MLFLOW_URI"])
    for name in DATASETS:
        experiment = client.get_experiment_by_name(experiment_name(name))
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        assert runs and all(run.info.status == "FINISHED" for run in runs)
        versions = client.search_model_versions(f"name = '{registered_model_name(name)}'")
        assert versions
        version = versions[0]
        assert version.run_id in {run.info.run_id for run in runs}
        # The artifacts went through the server to its artifact root, not to a local folder.
        assert version.source.startswith("mlflow-artifacts:")
        assert client.list_artifacts(version.run_id)
    assert (stack.home / "team" / "mlflow" / "artifacts").is_dir()
    assert not (stack.home / "mlflow").exists()  # no local sqlite store was used


def _warehouse_snapshot(stack: Stack) -> dict[str, dict[str, list[tuple]]]:
    return {name: warehouse_rows(stack.home, name) for name in DATASETS}


def _fails_early(stack: Stack, service: str, env: dict[str, str] | None = None) -> None:
    before = _warehouse_snapshot(stack)
    started = time.monotonic()
    run = stack.deployment("run", "--preset", "ci", "--dataset", DATASETS[0], env=env, timeout=300)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stdout + run.stderr
    assert errors[0].startswith(f"error: {service} is not reachable at "), errors[0]
    assert time.monotonic() - started < 120
    assert _warehouse_snapshot(stack) == before


def _fails_in_the_executor(stack: Stack, service: str, monkeypatch) -> None:
    """A run launched past the command's own check (the UI, a sensor) fails in the executor
    before its first step, with the same message."""
    import dagster as dg

    before = _warehouse_snapshot(stack)
    env = {**stack.env, "DAGSTER_HOME": str(stack.home / "team" / "dagster")}
    env["LETTINGO_PG_URL"] = env["LETTINGO_PG_URL"].replace("postgresql://", "postgresql+psycopg2://")  # fmt: skip
    launched = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "lettingo_dagster.definitions",
         "-j", "lettingo_pipeline", "--tags", json.dumps({"dagster/partition": DATASETS[0]})],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert launched.returncode != 0
    with team_instance(stack, monkeypatch) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="lettingo_pipeline"), limit=1)
        assert run.status == dg.DagsterRunStatus.FAILURE
        records = instance.all_logs(run.run_id)
        assert not any(r.dagster_event and r.dagster_event.is_step_start for r in records)
        failure = next(r for r in records if r.dagster_event and r.dagster_event.is_run_failure)
        error = failure.dagster_event.event_specific_data.error
        assert f"{service} is not reachable at " in error.to_string()
    assert _warehouse_snapshot(stack) == before


def test_each_service_down_fails_the_run_early_naming_it(stack, team_runs, monkeypatch) -> None:
    pg = stack.env["LETTINGO_PG_URL"]
    _fails_early(stack, "PostgreSQL (Dagster run and event storage)", {**stack.env, "LETTINGO_PG_URL": pg.rsplit("/", 1)[0] + "/no_such_database"})  # fmt: skip
    _fails_early(stack, "PostgreSQL (Dagster run and event storage)", {**stack.env, "LETTINGO_PG_URL": f"postgresql://lettingo@127.0.0.1:{free_port()}/dagster"})  # fmt: skip

    from lettingo_dagster.deployment import stack as services

    monkeypatch.setenv("LETTINGO_HOME", str(stack.home))
    for service, name in (("mlflow", "The MLflow tracking server"), ("redis", "The Celery broker (Redis)")):  # fmt: skip
        pid = services._read_pid(service)
        assert pid is not None
        services._stop_group(service, pid)
        _fails_early(stack, name)
        _fails_in_the_executor(stack, name, monkeypatch)
