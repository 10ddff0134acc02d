"""Explorers: turn a preset's explorer entry into profiles for a list of users."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

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


def allowed_failures(explorer: ExplorerSettings, calls: int) -> int:
    """How many of `calls` may fail for good before the explorer's step fails."""
    return math.floor(explorer.max_failed_call_share * calls + 1e-9)


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
    """Every user's samples; a sample whose call failed for good is missing (its user has fewer
    or none of this explorer's samples) and listed in `stats.failures`."""
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
        max_failures=allowed_failures(explorer, len(prompts) * explorer.samples_per_user),
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
        if sample is not None
    ]
    return rows, stats


# The warehouse table of the calls that failed for good in the latest materialization of
# sampled_profiles for a dataset (replaced with each one, so a run that asked again clears them).
CALL_FAILURE_COLUMNS = {
    "dataset": "VARCHAR",
    "run_id": "VARCHAR",
    "explorer": "VARCHAR",
    "user_id": "VARCHAR",
    "split": "VARCHAR",
    "sample_index": "INTEGER",
    "error_class": "VARCHAR",
    "attempts": "INTEGER",
    "message": "VARCHAR",
}


@dataclass(frozen=True)
class FailedCallRow:
    """One model call that failed for good, as the `model_call_failures` table records it."""

    user_id: str
    split: str
    explorer: str
    sample_index: int
    error_class: str
    attempts: int
    message: str


def failed_call_rows(
    explorer: ExplorerSettings, histories: Sequence[UserHistory], stats: CacheStats
) -> list[FailedCallRow]:
    return [
        FailedCallRow(
            user_id=histories[f.prompt_index].user_id,
            split=histories[f.prompt_index].split,
            explorer=explorer.name,
            sample_index=f.sample_index,
            error_class=f.error_class,
            attempts=f.attempts,
            message=f.message,
        )
        for f in stats.failures
    ]


def failure_budget_exceeded(
    explorer: ExplorerSettings, users: int, stats: CacheStats
) -> str | None:
    """None while the explorer's failed calls are within `max_failed_call_share`; else why the
    step fails, with the counts."""
    calls = users * explorer.samples_per_user
    failed = len(stats.failures)
    allowed = allowed_failures(explorer, calls)
    if failed <= allowed:
        return None
    by_class = Counter(f.error_class for f in stats.failures)
    kinds = ", ".join(f"{name} {count}" for name, count in by_class.most_common())
    stopped = (
        f"; stopped after that, {stats.not_attempted} calls not attempted"
        if stats.not_attempted
        else ""
    )
    return (
        f"explorer {explorer.name!r}: {failed} of {calls} model calls failed after their "
        f"retries ({kinds}), more than max_failed_call_share {explorer.max_failed_call_share:g} "
        f"allows ({allowed}){stopped}. {stats.hits + stats.misses} answers are cached "
        f"({stats.misses} new in this run); a retry of the step asks only for the missing ones."
    )


def call_failure_frame(dataset: str, run_id: str, rows: Sequence[FailedCallRow]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [asdict(row) for row in rows],
        columns=[c for c in CALL_FAILURE_COLUMNS if c not in ("dataset", "run_id")],
    )
    frame.insert(0, "run_id", run_id)
    frame.insert(0, "dataset", dataset)
    return frame[list(CALL_FAILURE_COLUMNS)]


def remote_call_summary(stats: CacheStats) -> dict[str, float | int | None]:
    """What an endpoint's requests met, for the per-explorer metadata (None for local models)."""
    calls = stats.calls
    return {
        "failed_calls": len(stats.failures),
        "requests": None if calls is None else calls.requests,
        "retries": None if calls is None else calls.retries,
        "rate_limited": None if calls is None else calls.rate_limited,
        "rate_limit_wait_s": None if calls is None else round(calls.rate_limit_wait_s, 2),
        "min_concurrency": None if calls is None else calls.min_concurrency,
    }
