"""Stages 2 and 3 materialized for real under the ci preset, on a dataset the test writes."""

from pathlib import Path

import dagster as dg
import duckdb
import pytest
from synthetic import write_movielens_atomic

from lettingo_dagster.definitions import all_assets, defs
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import load_preset

pytestmark = pytest.mark.integration


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_rewards_pairs_and_oracle(tmp_path: Path, data_dir: Path, fresh_home: Path) -> None:
    write_movielens_atomic(
        data_dir / "synthetic", users=80, items=150, min_ratings=20, max_ratings=70, seed=3
    )
    warehouse = tmp_path / "warehouse.duckdb"
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        **defs.resources,  # every asset's resources must resolve, selected or not
        "settings": SettingsResource(preset="ci"),
        "warehouse": Warehouse(database=str(warehouse)),
    }
    result = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets("preference_pairs", "oracle_study").upstream(),
        partition_key="synthetic",
        instance=instance,
        resources=resources,
    )
    assert result.success

    rewards = _metadata(result, "reward_scores")
    assert rewards["task"] == "ranking"
    assert "| source |" in rewards["reward_per_explorer"]
    reliability = rewards["reward_reliability"]
    assert reliability["low"] <= reliability["estimate"] <= reliability["high"]
    assert 0 <= rewards["no_profile_accuracy"] <= 1
    oracle = _metadata(result, "oracle_study")
    assert "oracle_ceiling" in oracle["oracle_ranking_heldout_all"]
    assert "recent_only" in oracle["oracle_ranking_heldout_session_guard"]
    assert oracle["choice"].startswith("largest ceiling lower bound: task ranking")
    recommender = _metadata(result, "recommender")
    assert Path(recommender["model_path"]).is_relative_to(fresh_home / "models" / "recommender")

    with duckdb.connect(str(warehouse), read_only=True) as con:
        profiles = con.execute("SELECT count(*) FROM sampled_profiles").fetchone()[0]
        scored = con.execute(
            "SELECT count(*), min(targets), max(targets), min(binary_reward), max(binary_reward) FROM reward_scores"
        ).fetchone()
        pairs = con.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE p.chosen_reward <= p.rejected_reward),
                   count(*) FILTER (WHERE p.split = 'test'),
                   count(*) FILTER (WHERE c.user_id <> p.user_id OR r.user_id <> p.user_id)
            FROM preference_pairs p
            JOIN reward_scores c ON c.profile_id = p.chosen_profile_id
            JOIN reward_scores r ON r.profile_id = p.rejected_profile_id
            """
        ).fetchone()
    targets = load_preset("ci").task.targets_per_user
    assert (
        scored[0] == profiles and scored[1] == scored[2] == targets
    )  # every profile, every target
    assert 0.0 <= scored[3] <= scored[4] <= 1.0
    assert pairs[0] == _metadata(result, "preference_pairs")["dagster/row_count"] > 0
    assert pairs[1:] == (0, 0, 0)

    # Scores come from the cache the second time: no recommender call.
    again = dg.materialize(
        all_assets,
        selection=["reward_scores"],
        partition_key="synthetic",
        instance=instance,
        resources=resources,
    )
    assert _metadata(again, "reward_scores")["cache_hit_rate"] == 1.0
