"""The reading engine, through every format: real layouts and their encoding variants, whole-file
problems, validation summaries, and what a failed load leaves behind."""

from __future__ import annotations

import gzip
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from format_samples import SAMPLES, expected, fetch_table, jsonl, load_both, load_one, write

from lettingo_dagster.data.formats import (
    FORMATS,
    DataFormatError,
    RatingScale,
    load_interactions,
    load_items,
    rating_scale,
    validate_files,
)
from lettingo_dagster.data.formats.amazon import AMAZON_FORMATS
from lettingo_dagster.data.formats.dispatch import _SPECS
from lettingo_dagster.data.formats.yelp import YELP_FORMATS

JSON_FORMATS = (*AMAZON_FORMATS, *YELP_FORMATS)


def test_every_known_format_has_one_loader() -> None:
    # The names live in the dataset registry; each family's table implements some of them.
    assert list(_SPECS) == list(FORMATS)


# ---------------------------------------------------------------------------------------------
# Valid files


@pytest.mark.parametrize("fmt", FORMATS)
def test_real_layout_loads_exact_rows(tmp_path: Path, fmt: str) -> None:
    sample = SAMPLES[fmt]
    interactions = write(tmp_path / sample.interactions_name, sample.interaction_lines)
    items = write(tmp_path / sample.items_name, sample.item_lines)

    assert load_both(fmt, interactions, items) == expected(sample)


