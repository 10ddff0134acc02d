"""Dagster assets of the report group: held-out profiles of test users and the evaluation
report, with the champion promotion in the MLflow registry."""

import base64
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.evaluation.assets import load_recommender
from lettingo_dagster.evaluation.examples import load_target_examples
from lettingo_dagster.exploration.explorers import model_candidates, template_name
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.paths import lettingo_home, model_cache_path
from lettingo_dagster.report import evaluation as ev
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import Preset
from lettingo_dagster.storage import markdown_preview, replace_partition_from_frame
from lettingo_dagster.tracking import MlflowTracking, registered_model_name

HELDOUT_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "method": "VARCHAR",  # base_generator, base_generator_null, dpo_generator
    "sample_index": "INTEGER",
    "seed": "INTEGER",
    "profile": "VARCHAR",
    "completion_tokens": "INTEGER",
    "model_fingerprint": "VARCHAR",
}


def reports_dir(dataset: str) -> Path:
    return lettingo_home() / "reports" / dataset


def promotion_metric(preset: Preset) -> str:
    if preset.report.promotion_metric:
        return preset.report.promotion_metric
    return "accuracy" if preset.recommender.task == "sentiment" else "hit_rate@1"


def _policy_explorer(preset: Preset):
    return next(e for e in preset.exploration.explorers if e.name == preset.dpo.policy)


@dataset_asset(
    key="heldout_profiles",
    group_name="report",
    kinds={"duckdb", "pytorch"},
    pool="duckdb",
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
    base_generator: str,
    dpo_checkpoint: str,
) -> dg.MaterializeResult:
    from lettingo_dagster.alignment.assets import policy_folder
    from lettingo_dagster.exploration.explorers import build_model

    preset = settings.load()
    dataset = context.partition_key
    config = preset.report
    with warehouse.get_connection() as con:
        histories = load_long_windows(con, dataset, preset.task, splits=("test",))
    if not histories:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    explorer = _policy_explorer(preset)
    cache = ModelCallCache(model_cache_path())
    arms = (
        (ev.BASE_GENERATOR, policy_folder(preset, explorer.name, base_generator), config.seed),
        (ev.BASE_GENERATOR_NULL, policy_folder(preset, explorer.name, base_generator), config.null_seed),
        (ev.DPO_GENERATOR, dpo_checkpoint, config.seed),
    )  # fmt: skip
    frames, summary = [], []
    for method, folder, seed in arms:
        started = time.perf_counter()
        arm = explorer.model_copy(
            update={
                "kind": "local",
                "path": folder,
                "adapter": None,
                "name": method,
                "samples_per_user": config.samples_per_user,
                "decoding": explorer.decoding.model_copy(update={"seed": seed}),
            }
        )
        model = build_model(arm, None, preset.exploration.torch_threads)

        def progress(update: ChunkProgress, name: str = method) -> None:
            context.log.info(f"{name}: {update.done}/{update.total} test users, "
                             f"cache hits {update.stats.hits}")  # fmt: skip

        rows, stats = model_candidates(
            arm, model, histories, template_name(explorer, preset.base_generator), cache,
            chunk_size=preset.exploration.chunk_size, on_chunk=progress,
        )  # fmt: skip
        frame = pd.DataFrame([asdict(r) for r in rows])
        frames.append(
            pd.DataFrame(
                {
                    "dataset": dataset,
                    "user_id": frame["user_id"],
                    "method": method,
                    "sample_index": frame["sample_index"],
                    "seed": seed,
                    "profile": frame["profile"],
                    "completion_tokens": frame["completion_tokens"],
                    "model_fingerprint": frame["model_fingerprint"],
                }
            )
        )
        summary.append(
            {
                "method": method,
                "seed": seed,
                "profiles": len(frame),
                "mean_words": round(frame["profile"].str.split().str.len().mean(), 1),
                "empty": int((frame["profile"].str.strip() == "").sum()),
                "new_model_calls": stats.misses,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    table = pd.concat(frames, ignore_index=True)
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(
            con, "heldout_profiles", dataset, table, HELDOUT_COLUMNS
        )
    examples = table.groupby("method", sort=False).head(2)[["user_id", "method", "profile"]]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "test_users": len(histories),
            "per_method": dg.MetadataValue.md(markdown_preview(pd.DataFrame(summary), rows=10)),
            "examples": dg.MetadataValue.md(markdown_preview(examples, rows=10, width=300)),
        }
    )


