"""Loading a dataset's raw files into the warehouse: which file to read, fetching a fetchable
dataset on first use, and replacing the dataset's rows of `interactions` and `items` with what
the file holds (a malformed file leaves the previous rows intact). The data assets call these
and turn the summaries into metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from lettingo_dagster.constants import SPLITS
from lettingo_dagster.data.fetch import FETCHABLE, fetch_dataset
from lettingo_dagster.data.landing import newest_landed_file
from lettingo_dagster.data.rules import interaction_frame, item_frame
from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.paths import data_cache_dir, landing_dir
from lettingo_dagster.registry import DatasetEntry
from lettingo_dagster.storage import create_table_if_missing, replace_partition

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


class RawFileMissing(FileNotFoundError):
    """A raw file a dataset needs is not there (and cannot be fetched)."""


def interactions_source(entry: DatasetEntry, source_file: str | None) -> tuple[Path, str]:
    """The interactions file a run reads and where that choice came from: `source_file` (the
    run config's), else the newest file in the dataset's landing folder, else the registry's."""
    if source_file:
        path = Path(source_file).expanduser()
        if not path.is_file():
            raise RawFileMissing(
                f"dataset {entry.name!r}: source_file not found: {path} "
                "(set in the run config; the landing sensor sets it to a landed file, which "
                "may have been moved or deleted since)"
            )
        return path, "run config"
    landed = newest_landed_file(entry.name)
    if landed is not None:
        return landed, f"landing folder {landing_dir(entry.name)}"
    return entry.interactions, f"registry {entry.source}"


def ensure_raw_files(
    entry: DatasetEntry,
    interactions: Path | None = None,
    log: Callable[[str], None] = print,
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
        fetch_dataset(entry.name, data_cache_dir(), log=log)
        return
    raise RawFileMissing(
        f"dataset {entry.name!r} (registered in {entry.source}): "
        f"file not found: {', '.join(str(p) for p in missing)}"
    )


@dataclass(frozen=True)
class InteractionsLoad:
    """What one load of a dataset's interactions wrote."""

    rows: int
    seconds: float  # reading the file and replacing the dataset's rows
    users: int
    items: int
    min_rating: float
    max_rating: float
    first_timestamp: int
    last_timestamp: int
    histogram: pd.DataFrame  # rating, n
    preview: pd.DataFrame
    frame: pd.DataFrame  # what the interaction checks read


def load_interactions_table(
    con: duckdb.DuckDBPyConnection, entry: DatasetEntry, source: Path
) -> InteractionsLoad:
    """Replace the dataset's rows of `interactions` with `source` (in the entry's format); raises
    `formats.DataFormatError` on a malformed file, leaving the previous rows."""
    from lettingo_dagster.data.formats import load_interactions

    started = time.perf_counter()
    staging = "staging_interactions"
    load_interactions(con, entry.format, source, table=staging, dataset=entry.name)
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
    preview = con.execute("SELECT * FROM interactions WHERE dataset = ? LIMIT 5", [entry.name]).df()
    return InteractionsLoad(
        rows, seconds, int(stats[0]), int(stats[1]), stats[2], stats[3], stats[4], stats[5],
        histogram, preview, interaction_frame(con, entry.name),
    )  # fmt: skip


@dataclass(frozen=True)
class ItemsLoad:
    """What one load of a dataset's items wrote."""

    rows: int
    with_year: int
    with_genres: int
    with_description: int
    top_genres: pd.DataFrame  # genre, items
    preview: pd.DataFrame
    frame: pd.DataFrame  # what the item checks read


def load_items_table(con: duckdb.DuckDBPyConnection, entry: DatasetEntry) -> ItemsLoad:
    """Replace the dataset's rows of `items` with its items file (none when the entry has no
    items file); raises `formats.DataFormatError` on a malformed file, leaving the previous rows."""
    from lettingo_dagster.data.formats import load_items

    staging = "staging_items"
    if entry.items is None:
        con.execute(f"DROP TABLE IF EXISTS {staging}")
        create_table_if_missing(con, staging, ITEM_COLUMNS)
    else:
        load_items(con, entry.format, entry.items, table=staging, dataset=entry.name)
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
    return ItemsLoad(
        rows, int(stats[0]), int(stats[1]), int(stats[2]), genres, preview,
        item_frame(con, entry.name),
    )  # fmt: skip


def label_distribution(samples: pd.DataFrame) -> pd.DataFrame:
    """Targets per split and label, with the split's targets and users."""
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
