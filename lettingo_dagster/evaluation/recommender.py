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

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import TargetExample

TASKS = ("sentiment", "ranking")

__all__ = ["LABELS", "TASKS", "Recommender", "check_profiles"]


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
