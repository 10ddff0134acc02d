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

from lettingo_dagster.alignment.policy import policy_explorer, policy_folder
from lettingo_dagster.alignment.promotion import apply_promotion, decide_promotion
from lettingo_dagster.constants import POOL_MODEL
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.evaluation.examples import load_target_examples
from lettingo_dagster.evaluation.recommender import (
    Recommender,
    load_recommender,
    offline_recommender,
)
from lettingo_dagster.exploration.explorers import model_candidates, template_name
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.paths import model_cache_path, reports_dir
from lettingo_dagster.report import evaluation as ev
from lettingo_dagster.resources import MODEL_CALL_RETRY_POLICY, SettingsResource, Warehouse
from lettingo_dagster.settings import Preset
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)
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
    from lettingo_dagster.models.factory import build_model

    preset = settings.load()
    dataset = context.partition_key
    config = preset.report
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=("test",))
    if not histories:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    explorer = policy_explorer(preset)
    cache = ModelCallCache(model_cache_path())
    arms = [
        (ev.BASE_GENERATOR, policy_folder(preset, explorer.name, base_generator), config.seed),
        (ev.BASE_GENERATOR_NULL, policy_folder(preset, explorer.name, base_generator), config.null_seed),
        (ev.DPO_GENERATOR, dpo_checkpoint, config.seed),
    ]  # fmt: skip
    champion_dir = champion_model_dir(mlflow, registered_model_name(dataset))
    if champion_dir and Path(champion_dir).resolve() != Path(dpo_checkpoint).resolve():
        # The candidate must beat the champion itself: same users, decoding and seed.
        arms.append((ev.CHAMPION_GENERATOR, champion_dir, config.seed))
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
        model = build_model(arm, None, preset.compute.torch_threads)

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


def sanity_baselines(knowledge_dir: str, preset: Preset) -> dict[str, Recommender]:
    """Popularity and item-kNN on the recent window, through the same item knowledge."""
    from lettingo_dagster.evaluation.baselines import ItemKnnRecommender, PopularityRecommender
    from lettingo_dagster.evaluation.knowledge import ItemKnowledge

    knowledge = ItemKnowledge.load(knowledge_dir)
    return {
        ev.POPULARITY: PopularityRecommender(knowledge, preset.task),
        ev.ITEM_KNN: ItemKnnRecommender(knowledge, preset.task),
    }


def planted_truth(dataset: str) -> dict | None:
    """The planted tastes of a dataset generated with a known answer (planted-taste), if any."""
    from lettingo_dagster.data.planted import TRUTH_FILE, load_planted_truth
    from lettingo_dagster.registry import load_registry

    entry = load_registry().get(dataset)
    if entry is None:
        return None
    folder = entry.interactions.parent
    return load_planted_truth(folder) if (folder / TRUTH_FILE).is_file() else None


def champion_model_dir(mlflow: MlflowTracking, name: str) -> str | None:
    """The local model folder of the registry's current champion, when it still exists."""
    version = mlflow.alias_version(name)
    if version is None:
        return None
    folder = mlflow.version_tags(name, version).get("lettingo.model_dir")
    return folder if folder and Path(folder).is_dir() else None


def _on_metric(differences: list[dict], metric: str) -> dict:
    found = next((d for d in differences if d["metric"] == metric), None)
    nan = float("nan")
    return found or {"metric": metric, "estimate": nan, "low": nan, "high": nan}


