"""The base generator's folder: which training users it learns from, its version (a hash of the
settings and the examples), pretraining it once per version, and a few samples beside the
writers' profiles to show. The `base_generator` asset calls these and emits the metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lettingo_dagster.exploration.history import UserHistory
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.exploration.writers import write_profiles
from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.paths import models_dir
from lettingo_dagster.settings import Preset

REPORT_FILE = "pretrain_report.json"


def training_histories(histories: Sequence[UserHistory], limit: int | None) -> list[UserHistory]:
    """A stable subset of training users (ordered by a hash of the id), at most `limit`."""
    ordered = sorted(histories, key=lambda h: hashlib.sha256(h.user_id.encode()).hexdigest())
    return ordered[:limit] if limit else ordered


def loss_table(curve: list[tuple[int, float]], rows: int = 12) -> pd.DataFrame:
    """About `rows` evenly spaced points of the loss curve, always with the last one."""
    stride = max(1, len(curve) // rows)
    picked = curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else [])
    return pd.DataFrame(picked, columns=["step", "loss"]).round(4)


@dataclass(frozen=True)
class BaseGeneratorOutcome:
    version: str
    folder: Path
    train: list[UserHistory]  # the users it was trained on
    report: dict[str, Any]  # pretrain's report (parameters, examples, loss curve, ...)


def train_or_reuse(
    preset: Preset,
    dataset: str,
    histories: Sequence[UserHistory],
    log: Callable[[str], None] = print,
) -> BaseGeneratorOutcome:
    """Pretrain the base generator into `models/base_generator/{dataset}/{version}`, or reuse
    the folder when this version was trained before."""
    from lettingo_dagster.exploration.base_generator import pretrain, training_examples

    config = preset.base_generator
    train = training_histories(histories, config.max_train_users)
    examples = training_examples(
        train, load_template(config.prompt_template), config.styles,
        config.window_views, config.view_keep, config.seed,
        permute_genres=config.permute_genres, genre_figures=config.genre_figures,
    )  # fmt: skip
    version = hashlib.sha256(
        json.dumps(
            {
                "settings": config.model_dump(),
                "examples": [(p.digest(), text) for p, text, _ in examples],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    out_dir = models_dir() / "base_generator" / dataset / version
    report_file = out_dir / REPORT_FILE
    if report_file.is_file():
        log(f"base generator {version} already trained at {out_dir}; reusing it")
        report = json.loads(report_file.read_text())
    else:
        log(f"pretraining base generator {version} on {len(examples)} writer profiles")
        # A killed run never leaves a half-saved model under the version's name.
        with write_folder_atomically(out_dir) as scratch:
            result = pretrain(
                examples, config, scratch, torch_threads=preset.compute.torch_threads, log=log
            )
            report = asdict(result)
            (scratch / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return BaseGeneratorOutcome(version, out_dir, train, report)


def samples_markdown(preset: Preset, outcome: BaseGeneratorOutcome, users: int = 3) -> str:
    """A sample of the trained generator for a few training users, beside the profiles of the
    writer styles it was pretrained on (genre_affinity when it names none), as Markdown."""
    from lettingo_dagster.exploration.base_generator import sample_examples

    settings = preset.base_generator
    shown_users = outcome.train[:users]
    template = load_template(settings.prompt_template)
    shown = sample_examples(
        outcome.folder, shown_users, template, users, preset.exploration.explorers[0].decoding
    )
    styles = tuple(settings.styles or ("genre_affinity",))
    blocks = []
    for history, (_, sample) in zip(shown_users, shown, strict=True):
        writers = write_profiles(history, styles, genre_figures=settings.genre_figures)
        lines = [f"- writer ({style}): {text}" for style, text in writers.items()]
        blocks.append("\n".join([f"**user {history.user_id}**\n", f"- sample: {sample}", *lines]))
    return "\n\n".join(blocks)
