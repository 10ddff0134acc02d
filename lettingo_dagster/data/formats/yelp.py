"""The Yelp open dataset, JSON lines: ``yelp_academic_dataset_review.json`` for the ratings and
``yelp_academic_dataset_business.json`` for the items (businesses)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lettingo_dagster.data.formats.engine import (
    Format,
    Plan,
    RatingScale,
    json_interactions,
    json_items,
    shown,
    time_checks,
)


def _yelp_interactions(con: duckdb.DuckDBPyConnection, path: Path, scale: RatingScale) -> Plan:
    # Yelp dates are local wall-clock strings; they are stored as if UTC.
    parsed = "try_strptime(trim(v[4]), ['%Y-%m-%d %H:%M:%S', '%Y-%m-%d'])"
    return json_interactions(
        paths=("user_id", "business_id", "stars", "date"),
        user="v[1]",
        item="v[2]",
        rating="v[3]",
        time_raw="trim(v[4])",
        seconds=f"epoch({parsed})",
        user_field="user_id",
        item_field="business_id",
        rating_field="stars",
        time_checks=time_checks(
            "time_raw",
            "time_value",
            missing="missing field 'date'",
            unparsed="'date ' || "
            + shown("time_raw")
            + " || ' is not a date like ''2018-07-07 22:09:11'''",
            label="date",
            negative="is before 1970",
        ),
        scale=scale,
    )


def _yelp_items(con: duckdb.DuckDBPyConnection, path: Path) -> Plan:
    return json_items(
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


YELP_FORMATS: dict[str, Format] = {
    "yelp": Format(
        scale=RatingScale(1.0, 5.0, 1.0),
        interactions=_yelp_interactions,
        items=_yelp_items,
    ),
}
