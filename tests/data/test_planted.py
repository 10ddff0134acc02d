"""The planted-taste world: seeded bytes, the project's loaders read it, users carry the planted
taste, and `lettingo data fetch planted-taste` writes it once and atomically."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pytest

from lettingo_dagster import cli
from lettingo_dagster.data import fetch, planted
from lettingo_dagster.data.fetch import FetchError, fetch_dataset
from lettingo_dagster.data.formats import load_interactions, load_items, validate_files
from lettingo_dagster.data.planted import (
    GENRES,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    TRUTH_FILE,
    PlantedParams,
    PlantedWorld,
    PlantedWorldError,
    generate_planted_world,
    load_planted_truth,
    normalize_title,
    render_planted_files,
    write_planted_world,
)
from lettingo_dagster.paths import DATASETS_FILE, data_cache_dir
from lettingo_dagster.registry import load_registry

TINY = PlantedParams(n_users=60, n_items=200, history_min=40, history_max=60)


@pytest.fixture(scope="module")
def world() -> PlantedWorld:
    return generate_planted_world(TINY)


def _quiet(_: str) -> None:
    pass


def _users(world: PlantedWorld) -> list[slice]:
    starts = np.flatnonzero(np.r_[True, np.diff(world.user) != 0])
    return [slice(a, b) for a, b in zip(starts, np.r_[starts[1:], len(world.user)], strict=True)]


def _classes(world: PlantedWorld, uid: str, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item: has a liked genre, has a disliked genre (for the user's planted taste)."""
    taste = world.truth[uid]
    genres = world.item_genres[items]
    return (
        genres[:, np.isin(GENRES, taste.liked_genres)].any(axis=1),
        genres[:, np.isin(GENRES, taste.disliked_genres)].any(axis=1),
    )


def test_same_seed_same_bytes_other_seed_differs() -> None:
    first = render_planted_files(generate_planted_world(TINY))
    again = render_planted_files(generate_planted_world(TINY))
    assert first == again
    other = render_planted_files(generate_planted_world(replace(TINY, seed=8)))
    assert set(other) == set(first) == {INTERACTIONS_FILE, ITEMS_FILE, TRUTH_FILE}
    assert all(other[name] != first[name] for name in first)


def test_tiny_world_generates_well_under_a_second() -> None:
    started = time.perf_counter()
    render_planted_files(generate_planted_world(TINY))
    assert time.perf_counter() - started < 1.0


def test_impossible_parameters_are_refused() -> None:
    with pytest.raises(PlantedWorldError, match="half of n_items"):
        PlantedParams(n_items=200)  # 150-item histories leave no negatives
    with pytest.raises(PlantedWorldError, match="sum to <= 1"):
        PlantedParams(liked_share=0.9, disliked_share=0.2)


def test_files_load_through_the_project_loaders(tmp_path: Path, world: PlantedWorld) -> None:
    result = write_planted_world(tmp_path, TINY, log=_quiet)
    inter, items = result.folder / INTERACTIONS_FILE, result.folder / ITEMS_FILE
    summary = validate_files("movielens-atomic", inter, items)
    assert (summary.rows, summary.users, summary.item_rows) == (world.n_interactions, 60, 200)
    assert (summary.rating_min, summary.rating_max) == (1.0, 5.0)
    with duckdb.connect() as con:
        load_items(con, "movielens-atomic", items, table="items", dataset="planted-taste")
        load_interactions(con, "movielens-atomic", inter, table="inter", dataset="planted-taste")
        rows = con.execute("SELECT item_id, title, year, genres FROM items").fetchall()
        first = con.execute(
            "SELECT user_id, item_id, rating, timestamp FROM inter ORDER BY rowid LIMIT 1"
        ).fetchone()
    assert first == ("1", str(world.item[0] + 1), float(world.rating[0]), int(world.timestamp[0]))
    by_id = {item_id: (title, year, genres) for item_id, title, year, genres in rows}
    for item in world.items:
        assert by_id[item.item_id] == (item.title, item.year, "|".join(item.genres))
        assert 1950 <= item.year <= 2020 and 1 <= len(item.genres) <= 3
        assert set(item.genres) <= set(GENRES)
    assert len({normalize_title(item.title) for item in world.items}) == len(world.items)
    assert load_planted_truth(result.folder) == world.truth


def test_registry_names_the_written_files() -> None:
    entry = load_registry(DATASETS_FILE, user_file="")["planted-taste"]
    assert entry.format == "movielens-atomic"
    assert entry.interactions == data_cache_dir() / "planted-taste" / INTERACTIONS_FILE
    assert entry.items == data_cache_dir() / "planted-taste" / ITEMS_FILE


