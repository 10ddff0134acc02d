"""Every asset that reads the warehouse, materialized before what it reads: the step fails with
the upstream asset, the partition and how to materialize it, never DuckDB's catalog error."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.definitions import all_assets, defs
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.storage import require_partition

pytestmark = pytest.mark.integration

# Each asset that reads the warehouse, and the first table it reads.
READS = {
    "task_samples": "interactions",
    "base_generator": "task_samples",
    "sampled_profiles": "task_samples",
    "item_knowledge": "interactions",
    "recommender": "task_samples",
    "recommender_trial": "task_samples",
    "oracle_study": "task_samples",
    "reward_scores": "sampled_profiles",
    "preference_pairs": "reward_scores",
    "dpo_checkpoint": "preference_pairs",
    "heldout_profiles": "task_samples",
    "evaluation_report": "task_samples",
}
ASSETS = {a.key.to_user_string(): a for a in all_assets if isinstance(a, dg.AssetsDefinition)}


def _stub(key: dg.AssetKey) -> dg.AssetsDefinition:
    """An upstream asset's value (a folder path) without computing it."""

    @dg.asset(key=key, partitions_def=dataset_partitions)
    def stub() -> str:
        return "/nonexistent"

    return stub


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.event_specific_data.error)
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )


def _materialize(asset: str, warehouse: Path) -> dg.ExecuteInProcessResult:
    target = ASSETS[asset]
    stubs = [_stub(key) for key in set(target.keys_by_input_name.values())]
    return dg.materialize(
        [*stubs, target],
        partition_key="synthetic",
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            **defs.resources,
            "settings": SettingsResource(preset="ci"),
            "warehouse": Warehouse(database=str(warehouse)),
        },
        raise_on_error=False,
    )


def test_every_warehouse_reader_is_listed() -> None:
    assert set(ASSETS) - {"interactions", "items"} <= set(READS)


@pytest.mark.parametrize("asset", sorted(set(READS) & set(ASSETS)))
def test_reading_an_unmaterialized_upstream_says_what_to_run(
    asset: str, tmp_path: Path, fresh_home: Path
) -> None:
    result = _materialize(asset, tmp_path / "warehouse.duckdb")
    assert not result.success
    message = _failure(result)
    upstream = READS[asset]
    assert f"upstream asset '{upstream}' is not materialized for partition 'synthetic'" in (message)
    assert f"--select {upstream} --partition synthetic" in message
    assert "Catalog Error" not in message
    # Waiting does not materialize anything: the step is not retried.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_rows_of_another_dataset_are_not_this_partition(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("CREATE TABLE interactions (dataset VARCHAR, user_id VARCHAR)")
        con.execute("INSERT INTO interactions VALUES ('other', 'u1')")
        con.execute("CREATE TABLE items (dataset VARCHAR, item_id VARCHAR)")
        with pytest.raises(dg.Failure) as caught:
            require_partition(con, ("interactions", "items"), "synthetic")
        assert "interactions has no rows of 'synthetic'" in str(caught.value.description)
        con.execute("INSERT INTO interactions VALUES ('synthetic', 'u1')")
        # items may be empty (a dataset without an items file), but must exist.
        require_partition(con, ("interactions", "items"), "synthetic")
        con.execute("DROP TABLE items")
        with pytest.raises(dg.Failure, match="the warehouse has no items table"):
            require_partition(con, "items", "synthetic")


def test_the_warehouse_names_a_missing_table_read_anywhere(tmp_path: Path) -> None:
    warehouse = Warehouse(database=str(tmp_path / "w.duckdb"))
    with pytest.raises(dg.Failure) as caught, warehouse.get_connection() as con:
        con.execute("SELECT * FROM reward_scores WHERE dataset = 'synthetic'")
    assert "upstream asset 'reward_scores' is not materialized" in caught.value.description
    assert caught.value.__suppress_context__  # no DuckDB traceback under it
    with pytest.raises(duckdb.ParserException), warehouse.get_connection() as con:
        con.execute("SELEC 1")  # other errors pass through unchanged


def test_a_table_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    """An upgrade that adds a column keeps the warehouse: old rows get NULL there, and the new
    writer's rows land whole."""
    import duckdb
    import pandas as pd

    from lettingo_dagster.storage import replace_partition_from_frame

    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        old = {"dataset": "VARCHAR", "user_id": "VARCHAR"}
        replace_partition_from_frame(
            con, "scores", "a", pd.DataFrame({"dataset": ["a"], "user_id": ["u1"]}), old
        )
        new = {**old, "score": "DOUBLE"}
        frame = pd.DataFrame({"dataset": ["b"], "user_id": ["u2"], "score": [0.5]})
        assert replace_partition_from_frame(con, "scores", "b", frame, new) == 1
        rows = con.execute("SELECT * FROM scores ORDER BY dataset").fetchall()
    assert rows == [("a", "u1", None), ("b", "u2", 0.5)]