def _generated(frame: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    generated: dict[str, dict[str, list[str]]] = {}
    for row in frame.sort_values(["method", "user_id", "sample_index"]).itertuples():
        generated.setdefault(row.method, {}).setdefault(row.user_id, []).append(row.profile)
    return generated


def _image_markdown(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"


def _metric_value(table: pd.DataFrame, method: str, metric: str) -> float:
    row = table[(table["method"] == method) & (table["metric"] == metric)]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def decide_promotion(
    candidate: float, champion: float | None, base: float
) -> tuple[bool, str, float]:
    """Promote when the candidate's held-out figure beats the current champion's, or the base
    generator's when there is no champion yet. Returns (promote, against what, its figure)."""
    if champion is None:
        return candidate > base, "base generator", base
    return candidate > champion, "current champion", champion


def promote_version(
    mlflow: MlflowTracking,
    name: str,
    version: str | None,
    candidate: float,
    base: float,
    tag: str,
) -> tuple[bool, str, float, str | None]:
    """Record the candidate's held-out figure on its registry version (tag `tag`) and move the
    alias `champion` to it when it beats the current champion's recorded figure, or the base
    generator's when there is no champion. Returns (promoted, compared with, reference figure,
    champion before)."""
    if not version:
        return False, "nothing (no registered version)", float("nan"), None
    champion_version = mlflow.alias_version(name)
    mlflow.set_version_tag(name, version, tag, f"{candidate:.6f}")
    if champion_version == version:
        return True, "itself (already champion)", candidate, champion_version
    champion_figure = None
    if champion_version is not None:
        recorded = mlflow.version_tags(name, champion_version).get(tag)
        champion_figure = float(recorded) if recorded is not None else None
    promote, against, reference = decide_promotion(candidate, champion_figure, base)
    if promote:
        mlflow.set_alias(name, version)
    return promote, against, reference, champion_version


def _registration(dpo_checkpoint: str) -> dict[str, Any]:
    path = Path(dpo_checkpoint).parent / "registration.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataset_asset(
    key="evaluation_report",
    group_name="report",
    kinds={"python", "mlflow"},
    pool="gpu",
    deps=["heldout_profiles", "task_samples"],
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
            description="On test users, the DPO generator's profiles score higher than the base "
            "generator's on the promotion metric (paired bootstrap over users).",
        ),
        dg.AssetCheckSpec(
            "champion_promotion",
            asset="evaluation_report",
            description="The decision on the MLflow alias 'champion' with its figures: passes "
            "when the newly trained version is the champion.",
        ),
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    mlflow: MlflowTracking,
    recommender: str,
    base_generator: str,
    dpo_checkpoint: str,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from lettingo_dagster.evaluation.offline import OfflineConfig, OfflineRecommender
    from lettingo_dagster.report.plots import write_plots
    from lettingo_dagster.report.render import (
        Report,
        render_html,
        render_markdown,
        results_markdown_table,
    )

    preset = settings.load()
    dataset = context.partition_key
    task = preset.recommender.task
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        test_examples = load_target_examples(con, dataset, preset.task, ("test",))
        calibration = load_target_examples(con, dataset, preset.task, ("calibration",))
        heldout = con.execute("SELECT * FROM heldout_profiles WHERE dataset = ?", [dataset]).df()
    if not test_examples:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    model = load_recommender(recommender, preset, base_generator)
    oracle = None
    if preset.recommender.kind == "offline":
        # The ceiling: the long window given to the recommender directly as features, fit on
        # the same calibration users as the frozen recommender (never on test users).
        oracle = OfflineRecommender(
            OfflineConfig(
                oracle_long_window=True,
                use_item_stats=preset.recommender.use_item_stats,
                seed=preset.recommender.seed,
            )
        )
        oracle.fit(calibration, [{} for _ in calibration], (task,), holdout=False)
    generated = _generated(heldout)
    outputs = ev.method_outputs(model, oracle, task, test_examples, generated)
    n_boot, seed = preset.report.n_boot, preset.report.seed
    table = ev.results_table(outputs, task, n_boot=n_boot, seed=seed)
    dpo_minus_base = ev.paired_differences(
        outputs, ev.DPO_GENERATOR, ev.BASE_GENERATOR, task, n_boot, seed
    )
    null_check = ev.paired_differences(
        outputs, ev.BASE_GENERATOR_NULL, ev.BASE_GENERATOR, task, n_boot, seed
    )
    ceiling = (
        ev.paired_differences(outputs, ev.ORACLE_CEILING, ev.RECENT_ONLY, task, n_boot, seed)
        if ev.ORACLE_CEILING in outputs else []
    )  # fmt: skip
    writers = ev.writer_profiles_by_user(test_examples)
    stats = ev.profile_statistics(generated, writers)
    matrices = ev.confusion_matrices(outputs, task)

    folder = reports_dir(dataset)
    scratch = folder.with_name(f".{dataset}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    plots = write_plots(
        scratch, table=table, matrices=matrices, highlights=[*dpo_minus_base, *null_check],
        generated=generated, stats=stats,
    )  # fmt: skip

    # Promotion: the new version becomes champion only if it beats the current one.
    metric = promotion_metric(preset)
    registration = _registration(dpo_checkpoint)
    name = registered_model_name(dataset)
    version = registration.get("version")
    candidate = _metric_value(table, ev.DPO_GENERATOR, metric)
    base = _metric_value(table, ev.BASE_GENERATOR, metric)
    tag = f"heldout_{ev.mlflow_metric_name(metric)}"
    promote, against, reference, champion_version = promote_version(
        mlflow, name, version, candidate, base, tag
    )
    if version:
        users = str(len({e.user_id for e in test_examples}))
        mlflow.set_version_tag(name, version, "heldout_users", users)
    decision = (
        f"version {version} {'is' if promote else 'is not'} the champion: {metric} "
        f"{candidate:.4f} against {against} {reference:.4f}"
        if version else "no registered DPO version to promote"
    )  # fmt: skip
    context.log.info(decision)

    report = Report(
        dataset=dataset,
        task=task,
        preset=preset.name,
        users=len({e.user_id for e in test_examples}),
        targets=len(test_examples),
        results=table,
        dpo_minus_base=dpo_minus_base,
        null_check=null_check,
        ceiling=ceiling,
        profile_stats=stats,
        confusion=matrices,
        plots=plots,
        generator={
            "policy": preset.dpo.policy,
            "dpo checkpoint": dpo_checkpoint,
            "registered model": f"{name} v{version}" if version else "not registered",
            "MLflow run": registration.get("run_url", ""),
            "samples per test user": preset.report.samples_per_user,
            "promotion": decision,
        },
        notes=[
            "Test users only; the recommender and the oracle were fit on calibration users and "
            "every choice of the preset was made on training and calibration users.",
            f"Intervals: {n_boot} bootstrap resamples of users (all targets of a user together).",
        ],
        plot_dir=scratch,
    )
    (scratch / "report.md").write_text(render_markdown(report))
    (scratch / "report.html").write_text(render_html(report))
    table.to_csv(scratch / "results.csv", index=False)
    (scratch / "report.json").write_text(
        json.dumps(
            {
                "dataset": dataset, "task": task, "preset": preset.name,
                "users": report.users, "targets": report.targets,
                "dpo_minus_base": dpo_minus_base, "null_check": null_check, "ceiling": ceiling,
                "promotion": {"decision": decision, "promoted": promote, "metric": metric,
                              "version": version},
                "results_markdown": results_markdown_table(table),
            },
            indent=1, default=float,
        )
    )  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)

    run_id = registration.get("run_id")
    if run_id:
        mlflow.log_metrics(
            run_id, ev.mlflow_metrics(table, [*dpo_minus_base, *null_check, *ceiling])
        )
        for file in ("report.md", "report.html", "results.csv", *plots.values()):
            mlflow.log_artifact(run_id, folder / file, "evaluation_report")

    headline = {d["metric"]: d for d in dpo_minus_base}
    primary = headline.get(metric, dpo_minus_base[0] if dpo_minus_base else None)
    null_primary = next((d for d in null_check if d["metric"] == metric), None)
    yield dg.MaterializeResult(
        metadata={
            "task": task,
            "test_users": report.users,
            "test_targets": report.targets,
            "results": dg.MetadataValue.md(results_markdown_table(table)),
            "dpo_minus_base": dg.MetadataValue.md(
                markdown_preview(pd.DataFrame(dpo_minus_base).round(4), rows=20)
            ),
            "null_check": dg.MetadataValue.md(
                markdown_preview(pd.DataFrame(null_check).round(4), rows=20)
            ),
            "profile_statistics": dg.MetadataValue.md(markdown_preview(stats.round(3), rows=10)),
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
            "mlflow_run": dg.MetadataValue.url(registration["run_url"]) if run_id else "",
            "model_version": str(version or ""),
            "promotion": decision,
            "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
    )
    if primary is not None:
        null_text = (
            f"; the base generator resampled: {100 * null_primary['estimate']:+.1f}"
            if null_primary
            else ""
        )
        yield dg.AssetCheckResult(
            check_name="dpo_beats_base",
            passed=bool(primary["estimate"] > 0),
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"DPO minus base {primary['metric']}: {100 * primary['estimate']:+.1f} points "
                f"[{100 * primary['low']:+.1f}, {100 * primary['high']:+.1f}]{null_text}"
            ),
            metadata={
                "metric": primary["metric"],
                "difference": round(primary["estimate"], 4),
                "low": round(primary["low"], 4),
                "high": round(primary["high"], 4),
                "excludes_zero": bool(primary["excludes_zero"]),
                "null_check": round(null_primary["estimate"], 4) if null_primary else float("nan"),
            },
        )
    else:
        yield dg.AssetCheckResult(check_name="dpo_beats_base", passed=False,
                                  severity=dg.AssetCheckSeverity.WARN,
                                  description="no DPO profiles to compare",
                                  metadata={"reason": "no DPO profiles"})  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="champion_promotion",
        passed=bool(promote and version),
        severity=dg.AssetCheckSeverity.WARN,
        description=decision,
        metadata={
            "metric": metric,
            "candidate": round(candidate, 4),
            "compared_with": against,
            "reference": round(reference, 4),
            "version": str(version or ""),
            "champion_before": str(champion_version or ""),
        },
    )


report_assets = [heldout_profiles, evaluation_report]
