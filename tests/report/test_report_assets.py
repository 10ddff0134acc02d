"""The report group materialized for real under the ci preset: held-out profiles of test users,
the evaluation report on disk and in MLflow, and the champion promotion."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from lettingo_dagster.definitions import all_assets
from lettingo_dagster.report.assets import decide_promotion, promote_version, reports_dir
from lettingo_dagster.report.evaluation import METHODS
from lettingo_dagster.tracking import CHAMPION, MlflowTracking, registered_model_name

pytestmark = pytest.mark.integration


def test_decide_promotion_against_base_then_champion() -> None:
    assert decide_promotion(0.30, None, 0.25) == (True, "base generator", 0.25)
    assert decide_promotion(0.20, None, 0.25)[0] is False
    assert decide_promotion(0.30, 0.31, 0.10) == (False, "current champion", 0.31)
    assert decide_promotion(0.32, 0.31, 0.40)[0] is True  # the champion is the bar, not base
    assert decide_promotion(0.31, 0.31, 0.10)[0] is False  # a tie does not replace it


def test_promotion_moves_the_champion_only_on_a_better_version(tmp_path: Path) -> None:
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracking.client()
    experiment = tracking.experiment_id("lettingo-promotion")
    name = "lettingo-profile-generator-promotion"

    def register() -> str:
        run = client.create_run(experiment)
        return tracking.register(name, run, "model")

    tag = "heldout_hit_rate_at_1"
    first = register()
    # No champion yet: the bar is the base generator.
    assert promote_version(tracking, name, first, 0.20, 0.25, tag)[0] is False
    assert tracking.alias_version(name) is None
    assert promote_version(tracking, name, first, 0.30, 0.25, tag)[:2] == (True, "base generator")
    assert tracking.alias_version(name) == first
    # A worse version leaves the champion in place, whatever the base generator scored.
    second = register()
    promoted, against, reference, before = promote_version(tracking, name, second, 0.28, 0.1, tag)
    assert (promoted, against, reference, before) == (False, "current champion", 0.30, first)
    assert tracking.alias_version(name) == first
    # A better one takes the alias; its figure is recorded on the version.
    third = register()
    assert promote_version(tracking, name, third, 0.35, 0.5, tag)[0] is True
    assert tracking.alias_version(name) == third
    assert float(tracking.version_tags(name, third)[tag]) == 0.35
    assert promote_version(tracking, name, None, 0.9, 0.1, tag)[0] is False


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

    # Every method of DESIGN section 6 with intervals, in the metadata and on disk.
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
    assert beats.passed == (difference["estimate"] > 0)
    tracking = MlflowTracking(tracking_uri=pipeline_world.mlflow_uri)
    name = registered_model_name("synthetic")
    champion = tracking.alias_version(name, CHAMPION)
    assert (champion == str(version)) == promotion.passed
    assert str(version) in report["promotion"]
    tags = tracking.version_tags(name, str(version))
    assert "heldout_hit_rate_at_1" in tags
    run = tracking.client().get_run(meta["dpo_checkpoint"]["mlflow_run_id"])
    assert any(k.startswith("dpo_generator/") for k in run.data.metrics)
    artifacts = {
        a.path for a in tracking.client().list_artifacts(run.info.run_id, "evaluation_report")
    }
    assert "evaluation_report/report.html" in artifacts
