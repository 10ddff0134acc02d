"""How much does the long window add on the planted-taste world? The ceiling its parameters make.

    python bench/planted_ceiling.py [--seed 7] [--users 600] [--items 1000]

Per user, T random held-out targets (seeded); the recent window is the K latest non-target
interactions, the long window the L before it. Item factors come from a truncated SVD of the
training users' interactions. Two tasks, each scored from the recent window alone and from the
recent plus the long window, on test users only:

- ranking: each target against N random items the user never rated; the score is the cosine of
  an item's factors with the window's user vector (the mean of its items' factors plus their
  rating-centred mean); HR@1 with ties split at random.
- sentiment (rating >= 4 like, <= 2 dislike, else neutral): a multinomial logistic regression,
  fit on training users' targets, over the window's mean rating, the candidate's genre share and
  genre affinity (mean centred rating per genre) in the window, and the cosine of the
  candidate's rating-centred factors with the window's rating-centred vector; accuracy.

A third row reads the planted truth itself (the target's liked / disliked / neutral genre class,
the user's bias, favourites): what a perfect profile could say. 95% bootstrap intervals over test
users; the long-minus-recent difference is paired. The verdict: the long window adds at least
+10 points on HR@1 or on sentiment accuracy, with the interval's lower bound above 0.

Plain numpy / scipy / scikit-learn on the generator's in-memory world; no Dagster.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.decomposition import TruncatedSVD
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from verdict import verdict  # noqa: E402

from lettingo_dagster.data.planted import (  # noqa: E402
    GENRES,
    PlantedParams,
    PlantedWorld,
    generate_planted_world,
)

MIN_GAIN = 0.10  # the long window must add at least 10 points


@dataclass(frozen=True)
class UserSample:
    user: int
    items: np.ndarray  # the user's whole history, by time
    ratings: np.ndarray
    targets: np.ndarray  # positions in the history
    recent: np.ndarray
    long: np.ndarray
    negatives: list[np.ndarray]  # per target


def build_samples(world: PlantedWorld, args: argparse.Namespace, rng_seed: int) -> list[UserSample]:
    starts = np.flatnonzero(np.r_[True, np.diff(world.user) != 0])
    ends = np.r_[starts[1:], len(world.user)]
    n_items = world.params.n_items
    samples = []
    for start, end in zip(starts, ends, strict=True):
        user = int(world.user[start])
        items, ratings = world.item[start:end], world.rating[start:end].astype(float)
        rng = np.random.default_rng([rng_seed, user])
        if args.target_choice == "last":
            targets = np.arange(len(items) - args.targets, len(items))
        else:
            targets = np.sort(rng.choice(len(items), size=args.targets, replace=False))
        rest = np.setdiff1d(np.arange(len(items)), targets)
        recent = rest[-args.recent :]
        long = rest[-(args.recent + args.long) : -args.recent]
        unrated = np.setdiff1d(np.arange(n_items), items)
        negatives = [rng.choice(unrated, size=args.negatives, replace=False) for _ in targets]
        samples.append(UserSample(user, items, ratings, targets, recent, long, negatives))
    return samples


def item_factors(
    world: PlantedWorld, train: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length item factors from training users: (implicit, rating-centred)."""
    rows = train[world.user]
    user_mean = np.bincount(world.user, weights=world.rating) / np.bincount(world.user)
    shape = (world.params.n_users, world.params.n_items)

    def svd(values: np.ndarray) -> np.ndarray:
        matrix = csr_matrix((values, (world.user[rows], world.item[rows])), shape=shape)
        model = TruncatedSVD(n_components=k, random_state=seed).fit(matrix)
        factors = model.components_.T * model.singular_values_
        return factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)

    centred = (world.rating - user_mean[world.user])[rows]
    return svd(np.ones(int(rows.sum()))), svd(centred.astype(float))


