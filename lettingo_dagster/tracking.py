"""MLflow tracking and model registry as a Dagster resource.

`dagster-mlflow`'s `mlflow_tracking` resource is legacy (it wraps whole jobs in one MLflow run and
its hook ends runs when a job finishes), while LettinGo needs one MLflow run per asset
materialization, tagged with where it came from. So the project has its own
ConfigurableResource; `dagster-mlflow` stays installed for teams whose op-based jobs use it.

The tracking store defaults to sqlite under LETTINGO_HOME (MLflow 3 has no file store), and every
experiment's artifacts go to a folder beside it, never to `./mlruns` in the working directory.
Tags and params carry only what the caller passes: nothing from the environment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from lettingo_dagster.paths import lettingo_home

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
MAX_PARAM_LENGTH = 6000  # MLflow 3 accepts up to 6000 characters per param value


def default_tracking_uri() -> str:
    """The team deployment's MLflow server (LETTINGO_MLFLOW_URI), else sqlite under
    LETTINGO_HOME."""
    from lettingo_dagster.deployment import mlflow_tracking_uri

    return mlflow_tracking_uri() or f"sqlite:///{lettingo_home() / 'mlflow' / 'mlflow.db'}"


def default_ui_url() -> str:
    """A tracking server serves its own UI; the local store is browsed with `make mlflow-ui`."""
    from lettingo_dagster.deployment import mlflow_tracking_uri

    return mlflow_tracking_uri() or "http://127.0.0.1:5000"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: `lora.rank` -> "8"."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def experiment_name(dataset: str) -> str:
    return f"lettingo-{dataset}"


def registered_model_name(dataset: str) -> str:
    return f"lettingo-profile-generator-{dataset}"


class MlflowTracking(dg.ConfigurableResource):
    """Runs, metrics, artifacts and the model registry of one MLflow tracking server or store."""

    tracking_uri: str = Field(
        default_factory=default_tracking_uri,
        description="MLflow tracking URI (default: LETTINGO_MLFLOW_URI in the team deployment, "
        "else sqlite under $LETTINGO_HOME/mlflow). Use a server URL for a shared store; "
        "credentials come from MLflow's own environment variables, never from this config.",
    )
    artifact_root: str = Field(
        default="",
        description="Where new experiments keep artifacts (default: $LETTINGO_HOME/mlflow/"
        "artifacts; ignored by servers that manage their own).",
    )
    ui_url: str = Field(
        default_factory=default_ui_url,
        description="Base URL of the MLflow UI, for the run links in asset metadata (default: "
        "the tracking server in the team deployment, else http://127.0.0.1:5000).",
    )

    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _artifact_root(self) -> Path:
        return (
            Path(self.artifact_root)
            if self.artifact_root
            else lettingo_home() / "mlflow" / "artifacts"
        )

    def experiment_id(self, name: str) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if not self.tracking_uri.startswith(("http://", "https://", "databricks")):
            location = (self._artifact_root() / name).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)

    @contextmanager
    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        run_id: str | None = None,
    ) -> Iterator[Run]:
        """An MLflow run that this block owns: FINISHED when the block ends normally, FAILED when
        it raises. `run_id` reopens an existing run (a resumed training continues its curves)."""
        client = self.client()
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            run = client.get_run(run_id)
        else:
            run = client.create_run(
                self.experiment_id(experiment), run_name=run_name, tags=dict(tags)
            )
        try:
            yield run
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id, status="FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        client = self.client()
        existing = client.get_run(run_id).data.params
        fresh = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for start in range(0, len(fresh), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client().log_batch(run_id, metrics=batch[start : start + 1000])

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client().log_artifacts(run_id, str(folder), artifact_path)

    def log_artifact(self, run_id: str, file: Path, artifact_path: str | None = None) -> None:
        self.client().log_artifact(run_id, str(file), artifact_path)

    def register(
        self, name: str, run: Run, artifact_path: str, tags: Mapping[str, str] | None = None
    ) -> str:
        """A new version of registered model `name` from a run's artifact folder."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
                exc
            ):
                raise
        version = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{artifact_path}",
            run_id=run.info.run_id,
            tags=dict(tags or {}),
        )
        return str(version.version)

    def alias_version(self, name: str, alias: str = CHAMPION) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, name: str, version: str, alias: str = CHAMPION) -> None:
        self.client().set_registered_model_alias(name, alias, version)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client().get_model_version(name, version).tags)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client().set_model_version_tag(name, version, key, value)

    def run_url(self, run: Run) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"
