"""Writing dataset partitions of DuckDB tables atomically, and checking that the partition an
asset reads was written.

Every warehouse table is named after the asset that writes it, partitioned by `dataset`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dagster as dg
import duckdb
import pandas as pd

MATERIALIZE_COMMAND = (
    "dagster asset materialize -m lettingo_dagster.definitions "
    "--select {asset} --partition {dataset}"
)
_MISSING_TABLE = re.compile(r"Table with name (\w+) does not exist")
# Tables whose asset may write no rows for a materialized partition (no items file).
# items: a dataset without an items file; recommender_trial: a preset without an LLM candidate.
MAY_BE_EMPTY = frozenset({"items", "recommender_trial"})


def upstream_missing(asset: str, dataset: str | None, why: str) -> dg.Failure:
    """The step's failure when what it reads was never materialized: which asset, which
    partition, and how to materialize it. Not retried: waiting does not materialize it."""
    partition = f"partition {dataset!r}" if dataset else "the dataset partition being run"
    command = MATERIALIZE_COMMAND.format(asset=asset, dataset=dataset or "DATASET")
    return dg.Failure(
        description=(
            f"upstream asset {asset!r} is not materialized for {partition} ({why}). "
            f"Materialize it first: in the Dagster UI (Catalog > {asset} > Materialize, "
            f"{partition}), or `{command}` under the same LETTINGO_HOME and DAGSTER_HOME, or "
            "`lettingo run` for the whole graph."
        ),
        metadata={"missing_asset": asset, "partition": dataset or ""},
        allow_retries=False,
    )


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    (count,) = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_name = ? AND table_schema = current_schema()",
        [table],
    ).fetchone()
    return bool(count)


def require_partition(
    con: duckdb.DuckDBPyConnection, tables: str | Sequence[str], dataset: str
) -> None:
    """Fail the step with `upstream_missing` unless each of `tables` holds rows of `dataset`
    (for the tables in MAY_BE_EMPTY: unless it exists)."""
    for table in [tables] if isinstance(tables, str) else tables:
        if not table_exists(con, table):
            raise upstream_missing(table, dataset, f"the warehouse has no {table} table")
        if table in MAY_BE_EMPTY:
            continue
        (present,) = con.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE dataset = ?)", [dataset]
        ).fetchone()
        if not present:
            raise upstream_missing(table, dataset, f"{table} has no rows of {dataset!r}")


def missing_table_failure(error: duckdb.CatalogException) -> dg.Failure | None:
    """A read of a table that does not exist, as `upstream_missing` (None for other errors):
    the safety net for reads that no `require_partition` guards."""
    found = _MISSING_TABLE.search(str(error))
    if found is None:
        return None
    return upstream_missing(found.group(1), None, f"the warehouse has no {found.group(1)} table")


def create_table_if_missing(
    con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]
) -> None:
    """Create `table`, or add the columns a newer version of the code writes to one an older
    version made (the other datasets' rows get NULL there), so an upgrade keeps the warehouse."""
    column_sql = ", ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({column_sql})")
    for name, sql_type in columns.items():
        con.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{name}" {sql_type}')


def replace_partition(
    con: duckdb.DuckDBPyConnection,
    table: str,
    dataset: str,
    source: str,
    columns: dict[str, str],
) -> int:
    """Swap the `dataset` rows of `table` for those of `source` (a table or view) in one
    transaction: readers see the old rows or the new ones, never a mix, and a failure keeps the
    old rows."""
    create_table_if_missing(con, table, columns)
    column_list = ", ".join(f'"{name}"' for name in columns)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {table} WHERE dataset = ?", [dataset])
        con.execute(f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {source}")
        count = con.execute(f"SELECT count(*) FROM {table} WHERE dataset = ?", [dataset]).fetchone()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(count[0])


def replace_partition_from_frame(
    con: duckdb.DuckDBPyConnection,
    table: str,
    dataset: str,
    frame: pd.DataFrame,
    columns: dict[str, str],
) -> int:
    view = f"_incoming_{table}"
    con.register(view, frame)
    try:
        return replace_partition(con, table, dataset, view, columns)
    finally:
        con.unregister(view)


def markdown_preview(frame: pd.DataFrame, rows: int = 5, width: int = 60) -> str:
    """A few rows as a Markdown table, long cells (lists of ids) shortened."""

    def shorten(value: object) -> str:
        text = (
            str(list(value))
            if hasattr(value, "__len__") and not isinstance(value, str)
            else str(value)
        )
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    head = frame.head(rows)
    header = "| " + " | ".join(head.columns) + " |"
    divider = "|" + "---|" * len(head.columns)
    body = [
        "| " + " | ".join(shorten(v) for v in row) + " |" for row in head.itertuples(index=False)
    ]
    return "\n".join([header, divider, *body])
