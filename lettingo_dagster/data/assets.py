"""Dagster assets of the data stage: a thin layer over the loaders and the task builder."""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_WAREHOUSE
from lettingo_dagster.data.ingest import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    InteractionsLoad,
    RawFileMissing,
    ensure_raw_files,
    interactions_source,
    label_distribution,
    load_interactions_table,
    load_items_table,
)
from lettingo_dagster.data.landing import file_sha256
from lettingo_dagster.data.rules import (
    interaction_rules,
    item_rules,
    task_sample_frames,
    task_sample_rules,
)
from lettingo_dagster.data.run_config import InteractionsConfig
from lettingo_dagster.data.samples import TASK_SAMPLE_COLUMNS, build_task_samples
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.registry import DatasetEntry, get_dataset
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.storage import (
    markdown_preview,
    replace_partition_from_frame,
    require_partition,
)


def _table_schema(columns: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type) for name, sql_type in columns.items()]
    )


def _failure(exc: Exception) -> dg.Failure:
    # Loader and file messages already name the file, the line and the problem.
    return dg.Failure(description=str(exc))


def _interactions_metadata(
    entry: DatasetEntry, load: InteractionsLoad, source: str, sha256: str, origin: str
) -> dict[str, Any]:
    from lettingo_dagster.data.formats import rating_scale

    scale = rating_scale(entry.format)
    first, last = (pd.Timestamp(t, unit="s") for t in (load.first_timestamp, load.last_timestamp))
    return {
        "dagster/row_count": load.rows,
        "dagster/column_schema": _table_schema(INTERACTION_COLUMNS),
        "users": load.users,
        "items": load.items,
        "rating_scale": f"{scale.min:g}..{scale.max:g} step {scale.step:g}",
        "observed_ratings": f"{load.min_rating:g}..{load.max_rating:g}",
        "time_range": f"{first} .. {last}",
        "rating_histogram": dg.MetadataValue.md(markdown_preview(load.histogram, rows=50)),
        "source_file": dg.MetadataValue.path(source),
        "source_sha256": sha256,
        "source_origin": origin,
        "format": entry.format,
        "ingest_seconds": round(load.seconds, 3),
        "rows_per_second": round(load.rows / max(load.seconds, 1e-9)),
        "preview": dg.MetadataValue.md(markdown_preview(load.preview)),
    }


@dataset_asset(
    key="interactions",
    group_name="data",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    deps=["interactions_file"],
    description=(
        "Every (user, item, rating, timestamp) of one dataset, loaded in the registry's format "
        "from the run config's source_file, else the newest file in the dataset's landing "
        "folder, else the registry's file. A malformed file fails the run with the file, line "
        "and problem, and leaves the previous table intact."
    ),
    check_specs=check_specs("interactions", interaction_rules(0, 0)),
)
def interactions(
    context: dg.AssetExecutionContext, config: InteractionsConfig, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from lettingo_dagster.data.formats import DataFormatError, rating_scale

    entry = get_dataset(context.partition_key)
    try:
        source, origin = interactions_source(entry, config.source_file)
        ensure_raw_files(entry, interactions=source, log=context.log.info)
    except RawFileMissing as exc:
        raise _failure(exc) from None
    sha256 = file_sha256(source)
    context.log.info(f"{entry.name}: reading {source} ({origin}; sha256 {sha256})")
    requested = context.run.tags.get("lettingo/sha256")
    if config.source_file and requested and requested != sha256:
        context.log.warning(
            f"{source} changed after the landing sensor saw it (sha256 {requested}); "
            "reading its current content, which gets a run of its own"
        )
    with warehouse.get_connection() as con:
        try:
            load = load_interactions_table(con, entry, source)
        except DataFormatError as exc:
            raise _failure(exc) from None
    context.log.info(f"{entry.name}: {load.rows:,} interactions loaded in {load.seconds:.1f} s")
    yield dg.MaterializeResult(
        metadata=_interactions_metadata(entry, load, str(source), sha256, origin)
    )
    scale = rating_scale(entry.format)
    yield from check_results(
        validate_rules({"interactions": load.frame}, interaction_rules(scale.min, scale.max))
    )


@dataset_asset(
    key="items",
    group_name="data",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    deps=["items_file"],
    description=(
        "Item text normalized across formats: title, year, genres or categories, description. "
        "Empty for a dataset whose registry entry has no items file."
    ),
    check_specs=check_specs("items", item_rules()),
)
def items(
    context: dg.AssetExecutionContext, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from lettingo_dagster.data.formats import DataFormatError

    entry = get_dataset(context.partition_key)
    try:
        ensure_raw_files(entry, log=context.log.info)
    except RawFileMissing as exc:
        raise _failure(exc) from None
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        try:
            load = load_items_table(con, entry)
        except DataFormatError as exc:
            raise _failure(exc) from None
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": load.rows,
            "dagster/column_schema": _table_schema(ITEM_COLUMNS),
            "with_year": load.with_year,
            "with_genres": load.with_genres,
            "with_description": load.with_description,
            "top_genres": dg.MetadataValue.md(markdown_preview(load.top_genres, rows=20)),
            "source": dg.MetadataValue.path(str(entry.items)) if entry.items else "none",
            "ingest_seconds": round(time.perf_counter() - started, 3),
            "preview": dg.MetadataValue.md(markdown_preview(load.preview)),
        }
    )
    yield from check_results(validate_rules({"items": load.frame}, item_rules()))


