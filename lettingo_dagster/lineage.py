"""The audit chain of a registered generator: which MLflow run and Dagster run made it, and the
materializations it came from, down to the interactions file's sha256.

The chain follows Dagster's own provenance: each materialization records, for every upstream
asset, the event it read (a storage id); the link below it is the latest materialization (or,
for the source file, observation) of that asset's dataset partition at or before that event.
When a registered version is created, its chain is written to the version's tags
(`lineage.<asset>.<field>`), so the answer survives without the Dagster instance: `lettingo
lineage` reads the tags, and adds the Dagster run's status when the instance is at hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

# From the trained model down to the file it came from; each asset is a parent of the one before.
LINEAGE_CHAIN = (
    "dpo_checkpoint",
    "preference_pairs",
    "reward_scores",
    "sampled_profiles",
    "task_samples",
    "interactions",
    "interactions_file",
)
SOURCE_ASSETS = frozenset({"interactions_file", "items_file"})
TAG_PREFIX = "lineage."
FIELDS = ("data_version", "code_version", "run_id", "time", "checks", "sha256", "path")


class LineageError(LookupError):
    """No such registered model or version, or a version without a recorded lineage."""


@dataclass
class Link:
    """One materialization (or, for a source file, observation) in a chain."""

    asset: str
    data_version: str | None
    code_version: str | None
    run_id: str | None
    time: str | None
    checks: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None  # source files only
    path: str | None = None  # source files only

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        if self.asset not in SOURCE_ASSETS:
            found.pop("sha256")
            found.pop("path")
        return found


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _check_outcome(passed: bool, severity: Any) -> str:
    return "passed" if passed else f"failed ({getattr(severity, 'value', severity)})"


def run_checks(instance: dg.DagsterInstance, run_id: str, asset: str) -> dict[str, str]:
    """Each check of `asset` evaluated in the run: `passed` or `failed (SEVERITY)`."""
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    found = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.asset_key == dg.AssetKey(asset):
            found[evaluation.check_name] = _check_outcome(evaluation.passed, evaluation.severity)
    return dict(sorted(found.items()))


def latest_record(
    instance: dg.DagsterInstance, asset: str, dataset: str, at_or_before: int | None = None
) -> Any | None:
    """The latest materialization (observation for a source) of the partition, optionally at or
    before a storage id."""
    return instance.get_latest_data_version_record(
        dg.AssetKey(asset),
        asset in SOURCE_ASSETS,
        dataset,
        before_cursor=at_or_before + 1 if at_or_before is not None else None,
    )


def link_from_record(instance: dg.DagsterInstance, asset: str, record: Any) -> Link:
    from dagster._core.definitions.data_version import (  # not exported by dagster 1.13
        extract_data_provenance_from_entry,
        extract_data_version_from_entry,
    )

    entry = record.event_log_entry
    version = extract_data_version_from_entry(entry)
    provenance = extract_data_provenance_from_entry(entry)
    link = Link(
        asset=asset,
        data_version=version.value if version else None,
        code_version=provenance.code_version if provenance else None,
        run_id=record.run_id,
        time=_iso(record.timestamp),
    )
    event = entry.asset_materialization or entry.asset_observation
    metadata = {k: getattr(v, "value", v) for k, v in (event.metadata or {}).items()}
    if asset in SOURCE_ASSETS:
        link.sha256 = link.data_version
        link.path = str(metadata["path"]) if "path" in metadata else None
    else:
        link.checks = run_checks(instance, record.run_id, asset)
    return link


def chain_from(
    instance: dg.DagsterInstance, dataset: str, start: str, record: Any | None = None
) -> list[Link]:
    """The chain from `start` (its latest materialization of `dataset`, or `record`) down the
    rest of `LINEAGE_CHAIN`, following each materialization's provenance."""
    from dagster._core.definitions.data_version import extract_data_provenance_from_entry

    names = LINEAGE_CHAIN[LINEAGE_CHAIN.index(start) :]
    links: list[Link] = []
    record = record or latest_record(instance, start, dataset)
    interactions_metadata: dict[str, Any] = {}
    for position, asset in enumerate(names):
        if record is None:
            break
        links.append(link_from_record(instance, asset, record))
        event = record.event_log_entry.asset_materialization
        if asset == "interactions" and event is not None:
            interactions_metadata = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
        if position + 1 == len(names):
            break
        parent = names[position + 1]
        provenance = extract_data_provenance_from_entry(record.event_log_entry)
        pointer = provenance.input_storage_ids.get(dg.AssetKey(parent)) if provenance else None
        # Without a recorded pointer (a source never observed before the run): the latest event
        # of the parent that existed when this one was written.
        record = latest_record(
            instance, parent, dataset, pointer if pointer is not None else record.storage_id
        )
    # The file the interactions step read is named in its metadata; it wins over an observation
    # (a run may have been pointed at another file than the one last observed).
    if interactions_metadata.get("source_sha256"):
        source = next((link for link in links if link.asset == "interactions_file"), None)
        if source is None:
            source = Link("interactions_file", None, None, None, None)
            links.append(source)
        source.sha256 = str(interactions_metadata["source_sha256"])
        source.path = str(interactions_metadata.get("source_file") or source.path or "") or None
    return links


