"""Dagster assets of the report group: held-out profiles of test users and the evaluation
report, with the champion promotion in the MLflow registry."""

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from lettingo_dagster.constants import POOL_MODEL
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.models.cache import ModelCallCache
from lettingo_dagster.paths import model_cache_path
from lettingo_dagster.report.build import (
    REPORT_TABLES,
    ReportModels,
    ReportOutcome,
    build_report,
    champion_model_dir,
    load_report_inputs,
    on_metric,
)
from lettingo_dagster.report.heldout import (
    HELDOUT_COLUMNS,
    heldout_arms,
    sample_heldout_profiles,
)
from lettingo_dagster.resources import MODEL_CALL_RETRY_POLICY, SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)
from lettingo_dagster.tracking import MlflowTracking, registered_model_name


@dataset_asset(
    key="heldout_profiles",
    group_name="report",
    kinds={"duckdb", "pytorch"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "Profiles of the held-out test users, written with the same decoding by the generator "
        "before DPO (base_generator), after DPO (dpo_generator), and before DPO again with "
        "another seed (base_generator_null, the null check). Cached like every model call."
    ),
)
def heldout_profiles(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
    base_generator: str,
    dpo_checkpoint: str,
) -> dg.MaterializeResult:
    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=("test",))
    if not histories:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    champion_dir = champion_model_dir(mlflow, registered_model_name(dataset))
    arms = heldout_arms(preset, base_generator, dpo_checkpoint, champion_dir)
    table, summary = sample_heldout_profiles(
        preset, dataset, histories, arms, ModelCallCache(model_cache_path()), log=context.log.info
    )
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(
            con, "heldout_profiles", dataset, table, HELDOUT_COLUMNS
        )
    examples = table.groupby("method", sort=False).head(2)[["user_id", "method", "profile"]]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "test_users": len(histories),
            "per_method": dg.MetadataValue.md(markdown_preview(summary, rows=10)),
            "examples": dg.MetadataValue.md(markdown_preview(examples, rows=10, width=300)),
        }
    )


def _image_markdown(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"


def _report_metadata(outcome: ReportOutcome, metric: str, seconds: float) -> dict:
    from lettingo_dagster.report.render import results_markdown_table

    figures, folder, plots = outcome.figures, outcome.folder, outcome.plots
    run_url = outcome.promotion.registration.get("run_url")
    return {
        "task": figures.task,
        "test_users": figures.users,
        "test_targets": figures.targets,
        "results": dg.MetadataValue.md(results_markdown_table(figures.table)),
        "dpo_minus_base": dg.MetadataValue.md(
            markdown_preview(pd.DataFrame(figures.dpo_minus_base).round(4), rows=20)
        ),
        "null_check": dg.MetadataValue.md(
            markdown_preview(pd.DataFrame(figures.null_check).round(4), rows=20)
        ),
        "profile_statistics": dg.MetadataValue.md(markdown_preview(figures.stats.round(3), rows=10)),
        "profile_claims": dg.MetadataValue.md(markdown_preview(figures.claims.round(3), rows=12)),
        "metric_intervals_plot": dg.MetadataValue.md(
            _image_markdown(folder / plots["metrics"], "metrics with 95% intervals")
        )
        if "metrics" in plots
        else "",
        "differences_plot": dg.MetadataValue.md(
            _image_markdown(folder / plots["differences"], "paired differences")
        )
        if "differences" in plots
        else "",
        "report_html": dg.MetadataValue.path(str(folder / "report.html")),
        "report_markdown": dg.MetadataValue.path(str(folder / "report.md")),
        "mlflow_run": dg.MetadataValue.url(run_url) if outcome.run_id else "",
        "model_version": str(outcome.promotion.version or ""),
        "headline_metric": metric,
        "reward_reliability": dg.MetadataValue.json(outcome.reliability),
        "promotion": outcome.promotion.verdict,
        "seconds": round(seconds, 1),
    }  # fmt: skip


def _report_checks(outcome: ReportOutcome, metric: str) -> Iterator[dg.AssetCheckResult]:
    figures, promotion = outcome.figures, outcome.promotion
    primary = on_metric(figures.dpo_minus_base, metric) if figures.dpo_minus_base else None
    null_primary = on_metric(figures.null_check, metric)
    if primary is not None:
        yield dg.AssetCheckResult(
            check_name="dpo_beats_base",
            passed=bool(primary["low"] > 0),
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"DPO minus base {metric}: {100 * primary['estimate']:+.1f} points "
                f"[{100 * primary['low']:+.1f}, {100 * primary['high']:+.1f}]; the base "
                f"generator resampled: {100 * null_primary['estimate']:+.1f} "
                f"[{100 * null_primary['low']:+.1f}, {100 * null_primary['high']:+.1f}]"
            ),
            metadata={
                "metric": metric,
                "difference": round(primary["estimate"], 4),
                "low": round(primary["low"], 4),
                "high": round(primary["high"], 4),
                "null_check": round(null_primary["estimate"], 4),
            },
        )
    else:
        yield dg.AssetCheckResult(check_name="dpo_beats_base", passed=False,
                                  severity=dg.AssetCheckSeverity.WARN,
                                  description="no DPO profiles to compare",
                                  metadata={"reason": "no DPO profiles"})  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="champion_promotion",
        passed=bool(promotion.decision.promote and promotion.version),
        severity=dg.AssetCheckSeverity.WARN,
        description=promotion.verdict,
        metadata={
            **{
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in promotion.decision.as_dict().items()
            },
            "version": str(promotion.version or ""),
            "champion_before": str(promotion.champion_before or ""),
        },  # fmt: skip
    )