@dataset_asset(
    key="task_samples",
    group_name="data",
    kinds={"duckdb", "python"},
    pool=POOL_WAREHOUSE,
    deps=["interactions", "items"],
    description=(
        "One row per (eligible user, target). Targets follow task.targets: next (the user's last "
        "T interactions, each with its K recent interactions) or heldout (T interactions drawn "
        "at random, the K latest remaining ones as the recent window); the long window of L "
        "older interactions (what the profile generator reads) never holds a target or a recent "
        "item; the 3-class label; N seeded negatives for ranking; a train / calibration / test "
        "split by a seeded hash of the user id."
    ),
    check_specs=check_specs("task_samples", task_sample_rules()),
)
def task_samples(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    dataset = context.partition_key
    task = settings.load().task
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        require_partition(con, ("interactions", "items"), dataset)
        samples, stats = build_task_samples(con, dataset, task)
        rows = replace_partition_from_frame(
            con, "task_samples", dataset, samples, TASK_SAMPLE_COLUMNS
        )
        frames = task_sample_frames(con, dataset)
    seconds = time.perf_counter() - started
    context.log.info(
        f"{dataset}: {stats.users_kept} users ({stats.users_eligible} eligible of "
        f"{stats.users_total}), {rows} targets in {seconds:.1f} s"
    )
    metadata: dict[str, Any] = {
        "dagster/row_count": rows,
        "dagster/column_schema": _table_schema(TASK_SAMPLE_COLUMNS),
        "users_total": stats.users_total,
        "users_eligible": stats.users_eligible,
        "users_kept": stats.users_kept,
        "min_interactions": task.min_interactions,
        "duplicate_events_dropped": stats.duplicate_events_dropped,
        "candidate_items": stats.candidate_items,
        "K_recent_window": task.recent_window,
        "L_long_window": task.long_window,
        "target_protocol": task.targets,
        "T_targets_per_user": str(task.targets_per_user),
        "N_negatives": task.negatives_per_target,
        "labels_per_split": dg.MetadataValue.md(
            markdown_preview(label_distribution(samples), rows=3)
        ),
        "build_seconds": round(seconds, 3),
        "preview": dg.MetadataValue.md(markdown_preview(samples)),
    }
    yield dg.MaterializeResult(metadata=metadata)
    yield from check_results(validate_rules(frames, task_sample_rules(task)))


data_assets = [interactions, items, task_samples]