def test_users_carry_the_planted_taste(world: PlantedWorld) -> None:
    liked_share, recent_taste, liked_ratings, disliked_ratings = [], [], [], []
    for rows in _users(world):
        uid = str(world.user[rows.start] + 1)
        items, ratings = world.item[rows], world.rating[rows]
        times, session = world.timestamp[rows], world.session[rows]
        taste = world.truth[uid]
        assert len(taste.liked_genres) == len(taste.disliked_genres) == 2
        assert not set(taste.liked_genres) & set(taste.disliked_genres)
        assert len(set(items.tolist())) == len(items)  # no item twice
        assert np.all(np.diff(times) > 0)
        # The distractor session: the last 12-15 interactions, within one hour, neutral genres.
        assert 12 <= session.sum() <= 15 and session[-session.sum() :].all()
        assert times[session][-1] - times[session][0] < 3600
        liked, disliked = _classes(world, uid, items)
        assert not (liked | disliked)[session].any()
        # Favourites: in the history, liked-genre items rated 5.
        favourites = np.array([int(i) - 1 for i in taste.favourites])
        assert 3 <= len(favourites) <= 5
        position = {item: k for k, item in enumerate(items.tolist())}
        assert all(ratings[position[f]] == 5 and liked[position[f]] for f in favourites)
        # Windows as the task reads them: recent = the last 10, long = the 30 before.
        recent_taste.append((liked | disliked)[-10:].mean())
        liked_share.append(liked[-40:-10].mean())
        liked_ratings += ratings[~session & liked & ~disliked].tolist()
        disliked_ratings += ratings[~session & disliked & ~liked].tolist()
    assert max(recent_taste) == 0.0  # the recent window says nothing about the taste
    assert np.mean(liked_share) > 0.5
    assert np.mean(disliked_ratings) < 2.5 < 4.0 < np.mean(liked_ratings)


def test_item_factors_recover_genres(world: PlantedWorld) -> None:
    """Items of a genre co-occur across users: SVD neighbours share genres far above chance."""
    matrix = np.zeros((TINY.n_users, TINY.n_items))
    matrix[world.user, world.item] = 1.0
    _, singular, vt = np.linalg.svd(matrix - matrix.mean(0), full_matrices=False)
    factors = (vt[:16] * singular[:16, None]).T
    factors /= np.linalg.norm(factors, axis=1, keepdims=True)
    similarity = factors @ factors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    genres = world.item_genres
    shared_nearest = (genres & genres[nearest]).any(axis=1).mean()
    shared_any = ((genres.astype(int) @ genres.T.astype(int)) > 0).mean()
    assert shared_nearest > 0.6 > 0.3 > shared_any  # 0.79 against 0.17 at this size


@pytest.fixture
def tiny_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch command's generator at the tiny size, so these tests stay fast."""
    monkeypatch.setattr(
        fetch, "write_planted_world", functools.partial(write_planted_world, params=TINY)
    )


def test_fetch_is_idempotent(tmp_path: Path, tiny_fetch: None) -> None:
    messages: list[str] = []
    first = fetch_dataset("planted-taste", tmp_path, log=messages.append)
    assert first.downloaded and all(path.is_file() for path in first.files)
    assert "wrote 60 users, 200 items" in messages[-1] and str(first.folder) in messages[-1]
    stamps = [path.stat().st_mtime_ns for path in first.files]
    second = fetch_dataset("planted-taste", tmp_path, log=messages.append)
    assert not second.downloaded and "already in" in messages[-1] and "60 users" in messages[-1]
    assert [path.stat().st_mtime_ns for path in second.files] == stamps
    # A tampered file, or a world made with other parameters, is regenerated.
    (first.folder / ITEMS_FILE).write_text("junk\n")
    assert fetch_dataset("planted-taste", tmp_path, log=_quiet).downloaded
    write_planted_world(tmp_path, replace(TINY, seed=9), log=_quiet)
    assert fetch_dataset("planted-taste", tmp_path, log=_quiet).downloaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planted-taste"]
    with pytest.raises(FetchError, match="--wheel does not apply"):
        fetch_dataset("planted-taste", tmp_path, wheel=tmp_path / "x.whl")


def test_a_failed_write_leaves_the_previous_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_planted_world(tmp_path, TINY, log=_quiet)
    before = {p.name: p.read_bytes() for p in (tmp_path / "planted-taste").iterdir()}
    real_replace = os.replace

    def failing_swap(source: str | Path, target: str | Path) -> None:
        if Path(source).name.startswith(".planted-taste-new-"):
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(planted.os, "replace", failing_swap)
    other = replace(TINY, seed=9)
    with pytest.raises(OSError, match="disk full"):
        write_planted_world(tmp_path, other, log=_quiet)
    after = {p.name: p.read_bytes() for p in (tmp_path / "planted-taste").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planted-taste"]  # no scratch left

    # A failure while writing the files, with no world there yet, leaves nothing at all.
    monkeypatch.undo()
    monkeypatch.setattr(
        planted, "render_planted_files", lambda _: {INTERACTIONS_FILE: b"x", ITEMS_FILE: None}
    )
    empty = tmp_path / "empty"
    with pytest.raises(TypeError):
        write_planted_world(empty, TINY, log=_quiet)
    assert list(empty.iterdir()) == []


def test_cli_fetch_writes_the_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_fetch: None, capsys
) -> None:
    monkeypatch.setenv("LETTINGO_DATA", str(tmp_path))
    assert cli.main(["data", "fetch", "planted-taste"]) == 0
    assert "planted-taste: wrote 60 users, 200 items" in capsys.readouterr().out
    assert (tmp_path / "planted-taste" / TRUTH_FILE).is_file()
    assert cli.main(["data", "fetch", "planted-taste"]) == 0
    assert "already in" in capsys.readouterr().out
