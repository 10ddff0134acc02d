"""The offline recommender on constructed users whose taste only a profile can reveal.

Each user loves one genre and hates another; the long window shows it, the recent window is all
neutral filler, and the target's genre decides the label. A profile that states the matching
preference must raise the true label's probability (and rank a loved candidate higher).
"""

from __future__ import annotations

import numpy as np
import pytest

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import ItemText, TargetExample
from lettingo_dagster.evaluation.offline import (
    MiniLMEncoder,
    OfflineConfig,
    OfflineRecommender,
    profile_segments,
)
from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.exploration.writers import write_profiles

TASTE_GENRES = ("Horror", "Comedy", "Romance", "Western")
FILLER_GENRES = ("Documentary", "Drama")
STYLES = ("genre_affinity", "palr_keywords", "rlmrec_summary")
RATING = {"like": 5.0, "dislike": 1.0, "neutral": 3.0}


def _catalog(rng: np.random.Generator) -> dict[str, list[ItemText]]:
    catalog: dict[str, list[ItemText]] = {}
    for genre in TASTE_GENRES + FILLER_GENRES:
        catalog[genre] = [
            ItemText(
                f"{genre[:3]}{i}",
                f"Film number {i} {genre[:2]}",
                int(rng.integers(1950, 2000)),
                (genre,),
            )
            for i in range(40)
        ]
    return catalog


def _rated(item: ItemText, label: str) -> RatedItem:
    return RatedItem(item.item_id, item.title, item.year, item.genres, RATING[label], label)


def build_world(n_users: int, seed: int, targets: int = 4) -> list[TargetExample]:
    rng = np.random.default_rng(seed)
    catalog = _catalog(np.random.default_rng(0))
    examples = []
    for u in range(n_users):
        love, hate = rng.choice(len(TASTE_GENRES), size=2, replace=False)
        love_g, hate_g = TASTE_GENRES[love], TASTE_GENRES[hate]
        neutral_g = [g for g in TASTE_GENRES + FILLER_GENRES if g not in (love_g, hate_g)]

        def pick(genre: str) -> ItemText:
            return catalog[genre][int(rng.integers(0, 40))]

        long_window = [_rated(pick(love_g), "like") for _ in range(8)]
        long_window += [_rated(pick(hate_g), "dislike") for _ in range(8)]
        long_window += [_rated(pick(str(rng.choice(neutral_g))), "neutral") for _ in range(8)]
        order = rng.permutation(len(long_window))
        long_window = tuple(long_window[i] for i in order)
        recent = tuple(_rated(pick(str(rng.choice(FILLER_GENRES))), "neutral") for _ in range(6))
        for t in range(targets):
            label = str(rng.choice(["like", "like", "dislike", "neutral"]))
            genre = {"like": love_g, "dislike": hate_g}.get(label) or str(rng.choice(neutral_g))
            negatives = tuple(
                pick(g) for g in rng.choice([g for g in TASTE_GENRES if g != love_g], size=9)
            )
            examples.append(
                TargetExample(
                    user_id=f"user{seed}-{u}",
                    split="calibration",
                    target_index=t,
                    recent=recent,
                    target=pick(genre),
                    target_rating=RATING[label],
                    label=label,
                    negatives=negatives,
                    long_window=long_window,
                )
            )
    return examples


def profiles_of(examples: list[TargetExample], flip: bool = False) -> list[dict[str, str]]:
    """Writer profiles of each user's long window; `flip` swaps likes and dislikes (a profile
    that contradicts the user)."""
    out = []
    for example in examples:
        items = example.long_window
        if flip:
            swap = {"like": "dislike", "dislike": "like", "neutral": "neutral"}
            items = tuple(_rated(i, swap[i.label]) for i in items)  # type: ignore[arg-type]
        out.append(write_profiles(UserHistory(example.user_id, example.split, items), STYLES))
    return out


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder(torch_threads=2)


@pytest.fixture(scope="module")
def world(encoder: MiniLMEncoder):
    train = build_world(60, seed=1)
    test = build_world(30, seed=2)
    model = OfflineRecommender(OfflineConfig(item_dims=8, text_dims=8, c_sentiment=0.1), encoder)
    figures = model.fit(train, profiles_of(train), ("sentiment", "ranking"))
    return model, figures, test


