"""Loaders and validators for the raw rating and item files that real users have.

Six formats, as they are distributed: RecBole atomic files, MovieLens-100K (``u.data`` /
``u.item``), MovieLens-1M/10M (``ratings.dat`` / ``movies.dat``), Amazon reviews 2018 and 2023
(JSON lines), and the Yelp open dataset (JSON lines). Every loader turns one raw file into one
DuckDB table with a fixed schema and checks every record on the way.

How it works, and why:

- Each file is read as text lines by DuckDB's CSV reader with a delimiter that cannot occur in
  text (``\\x01``) and quoting off, so one row is one line, blank lines included. A ``CREATE
  TABLE AS`` keeps insertion order, so a row's ``rowid`` is its line number (minus one, minus the
  header) without a window over the whole file.
- Fields are split or JSON-parsed in SQL, and a ``problem`` column holds the first thing wrong
  with each line (NULL when fine, '' for a blank line). A single scan then finds the first
  offending line. Everything stays vectorized: 10M ML-10M ratings load in a few seconds.
- The table is built under a temporary name and renamed over the target only when every line is
  valid, so a failed load leaves the previous table as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lettingo_dagster.registry import KNOWN_FORMATS

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = KNOWN_FORMATS

# u.item genre flags, in file order.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# A line longer than this in a delimited file is binary junk; JSON lines carry whole reviews.
_MAX_DELIMITED_LINE = 2 * 1024 * 1024
_MAX_JSON_LINE = 64 * 1024 * 1024
# Unix seconds beyond this (year 5138) are milliseconds or garbage, not seconds.
_MAX_UNIX_SECONDS = 100_000_000_000
# What DuckDB raises for unreadable file content; binder or catalog errors are bugs or caller
# mistakes and propagate unchanged.
_READ_ERRORS = (duckdb.InvalidInputException, duckdb.IOException, duckdb.DataError)


class DataFormatError(ValueError):
    """A raw file is malformed: ``str()`` is ``"<path>: <location>: <problem>"``.

    ``location`` is e.g. ``"line 17"`` (JSON lines use the line number too); it is None when the
    problem concerns the whole file (missing, empty, unknown format).
    """

    def __init__(self, path: str | Path, problem: str, location: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.location = location
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [str(self.path), self.location, self.problem]
        return ": ".join(part for part in parts if part)

    def __reduce__(self):  # keep the fields when pickled (Dagster ships errors between processes)
        return (type(self), (self.path, self.problem, self.location))


@dataclass(frozen=True)
class RatingScale:
    min: float
    max: float
    step: float

    def __str__(self) -> str:
        return f"{self.min:g}..{self.max:g} step {self.step:g}"


_SCALES: dict[str, RatingScale] = {
    # RecBole ships atomic files for ML-100K/1M (whole stars) and ML-10M/20M (half stars).
    "movielens-atomic": RatingScale(0.5, 5.0, 0.5),
    "movielens-100k": RatingScale(1.0, 5.0, 1.0),
    # ML-1M has whole stars, ML-10M half stars: one scale covers both.
    "movielens-dat": RatingScale(0.5, 5.0, 0.5),
    "amazon-2018": RatingScale(1.0, 5.0, 1.0),
    "amazon-2023": RatingScale(1.0, 5.0, 1.0),
    "yelp": RatingScale(1.0, 5.0, 1.0),
}


def rating_scale(fmt: str) -> RatingScale:
    """The rating scale a format's files are validated against."""
    if fmt not in _SCALES:
        raise ValueError(_unknown_format(fmt))
    return _SCALES[fmt]


