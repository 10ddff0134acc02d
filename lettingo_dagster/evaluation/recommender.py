"""The recommender interface of stage 2: every recommender that scores profiles implements it.

A recommender sees what the paper's recommender sees: the user's K recent items with their
sentiment, a profile text (or none), and the target item's metadata. It never reads an example's
long window; the long window reaches it only through the profile's text. Two tasks:

- `sentiment`: probabilities of the three labels (in `LABELS` order) for the target;
- `ranking`: a score for each candidate, the target first, then the negatives (higher = more
  likely the item the user interacts with next).

Implementations: `offline.OfflineRecommender` (MiniLM features and a small trained head) and an
LLM recommender over `TextModel.score_options`. `fingerprint` must change whenever predictions
could change (weights, configuration), because reward caches key on it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lettingo_dagster.constants import TASKS
from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.settings import Preset

__all__ = [
    "LABELS", "TASKS", "Recommender", "check_profiles", "load_recommender", "offline_recommender",
]  # fmt: skip


def check_profiles(examples: Sequence[TargetExample], profiles: Sequence[str | None]) -> None:
    if len(examples) != len(profiles):
        raise ValueError(f"{len(examples)} examples but {len(profiles)} profiles")


class Recommender(ABC):
    """Scores (recent window, profile, target) triples. A profile of None or "" means none."""

    name: str

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash that changes when the weights or the configuration change."""

    @abstractmethod
    def predict_sentiment(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> np.ndarray:
        """(n, 3) label probabilities in `LABELS` order, rows summing to 1."""

    @abstractmethod
    def score_candidates(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> list[np.ndarray]:
        """Per example, scores for `[target, *negatives]` (index 0 is the target)."""


RECOMMENDER_SPEC = "recommender.json"


def offline_recommender(preset: Preset, knowledge_dir: str | None, *, oracle: bool = False):
    """A fresh, unfitted offline recommender with the preset's settings."""
    from lettingo_dagster.evaluation.knowledge import ItemKnowledge
    from lettingo_dagster.evaluation.offline import OfflineConfig, OfflineRecommender

    config = preset.recommender
    use_knowledge = config.use_item_knowledge and knowledge_dir is not None
    return OfflineRecommender(
        OfflineConfig(
            use_item_stats=config.use_item_stats,
            use_item_knowledge=use_knowledge,
            oracle_long_window=oracle,
            seed=config.seed,
            encoder_precision=config.encoder_precision,
        ),
        knowledge=ItemKnowledge.load(knowledge_dir) if use_knowledge else None,
    )


def load_recommender(
    folder: str | Path, preset: Preset, base_generator_dir: str | None = None
) -> Recommender:
    """The frozen recommender saved by the `recommender` asset."""
    spec = json.loads((Path(folder) / RECOMMENDER_SPEC).read_text())
    if spec["kind"] == "offline":
        from lettingo_dagster.evaluation.offline import OfflineRecommender

        return OfflineRecommender.load(folder)
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.models.factory import build_model

    assert preset.recommender.model is not None
    model = build_model(preset.recommender.model, base_generator_dir, preset.compute.torch_threads)
    return LLMRecommender(model, preset.recommender.prompt_template)
