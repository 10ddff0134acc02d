"""The model factory: the backend an explorer entry (or a recommender's model entry) names.

Every stage builds its models here, so evaluation and the report reach `models/` without
going through exploration. Backends import torch or httpx only when they are built.
"""

from __future__ import annotations

from lettingo_dagster.models.base import TextModel
from lettingo_dagster.settings import ExplorerSettings


def build_model(
    explorer: ExplorerSettings, base_generator_dir: str | None, torch_threads: int
) -> TextModel:
    """The backend an explorer entry names (imports torch or httpx only when needed)."""
    if explorer.kind in ("base_generator", "local"):
        from lettingo_dagster.models.local import LocalCausalLM

        path = base_generator_dir if explorer.kind == "base_generator" else explorer.model_path()
        if path is None:
            raise ValueError(f"explorer {explorer.name!r}: no model folder")
        return LocalCausalLM(
            path,
            adapter=explorer.adapter_path(),
            torch_threads=torch_threads,
            batch_size=explorer.batch_size,
            name=explorer.name,
        )
    if explorer.kind == "openai":
        from lettingo_dagster.models.openai_compat import OpenAICompatibleModel

        return OpenAICompatibleModel(
            base_url=str(explorer.base_url),
            model=str(explorer.model),
            api_key_env=explorer.api_key_env,
            timeout_s=explorer.timeout_s,
            max_retries=explorer.max_retries,
            backoff_base_s=explorer.retry_backoff_s,
            max_concurrency=explorer.max_concurrency,
            name=explorer.name,
        )
    raise ValueError(f"explorer {explorer.name!r}: kind {explorer.kind!r} has no model")
