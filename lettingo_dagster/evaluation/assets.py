"""Dagster assets of stage 2: the frozen recommender, the oracle study, and reward scores."""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from lettingo_dagster.constants import GROUP_EVALUATION, POOL_MODEL, POOL_WAREHOUSE
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.evaluation.examples import load_target_examples
from lettingo_dagster.evaluation.frozen import (
    calibration_candidates,
    figures_table,
    fit_offline,
    write_llm_spec,
)
from lettingo_dagster.evaluation.recommender import offline_recommender
from lettingo_dagster.evaluation.scoring import load_scoring_inputs, score_profiles
from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.models.cache import ModelCallCache
from lettingo_dagster.paths import model_cache_path, models_dir
from lettingo_dagster.resources import MODEL_CALL_RETRY_POLICY, SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)


@dataset_asset(
    key="item_knowledge",
    group_name=GROUP_EVALUATION,
    kinds={"scikitlearn", "numpy"},
    pool=None,
    deps=["interactions", "items", "task_samples"],
    description=(
        "What the recommender knows about items, as an LLM knows films: item factors (truncated "
        "SVD of who rated what), popularity and mean ratings, learned from the training split's "
        "users only. Saved as arrays under a versioned folder (the value is its path)."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "no_evaluation_users",
            asset="item_knowledge",
            blocking=True,
            description="No calibration or test user's interaction entered the knowledge.",
        ),
        dg.AssetCheckSpec(
            "catalog_coverage",
            asset="item_knowledge",
            description="At least half of the catalog's items have factors.",
        ),
    ],  # fmt: skip
)
def item_knowledge(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> Iterator[dg.Output[str] | dg.AssetCheckResult]:
    from lettingo_dagster.evaluation.knowledge import fit_item_knowledge, training_interactions

    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, ("interactions", "task_samples", "items"), dataset)
        interactions, leaked = training_interactions(con, dataset, preset.task.split)
        catalog = con.execute(
            "SELECT item_id, title, genres FROM items WHERE dataset = ?", [dataset]
        ).df()
    knowledge = fit_item_knowledge(interactions, catalog, preset.recommender.knowledge)
    folder = models_dir() / "item_knowledge" / dataset / knowledge.fingerprint
    if not folder.is_dir():
        with write_folder_atomically(folder) as scratch:
            knowledge.save(scratch)
    summary = knowledge.summary
    yield dg.Output(
        str(folder),
        metadata={
            "model_path": dg.MetadataValue.path(str(folder)),
            "fingerprint": knowledge.fingerprint,
            **{key: value for key, value in summary.items()},
        },
    )
    yield dg.AssetCheckResult(
        check_name="no_evaluation_users", passed=leaked == 0,
        metadata={"calibration_or_test_users_in_knowledge": leaked},
    )  # fmt: skip
    coverage = float(summary["catalog_coverage"])
    yield dg.AssetCheckResult(
        check_name="catalog_coverage", passed=coverage >= 0.5,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{100 * coverage:.1f}% of {summary['catalog_items']} catalog items have factors",
        metadata={"coverage": coverage},
    )  # fmt: skip


