"""The Yelp format: malformed review and business records name the file, line and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from format_samples import BadEdit, as_csv, assert_malformed, bad_id, edit_record, truncate_last

BAD_EDITS: list[BadEdit] = [
    ("yelp", "interactions", edit_record(2, date="07/07/2018"), 2,
     "date '07/07/2018' is not a date like '2018-07-07 22:09:11'"),
    ("yelp", "interactions", edit_record(2, date="1969-12-31 23:59:59"), 2,
     "date '1969-12-31 23:59:59' is before 1970"),
    ("yelp", "interactions", edit_record(1, stars="four"), 1, "rating 'four' is not a number"),
    ("yelp", "interactions", edit_record(1, business_id=...), 1, "missing field 'business_id'"),
    ("yelp", "interactions", truncate_last, 2, "not valid JSON"),
    ("yelp", "items", edit_record(2, business_id=" "), 2, "empty item id (field 'business_id')"),
    ("yelp", "items", as_csv, 1, "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_EDITS, ids=bad_id)
def test_malformed_record_names_file_line_and_problem(tmp_path: Path, case: BadEdit) -> None:
    assert_malformed(tmp_path, case)
