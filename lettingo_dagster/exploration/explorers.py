"""Explorers: turn a preset's explorer entry into profiles for a list of users."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lettingo_dagster.exploration.history import UserHistory
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.exploration.writers import write_profiles
from lettingo_dagster.models.base import Decoding, TextModel
from lettingo_dagster.models.cache import CacheStats, ChunkProgress, ModelCallCache, generate_cached
from lettingo_dagster.settings import BaseGeneratorSettings, ExplorerSettings


@dataclass(frozen=True)
class CandidateProfile:
    user_id: str
    split: str
    explorer: str
    explorer_kind: str
    style: str | None
    sample_index: int
    profile: str
    # What the model call cost; a deterministic writer makes none, so it keeps these defaults.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    finish_reason: str | None = None
    model_fingerprint: str | None = None


def template_name(explorer: ExplorerSettings, base: BaseGeneratorSettings) -> str:
    if explorer.prompt_template:
        return explorer.prompt_template
    return base.prompt_template if explorer.kind == "base_generator" else "exploration"


def build_model(
    explorer: ExplorerSettings, base_generator_dir: str | None, torch_threads: int
) -> TextModel:
    """The backend an explorer entry names (imports torch or httpx only when needed)."""
    if explorer.kind in ("base_generator", "local"):
        from lettingo_dagster.models.local import LocalCausalLM

        path = base_generator_dir if explorer.kind == "base_generator" else explorer.path
        if path is None:
            raise ValueError(f"explorer {explorer.name!r}: no model folder")
        return LocalCausalLM(
            path,
            adapter=explorer.adapter,
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
            max_concurrency=explorer.max_concurrency,
            name=explorer.name,
        )
    raise ValueError(f"explorer {explorer.name!r}: kind {explorer.kind!r} has no model")


def writer_candidates(
    explorer: ExplorerSettings, histories: Sequence[UserHistory]
) -> list[CandidateProfile]:
    styles = tuple(explorer.styles) if explorer.styles else None
    rows = []
    for history in histories:
        for style, text in write_profiles(history, styles).items():
            rows.append(
                CandidateProfile(
                    user_id=history.user_id,
                    split=history.split,
                    explorer=explorer.name,
                    explorer_kind=explorer.kind,
                    style=style,
                    sample_index=0,
                    profile=text,
                )  # fmt: skip
            )
    return rows


def model_candidates(
    explorer: ExplorerSettings,
    model: TextModel,
    histories: Sequence[UserHistory],
    template: str,
    cache: ModelCallCache,
    *,
    chunk_size: int,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> tuple[list[CandidateProfile], CacheStats]:
    prompt_template = load_template(template)
    special_tokens = getattr(model, "special_tokens", ())
    prompts = [prompt_template.render(history, special_tokens) for history in histories]
    decoding = Decoding(**explorer.decoding.model_dump())
    samples, stats = generate_cached(
        model,
        prompts,
        decoding,
        explorer.samples_per_user,
        cache,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )
    rows = [
        CandidateProfile(
            user_id=history.user_id,
            split=history.split,
            explorer=explorer.name,
            explorer_kind=explorer.kind,
            style=None,
            sample_index=j,
            profile=sample.text,
            prompt_tokens=sample.prompt_tokens,
            completion_tokens=sample.completion_tokens,
            generation_seconds=sample.seconds,
            finish_reason=sample.finish_reason,
            model_fingerprint=model.fingerprint,
        )  # fmt: skip
        for history, user_samples in zip(histories, samples, strict=True)
        for j, sample in enumerate(user_samples)
    ]
    return rows, stats
