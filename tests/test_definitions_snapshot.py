"""The shape of the Dagster definitions, pinned: every asset (group, kinds, pool, dependencies,
partitions, what its code version is derived from, whether it is a source), every asset check (asset, name, blocking), every job with its
selection, every sensor, the pools and the resources, compared with
`tests/snapshots/definitions.json`.

Any change to the graph's shape fails here until the snapshot is rewritten, so the change shows
up in review as a diff of that file. After an intended change, rewrite it with

    LETTINGO_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_definitions_snapshot.py

`tests/test_definitions.py` checks that the definitions load and read well in the UI; this file
only pins their shape.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from lettingo_dagster import constants, versioning
from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE = os.environ.get("LETTINGO_UPDATE_SNAPSHOTS") == "1"
GROUPS = {
    constants.GROUP_DATA,
    constants.GROUP_EXPLORATION,
    constants.GROUP_EVALUATION,
    constants.GROUP_ALIGNMENT,
    constants.GROUP_REPORT,
}


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    # The dataset partitions' keys are the registry's entries (the tests add their own), so the
    # snapshot names the definition rather than listing its keys.
    if partitions_def is None:
        return None
    if partitions_def == dataset_partitions:
        return "dataset"
    return type(partitions_def).__name__


def describe(definitions: dg.Definitions) -> dict[str, Any]:
    """A stable, JSON-ready description of the definitions' shape (sorted everywhere)."""
    graph = definitions.resolve_asset_graph()
    assets = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        pools = sorted(node.pools or ())
        assets.append(
            {
                "key": key.to_user_string(),
                "group": node.group_name,
                "kinds": sorted(node.kinds),
                "pool": pools[0] if len(pools) == 1 else (pools or None),
                "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
                "partitions": _partitions(node.partitions_def),
                "code_version": _code_version(key.to_user_string(), node.code_version),
                "source": node.is_external,
            }
        )
    checks = [
        {"asset": k.asset_key.to_user_string(), "name": k.name, "blocking": graph.get(k).blocking}
        for k in sorted(
            graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)
        )
    ]
    jobs = []
    for job in sorted(definitions.jobs or [], key=lambda j: j.name):
        resolved = definitions.resolve_job_def(job.name)
        selection = getattr(job, "selection", None)
        jobs.append(
            {
                "name": job.name,
                "selection": str(selection) if selection is not None else None,
                "assets": sorted(
                    k.to_user_string() for k in resolved.asset_layer.selected_asset_keys
                ),
                "partitions": _partitions(resolved.partitions_def),
            }
        )
    sensors = [
        {
            "name": sensor.name,
            "type": sensor.sensor_type.value,
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "jobs": sorted(target.job_name for target in sensor.targets),
        }
        for sensor in sorted(definitions.sensors or [], key=lambda s: s.name)
    ]
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": jobs,
        "sensors": sensors,
        "pools": sorted({pool for node in assets for pool in _as_list(node["pool"])}),
        "resources": sorted(definitions.resources or {}),
    }


def _code_version(key: str, code_version: str | None) -> str | None:
    # Code versions are hashes of the asset's logic and settings (lettingo_dagster.versioning),
    # so they change with every edit; the snapshot pins what they are derived from.
    if code_version is None:
        return None
    sections = versioning.SETTINGS_READ[key]
    return "derived from its logic" + (f" and settings {', '.join(sections)}" if sections else "")


def _as_list(pool: str | list[str] | None) -> list[str]:
    return [] if pool is None else [pool] if isinstance(pool, str) else pool


def _render(description: dict[str, Any]) -> str:
    """JSON with one line per asset, check, job or sensor, so a diff shows what changed."""
    sections = []
    for name, entries in description.items():
        lines = ",\n".join(f"    {json.dumps(entry)}" for entry in entries)
        sections.append(f'  "{name}": [\n{lines}\n  ]' if entries else f'  "{name}": []')
    return "{\n" + ",\n".join(sections) + "\n}\n"


def test_definitions_match_the_snapshot() -> None:
    current = _render(describe(defs))
    if UPDATE:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(current, encoding="utf-8")
        return
    assert SNAPSHOT.is_file(), f"no snapshot yet: run with LETTINGO_UPDATE_SNAPSHOTS=1 ({SNAPSHOT})"
    expected = SNAPSHOT.read_text(encoding="utf-8")
    if current != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                current.splitlines(keepends=True),
                fromfile=str(SNAPSHOT),
                tofile="the definitions now",
            )
        )
        raise AssertionError(
            "the definitions changed; if intended, rerun with LETTINGO_UPDATE_SNAPSHOTS=1 and "
            f"review the snapshot's diff:\n{diff}"
        )


def test_groups_and_pools_come_from_the_constants() -> None:
    description = describe(defs)
    assert {asset["group"] for asset in description["assets"]} <= GROUPS
    assert set(description["pools"]) <= set(constants.POOLS)
