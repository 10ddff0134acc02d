"""Which model DPO trains: the preset's policy explorer and its folder."""

from __future__ import annotations

from collections.abc import Sequence

from lettingo_dagster.exploration.history import UserHistory
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
    path = explorer.model_path()
    assert path is not None  # the preset validates this
    return path


def policy_prompts(preset: Preset, histories: Sequence[UserHistory]) -> dict[str, tuple[str, str]]:
    """Each user's DPO prompt (system, user): the generator's exploration prompt over the long
    window, rendered as the policy sees it when sampling (its special tokens defused in the
    data)."""
    from lettingo_dagster.exploration.base_generator import SPECIAL_TOKENS
    from lettingo_dagster.exploration.prompts import load_template

    template = load_template(preset.base_generator.prompt_template)
    specials = SPECIAL_TOKENS if policy_kind(preset) == "base_generator" else ()
    prompts = {}
    for history in histories:
        prompt = template.render(history, specials)
        prompts[history.user_id] = (prompt.system, prompt.user)
    return prompts
