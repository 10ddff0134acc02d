"""Scoring benchmark: the offline recommender's featurizer kept across calls, against a fresh
one per call.

The report scores each method's profiles of the same test users in a call of its own, the
oracle study each condition's, and `reward_scores` a chunk of pairs at a time. An example's
profile-independent features (its recent window and candidates) are the same in every call that
reads it, and a profile's sentence embeddings in every target it is scored on. The recommender
keeps one featurizer per fitted space, so those are computed once; before, every call built a
new featurizer and recomputed them. "Fresh per call" reloads the saved recommender before each
call, which is exactly that. Shaped like the report: every method (here each writer style, and
no profile) scored in its own call on all targets of the same users, 20 candidates a target.
Both must agree to the last bit. Target: at least 1.5x.

    python bench/scoring_benchmark.py [--users 120] [--targets 10] [--methods 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from verdict import verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lettingo_dagster.evaluation.examples import ItemText, TargetExample  # noqa: E402
from lettingo_dagster.evaluation.offline import (  # noqa: E402
    MiniLMEncoder,
    OfflineConfig,
    OfflineRecommender,
)
from lettingo_dagster.exploration.history import RatedItem, UserHistory  # noqa: E402
from lettingo_dagster.exploration.writers import WRITERS, write_profiles  # noqa: E402

MIN_SPEEDUP = 1.5
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Western")


def catalog(size: int, rng: np.random.Generator) -> list[ItemText]:
    return [
        ItemText(
            f"i{i}",
            f"Film {i} of the {GENRES[i % len(GENRES)]} shelf",
            int(rng.integers(1950, 2000)),
            tuple(sorted({GENRES[i % len(GENRES)], GENRES[int(rng.integers(len(GENRES)))]})),
        )
        for i in range(size)
    ]


def world(
    users: int, targets: int, negatives: int, split: str, seed: int, items: list[ItemText]
) -> list[TargetExample]:
    """Users who like one genre and dislike another, a long window that shows it and a recent
    window of random items; targets follow the taste."""
    rng = np.random.default_rng(seed)
    by_genre = {g: [i for i in items if g in i.genres] for g in GENRES}

    def rated(item: ItemText, rating: float) -> RatedItem:
        label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
        return RatedItem(item.item_id, item.title, item.year, item.genres, rating, label)

    examples = []
    for u in range(users):
        love, hate = rng.choice(GENRES, size=2, replace=False)
        long_window = tuple(
            rated(by_genre[g][int(rng.integers(len(by_genre[g])))], r)
            for g, r in [(love, 5.0)] * 10 + [(hate, 1.0)] * 10 + [(GENRES[0], 3.0)] * 10
        )
        recent = tuple(rated(items[int(rng.integers(len(items)))], 3.0) for _ in range(10))
        for t in range(targets):
            target = by_genre[love][int(rng.integers(len(by_genre[love])))]
            others = [i for i in items if love not in i.genres]
            picked = rng.choice(len(others), size=negatives, replace=False)
            examples.append(
                TargetExample(
                    user_id=f"{split}{u}",
                    split=split,
                    target_index=t,
                    recent=recent,
                    target=target,
                    target_rating=5.0,
                    label="like",
                    negatives=tuple(others[j] for j in picked),
                    long_window=long_window,
                )
            )
    return examples


def profiles_by_user(examples: list[TargetExample], styles: list[str]) -> dict[str, dict]:
    histories = {e.user_id: UserHistory(e.user_id, e.split, e.long_window) for e in examples}
    return {user: write_profiles(history, styles) for user, history in histories.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--methods", type=int, default=8, help="writer styles scored")
    parser.add_argument("--negatives", type=int, default=19)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    items = catalog(400, rng)
    styles = sorted(WRITERS)[: args.methods]
    fit_examples = world(40, 4, args.negatives, "calibration", 1, items)
    fit_profiles = profiles_by_user(fit_examples, styles)
    encoder = MiniLMEncoder(torch_threads=2)
    model = OfflineRecommender(OfflineConfig(), encoder)
    model.fit(fit_examples, [fit_profiles[e.user_id] for e in fit_examples], "ranking",
              holdout=False)  # fmt: skip
    saved = model.save(tempfile.mkdtemp())

    examples = world(args.users, args.targets, args.negatives, "train", 2, items)
    profiles = profiles_by_user(examples, styles)
    methods = [[None] * len(examples)] + [
        [profiles[e.user_id][style] for e in examples] for style in styles
    ]
    pairs = len(methods) * len(examples)
    # Every text embedded before either timing: the encoder's cache then serves both alike.
    OfflineRecommender.load(saved, encoder).score_candidates(
        [e for _ in methods for e in examples], [p for texts in methods for p in texts]
    )

    def score_all(model_for_call) -> np.ndarray:
        return np.array(
            [s for texts in methods for s in model_for_call().score_candidates(examples, texts)]
        )

    started = time.perf_counter()
    fresh_scores = score_all(lambda: OfflineRecommender.load(saved, encoder))
    fresh_seconds = time.perf_counter() - started
    kept = OfflineRecommender.load(saved, encoder)
    started = time.perf_counter()
    kept_scores = score_all(lambda: kept)
    kept_seconds = time.perf_counter() - started

    identical = bool(np.array_equal(fresh_scores, kept_scores))
    speedup = fresh_seconds / kept_seconds
    print(
        f"{pairs:,} (profile, target) pairs: {len(methods)} methods (no profile and "
        f"{len(styles)} writer styles), each in one call on {args.users} users x "
        f"{args.targets} targets, {args.negatives + 1} candidates each"
    )
    print(
        f"fresh featurizer per call: {fresh_seconds:6.2f} s ({pairs / fresh_seconds:,.0f} pairs/s)"
    )
    print(
        f"featurizer kept:           {kept_seconds:6.2f} s ({pairs / kept_seconds:,.0f} pairs/s, {speedup:.1f}x)"
    )
    print(f"scores identical: {identical}")
    return verdict(
        speedup >= MIN_SPEEDUP and identical,
        f"featurizer kept across calls {speedup:.1f}x faster (needed >= {MIN_SPEEDUP}x), "
        f"scores {'identical' if identical else 'DIFFER'}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
