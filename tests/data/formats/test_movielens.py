"""The MovieLens formats: RecBole atomic headers, GroupLens encodings, and malformed records."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from format_samples import (
    SAMPLES,
    BadEdit,
    assert_malformed,
    bad_id,
    expected,
    fetch_table,
    flags,
    load_both,
    replace_line,
    write,
)

from lettingo_dagster.data.formats import load_items

# The GroupLens item files, latin-1 as distributed (the atomic files are UTF-8).
LATIN1_ITEM_FORMATS = ("movielens-100k", "movielens-dat")


@pytest.mark.parametrize("fmt", LATIN1_ITEM_FORMATS)
def test_latin1_item_files_load(tmp_path: Path, fmt: str) -> None:
    sample = SAMPLES[fmt]
    interactions = write(tmp_path / sample.interactions_name, sample.interaction_lines)
    items = write(tmp_path / sample.items_name, sample.item_lines, encoding="latin-1", crlf=True)

    ratings, catalog = load_both(fmt, interactions, items)

    assert catalog == expected(sample)[1]
    assert [row[2] for row in catalog if row[1] == "2"] == ["Misérables, Les"]


def test_windows_1252_bytes_in_u_item_load(tmp_path: Path) -> None:
    # 0x92 (a curly apostrophe) is not latin-1 proper; such files exist in the wild.
    line = "5|Schindler\x92s List (1993)|01-Jan-1993||u|" + flags("Drama", "War")
    items = tmp_path / "u.item"
    items.write_bytes(line.encode("latin-1") + b"\r\n")
    with duckdb.connect() as con:
        assert load_items(con, "movielens-100k", items, table="i", dataset="ds") == 1
        assert fetch_table(con, "i") == [("ds", "5", "Schindler’s List", 1993, "Drama|War", None)]


def test_atomic_free_text_year_is_unknown(tmp_path: Path) -> None:
    # RecBole's own ml-100k.item spells one year 'unkonwn'.
    interactions = write(
        tmp_path / "x.inter",
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t267\t3\t875692955"],
    )
    items = write(
        tmp_path / "x.item",
        [
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
            "267\tunknown\tunkonwn\tunknown",
            "1\tToy Story\t1995\tAnimation Children's Comedy",
        ],
    )
    _, catalog = load_both("movielens-atomic", interactions, items)
    assert catalog == [
        ("ds", "267", "unknown", None, "unknown", None),
        ("ds", "1", "Toy Story", 1995, "Animation|Children's|Comedy", None),
    ]


def test_atomic_columns_are_found_by_name_in_any_order(tmp_path: Path) -> None:
    interactions = write(
        tmp_path / "x.inter",
        [
            "timestamp:float\tcomment:token_seq\titem_id:token\trating:float\tuser_id:token",
            "881250949.0\tgreat fun\t242\t3.5\t196",
            "891717742\t\t302\t5\t186",
        ],
    )
    items = write(
        tmp_path / "x.item",
        [
            "class:token_seq\titem_id:token\tmovie_title:token_seq",
            "Drama\t242\tKolya",
            "\t302\tL.A. Confidential",
        ],
    )

    ratings, catalog = load_both("movielens-atomic", interactions, items)

    assert ratings == [("ds", "196", "242", 3.5, 881250949), ("ds", "186", "302", 5.0, 891717742)]
    assert catalog == [
        ("ds", "242", "Kolya", None, "Drama", None),
        ("ds", "302", "L.A. Confidential", None, "", None),
    ]


# ---------------------------------------------------------------------------------------------
# Malformed files: file name, 1-based line, and the problem

BAD_EDITS: list[BadEdit] = [
    ("movielens-100k", "interactions", lambda ls: [ln.replace("\t", ",") for ln in ls], 1,
     "expected 4 tab-separated fields (user, item, rating, timestamp), found 1"),
    ("movielens-100k", "interactions", replace_line(2, "186\t302\t3"), 2, "found 3"),
    ("movielens-100k", "interactions", replace_line(3, "22\t377\t1\t878887116\t0"), 3, "found 5"),
    ("movielens-100k", "interactions", replace_line(3, "22\t377\tabc\t878887116"), 3,
     "rating 'abc' is not a number"),
    ("movielens-100k", "interactions", replace_line(2, "186\t302\t6\t891717742"), 2,
     "rating '6' is outside the scale 1..5"),
    ("movielens-100k", "interactions", replace_line(4, "244\t51\t2.5\t880606923"), 4,
     "not on the scale's step of 1"),
    ("movielens-100k", "interactions", replace_line(2, "\t302\t3\t891717742"), 2, "empty user id"),
    ("movielens-100k", "interactions", replace_line(2, "186\t \t3\t891717742"), 2, "empty item id"),
    ("movielens-100k", "interactions", replace_line(4, "244\t51\t2\tyesterday"), 4,
     "timestamp 'yesterday' is not a number"),
    ("movielens-100k", "interactions", replace_line(4, "244\t51\t2\t-880606923"), 4, "negative"),
    ("movielens-100k", "interactions", replace_line(1, "196\t242\t3\t881250949000"), 1,
     "too large for unix seconds"),
    ("movielens-100k", "interactions",
     lambda ls: [ls[0], "", ls[1], "244\t51\t2\t"], 4, "empty timestamp"),
    ("movielens-100k", "items", replace_line(2, "267|unknown|||" + flags("unknown")), 2,
     "expected 24 '|'-separated fields"),
    ("movielens-100k", "items", replace_line(3, "2|Misérables (1995)|||u|" + "0|" * 7 + "2|"
                                                 + "0|" * 10 + "0"), 3,
     "genre flag '2' (field 13) is not 0 or 1"),
    ("movielens-100k", "items", replace_line(4, "1|Again (1995)|||u|" + flags("Drama")), 4,
     "duplicate item id '1' (first on line 1)"),
    ("movielens-100k", "items", replace_line(2, "|unknown||||" + flags("unknown")), 2,
     "empty item id"),
    ("movielens-dat", "interactions", lambda ls: [ln.replace("::", "\t") for ln in ls], 1,
     "expected 4 '::'-separated fields (UserID::MovieID::Rating::Timestamp), found 1"),
    ("movielens-dat", "interactions", replace_line(2, "1::185::4.5::838983525::x"), 2, "found 5"),
    ("movielens-dat", "interactions", replace_line(2, "1::185::3.25::838983525"), 2,
     "rating '3.25' is not on the scale's step of 0.5"),
    ("movielens-dat", "interactions", replace_line(3, "2::231::0::838983392"), 3,
     "rating '0' is outside the scale 0.5..5"),
    ("movielens-dat", "interactions", replace_line(3, "2::231::five::838983392"), 3,
     "rating 'five' is not a number"),
    ("movielens-dat", "interactions", replace_line(4, "3::292::1::1998-01-01"), 4,
     "timestamp '1998-01-01' is not a number"),
    ("movielens-dat", "items", replace_line(3, "29\tCity of Lost Children\tDrama"), 3,
     "expected 3 '::'-separated fields"),
    ("movielens-dat", "items", replace_line(4, "2::Again (1995)::Drama"), 4,
     "duplicate item id '2' (first on line 2)"),
    ("movielens-atomic", "interactions", replace_line(3, "186\t302\t3"), 3,
     "expected 4 tab-separated fields (as in the header), found 3"),
    ("movielens-atomic", "interactions", replace_line(5, "244\t51\tnan\t880606923"), 5,
     "rating 'nan' is not a number"),
    ("movielens-atomic", "interactions", replace_line(5, "244\t51\t5.5\t880606923"), 5,
     "outside the scale 0.5..5"),
    ("movielens-atomic", "interactions", replace_line(2, "196\t242\t3\t-1.5"), 2, "negative"),
    ("movielens-atomic", "interactions",
     replace_line(1, "user_id:token\titem_id:token\ttimestamp:float"), 1,
     "header lacks column(s) rating (found: user_id, item_id, timestamp)"),
    ("movielens-atomic", "interactions", lambda ls: ls[1:], 1, "not a RecBole atomic header"),
    ("movielens-atomic", "items", replace_line(1, "movie_title:token_seq\tclass:token_seq"), 1,
     "header lacks column(s) item_id"),
    ("movielens-atomic", "items", replace_line(4, "1\tToy Story\t1995"), 4,
     "expected 4 tab-separated fields"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_EDITS, ids=bad_id)
def test_malformed_record_names_file_line_and_problem(tmp_path: Path, case: BadEdit) -> None:
    assert_malformed(tmp_path, case)