def _generated(frame: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    generated: dict[str, dict[str, list[str]]] = {}
    for row in frame.sort_values(["method", "user_id", "sample_index"]).itertuples():
        generated.setdefault(row.method, {}).setdefault(row.user_id, []).append(row.profile)
    return generated


def _image_markdown(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"


def _registration(dpo_checkpoint: str) -> dict[str, Any]:
    path = Path(dpo_checkpoint).parent / "registration.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataset_asset(
    key="evaluation_report",
    group_name="report",
    kinds={"python", "mlflow"},
    pool=None,
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
    from lettingo_dagster.evaluation.rewards import reliability_interval
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
        tables = ("task_samples", "items", "heldout_profiles", "reward_scores")
        require_partition(con, tables, dataset)
        test_examples = load_target_examples(con, dataset, preset.task, ("test",))
        calibration = load_target_examples(con, dataset, preset.task, ("calibration",))
        heldout = con.execute("SELECT * FROM heldout_profiles WHERE dataset = ?", [dataset]).df()
        train_rewards = con.execute(
            "SELECT user_id, target_rewards FROM reward_scores WHERE dataset = ? AND split = 'train'",
            [dataset],
        ).df()
    if not test_examples:
        raise dg.Failure(description=f"{dataset}: no test users in task_samples")
    model = load_recommender(recommender, preset, base_generator)
    oracle = None
    if preset.recommender.kind == "offline":
        # The ceiling: the long window given to the recommender directly as features, fit on
        # the same calibration users as the frozen recommender (never on test users).
        oracle = offline_recommender(preset, item_knowledge, oracle=True)
        oracle.fit(calibration, [{} for _ in calibration], (task,), holdout=False)
    generated = _generated(heldout)
    outputs = ev.method_outputs(
        model, oracle, task, test_examples, generated, sanity_baselines(item_knowledge, preset)
    )
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
    claims = ev.claim_statistics(generated, test_examples, planted_truth(dataset))
    claims = claims.set_index("method").apply(pd.to_numeric, errors="coerce").reset_index()
    matrices = ev.confusion_matrices(outputs, task)

    folder = reports_dir(dataset)
    scratch = folder.with_name(f".{dataset}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    plots = write_plots(
        scratch, table=table, matrices=matrices, highlights=[*dpo_minus_base, *null_check],
        generated=generated, stats=stats,
    )  # fmt: skip

    # Promotion: one headline metric, paired intervals, the null check as a guard.
    metric = preset.report.headline_metric
    registration = _registration(dpo_checkpoint)
    name = registered_model_name(dataset)
    version = registration.get("version")
    reference = ev.CHAMPION_GENERATOR if ev.CHAMPION_GENERATOR in outputs else ev.BASE_GENERATOR
    versus = ev.paired_differences(outputs, ev.DPO_GENERATOR, reference, task, n_boot, seed)
    champion_before = mlflow.alias_version(name)
    decision = decide_promotion(
        _on_metric(versus, metric), _on_metric(null_check, metric), metric=metric,
        compared_with=f"champion v{champion_before}" if reference == ev.CHAMPION_GENERATOR
        else "base generator",
        null_margin=preset.report.null_margin,
    )  # fmt: skip
    users = len({e.user_id for e in test_examples})
    if version:
        apply_promotion(mlflow, name, version, decision)
        mlflow.set_version_tag(name, version, "heldout_users", str(users))
    verdict = (
        f"version {version} {'is now' if decision.promote else 'is not'} the champion; "
        f"{decision.reason}" if version else "no registered DPO version to promote"
    )  # fmt: skip
    context.log.info(verdict)
    nan = float("nan")
    reliability = (
        reliability_interval(train_rewards.assign(profile_id=range(len(train_rewards))), seed=seed)
        if len(train_rewards) else {"estimate": nan, "low": nan, "high": nan}
    )  # fmt: skip

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
        claims=claims,
        confusion=matrices,
        plots=plots,
        generator={
            "policy": preset.dpo.policy,
            "dpo checkpoint": dpo_checkpoint,
            "registered model": f"{name} v{version}" if version else "not registered",
            "MLflow run": registration.get("run_url", ""),
            "samples per test user": preset.report.samples_per_user,
            "promotion": verdict,
            "headline metric": metric,
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
                "headline_metric": metric,
                "dpo_minus_base": dpo_minus_base, "null_check": null_check, "ceiling": ceiling,
                "dpo_minus_reference": versus,
                "reward_reliability": {"metric": "spearman_brown_split_half", **reliability},
                "promotion": {**decision.as_dict(), "version": version, "verdict": verdict},
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

    primary = _on_metric(dpo_minus_base, metric) if dpo_minus_base else None
    null_primary = _on_metric(null_check, metric)
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
            "profile_claims": dg.MetadataValue.md(markdown_preview(claims.round(3), rows=12)),
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
            "headline_metric": metric,
            "reward_reliability": dg.MetadataValue.json(reliability),
            "promotion": verdict,
            "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
    )
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
        passed=bool(decision.promote and version),
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict,
        metadata={
            **{
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in decision.as_dict().items()
            },
            "version": str(version or ""),
            "champion_before": str(champion_before or ""),
        },  # fmt: skip
    )


report_assets = [heldout_profiles, evaluation_report]
