"""Profiles of the held-out test users, written with the same decoding by the generator before
DPO, after DPO, before DPO again with another seed (the null check) and, when there is one, the
registry's current champion. The `heldout_profiles` asset stores the table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lettingo_dagster.alignment.policy import policy_explorer, policy_folder
from lettingo_dagster.exploration.explorers import model_candidates, template_name
from lettingo_dagster.exploration.history import UserHistory
from lettingo_dagster.models.cache import ChunkProgress, ModelCallCache
from lettingo_dagster.report import evaluation as ev
from lettingo_dagster.settings import Preset

HELDOUT_COLUMNS = {
    "dataset": "VARCHAR",
    "user_id": "VARCHAR",
    "method": "VARCHAR",  # base_generator, base_generator_null, dpo_generator
    "sample_index": "INTEGER",
    "seed": "INTEGER",
    "profile": "VARCHAR",
    "completion_tokens": "INTEGER",
    "model_fingerprint": "VARCHAR",
}


@dataclass(frozen=True)
class HeldoutArm:
    """One generator sampled for the test users."""

    method: str
    folder: str
    seed: int


def heldout_arms(
    preset: Preset, base_generator_dir: str, dpo_checkpoint: str, champion_dir: str | None
) -> list[HeldoutArm]:
    """Base, base with the null seed, DPO, and the champion when it is another model."""
    config, explorer = preset.report, policy_explorer(preset)
    base = policy_folder(preset, explorer.name, base_generator_dir)
    arms = [
        HeldoutArm(ev.BASE_GENERATOR, base, config.seed),
        HeldoutArm(ev.BASE_GENERATOR_NULL, base, config.null_seed),
        HeldoutArm(ev.DPO_GENERATOR, dpo_checkpoint, config.seed),
    ]
    if champion_dir and Path(champion_dir).resolve() != Path(dpo_checkpoint).resolve():
        # The candidate must beat the champion itself: same users, decoding and seed.
        arms.append(HeldoutArm(ev.CHAMPION_GENERATOR, champion_dir, config.seed))
    return arms


def sample_heldout_profiles(
    preset: Preset,
    dataset: str,
    histories: Sequence[UserHistory],
    arms: Sequence[HeldoutArm],
    cache: ModelCallCache,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows in `HELDOUT_COLUMNS` order, one summary row per arm)."""
    from lettingo_dagster.models.factory import build_model

    config, explorer = preset.report, policy_explorer(preset)
    frames, summary = [], []
    for method, folder, seed in ((a.method, a.folder, a.seed) for a in arms):
        started = time.perf_counter()
        arm = explorer.model_copy(
            update={
                "kind": "local",
                "path": folder,
                "adapter": None,
                "name": method,
                "samples_per_user": config.samples_per_user,
                "decoding": explorer.decoding.model_copy(update={"seed": seed}),
            }
        )
        model = build_model(arm, None, preset.compute.torch_threads)

        def progress(update: ChunkProgress, name: str = method) -> None:
            log(f"{name}: {update.done}/{update.total} test users, "
                f"cache hits {update.stats.hits}")  # fmt: skip

        rows, stats = model_candidates(
            arm, model, list(histories), template_name(explorer, preset.base_generator), cache,
            chunk_size=preset.exploration.chunk_size, on_chunk=progress,
        )  # fmt: skip
        frame = pd.DataFrame([asdict(r) for r in rows])
        frames.append(
            pd.DataFrame(
                {
                    "dataset": dataset,
                    "user_id": frame["user_id"],
                    "method": method,
                    "sample_index": frame["sample_index"],
                    "seed": seed,
                    "profile": frame["profile"],
                    "completion_tokens": frame["completion_tokens"],
                    "model_fingerprint": frame["model_fingerprint"],
                }
            )
        )
        summary.append(
            {
                "method": method,
                "seed": seed,
                "profiles": len(frame),
                "mean_words": round(frame["profile"].str.split().str.len().mean(), 1),
                "empty": int((frame["profile"].str.strip() == "").sum()),
                "new_model_calls": stats.misses,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(summary)