def test_loaded_tables_have_the_documented_schema(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    with duckdb.connect() as con:
        load_interactions(
            con,
            "movielens-100k",
            write(tmp_path / "u.data", sample.interaction_lines),
            table="ratings",
            dataset="ds",
        )
        load_items(
            con,
            "movielens-100k",
            write(tmp_path / "u.item", sample.item_lines),
            table="catalog",
            dataset="ds",
        )
        ratings = con.execute("DESCRIBE ratings").fetchall()
        catalog = con.execute("DESCRIBE catalog").fetchall()
    assert [(c[0], c[1]) for c in ratings] == [
        ("dataset", "VARCHAR"),
        ("user_id", "VARCHAR"),
        ("item_id", "VARCHAR"),
        ("rating", "DOUBLE"),
        ("timestamp", "BIGINT"),
    ]
    assert [(c[0], c[1]) for c in catalog] == [
        ("dataset", "VARCHAR"),
        ("item_id", "VARCHAR"),
        ("title", "VARCHAR"),
        ("year", "INTEGER"),
        ("genres", "VARCHAR"),
        ("description", "VARCHAR"),
    ]


def _gzip(path: Path, lines: list[str]) -> Path:
    """Amazon and Yelp dumps come gzipped; DuckDB reads them as they are."""
    compressed = path.with_name(path.name + ".gz")
    with gzip.open(compressed, "wb") as out:
        out.write(("\n".join(lines) + "\n").encode("utf-8"))
    return compressed


def _with_blank_lines(lines: list[str], header_lines: int) -> list[str]:
    return [*lines[: header_lines + 1], "", "   ", *lines[header_lines + 1 :], ""]


def _with_extra_fields(lines: list[str]) -> list[str]:
    records = [json.loads(line) for line in lines]
    return jsonl(*({"zz_new": {"nested": [1, "a,b"]}, **record} for record in records))


VARIANTS: dict[str, Callable[[Path, list[str], int], Path]] = {
    "bom": lambda path, lines, _: write(path, lines, bom=True),
    "crlf": lambda path, lines, _: write(path, lines, crlf=True),
    "bom+crlf": lambda path, lines, _: write(path, lines, bom=True, crlf=True),
    "no-final-newline": lambda path, lines, _: write(path, lines, final_newline=False),
    "blank-lines": lambda path, lines, header: write(path, _with_blank_lines(lines, header)),
    "gzip": lambda path, lines, _: _gzip(path, lines),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_encoding_and_layout_variants_load_the_same_rows(
    tmp_path: Path, fmt: str, variant: str
) -> None:
    sample = SAMPLES[fmt]
    make = VARIANTS[variant]
    interactions = make(
        tmp_path / sample.interactions_name, sample.interaction_lines, sample.header_lines
    )
    items = make(tmp_path / sample.items_name, sample.item_lines, sample.header_lines)

    assert load_both(fmt, interactions, items) == expected(sample)


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_json_lines_with_unknown_fields_load(tmp_path: Path, fmt: str) -> None:
    sample = SAMPLES[fmt]
    interactions = write(
        tmp_path / sample.interactions_name, _with_extra_fields(sample.interaction_lines)
    )
    items = write(tmp_path / sample.items_name, _with_extra_fields(sample.item_lines))

    assert load_both(fmt, interactions, items) == expected(sample)


def test_validate_files_summarizes(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-dat"]
    interactions = write(tmp_path / "ratings.dat", sample.interaction_lines)
    items = write(tmp_path / "movies.dat", sample.item_lines)

    summary = validate_files("movielens-dat", interactions, items)

    assert (summary.rows, summary.users, summary.items) == (4, 3, 4)
    assert (summary.rating_min, summary.rating_max) == (0.5, 5.0)
    assert summary.scale == RatingScale(0.5, 5.0, 0.5)
    assert summary.item_rows == 4
    assert (summary.interactions_path, summary.items_path) == (interactions, items)
    text = summary.render()
    for fragment in ("rows:         4", "users:        3", "0.5..5 step 0.5", "observed 0.5..5"):
        assert fragment in text
    assert str(items) in text


def test_validate_files_without_items(tmp_path: Path) -> None:
    sample = SAMPLES["yelp"]
    summary = validate_files("yelp", write(tmp_path / "review.json", sample.interaction_lines))
    assert (summary.rows, summary.users, summary.items, summary.item_rows) == (2, 2, 2, None)
    assert summary.items_path is None
    assert "items:" in summary.render() and "rows:         2" in summary.render()


def test_rating_scales() -> None:
    assert rating_scale("movielens-100k") == RatingScale(1.0, 5.0, 1.0)
    assert rating_scale("movielens-dat") == RatingScale(0.5, 5.0, 0.5)
    assert rating_scale("amazon-2023") == RatingScale(1.0, 5.0, 1.0)
    assert rating_scale("yelp") == RatingScale(1.0, 5.0, 1.0)
    with pytest.raises(ValueError, match="movielens-atomic"):
        rating_scale("netflix")


def test_validate_files_reports_the_bad_file(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    interactions = write(tmp_path / "u.data", sample.interaction_lines)
    items = write(tmp_path / "u.item", [*sample.item_lines[:2], "3|Broken"])

    with pytest.raises(DataFormatError) as caught:
        validate_files("movielens-100k", interactions, items)

    assert str(caught.value) == (
        f"{items}: line 3: expected 24 '|'-separated fields (id|title|release date|"
        "video release date|IMDb URL|19 genre flags), found 2"
    )


# ---------------------------------------------------------------------------------------------
# Whole files that are not a format's text at all, and line numbers in big ones


def _binary(path: Path) -> Path:
    garbage = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(7).randbytes(4000)
    path.write_bytes(garbage)
    return path


# Whole-file problems: (make the file at a path, words in the problem)
WHOLE_FILE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda path: path, "file not found"),
    "empty": (lambda path: write(path, [], final_newline=False), "file is empty"),
    "blank-only": (lambda path: write(path, ["", "  ", ""]), "no records"),
    "binary": (_binary, "binary"),
}


@pytest.mark.parametrize("case", WHOLE_FILE_CASES)
@pytest.mark.parametrize("kind", ["interactions", "items"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_file_problems(tmp_path: Path, fmt: str, kind: str, case: str) -> None:
    sample = SAMPLES[fmt]
    name = sample.interactions_name if kind == "interactions" else sample.items_name
    make, words = WHOLE_FILE_CASES[case]
    path = make(tmp_path / name)
    if fmt == "movielens-atomic" and case == "blank-only":
        path = write(
            path, [sample.interaction_lines[0] if kind == "interactions" else sample.item_lines[0]]
        )

    with pytest.raises(DataFormatError) as caught:
        load_one(fmt, kind, path)

    assert str(caught.value).startswith(f"{path}: ")
    assert words in caught.value.problem.lower()
    assert "Error:" not in str(caught.value)  # a sentence, not DuckDB's raw message


def test_unknown_format_lists_the_formats(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", SAMPLES["movielens-100k"].interaction_lines)
    with pytest.raises(DataFormatError) as caught:
        validate_files("movielens-20m", path)
    assert str(caught.value) == (
        f"{path}: unknown format 'movielens-20m'; expected one of: movielens-atomic, "
        "movielens-100k, movielens-dat, amazon-2018, amazon-2023, yelp"
    )


def test_line_numbers_hold_across_parallel_chunks(tmp_path: Path) -> None:
    # Large enough for DuckDB to read in several chunks on several threads.
    lines = [f"{i % 900 + 1}\t{i % 1600 + 1}\t{i % 5 + 1}\t{880000000 + i}" for i in range(400_000)]
    lines[345_677] = "7\t8\t9\t880000000"
    path = write(tmp_path / "u.data", lines)
    with duckdb.connect() as con:
        con.execute("SET threads = 4")
        with pytest.raises(DataFormatError, match=r"u\.data: line 345678: rating '9' is outside"):
            load_interactions(con, "movielens-100k", path, table="t", dataset="ds")
        lines[345_677] = "7\t8\t4\t880000000"
        rows = load_interactions(con, "movielens-100k", write(path, lines), table="t", dataset="d")
        assert rows == 400_000
        assert con.execute("SELECT user_id, item_id FROM t WHERE rowid = 345677").fetchone() == (
            "7",
            "8",
        )


# ---------------------------------------------------------------------------------------------
# A failed load leaves the target as it was


def test_failed_load_keeps_the_previous_table(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-dat"]
    good = write(tmp_path / "ratings.dat", sample.interaction_lines)
    bad = write(tmp_path / "bad.dat", [*sample.interaction_lines, "4::5::9::838983421"])
    with duckdb.connect() as con:
        con.execute("CREATE SCHEMA raw")
        load_interactions(con, "movielens-dat", good, table="raw.ratings", dataset="ml")
        before = fetch_table(con, "raw.ratings")

        with pytest.raises(DataFormatError, match="line 5: rating '9' is outside"):
            load_interactions(con, "movielens-dat", bad, table="raw.ratings", dataset="ml")
        with pytest.raises(DataFormatError, match="binary"):
            load_interactions(
                con, "movielens-dat", _binary(tmp_path / "x.dat"), table="raw.ratings", dataset="ml"
            )

        assert fetch_table(con, "raw.ratings") == before
        assert len(before) == 4
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        assert tables == [("raw", "ratings")]  # no staging table left behind


def test_failed_first_load_creates_nothing(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    bad = write(tmp_path / "u.item", [*sample.item_lines, "5|Late|x"])
    with duckdb.connect() as con:
        with pytest.raises(DataFormatError, match="line 5"):
            load_items(con, "movielens-100k", bad, table="items", dataset="ml")
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)


def test_reload_replaces_the_table(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    with duckdb.connect() as con:
        load_interactions(
            con,
            "movielens-100k",
            write(tmp_path / "a", sample.interaction_lines),
            table="t",
            dataset="first",
        )
        rows = load_interactions(
            con,
            "movielens-100k",
            write(tmp_path / "b", sample.interaction_lines[:2]),
            table="t",
            dataset="second",
        )
        assert rows == 2
        assert con.execute("SELECT DISTINCT dataset FROM t").fetchall() == [("second",)]


def test_caller_connection_settings_are_restored(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        load_interactions(
            con,
            "movielens-100k",
            write(tmp_path / "u.data", sample.interaction_lines),
            table="t",
            dataset="ds",
        )
        assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (
            False,
        )
        assert [row[1] for row in fetch_table(con, "t")] == ["196", "186", "22", "244"]


def test_load_inside_the_callers_transaction(tmp_path: Path) -> None:
    sample = SAMPLES["movielens-100k"]
    path = write(tmp_path / "u.data", _with_blank_lines(sample.interaction_lines, 0))
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS old")
        con.begin()
        assert load_interactions(con, "movielens-100k", path, table="t", dataset="ds") == 4
        con.rollback()
        assert fetch_table(con, "t") == [(1,)]
        con.begin()
        load_interactions(con, "movielens-100k", path, table="t", dataset="ds")
        con.commit()
        assert fetch_table(con, "t") == expected(sample)[0]


def test_error_fields_and_pickling(tmp_path: Path) -> None:
    error = DataFormatError(tmp_path / "u.data", "rating 'abc' is not a number", "line 3")
    assert str(error) == f"{tmp_path / 'u.data'}: line 3: rating 'abc' is not a number"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.location, copy.problem, str(copy)) == (
        error.path,
        error.location,
        error.problem,
        str(error),
    )
    assert str(DataFormatError("f.json", "file is empty")) == "f.json: file is empty"
