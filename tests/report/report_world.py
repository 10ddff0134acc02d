"""Helpers for the report tests: a small constructed world for the report tests: users who love one genre and hate another
(their long windows say so), hand-built target examples, and deterministic recommenders that
really read the profile text (word overlap), implementing the `Recommender` interface."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import ItemText, TargetExample
from lettingo_dagster.evaluation.recommender import Recommender
from lettingo_dagster.exploration.history import RatedItem
from lettingo_dagster.report import evaluation

GENRES = ("Horror", "Comedy", "Romance", "Western")
FILLER = "Drama"
RATING = {"like": 5.0, "neutral": 3.0, "dislike": 1.0}
NEGATIVE_CUES = {"dislike", "dislikes", "hates", "hate", "avoids", "avoid"}
N_USERS = 6
TARGETS = 2
N_NEGATIVES = 12


def _tokens(text: str | None) -> list[str]:
    return re.findall(r"[a-z]+", (text or "").lower())


def _rated(item: ItemText, label: str) -> RatedItem:
    return RatedItem(item.item_id, item.title, item.year, item.genres, RATING[label], label)


def build_examples(n_users: int = N_USERS, targets: int = TARGETS) -> list[TargetExample]:
    """User u loves GENRES[u % 4] and hates GENRES[(u + 1) % 4]; targets cycle like, dislike,
    neutral; the recent window is neutral filler, so only the long window tells."""
    catalog = {
        g: [ItemText(f"{g}{i}", f"{g} Picture {i}", 1970 + i, (g,)) for i in range(20)]
        for g in (*GENRES, FILLER)
    }
    examples = []
    for u in range(n_users):
        love, hate = GENRES[u % 4], GENRES[(u + 1) % 4]
        other = [g for g in GENRES if g not in (love, hate)]
        long_window = (
            tuple(_rated(catalog[love][i], "like") for i in range(4))
            + tuple(_rated(catalog[hate][i], "dislike") for i in range(4))
            + tuple(_rated(catalog[other[0]][i], "neutral") for i in range(2))
        )
        recent = tuple(_rated(catalog[FILLER][i], "neutral") for i in range(3))
        for t in range(targets):
            label = ("like", "dislike", "neutral")[(u + t) % 3]
            genre = {"like": love, "dislike": hate}.get(label, other[1])
            negatives = tuple(catalog[FILLER][5 + (i % 15)] for i in range(N_NEGATIVES))
            examples.append(
                TargetExample(
                    user_id=f"u{u}",
                    split="test",
                    target_index=t,
                    recent=recent,
                    target=catalog[genre][10 + t],
                    target_rating=RATING[label],
                    label=label,
                    negatives=negatives,
                    long_window=long_window,
                )
            )
    return examples


def _sentiment_from_text(tokens: list[str], genre: str) -> str:
    """'like' when the genre is mentioned without a negative cue in the 3 words before it,
    'dislike' when a negative cue precedes it, 'neutral' when the text never mentions it."""
    genre = genre.lower()
    verdict = "neutral"
    for i, token in enumerate(tokens):
        if token == genre:
            if NEGATIVE_CUES & set(tokens[max(0, i - 3) : i]):
                return "dislike"
            verdict = "like"
    return verdict


def _one_hot(labels: Sequence[str]) -> np.ndarray:
    probabilities = np.full((len(labels), len(LABELS)), 0.1)
    for row, label in enumerate(labels):
        probabilities[row, LABELS.index(label)] = 0.8
    return probabilities


class WordOverlapRecommender(Recommender):
    """Reads the profile: sentiment from cue words around the target's genre; candidate scores
    are the number of profile words among the candidate's genre and title words."""

    name = "word-overlap"

    @property
    def fingerprint(self) -> str:
        return "word-overlap-v1"

    def predict_sentiment(self, examples, profiles) -> np.ndarray:
        labels = [
            _sentiment_from_text(_tokens(p), e.target.genres[0])
            for e, p in zip(examples, profiles, strict=True)
        ]
        return _one_hot(labels)

    def score_candidates(self, examples, profiles) -> list[np.ndarray]:
        out = []
        for example, profile in zip(examples, profiles, strict=True):
            words = Counter(_tokens(profile))
            out.append(
                np.array(
                    [
                        sum(words[w] for w in _tokens(" ".join((*c.genres, c.title))))
                        for c in example.candidates
                    ],
                    dtype=float,
                )
            )
        return out


class LongWindowOracle(Recommender):
    """The oracle: reads the example's long window as features (the majority label per genre)."""

    name = "oracle"

    @property
    def fingerprint(self) -> str:
        return "oracle-v1"

    def _labels(self, example: TargetExample) -> dict[str, str]:
        votes: dict[str, Counter] = {}
        for item in example.long_window:
            for genre in item.genres:
                votes.setdefault(genre, Counter())[item.label] += 1
        return {genre: c.most_common(1)[0][0] for genre, c in votes.items()}

    def predict_sentiment(self, examples, profiles) -> np.ndarray:
        return _one_hot([self._labels(e).get(e.target.genres[0], "neutral") for e in examples])

    def score_candidates(self, examples, profiles) -> list[np.ndarray]:
        score = {"like": 2.0, "neutral": 1.0, "dislike": 0.0}
        return [
            np.array([score[self._labels(e).get(c.genres[0], "dislike")] for c in e.candidates])
            for e in examples
        ]


def build_generated(examples: Sequence[TargetExample]) -> dict[str, dict[str, list[str]]]:
    """Two samples per user and generator: the base generator half-describes the user, the DPO
    generator states both preferences, the null run re-samples the base generator."""
    users = {e.user_id: int(e.user_id[1:]) for e in examples}
    generated: dict[str, dict[str, list[str]]] = {m: {} for m in evaluation.GENERATOR_METHODS}
    for user, u in users.items():
        love, hate = GENRES[u % 4], GENRES[(u + 1) % 4]
        generated["base_generator"][user] = [f"The user loves {love}.", "Watches many films."]
        generated["dpo_generator"][user] = [
            f"The user loves {love} and hates {hate}.",
            f"Enjoys {love}; avoids {hate}.",
        ]
        generated["base_generator_null"][user] = [
            "Watches films of many kinds.",
            f"A fan of {love} pictures.",
        ]
    return generated
