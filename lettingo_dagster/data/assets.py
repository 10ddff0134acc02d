"""Dagster assets of the data stage: a thin layer over the loaders and the task builder."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.constants import POOL_WAREHOUSE, SPLITS
from lettingo_dagster.data.fetch import FETCHABLE, fetch_dataset
from lettingo_dagster.data.landing import file_sha256, newest_landed_file
from lettingo_dagster.data.rules import (
    interaction_frame,
    interaction_rules,
    item_frame,
    item_rules,
    task_sample_frames,
    task_sample_rules,
)
from lettingo_dagster.data.samples import LABELS, TASK_SAMPLE_COLUMNS, build_task_samples
from lettingo_dagster.dataset_assets import dataset_asset
from lettingo_dagster.paths import data_cache_dir, landing_dir
from lettingo_dagster.quality import validate_rules
from lettingo_dagster.registry import DatasetEntry, get_dataset
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.storage import (
    create_table_if_missing,
    markdown_preview,
    replace_partition,
    replace_partition_from_frame,
    require_partition,
)

INTERACTION_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "item_id": "VARCHAR",
    "rating": "DOUBLE",
    "timestamp": "BIGINT",
}
ITEM_COLUMNS = {
    "dataset": "VARCHAR",
    "item_id": "VARCHAR",
    "title": "VARCHAR",
    "year": "INTEGER",
    "genres": "VARCHAR",
    "description": "VARCHAR",
}


def _table_schema(columns: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type) for name, sql_type in columns.items()]
    )


def _raw_files_ready(
    context: dg.AssetExecutionContext, entry: DatasetEntry, interactions: Path | None = None
) -> None:
    """Fetch a fetchable dataset on first use; otherwise say which file is missing.

    `interactions` is the file this run reads when it is not the registry's (a landed file);
    only the registry's own files can be fetched.
    """
    interactions = interactions if interactions is not None else entry.interactions
    missing = [p for p in (interactions, entry.items) if p is not None and not p.is_file()]
    if not missing:
        return
    if entry.name in FETCHABLE and all(p in (entry.interactions, entry.items) for p in missing):
        fetch_dataset(entry.name, data_cache_dir(), log=context.log.info)
        return
    raise dg.Failure(
        description=f"dataset {entry.name!r} (registered in {entry.source}): "
        f"file not found: {', '.join(str(p) for p in missing)}"
    )


class InteractionsConfig(dg.Config):
    """Per-run options of the `interactions` asset (the launchpad shows them)."""

    source_file: str | None = Field(
        default=None,
        description=(
            "Read interactions from this file instead of the registry's; the landing sensor "
            "sets it. The file has the registry entry's format; items still come from the "
            "registry. When unset, the newest file in the dataset's landing folder "
            "(`LETTINGO_HOME/landing/{dataset}`) is read if there is one, else the registry's."
        ),
    )


def _interactions_source(entry: DatasetEntry, config: InteractionsConfig) -> tuple[Path, str]:
    """The file this run reads and where that choice came from."""
    if config.source_file:
        path = Path(config.source_file).expanduser()
        if not path.is_file():
            raise dg.Failure(
                description=f"dataset {entry.name!r}: source_file not found: {path} "
                "(set in the run config; the landing sensor sets it to a landed file, which "
                "may have been moved or deleted since)"
            )
        return path, "run config"
    landed = newest_landed_file(entry.name)
    if landed is not None:
        return landed, f"landing folder {landing_dir(entry.name)}"
    return entry.interactions, f"registry {entry.source}"


def _load_failure(exc: Exception) -> dg.Failure:
    # Loader messages already name the file, the line and the problem.
    return dg.Failure(description=str(exc))


@dataset_asset(
    key="interactions",
    group_name="data",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
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
    from lettingo_dagster.data.formats import DataFormatError, load_interactions, rating_scale

    entry = get_dataset(context.partition_key)
    source, origin = _interactions_source(entry, config)
    _raw_files_ready(context, entry, interactions=source)
    sha256 = file_sha256(source)
    context.log.info(f"{entry.name}: reading {source} ({origin}; sha256 {sha256})")
    requested = context.run.tags.get("lettingo/sha256")
    if config.source_file and requested and requested != sha256:
        context.log.warning(
            f"{source} changed after the landing sensor saw it (sha256 {requested}); "
            "reading its current content, which gets a run of its own"
        )
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        staging = "staging_interactions"
        try:
            load_interactions(con, entry.format, source, table=staging, dataset=entry.name)
        except DataFormatError as exc:
            raise _load_failure(exc) from None
        try:
            rows = replace_partition(con, "interactions", entry.name, staging, INTERACTION_COLUMNS)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {staging}")
        seconds = time.perf_counter() - started
        stats = con.execute(
            """
            SELECT count(DISTINCT user_id), count(DISTINCT item_id), min(rating), max(rating),
                   min("timestamp"), max("timestamp")
            FROM interactions WHERE dataset = ?
            """,
            [entry.name],
        ).fetchone()
        histogram = con.execute(
            "SELECT rating, count(*) AS n FROM interactions WHERE dataset = ? GROUP BY 1 ORDER BY 1",
            [entry.name],
        ).df()
        preview = con.execute(
            "SELECT * FROM interactions WHERE dataset = ? LIMIT 5", [entry.name]
        ).df()
        frame = interaction_frame(con, entry.name)
    scale = rating_scale(entry.format)
    context.log.info(f"{entry.name}: {rows:,} interactions loaded in {seconds:.1f} s")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": _table_schema(INTERACTION_COLUMNS),
            "users": int(stats[0]),
            "items": int(stats[1]),
            "rating_scale": f"{scale.min:g}..{scale.max:g} step {scale.step:g}",
            "observed_ratings": f"{stats[2]:g}..{stats[3]:g}",
            "time_range": f"{pd.Timestamp(stats[4], unit='s')} .. {pd.Timestamp(stats[5], unit='s')}",
            "rating_histogram": dg.MetadataValue.md(markdown_preview(histogram, rows=50)),
            "source_file": dg.MetadataValue.path(str(source)),
            "source_sha256": sha256,
            "source_origin": origin,
            "format": entry.format,
            "ingest_seconds": round(seconds, 3),
            "rows_per_second": round(rows / max(seconds, 1e-9)),
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
        }
    )
    yield from check_results(
        validate_rules({"interactions": frame}, interaction_rules(scale.min, scale.max))
    )


@dataset_asset(
    key="items",
    group_name="data",
    kinds={"duckdb"},
    pool=POOL_WAREHOUSE,
    description=(
        "Item text normalized across formats: title, year, genres or categories, description. "
        "Empty for a dataset whose registry entry has no items file."
    ),
    check_specs=check_specs("items", item_rules()),
)
def items(
    context: dg.AssetExecutionContext, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from lettingo_dagster.data.formats import DataFormatError, load_items

    entry = get_dataset(context.partition_key)
    _raw_files_ready(context, entry)
    started = time.perf_counter()
    with warehouse.get_connection() as con:
        staging = "staging_items"
        if entry.items is None:
            con.execute(f"DROP TABLE IF EXISTS {staging}")
            create_table_if_missing(con, staging, ITEM_COLUMNS)
        else:
            try:
                load_items(con, entry.format, entry.items, table=staging, dataset=entry.name)
            except DataFormatError as exc:
                raise _load_failure(exc) from None
        try:
            rows = replace_partition(con, "items", entry.name, staging, ITEM_COLUMNS)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {staging}")
        stats = con.execute(
            """
            SELECT count(*) FILTER (WHERE year IS NOT NULL),
                   count(*) FILTER (WHERE genres <> ''),
                   count(*) FILTER (WHERE description IS NOT NULL)
            FROM items WHERE dataset = ?
            """,
            [entry.name],
        ).fetchone()
        genres = con.execute(
            """
            SELECT genre, count(*) AS items FROM
                (SELECT unnest(string_split(genres, '|')) AS genre FROM items
                 WHERE dataset = ? AND genres <> '')
            GROUP BY genre ORDER BY items DESC, genre LIMIT 20
            """,
            [entry.name],
        ).df()
        preview = con.execute("SELECT * FROM items WHERE dataset = ? LIMIT 5", [entry.name]).df()
        frame = item_frame(con, entry.name)
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": _table_schema(ITEM_COLUMNS),
            "with_year": int(stats[0]),
            "with_genres": int(stats[1]),
            "with_description": int(stats[2]),
            "top_genres": dg.MetadataValue.md(markdown_preview(genres, rows=20)),
            "source": dg.MetadataValue.path(str(entry.items)) if entry.items else "none",
            "ingest_seconds": round(time.perf_counter() - started, 3),
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
        }
    )
    yield from check_results(validate_rules({"items": frame}, item_rules()))


def _label_distribution(samples: pd.DataFrame) -> pd.DataFrame:
    table = (
        samples.groupby(["split", "label"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=list(SPLITS), columns=list(LABELS), fill_value=0)
    )
    table["targets"] = table.sum(axis=1)
    table["users"] = (
        samples.groupby("split")["user_id"].nunique().reindex(list(SPLITS), fill_value=0)
    )
    return table.reset_index()


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
            markdown_preview(_label_distribution(samples), rows=3)
        ),
        "build_seconds": round(seconds, 3),
        "preview": dg.MetadataValue.md(markdown_preview(samples)),
    }
    yield dg.MaterializeResult(metadata=metadata)
    yield from check_results(validate_rules(frames, task_sample_rules(task)))


data_assets = [interactions, items, task_samples]
