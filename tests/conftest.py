"""Test set-up: an isolated LETTINGO_HOME and a registry with datasets the tests write.

The registry and preset are read when the Dagster definitions are imported, so the environment
is set here, before any test module imports them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lettingo-tests-"))
os.environ["LETTINGO_HOME"] = str(_SESSION_DIR / "home")
os.environ["LETTINGO_DATA"] = str(_SESSION_DIR / "data")
os.environ.setdefault("LETTINGO_PRESET", "ci")
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("DAGSTER_HOME", None)

REGISTRY_FILE = _SESSION_DIR / "datasets.yaml"
REGISTRY_FILE.write_text(
    "synthetic:\n"
    "  format: movielens-atomic\n"
    "  interactions: synthetic/synthetic.inter\n"
    "  items: synthetic/synthetic.item\n"
    "broken:\n"
    "  format: movielens-atomic\n"
    "  interactions: broken/broken.inter\n"
    "  items: broken/broken.item\n",
    encoding="utf-8",
)
os.environ["LETTINGO_DATASETS"] = str(REGISTRY_FILE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture
def data_dir() -> Path:
    return Path(os.environ["LETTINGO_DATA"])


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LETTINGO_HOME of the test's own (its own warehouse file)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LETTINGO_HOME", str(home))
    return home
