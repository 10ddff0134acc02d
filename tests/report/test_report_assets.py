"""The report group materialized for real under the ci preset: held-out profiles of test users,
the evaluation report on disk and in MLflow, and the champion promotion."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from lettingo_dagster.definitions import all_assets
from lettingo_dagster.paths import reports_dir
from lettingo_dagster.report.evaluation import METHODS
from lettingo_dagster.tracking import CHAMPION, MlflowTracking, registered_model_name

pytestmark = pytest.mark.integration


def test_report_assets_write_the_report_and_decide_the_champion(pipeline_world) -> None:
    result = pipeline_world.materialize(
        all_assets, ["dpo_checkpoint", "heldout_profiles", "evaluation_report"]
    )
    assert result.success
    meta = {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    report = meta["evaluation_report"]
    version = meta["dpo_checkpoint"]["model_version"]

    # Held-out profiles: test users only, three arms with the same number of samples.
    with duckdb.connect(str(pipeline_world.warehouse), read_only=True) as con:
        arms = dict(
            con.execute("SELECT method, count(*) FROM heldout_profiles GROUP BY 1").fetchall()
        )
        leaked = con.execute(
            """
            SELECT count(*) FROM heldout_profiles h
            JOIN (SELECT DISTINCT user_id, split FROM task_samples) t USING (user_id)
            WHERE t.split <> 'test'
            """
        ).fetchone()[0]
    assert set(arms) == {"base_generator", "base_generator_null", "dpo_generator"}
    assert len(set(arms.values())) == 1 and leaked == 0

    # Every method of the evaluation protocol with intervals, in the metadata and on disk.
    for method in METHODS:
        assert method in report["results"], method
    assert "[" in report["results"] and report["test_users"] > 0
    folder = reports_dir("synthetic")
    assert Path(report["report_html"]).parent == folder
    html = (folder / "report.html").read_text()
    assert "data:image/png;base64," in html and "dpo_generator" in html
    summary = json.loads((folder / "report.json").read_text())
    assert {d["metric"] for d in summary["dpo_minus_base"]} >= {"hit_rate@1", "ndcg@10"}
    assert summary["null_check"] and summary["ceiling"]
    # The profile tables travel too (bench/learning_control.py prints them), NaN as null.
    stats = {row["method"]: row for row in summary["profile_statistics"]}
    claims = {row["method"]: row for row in summary["profile_claims"]}
    assert {"base_generator", "dpo_generator"} <= set(stats) & set(claims)
    assert all(value is None or value == value for row in claims.values() for value in row.values())
    assert report["metric_intervals_plot"].startswith("![")

    # Promotion: the decision is stated and matches the registry.
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    promotion = checks["champion_promotion"]
    # The comparison check states its figures in points, as the report's difference table does.
    beats = checks["dpo_beats_base"]
    difference = next(
        d for d in summary["dpo_minus_base"] if d["metric"] == beats.metadata["metric"].value
    )
    assert beats.description.startswith(f"DPO minus base {difference['metric']}: ")
    assert f"{100 * difference['estimate']:+.1f} points" in beats.description
    assert beats.passed == (difference["low"] > 0)
    tracking = MlflowTracking(tracking_uri=pipeline_world.mlflow_uri)
    name = registered_model_name("synthetic")
    champion = tracking.alias_version(name, CHAMPION)
    assert (champion == str(version)) == promotion.passed
    assert str(version) in report["promotion"]
    tags = tracking.version_tags(name, str(version))
    assert tags["promotion.metric"] == summary["headline_metric"] == "hit_rate@1"
    assert tags["promotion.promote"] == str(promotion.passed)
    assert summary["promotion"]["rule"] == tags["promotion.rule"]
    assert set(summary["reward_reliability"]) >= {"estimate", "low", "high"}
    run = tracking.client().get_run(meta["dpo_checkpoint"]["mlflow_run_id"])
    assert any(k.startswith("dpo_generator/") for k in run.data.metrics)
    artifacts = {
        a.path for a in tracking.client().list_artifacts(run.info.run_id, "evaluation_report")
    }
    assert "evaluation_report/report.html" in artifacts