# --------------------------------------------------------------------------- registry tags


def links_to_tags(links: list[Link], dataset: str) -> dict[str, str]:
    tags = {
        f"{TAG_PREFIX}dataset": dataset,
        f"{TAG_PREFIX}assets": ",".join(link.asset for link in links),
    }
    for link in links:
        for name, value in link.as_dict().items():
            if name == "asset" or value in (None, {}):
                continue
            text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
            tags[f"{TAG_PREFIX}{link.asset}.{name}"] = text
    return tags


def links_from_tags(tags: dict[str, str]) -> list[Link]:
    assets = [a for a in tags.get(f"{TAG_PREFIX}assets", "").split(",") if a]
    links = []
    for asset in assets:
        values: dict[str, Any] = {name: tags.get(f"{TAG_PREFIX}{asset}.{name}") for name in FIELDS}
        values["checks"] = json.loads(values["checks"]) if values["checks"] else {}
        links.append(Link(asset=asset, **values))
    return links


def tag_registered_version(
    context: dg.AssetExecutionContext,
    mlflow: Any,
    name: str,
    version: str,
    asset: str,
    output: dg.Output | dg.MaterializeResult,
    checks: list[dg.AssetCheckResult],
) -> None:
    """Write the chain of a newly registered version to its tags; a version that already has
    one (a reused checkpoint) keeps the chain of the run that registered it."""
    existing = mlflow.version_tags(name, version)
    if f"{TAG_PREFIX}assets" in existing:
        context.log.info(f"{name} v{version} already carries its lineage; left as it is")
        return
    dataset = context.partition_key
    own = Link(
        asset=asset,
        data_version=output.data_version.value if output.data_version else None,
        code_version=context.assets_def.code_versions_by_key.get(context.asset_key),
        run_id=context.run.run_id,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        checks={c.check_name: _check_outcome(c.passed, c.severity) for c in checks},
    )
    position = LINEAGE_CHAIN.index(asset)
    upstream = chain_from(context.instance, dataset, LINEAGE_CHAIN[position + 1])
    tags = links_to_tags([own, *upstream], dataset)
    for key, value in tags.items():
        mlflow.set_version_tag(name, version, key, value)
    source = next((x.sha256 for x in upstream if x.asset == "interactions_file"), None)
    context.log.info(f"{name} v{version}: lineage written to its tags (source sha256 {source})")


# --------------------------------------------------------------------------- questions


def _run_summary(client: Any, run_id: str | None, ui_url: str) -> dict[str, Any]:
    if not run_id:
        return {"run_id": None}
    try:
        run = client.get_run(run_id)
    except Exception:  # a deleted run or another store: the id is still the answer
        return {"run_id": run_id}
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "url": f"{ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}",
    }


def _dagster_run(instance: dg.DagsterInstance | None, run_id: str | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"run_id": run_id}
    if instance is None or not run_id:
        return summary
    try:
        run = instance.get_run_by_id(run_id)
    except Exception:  # an instance that cannot answer: the tags still hold the chain
        return summary
    if run is not None:
        summary.update(job=run.job_name, status=run.status.value)
    return summary


