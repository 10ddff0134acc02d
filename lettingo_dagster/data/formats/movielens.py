"""The MovieLens formats: RecBole atomic files, MovieLens-100K and MovieLens-1M/10M.

- ``movielens-atomic``: RecBole's ``.inter`` / ``.item`` files, tab-separated with a
  ``name:type`` header; columns are found by name, in any order.
- ``movielens-100k``: GroupLens ``u.data`` (tab-separated) and ``u.item`` ('|'-separated, 19
  genre flags, latin-1).
- ``movielens-dat``: GroupLens ``ratings.dat`` / ``movies.dat`` ('::'-separated) of ML-1M and
  ML-10M.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import duckdb

from lettingo_dagster.data.formats.engine import (
    BINARY_CHECK,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    DataFormatError,
    Format,
    Plan,
    RatingScale,
    first_line,
    id_checks,
    not_a_number,
    rating_checks,
    shown,
    sql_str,
    time_checks,
)

# u.item genre flags, in file order.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Interactions


def _delimited_interactions(
    *,
    sep: str,
    sep_name: str,
    n_fields: int,
    index: dict[str, int],
    scale: RatingScale,
    skip: int = 0,
    expected: str = "",
) -> Plan:
    """Plan for a delimited ratings file; ``index`` maps user/item/rating/time to 1-based fields."""
    values = ", ".join(
        [f"trim(f[{index[name]}]) AS {name}_raw" for name in ("user", "item", "rating", "time")]
        + [
            f"try_cast(trim(f[{index['rating']}]) AS DOUBLE) AS rating_value",
            f"try_cast(trim(f[{index['time']}]) AS DOUBLE) AS time_value",
            "len(f) AS n_fields",
        ]
    )
    return Plan(
        parsed=f"string_split(line, {sql_str(sep)}) AS f",
        values=values,
        columns=INTERACTION_COLUMNS,
        checks=[
            BINARY_CHECK,
            (
                f"n_fields <> {n_fields}",
                sql_str(f"expected {n_fields} {sep_name}-separated fields{expected}, found ")
                + " || n_fields",
            ),
            *id_checks("user_raw", "empty user id", "empty user id"),
            *id_checks("item_raw", "empty item id", "empty item id"),
            *rating_checks("rating_raw", "rating_value", scale, "empty rating"),
            *time_checks(
                "time_raw",
                "time_value",
                missing="empty timestamp",
                unparsed=not_a_number("timestamp", "time_raw"),
                label="timestamp",
            ),
        ],
        skip=skip,
    )


def _grouplens_interactions(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    scale: RatingScale,
    *,
    sep: str,
    sep_name: str,
    expected: str,
) -> Plan:
    """GroupLens ratings files: user, item, rating, timestamp, in that order, no header."""
    return _delimited_interactions(
        sep=sep,
        sep_name=sep_name,
        n_fields=4,
        index={"user": 1, "item": 2, "rating": 3, "time": 4},
        scale=scale,
        expected=expected,
    )


@dataclass(frozen=True)
class _AtomicHeader:
    names: list[str]
    index: dict[str, int]  # column name -> 1-based field


def _atomic_header(
    con: duckdb.DuckDBPyConnection, path: Path, required: Sequence[str]
) -> _AtomicHeader:
    """Parse a RecBole header like ``user_id:token\\titem_id:token``; find columns by name."""
    header = first_line(con, path)
    columns = header.split("\t")
    if not header.strip() or not all(":" in column for column in columns):
        raise DataFormatError(
            path,
            "not a RecBole atomic header (expected tab-separated name:type columns, "
            f"e.g. 'user_id:token'), found {header[:60]!r}",
            "line 1",
        )
    names = [column.split(":", 1)[0].strip() for column in columns]
    index = {name: position for position, name in enumerate(names, start=1)}
    missing = [name for name in required if name not in index]
    if missing:
        raise DataFormatError(
            path,
            f"header lacks column(s) {', '.join(missing)} (found: {', '.join(names)})",
            "line 1",
        )
    return _AtomicHeader(names, index)


def _atomic_interactions(con: duckdb.DuckDBPyConnection, path: Path, scale: RatingScale) -> Plan:
    header = _atomic_header(con, path, ("user_id", "item_id", "rating", "timestamp"))
    index = {
        "user": header.index["user_id"],
        "item": header.index["item_id"],
        "rating": header.index["rating"],
        "time": header.index["timestamp"],
    }
    return _delimited_interactions(
        sep="\t",
        sep_name="tab",
        n_fields=len(header.names),
        index=index,
        scale=scale,
        skip=1,
        expected=" (as in the header)",
    )


# ---------------------------------------------------------------------------------------------
# Items


def _title_and_year(raw_title: str) -> tuple[str, str]:
    """MovieLens 'Toy Story (1995)' -> title 'Toy Story' and year '1995' ('' when absent)."""
    parts = f"regexp_extract({raw_title}, '^(.*?)\\s*\\(([0-9]{{4}})\\)$', ['title', 'year'])"
    return parts, f"CASE WHEN {parts}.year <> '' THEN {parts}.title ELSE {raw_title} END"


def _ml100k_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    parts, title = _title_and_year("trim(f[2])")
    release_year = "regexp_extract(trim(f[3]), '([0-9]{4})$', 1)"
    genre_names = "[" + ", ".join(sql_str(genre) for genre in ML100K_GENRES) + "]"
    flags = "list_transform(f[6:24], lambda flag: trim(flag))"
    return Plan(
        parsed="string_split(line, '|') AS f",
        values=(
            f"len(f) AS n_fields, trim(f[1]) AS item_raw, {title} AS title_value, "
            f"try_cast(coalesce(nullif({parts}.year, ''), nullif({release_year}, '')) AS INTEGER)"
            " AS year_value, "
            f"array_to_string(list_filter({genre_names}, lambda genre, i: {flags}[i] = '1'), '|')"
            " AS genres_value, NULL AS description_value, "
            f"list_position(list_transform({flags}, lambda flag: flag IN ('0', '1')), false)"
            " AS bad_flag"
        ),
        columns=ITEM_COLUMNS,
        checks=[
            BINARY_CHECK,
            (
                "n_fields <> 24",
                "'expected 24 ''|''-separated fields (id|title|release date|video release "
                "date|IMDb URL|19 genre flags), found ' || n_fields",
            ),
            *id_checks("item_raw", "empty item id", "empty item id"),
            (
                "bad_flag IS NOT NULL",
                f"'genre flag ' || {shown('f[5 + bad_flag]')} || ' (field ' || (5 + bad_flag) "
                "|| ') is not 0 or 1'",
            ),
        ],
        latin1_fallback=True,
    )


def _mldat_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    parts, title = _title_and_year("trim(f[2])")
    return Plan(
        parsed="string_split(line, '::') AS f",
        values=(
            f"len(f) AS n_fields, trim(f[1]) AS item_raw, {title} AS title_value, "
            f"try_cast(nullif({parts}.year, '') AS INTEGER) AS year_value, "
            # ML-10M and later mark genre-less movies with a placeholder.
            "CASE WHEN trim(f[3]) = '(no genres listed)' THEN '' ELSE trim(f[3]) END "
            "AS genres_value, NULL AS description_value"
        ),
        columns=ITEM_COLUMNS,
        checks=[
            BINARY_CHECK,
            (
                "n_fields <> 3",
                "'expected 3 ''::''-separated fields (MovieID::Title::Genres), found ' || n_fields",
            ),
            *id_checks("item_raw", "empty item id", "empty item id"),
        ],
        latin1_fallback=True,
    )


def _atomic_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    header = _atomic_header(con, path, ("item_id",))

    def column(*names: str) -> int | None:
        return next((header.index[name] for name in names if name in header.index), None)

    title = column("movie_title", "title", "name")
    year = column("release_year", "year")
    genres = column("class", "genre", "genres", "categories")
    description = column("description")
    if title is None:
        raise DataFormatError(
            path,
            f"header lacks a title column (movie_title or title; found: {', '.join(header.names)})",
            "line 1",
        )
    year_raw = f"trim(f[{year}])" if year else "NULL"
    # token_seq values are space-separated tokens: "Animation Children's Comedy".
    genres_value = (
        f"array_to_string(list_filter(string_split(trim(f[{genres}]), ' '), "
        "lambda token: token <> ''), '|')"
        if genres
        else "''"
    )
    checks = [
        BINARY_CHECK,
        (
            f"n_fields <> {len(header.names)}",
            f"'expected {len(header.names)} tab-separated fields (as in the header), found ' "
            "|| n_fields",
        ),
        *id_checks("item_raw", "empty item id", "empty item id"),
    ]
    # Release years are free text in real files (RecBole's ml-100k.item has 'unkonwn'):
    # anything that is not a whole number is an unknown year, not an error.
    return Plan(
        parsed="string_split(line, '\t') AS f",
        values=(
            f"len(f) AS n_fields, trim(f[{header.index['item_id']}]) AS item_raw, "
            f"trim(f[{title}]) AS title_value, {year_raw} AS year_raw, "
            f"try_cast(nullif({year_raw}, '') AS INTEGER) AS year_value, "
            f"{genres_value} AS genres_value, "
            f"{f'f[{description}]' if description else 'NULL'} AS description_value"
        ),
        columns=ITEM_COLUMNS,
        checks=checks,
        skip=1,
    )


MOVIELENS_FORMATS: dict[str, Format] = {
    # RecBole ships atomic files for ML-100K/1M (whole stars) and ML-10M/20M (half stars).
    "movielens-atomic": Format(
        scale=RatingScale(0.5, 5.0, 0.5),
        interactions=_atomic_interactions,
        items=_atomic_items,
    ),
    "movielens-100k": Format(
        scale=RatingScale(1.0, 5.0, 1.0),
        interactions=partial(
            _grouplens_interactions,
            sep="\t",
            sep_name="tab",
            expected=" (user, item, rating, timestamp)",
        ),
        items=_ml100k_items,
    ),
    # ML-1M has whole stars, ML-10M half stars: one scale covers both.
    "movielens-dat": Format(
        scale=RatingScale(0.5, 5.0, 0.5),
        interactions=partial(
            _grouplens_interactions,
            sep="::",
            sep_name="'::'",
            expected=" (UserID::MovieID::Rating::Timestamp)",
        ),
        items=_mldat_items,
    ),
}
