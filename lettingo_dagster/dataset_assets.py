"""What every LettinGo asset shares: one partition per dataset in the registry, the owning team,
and a code version. `dataset_asset` is `dg.asset` with those filled in; each asset still states
its own key, group, kinds, pool, dependencies and description."""

from collections.abc import Callable
from typing import Any

import dagster as dg

from lettingo_dagster.constants import OWNERS
from lettingo_dagster.registry import load_registry

# Read when the definitions load: a dataset added to the registry appears on reload.
dataset_partitions = dg.StaticPartitionsDefinition(sorted(load_registry()))


def dataset_asset(
    *,
    key: str,
    group_name: str,
    kinds: set[str],
    pool: str | None,
    description: str,
    code_version: str = "1",
    **kwargs: Any,
) -> Callable[..., dg.AssetsDefinition]:
    """`dg.asset` partitioned by dataset and owned by the team; `pool` is one of
    `constants.POOLS` (one step at a time each, dagster.yaml) or None for CPU steps."""
    return dg.asset(
        key=key,
        partitions_def=dataset_partitions,
        group_name=group_name,
        kinds=kinds,
        owners=OWNERS,
        pool=pool,
        code_version=code_version,
        description=description,
        **kwargs,
    )
