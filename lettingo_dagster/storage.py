"""Writing dataset partitions of DuckDB tables atomically."""

from __future__ import annotations

import duckdb
import pandas as pd


def create_table_if_missing(
    con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]
) -> None:
    column_sql = ", ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({column_sql})")


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
