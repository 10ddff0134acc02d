"""The frozen recommender's folder: fit once on calibration users over the real candidate
distribution (every explorer's calibration profiles, and no profile), saved under its
fingerprint and never refit; or, for the LLM recommender, the spec that names its model. The
`recommender` asset calls these and emits the metadata."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.evaluation.recommender import RECOMMENDER_SPEC, offline_recommender
from lettingo_dagster.folders import write_folder_atomically
from lettingo_dagster.paths import models_dir
from lettingo_dagster.settings import Preset


def write_llm_spec(preset: Preset, dataset: str) -> Path:
    """The LLM recommender's folder: only the spec (its model and prompt template)."""
    config = preset.recommender
    folder = models_dir() / "recommender" / dataset / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "llm", "model": config.model.model_dump() if config.model else None,
            "prompt_template": config.prompt_template}  # fmt: skip
    (folder / RECOMMENDER_SPEC).write_text(json.dumps(spec, indent=1))
    return folder


def calibration_candidates(
    con: duckdb.DuckDBPyConnection, dataset: str
) -> dict[str, dict[str, str]]:
    """Every calibration user's sampled profiles, keyed `explorer/style` (or sample index)."""
    candidates = con.execute(
        """SELECT user_id, explorer, coalesce(style, CAST(sample_index AS VARCHAR)) AS slot,
                  profile
           FROM sampled_profiles WHERE dataset = ? AND split = 'calibration'""",
        [dataset],
    ).df()
    by_user: dict[str, dict[str, str]] = defaultdict(dict)
    for row in candidates.itertuples():
        by_user[row.user_id][f"{row.explorer}/{row.slot}"] = row.profile
    return by_user


@dataclass(frozen=True)
class FittedRecommender:
    folder: Path
    fingerprint: str
    figures: dict[str, Any]  # the fit's calibration figures
    seconds: float


def fit_offline(
    preset: Preset,
    dataset: str,
    examples: Sequence[TargetExample],
    candidates: dict[str, dict[str, str]],
    knowledge_dir: str,
) -> FittedRecommender:
    """Fit the offline recommender on the calibration examples, each with every candidate of
    its user and once without a profile, and save it unless that fingerprint is saved."""
    started = time.perf_counter()
    model = offline_recommender(preset, knowledge_dir)
    figures = model.fit(
        examples, [candidates.setdefault(e.user_id, {}) for e in examples],
        (preset.recommender.task,), holdout=False,
    )  # fmt: skip
    folder = models_dir() / "recommender" / dataset / model.fingerprint
    if not (folder / RECOMMENDER_SPEC).is_file():
        with write_folder_atomically(folder) as scratch:
            model.save(scratch)
            (scratch / RECOMMENDER_SPEC).write_text(
                json.dumps({"kind": "offline", "figures": figures}, indent=1)
            )
    return FittedRecommender(folder, model.fingerprint, figures, time.perf_counter() - started)


def figures_table(figures: dict[str, float]) -> pd.DataFrame:
    """`source/metric` figures as one row per profile source."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in figures.items():
        source, _, metric = key.partition("/")
        if metric:
            rows[source][metric] = round(float(value), 4)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("profile").reset_index()
