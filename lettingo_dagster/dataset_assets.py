"""What every LettinGo asset shares: one partition per dataset in the registry, the owning team,
a code version derived from its logic and settings, and a data version computed from what each
materialization wrote (both from `versioning`). `dataset_asset` is `dg.asset` with those filled
in; each asset still states its own key, group, kinds, pool, dependencies and description.

The data version is stamped on the asset's `MaterializeResult` or `Output` as it leaves the
function, so asset bodies never compute it. An asset whose output names a registered MLflow
model version (metadata `registered_model` and `model_version`) also gets its lineage written to
that version's tags (`lineage.tag_registered_version`) when its step ends.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from lettingo_dagster.constants import OWNERS
from lettingo_dagster.registry import load_registry
from lettingo_dagster.versioning import (
    DATA_VERSION_FROM,
    active_preset_or_none,
    code_version,
    folder_data_version,
    metadata_data_version,
    table_data_version,
)

# Read when the definitions load: a dataset added to the registry appears on reload.
dataset_partitions = dg.StaticPartitionsDefinition(sorted(load_registry()))

DATA_VERSION_SOURCE_KEY = "data_version_from"


def _context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dg.AssetExecutionContext:
    return kwargs["context"] if "context" in kwargs else args[0]


def data_version_for(
    key: str, result: dg.MaterializeResult | dg.Output, dataset: str, warehouse: Any
) -> tuple[str, str]:
    """The data version of one materialization of `key` and a line saying what it hashes."""
    source = DATA_VERSION_FROM[key]
    if source == "table":
        from lettingo_dagster.resources import Warehouse

        with (warehouse or Warehouse()).get_connection() as con:
            version = table_data_version(con, key, dataset)
        return version, f"rows of warehouse table {key} (dataset = {dataset!r})"
    if source == "folder":
        folder = str(result.value)
        return folder_data_version(folder), f"files of {folder}"
    if source == "report":
        from lettingo_dagster.paths import reports_dir

        folder = reports_dir(dataset)
        return folder_data_version(folder), f"files of {folder}"
    return metadata_data_version(result.metadata or {}), "metadata, timings left out"


def _stamped(result: Any, key: str, context: Any, kwargs: dict[str, Any]) -> Any:
    """`result` with its data version set, when it is this asset's materialization."""
    if not isinstance(result, dg.MaterializeResult | dg.Output) or result.data_version is not None:
        return result
    version, source = data_version_for(key, result, context.partition_key, kwargs.get("warehouse"))
    # Also as metadata, so an asset's overview shows it beside its code version.
    metadata = {**(result.metadata or {}), "data_version": version, DATA_VERSION_SOURCE_KEY: source}
    if isinstance(result, dg.Output):
        return dg.Output(
            result.value,
            output_name=result.output_name,
            metadata=metadata,
            data_version=dg.DataVersion(version),
            tags=result.tags,
        )
    return dg.MaterializeResult(
        asset_key=result.asset_key,
        metadata=metadata,
        check_results=result.check_results,
        data_version=dg.DataVersion(version),
        tags=result.tags,
        value=result.value,
    )


def _after_step(key: str, context: Any, kwargs: dict[str, Any], events: list[Any]) -> None:
    """Lineage tags on the registered model version an output names, if any."""
    outputs = [e for e in events if isinstance(e, dg.MaterializeResult | dg.Output)]
    if not outputs or "mlflow" not in kwargs:
        return
    metadata = {k: getattr(v, "value", v) for k, v in (outputs[-1].metadata or {}).items()}
    name, version = metadata.get("registered_model"), metadata.get("model_version")
    if not name or not version:
        return
    from lettingo_dagster.lineage import tag_registered_version

    checks = [e for e in events if isinstance(e, dg.AssetCheckResult)]
    checks += list(getattr(outputs[-1], "check_results", None) or [])
    tag_registered_version(
        context, kwargs["mlflow"], str(name), str(version), key, outputs[-1], checks
    )


def with_data_versions(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an asset's function so that its materialization carries its data version."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            context = _context(args, kwargs)
            events = []
            for event in fn(*args, **kwargs):
                event = _stamped(event, key, context, kwargs)
                events.append(event)
                yield event
            _after_step(key, context, kwargs, events)

        return generator

    @functools.wraps(fn)
    def function(*args: Any, **kwargs: Any) -> Any:
        context = _context(args, kwargs)
        result = _stamped(fn(*args, **kwargs), key, context, kwargs)
        _after_step(key, context, kwargs, [result])
        return result

    return function


def dataset_asset(
    *,
    key: str,
    group_name: str,
    kinds: set[str],
    pool: str | None,
    description: str,
    **kwargs: Any,
) -> Callable[..., dg.AssetsDefinition]:
    """`dg.asset` partitioned by dataset and owned by the team, with derived code and data
    versions; `pool` is one of `constants.POOLS` (one step at a time each, dagster.yaml) or None
    for CPU steps."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        return dg.asset(
            key=key,
            partitions_def=dataset_partitions,
            group_name=group_name,
            kinds=kinds,
            owners=OWNERS,
            pool=pool,
            code_version=code_version(key, fn.__module__, active_preset_or_none()),
            description=description,
            **kwargs,
        )(with_data_versions(key, fn))

    return decorate
