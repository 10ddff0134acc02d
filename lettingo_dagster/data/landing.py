"""Landing folders: where users drop new interaction files, one folder per dataset.

`LETTINGO_HOME/landing/<dataset>/` holds full snapshots of a dataset's interactions in the
format its registry entry names (items always come from the registry). The `landing_sensor`
requests an ingest-and-retrain run for each new content; the `interactions` asset reads the
newest landed file when its run config names none. Plain Python, so tests call it directly.

Rules:
- Ignored names: hidden files (`.*`), editor and download leftovers (`*~`, `*.tmp`, `*.part`,
  `*.partial`, `*.crdownload`, `*.download`, `*.swp`), and anything that is not a regular file.
  Writers should copy under such a name and rename when done (an atomic rename).
- A file still being written is not ingested: it must have been quiet (neither its content nor
  its inode changed: max of mtime and ctime) for `LETTINGO_LANDING_QUIET_SECONDS` (default 30).
  ctime counts because copies that keep the source's mtime (`cp -p`, `rsync -t`, archives) reset
  mtime into the past, but not ctime, which the kernel sets and nobody can backdate.
- A content is ingested once per dataset: the sensor's cursor keeps the sha256 of every content
  it requested a run for, so touching, renaming or copying a file again starts nothing.
- Landed files are full snapshots: when several new contents settle in the same tick, only the
  newest (by mtime) is ingested and the others are recorded as superseded.
- A run of `interactions` whose config names no source_file (a manual materialization, the
  whole-graph job) reads the newest candidate file by mtime, without waiting for the quiet
  period: the landing folder overrides the registry's file as long as it holds a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lettingo_dagster.paths import landing_dir

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp")
QUIET_SECONDS_ENV = "LETTINGO_LANDING_QUIET_SECONDS"
DEFAULT_QUIET_SECONDS = 30.0
_CURSOR_VERSION = 1


@dataclass(frozen=True)
class LandedFile:
    path: Path
    size: int
    mtime_ns: int
    changed_ns: int  # max(mtime, ctime): the last time its content or inode changed

    @property
    def key(self) -> str:
        return str(self.path)

    def quiet_for(self, now: float) -> float:
        return now - self.changed_ns / 1e9


def is_candidate_name(name: str) -> bool:
    """False for hidden, temporary and partial-download names (see the module docstring)."""
    lowered = name.lower()
    return not (name.startswith(".") or name.endswith("~") or lowered.endswith(IGNORED_SUFFIXES))


def quiet_seconds() -> float:
    """How long a landed file must stay unchanged before it is ingested."""
    raw = os.environ.get(QUIET_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_QUIET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{QUIET_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    return max(value, 0.0)


def landed_files(dataset: str, folder: Path | None = None) -> list[LandedFile]:
    """The candidate files in the dataset's landing folder, oldest first (mtime, then name)."""
    folder = folder if folder is not None else landing_dir(dataset)
    if not folder.is_dir():
        return []
    found: list[LandedFile] = []
    for entry in os.scandir(folder):
        if not is_candidate_name(entry.name):
            continue
        try:
            if not entry.is_file():
                continue
            stat = entry.stat()
        except FileNotFoundError:  # removed while listing
            continue
        found.append(
            LandedFile(
                path=Path(os.path.abspath(entry.path)),
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                changed_ns=max(stat.st_mtime_ns, stat.st_ctime_ns),
            )
        )
    return sorted(found, key=lambda f: (f.mtime_ns, f.path.name))


