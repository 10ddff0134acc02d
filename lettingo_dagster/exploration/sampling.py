"""Stage 1 as plain steps: every explorer of the preset writes candidate profiles of the users,
in order, stopping at the first explorer whose failed model calls pass its budget; the
candidates become the rows of `sampled_profiles`. The `sampled_profiles` asset stores them and
emits the metadata and checks."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from lettingo_dagster.exploration.explorers import (
    FailedCallRow,
    failed_call_rows,
    failure_budget_exceeded,
    model_candidates,
    remote_call_summary,
    template_name,
    writer_candidates,
)
from lettingo_dagster.exploration.history import UserHistory
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.models.factory import build_model
from lettingo_dagster.settings import Preset

PROFILE_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "profile_id": "VARCHAR",  # stable id of one candidate: hash of who wrote what for whom
    "split": "VARCHAR",
    "explorer": "VARCHAR",
    "explorer_kind": "VARCHAR",
    "style": "VARCHAR",
    "sample_index": "INTEGER",
    "profile": "VARCHAR",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "generation_seconds": "DOUBLE",
    "finish_reason": "VARCHAR",
    "model_fingerprint": "VARCHAR",
}


@dataclass
class ExplorationRun:
    """Every explorer's candidates, one summary row per explorer, and the failed model calls."""

    rows: list[Any] = field(default_factory=list)
    per_explorer: list[dict[str, Any]] = field(default_factory=list)
    failures: list[FailedCallRow] = field(default_factory=list)
    over_budget: str | None = None  # why the run stopped, when an explorer failed too often


def run_explorers(
    preset: Preset,
    histories: Sequence[UserHistory],
    base_generator_dir: str,
    cache: ModelCallCache,
    log: Callable[[str], None] = print,
) -> ExplorationRun:
    exploration = preset.exploration
    histories = list(histories)
    run = ExplorationRun()
    for explorer in exploration.explorers:
        explorer_started = time.perf_counter()
        calls: dict[str, Any] = {}
        chosen = [h for h in histories if explorer.splits is None or h.split in explorer.splits]
        if explorer.kind == "writers":
            produced = writer_candidates(explorer, chosen)
            hit_rate, tokens_per_second, model_calls = None, None, 0
        else:
            model = build_model(explorer, base_generator_dir, preset.compute.torch_threads)

            def progress(update: ChunkProgress, name: str = explorer.name) -> None:
                log(
                    f"{name}: {update.done}/{update.total} users, "
                    f"{update.stats.tokens_per_second:.0f} tokens/s, cache hits {update.stats.hits}"
                )

            produced, stats = model_candidates(
                explorer, model, chosen, template_name(explorer, preset.base_generator), cache,
                chunk_size=exploration.chunk_size, on_chunk=progress,
            )  # fmt: skip
            hit_rate, tokens_per_second, model_calls = (
                stats.hit_rate,
                stats.tokens_per_second,
                stats.misses,
            )
            calls = remote_call_summary(stats)
            run.failures.extend(failed_call_rows(explorer, chosen, stats))
            run.over_budget = failure_budget_exceeded(explorer, len(chosen), stats)
        run.rows.extend(produced)
        run.per_explorer.append(
            {
                "explorer": explorer.name,
                "kind": explorer.kind,
                "profiles": len(produced),
                "users": len(chosen),
                "per_user": round(len(produced) / max(len(chosen), 1), 2),
                "mean_words": round(
                    sum(len(r.profile.split()) for r in produced) / max(len(produced), 1), 1
                ),
                "new_model_calls": model_calls,
                "cache_hit_rate": None if hit_rate is None else round(hit_rate, 3),
                "tokens_per_second": None
                if tokens_per_second is None
                else round(tokens_per_second, 1),
                **calls,
                "seconds": round(time.perf_counter() - explorer_started, 2),
            }
        )
        if run.over_budget:
            break
    return run


def profile_table(dataset: str, generated: pd.DataFrame) -> pd.DataFrame:
    """The stored rows: non-empty candidates with a stable profile id, in `PROFILE_COLUMNS`
    order. An empty sample (EOS first, or an endpoint's empty answer) can teach nothing; the
    checks judge the share of them on `generated`."""
    empty = generated["profile"].str.strip() == ""
    frame = generated[~empty].reset_index(drop=True)
    frame.insert(0, "dataset", dataset)
    frame["profile_id"] = [
        hashlib.sha256(
            json.dumps(
                [dataset, r.user_id, r.explorer, r.style, r.sample_index, r.profile]
            ).encode()
        ).hexdigest()[:16]
        for r in frame.itertuples()
    ]
    return frame[list(PROFILE_COLUMNS)]


def generated_frame(run: ExplorationRun) -> pd.DataFrame:
    """Every candidate as one row, empty samples included."""
    return pd.DataFrame([asdict(row) for row in run.rows])
