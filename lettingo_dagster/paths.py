"""Where things live: the repository's non-code inputs and everything a run writes.

`LETTINGO_HOME` (default `./.lettingo`) holds the DuckDB warehouse, the MLflow store,
checkpoints, reports, the data cache and the Dagster home, so one folder is one deployment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
ASSETS_DIR = Path(os.environ.get("LETTINGO_ASSETS_DIR", PROJECT_ROOT / "assets"))
PRESETS_DIR = ASSETS_DIR / "presets"
DATASETS_FILE = ASSETS_DIR / "datasets.yaml"


def lettingo_home() -> Path:
    """Root of everything a run writes; relative values resolve against the working directory."""
    return Path(os.environ.get("LETTINGO_HOME", ".lettingo")).expanduser().resolve()


def expand_home(text: str, what: str = "path") -> str:
    """A preset's path with `$LETTINGO_HOME` (or `${LETTINGO_HOME}`), other environment variables
    and `~` expanded, so one preset serves every deployment's home. A variable that is not set
    is an error naming it, not a folder called `$NAME`."""
    home = str(lettingo_home())
    text = text.replace("${LETTINGO_HOME}", home).replace("$LETTINGO_HOME", home)
    expanded = os.path.expanduser(os.path.expandvars(text))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if unset:
        raise ValueError(f"{what} {text!r} names ${unset[0]}, which is not set")
    return expanded


def data_cache_dir() -> Path:
    """Raw dataset files (fetched or dropped in by the user)."""
    override = os.environ.get("LETTINGO_DATA")
    return Path(override).expanduser().resolve() if override else lettingo_home() / "data"


def warehouse_path() -> Path:
    """The DuckDB file that holds every table asset."""
    return lettingo_home() / "warehouse.duckdb"


def dagster_home() -> Path:
    """`DAGSTER_HOME` when the user set one, else a folder under `LETTINGO_HOME`."""
    override = os.environ.get("DAGSTER_HOME")
    return Path(override).expanduser().resolve() if override else lettingo_home() / "dagster"


def landing_dir(dataset: str) -> Path:
    """Folder a user drops new interaction files into for `dataset`."""
    return lettingo_home() / "landing" / dataset


def model_cache_path() -> Path:
    """The persistent cache of model calls (generations and scores)."""
    return lettingo_home() / "cache" / "model_calls.duckdb"


def models_dir() -> Path:
    """Trained models: versioned folders per asset and dataset."""
    return lettingo_home() / "models"


def reports_dir(dataset: str) -> Path:
    """The latest evaluation report of a dataset (report.md, report.html, report.json, plots)."""
    return lettingo_home() / "reports" / dataset