@dataclass(frozen=True)
class ValidationSummary:
    format: str
    interactions_path: Path
    items_path: Path | None
    rows: int
    users: int
    items: int  # distinct item ids in the interactions
    rating_min: float
    rating_max: float
    scale: RatingScale
    item_rows: int | None  # rows of the items file, when one was given

    def render(self) -> str:
        lines = [
            f"valid {self.format} files",
            f"interactions: {self.interactions_path}",
            f"  rows:         {self.rows:,}",
            f"  users:        {self.users:,}",
            f"  items:        {self.items:,}",
            f"  rating scale: {self.scale} (observed {self.rating_min:g}..{self.rating_max:g})",
        ]
        if self.items_path is not None:
            lines += [f"items: {self.items_path}", f"  rows:         {self.item_rows:,}"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_interactions(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str | Path, *, table: str, dataset: str
) -> int:
    """Create or replace ``table`` (dataset, user_id, item_id, rating, timestamp) from a raw file.

    ``timestamp`` is unix seconds. Every record is validated; the first bad one raises
    DataFormatError naming the file, its line and the problem, and ``table`` is left untouched.
    Returns the number of rows. Call it outside an explicit transaction: a file DuckDB cannot
    read aborts the connection's current transaction.
    """
    path = _check_file(fmt, path)
    plan = _INTERACTION_PLANS[fmt](con, path)
    return _load(con, path, plan, table=table, dataset=dataset, dedupe_items=False)


def load_items(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str | Path, *, table: str, dataset: str
) -> int:
    """Create or replace ``table`` (dataset, item_id, title, year, genres, description).

    ``year`` is NULL when unknown, ``genres`` the genre or category names joined by '|' ('' when
    none), ``description`` NULL when none. A duplicate item id is an error in the MovieLens
    formats; in Amazon and Yelp metadata (which do repeat records) the first one is kept.
    """
    path = _check_file(fmt, path)
    plan = _ITEM_PLANS[fmt](con, path)
    return _load(con, path, plan, table=table, dataset=dataset, dedupe_items=True)


def validate_files(
    fmt: str, interactions: str | Path, items: str | Path | None = None
) -> ValidationSummary:
    """Load the files into a throwaway in-memory DuckDB and summarize them.

    Raises DataFormatError for an unknown format, a missing file or any malformed record.
    """
    if fmt not in FORMATS:
        raise DataFormatError(interactions, _unknown_format(fmt))
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
        scale=_SCALES[fmt],
        item_rows=item_rows,
    )


# ---------------------------------------------------------------------------------------------
# The load pipeline shared by all formats


@dataclass(frozen=True)
class _Plan:
    """How to turn the lines of one file into rows.

    The query is layered so each step can use the previous one's names:
    ``line`` -> ``parsed`` (split fields / JSON values) -> ``values`` (raw strings and typed
    values) -> ``columns`` (the output columns) plus ``problem`` from ``checks``.
    """

    parsed: str
    values: str
    columns: str
    checks: list[tuple[str, str]]  # (condition, message SQL); the first true one is the problem
    skip: int = 0  # header lines
    latin1_fallback: bool = False  # GroupLens item files of ML-100K/1M are latin-1
    max_line_size: int = _MAX_DELIMITED_LINE
    duplicates_are_errors: bool = True  # for items files only

    def select(self, path: Path, dataset: str) -> str:
        # A blank line (NULL from the reader) is skipped but keeps its place in the numbering.
        whens = "\n".join(f"WHEN {cond} THEN {message}" for cond, message in self.checks)
        problem = f"CASE WHEN line IS NULL OR trim(line) = '' THEN ''\n{whens}\nEND"
        return f"""
            SELECT {_sql_str(dataset)} AS dataset, {self.columns}, {problem} AS problem
            FROM (SELECT *, {self.values}
                  FROM (SELECT line, {self.parsed}
                        FROM {_lines_source(path, self.skip, self.max_line_size)}))
        """


def _load(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    plan: _Plan,
    *,
    table: str,
    dataset: str,
    dedupe_items: bool,
) -> int:
    schema_prefix, name = _split_table_name(table)
    target = schema_prefix + name
    token = uuid.uuid4().hex[:8]
    staging = f"{schema_prefix}{_ident(f'_loading_{token}')}"
    final = f"{schema_prefix}{_ident(f'_loaded_{token}')}"
    restore_order = _ensure_insertion_order(con)
    try:
        _build_staging(con, path, plan, staging, dataset)
        first_bad = con.execute(
            f"SELECT rowid, problem FROM {staging} WHERE problem <> '' ORDER BY rowid LIMIT 1"
        ).fetchone()
        if first_bad is not None:
            raise DataFormatError(path, first_bad[1], f"line {first_bad[0] + 1 + plan.skip}")
        (records,) = con.execute(
            f"SELECT count(*) FILTER (WHERE problem IS NULL) FROM {staging}"
        ).fetchone()
        if records == 0:
            raise DataFormatError(path, "no records (only blank lines or a header)")
        if dedupe_items:
            rows = _finish_items(con, path, plan, staging, final)
            _replace(con, final, target, name)
        else:
            rows = records
            _finish_interactions(con, staging)
            _replace(con, staging, target, name)
        return rows
    finally:
        _drop(con, staging)
        _drop(con, final)
        if restore_order:
            con.execute("SET preserve_insertion_order = false")


