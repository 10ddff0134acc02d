"""Raw-file loaders: each format's real layout, its encoding quirks, and every malformed case.

Each format gets a few records written here in its distributed layout (no third-party files are
committed); the tests assert the exact rows loaded and, for broken files, that the error names
the file, the 1-based line and the problem.
"""

from __future__ import annotations

import calendar
import gzip
import json
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from lettingo_dagster.data.formats import (
    FORMATS,
    DataFormatError,
    RatingScale,
    load_interactions,
    load_items,
    rating_scale,
    validate_files,
)

Rating = tuple[str, str, float, int]  # user_id, item_id, rating, unix seconds
Item = tuple[str, str, int | None, str, str | None]  # item_id, title, year, genres, description


def jsonl(*records: dict) -> list[str]:
    return [json.dumps(record, ensure_ascii=False) for record in records]


def flags(*genres: str) -> str:
    """The 19 u.item genre flags with ``genres`` set."""
    names = (
        "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
        "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
        "Romance", "Sci-Fi", "Thriller", "War", "Western",
    )  # fmt: skip
    assert set(genres) <= set(names)
    return "|".join("1" if name in genres else "0" for name in names)


def utc(text: str) -> int:
    return calendar.timegm(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timetuple())


@dataclass(frozen=True)
class Sample:
    """One format's files as distributed, and what loading them must give."""

    interactions_name: str
    interaction_lines: list[str]
    ratings: list[Rating]
    items_name: str
    item_lines: list[str]
    items: list[Item]
    header_lines: int = 0  # RecBole atomic files start with a header


# MovieLens-100K's own records, in both of its layouts (u.data / u.item and the atomic files):
# loading either must give these rows.
ML100K_RATINGS: list[Rating] = [
    ("196", "242", 3.0, 881250949),
    ("186", "302", 3.0, 891717742),
    ("22", "377", 1.0, 878887116),
    ("244", "51", 2.0, 880606923),
]
ML100K_ITEMS: list[Item] = [
    ("1", "Toy Story", 1995, "Animation|Children's|Comedy", None),
    ("267", "unknown", None, "unknown", None),
    ("2", "Misérables, Les", 1995, "Drama", None),
    ("4", "Kiss Me Deadly", 1955, "Film-Noir|Sci-Fi", None),
]

