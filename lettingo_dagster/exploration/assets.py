"""Dagster assets of stage 1: the base generator and the sampled candidate profiles."""

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd

from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_MODEL
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.exploration.explorers import (
    CALL_FAILURE_COLUMNS,
    FailedCallRow,
    call_failure_frame,
    failed_call_rows,
    failure_budget_exceeded,
    model_candidates,
    remote_call_summary,
    template_name,
    writer_candidates,
)
from lettingo_dagster.exploration.history import UserHistory, load_long_windows
from lettingo_dagster.exploration.profile_quality import profile_frames, profile_rules
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.exploration.writers import genre_affinity
from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.models.factory import build_model
from lettingo_dagster.paths import model_cache_path, models_dir
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.resources import MODEL_CALL_RETRY_POLICY, SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)

PROFILE_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "profile_id": "VARCHAR",  # stable id of one candidate: hash of who wrote what for whom
    "split": "VARCHAR",
    "explorer": "VARCHAR",
    "explorer_kind": "VARCHAR",
    "style": "VARCHAR",
    "sample_index": "INTEGER",
    "profile": "VARCHAR",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "generation_seconds": "DOUBLE",
    "finish_reason": "VARCHAR",
    "model_fingerprint": "VARCHAR",
}


def _training_histories(histories: list[UserHistory], limit: int | None) -> list[UserHistory]:
    ordered = sorted(histories, key=lambda h: hashlib.sha256(h.user_id.encode()).hexdigest())
    return ordered[:limit] if limit else ordered


def _loss_table(curve: list[tuple[int, float]], rows: int = 12) -> pd.DataFrame:
    stride = max(1, len(curve) // rows)
    picked = curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else [])
    return pd.DataFrame(picked, columns=["step", "loss"]).round(4)


