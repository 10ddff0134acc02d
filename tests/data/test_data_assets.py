"""The data assets materialized for real: ephemeral Dagster instance, DuckDB file on disk."""

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from synthetic import write_movielens_atomic

from lettingo_dagster.data.assets import data_assets
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import load_preset

pytestmark = pytest.mark.integration


def _materialize(
    warehouse: Path, dataset: str, selection: list | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        selection or data_assets,
        partition_key=dataset,
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "settings": SettingsResource(preset="ci"),
            "warehouse": Warehouse(database=str(warehouse)),
        },
        raise_on_error=False,
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        f"{e.asset_key.to_user_string()}.{e.check_name}": e.passed
        for e in (
            event.event_specific_data
            for event in result.all_events
            if event.event_type_value == "ASSET_CHECK_EVALUATION"
        )
    }


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def synthetic_files(data_dir: Path) -> tuple[Path, Path]:
    return write_movielens_atomic(
        data_dir / "synthetic", users=60, items=150, min_ratings=8, max_ratings=70
    )


def test_data_graph_materializes_with_passing_checks(tmp_path: Path, synthetic_files) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    result = _materialize(warehouse, "synthetic")
    assert result.success
    checks = _checks(result)
    assert len(checks) == 10 and all(checks.values()), checks

    raw = pd.read_csv(synthetic_files[0], sep="\t", dtype=str)
    task = load_preset("ci").task
    per_user = raw.groupby(raw.columns[0]).size()
    eligible = int((per_user >= task.min_interactions).sum())

    interactions = _metadata(result, "interactions")
    assert interactions["dagster/row_count"] == len(raw)
    assert interactions["users"] == 60
    samples = _metadata(result, "task_samples")
    assert samples["users_eligible"] == eligible
    kept = min(eligible, 3 * task.split.max_users_per_split)
    assert samples["users_kept"] <= kept
    assert samples["dagster/row_count"] == samples["users_kept"] * task.targets_per_user
    assert "| split |" in samples["labels_per_split"]

    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute(
            "SELECT count(*) FROM interactions WHERE dataset = 'synthetic'"
        ).fetchone()[0] == len(raw)
        assert (
            con.execute("SELECT count(*) FROM items WHERE dataset = 'synthetic'").fetchone()[0]
            == 150
        )
        title, genres = con.execute(
            "SELECT title, genres FROM items WHERE dataset = 'synthetic' AND item_id = '7'"
        ).fetchone()
        assert title == "Movie 7: The Sequel" and genres


def test_malformed_file_fails_clearly_and_keeps_previous_table(
    tmp_path: Path, data_dir: Path
) -> None:
    inter, _ = write_movielens_atomic(data_dir / "broken", name="broken", users=60)
    warehouse = tmp_path / "warehouse.duckdb"
    assert _materialize(warehouse, "broken").success

    lines = inter.read_text().splitlines()
    lines[5] = lines[5].split("\t")[0] + "\tnot-an-item-row"
    inter.write_text("\n".join(lines) + "\n")
    result = _materialize(warehouse, "broken")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == "interactions"]
    message = failure.step_failure_data.user_failure_data.description
    assert "broken.inter" in message and "line 6" in message
    with duckdb.connect(str(warehouse), read_only=True) as con:
        count = con.execute(
            "SELECT count(*) FROM interactions WHERE dataset = 'broken'"
        ).fetchone()[0]
    assert count == len(lines) - 1  # the previous ingest, untouched
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "task_samples"
    ]


def test_blocking_check_stops_downstream(tmp_path: Path, data_dir: Path) -> None:
    inter, _ = write_movielens_atomic(data_dir / "broken", name="broken", users=60)
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([*lines, lines[3]]) + "\n")  # the same event twice
    result = _materialize(tmp_path / "warehouse.duckdb", "broken")
    checks = _checks(result)
    assert checks["interactions.unique_events"] is False
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "interactions" in materialized and "task_samples" not in materialized
