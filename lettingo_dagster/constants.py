"""One source for the names the graph is built from: groups, pools, tasks, protocols, owners.

Asset modules, checks, jobs, presets' validation and the definitions snapshot test all import
these; nothing retypes them.
"""

from __future__ import annotations

from typing import Literal

OWNERS = ["team:lettingo"]

# Asset groups, one per stage of the method plus the report.
GROUP_DATA = "data"
GROUP_EXPLORATION = "exploration"
GROUP_EVALUATION = "evaluation"
GROUP_ALIGNMENT = "alignment"
GROUP_REPORT = "report"

# Pools, named for what they guard (limits in dagster.yaml: one step at a time each).
# `warehouse`: steps whose work is writing the DuckDB warehouse (one writing process per file).
# `model`: long model work (pretraining, sampling, DPO) that would oversubscribe the cores or a
# GPU if two ran at once. CPU steps that only read the warehouse and compute stay in neither.
POOL_WAREHOUSE = "warehouse"
POOL_MODEL = "model"
POOLS = (POOL_WAREHOUSE, POOL_MODEL)

# The recommender's tasks.
Task = Literal["sentiment", "ranking"]
TASKS: tuple[Task, ...] = ("sentiment", "ranking")

# How targets are drawn: the paper's last T interactions, or a seeded random sample of the
# user's history (the windows are then the latest remaining items).
TargetProtocol = Literal["next", "heldout"]
TARGET_PROTOCOLS: tuple[TargetProtocol, ...] = ("next", "heldout")

SPLITS = ("train", "calibration", "test")
