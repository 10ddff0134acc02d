"""The Dagster code location: `defs` holds every asset, check, job, sensor and resource.

Loaded by `workspace.yaml`, `dagster dev`, `dagster asset materialize -m lettingo_dagster.definitions`
and `lettingo run`. LETTINGO_PRESET selects the preset for every entry point.
"""

from __future__ import annotations

import dagster as dg

from lettingo_dagster.alignment.assets import alignment_assets
from lettingo_dagster.automation import automation_jobs, automation_sensors
from lettingo_dagster.data.assets import data_assets
from lettingo_dagster.data.sources import SOURCE_KEYS, source_assets
from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.deployment import executor_for_deployment
from lettingo_dagster.evaluation.assets import evaluation_assets
from lettingo_dagster.exploration.assets import exploration_assets
from lettingo_dagster.report.assets import report_assets
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.tracking import MlflowTracking

all_assets = [
    *source_assets, *data_assets, *exploration_assets, *evaluation_assets, *alignment_assets,
    *report_assets,
]  # fmt: skip
# Jobs that read raw files observe them first (their sha256 is the start of every chain).
sources = dg.AssetSelection.assets(*SOURCE_KEYS)

pipeline_job = dg.define_asset_job(
    name="lettingo_pipeline",
    selection=dg.AssetSelection.all() | sources,
    partitions_def=dataset_partitions,
    description=(
        "Observe a dataset's raw files and materialize the whole LettinGo graph for its partition."
    ),
)
data_job = dg.define_asset_job(
    name="ingest_data",
    selection=dg.AssetSelection.groups("data") | sources,
    partitions_def=dataset_partitions,
    description="Load a dataset's raw files and rebuild its task samples, with their checks.",
)

defs = dg.Definitions(
    assets=all_assets,
    jobs=[pipeline_job, data_job, *automation_jobs],
    sensors=automation_sensors,
    # LETTINGO_DEPLOYMENT=team sends steps to Celery workers; local keeps Dagster's default.
    executor=executor_for_deployment(),
    resources={
        "settings": SettingsResource(),
        "warehouse": Warehouse(),
        "mlflow": MlflowTracking(),
        # The DPO trainer runs as its own process (torchrun) and reports back through Pipes.
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