@dataset_asset(
    key="recommender",
    group_name=GROUP_EVALUATION,
    kinds={"scikitlearn", "pytorch"},
    pool=None,
    deps=["task_samples", "sampled_profiles"],
    description=(
        "The frozen recommender that scores profiles (stage 2). offline: all-MiniLM-L6-v2 "
        "sentence features of the recent window, the profile and the target, plus item "
        "knowledge: the recent window's items and the items, genres and averages a profile names, "
        "related to each candidate through item factors. Its head is fit once on calibration "
        "users over the real candidate distribution (every explorer's sampled profiles and no "
        "profile), then saved and never refit; llm: the paper's LLM recommender. The value is "
        "the saved folder's path."
    ),
)
def recommender(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    item_knowledge: str,
) -> dg.Output[str]:
    preset = settings.load()
    config = preset.recommender
    dataset = context.partition_key
    if config.kind == "llm":
        folder = write_llm_spec(preset, dataset)
        return dg.Output(str(folder), metadata={"kind": "llm", "task": config.task})

    with warehouse.get_connection() as con:
        require_partition(con, ("task_samples", "items", "sampled_profiles"), dataset)
        examples = load_target_examples(con, dataset, preset.task, ("calibration",))
        candidates = calibration_candidates(con, dataset)
    if not examples:
        raise dg.Failure(description=f"{dataset}: no calibration users in task_samples")
    fitted = fit_offline(preset, dataset, examples, candidates, item_knowledge)
    context.log.info(f"recommender {fitted.fingerprint} fit in {fitted.seconds:.0f} s")
    figures = fitted.figures
    return dg.Output(
        str(fitted.folder),
        metadata={
            "model_path": dg.MetadataValue.path(str(fitted.folder)),
            "kind": "offline",
            "task": config.task,
            "fingerprint": fitted.fingerprint,
            "calibration_users": int(figures.get("fit_users", 0)),
            "calibration_figures": dg.MetadataValue.md(
                markdown_preview(figures_table(figures), rows=30)
            ),
            "fit_seconds": round(figures.get("fit_seconds", 0.0), 1),
        },
    )


@dataset_asset(
    key="recommender_trial",
    group_name=GROUP_EVALUATION,
    kinds={"duckdb", "pytorch"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "May an LLM serve as the recommender? When the preset names a candidate "
        "(recommender.trial), its sentiment accuracy on calibration users' targets, with no "
        "profile and with a writer profile, against the majority label and the offline "
        "recommender fit on training users; it may serve only when its best accuracy beats the "
        "majority label and is at least the offline recommender's. No candidate: no rows."
    ),
)
def recommender_trial(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    item_knowledge: str,
) -> dg.MaterializeResult:
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.evaluation.recommender_trial import (
        TRIAL_COLUMNS,
        decide,
        first_users,
        run_trial,
    )  # fmt: skip
    from lettingo_dagster.models.factory import build_model

    preset = settings.load()
    dataset, trial = context.partition_key, preset.recommender.trial
    table = pd.DataFrame(columns=[c for c in TRIAL_COLUMNS if c != "dataset"])
    with warehouse.get_connection() as con:
        require_partition(con, ("task_samples", "items"), dataset)
        train, calibration = (
            load_target_examples(con, dataset, preset.task, (split,)) if trial else []
            for split in ("train", "calibration")
        )
    if trial is not None:
        model = build_model(trial.model, None, preset.compute.torch_threads)
        table = run_trial(
            LLMRecommender(model, trial.prompt_template),
            offline_recommender(preset, item_knowledge),
            first_users(train, trial.train_users), first_users(calibration, trial.users),
            trial.profile_style, log=context.log.info,
        )  # fmt: skip
    shown = markdown_preview(table.round(3), rows=10, width=80)
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(
            con, "recommender_trial", dataset, table.assign(dataset=dataset), TRIAL_COLUMNS
        )
    verdict = decide(table).verdict if count else "no LLM candidate in the preset"
    context.log.info(verdict)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "decision": verdict,
            "trial": dg.MetadataValue.md(shown),
        }
    )


