"""Test set-up: an isolated LETTINGO_HOME and a registry with datasets the tests write.

The registry and preset are read when the Dagster definitions are imported, so the environment
is set here, before any test module imports them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
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

# Variables the code under test sets in its own process (the CLI points DAGSTER_HOME at its
# instance, the team deployment selects itself): each test starts from the session's values, so
# a test that runs one in-process cannot redirect a later test's runs to its instance.
_PROCESS_VARIABLES = (
    "DAGSTER_HOME",
    "LETTINGO_PRESET",
    "LETTINGO_DEPLOYMENT",
    "MLFLOW_TRACKING_URI",
)


@pytest.fixture(autouse=True)
def _restore_process_variables():
    before = {name: os.environ.get(name) for name in _PROCESS_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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


# The pipeline world's dataset: its raw files are seeded, so writing them again gives the same bytes.
WORLD_FILES = {"users": 90, "items": 160, "min_ratings": 20, "max_ratings": 70, "seed": 5}


@dataclass
class PipelineWorld:
    """The ci graph materialized through preference_pairs once per session, on a dataset the
    tests write (`synthetic`): later stages are tested against it with the same instance."""

    instance: object
    warehouse: Path
    mlflow_uri: str
    resources: dict
    base_generator: Path

    def write_files(self) -> Path:
        """(Re)write the dataset's raw files as the world was built from (other tests write
        their own `synthetic` files into the same data folder); returns the interactions file."""
        from synthetic import write_movielens_atomic

        interactions, _ = write_movielens_atomic(
            Path(os.environ["LETTINGO_DATA"]) / "synthetic", **WORLD_FILES
        )
        return interactions

    def materialize(self, assets, selection, **kwargs):
        import dagster as dg

        return dg.materialize(
            assets,
            selection=selection,
            partition_key="synthetic",
            instance=self.instance,
            resources=self.resources,
            **kwargs,
        )


@pytest.fixture(scope="session")
def pipeline_world(tmp_path_factory: pytest.TempPathFactory) -> PipelineWorld:
    import dagster as dg
    from synthetic import write_movielens_atomic

    from lettingo_dagster.data.sources import SOURCE_KEYS
    from lettingo_dagster.definitions import all_assets, defs
    from lettingo_dagster.resources import SettingsResource, Warehouse
    from lettingo_dagster.tracking import MlflowTracking

    root = tmp_path_factory.mktemp("world")
    data = Path(os.environ["LETTINGO_DATA"]) / "synthetic"
    write_movielens_atomic(data, **WORLD_FILES)
    mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
    resources = {
        **defs.resources,
        "settings": SettingsResource(preset="ci"),
        "warehouse": Warehouse(database=str(root / "warehouse.duckdb")),
        "mlflow": MlflowTracking(tracking_uri=mlflow_uri, artifact_root=str(root / "artifacts")),
    }
    sources = dg.AssetSelection.assets(*SOURCE_KEYS)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        all_assets,
        # The raw files are observed first, as the jobs do: every chain starts at a file's hash.
        selection=dg.AssetSelection.assets("preference_pairs").upstream() | sources,
        partition_key="synthetic",
        instance=instance,
        resources=resources,
    )
    assert result.success
    base = result.output_for_node("base_generator")
    return PipelineWorld(instance, root / "warehouse.duckdb", mlflow_uri, resources, Path(base))