def _truth_probability(model: OfflineRecommender, examples, profiles) -> np.ndarray:
    probabilities = model.predict_sentiment(examples, profiles)
    truth = [LABELS.index(e.label) for e in examples]
    return probabilities[np.arange(len(examples)), truth]


def test_fit_reports_holdout_figures(world) -> None:
    _model, figures, _test = world
    for source in ("none", *STYLES):
        assert 0 <= figures[f"{source}/accuracy"] <= 1
        assert 0 <= figures[f"{source}/ndcg"] <= 1
    assert figures["holdout_users"] > 0 and figures["fit_users"] == 60
    assert figures["fit_seconds"] > 0


def test_a_matching_profile_raises_the_truth(world) -> None:
    model, _figures, test = world
    polar = [e for e in test if e.label != "neutral"]
    own = [p["genre_affinity"] for p in profiles_of(polar)]
    flipped = [p["genre_affinity"] for p in profiles_of(polar, flip=True)]
    matching = _truth_probability(model, polar, own)
    empty = _truth_probability(model, polar, [""] * len(polar))
    contradicting = _truth_probability(model, polar, flipped)
    assert matching.mean() > empty.mean() + 0.1
    assert matching.mean() > contradicting.mean() + 0.2
    # A profile of None and an empty profile are the same thing.
    assert np.allclose(empty, _truth_probability(model, polar, [None] * len(polar)))
    # Every style the head was fit on is read, not only one.
    for style in STYLES:
        styled = _truth_probability(model, polar, [p[style] for p in profiles_of(polar)])
        assert styled.mean() > empty.mean()