@dataset_asset(
    key="evaluation_report",
    group_name="report",
    kinds={"python", "mlflow"},
    pool=None,
    deps=["heldout_profiles", "task_samples", "recommender_trial"],
    description=(
        "The evaluation on held-out test users (all targets): recent window only, + raw long "
        "window, the oracle ceiling, + RLMRec-like and PALR-like writer profiles, + base "
        "generator and + DPO generator profiles, with 95% bootstrap intervals over users, the "
        "paired DPO-minus-base difference, the null check (base against base, another seed), "
        "profile length, diversity and style mix, confusion matrices and plots. Written as "
        "Markdown and HTML under `LETTINGO_HOME/reports/{dataset}/`, logged to the DPO run in "
        "MLflow; the DPO model becomes the registry's champion only when it beats the "
        "current one."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "dpo_beats_base",
            asset="evaluation_report",
            description="On test users, the DPO generator's profiles beat the base generator's "
            "on the headline metric: the paired difference's lower 95% bound is above 0.",
        ),
        dg.AssetCheckSpec(
            "champion_promotion",
            asset="evaluation_report",
            description="The decision on the MLflow alias 'champion' by the paired-interval rule, "
            "with its figures and the rule: passes "
            "when the newly trained version is the champion.",
        ),
    ],
    retry_policy=MODEL_CALL_RETRY_POLICY,  # the recommender may be a remote endpoint
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
    recommender: str,
    base_generator: str,
    dpo_checkpoint: str,
    item_knowledge: str,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    preset = settings.load()
    dataset = context.partition_key
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        require_partition(con, REPORT_TABLES, dataset)
        inputs = load_report_inputs(con, dataset, preset)
    if not inputs.test_examples:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    models = ReportModels(recommender, base_generator, item_knowledge, dpo_checkpoint)
    outcome = build_report(preset, dataset, inputs, models, mlflow, log=context.log.info)
    metric = preset.report.headline_metric
    yield dg.MaterializeResult(
        metadata=_report_metadata(outcome, metric, time.perf_counter() - started)
    )
    yield from _report_checks(outcome, metric)


report_assets = [heldout_profiles, evaluation_report]
