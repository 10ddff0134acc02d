"""One warehouse writer at a time (docs/scaling-out.md, "One warehouse writer at a time"): two
runs for two dataset partitions at once, each launched by its own process as two users (or a
backfill) would, on the local instance the project's dagster.yaml configures. Each run's writer
step goes through the real `Warehouse` resource and `replace_partition_from_frame`, and holds
the warehouse until the other run's writer has been blocked by the `warehouse` pool, so the
second writer can only have waited because of the pool. The writers must not overlap, the waiting one must say
it was blocked by the pool, and each partition's rows must all be there, none of the other's.

The team deployment keeps the same pool in PostgreSQL; the slow stack test
(test_team_stack.py) checks it there with the whole graph.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from lettingo_dagster.constants import POOL_WAREHOUSE

PARTITIONS = ("part-a", "part-b")
ROWS = 2000
partitions = dg.StaticPartitionsDefinition(list(PARTITIONS))
WAIT_FOR_THE_OTHER_S = 120


def _marks() -> Path:
    return Path(os.environ["LETTINGO_HOME"]) / "marks"


@dg.asset(partitions_def=partitions)
def staged(context: dg.AssetExecutionContext) -> None:
    """Not in a pool: both runs get here whatever the other is doing."""


@dg.asset(partitions_def=partitions, deps=[staged], pool=POOL_WAREHOUSE)
def written(context: dg.AssetExecutionContext) -> None:
    import pandas as pd

    from lettingo_dagster.resources import Warehouse
    from lettingo_dagster.storage import replace_partition_from_frame

    dataset = context.partition_key
    (other,) = [p for p in PARTITIONS if p != dataset]
    columns = {"dataset": "VARCHAR", "seq": "INTEGER", "value": "VARCHAR"}
    frame = pd.DataFrame(
        {
            "dataset": dataset,
            "seq": range(ROWS),
            "value": [f"{dataset}-{i}" for i in range(ROWS)],
        }
    )
    with Warehouse().get_connection() as con:
        started = time.time()
        replace_partition_from_frame(con, "written", dataset, frame, columns)
        # Hold the warehouse until the other run's writer has been turned away by the pool (or
        # has already written): a fixed hold raced the other run's step launch on a busy machine.
        deadline = time.monotonic() + WAIT_FOR_THE_OTHER_S
        while (
            not _other_is_done_or_blocked(context.instance, other) and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        ended = time.time()
    _marks().mkdir(parents=True, exist_ok=True)
    (_marks() / f"wrote-{dataset}").write_text(json.dumps([started, ended]))


def _blocked_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        record.dagster_event.message
        for record in instance.all_logs(run_id)
        if record.dagster_event
        and record.dagster_event.step_key == "written"
        and "blocked by limit for pool" in (record.dagster_event.message or "")
    ]


def _other_is_done_or_blocked(instance: dg.DagsterInstance, other: str) -> bool:
    if (_marks() / f"wrote-{other}").exists():
        return True
    runs = instance.get_runs(dg.RunsFilter(job_name="writers", tags={"dagster/partition": other}))
    return any(_blocked_messages(instance, run.run_id) for run in runs)


writers_job = dg.define_asset_job("writers", selection=[staged, written], partitions_def=partitions)
defs = dg.Definitions(assets=[staged, written], jobs=[writers_job])


def launch(partition: str) -> int:
    """One run of `writers` for a partition on the instance under DAGSTER_HOME."""
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(_writers_job), instance, tags={"dagster/partition": partition}
        )
        return 0 if result.success else 1


def _writers_job() -> dg.JobDefinition:
    return defs.resolve_job_def("writers")


@pytest.mark.timeout(600)
def test_two_runs_at_once_write_the_warehouse_one_at_a_time(fresh_home: Path, monkeypatch) -> None:
    from lettingo_dagster.cli import prepare_dagster_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("LETTINGO_DEPLOYMENT", raising=False)
    prepare_dagster_home()  # the local instance: sqlite, the project's pools
    with dg.DagsterInstance.get():  # its databases, before two processes would create them at once
        pass
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    runs = {
        partition: subprocess.Popen(
            [sys.executable, __file__, partition],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for partition in PARTITIONS
    }
    for partition, process in runs.items():
        out, _ = process.communicate(timeout=540)
        assert process.returncode == 0, f"{partition}:\n{out[-4000:]}"

    spans = sorted((*json.loads((_marks() / f"wrote-{p}").read_text()), p) for p in PARTITIONS)
    (_, first_end, first), (second_start, _, second) = spans
    assert second_start >= first_end, f"{first} and {second} wrote at the same time"

    with dg.DagsterInstance.get() as instance:
        blocked = {
            run.tags["dagster/partition"]: _blocked_messages(instance, run.run_id)
            for run in instance.get_runs(dg.RunsFilter(job_name="writers"))
        }
    assert set(blocked) == set(PARTITIONS)
    # The second writer waited for the pool's one slot, not for DuckDB's file lock.
    assert (
        blocked[second] and blocked[second][0] == f"Step blocked by limit for pool {POOL_WAREHOUSE}"
    )
    assert not blocked[first]

    import duckdb

    with duckdb.connect(str(fresh_home / "warehouse.duckdb"), read_only=True) as con:
        for partition in PARTITIONS:
            rows = con.execute(
                "SELECT seq, value FROM written WHERE dataset = ? ORDER BY seq", [partition]
            ).fetchall()
            assert rows == [(i, f"{partition}-{i}") for i in range(ROWS)]
        (total,) = con.execute("SELECT count(*) FROM written").fetchone()
        assert total == ROWS * len(PARTITIONS)


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1]))