def newest_landed_file(dataset: str) -> Path | None:
    """The file the `interactions` asset reads when its run config names none."""
    files = landed_files(dataset)
    return files[-1].path if files else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LandingState:
    """What the landing sensor remembers between ticks (its cursor).

    files: path -> (size, mtime_ns, sha256) of the files seen last tick, so an unchanged file is
    not hashed again; seen: dataset -> sha256 of every content already requested or superseded.
    """

    files: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> LandingState:
        """Parse a cursor; an empty one is a fresh state, a malformed one raises ValueError."""
        if not cursor:
            return cls()
        try:
            raw = json.loads(cursor)
            if raw.get("v") != _CURSOR_VERSION:
                raise ValueError(f"unknown cursor version {raw.get('v')!r}")
            files = {
                str(path): (int(size), int(mtime), str(sha))
                for path, (size, mtime, sha) in raw["files"].items()
            }
            seen = {str(ds): [str(sha) for sha in shas] for ds, shas in raw["seen"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"landing sensor cursor is not readable: {exc}") from None
        return cls(files=files, seen=seen)

    def to_cursor(self) -> str:
        return json.dumps(
            {
                "v": _CURSOR_VERSION,
                "files": {path: list(value) for path, value in sorted(self.files.items())},
                "seen": {ds: list(shas) for ds, shas in sorted(self.seen.items())},
            },
            separators=(",", ":"),
        )

    def is_seen(self, dataset: str, sha256: str) -> bool:
        return sha256 in self.seen.get(dataset, ())

    def mark_seen(self, dataset: str, sha256: str) -> None:
        shas = self.seen.setdefault(dataset, [])
        if sha256 not in shas:
            shas.append(sha256)


@dataclass
class LandingScan:
    """One dataset's landing folder, as one sensor tick sees it."""

    dataset: str
    to_ingest: tuple[LandedFile, str] | None = None  # (file, sha256)
    superseded: list[tuple[LandedFile, str]] = field(default_factory=list)
    waiting: list[LandedFile] = field(default_factory=list)  # not quiet long enough yet
    already_seen: int = 0
    hashed: int = 0
    present: set[str] = field(default_factory=set)  # keys of every candidate file listed


def scan_landing(
    dataset: str,
    state: LandingState,
    *,
    now: float | None = None,
    quiet: float | None = None,
    folder: Path | None = None,
) -> LandingScan:
    """Find the content to ingest for `dataset` and update `state` (files and seen hashes).

    The newest new content is returned in `to_ingest` and marked seen, as are the older new
    contents it supersedes; files that are not quiet yet are left for a later tick.
    """
    now = time.time() if now is None else now
    quiet = quiet_seconds() if quiet is None else quiet
    scan = LandingScan(dataset=dataset)
    fresh: dict[str, LandedFile] = {}  # sha256 -> newest file holding that new content
    for landed in landed_files(dataset, folder):
        scan.present.add(landed.key)
        if landed.quiet_for(now) < quiet:
            scan.waiting.append(landed)
            state.files.pop(landed.key, None)
            continue
        known = state.files.get(landed.key)
        if known is not None and known[:2] == (landed.size, landed.mtime_ns):
            sha = known[2]
        else:
            try:
                sha = file_sha256(landed.path)
                after = landed.path.stat()
            except FileNotFoundError:
                continue
            scan.hashed += 1
            if (after.st_size, after.st_mtime_ns) != (landed.size, landed.mtime_ns):
                scan.waiting.append(landed)  # changed while hashing: look again next tick
                continue
            state.files[landed.key] = (landed.size, landed.mtime_ns, sha)
        if state.is_seen(dataset, sha):
            scan.already_seen += 1
        else:
            fresh[sha] = landed  # files come oldest first, so the newest holder wins
    if fresh:
        ordered = sorted(fresh.items(), key=lambda item: (item[1].mtime_ns, item[1].path.name))
        *older, (sha, newest) = ordered
        scan.to_ingest = (newest, sha)
        scan.superseded = [(landed, old_sha) for old_sha, landed in older]
        for old_sha, _ in older:
            state.mark_seen(dataset, old_sha)
        state.mark_seen(dataset, sha)
    return scan


def forget_missing_files(state: LandingState, present: set[str]) -> None:
    """Drop the remembered stats of files that are gone (the seen hashes stay)."""
    for key in [key for key in state.files if key not in present]:
        del state.files[key]
