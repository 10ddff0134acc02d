"""The reading engine every format shares: errors, the load pipeline, and the SQL blocks.

A family module (``movielens``, ``amazon``, ``yelp``) only says how its lines become rows, as a
`Plan`; everything else happens here, the same way for every format:

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Plan:
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
            SELECT {sql_str(dataset)} AS dataset, {self.columns}, {problem} AS problem
            FROM (SELECT *, {self.values}
                  FROM (SELECT line, {self.parsed}
                        FROM {_lines_source(path, self.skip, self.max_line_size)}))
        """


@dataclass(frozen=True)
class Format:
    """One raw format: the scale its ratings are checked against and the plans for its files.

    The plan builders get the connection and path because some formats (RecBole's atomic files)
    read the header to find their columns; the interactions builder also gets ``scale``, so a
    format's scale is written once, here.
    """

    scale: RatingScale
    interactions: Callable[[duckdb.DuckDBPyConnection, Path, RatingScale], Plan]
    items: Callable[[duckdb.DuckDBPyConnection, Path], Plan]


# ---------------------------------------------------------------------------------------------
# The load pipeline shared by all formats


def load_plan(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    plan: Plan,
    *,
    table: str,
    dataset: str,
    dedupe_items: bool,
) -> int:
    """Build ``table`` from ``path`` with ``plan``, or raise DataFormatError leaving it as it was."""
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
    con: duckdb.DuckDBPyConnection, path: Path, plan: Plan, staging: str, dataset: str
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
    con: duckdb.DuckDBPyConnection, path: Path, plan: Plan, staging: str, final: str
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


def check_file(path: str | Path) -> Path:
    """``path`` as a Path, once it is known to be a non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if not path.is_file():
        raise DataFormatError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty")
    return path


def _lines_source(path: Path, skip: int, max_line_size: int) -> str:
    # \x01 cannot occur in text or JSON, and quote='' keeps quotes as data: one row per line.
    return (
        f"read_csv({sql_str(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\x01', "
        f"quote='', escape='', header=false, auto_detect=false, skip={skip}, "
        f"max_line_size={max_line_size})"
    )


def first_line(con: duckdb.DuckDBPyConnection, path: Path) -> str:
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
# SQL building blocks the families compose their plans from


def sql_str(value: str) -> str:
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


def shown(expr: str) -> str:
    """SQL for a raw value quoted in a message, cut short so a junk line stays readable."""
    return f"'''' || left(coalesce({expr}, ''), 40) || ''''"


BINARY_CHECK = (
    r"regexp_matches(line, '[\x00-\x08\x0e-\x1f]')",
    "'binary data (control characters in a text line)'",
)

# The items table's columns, from the ``*_value`` names every items plan defines.
ITEM_COLUMNS = (
    "item_raw AS item_id, CAST(title_value AS VARCHAR) AS title, "
    "CAST(year_value AS INTEGER) AS year, CAST(coalesce(genres_value, '') AS VARCHAR) AS genres, "
    "CAST(nullif(trim(description_value), '') AS VARCHAR) AS description"
)

# The interactions table's columns, from the names every interactions plan defines.
INTERACTION_COLUMNS = (
    "user_raw AS user_id, item_raw AS item_id, rating_value AS rating, "
    "try_cast(floor(time_value) AS BIGINT) AS timestamp"
)


def id_checks(raw: str, missing: str, empty: str) -> list[tuple[str, str]]:
    return [(f"{raw} IS NULL", sql_str(missing)), (f"{raw} = ''", sql_str(empty))]


def rating_checks(raw: str, value: str, scale: RatingScale, missing: str) -> list[tuple[str, str]]:
    lo, hi, step = scale.min, scale.max, scale.step
    return [
        (f"{raw} IS NULL OR {raw} = ''", sql_str(missing)),
        (
            f"{value} IS NULL OR NOT isfinite({value})",
            f"'rating ' || {shown(raw)} || ' is not a number'",
        ),
        (
            f"{value} < {lo!r} OR {value} > {hi!r}",
            f"'rating ' || {shown(raw)} || ' is outside the scale {lo:g}..{hi:g}'",
        ),
        (
            f"abs({value} / {step!r} - round({value} / {step!r})) > 1e-9",
            f"'rating ' || {shown(raw)} || ' is not on the scale''s step of {step:g}'",
        ),
    ]


def time_checks(
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
        (f"{raw} IS NULL OR {raw} = ''", sql_str(missing)),
        (f"{seconds} IS NULL OR NOT isfinite({seconds})", unparsed),
        (f"{seconds} < 0", f"'{label} ' || {shown(raw)} || ' {negative}'"),
        (
            f"{seconds} > {_MAX_UNIX_SECONDS}",
            f"'{label} ' || {shown(raw)} || ' is too large for unix {unit}'",
        ),
    ]


def not_a_number(label: str, raw: str) -> str:
    return f"'{label} ' || {shown(raw)} || ' is not a number'"


# ---------------------------------------------------------------------------------------------
# JSON lines, the layout of the Amazon and Yelp dumps


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
            "'expected a JSON object, found ' || " + shown("ltrim(line)"),
        ),
    ]


def _json_paths(fields: Sequence[str]) -> str:
    return "[" + ", ".join(sql_str(f"$.{name}") for name in fields) + "]"


def json_interactions(
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
) -> Plan:
    """Plan for a JSON-lines reviews file; field expressions refer to ``v``, the extracted strings."""
    return Plan(
        parsed=f"try(json_extract_string(line, {_json_paths(paths)})) AS v",
        values=(
            f"trim({user}) AS user_raw, trim({item}) AS item_raw, trim({rating}) AS rating_raw, "
            f"try_cast(trim({rating}) AS DOUBLE) AS rating_value, {time_raw} AS time_raw, "
            f"{seconds} AS time_value"
        ),
        columns=INTERACTION_COLUMNS,
        checks=[
            *_json_line_checks(),
            *id_checks(
                "user_raw",
                f"missing field '{user_field}' (user id)",
                f"empty user id (field '{user_field}')",
            ),
            *id_checks(
                "item_raw",
                f"missing field '{item_field}' (item id)",
                f"empty item id (field '{item_field}')",
            ),
            *rating_checks(
                "rating_raw", "rating_value", scale, f"missing field '{rating_field}' (rating)"
            ),
            *time_checks,
        ],
        max_line_size=_MAX_JSON_LINE,
    )


def json_items(*, paths: Sequence[str], item: str, item_field: str, values: str) -> Plan:
    """Plan for a JSON-lines metadata file; ``v`` holds the extracted JSON values."""
    return Plan(
        parsed=f"try(json_extract(line, {_json_paths(paths)})) AS v",
        values=f"trim({item}) AS item_raw, {values}",
        columns=ITEM_COLUMNS,
        checks=[
            *_json_line_checks(),
            *id_checks(
                "item_raw",
                f"missing field '{item_field}' (item id)",
                f"empty item id (field '{item_field}')",
            ),
        ],
        max_line_size=_MAX_JSON_LINE,
        duplicates_are_errors=False,  # the metadata dumps repeat some records
    )
