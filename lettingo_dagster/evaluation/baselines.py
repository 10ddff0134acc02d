"""Sanity baselines on the recent window: popularity and item-kNN through the item knowledge.

A profile-reading recommender is only worth its heads if, with no profile at all, it does at
least as well as these. Both ignore profiles. For sentiment they predict from a rating estimate
(the item's mean rating, or the recent items' ratings weighted by their similarity to the
target) mapped to the label it falls in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.evaluation.knowledge import ItemKnowledge, _unit
from lettingo_dagster.evaluation.recommender import Recommender, check_profiles
from lettingo_dagster.settings import TaskSettings

POPULARITY = "popularity"
ITEM_KNN = "item_knn"


def _label_probabilities(ratings: np.ndarray, task: TaskSettings) -> np.ndarray:
    """One-hot rows (dislike, neutral, like) for estimated ratings under the task's thresholds."""
    out = np.zeros((len(ratings), 3))
    out[ratings <= task.dislike_threshold, 0] = 1.0
    out[ratings >= task.like_threshold, 2] = 1.0
    out[out.sum(axis=1) == 0, 1] = 1.0
    return out


class _KnowledgeBaseline(Recommender):
    def __init__(self, knowledge: ItemKnowledge, task: TaskSettings) -> None:
        self.knowledge = knowledge
        self.task = task

    @property
    def fingerprint(self) -> str:
        return f"{self.name}-{self.knowledge.fingerprint}"

    def _rating(self, example: TargetExample) -> float:
        raise NotImplementedError

    def _scores(self, example: TargetExample) -> np.ndarray:
        raise NotImplementedError

    def predict_sentiment(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> np.ndarray:
        check_profiles(examples, profiles)
        return _label_probabilities(np.array([self._rating(e) for e in examples]), self.task)

    def score_candidates(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> list[np.ndarray]:
        check_profiles(examples, profiles)
        return [self._scores(e) for e in examples]


class PopularityRecommender(_KnowledgeBaseline):
    """Ranks by how many training users rated the item; rates it at its mean rating."""

    name = POPULARITY

    def _rating(self, example: TargetExample) -> float:
        stats = self.knowledge.item_stats([example.target.item_id])
        return float(stats[0, 1] + self.knowledge.global_mean)

    def _scores(self, example: TargetExample) -> np.ndarray:
        return self.knowledge.item_stats([c.item_id for c in example.candidates])[:, 0]


class ItemKnnRecommender(_KnowledgeBaseline):
    """Ranks by the highest factor cosine to a recent item; rates by the recent items' ratings
    weighted by their (positive) similarity to the target."""

    name = ITEM_KNN

    def _similarities(self, example: TargetExample, candidates) -> np.ndarray:
        cand = _unit(self.knowledge.vectors([c.item_id for c in candidates]))
        recent = _unit(self.knowledge.vectors([i.item_id for i in example.recent]))
        return cand @ recent.T

    def _rating(self, example: TargetExample) -> float:
        sims = np.clip(self._similarities(example, [example.target])[0], 0, None)
        ratings = np.array([i.rating for i in example.recent], dtype=float)
        if sims.sum() <= 0:
            return float(ratings.mean())
        return float(sims @ ratings / sims.sum())

    def _scores(self, example: TargetExample) -> np.ndarray:
        return self._similarities(example, example.candidates).max(axis=1)
