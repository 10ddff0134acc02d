"""Which model DPO trains: the preset's policy explorer and its folder."""

from __future__ import annotations

from lettingo_dagster.settings import ExplorerSettings, Preset


def policy_explorer(preset: Preset) -> ExplorerSettings:
    """The explorer entry `dpo.policy` names (the preset validates that it exists)."""
    return next(e for e in preset.exploration.explorers if e.name == preset.dpo.policy)


def policy_kind(preset: Preset) -> str:
    return policy_explorer(preset).kind


def policy_folder(preset: Preset, policy: str, base_generator_dir: str) -> str:
    """The model folder of explorer `policy`: the base generator's, or a local model's path."""
    explorer = next(e for e in preset.exploration.explorers if e.name == policy)
    if explorer.kind == "base_generator":
        return base_generator_dir
    assert explorer.path is not None  # the preset validates this
    return explorer.path
