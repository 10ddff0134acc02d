"""The Amazon review formats, both JSON lines: the 2018 dump (``Books_5.json`` and
``meta_Books.json``) and the 2023 one (``All_Beauty.jsonl`` and ``meta_All_Beauty.jsonl``)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lettingo_dagster.data.formats.engine import (
    Format,
    Plan,
    RatingScale,
    json_interactions,
    json_items,
    not_a_number,
    shown,
    sql_str,
    time_checks,
)


def _amazon2018_interactions(
    con: duckdb.DuckDBPyConnection, path: Path, scale: RatingScale
) -> Plan:
    # unixReviewTime is the timestamp; reviewTime ("09 13, 2009") stands in when it is absent.
    review_time = "try_strptime(trim(v[5]), '%m %d, %Y')"
    time_raw = "trim(coalesce(v[4], v[5]))"
    seconds = f"CASE WHEN v[4] IS NOT NULL THEN try_cast(trim(v[4]) AS DOUBLE) ELSE epoch({review_time}) END"
    unparsed = (
        "CASE WHEN v[4] IS NOT NULL THEN "
        + not_a_number("unixReviewTime", "time_raw")
        + " ELSE 'reviewTime ' || "
        + shown("time_raw")
        + " || ' is not a date like ''09 13, 2009''' END"
    )
    return json_interactions(
        paths=("reviewerID", "asin", "overall", "unixReviewTime", "reviewTime"),
        user="v[1]",
        item="v[2]",
        rating="v[3]",
        time_raw=time_raw,
        seconds=seconds,
        user_field="reviewerID",
        item_field="asin",
        rating_field="overall",
        time_checks=time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'unixReviewTime' (timestamp)",
            unparsed=unparsed,
            label="unixReviewTime",
        ),
        scale=scale,
    )


def _amazon2023_interactions(
    con: duckdb.DuckDBPyConnection, path: Path, scale: RatingScale
) -> Plan:
    # The 2023 timestamps are unix milliseconds.
    return json_interactions(
        paths=("user_id", "parent_asin", "asin", "rating", "timestamp"),
        user="v[1]",
        item="coalesce(nullif(trim(v[2]), ''), v[3])",
        rating="v[4]",
        time_raw="trim(v[5])",
        seconds="try_cast(trim(v[5]) AS DOUBLE) / 1000",
        user_field="user_id",
        item_field="parent_asin",
        rating_field="rating",
        time_checks=time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'timestamp'",
            unparsed=not_a_number("timestamp", "time_raw"),
            label="timestamp",
            unit="milliseconds",
        ),
        scale=scale,
    )


def _year_in(text: str) -> str:
    """The first plausible 4-digit year anywhere in ``text``, else NULL."""
    return (
        f"try_cast(nullif(regexp_extract({text}, "
        r"'(?:^|[^0-9])((?:1[89]|20)[0-9]{2})(?:[^0-9]|$)', 1), '') AS INTEGER)"
    )


def _json_join(value: str, sep: str) -> str:
    """A JSON array of strings joined by ``sep`` (a JSON string as itself); NULL otherwise."""
    return (
        f"CASE json_type({value}) "
        f"WHEN 'ARRAY' THEN array_to_string(list_filter("
        f"list_transform(from_json({value}, '[\"VARCHAR\"]'), lambda s: trim(s)), "
        f"lambda s: s <> ''), {sql_str(sep)}) "
        f"WHEN 'VARCHAR' THEN trim({value}->>'$') END"
    )


def _amazon2018_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    date_text = "v[5]->>'$'"  # "January 1, 2010", "", or stray HTML
    return json_items(
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


def _amazon2023_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    # The year hides in date-like "details" entries: "Date First Available", "Publication date".
    detail_dates = (
        "array_to_string(regexp_extract_all(CAST(v[7] AS VARCHAR), "
        '\'"[^"]*[Dd]ate[^"]*"\\s*:\\s*"([^"]*)"\', 1), \' \')'
    )
    return json_items(
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


AMAZON_FORMATS: dict[str, Format] = {
    "amazon-2018": Format(
        scale=RatingScale(1.0, 5.0, 1.0),
        interactions=_amazon2018_interactions,
        items=_amazon2018_items,
    ),
    "amazon-2023": Format(
        scale=RatingScale(1.0, 5.0, 1.0),
        interactions=_amazon2023_interactions,
        items=_amazon2023_items,
    ),
}