@dataset_asset(
    key="base_generator",
    group_name="exploration",
    kinds={"pytorch", "transformers"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "The project's own small Llama-architecture causal LM with a tokenizer trained on the "
        "dataset's text, pretrained on the deterministic writers' profiles of training users. "
        "Saved with save_pretrained to a versioned folder (the asset's value is its path); "
        "sampling it gives diverse candidate profiles, and it is the policy DPO aligns."
    ),
)
def base_generator(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> dg.Output[str]:
    from lettingo_dagster.exploration.base_generator import (
        pretrain,
        sample_examples,
        training_examples,
    )

    preset = settings.load()
    config = preset.base_generator
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=("train",))
    if not histories:
        raise dg.Failure(description=f"{dataset}: no training users in task_samples")
    train = _training_histories(histories, config.max_train_users)
    template = load_template(config.prompt_template)
    examples = training_examples(train, template)
    version = hashlib.sha256(
        json.dumps(
            {
                "settings": config.model_dump(),
                "examples": [(p.digest(), text) for p, text, _ in examples],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    out_dir = models_dir() / "base_generator" / dataset / version
    report_file = out_dir / "pretrain_report.json"
    if report_file.is_file():
        context.log.info(f"base generator {version} already trained at {out_dir}; reusing it")
        report = json.loads(report_file.read_text())
    else:
        context.log.info(f"pretraining base generator {version} on {len(examples)} writer profiles")
        # A killed run never leaves a half-saved model under the version's name.
        with write_folder_atomically(out_dir) as scratch:
            result = pretrain(
                examples,
                config,
                scratch,
                torch_threads=preset.compute.torch_threads,
                log=context.log.info,
            )
            report = asdict(result)
            (scratch / "pretrain_report.json").write_text(json.dumps(report, indent=1))
    shown = sample_examples(
        out_dir, train[:3], template, 3, preset.exploration.explorers[0].decoding
    )
    writer_reference = [genre_affinity(h) for h in train[:3]]
    samples_md = "\n\n".join(
        f"**user {h.user_id}**\n\n- sample: {sample}\n- writer (genre_affinity): {reference}"
        for h, (_, sample), reference in zip(train[:3], shown, writer_reference, strict=True)
    )
    return dg.Output(
        str(out_dir),
        metadata={
            "model_path": dg.MetadataValue.path(str(out_dir)),
            "version": version,
            "parameters": report["parameters"],
            "training_users": len(train),
            "examples": report["examples"],
            "train_tokens": report["train_tokens"],
            "epochs": report["epochs"],
            "train_seconds": round(report["seconds"], 1),
            "final_loss": round(report["final_loss"], 4),
            "loss_curve": dg.MetadataValue.md(
                markdown_preview(_loss_table(report["loss_curve"]), rows=20)
            ),
            "samples": dg.MetadataValue.md(samples_md),
        },
    )


@dataset_asset(
    key="sampled_profiles",
    group_name="exploration",
    kinds={"duckdb", "pytorch"},
    pool=POOL_MODEL,
    deps=["task_samples"],
    description=(
        "Stage 1 of LettinGo: candidate profiles of every train and calibration user from every "
        "explorer of the preset (the base generator sampled at temperature 1.0, the "
        "deterministic writers, any local or OpenAI-compatible model). Model calls go through a "
        "persistent cache: an unchanged rerun makes no call and a killed run resumes. An "
        "endpoint's calls that still fail after their retries are listed in the "
        "model_call_failures table; past the explorer's max_failed_call_share the step fails "
        "and is retried."
    ),
    check_specs=check_specs("sampled_profiles", profile_rules()),
    retry_policy=MODEL_CALL_RETRY_POLICY,
)
def sampled_profiles(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    warehouse: Warehouse,
    base_generator: str,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    preset = settings.load()
    exploration = preset.exploration
    dataset = context.partition_key
    with warehouse.get_connection() as con:
        require_partition(con, "task_samples", dataset)
        histories = load_long_windows(con, dataset, preset.task, splits=tuple(exploration.splits))
    cache = ModelCallCache(model_cache_path())
    started = time.perf_counter()
    rows: list[Any] = []
    per_explorer: list[dict[str, Any]] = []
    failures: list[FailedCallRow] = []
    over_budget: str | None = None
    for explorer in exploration.explorers:
        explorer_started = time.perf_counter()
        calls: dict[str, Any] = {}
        if explorer.kind == "writers":
            produced = writer_candidates(explorer, histories)
            hit_rate, tokens_per_second, model_calls = None, None, 0
        else:
            model = build_model(explorer, base_generator, preset.compute.torch_threads)

            def progress(update: ChunkProgress, name: str = explorer.name) -> None:
                context.log.info(
                    f"{name}: {update.done}/{update.total} users, "
                    f"{update.stats.tokens_per_second:.0f} tokens/s, cache hits {update.stats.hits}"
                )

            produced, stats = model_candidates(
                explorer, model, histories, template_name(explorer, preset.base_generator), cache,
                chunk_size=exploration.chunk_size, on_chunk=progress,
            )  # fmt: skip
            hit_rate, tokens_per_second, model_calls = (
                stats.hit_rate,
                stats.tokens_per_second,
                stats.misses,
            )
            calls = remote_call_summary(stats)
            failures.extend(failed_call_rows(explorer, histories, stats))
            over_budget = failure_budget_exceeded(explorer, len(histories), stats)
        rows.extend(produced)
        per_explorer.append(
            {
                "explorer": explorer.name,
                "kind": explorer.kind,
                "profiles": len(produced),
                "per_user": round(len(produced) / max(len(histories), 1), 2),
                "mean_words": round(
                    sum(len(r.profile.split()) for r in produced) / max(len(produced), 1), 1
                ),
                "new_model_calls": model_calls,
                "cache_hit_rate": None if hit_rate is None else round(hit_rate, 3),
                "tokens_per_second": None
                if tokens_per_second is None
                else round(tokens_per_second, 1),
                **calls,
                "seconds": round(time.perf_counter() - explorer_started, 2),
            }
        )
        if over_budget:
            break
    # Written even when the step fails, so the failed calls can be looked at before a retry.
    failure_frame = call_failure_frame(dataset, context.run.run_id, failures)
    with warehouse.get_connection() as con:
        replace_partition_from_frame(
            con, "model_call_failures", dataset, failure_frame, CALL_FAILURE_COLUMNS
        )
    explorer_table = pd.DataFrame(per_explorer)
    if over_budget:
        raise dg.Failure(
            description=over_budget,
            metadata={
                "failed_model_calls": len(failures),
                "explorers": dg.MetadataValue.md(markdown_preview(explorer_table, rows=50)),
            },
        )
    generated = pd.DataFrame([asdict(row) for row in rows])
    # An empty sample (EOS first, or an endpoint's empty answer) can teach nothing: it is not
    # stored, and the checks below judge the share of them.
    empty = generated["profile"].str.strip() == ""
    if empty.any():
        context.log.warning(f"dropping {int(empty.sum())} empty samples of {len(generated)}")
    frame = generated[~empty].reset_index(drop=True)
    frame.insert(0, "dataset", dataset)
    frame["profile_id"] = [
        hashlib.sha256(
            json.dumps(
                [dataset, r.user_id, r.explorer, r.style, r.sample_index, r.profile]
            ).encode()
        ).hexdigest()[:16]
        for r in frame.itertuples()
    ]
    frame = frame[list(PROFILE_COLUMNS)]
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(
            con, "sampled_profiles", dataset, frame, PROFILE_COLUMNS
        )
    seconds = time.perf_counter() - started
    model_rows = frame[frame["explorer_kind"] != "writers"]
    examples = frame.groupby("explorer", sort=False).head(2)[
        ["user_id", "explorer", "style", "profile"]
    ]
    total_calls = int(explorer_table["new_model_calls"].sum())
    model_profiles = len(model_rows)
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "users": len(histories),
            "profiles_per_user": round(count / max(len(histories), 1), 2),
            "explorers": dg.MetadataValue.md(markdown_preview(explorer_table, rows=50)),
            "cache_hit_rate": round(1 - total_calls / model_profiles, 3) if model_profiles else 1.0,
            "new_model_calls": total_calls,
            "failed_model_calls": len(failures),
            "model_call_failures": dg.MetadataValue.md(
                markdown_preview(
                    failure_frame[["user_id", "explorer", "error_class", "attempts"]], rows=20
                )
            ),
            "rate_limit_wait_s": round(
                sum(r.get("rate_limit_wait_s") or 0.0 for r in per_explorer), 2
            ),
            "empty_samples_dropped": int(empty.sum()),
            "seconds": round(seconds, 2),
            "examples": dg.MetadataValue.md(markdown_preview(examples, rows=20, width=400)),
        }
    )
    yield from check_results(validate_rules(profile_frames(generated), profile_rules()))


exploration_assets = [base_generator, sampled_profiles]
