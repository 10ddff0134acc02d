"""The Amazon formats: the 2018 review-time fallback, repeated metadata, and malformed records."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from format_samples import (
    BadEdit,
    as_csv,
    as_json_array,
    assert_malformed,
    bad_id,
    edit_record,
    fetch_table,
    jsonl,
    truncate_last,
    write,
)

from lettingo_dagster.data.formats import load_interactions, load_items


def test_amazon_2018_falls_back_to_review_time_without_unix_time(tmp_path: Path) -> None:
    path = write(
        tmp_path / "reviews.json",
        jsonl({"overall": 3.0, "reviewerID": "A1", "asin": "B1", "reviewTime": "09 13, 2009"}),
    )
    with duckdb.connect() as con:
        load_interactions(con, "amazon-2018", path, table="r", dataset="ds")
        assert fetch_table(con, "r") == [("ds", "A1", "B1", 3.0, 1252800000)]


def test_repeated_metadata_records_keep_the_first(tmp_path: Path) -> None:
    lines = jsonl(
        {"asin": "B1", "title": "First"},
        {"asin": "B2", "title": "Other"},
        {"asin": "B1", "title": "Repeat"},
    )
    with duckdb.connect() as con:
        rows = load_items(
            con, "amazon-2018", write(tmp_path / "meta.json", lines), table="i", dataset="ds"
        )
        titles = con.execute("SELECT item_id, title FROM i").fetchall()
    assert rows == 2
    assert titles == [("B1", "First"), ("B2", "Other")]


# ---------------------------------------------------------------------------------------------
# Malformed files: file name, 1-based line, and the problem

BAD_EDITS: list[BadEdit] = [
    ("amazon-2018", "interactions", truncate_last, 3, "not valid JSON (a truncated"),
    ("amazon-2018", "interactions", as_json_array, 1, "found a JSON array; expected JSON lines"),
    ("amazon-2018", "interactions", lambda ls: ["[" + ",".join(ls) + "]"], 1, "JSON array"),
    ("amazon-2018", "interactions", as_csv, 1, "not valid JSON"),
    ("amazon-2018", "interactions", lambda ls: [*ls, '"just a string"'], 4,
     "expected a JSON object, found '\"just a string\"'"),
    ("amazon-2018", "interactions", edit_record(2, reviewerID=...), 2,
     "missing field 'reviewerID' (user id)"),
    ("amazon-2018", "interactions", edit_record(2, asin=""), 2, "empty item id (field 'asin')"),
    ("amazon-2023", "interactions", edit_record(2, user_id=" "), 2,
     "empty user id (field 'user_id')"),
    ("amazon-2018", "interactions", edit_record(3, overall="abc"), 3,
     "rating 'abc' is not a number"),
    ("amazon-2018", "interactions", edit_record(3, overall=4.5), 3, "step of 1"),
    ("amazon-2018", "interactions", edit_record(1, overall=0), 1, "outside the scale 1..5"),
    ("amazon-2018", "interactions", edit_record(1, unixReviewTime="soon"), 1,
     "unixReviewTime 'soon' is not a number"),
    ("amazon-2018", "interactions", edit_record(2, unixReviewTime=-5), 2, "negative"),
    ("amazon-2018", "interactions", edit_record(2, unixReviewTime=..., reviewTime="last year"),
     2, "reviewTime 'last year' is not a date"),
    ("amazon-2018", "items", truncate_last, 3, "not valid JSON"),
    ("amazon-2018", "items", edit_record(2, asin=...), 2, "missing field 'asin' (item id)"),
    ("amazon-2023", "interactions", edit_record(2, user_id=...), 2, "missing field 'user_id'"),
    ("amazon-2023", "interactions", edit_record(3, rating=7.0), 3, "outside the scale 1..5"),
    ("amazon-2023", "interactions", edit_record(1, timestamp="May 5"), 1,
     "timestamp 'May 5' is not a number"),
    ("amazon-2023", "interactions", edit_record(1, timestamp=-1588687728923), 1, "negative"),
    ("amazon-2023", "interactions", truncate_last, 3, "not valid JSON"),
    ("amazon-2023", "items", edit_record(3, parent_asin=...), 3,
     "missing field 'parent_asin' (item id)"),
    ("amazon-2023", "items", as_json_array, 1, "JSON array"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_EDITS, ids=bad_id)
def test_malformed_record_names_file_line_and_problem(tmp_path: Path, case: BadEdit) -> None:
    assert_malformed(tmp_path, case)
