"""The raw files as observable source assets: the lineage graph starts at the file.

`interactions_file` is, per dataset, the file the `interactions` asset reads (the run config's
source_file, else the newest file in the landing folder, else the registry's file); `items_file`
is the registry's items file. An observation's data version is the file's sha256, so when the
file changes Dagster marks the assets that read it unsynced.

They are observed as the first step of every job that loads data (the jobs select them), by
the landing sensor when a new file lands, and from the UI ("Observe sources"). An observation
never fetches or fails: a missing file is left to the asset that reads it, which says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # not exported by 1.13

from lettingo_dagster.constants import GROUP_DATA
from lettingo_dagster.data.landing import file_sha256
from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.registry import RegistryError, get_dataset

INTERACTIONS_FILE = "interactions_file"
ITEMS_FILE = "items_file"
SOURCE_KEYS = (INTERACTIONS_FILE, ITEMS_FILE)
_KIND_TAGS = {"dagster/kind/file": ""}


def file_observation(
    asset: str, dataset: str, path: Path, origin: str, sha256: str | None = None
) -> dg.AssetObservation:
    """An observation of one dataset's raw file whose data version is its sha256."""
    sha256 = sha256 or file_sha256(path)
    return dg.AssetObservation(
        asset_key=asset,
        partition=dataset,
        tags={DATA_VERSION_TAG: sha256},
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "sha256": sha256,
            "size_bytes": path.stat().st_size,
            "origin": origin,
        },
    )


def _partitions(context: dg.OpExecutionContext) -> list[str]:
    if context.has_partition_key:
        return [context.partition_key]
    return dataset_partitions.get_partition_keys()


def _run_source_file(context: dg.OpExecutionContext) -> str | None:
    """The interactions file this run's config names, if any (the landing sensor sets it)."""
    ops = (context.run_config or {}).get("ops") or {}
    return ((ops.get("interactions") or {}).get("config") or {}).get("source_file")


def _observed(
    context: dg.OpExecutionContext, asset: str, found: Iterator[tuple[str, Path | None, str]]
) -> dg.DataVersionsByPartition:
    for dataset, path, origin in found:
        if path is None or not path.is_file():
            context.log.warning(f"{asset} of {dataset}: no file at {path} ({origin}); not observed")
            continue
        observation = file_observation(asset, dataset, path, origin)
        context.log.info(
            f"{asset} of {dataset}: {path} sha256 {observation.tags[DATA_VERSION_TAG]}"
        )
        context.log_event(observation)
    # Each observation is logged above with its metadata; nothing is left to report here.
    return dg.DataVersionsByPartition({})


@dg.observable_source_asset(
    key=INTERACTIONS_FILE,
    partitions_def=dataset_partitions,
    group_name=GROUP_DATA,
    tags=_KIND_TAGS,
    description=(
        "The raw interactions file of each dataset, as the interactions asset reads it: the run "
        "config's source_file, else the newest file in the dataset's landing folder, else the "
        "registry's file. Its data version is the file's sha256."
    ),
)
def interactions_file(context: dg.OpExecutionContext) -> dg.DataVersionsByPartition:
    from lettingo_dagster.data.ingest import RawFileMissing, interactions_source

    def found() -> Iterator[tuple[str, Path | None, str]]:
        source_file = _run_source_file(context)
        for dataset in _partitions(context):
            try:
                entry = get_dataset(dataset)
                path, origin = interactions_source(entry, source_file)
            except (RegistryError, RawFileMissing) as exc:
                yield dataset, None, str(getattr(exc, "description", None) or exc)
                continue
            yield dataset, path, origin

    return _observed(context, INTERACTIONS_FILE, found())


@dg.observable_source_asset(
    key=ITEMS_FILE,
    partitions_def=dataset_partitions,
    group_name=GROUP_DATA,
    tags=_KIND_TAGS,
    description=(
        "The raw items file of each dataset, from the registry (none for a dataset without "
        "one). Its data version is the file's sha256."
    ),
)
def items_file(context: dg.OpExecutionContext) -> dg.DataVersionsByPartition:
    def found() -> Iterator[tuple[str, Path | None, str]]:
        for dataset in _partitions(context):
            try:
                entry = get_dataset(dataset)
            except RegistryError as exc:
                yield dataset, None, str(exc)
                continue
            yield dataset, entry.items, f"registry {entry.source}"

    return _observed(context, ITEMS_FILE, found())


source_assets = [interactions_file, items_file]
