"""Stage 1 materialized for real under the ci preset: base generator and sampled profiles."""

from pathlib import Path

import dagster as dg
import duckdb
import pytest
from synthetic import write_movielens_atomic

from lettingo_dagster.data.assets import data_assets
from lettingo_dagster.exploration.assets import exploration_assets
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import load_preset

pytestmark = pytest.mark.integration


def _materialize(
    warehouse: Path, instance: dg.DagsterInstance, selection: list
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        selection,
        partition_key="synthetic",
        instance=instance,
        resources={
            "settings": SettingsResource(preset="ci"),
            "warehouse": Warehouse(database=str(warehouse)),
        },
    )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_sampled_profiles_materialize_and_rerun_from_cache(
    tmp_path: Path, data_dir: Path, fresh_home: Path
) -> None:
    write_movielens_atomic(
        data_dir / "synthetic", users=60, items=150, min_ratings=8, max_ratings=70
    )
    warehouse = tmp_path / "warehouse.duckdb"
    instance = dg.DagsterInstance.ephemeral()
    first = _materialize(warehouse, instance, [*data_assets, *exploration_assets])
    assert first.success

    generator = _metadata(first, "base_generator")
    model_dir = Path(generator["model_path"])
    assert model_dir.is_relative_to(fresh_home / "models" / "base_generator" / "synthetic")
    assert (model_dir / "config.json").is_file() and generator["parameters"] > 0
    assert "sample:" in generator["samples"]

    profiles = _metadata(first, "sampled_profiles")
    preset = load_preset("ci")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        users = con.execute(
            "SELECT count(DISTINCT user_id) FROM task_samples WHERE split IN ('train', 'calibration')"
        ).fetchone()[0]
        per_explorer = dict(
            con.execute("SELECT explorer, count(*) FROM sampled_profiles GROUP BY 1").fetchall()
        )
        empty = con.execute(
            "SELECT count(*) FROM sampled_profiles WHERE trim(profile) = ''"
        ).fetchone()[0]
        test_users = con.execute(
            "SELECT count(*) FROM sampled_profiles WHERE split NOT IN ('train', 'calibration')"
        ).fetchone()[0]
    [base, writers] = preset.exploration.explorers
    dropped = profiles["empty_samples_dropped"]
    assert dropped <= 0.05 * users * base.samples_per_user
    assert per_explorer == {
        base.name: users * base.samples_per_user - dropped,
        writers.name: users * len(writers.styles),
    }
    assert empty == 0 and test_users == 0
    assert profiles["new_model_calls"] == users * base.samples_per_user
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in first.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.asset_key.to_user_string() == "sampled_profiles"
    }
    assert checks["no_empty_profiles"] is True and len(checks) == 4

    # Unchanged inputs: the model is reused and no generation runs again.
    second = _materialize(warehouse, instance, exploration_assets)
    assert _metadata(second, "base_generator")["model_path"] == str(model_dir)
    again = _metadata(second, "sampled_profiles")
    assert again["new_model_calls"] == 0 and again["cache_hit_rate"] == 1.0
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert (
            con.execute("SELECT count(*) FROM sampled_profiles").fetchone()[0]
            == profiles["dagster/row_count"]
        )