def _build_staging(
    con: duckdb.DuckDBPyConnection, path: Path, plan: _Plan, staging: str, dataset: str
) -> None:
    try:
        con.execute(f"CREATE TABLE {staging} AS {plan.select(path, dataset)}")
        return
    except _READ_ERRORS as err:
        _drop(con, staging)
        if not (plan.latin1_fallback and "Invalid unicode" in str(err)):
            raise _read_error(path, err, plan.max_line_size) from err
    # DuckDB's own latin-1 decoder rejects bytes 0x80-0x9f (Windows-1252 quotes and dashes), so
    # the fallback transcodes the (small) items file in Python, in blocks, to a UTF-8 copy.
    with tempfile.TemporaryDirectory(prefix="lettingo-latin1-") as tmp:
        utf8_copy = _transcode_to_utf8(path, Path(tmp) / "utf8.txt")
        try:
            con.execute(f"CREATE TABLE {staging} AS {plan.select(utf8_copy, dataset)}")
        except _READ_ERRORS as err:
            _drop(con, staging)
            raise _read_error(path, err, plan.max_line_size) from err


def _transcode_to_utf8(path: Path, target: Path) -> Path:
    """Re-encode a Windows-1252 (else latin-1) file as UTF-8, line ends kept as they are."""
    opener = gzip.open if path.suffix == ".gz" else open
    for encoding in ("cp1252", "latin-1"):  # cp1252 leaves 5 bytes undefined; latin-1 none
        try:
            with opener(path, "rb") as raw, target.open("w", encoding="utf-8", newline="") as out:
                if raw.read(3) != b"\xef\xbb\xbf":  # a BOM is dropped, as DuckDB does
                    raw.seek(0)
                text = io.TextIOWrapper(raw, encoding=encoding, newline="")
                shutil.copyfileobj(text, out, 1 << 20)
            return target
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")


def _finish_interactions(con: duckdb.DuckDBPyConnection, staging: str) -> None:
    # In place: a 10M-row copy would cost seconds and double the memory.
    (blank,) = con.execute(f"SELECT count(*) FROM {staging} WHERE problem = ''").fetchone()
    if blank:
        con.execute(f"DELETE FROM {staging} WHERE problem = ''")
    con.execute(f"ALTER TABLE {staging} DROP COLUMN problem")


def _finish_items(
    con: duckdb.DuckDBPyConnection, path: Path, plan: _Plan, staging: str, final: str
) -> int:
    if plan.duplicates_are_errors:
        duplicate = con.execute(
            f"""
            SELECT s.rowid, s.item_id, d.first_rowid
            FROM {staging} AS s
            JOIN (SELECT item_id, min(rowid) AS first_rowid FROM {staging}
                  WHERE problem IS NULL GROUP BY item_id HAVING count(*) > 1) AS d
              USING (item_id)
            WHERE s.problem IS NULL AND s.rowid > d.first_rowid
            ORDER BY s.rowid LIMIT 1
            """
        ).fetchone()
        if duplicate is not None:
            line, item_id, first_line = duplicate[0] + 1 + plan.skip, duplicate[1], duplicate[2]
            raise DataFormatError(
                path,
                f"duplicate item id {item_id!r} (first on line {first_line + 1 + plan.skip})",
                f"line {line}",
            )
    con.execute(
        f"""
        CREATE TABLE {final} AS
        SELECT dataset, item_id, title, year, genres, description
        FROM {staging}
        WHERE problem IS NULL
        QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY rowid) = 1
        ORDER BY rowid
        """
    )
    (rows,) = con.execute(f"SELECT count(*) FROM {final}").fetchone()
    (records,) = con.execute(f"SELECT count(*) FROM {staging} WHERE problem IS NULL").fetchone()
    if records > rows:
        log.warning("%s: %d repeated item records; kept the first of each", path, records - rows)
    return rows


def _replace(con: duckdb.DuckDBPyConnection, source: str, target: str, name: str) -> None:
    """Swap ``source`` in as ``target`` atomically when we own the transaction."""
    own_transaction = not _in_transaction(con)  # else the caller's transaction covers it
    if own_transaction:
        con.begin()
    try:
        con.execute(f"DROP TABLE IF EXISTS {target}")
        con.execute(f"ALTER TABLE {source} RENAME TO {name}")
        if own_transaction:
            con.commit()
    except BaseException:
        if own_transaction:
            con.rollback()
        raise