def resolve_version(mlflow: Any, model: str, version: str | None, champion: bool) -> str:
    """The version number asked for: as given, or the model's champion alias."""
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        client.get_registered_model(model)
    except MlflowException:
        raise LineageError(
            f"no registered model {model!r} in the MLflow store {mlflow.tracking_uri}"
        ) from None
    if champion:
        found = mlflow.alias_version(model)
        if found is None:
            raise LineageError(f"registered model {model!r} has no champion version yet")
        return found
    if version is None:
        raise LineageError("give a VERSION or --champion")
    try:
        client.get_model_version(model, version)
    except MlflowException:
        known = sorted(
            (v.version for v in client.search_model_versions(f"name='{model}'")), key=int
        )
        raise LineageError(
            f"registered model {model!r} has no version {version!r} "
            f"(versions: {', '.join(map(str, known)) or 'none'})"
        ) from None
    return str(version)


def describe_version(
    mlflow: Any, model: str, version: str, instance: dg.DagsterInstance | None = None
) -> dict[str, Any]:
    """The chain of one registered version, from its tags (and the instance, when given)."""
    client = mlflow.client()
    found = client.get_model_version(model, version)
    tags = dict(found.tags)
    links = links_from_tags(tags)
    if not links:
        raise LineageError(
            f"{model} v{version} carries no lineage tags (registered before lineage was "
            "recorded); its MLflow run is " + str(found.run_id)
        )
    aliases = sorted(getattr(found, "aliases", []) or [])
    return {
        "model": model,
        "version": str(version),
        "aliases": aliases,
        "dataset": tags.get(f"{TAG_PREFIX}dataset"),
        "mlflow_run": _run_summary(client, found.run_id, mlflow.ui_url),
        "dagster_run": _dagster_run(instance, tags.get("dagster.run_id") or links[0].run_id),
        "chain": [link.as_dict() for link in links],
    }


def versions_from_source(mlflow: Any, sha256: str) -> list[dict[str, Any]]:
    """Every registered version whose chain starts at a file with this sha256 (or prefix)."""
    client = mlflow.client()
    key = f"{TAG_PREFIX}interactions_file.sha256"
    found = []
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            value = version.tags.get(key, "")
            if value and value.startswith(sha256.lower()):
                found.append(
                    {
                        "model": model.name,
                        "version": str(version.version),
                        "sha256": value,
                        "mlflow_run_id": version.run_id,
                        "dagster_run_id": version.tags.get(f"{TAG_PREFIX}dpo_checkpoint.run_id"),
                        "created": _iso(version.creation_timestamp / 1000),
                    }
                )
    return sorted(found, key=lambda v: (v["model"], int(v["version"])))


def render_chain(description: dict[str, Any]) -> str:
    """The chain as lines for a terminal."""
    aliases = f" ({', '.join(description['aliases'])})" if description["aliases"] else ""
    run = description["mlflow_run"]
    dagster = description["dagster_run"]
    lines = [
        f"{description['model']} v{description['version']}{aliases}, "
        f"dataset {description['dataset']}",
        f"  MLflow run:  {run['run_id']}"
        + (f" ({run['name']}, {run['status']}) {run['url']}" if "name" in run else ""),
        f"  Dagster run: {dagster['run_id']}"
        + (f" ({dagster['job']}, {dagster['status']})" if "job" in dagster else ""),
        "  chain:",
    ]
    for link in description["chain"]:
        if link["asset"] in SOURCE_ASSETS:
            lines.append(f"    {link['asset']:<18} sha256 {link['sha256']}")
            lines.append(f"    {'':<18} file {link['path']}, observed {link['time']}")
            continue
        checks = ", ".join(f"{k} {v}" for k, v in link["checks"].items()) or "none"
        lines.append(
            f"    {link['asset']:<18} data {str(link['data_version'])[:16]}  "
            f"code {link['code_version']}  run {str(link['run_id'])[:8]}  {link['time']}"
        )
        lines.append(f"    {'':<18} checks: {checks}")
    return "\n".join(lines)


def stale_statuses(
    instance: dg.DagsterInstance, asset_graph: Any, dataset: str
) -> dict[str, tuple[str, list[str]]]:
    """Dagster's own sync status of every asset's `dataset` partition (what the UI shows as
    unsynced): `FRESH`, `STALE` or `MISSING`, with each cause and the dependency behind it."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.definitions.temporal_context import TemporalContext
    from dagster._time import get_current_datetime

    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance, asset_graph, view)
    found = {}
    for key in sorted(asset_graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        causes = [
            cause.reason
            + (f" ({cause.dependency.asset_key.to_user_string()})" if cause.dependency else "")
            for cause in resolver.get_stale_causes(key, dataset)
        ]
        found[key.to_user_string()] = (resolver.get_status(key, dataset).value, causes)
    return found
