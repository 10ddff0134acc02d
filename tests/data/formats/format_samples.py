"""Each format's files as distributed, and the helpers the format tests write and load them with.

Each format gets a few records written here in its distributed layout (no third-party files are
committed); the tests assert the exact rows loaded and, for broken files, that the error names
the file, the 1-based line and the problem. The samples live in one module because the engine's
tests run every format through the same cases; each family's own tests add its quirks.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from lettingo_dagster.data.formats import DataFormatError, load_interactions, load_items

Rating = tuple[str, str, float, int]  # user_id, item_id, rating, unix seconds
Item = tuple[str, str, int | None, str, str | None]  # item_id, title, year, genres, description


def jsonl(*records: dict) -> list[str]:
    return [json.dumps(record, ensure_ascii=False) for record in records]


def flags(*genres: str) -> str:
    """The 19 u.item genre flags with ``genres`` set."""
    # Typed out from GroupLens' u.genre rather than imported: the loader's own list could only
    # confirm itself.
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


# ---------------------------------------------------------------------------------------------
# Writing and loading files


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


def sample_file(tmp_path: Path, fmt: str, kind: str, lines: list[str]) -> Path:
    """``lines`` written under the sample's own file name for ``kind`` (interactions or items)."""
    sample = SAMPLES[fmt]
    name = sample.interactions_name if kind == "interactions" else sample.items_name
    return write(tmp_path / name, lines)


def load_one(fmt: str, kind: str, path: Path) -> None:
    loader = load_interactions if kind == "interactions" else load_items
    with duckdb.connect() as con:
        loader(con, fmt, path, table="t", dataset="ds")


# ---------------------------------------------------------------------------------------------
# Malformed files: each family lists its cases as BadEdit tuples


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
BadEdit = tuple[str, str, Callable[[list[str]], list[str]], int, str]


def bad_id(case: BadEdit) -> str:
    fmt, kind, _edit, line, words = case
    return f"{fmt}-{kind}-line{line}-{words[:30]}"


def assert_malformed(tmp_path: Path, case: BadEdit) -> None:
    """The edited sample fails to load, and the error names the file, the line and the problem."""
    fmt, kind, edit, line, words = case
    sample = SAMPLES[fmt]
    lines = sample.interaction_lines if kind == "interactions" else sample.item_lines
    path = sample_file(tmp_path, fmt, kind, edit(list(lines)))

    with pytest.raises(DataFormatError) as caught:
        load_one(fmt, kind, path)

    assert str(caught.value).startswith(f"{path}: line {line}: ")
    assert words in caught.value.problem
    assert caught.value.location == f"line {line}"