@dataset_asset(
    key="oracle_study",
    group_name=GROUP_EVALUATION,
    kinds={"scikitlearn"},
    pool=None,
    deps=["task_samples", "interactions"],
    description=(
        "How much could a profile add at all? On calibration users (cross-fitted), for each "
        "task and target protocol of the preset's oracle section: the recommender with no "
        "profile, the raw long window as text, the long window given directly as features (the "
        "information ceiling) and each writer style, with paired bootstrap intervals against "
        "no profile; also on the targets whose windows hold no item rated within an hour of "
        "them (the session guard). Picks the task and protocol whose ceiling has the largest "
        "lower bound. Run before any generator is trained."
    ),
)
def oracle_study(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    item_knowledge: str,
) -> dg.MaterializeResult:
    from lettingo_dagster.evaluation.oracle import oracle_grid

    preset = settings.load()
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        require_partition(con, ("task_samples", "items"), context.partition_key)
        study = oracle_grid(
            con, context.partition_key, preset,
            lambda oracle: offline_recommender(preset, item_knowledge, oracle=oracle),
            log=context.log.info,
        )  # fmt: skip
    metadata: dict[str, Any] = {
        "calibration_users": study.users,
        "seconds": round(time.perf_counter() - started, 1),
        "choice": study.choice_text,
        "preset_matches_choice": study.preset_matches,
        "ceilings": dg.MetadataValue.md(markdown_preview(study.ceilings.round(4), rows=40)),
    }
    for (protocol, task, subset), group in study.table.groupby(["protocol", "task", "subset"]):
        metadata[f"oracle_{task}_{protocol}_{subset}"] = dg.MetadataValue.md(
            markdown_preview(oracle_pivot(group), rows=40, width=60)
        )
    context.log.info(study.choice_text)
    return dg.MaterializeResult(metadata=metadata)


def oracle_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """One row per condition; each metric as `value (difference vs recent_only [95% interval])`."""
    cells = table.assign(
        cell=[
            f"{r.value:.3f} ({r.diff_vs_recent_only:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}])"
            for r in table.itertuples()
        ]
    )
    order = list(dict.fromkeys(table["condition"]))
    return (
        cells.pivot(index="condition", columns="metric", values="cell").reindex(order).reset_index()
    )


@dataset_asset(
    key="reward_scores",
    group_name=GROUP_EVALUATION,
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    deps=["sampled_profiles", "task_samples"],
    description=(
        "Stage 2 of LettinGo: every candidate profile scored by the frozen recommender on all of "
        "its user's targets. Per profile: the per-target rewards (continuous: the truth's "
        "log-score minus the same user's no-profile score on that target; or binary: right or "
        "wrong), their mean (the reward pairs compare), the binary reward (fraction of targets "
        "right) and the graded reward. Metadata states the reward's split-half reliability and "
        "each explorer's mean reward. Cached and resumable like generations."
    ),
    retry_policy=MODEL_CALL_RETRY_POLICY,  # the recommender may be a remote endpoint
)
def reward_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    recommender: str,
    base_generator: str,
) -> dg.MaterializeResult:
    from lettingo_dagster.evaluation.rewards import REWARD_COLUMNS, explorer_rewards

    preset = settings.load()
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, ("sampled_profiles", "task_samples", "items"), dataset)
        profiles, examples = load_scoring_inputs(con, dataset, preset)
    run = score_profiles(
        preset, profiles, examples, recommender_dir=recommender,
        base_generator_dir=base_generator, cache=ModelCallCache(model_cache_path()),
        log=context.log.info,
    )  # fmt: skip
    rewards, reliability = run.rewards, run.reliability
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(con, "reward_scores", dataset, rewards, REWARD_COLUMNS)
    context.log.info(f"reward reliability (Spearman-Brown, train users): {reliability}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "task": preset.recommender.task,
            "reward": preset.recommender.reward,
            "recommender": run.recommender,
            "reward_per_explorer": dg.MetadataValue.md(
                markdown_preview(explorer_rewards(rewards).round(4).reset_index(), rows=50)
            ),
            "no_profile_accuracy": round(run.no_profile_accuracy, 4),
            "mean_binary_reward": round(float(rewards["binary_reward"].mean()), 4),
            # How much of the differences between one user's profiles is signal rather than
            # target noise (Spearman-Brown corrected split half, 95% interval over users).
            "reward_reliability": dg.MetadataValue.json(
                {k: round(v, 4) for k, v in reliability.items()}
            ),
            "reward_reliability_estimate": round(reliability["estimate"], 4),
            "scored_pairs": run.stats.hits + run.stats.misses,
            "cache_hit_rate": round(run.stats.hit_rate, 3),
            "seconds": round(time.perf_counter() - run.started, 1),
        }
    )


evaluation_assets = [item_knowledge, recommender, recommender_trial, oracle_study, reward_scores]