def test_probabilities_are_distributions(world) -> None:
    model, _figures, test = world
    probabilities = model.predict_sentiment(test[:10], [None] * 10)
    assert probabilities.shape == (10, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_ranking_puts_the_loved_target_first_with_the_right_profile(world) -> None:
    model, _figures, test = world
    liked = [e for e in test if e.label == "like"]
    own = [p["genre_affinity"] for p in profiles_of(liked)]
    flipped = [p["genre_affinity"] for p in profiles_of(liked, flip=True)]

    def top_rate(profiles) -> float:
        scores = model.score_candidates(liked, profiles)
        assert all(len(s) == 1 + len(e.negatives) for s, e in zip(scores, liked, strict=True))
        return float(np.mean([s[0] > s[1:].max() for s in scores]))

    right = top_rate(own)
    assert right > top_rate([None] * len(liked)) + 0.2
    assert right > top_rate(flipped) + 0.2


def test_save_load_round_trip(world, encoder: MiniLMEncoder, tmp_path) -> None:
    model, _figures, test = world
    folder = model.save(tmp_path)
    assert folder.name == model.fingerprint
    loaded = OfflineRecommender.load(tmp_path, encoder)
    assert loaded.fingerprint == model.fingerprint
    assert loaded.tasks == ("ranking", "sentiment")
    profiles = [p["palr_keywords"] for p in profiles_of(test[:12])]
    assert np.array_equal(
        loaded.predict_sentiment(test[:12], profiles), model.predict_sentiment(test[:12], profiles)
    )
    for a, b in zip(
        loaded.score_candidates(test[:12], profiles),
        model.score_candidates(test[:12], profiles),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_scores_do_not_depend_on_what_was_scored_before(encoder: MiniLMEncoder) -> None:
    """The recommender keeps its featurizer (and its cached contexts and profile readings)
    across calls: scoring in chunks must equal scoring at once, and after a refit nothing of the
    old space may be served."""
    train = build_world(30, seed=4)
    test = build_world(10, seed=5)
    profiles = [p["genre_affinity"] for p in profiles_of(test)]
    config = OfflineConfig(item_dims=8, text_dims=8)
    model = OfflineRecommender(config, encoder)
    model.fit(train, profiles_of(train), "ranking", holdout=False)
    at_once = model.score_candidates(test, profiles)
    chunked = [
        s
        for start in range(0, len(test), 7)
        for s in model.score_candidates(test[start : start + 7], profiles[start : start + 7])
    ]
    assert all(np.array_equal(a, b) for a, b in zip(at_once, chunked, strict=True))

    refit_on = build_world(30, seed=6)
    model.fit(refit_on, profiles_of(refit_on), "ranking", holdout=False)
    fresh = OfflineRecommender(config, encoder)
    fresh.fit(refit_on, profiles_of(refit_on), "ranking", holdout=False)
    after = model.score_candidates(test, profiles)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(after, fresh.score_candidates(test, profiles), strict=True)
    )
    assert not all(np.allclose(a, b) for a, b in zip(after, at_once, strict=True))


def test_fingerprint_tracks_weights_and_config(world, encoder: MiniLMEncoder) -> None:
    model, _figures, _test = world
    train = build_world(20, seed=3)
    other = OfflineRecommender(OfflineConfig(item_dims=8, text_dims=8, c_sentiment=0.1), encoder)
    other.fit(train, profiles_of(train), "sentiment", holdout=False)
    assert other.fingerprint != model.fingerprint
    assert other.tasks == ("sentiment",)
    with pytest.raises(RuntimeError, match="ranking"):
        other.score_candidates(train[:1], [None])
    unfitted = OfflineRecommender(OfflineConfig(c_sentiment=0.2), encoder)
    assert unfitted.fingerprint != OfflineRecommender(OfflineConfig(), encoder).fingerprint
    # Recommenders built without an encoder share one (and its embedding cache).
    assert OfflineRecommender().encoder is OfflineRecommender().encoder


def test_profile_segments() -> None:
    assert profile_segments(None) == [] and profile_segments("   ") == []
    text = "Genre affinity: Enjoys Horror. Tends to dislike Comedy; avg 1.0.\nOverall average 3.0."
    assert profile_segments(text) == [
        "Genre affinity: Enjoys Horror.",
        "Tends to dislike Comedy;",
        "avg 1.0.",
        "Overall average 3.0.",
    ]
    assert len(profile_segments(". ".join(["word"] * 100), max_segments=5)) == 5


def test_window_genre_features_match_their_definition(encoder: MiniLMEncoder) -> None:
    """The window block's genre columns, computed by matrix products, against their definition:
    the shrunk mean rating of window items sharing a genre with the candidate (minus the window
    mean), and the candidate's genres' average share of window items."""
    from lettingo_dagster.evaluation.offline.features import _SHRINK, _Featurizer

    train = build_world(8, seed=7, targets=1)
    featurizer = _Featurizer(encoder, OfflineConfig(item_dims=4, text_dims=4), None)
    featurizer.space = featurizer.fit_space(train, [])
    window = (
        RatedItem("w1", "Night Hunt", 1980, ("Horror", "Thriller"), 5.0, "like"),
        RatedItem("w2", "Big Laugh", 1990, ("Comedy",), 1.0, "dislike"),
        RatedItem("w3", "Dark Joke", 1995, ("Comedy", "Horror"), 4.0, "like"),
        RatedItem("w4", "Quiet Road", 1970, ("Documentary",), 3.0, "neutral"),
    )
    candidates = [
        ItemText("c1", "Scream Again", 1985, ("Horror",)),
        ItemText("c2", "Prairie", 1960, ("Western", "Comedy")),
        ItemText("c3", "Space Opera", 2001, ("Sci-Fi",)),
        ItemText("c4", "Untitled", None, ()),
    ]
    block = featurizer._window_block(featurizer.item_vectors(candidates), candidates, window)
    ratings = np.array([i.rating for i in window]) / 5.0
    mean = ratings.mean()
    for row, candidate in enumerate(candidates):
        match = np.array([bool(set(candidate.genres) & set(i.genres)) for i in window])
        rating = (ratings[match].sum() + _SHRINK * mean) / (match.sum() + _SHRINK) - mean
        shares = [sum(g in i.genres for i in window) / len(window) for g in candidate.genres]
        assert block[row, 7] == pytest.approx(rating, abs=1e-12)
        assert block[row, 8] == pytest.approx(np.mean(shares) if shares else 0.0, abs=1e-12)
    # Horror: w1 and w3 (0.5 of the window); Western none, Comedy 2 of 4: (0 + 0.5) / 2.
    assert block[:, 8] == pytest.approx([0.5, 0.25, 0.0, 0.0])
