"""The evaluation report as plain steps: read what it needs, compute every method's figures on
the test users, decide the champion promotion, write the report's folder and log it to the
DPO run. The `evaluation_report` asset calls `build_report` and turns its result into metadata
and check results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from lettingo_dagster.alignment.promotion import (
    PromotionDecision,
    Registry,
    apply_promotion,
    decide_promotion,
)
from lettingo_dagster.alignment.registration import REGISTRATION_FILE
from lettingo_dagster.evaluation.examples import TargetExample, load_target_examples
from lettingo_dagster.evaluation.recommender import (
    Recommender,
    load_recommender,
    offline_recommender,
)
from lettingo_dagster.evaluation.recommender_trial import decide
from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.paths import reports_dir
from lettingo_dagster.report import evaluation as ev
from lettingo_dagster.settings import DEFAULT_WRITER_STYLES, Preset
from lettingo_dagster.storage import table_exists
from lettingo_dagster.tracking import registered_model_name

REPORT_TABLES = ("task_samples", "items", "heldout_profiles", "reward_scores")


class ReportRegistry(Registry, Protocol):
    """What the report needs from the tracking resource (MlflowTracking)."""

    def version_tags(self, name: str, version: str) -> dict[str, str]: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None: ...

    def log_artifact(self, run_id: str, file: Path, artifact_path: str | None = None) -> None: ...


@dataclass(frozen=True)
class ReportInputs:
    """What the report reads from the warehouse."""

    test_examples: list[TargetExample]
    calibration: list[TargetExample]
    heldout: pd.DataFrame  # the heldout_profiles rows of the dataset
    train_rewards: pd.DataFrame  # user_id, target_rewards of training users' candidates
    recommender_trial: pd.DataFrame  # the recommender_trial rows (none: no LLM candidate)


def load_report_inputs(
    con: duckdb.DuckDBPyConnection, dataset: str, preset: Preset
) -> ReportInputs:
    return ReportInputs(
        test_examples=load_target_examples(con, dataset, preset.task, ("test",)),
        calibration=load_target_examples(con, dataset, preset.task, ("calibration",)),
        heldout=con.execute("SELECT * FROM heldout_profiles WHERE dataset = ?", [dataset]).df(),
        train_rewards=con.execute(
            "SELECT user_id, target_rewards FROM reward_scores WHERE dataset = ? AND split = 'train'",
            [dataset],
        ).df(),
        recommender_trial=_trial_rows(con, dataset),
    )


def _trial_rows(con: duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    """The recommender_trial rows; none before that optional asset ever ran (no table)."""
    if not table_exists(con, "recommender_trial"):
        return pd.DataFrame()
    return con.execute(
        "SELECT * EXCLUDE (dataset) FROM recommender_trial WHERE dataset = ?", [dataset]
    ).df()


def sanity_baselines(knowledge_dir: str, preset: Preset) -> dict[str, Recommender]:
    """Popularity and item-kNN on the recent window, through the same item knowledge."""
    from lettingo_dagster.evaluation.baselines import ItemKnnRecommender, PopularityRecommender
    from lettingo_dagster.evaluation.knowledge import ItemKnowledge

    knowledge = ItemKnowledge.load(knowledge_dir)
    return {
        ev.POPULARITY: PopularityRecommender(knowledge, preset.task),
        ev.ITEM_KNN: ItemKnnRecommender(knowledge, preset.task),
    }


def style_mix_styles(preset: Preset) -> tuple[str, ...]:
    """The writer styles a generated profile is matched against in the style mix: the default
    ones plus any other the preset's generator or writers use (genre_share on the planted
    world), so a generator that learned such a style is not counted as unassigned."""
    named = [
        *(preset.base_generator.styles or ()),
        *(s for e in preset.exploration.explorers if e.kind == "writers" for s in e.styles or ()),
    ]
    return tuple(dict.fromkeys([*DEFAULT_WRITER_STYLES, *named]))


def planted_truth(dataset: str) -> dict | None:
    """The planted tastes of a dataset generated with a known answer (planted-taste), if any."""
    from lettingo_dagster.data.planted import TRUTH_FILE, load_planted_truth
    from lettingo_dagster.registry import load_registry

    entry = load_registry().get(dataset)
    if entry is None:
        return None
    folder = entry.interactions.parent
    return load_planted_truth(folder) if (folder / TRUTH_FILE).is_file() else None


def champion_model_dir(registry: ReportRegistry, name: str) -> str | None:
    """The local model folder of the registry's current champion, when it still exists."""
    version = registry.alias_version(name)
    if version is None:
        return None
    folder = registry.version_tags(name, version).get("lettingo.model_dir")
    return folder if folder and Path(folder).is_dir() else None


