import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from lettingo_dagster.cli import prepare_dagster_home
from lettingo_dagster.constants import POOL_WAREHOUSE
from lettingo_dagster.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
DATA_ASSETS = {"interactions", "items", "task_samples"}


def test_definitions_resolve() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys >= DATA_ASSETS
    for job in defs.resolve_all_job_defs():
        assert job.name
    for sensor in defs.sensors or []:
        assert defs.resolve_sensor_def(sensor.name)
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("interactions", "ratings_within_scale") in checks
    assert ("task_samples", "no_leakage") in checks


def test_assets_read_well_in_the_catalog() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, f"{key} has no description"
        assert node.group_name != "default", f"{key} has no group"
        assert node.kinds, f"{key} has no kinds"
        assert node.partitions_def is not None


def test_data_assets_write_through_the_warehouse_pool() -> None:
    graph = defs.resolve_asset_graph()
    for name in DATA_ASSETS:
        assert graph.get(dg.AssetKey(name)).pools == {POOL_WAREHOUSE}


def test_partitions_come_from_the_registry() -> None:
    job = defs.resolve_job_def("lettingo_pipeline")
    keys = set(job.partitions_def.get_partition_keys())
    assert {"movielens-100k", "synthetic"} <= keys  # the project's and the tests' registry


def test_workspace_loads_the_module() -> None:
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert module == "lettingo_dagster.definitions"
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_instance_is_sqlite_under_lettingo_home(fresh_home: Path, monkeypatch) -> None:
    # Set, then removed: monkeypatch records the variable, so the value prepare_dagster_home
    # writes into os.environ is undone after the test instead of leaking into later ones.
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.delenv("DAGSTER_HOME")
    home = prepare_dagster_home()
    assert home == fresh_home / "dagster"
    assert (home / "dagster.yaml").read_bytes() == (ROOT / "dagster.yaml").read_bytes()
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["telemetry"]["enabled"] is False
    assert config["concurrency"]["pools"]["default_limit"] == 1
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert (home / "history" / "runs.db").is_file()
