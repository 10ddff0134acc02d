"""Versions for the audit trail: what each asset's code version is derived from, and how each
materialization's data version is computed from what it wrote.

Code version: a hash of the asset's logic and of the settings it reads. Its logic is the source
of the module that defines it and of every project module that module imports (following
imports, plumbing excepted: storage, resources, paths, tracking and the like change where and
how things are kept, not what an asset computes), plus the prompt templates for assets that
render prompts. Its settings are the preset sections listed in `SETTINGS_READ`, as the active
preset (LETTINGO_PRESET) sets them when the definitions load. Nothing is typed by hand: an edit
of the logic or of those settings gives a new code version, and Dagster marks the asset's
materializations unsynced.

Data version: computed from the content a materialization wrote (`DATA_VERSION_FROM`):

- `table`: the rows of the warehouse table named after the asset, for the dataset partition;
  an order-independent digest (the same as hashing the rows in sorted order), so rewriting the
  same rows gives the same version;
- `folder`: every file of the folder that is the asset's value (a model's weights, tokenizer and
  config; a recommender's arrays);
- `report`: every file of the dataset's report folder;
- `metadata`: the asset's metadata, without timings (an asset whose findings are its metadata).

Source files (`data/sources.py`) have their sha256 as data version.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lettingo_dagster.paths import ASSETS_DIR, PACKAGE_ROOT

PACKAGE = PACKAGE_ROOT.name
PROMPTS_DIR = ASSETS_DIR / "prompts"

# Modules that keep, move, check or describe data without changing what an asset computes; an
# edit of one gives no asset a new code version, and their own imports are not followed.
PLUMBING = frozenset(
    f"{PACKAGE}.{name}"
    for name in (
        "automation", "checks", "cli", "constants", "dataset_assets", "definitions",
        "deployment", "deployment.__main__", "deployment.stack", "folders", "lineage",
        "models.cache", "paths", "quality", "registry", "resources", "settings", "storage",
        "tracking", "versioning",
    )
)  # fmt: skip

# The preset sections (or dotted settings) each asset reads. `compute` (threads, device) is in
# none: it decides where work runs, not what it computes.
SETTINGS_READ: dict[str, tuple[str, ...]] = {
    "interactions": (),
    "items": (),
    "task_samples": ("task",),
    "base_generator": ("task", "base_generator"),
    "sampled_profiles": ("task", "base_generator", "exploration"),
    "item_knowledge": ("task", "recommender"),
    "recommender": ("task", "base_generator", "exploration", "recommender"),
    "recommender_trial": ("task", "recommender", "compute"),
    "oracle_study": ("task", "recommender", "oracle"),
    "reward_scores": ("task", "base_generator", "recommender"),
    "preference_pairs": ("task", "base_generator", "exploration", "pairs", "dpo.policy"),
    "dpo_checkpoint": ("base_generator", "exploration", "dpo"),
    "heldout_profiles": ("task", "base_generator", "exploration", "dpo.policy", "report"),
    "evaluation_report": ("task", "base_generator", "recommender", "dpo.policy", "report"),
}

# Assets that render prompt templates: the templates' text is part of their logic.
READS_PROMPTS = frozenset(
    {
        "base_generator", "sampled_profiles", "recommender", "recommender_trial", "reward_scores",
        "preference_pairs", "dpo_checkpoint", "heldout_profiles", "evaluation_report",
    }
)  # fmt: skip

DataVersionFrom = Literal["table", "folder", "report", "metadata"]
DATA_VERSION_FROM: dict[str, DataVersionFrom] = {
    "interactions": "table",
    "items": "table",
    "task_samples": "table",
    "base_generator": "folder",
    "sampled_profiles": "table",
    "item_knowledge": "folder",
    "recommender": "folder",
    "recommender_trial": "table",
    "oracle_study": "metadata",
    "reward_scores": "table",
    "preference_pairs": "table",
    "dpo_checkpoint": "folder",
    "heldout_profiles": "table",
    "evaluation_report": "report",
}

_TIMING = re.compile(r"seconds|per_second|_wait_s$")


# --------------------------------------------------------------------------- code versions


def _module_file(module: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), None outside the project."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(module: str) -> tuple[str, ...]:
    """Project modules that `module` imports anywhere (top level or inside functions)."""
    path = _module_file(module)
    if path is None:
        return ()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from package import module` names a module too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return tuple(sorted(name for name in found if _module_file(name) is not None))


def logic_modules(module: str) -> list[str]:
    """`module` and the project modules it reaches through imports, plumbing excepted."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        name = stack.pop()
        if name in seen or (name in PLUMBING and name != module):
            continue
        seen.add(name)
        stack.extend(_imports(name))
    return sorted(seen)


@cache
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def settings_values(preset: Any, paths: Iterable[str]) -> dict[str, Any]:
    """The values of dotted settings paths of a preset, as JSON-ready data."""
    dumped = preset.model_dump(mode="json")
    values: dict[str, Any] = {}
    for path in paths:
        value: Any = dumped
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"preset has no setting {path!r}")
            value = value[part]
        values[path] = value
    return values


def code_version_inputs(key: str, module: str, preset: Any | None) -> dict[str, Any]:
    """What an asset's code version is a hash of: module sources, prompts and settings."""
    modules = logic_modules(module)
    inputs: dict[str, Any] = {
        "modules": {name: _file_sha256(_module_file(name)) for name in modules},  # type: ignore[arg-type]
    }
    if key in READS_PROMPTS and PROMPTS_DIR.is_dir():
        inputs["prompts"] = {
            p.name: _file_sha256(p) for p in sorted(PROMPTS_DIR.iterdir()) if p.is_file()
        }
    sections = SETTINGS_READ.get(key, ())
    if preset is None:
        inputs["settings"] = {"unreadable preset": list(sections)}
    else:
        inputs["settings"] = settings_values(preset, sections)
    return inputs


def code_version(key: str, module: str, preset: Any | None) -> str:
    """The asset's code version: 16 hex digits of a sha256 over `code_version_inputs`."""
    payload = json.dumps(code_version_inputs(key, module, preset), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def active_preset_or_none() -> Any | None:
    """The active preset, or None when it does not load (the run then fails with its error)."""
    from lettingo_dagster.settings import PresetError, active_preset

    try:
        return active_preset()
    except PresetError:
        return None


# --------------------------------------------------------------------------- data versions


def table_data_version(con: Any, table: str, dataset: str) -> str:
    """sha256 over the table's rows of `dataset`: their count and the sums of each row's md5
    (of the row as text, column names included) as two 64-bit halves. The sums do not depend on
    the rows' order, so the same rows give the same version however they were written."""
    count, lower, upper = con.execute(
        f"""
        SELECT count(*), coalesce(sum(md5_number_lower(t::VARCHAR)), 0),
               coalesce(sum(md5_number_upper(t::VARCHAR)), 0)
        FROM {table} AS t WHERE dataset = ?
        """,
        [dataset],
    ).fetchone()
    return hashlib.sha256(f"table {table}\n{count}\n{lower}\n{upper}".encode()).hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, skipping hidden names (scratch folders, editor files)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_data_version(folder: str | Path) -> str:
    """sha256 over the relative paths and contents of every file under `folder`."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in _files(folder):
        file_hash = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()


def metadata_data_version(metadata: Mapping[str, Any]) -> str:
    """sha256 over the metadata's entries, timings left out (they differ on every run)."""
    entries = {
        key: str(getattr(value, "value", value))
        for key, value in sorted(metadata.items())
        if not _TIMING.search(key)
    }
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