SAMPLES: dict[str, Sample] = {
    "movielens-atomic": Sample(
        interactions_name="ml-100k.inter",
        interaction_lines=[
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "196\t242\t3\t881250949",
            "186\t302\t3\t891717742",
            "22\t377\t1\t878887116",
            "244\t51\t2\t880606923",
        ],
        ratings=ML100K_RATINGS,
        items_name="ml-100k.item",
        item_lines=[
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
            "1\tToy Story\t1995\tAnimation Children's Comedy",
            "267\tunknown\t\tunknown",
            "2\tMisérables, Les\t1995\tDrama",
            "4\tKiss Me Deadly\t1955\tFilm-Noir Sci-Fi",
        ],
        items=ML100K_ITEMS,
        header_lines=1,
    ),
    "movielens-100k": Sample(
        interactions_name="u.data",
        interaction_lines=[
            "196\t242\t3\t881250949",
            "186\t302\t3\t891717742",
            "22\t377\t1\t878887116",
            "244\t51\t2\t880606923",
        ],
        ratings=ML100K_RATINGS,
        items_name="u.item",
        item_lines=[
            "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
            + flags("Animation", "Children's", "Comedy"),
            "267|unknown||||" + flags("unknown"),
            "2|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/Les|" + flags("Drama"),
            "4|Kiss Me Deadly|01-Jan-1955||http://us.imdb.com/K|" + flags("Film-Noir", "Sci-Fi"),
        ],
        items=ML100K_ITEMS,  # u.item: the year comes from the release date
    ),
    "movielens-dat": Sample(
        interactions_name="ratings.dat",
        interaction_lines=[
            "1::122::5::838985046",
            "1::185::4.5::838983525",
            "2::231::3::838983392",
            "3::292::0.5::838983421",
        ],
        ratings=[
            ("1", "122", 5.0, 838985046),
            ("1", "185", 4.5, 838983525),
            ("2", "231", 3.0, 838983392),
            ("3", "292", 0.5, 838983421),
        ],
        items_name="movies.dat",
        item_lines=[
            "1::Toy Story (1995)::Adventure|Animation|Children|Comedy|Fantasy",
            "2::Misérables, Les (1995)::Drama",
            "29::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi",
            '65133::Blackadder Back & Forth, "Quoted" (no year)::(no genres listed)',
        ],
        items=[
            ("1", "Toy Story", 1995, "Adventure|Animation|Children|Comedy|Fantasy", None),
            ("2", "Misérables, Les", 1995, "Drama", None),
            (
                "29",
                "City of Lost Children, The (Cité des enfants perdus, La)",
                1995,
                "Adventure|Sci-Fi",
                None,
            ),
            ("65133", 'Blackadder Back & Forth, "Quoted" (no year)', None, "", None),
        ],
    ),
    "amazon-2018": Sample(
        interactions_name="Books_5.json",
        interaction_lines=jsonl(
            {
                "overall": 5.0,
                "verified": True,
                "reviewTime": "09 13, 2009",
                "reviewerID": "A2SUAM1J3GNN3B",
                "asin": "0000013714",
                "reviewerName": "J. McDonald",
                "reviewText": 'I bought this for my husband, "loved it".',
                "summary": "Heavenly",
                "unixReviewTime": 1252800000,
                "vote": "1,024",
                "style": {"Format:": " Hardcover"},
                "image": ["https://images-na.ssl-images-amazon.com/images/I/1.jpg"],
            },
            {
                "overall": 4.0,
                "verified": False,
                "reviewTime": "12 18, 2012",
                "reviewerID": "A2SUAM1J3GNN3B",
                "asin": "0001050230",
                "reviewText": "Fine, ok",
                "summary": "Good",
                "unixReviewTime": 1355788800,
                "vote": "3",
            },
            {
                "overall": 1.0,
                "reviewerID": "AO94DHGC771SJ",
                "asin": "0000013714",
                "reviewTime": "01 02, 2015",
                "unixReviewTime": 1420156800,
                "reviewText": "Café ☕",
            },
        ),
        ratings=[
            ("A2SUAM1J3GNN3B", "0000013714", 5.0, 1252800000),
            ("A2SUAM1J3GNN3B", "0001050230", 4.0, 1355788800),
            ("AO94DHGC771SJ", "0000013714", 1.0, 1420156800),
        ],
        items_name="meta_Books.json",
        item_lines=jsonl(
            {
                "category": ["Books", "Christian Books & Bibles", "Worship & Devotion"],
                "description": ["A hymnal.", "Large print edition."],
                "title": "Heavenly Highway Hymns",
                "brand": "Stamps Baxter",
                "date": "January 1, 2010",
                "price": "$9.99",
                "asin": "0000013714",
                "also_buy": ["0001050230"],
                "rank": "1,234,567 in Books (",
            },
            {
                "category": [],
                "description": "",
                "title": "Chess: Two Players",
                "date": "",
                "asin": "0001050230",
                "price": "",
                "feature": [],
            },
            {
                "asin": "B00ABC1234",
                "title": "Notebook",
                "description": "One string.",
                "category": ["Office Products"],
                "date": "<div>2 x 3 inches</div>",
            },
        ),
        items=[
            (
                "0000013714",
                "Heavenly Highway Hymns",
                2010,
                "Books|Christian Books & Bibles|Worship & Devotion",
                "A hymnal. Large print edition.",
            ),
            ("0001050230", "Chess: Two Players", None, "", None),
            ("B00ABC1234", "Notebook", None, "Office Products", "One string."),
        ],
    ),
    "amazon-2023": Sample(
        interactions_name="All_Beauty.jsonl",
        interaction_lines=jsonl(
            {
                "rating": 5.0,
                "title": "Such a lovely scent",
                "text": "Smells good",
                "images": [],
                "asin": "B00YQ6X8EO",
                "parent_asin": "B00YQ6X8EO",
                "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
                "timestamp": 1588687728923,
                "helpful_vote": 0,
                "verified_purchase": True,
            },
            {
                "rating": 4.0,
                "title": "Works",
                "text": "ok",
                "images": [{"small_image_url": "x"}],
                "asin": "B081TJ8YS3",
                "parent_asin": "B081TJ8YS3",
                "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
                "timestamp": 1588615855070,
                "helpful_vote": 1,
                "verified_purchase": True,
            },
            {
                "rating": 1.0,
                "title": "No",
                "text": "",
                "images": [],
                "asin": "B07PNNCSP9",
                "user_id": "AE74DYR3QUGVPZJ3P7RFWBGIX7XQ",
                "timestamp": 1564372306999,
                "helpful_vote": 2,
                "verified_purchase": False,
            },
        ),
        ratings=[
            ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 5.0, 1588687728),
            ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B081TJ8YS3", 4.0, 1588615855),
            ("AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "B07PNNCSP9", 1.0, 1564372306),  # asin fallback
        ],
        items_name="meta_All_Beauty.jsonl",
        item_lines=jsonl(
            {
                "main_category": "All Beauty",
                "title": "Howard LC0008 Leather Conditioner",
                "average_rating": 4.8,
                "rating_number": 10,
                "features": [],
                "description": ["Conditions leather.", "8 oz."],
                "price": None,
                "images": [],
                "videos": [],
                "store": "Howard Products",
                "categories": [],
                "details": {
                    "Package Dimensions": "7 x 2 x 1 inches",
                    "Date First Available": "March 5, 2017",
                },
                "parent_asin": "B01CUPMQZE",
                "bought_together": None,
            },
            {
                "main_category": "Books",
                "title": "The Old Man and the Sea",
                "average_rating": 4.5,
                "rating_number": 99,
                "features": ["Paperback"],
                "description": [],
                "price": 9.5,
                "categories": ["Books", "Literature & Fiction"],
                "details": {
                    "Publisher": "Scribner; 1st edition (2 July 1995)",
                    "Publication date": "July 2, 1995",
                    "ISBN 13": "978-0684801223",
                },
                "parent_asin": "0684801221",
            },
            {
                "main_category": None,
                "title": "Mystery Box",
                "categories": [],
                "description": [],
                "details": {},
                "parent_asin": "B0000000X1",
            },
        ),
        items=[
            (
                "B01CUPMQZE",
                "Howard LC0008 Leather Conditioner",
                2017,
                "All Beauty",
                "Conditions leather. 8 oz.",
            ),
            ("0684801221", "The Old Man and the Sea", 1995, "Books|Literature & Fiction", None),
            ("B0000000X1", "Mystery Box", None, "", None),
        ],
    ),
    "yelp": Sample(
        interactions_name="yelp_academic_dataset_review.json",
        interaction_lines=jsonl(
            {
                "review_id": "KU_O5udG6zpxOg-VcAEodg",
                "user_id": "mh_-eMZ6K5RLWhZyISBhwA",
                "business_id": "XQfwVwDr-v0ZS3_CbbE5Xw",
                "stars": 3.0,
                "useful": 0,
                "funny": 0,
                "cool": 0,
                "text": "If you decide to eat here, just be aware...",
                "date": "2018-07-07 22:09:11",
            },
            {
                "review_id": "BiTunyQ73aT9WBnpR9DZGw",
                "user_id": "OyoGAe7OKpv6SyGZT5g77Q",
                "business_id": "7ATYjTIgM3jUlt4UM3IypQ",
                "stars": 5.0,
                "useful": 1,
                "funny": 0,
                "cool": 1,
                "text": "I've taken a lot of spin classes.",
                "date": "2012-01-03 15:28:18",
            },
        ),
        ratings=[
            ("mh_-eMZ6K5RLWhZyISBhwA", "XQfwVwDr-v0ZS3_CbbE5Xw", 3.0, utc("2018-07-07 22:09:11")),
            ("OyoGAe7OKpv6SyGZT5g77Q", "7ATYjTIgM3jUlt4UM3IypQ", 5.0, utc("2012-01-03 15:28:18")),
        ],
        items_name="yelp_academic_dataset_business.json",
        item_lines=jsonl(
            {
                "business_id": "Pns2l4eNsfO8kk83dixA6A",
                "name": "Abby Rappoport, LAC, CMQ",
                "address": "1616 Chapala St, Ste 2",
                "city": "Santa Barbara",
                "state": "CA",
                "postal_code": "93101",
                "latitude": 34.4266787,
                "longitude": -119.7111968,
                "stars": 5.0,
                "review_count": 7,
                "is_open": 0,
                "attributes": {"ByAppointmentOnly": "True"},
                "categories": "Doctors, Traditional Chinese Medicine, Naturopathic/Holistic, Acupuncture",
                "hours": None,
            },
            {
                "business_id": "XQfwVwDr-v0ZS3_CbbE5Xw",
                "name": "Café Ole",
                "address": "",
                "city": "",
                "state": "",
                "stars": 4.0,
                "review_count": 3,
                "is_open": 1,
                "attributes": None,
                "categories": None,
                "hours": {"Monday": "0:0-0:0"},
            },
        ),
        items=[
            (
                "Pns2l4eNsfO8kk83dixA6A",
                "Abby Rappoport, LAC, CMQ",
                None,
                "Doctors|Traditional Chinese Medicine|Naturopathic/Holistic|Acupuncture",
                "Santa Barbara, CA",
            ),
            ("XQfwVwDr-v0ZS3_CbbE5Xw", "Café Ole", None, "", None),
        ],
    ),
}