def on_metric(differences: list[dict], metric: str) -> dict:
    """The paired difference on `metric`, or one of NaNs when there is none."""
    found = next((d for d in differences if d["metric"] == metric), None)
    nan = float("nan")
    return found or {"metric": metric, "estimate": nan, "low": nan, "high": nan}


def generated_profiles(frame: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """heldout_profiles rows as {method: {user: [profiles in sample order]}}."""
    generated: dict[str, dict[str, list[str]]] = {}
    for row in frame.sort_values(["method", "user_id", "sample_index"]).itertuples():
        generated.setdefault(row.method, {}).setdefault(row.user_id, []).append(row.profile)
    return generated


def read_registration(dpo_checkpoint: str) -> dict[str, Any]:
    """What `dpo_checkpoint` registered (run, version, links), or {} when nothing was."""
    path = Path(dpo_checkpoint).parent / REGISTRATION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# ---- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFigures:
    """Every method's figures on the test users."""

    task: str
    users: int
    targets: int
    outputs: Mapping[str, Any]  # method -> evaluation.MethodOutputs
    table: pd.DataFrame
    dpo_minus_base: list[dict]
    null_check: list[dict]
    ceiling: list[dict]
    generated: dict[str, dict[str, list[str]]]
    stats: pd.DataFrame
    claims: pd.DataFrame
    matrices: dict[str, pd.DataFrame]


@dataclass(frozen=True)
class ReportModels:
    """The folders the report reads: the frozen recommender, the base generator, the item
    knowledge and the DPO checkpoint."""

    recommender_dir: str
    base_generator_dir: str
    knowledge_dir: str
    dpo_checkpoint: str


def compute_figures(
    preset: Preset,
    dataset: str,
    inputs: ReportInputs,
    models: ReportModels,
    log: Callable[[str], None] = print,
) -> ReportFigures:
    task, knowledge_dir = preset.recommender.task, models.knowledge_dir
    started = time.perf_counter()
    test_examples = inputs.test_examples
    model = load_recommender(models.recommender_dir, preset, models.base_generator_dir)
    oracle = None
    if preset.recommender.kind == "offline":
        # The ceiling: the long window given to the recommender directly as features, fit on
        # the same calibration users as the frozen recommender (never on test users).
        oracle = offline_recommender(preset, knowledge_dir, oracle=True)
        oracle.fit(inputs.calibration, [{} for _ in inputs.calibration], (task,), holdout=False)
        log(f"ceiling recommender fit in {time.perf_counter() - started:.1f} s")
    generated = generated_profiles(inputs.heldout)
    outputs = ev.method_outputs(
        model, oracle, task, test_examples, generated, sanity_baselines(knowledge_dir, preset),
        log=log,
    )  # fmt: skip
    n_boot, seed = preset.report.n_boot, preset.report.seed
    started = time.perf_counter()
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
    # The forms the generator imitates: genre_affinity brief where it was pretrained on that.
    writers = ev.writer_profiles_by_user(
        test_examples,
        style_mix_styles(preset),
        genre_figures=preset.base_generator.genre_figures,
    )
    stats = ev.profile_statistics(generated, writers)
    claims = ev.claim_statistics(generated, test_examples, planted_truth(dataset))
    claims = claims.set_index("method").apply(pd.to_numeric, errors="coerce").reset_index()
    log(
        f"intervals ({n_boot} resamples), profile statistics and claims in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return ReportFigures(
        task=task,
        users=len({e.user_id for e in test_examples}),
        targets=len(test_examples),
        outputs=outputs,
        table=table,
        dpo_minus_base=dpo_minus_base,
        null_check=null_check,
        ceiling=ceiling,
        generated=generated,
        stats=stats,
        claims=claims,
        matrices=ev.confusion_matrices(outputs, task),
    )


# ---- promotion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionOutcome:
    """The champion decision for the newly registered DPO version (if any)."""

    decision: PromotionDecision
    name: str  # the registered model
    version: str | None
    registration: dict[str, Any]
    versus: list[dict]  # DPO minus the reference (the champion, else the base generator)
    champion_before: str | None
    verdict: str


def promote(
    registry: ReportRegistry,
    dataset: str,
    dpo_checkpoint: str,
    figures: ReportFigures,
    preset: Preset,
) -> PromotionOutcome:
    """One headline metric, paired intervals, the null check as a guard (see
    `alignment.promotion`); the decision goes to the registry when a version was registered."""
    outputs, task = figures.outputs, figures.task
    n_boot, seed = preset.report.n_boot, preset.report.seed
    metric = preset.report.headline_metric
    registration = read_registration(dpo_checkpoint)
    name = registered_model_name(dataset)
    version = registration.get("version")
    reference = ev.CHAMPION_GENERATOR if ev.CHAMPION_GENERATOR in outputs else ev.BASE_GENERATOR
    versus = ev.paired_differences(outputs, ev.DPO_GENERATOR, reference, task, n_boot, seed)
    champion_before = registry.alias_version(name)
    decision = decide_promotion(
        on_metric(versus, metric), on_metric(figures.null_check, metric), metric=metric,
        compared_with=f"champion v{champion_before}" if reference == ev.CHAMPION_GENERATOR
        else "base generator",
        null_margin=preset.report.null_margin,
    )  # fmt: skip
    if version:
        apply_promotion(registry, name, version, decision)
        registry.set_version_tag(name, version, "heldout_users", str(figures.users))
    verdict = (
        f"version {version} {'is now' if decision.promote else 'is not'} the champion; "
        f"{decision.reason}" if version else "no registered DPO version to promote"
    )  # fmt: skip
    return PromotionOutcome(decision, name, version, registration, versus, champion_before, verdict)


# ---- the report's folder -----------------------------------------------------------------------


def reward_reliability(train_rewards: pd.DataFrame, seed: int) -> dict[str, float]:
    """The rewards' split-half reliability over training users (NaNs without any)."""
    from lettingo_dagster.evaluation.rewards import reliability_interval

    nan = float("nan")
    return (
        reliability_interval(train_rewards.assign(profile_id=range(len(train_rewards))), seed=seed)
        if len(train_rewards) else {"estimate": nan, "low": nan, "high": nan}
    )  # fmt: skip


def write_report_files(
    folder: Path,
    *,
    dataset: str,
    preset: Preset,
    dpo_checkpoint: str,
    figures: ReportFigures,
    promotion: PromotionOutcome,
    plots: Mapping[str, str],
    reliability: Mapping[str, float],
    trial: pd.DataFrame,
) -> None:
    """report.md, report.html, results.csv and report.json into `folder` (beside the plots)."""
    from lettingo_dagster.report.render import (
        Report,
        render_html,
        render_markdown,
        results_markdown_table,
    )

    n_boot, metric = preset.report.n_boot, preset.report.headline_metric
    version, table = promotion.version, figures.table
    trial_decision = decide(trial) if len(trial) else None
    report = Report(
        dataset=dataset,
        task=figures.task,
        preset=preset.name,
        users=figures.users,
        targets=figures.targets,
        results=table,
        dpo_minus_base=figures.dpo_minus_base,
        null_check=figures.null_check,
        ceiling=figures.ceiling,
        profile_stats=figures.stats,
        claims=figures.claims,
        confusion=figures.matrices,
        recommender_trial=trial,
        plots=plots,
        generator={
            "policy": preset.dpo.policy,
            "dpo checkpoint": dpo_checkpoint,
            "registered model": f"{promotion.name} v{version}" if version else "not registered",
            "MLflow run": promotion.registration.get("run_url", ""),
            "samples per test user": preset.report.samples_per_user,
            "promotion": promotion.verdict,
            "headline metric": metric,
        },
        notes=[
            "Test users only; the recommender and the oracle were fit on calibration users and "
            "every choice of the preset was made on training and calibration users.",
            f"Intervals: {n_boot} bootstrap resamples of users (all targets of a user together).",
        ],
        plot_dir=folder,
    )
    (folder / "report.md").write_text(render_markdown(report))
    (folder / "report.html").write_text(render_html(report))
    table.to_csv(folder / "results.csv", index=False)
    (folder / "report.json").write_text(
        json.dumps(
            {
                "dataset": dataset, "task": figures.task, "preset": preset.name,
                "users": report.users, "targets": report.targets,
                "headline_metric": metric,
                "dpo_minus_base": figures.dpo_minus_base, "null_check": figures.null_check,
                "ceiling": figures.ceiling,
                "dpo_minus_reference": promotion.versus,
                "reward_reliability": {"metric": "spearman_brown_split_half", **reliability},
                "promotion": {
                    **promotion.decision.as_dict(), "version": version,
                    "verdict": promotion.verdict,
                },
                "recommender_trial": {
                    "rows": trial.to_dict(orient="records"),
                    "serves": trial_decision.serves, "verdict": trial_decision.verdict,
                } if trial_decision else None,
                "results_markdown": results_markdown_table(table),
                "profile_statistics": _records(figures.stats),
                "profile_claims": _records(figures.claims),
            },
            indent=1, default=float,
        )
    )  # fmt: skip


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts; a missing figure (NaN, no such claim) is null."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


REPORT_ARTIFACTS = ("report.md", "report.html", "results.csv")


@dataclass(frozen=True)
class ReportOutcome:
    """What `build_report` computed, decided and wrote."""

    figures: ReportFigures
    promotion: PromotionOutcome
    folder: Path
    plots: dict[str, str]  # plot name -> PNG file name inside `folder`
    reliability: dict[str, float]

    @property
    def run_id(self) -> str | None:
        """The MLflow run of the DPO training the report was logged to, if any."""
        return self.promotion.registration.get("run_id")


def build_report(
    preset: Preset,
    dataset: str,
    inputs: ReportInputs,
    models: ReportModels,
    registry: ReportRegistry,
    log: Callable[[str], None] = print,
) -> ReportOutcome:
    """Figures, promotion and the report's folder (`paths.reports_dir`, replaced whole), then the
    figures and files logged to the DPO run."""
    from lettingo_dagster.report.plots import write_plots

    figures = compute_figures(preset, dataset, inputs, models, log)
    dpo_checkpoint = models.dpo_checkpoint
    folder = reports_dir(dataset)
    with write_folder_atomically(folder) as scratch:
        started = time.perf_counter()
        plots = write_plots(
            scratch, table=figures.table, matrices=figures.matrices,
            highlights=[*figures.dpo_minus_base, *figures.null_check],
            generated=figures.generated, stats=figures.stats,
        )  # fmt: skip
        log(f"{len(plots)} plots in {time.perf_counter() - started:.1f} s")
        promotion = promote(registry, dataset, dpo_checkpoint, figures, preset)
        log(promotion.verdict)
        reliability = reward_reliability(inputs.train_rewards, preset.report.seed)
        write_report_files(
            scratch, dataset=dataset, preset=preset, dpo_checkpoint=dpo_checkpoint,
            figures=figures, promotion=promotion, plots=plots, reliability=reliability,
            trial=inputs.recommender_trial,
        )  # fmt: skip
    outcome = ReportOutcome(figures, promotion, folder, plots, reliability)
    if outcome.run_id:
        registry.log_metrics(
            outcome.run_id,
            ev.mlflow_metrics(
                figures.table, [*figures.dpo_minus_base, *figures.null_check, *figures.ceiling]
            ),
        )
        for file in (*REPORT_ARTIFACTS, *plots.values()):
            registry.log_artifact(outcome.run_id, folder / file, "evaluation_report")
    return outcome