def _in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the caller holds an explicit transaction (BEGIN inside one would abort it)."""
    # In autocommit mode every statement gets a new transaction id.
    first, second = (con.execute("SELECT txid_current()").fetchone()[0] for _ in range(2))
    return first == second


def _drop(con: duckdb.DuckDBPyConnection, table: str) -> None:
    # Fails when the caller's transaction is aborted; then nothing was committed anyway.
    with contextlib.suppress(duckdb.Error):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _ensure_insertion_order(con: duckdb.DuckDBPyConnection) -> bool:
    """Line numbers rely on insertion order; turn it on for this load if the caller turned it off."""
    (preserved,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
    if preserved:
        return False
    con.execute("SET preserve_insertion_order = true")
    return True


# ---------------------------------------------------------------------------------------------
# Reading lines, and turning DuckDB's reader errors into DataFormatError


def _check_file(fmt: str, path: str | Path) -> Path:
    path = Path(path)
    if fmt not in FORMATS:
        raise DataFormatError(path, _unknown_format(fmt))
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if not path.is_file():
        raise DataFormatError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty")
    return path


def _unknown_format(fmt: str) -> str:
    return f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}"


def _lines_source(path: Path, skip: int, max_line_size: int) -> str:
    # \x01 cannot occur in text or JSON, and quote='' keeps quotes as data: one row per line.
    return (
        f"read_csv({_sql_str(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\x01', "
        f"quote='', escape='', header=false, auto_detect=false, skip={skip}, "
        f"max_line_size={max_line_size})"
    )


def _first_line(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    try:
        row = con.execute(
            f"SELECT line FROM {_lines_source(path, 0, _MAX_DELIMITED_LINE)} LIMIT 1"
        ).fetchone()
    except _READ_ERRORS as err:
        raise _read_error(path, err, _MAX_DELIMITED_LINE) from err
    return (row[0] or "") if row else ""


def _read_error(path: Path, err: duckdb.Error, max_line_size: int) -> DataFormatError:
    detail = str(err)
    line = re.search(r"CSV Error on Line: (\d+)", detail)
    location = f"line {line.group(1)}" if line else None
    if "Invalid unicode" in detail:
        problem = "not UTF-8 text (binary data or another encoding)"
    elif "Maximum line size" in detail:
        problem = f"a line is longer than {max_line_size:,} bytes (binary data?)"
    elif "Expected Number of Columns" in detail:
        problem = "contains a \\x01 control character (binary data?)"
    elif "state machine" in detail:
        problem = "binary or unreadable content, not text lines"
    else:
        first = detail.strip().splitlines()[0] if detail.strip() else type(err).__name__
        problem = f"could not be read as text lines ({first})"
    return DataFormatError(path, problem, location)


# ---------------------------------------------------------------------------------------------
# SQL building blocks


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _split_table_name(table: str) -> tuple[str, str]:
    """'name' or 'schema.name' -> (quoted 'schema.' prefix or '', quoted name)."""
    parts = [part.strip().strip('"') for part in table.split(".")]
    if not all(parts):
        raise ValueError(f"invalid table name {table!r}")
    prefix = "".join(_ident(part) + "." for part in parts[:-1])
    return prefix, _ident(parts[-1])


def _shown(expr: str) -> str:
    """SQL for a raw value quoted in a message, cut short so a junk line stays readable."""
    return f"'''' || left(coalesce({expr}, ''), 40) || ''''"


_BINARY_CHECK = (
    r"regexp_matches(line, '[\x00-\x08\x0e-\x1f]')",
    "'binary data (control characters in a text line)'",
)


def _id_checks(raw: str, missing: str, empty: str) -> list[tuple[str, str]]:
    return [(f"{raw} IS NULL", _sql_str(missing)), (f"{raw} = ''", _sql_str(empty))]


def _rating_checks(raw: str, value: str, scale: RatingScale, missing: str) -> list[tuple[str, str]]:
    lo, hi, step = scale.min, scale.max, scale.step
    return [
        (f"{raw} IS NULL OR {raw} = ''", _sql_str(missing)),
        (
            f"{value} IS NULL OR NOT isfinite({value})",
            f"'rating ' || {_shown(raw)} || ' is not a number'",
        ),
        (
            f"{value} < {lo!r} OR {value} > {hi!r}",
            f"'rating ' || {_shown(raw)} || ' is outside the scale {lo:g}..{hi:g}'",
        ),
        (
            f"abs({value} / {step!r} - round({value} / {step!r})) > 1e-9",
            f"'rating ' || {_shown(raw)} || ' is not on the scale''s step of {step:g}'",
        ),
    ]


def _time_checks(
    raw: str,
    seconds: str,
    *,
    missing: str,
    unparsed: str,
    label: str,
    unit: str = "seconds",
    negative: str = "is negative (before 1970)",
) -> list[tuple[str, str]]:
    """``unparsed`` is message SQL for a value that does not parse; ``label`` names the field."""
    return [
        (f"{raw} IS NULL OR {raw} = ''", _sql_str(missing)),
        (f"{seconds} IS NULL OR NOT isfinite({seconds})", unparsed),
        (f"{seconds} < 0", f"'{label} ' || {_shown(raw)} || ' {negative}'"),
        (
            f"{seconds} > {_MAX_UNIX_SECONDS}",
            f"'{label} ' || {_shown(raw)} || ' is too large for unix {unit}'",
        ),
    ]


def _not_a_number(label: str, raw: str) -> str:
    return f"'{label} ' || {_shown(raw)} || ' is not a number'"


def _year_in(text: str) -> str:
    """The first plausible 4-digit year anywhere in ``text``, else NULL."""
    return (
        f"try_cast(nullif(regexp_extract({text}, "
        r"'(?:^|[^0-9])((?:1[89]|20)[0-9]{2})(?:[^0-9]|$)', 1), '') AS INTEGER)"
    )


def _title_and_year(raw_title: str) -> tuple[str, str]:
    """MovieLens 'Toy Story (1995)' -> title 'Toy Story' and year '1995' ('' when absent)."""
    parts = f"regexp_extract({raw_title}, '^(.*?)\\s*\\(([0-9]{{4}})\\)$', ['title', 'year'])"
    return parts, f"CASE WHEN {parts}.year <> '' THEN {parts}.title ELSE {raw_title} END"


def _json_join(value: str, sep: str) -> str:
    """A JSON array of strings joined by ``sep`` (a JSON string as itself); NULL otherwise."""
    return (
        f"CASE json_type({value}) "
        f"WHEN 'ARRAY' THEN array_to_string(list_filter("
        f"list_transform(from_json({value}, '[\"VARCHAR\"]'), lambda s: trim(s)), "
        f"lambda s: s <> ''), {_sql_str(sep)}) "
        f"WHEN 'VARCHAR' THEN trim({value}->>'$') END"
    )


def _json_line_checks() -> list[tuple[str, str]]:
    """Structural checks for a JSON-lines file whose parsed values are in ``v`` (NULL if invalid)."""
    return [
        (
            "starts_with(ltrim(line), '[')",
            "'found a JSON array; expected JSON lines (one JSON object per line)'",
        ),
        ("v IS NULL", "'not valid JSON (a truncated or corrupt record?)'"),
        (
            "NOT starts_with(ltrim(line), '{')",
            "'expected a JSON object, found ' || " + _shown("ltrim(line)"),
        ),
    ]


def _json_paths(fields: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_str(f"$.{name}") for name in fields) + "]"


# ---------------------------------------------------------------------------------------------
# Interactions, per format


def _delimited_interactions(
    *,
    sep: str,
    sep_name: str,
    n_fields: int,
    index: dict[str, int],
    scale: RatingScale,
    skip: int = 0,
    expected: str = "",
) -> _Plan:
    """Plan for a delimited ratings file; ``index`` maps user_id/item_id/rating/timestamp to fields."""
    values = ", ".join(
        [f"trim(f[{index[name]}]) AS {name}_raw" for name in ("user", "item", "rating", "time")]
        + [
            f"try_cast(trim(f[{index['rating']}]) AS DOUBLE) AS rating_value",
            f"try_cast(trim(f[{index['time']}]) AS DOUBLE) AS time_value",
            "len(f) AS n_fields",
        ]
    )
    return _Plan(
        parsed=f"string_split(line, {_sql_str(sep)}) AS f",
        values=values,
        columns=(
            "user_raw AS user_id, item_raw AS item_id, rating_value AS rating, "
            "try_cast(floor(time_value) AS BIGINT) AS timestamp"
        ),
        checks=[
            _BINARY_CHECK,
            (
                f"n_fields <> {n_fields}",
                _sql_str(f"expected {n_fields} {sep_name}-separated fields{expected}, found ")
                + " || n_fields",
            ),
            *_id_checks("user_raw", "empty user id", "empty user id"),
            *_id_checks("item_raw", "empty item id", "empty item id"),
            *_rating_checks("rating_raw", "rating_value", scale, "empty rating"),
            *_time_checks(
                "time_raw",
                "time_value",
                missing="empty timestamp",
                unparsed=_not_a_number("timestamp", "time_raw"),
                label="timestamp",
            ),
        ],
        skip=skip,
    )


def _ml100k_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    return _delimited_interactions(
        sep="\t",
        sep_name="tab",
        n_fields=4,
        index={"user": 1, "item": 2, "rating": 3, "time": 4},
        scale=_SCALES["movielens-100k"],
        expected=" (user, item, rating, timestamp)",
    )


def _mldat_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    return _delimited_interactions(
        sep="::",
        sep_name="'::'",
        n_fields=4,
        index={"user": 1, "item": 2, "rating": 3, "time": 4},
        scale=_SCALES["movielens-dat"],
        expected=" (UserID::MovieID::Rating::Timestamp)",
    )


@dataclass(frozen=True)
class _AtomicHeader:
    names: list[str]
    index: dict[str, int]  # column name -> 1-based field


def _atomic_header(
    con: duckdb.DuckDBPyConnection, path: Path, required: Sequence[str]
) -> _AtomicHeader:
    """Parse a RecBole header like ``user_id:token\\titem_id:token``; find columns by name."""
    header = _first_line(con, path)
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


def _atomic_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
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
        scale=_SCALES["movielens-atomic"],
        skip=1,
        expected=" (as in the header)",
    )


def _json_interactions(
    *,
    paths: Sequence[str],
    user: str,
    item: str,
    rating: str,
    time_raw: str,
    seconds: str,
    user_field: str,
    item_field: str,
    rating_field: str,
    time_checks: list[tuple[str, str]],
    scale: RatingScale,
) -> _Plan:
    """Plan for a JSON-lines reviews file; field expressions refer to ``v``, the extracted strings."""
    return _Plan(
        parsed=f"try(json_extract_string(line, {_json_paths(paths)})) AS v",
        values=(
            f"trim({user}) AS user_raw, trim({item}) AS item_raw, trim({rating}) AS rating_raw, "
            f"try_cast(trim({rating}) AS DOUBLE) AS rating_value, {time_raw} AS time_raw, "
            f"{seconds} AS time_value"
        ),
        columns=(
            "user_raw AS user_id, item_raw AS item_id, rating_value AS rating, "
            "try_cast(floor(time_value) AS BIGINT) AS timestamp"
        ),
        checks=[
            *_json_line_checks(),
            *_id_checks(
                "user_raw",
                f"missing field '{user_field}' (user id)",
                f"empty user id (field '{user_field}')",
            ),
            *_id_checks(
                "item_raw",
                f"missing field '{item_field}' (item id)",
                f"empty item id (field '{item_field}')",
            ),
            *_rating_checks(
                "rating_raw", "rating_value", scale, f"missing field '{rating_field}' (rating)"
            ),
            *time_checks,
        ],
        max_line_size=_MAX_JSON_LINE,
    )


def _amazon2018_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    # unixReviewTime is the timestamp; reviewTime ("09 13, 2009") stands in when it is absent.
    review_time = "try_strptime(trim(v[5]), '%m %d, %Y')"
    time_raw = "trim(coalesce(v[4], v[5]))"
    seconds = f"CASE WHEN v[4] IS NOT NULL THEN try_cast(trim(v[4]) AS DOUBLE) ELSE epoch({review_time}) END"
    unparsed = (
        "CASE WHEN v[4] IS NOT NULL THEN "
        + _not_a_number("unixReviewTime", "time_raw")
        + " ELSE 'reviewTime ' || "
        + _shown("time_raw")
        + " || ' is not a date like ''09 13, 2009''' END"
    )
    return _json_interactions(
        paths=("reviewerID", "asin", "overall", "unixReviewTime", "reviewTime"),
        user="v[1]",
        item="v[2]",
        rating="v[3]",
        time_raw=time_raw,
        seconds=seconds,
        user_field="reviewerID",
        item_field="asin",
        rating_field="overall",
        time_checks=_time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'unixReviewTime' (timestamp)",
            unparsed=unparsed,
            label="unixReviewTime",
        ),
        scale=_SCALES["amazon-2018"],
    )


def _amazon2023_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    # The 2023 timestamps are unix milliseconds.
    return _json_interactions(
        paths=("user_id", "parent_asin", "asin", "rating", "timestamp"),
        user="v[1]",
        item="coalesce(nullif(trim(v[2]), ''), v[3])",
        rating="v[4]",
        time_raw="trim(v[5])",
        seconds="try_cast(trim(v[5]) AS DOUBLE) / 1000",
        user_field="user_id",
        item_field="parent_asin",
        rating_field="rating",
        time_checks=_time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'timestamp'",
            unparsed=_not_a_number("timestamp", "time_raw"),
            label="timestamp",
            unit="milliseconds",
        ),
        scale=_SCALES["amazon-2023"],
    )


def _yelp_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    # Yelp dates are local wall-clock strings; they are stored as if UTC.
    parsed = "try_strptime(trim(v[4]), ['%Y-%m-%d %H:%M:%S', '%Y-%m-%d'])"
    return _json_interactions(
        paths=("user_id", "business_id", "stars", "date"),
        user="v[1]",
        item="v[2]",
        rating="v[3]",
        time_raw="trim(v[4])",
        seconds=f"epoch({parsed})",
        user_field="user_id",
        item_field="business_id",
        rating_field="stars",
        time_checks=_time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'date'",
            unparsed="'date ' || "
            + _shown("time_raw")
            + " || ' is not a date like ''2018-07-07 22:09:11'''",
            label="date",
            negative="is before 1970",
        ),
        scale=_SCALES["yelp"],
    )


# ---------------------------------------------------------------------------------------------
# Items, per format

_ITEM_COLUMNS = (
    "item_raw AS item_id, CAST(title_value AS VARCHAR) AS title, "
    "CAST(year_value AS INTEGER) AS year, CAST(coalesce(genres_value, '') AS VARCHAR) AS genres, "
    "CAST(nullif(trim(description_value), '') AS VARCHAR) AS description"
)


def _ml100k_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    parts, title = _title_and_year("trim(f[2])")
    release_year = "regexp_extract(trim(f[3]), '([0-9]{4})$', 1)"
    genre_names = "[" + ", ".join(_sql_str(genre) for genre in ML100K_GENRES) + "]"
    flags = "list_transform(f[6:24], lambda flag: trim(flag))"
    return _Plan(
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
        columns=_ITEM_COLUMNS,
        checks=[
            _BINARY_CHECK,
            (
                "n_fields <> 24",
                "'expected 24 ''|''-separated fields (id|title|release date|video release "
                "date|IMDb URL|19 genre flags), found ' || n_fields",
            ),
            *_id_checks("item_raw", "empty item id", "empty item id"),
            (
                "bad_flag IS NOT NULL",
                f"'genre flag ' || {_shown('f[5 + bad_flag]')} || ' (field ' || (5 + bad_flag) "
                "|| ') is not 0 or 1'",
            ),
        ],
        latin1_fallback=True,
    )


def _mldat_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    parts, title = _title_and_year("trim(f[2])")
    return _Plan(
        parsed="string_split(line, '::') AS f",
        values=(
            f"len(f) AS n_fields, trim(f[1]) AS item_raw, {title} AS title_value, "
            f"try_cast(nullif({parts}.year, '') AS INTEGER) AS year_value, "
            # ML-10M and later mark genre-less movies with a placeholder.
            "CASE WHEN trim(f[3]) = '(no genres listed)' THEN '' ELSE trim(f[3]) END "
            "AS genres_value, NULL AS description_value"
        ),
        columns=_ITEM_COLUMNS,
        checks=[
            _BINARY_CHECK,
            (
                "n_fields <> 3",
                "'expected 3 ''::''-separated fields (MovieID::Title::Genres), found ' || n_fields",
            ),
            *_id_checks("item_raw", "empty item id", "empty item id"),
        ],
        latin1_fallback=True,
    )


def _atomic_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
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
        _BINARY_CHECK,
        (
            f"n_fields <> {len(header.names)}",
            f"'expected {len(header.names)} tab-separated fields (as in the header), found ' "
            "|| n_fields",
        ),
        *_id_checks("item_raw", "empty item id", "empty item id"),
    ]
    # Release years are free text in real files (RecBole's ml-100k.item has 'unkonwn'):
    # anything that is not a whole number is an unknown year, not an error.
    return _Plan(
        parsed="string_split(line, '\t') AS f",
        values=(
            f"len(f) AS n_fields, trim(f[{header.index['item_id']}]) AS item_raw, "
            f"trim(f[{title}]) AS title_value, {year_raw} AS year_raw, "
            f"try_cast(nullif({year_raw}, '') AS INTEGER) AS year_value, "
            f"{genres_value} AS genres_value, "
            f"{f'f[{description}]' if description else 'NULL'} AS description_value"
        ),
        columns=_ITEM_COLUMNS,
        checks=checks,
        skip=1,
    )


def _json_items(*, paths: Sequence[str], item: str, item_field: str, values: str) -> _Plan:
    """Plan for a JSON-lines metadata file; ``v`` holds the extracted JSON values."""
    return _Plan(
        parsed=f"try(json_extract(line, {_json_paths(paths)})) AS v",
        values=f"trim({item}) AS item_raw, {values}",
        columns=_ITEM_COLUMNS,
        checks=[
            *_json_line_checks(),
            *_id_checks(
                "item_raw",
                f"missing field '{item_field}' (item id)",
                f"empty item id (field '{item_field}')",
            ),
        ],
        max_line_size=_MAX_JSON_LINE,
        duplicates_are_errors=False,  # the metadata dumps repeat some records
    )


def _amazon2018_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    date_text = "v[5]->>'$'"  # "January 1, 2010", "", or stray HTML
    return _json_items(
        paths=("asin", "title", "category", "description", "date"),
        item="v[1]->>'$'",
        item_field="asin",
        values=(
            "coalesce(trim(v[2]->>'$'), '') AS title_value, "
            f"{_year_in(date_text)} AS year_value, "
            f"{_json_join('v[3]', '|')} AS genres_value, "
            f"{_json_join('v[4]', ' ')} AS description_value"
        ),
    )


def _amazon2023_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    # The year hides in date-like "details" entries: "Date First Available", "Publication date".
    detail_dates = (
        "array_to_string(regexp_extract_all(CAST(v[7] AS VARCHAR), "
        '\'"[^"]*[Dd]ate[^"]*"\\s*:\\s*"([^"]*)"\', 1), \' \')'
    )
    return _json_items(
        paths=(
            "parent_asin",
            "asin",
            "title",
            "categories",
            "main_category",
            "description",
            "details",
        ),
        item="coalesce(nullif(trim(v[1]->>'$'), ''), v[2]->>'$')",
        item_field="parent_asin",
        values=(
            "coalesce(trim(v[3]->>'$'), '') AS title_value, "
            f"{_year_in(detail_dates)} AS year_value, "
            f"coalesce(nullif({_json_join('v[4]', '|')}, ''), nullif(trim(v[5]->>'$'), ''), '')"
            " AS genres_value, "
            f"{_json_join('v[6]', ' ')} AS description_value"
        ),
    )


def _yelp_items(con: duckdb.DuckDBPyConnection, path: Path) -> _Plan:
    return _json_items(
        paths=("business_id", "name", "categories", "city", "state"),
        item="v[1]->>'$'",
        item_field="business_id",
        values=(
            "coalesce(trim(v[2]->>'$'), '') AS title_value, NULL AS year_value, "
            # "Doctors, Traditional Chinese Medicine" -> "Doctors|Traditional Chinese Medicine"
            "array_to_string(list_filter(list_transform(string_split(v[3]->>'$', ','), "
            "lambda s: trim(s)), lambda s: s <> ''), '|') AS genres_value, "
            "concat_ws(', ', nullif(trim(v[4]->>'$'), ''), nullif(trim(v[5]->>'$'), ''))"
            " AS description_value"
        ),
    )


_INTERACTION_PLANS = {
    "movielens-atomic": _atomic_interactions,
    "movielens-100k": _ml100k_interactions,
    "movielens-dat": _mldat_interactions,
    "amazon-2018": _amazon2018_interactions,
    "amazon-2023": _amazon2023_interactions,
    "yelp": _yelp_interactions,
}

_ITEM_PLANS = {
    "movielens-atomic": _atomic_items,
    "movielens-100k": _ml100k_items,
    "movielens-dat": _mldat_items,
    "amazon-2018": _amazon2018_items,
    "amazon-2023": _amazon2023_items,
    "yelp": _yelp_items,
}