JSON_FORMATS = ("amazon-2018", "amazon-2023", "yelp")
LATIN1_ITEM_FORMATS = ("movielens-100k", "movielens-dat")


def write(
    path: Path,
    lines: list[str],
    *,
    bom: bool = False,
    crlf: bool = False,
    encoding: str = "utf-8",
    final_newline: bool = True,
) -> Path:
    newline = "\r\n" if crlf else "\n"
    data = (newline.join(lines) + (newline if final_newline else "")).encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def fetch_table(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM {table}").fetchall()


def load_both(fmt: str, interactions: Path, items: Path) -> tuple[list[tuple], list[tuple]]:
    with duckdb.connect() as con:
        n_ratings = load_interactions(con, fmt, interactions, table="ratings", dataset="ds")
        n_items = load_items(con, fmt, items, table="catalog", dataset="ds")
        ratings, catalog = fetch_table(con, "ratings"), fetch_table(con, "catalog")
    assert (n_ratings, n_items) == (len(ratings), len(catalog))
    return ratings, catalog


def expected(sample: Sample) -> tuple[list[tuple], list[tuple]]:
    return [("ds", *row) for row in sample.ratings], [("ds", *row) for row in sample.items]


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


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_json_lines_with_unknown_fields_load(tmp_path: Path, fmt: str) -> None:
    sample = SAMPLES[fmt]
    interactions = write(
        tmp_path / sample.interactions_name, _with_extra_fields(sample.interaction_lines)
    )
    items = write(tmp_path / sample.items_name, _with_extra_fields(sample.item_lines))

    assert load_both(fmt, interactions, items) == expected(sample)


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


# ---------------------------------------------------------------------------------------------
# Malformed files: file name, 1-based line, and the problem


def replace_line(number: int, text: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        return [text if i == number else line for i, line in enumerate(lines, start=1)]

    return edit


def edit_record(number: int, **changes: object) -> Callable[[list[str]], list[str]]:
    """Change fields of the JSON record on ``number``; a value of ... drops the field."""

    def edit(lines: list[str]) -> list[str]:
        record = json.loads(lines[number - 1])
        for key, value in changes.items():
            if value is ...:
                record.pop(key)
            else:
                record[key] = value
        return [*lines[: number - 1], json.dumps(record), *lines[number:]]

    return edit


def truncate_last(lines: list[str]) -> list[str]:
    return [*lines[:-1], lines[-1][: len(lines[-1]) // 2]]


def as_json_array(lines: list[str]) -> list[str]:
    return json.dumps([json.loads(line) for line in lines], indent=2).splitlines()


def as_csv(lines: list[str]) -> list[str]:
    records = [json.loads(line) for line in lines]
    keys = list(records[0])[:4]
    return [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in records]


# (format, "interactions" | "items", edit of the sample lines, expected line, words in problem)
BAD_EDITS: list[tuple[str, str, Callable[[list[str]], list[str]], int, str]] = [
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


def _bad_id(case: tuple) -> str:
    fmt, kind, _edit, line, words = case
    return f"{fmt}-{kind}-line{line}-{words[:30]}"


def _sample_file(tmp_path: Path, fmt: str, kind: str, lines: list[str]) -> Path:
    sample = SAMPLES[fmt]
    name = sample.interactions_name if kind == "interactions" else sample.items_name
    return write(tmp_path / name, lines)


def _load_one(fmt: str, kind: str, path: Path) -> None:
    loader = load_interactions if kind == "interactions" else load_items
    with duckdb.connect() as con:
        loader(con, fmt, path, table="t", dataset="ds")


@pytest.mark.parametrize("case", BAD_EDITS, ids=[_bad_id(case) for case in BAD_EDITS])
def test_malformed_record_names_file_line_and_problem(tmp_path: Path, case: tuple) -> None:
    fmt, kind, edit, line, words = case
    sample = SAMPLES[fmt]
    lines = sample.interaction_lines if kind == "interactions" else sample.item_lines
    path = _sample_file(tmp_path, fmt, kind, edit(list(lines)))

    with pytest.raises(DataFormatError) as caught:
        _load_one(fmt, kind, path)

    assert str(caught.value).startswith(f"{path}: line {line}: ")
    assert words in caught.value.problem
    assert caught.value.location == f"line {line}"


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


def _binary(path: Path) -> Path:
    garbage = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(7).randbytes(4000)
    path.write_bytes(garbage)
    return path


# Whole-file problems: (maker, words, location)
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
        _load_one(fmt, kind, path)

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
