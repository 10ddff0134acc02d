from pathlib import Path

import pytest

from lettingo_dagster.paths import DATASETS_FILE, data_cache_dir
from lettingo_dagster.registry import RegistryError, load_registry


def test_embedded_default_is_registered() -> None:
    registry = load_registry(DATASETS_FILE, user_file="")
    entry = registry["movielens-100k"]
    assert entry.format == "movielens-atomic"
    assert entry.interactions == data_cache_dir() / "movielens-100k" / "ml-100k.inter"
    assert entry.items == data_cache_dir() / "movielens-100k" / "ml-100k.item"


def test_user_registry_adds_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(
        "movielens-100k: {format: movielens-100k, interactions: /abs/u.data}\n"
        "books: {format: amazon-2023, interactions: books/reviews.jsonl, items: books/meta.jsonl}\n",
        encoding="utf-8",
    )
    registry = load_registry(DATASETS_FILE, user_file=user)
    assert registry["movielens-100k"].format == "movielens-100k"
    assert registry["movielens-100k"].interactions == Path("/abs/u.data")
    assert registry["movielens-100k"].items is None
    assert registry["books"].items == data_cache_dir() / "books" / "meta.jsonl"
    assert registry["books"].source == user


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x: {format: csv, interactions: a}\n", "format 'csv' is not one of"),
        ("x: {format: yelp}\n", "'interactions' path is required"),
        ("x: {format: yelp, interactions: a, colour: red}\n", "unknown key(s) colour"),
        ("'bad name': {format: yelp, interactions: a}\n", "names may use"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_bad_entries_name_file_and_dataset(tmp_path: Path, text: str, problem: str) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(DATASETS_FILE, user_file=user)
    assert str(user) in str(info.value)
    assert problem in str(info.value)


def test_missing_user_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry(DATASETS_FILE, user_file=tmp_path / "absent.yaml")
