"""The public entry points: a format's name picks its family's plans, and the engine runs them."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lettingo_dagster.data.formats.amazon import AMAZON_FORMATS
from lettingo_dagster.data.formats.engine import (
    DataFormatError,
    Format,
    RatingScale,
    ValidationSummary,
    check_file,
    load_plan,
)
from lettingo_dagster.data.formats.movielens import MOVIELENS_FORMATS
from lettingo_dagster.data.formats.yelp import YELP_FORMATS
from lettingo_dagster.registry import KNOWN_FORMATS

# The names, in the order messages list them, come from the dataset registry, which must load
# without the loaders (and DuckDB); each family's table says how it reads the formats it names.
FORMATS: tuple[str, ...] = KNOWN_FORMATS
_SPECS: dict[str, Format] = {**MOVIELENS_FORMATS, **AMAZON_FORMATS, **YELP_FORMATS}


def _unknown_format(fmt: str) -> str:
    return f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}"


def _spec(fmt: str, path: str | Path) -> Format:
    """The format's spec; an unknown name is a problem of the file the caller wanted read."""
    if fmt not in FORMATS:
        raise DataFormatError(path, _unknown_format(fmt))
    return _SPECS[fmt]


def rating_scale(fmt: str) -> RatingScale:
    """The rating scale a format's files are validated against."""
    if fmt not in FORMATS:
        raise ValueError(_unknown_format(fmt))
    return _SPECS[fmt].scale


def load_interactions(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str | Path, *, table: str, dataset: str
) -> int:
    """Create or replace ``table`` (dataset, user_id, item_id, rating, timestamp) from a raw file.

    ``timestamp`` is unix seconds. Every record is validated; the first bad one raises
    DataFormatError naming the file, its line and the problem, and ``table`` is left untouched.
    Returns the number of rows. Call it outside an explicit transaction: a file DuckDB cannot
    read aborts the connection's current transaction.
    """
    spec = _spec(fmt, path)
    path = check_file(path)
    plan = spec.interactions(con, path, spec.scale)
    return load_plan(con, path, plan, table=table, dataset=dataset, dedupe_items=False)


def load_items(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str | Path, *, table: str, dataset: str
) -> int:
    """Create or replace ``table`` (dataset, item_id, title, year, genres, description).

    ``year`` is NULL when unknown, ``genres`` the genre or category names joined by '|' ('' when
    none), ``description`` NULL when none. A duplicate item id is an error in the MovieLens
    formats; in Amazon and Yelp metadata (which do repeat records) the first one is kept.
    """
    spec = _spec(fmt, path)
    path = check_file(path)
    plan = spec.items(con, path)
    return load_plan(con, path, plan, table=table, dataset=dataset, dedupe_items=True)


def validate_files(
    fmt: str, interactions: str | Path, items: str | Path | None = None
) -> ValidationSummary:
    """Load the files into a throwaway in-memory DuckDB and summarize them.

    Raises DataFormatError for an unknown format, a missing file or any malformed record.
    """
    spec = _spec(fmt, interactions)
    with duckdb.connect(":memory:") as con:
        rows = load_interactions(con, fmt, interactions, table="interactions", dataset=fmt)
        users, n_items, rating_min, rating_max = con.execute(
            "SELECT count(DISTINCT user_id), count(DISTINCT item_id), min(rating), max(rating) "
            "FROM interactions"
        ).fetchone()
        item_rows = None
        if items is not None:
            item_rows = load_items(con, fmt, items, table="items", dataset=fmt)
    return ValidationSummary(
        format=fmt,
        interactions_path=Path(interactions),
        items_path=Path(items) if items is not None else None,
        rows=rows,
        users=users,
        items=n_items,
        rating_min=rating_min,
        rating_max=rating_max,
        scale=spec.scale,
        item_rows=item_rows,
    )
