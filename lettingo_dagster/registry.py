"""The dataset registry: `assets/datasets.yaml` merged with the user's `LETTINGO_DATASETS` file.

Each entry names a raw format and its files; the entry names are the `dataset` partition keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lettingo_dagster.paths import DATASETS_FILE, data_cache_dir

# The raw formats the loaders read (lettingo_dagster.data.formats.FORMATS is this tuple); kept
# here so that loading the registry, and so the Dagster definitions, never imports the loaders.
KNOWN_FORMATS = (
    "movielens-atomic",
    "movielens-100k",
    "movielens-dat",
    "amazon-2018",
    "amazon-2023",
    "yelp",
)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(ValueError):
    """A registry file is unreadable or an entry is malformed."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    format: str
    interactions: Path
    items: Path | None
    source: Path  # the registry file the entry came from


def _resolve(value: str, cache: Path) -> Path:
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else cache / path


def _read_registry_file(path: Path, cache: Path) -> dict[str, DatasetEntry]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a mapping of dataset names to entries")
    entries: dict[str, DatasetEntry] = {}
    for name, spec in raw.items():
        name = str(name)
        where = f"{path}: dataset {name!r}"
        if not _NAME_PATTERN.match(name):
            raise RegistryError(f"{where}: names may use letters, digits, '.', '_' and '-' only")
        if not isinstance(spec, dict):
            raise RegistryError(f"{where}: expected {{format, interactions, items}}")
        unknown = set(spec) - {"format", "interactions", "items"}
        if unknown:
            raise RegistryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        fmt = spec.get("format")
        if fmt not in KNOWN_FORMATS:
            raise RegistryError(f"{where}: format {fmt!r} is not one of {', '.join(KNOWN_FORMATS)}")
        if not spec.get("interactions"):
            raise RegistryError(f"{where}: 'interactions' path is required")
        items = spec.get("items")
        entries[name] = DatasetEntry(
            name=name,
            format=fmt,
            interactions=_resolve(str(spec["interactions"]), cache),
            items=_resolve(str(items), cache) if items else None,
            source=path,
        )
    return entries


def load_registry(
    base_file: Path = DATASETS_FILE, user_file: str | os.PathLike[str] | None = None
) -> dict[str, DatasetEntry]:
    """The project's registry, with the user's entries (LETTINGO_DATASETS) added or overriding."""
    cache = data_cache_dir()
    entries = _read_registry_file(base_file, cache)
    user_file = user_file if user_file is not None else os.environ.get("LETTINGO_DATASETS")
    if user_file:
        entries.update(_read_registry_file(Path(user_file).expanduser().resolve(), cache))
    return entries


def get_dataset(name: str) -> DatasetEntry:
    registry = load_registry()
    if name not in registry:
        raise RegistryError(
            f"dataset {name!r} is not registered (known: {', '.join(sorted(registry))}); "
            "add it to a registry file named by LETTINGO_DATASETS"
        )
    return registry[name]