def genre_recovery(
    factors: np.ndarray, item_genres: np.ndarray, k: int = 10
) -> tuple[float, float]:
    """Share of each item's k nearest neighbours (cosine of factors) that share a genre with it,
    and the same share over all pairs: collaborative structure that follows the genres."""
    shared = (item_genres.astype(float) @ item_genres.T.astype(float)) > 0
    similarity = factors @ factors.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    near = float(np.take_along_axis(shared, neighbours, axis=1).mean())
    off_diagonal = ~np.eye(len(shared), dtype=bool)
    return near, float(shared[off_diagonal].mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def hit_rate_at_1(scores: np.ndarray, rng: np.random.Generator) -> float:
    """scores[0] is the target's; ties with the best negative are split at random."""
    jitter = rng.random(len(scores)) * 1e-9
    scores = scores + jitter
    return float(scores[0] > scores[1:].max())


def ranking(
    samples: list[UserSample], window: str, factors: np.ndarray, seed: int
) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    per_user = {}
    for s in samples:
        positions = s.recent if window == "recent" else np.r_[s.long, s.recent]
        items, ratings = s.items[positions], s.ratings[positions]
        vectors = factors[items]
        # Interest (every chosen item) plus sentiment (how it was rated relative to the rest).
        user = _unit(vectors.mean(0) + ((ratings - ratings.mean())[:, None] * vectors).mean(0))
        hits = [
            hit_rate_at_1(factors[np.r_[s.items[t], negatives]] @ user, rng)
            for t, negatives in zip(s.targets, s.negatives, strict=True)
        ]
        per_user[s.user] = float(np.mean(hits))
    return per_user


def label(rating: float) -> int:
    return 2 if rating >= 4 else (0 if rating <= 2 else 1)


def sentiment_features(
    s: UserSample, window: str, item_genres: np.ndarray, centred_factors: np.ndarray
) -> np.ndarray:
    positions = s.recent if window == "recent" else np.r_[s.long, s.recent]
    items, ratings = s.items[positions], s.ratings[positions]
    genres = item_genres[items].astype(float)
    count = genres.sum(0)
    share = count / len(items)
    affinity = ((ratings - ratings.mean())[:, None] * genres).sum(0) / (count + 1.0)
    user = _unit(((ratings - ratings.mean())[:, None] * centred_factors[items]).sum(0))
    rows = []
    for t in s.targets:
        target_genres = item_genres[s.items[t]].astype(float)
        n = target_genres.sum()
        rows.append(
            [
                ratings.mean(),
                target_genres @ share / n,
                target_genres @ affinity / n,
                centred_factors[s.items[t]] @ user,
            ]
        )
    return np.asarray(rows)


def truth_features(s: UserSample, world: PlantedWorld) -> np.ndarray:
    taste = world.truth[str(s.user + 1)]
    liked = np.isin(GENRES, taste.liked_genres)
    disliked = np.isin(GENRES, taste.disliked_genres)
    favourites = {int(i) - 1 for i in taste.favourites}
    rows = []
    for t in s.targets:
        g = world.item_genres[s.items[t]]
        has_liked, has_disliked = bool((g & liked).any()), bool((g & disliked).any())
        rows.append(
            [
                has_liked and not has_disliked,
                has_disliked and not has_liked,
                taste.bias,
                int(s.items[t]) in favourites,
            ]
        )
    return np.asarray(rows, dtype=float)


def sentiment(
    samples: list[UserSample],
    train: np.ndarray,
    features: dict[int, np.ndarray],
) -> dict[int, float]:
    """Accuracy per test user of a classifier fit on training users' targets."""
    labels = {s.user: np.array([label(s.ratings[t]) for t in s.targets]) for s in samples}
    fit_users = [s.user for s in samples if train[s.user]]
    x = np.vstack([features[u] for u in fit_users])
    y = np.concatenate([labels[u] for u in fit_users])
    model = LogisticRegression(max_iter=2000).fit(x, y)
    return {
        s.user: float((model.predict(features[s.user]) == labels[s.user]).mean())
        for s in samples
        if not train[s.user]
    }


def ranking_truth(samples: list[UserSample], world: PlantedWorld, seed: int) -> dict[int, float]:
    """Rank by the planted genre class (liked > neutral > disliked), favourites first; ties at
    random: what knowing the taste alone gives, with no popularity."""
    rng = np.random.default_rng(seed)
    per_user = {}
    for s in samples:
        taste = world.truth[str(s.user + 1)]
        liked = np.isin(GENRES, taste.liked_genres)
        disliked = np.isin(GENRES, taste.disliked_genres)
        favourites = {int(i) - 1 for i in taste.favourites}

        def score(item: int, liked=liked, disliked=disliked, favourites=favourites) -> float:
            g = world.item_genres[item]
            return float((g & liked).any()) - float((g & disliked).any()) + (item in favourites)

        hits = [
            hit_rate_at_1(np.array([score(int(i)) for i in np.r_[s.items[t], negatives]]), rng)
            for t, negatives in zip(s.targets, s.negatives, strict=True)
        ]
        per_user[s.user] = float(np.mean(hits))
    return per_user


def fmt(estimate: tuple[float, float, float], sign: bool = False) -> str:
    mean, low, high = (100 * v for v in estimate)
    f = "{:+.1f}" if sign else "{:.1f}"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def main(argv: list[str] | None = None) -> int:
    defaults = PlantedParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the world's seed")
    parser.add_argument("--users", type=int, default=defaults.n_users)
    parser.add_argument("--items", type=int, default=defaults.n_items)
    parser.add_argument("--targets", type=int, default=10, help="held-out targets per user (T)")
    parser.add_argument(
        "--target-choice",
        choices=("random", "last"),
        default="random",
        help="held-out targets: a random sample of the history, or its last T interactions",
    )
    parser.add_argument("--recent", type=int, default=10, help="recent window (K)")
    parser.add_argument("--long", type=int, default=30, help="long window (L)")
    parser.add_argument("--negatives", type=int, default=19)
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--train-share", type=float, default=0.6)
    parser.add_argument("--sample-seed", type=int, default=0, help="targets, split, negatives")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    params = PlantedParams(seed=args.seed, n_users=args.users, n_items=args.items)
    world = generate_planted_world(params)
    n_users = params.n_users
    split_rng = np.random.default_rng([args.sample_seed, 1])
    train = np.zeros(n_users, dtype=bool)
    train[split_rng.permutation(n_users)[: int(round(args.train_share * n_users))]] = True
    samples = build_samples(world, args, args.sample_seed)
    implicit, centred = item_factors(world, train, args.factors, args.sample_seed)
    test = [s for s in samples if not train[s.user]]
    test_users = np.array([s.user for s in test])

    results: dict[tuple[str, str], dict[int, float]] = {}
    for window in ("recent", "long"):
        results[("ranking", window)] = ranking(test, window, implicit, args.sample_seed)
        features = {
            s.user: sentiment_features(s, window, world.item_genres, centred) for s in samples
        }
        results[("sentiment", window)] = sentiment(samples, train, features)
    results[("ranking", "truth")] = ranking_truth(test, world, args.sample_seed)
    results[("sentiment", "truth")] = sentiment(
        samples, train, {s.user: truth_features(s, world) for s in samples}
    )

    print(
        f"planted-taste world: {n_users:,} users, {params.n_items:,} items, "
        f"{world.n_interactions:,} interactions (generated in the run)"
    )
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in asdict(params).items()))
    print(
        f"{int(train.sum())} training users (item factors: truncated SVD k={args.factors}; the "
        f"sentiment classifier), {len(test)} test users, {len(test) * args.targets:,} targets; "
        f"T={args.targets} {args.target_choice} held-out targets, K={args.recent}, L={args.long}, "
        f"{args.negatives} negatives\n"
    )
    boot_rng = np.random.default_rng([args.sample_seed, 2])
    draws = boot_rng.integers(0, len(test_users), size=(args.bootstrap, len(test_users)))
    header = f"{'task':<10} {'metric':<9} {'recent only':>20} {'recent + long':>20} {'long minus recent':>20} {'planted truth':>20}"
    print(header)
    print("-" * len(header))
    gains = {}
    for task, metric in (("ranking", "HR@1"), ("sentiment", "accuracy")):
        rows = {
            w: np.array([results[(task, w)][u] for u in test_users])
            for w in ("recent", "long", "truth")
        }

        def interval(values: np.ndarray) -> tuple[float, float, float]:
            means = values[draws].mean(1)
            return (
                float(values.mean()),
                float(np.quantile(means, 0.025)),
                float(np.quantile(means, 0.975)),
            )

        gains[task] = interval(rows["long"] - rows["recent"])
        print(
            f"{task:<10} {metric:<9} {fmt(interval(rows['recent'])):>20} "
            f"{fmt(interval(rows['long'])):>20} {fmt(gains[task], sign=True):>20} "
            f"{fmt(interval(rows['truth'])):>20}"
        )
    near, overall = genre_recovery(implicit, world.item_genres)
    print(
        f"\nitem factors recover genres: {100 * near:.1f}% of an item's 10 nearest neighbours "
        f"share a genre with it ({100 * overall:.1f}% of all item pairs do)"
    )
    print(f"({time.perf_counter() - started:.1f} s; points, 95% bootstrap intervals over users)")
    passed = [t for t, (mean, low, _) in gains.items() if mean >= MIN_GAIN and low > 0]
    summary = ", ".join(f"{t} {fmt(g, sign=True)}" for t, g in gains.items())
    return verdict(
        bool(passed),
        f"the long window adds {summary} points "
        f"(needed: >= +{100 * MIN_GAIN:.0f} with a lower bound > 0 on either task; "
        f"met on: {', '.join(passed) or 'none'})",
    )


if __name__ == "__main__":
    sys.exit(main())
