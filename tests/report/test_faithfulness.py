"""Faithfulness of profiles to the long window: titles, ratings and genres, on hand-written
profiles in the writers' phrasing and in the free phrasing of a small instruction-tuned model."""

from __future__ import annotations

import pytest

from lettingo_dagster.data.samples import rating_label
from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.exploration.writers import write_profiles
from lettingo_dagster.report.faithfulness import (
    FaithfulnessScorer,
    normalize_title,
    score_profiles,
    summarize,
    summarize_by,
    title_aliases,
)
from lettingo_dagster.settings import TaskSettings


def _item(title: str, year: int | None, genres: tuple[str, ...], rating: float) -> RatedItem:
    return RatedItem("i", title, year, genres, rating, rating_label(rating, TaskSettings()))


# Mean rating 3.625: Action, Sci-Fi, Crime and Drama above it; Horror and Comedy below.
WINDOW = (
    _item("Star Wars", 1977, ("Action", "Sci-Fi"), 5),
    _item("Empire Strikes Back, The", 1980, ("Action", "Sci-Fi"), 5),
    _item("Fargo", 1996, ("Crime", "Drama"), 4),
    _item("Scream", 1996, ("Horror", "Thriller"), 1),
    _item("Nightmare on Elm Street, A", 1984, ("Horror",), 2),
    _item("Toy Story", 1995, ("Animation", "Comedy"), 3),
    _item("Godfather: Part II, The", 1974, ("Crime", "Drama"), 5),
    _item("Manon of the Spring (Manon des sources)", 1986, ("Drama",), 4),
)
CATALOG = [item.title for item in WINDOW] + ["Dark Pool, The", "Independence Day (ID4)", "Heat"]


@pytest.fixture(scope="module")
def scorer() -> FaithfulnessScorer:
    return FaithfulnessScorer(catalog=CATALOG)


def test_titles_normalize_across_article_order_and_alternatives() -> None:
    assert normalize_title("Empire Strikes Back, The") == "empire strikes back"
    assert normalize_title("The Empire Strikes Back") == "empire strikes back"
    assert normalize_title("Godfather: Part II, The") == normalize_title("The Godfather Part II")
    assert title_aliases("Manon of the Spring (Manon des sources)") == (
        "manon of the spring",
        "manon des sources",
    )
    assert title_aliases("Star Wars (1977)") == ("star wars",)


def test_the_writers_profiles_are_faithful(scorer: FaithfulnessScorer) -> None:
    """Rule-based profiles say only what the window holds: every check is at 1.0."""
    history = UserHistory("u1", "train", WINDOW)
    results = {style: scorer.score(text, WINDOW) for style, text in write_profiles(history).items()}

    favourites = results["favourites"]
    assert len(favourites.titles) == 7 and favourites.title_rate == 1.0
    assert len(favourites.ratings) == 7 and favourites.rating_rate == 1.0

    affinity = results["genre_affinity"]
    liked = {c.genre for c in affinity.genres if c.polarity == "liked"}
    disliked = {c.genre for c in affinity.genres if c.polarity == "disliked"}
    assert liked == {"Action", "Sci-Fi", "Crime"}  # Drama is 'close to their average'
    assert disliked == {"Horror"}
    assert affinity.liked_genre_rate == affinity.disliked_genre_rate == 1.0
    assert affinity.titles == ()  # '(2 rated, avg 5.0)' is no title

    palr = results["palr_keywords"]  # titles without years, genres as keywords
    assert palr.title_rate == 1.0 and len(palr.titles) >= 3
    assert palr.liked_genre_rate == 1.0

    rlmrec = results["rlmrec_summary"]
    assert {(c.genre, c.polarity) for c in rlmrec.genres} >= {("Horror", "disliked")}
    assert rlmrec.liked_genre_rate == rlmrec.disliked_genre_rate == 1.0

    for style in ("eras", "rating_tendency"):  # nothing checkable: rates are None, not 0
        assert results[style].as_row()["title_rate"] is None
        assert results[style].rating_rate is None


def test_a_fluent_unfaithful_profile(scorer: FaithfulnessScorer) -> None:
    profile = (
        "This user has a strong taste for Star Wars (1977), with 1 out of 5 stars. They love "
        "horror and comedies, but are not a fan of drama. User review of The Dark Pool (1999): "
        "like, 3/5. A big fan of The Empire Strikes Back, which they rated 4."
    )
    result = scorer.score(profile, WINDOW)
    assert [(m.text, m.in_window) for m in result.titles] == [
        ("Star Wars", True),
        ("Dark Pool, The", False),  # named by the catalog
        ("Empire Strikes Back", True),
    ]
    assert result.title_rate == pytest.approx(2 / 3)
    # 1 for a 5/5 is off by 4; 4 for a 5/5 is within one. The Dark Pool's 3/5 is unverifiable.
    assert [(r.stated, r.actual, r.agrees) for r in result.ratings] == [
        (1.0, 5.0, False),
        (4.0, 5.0, True),
    ]
    claims = {(c.genre, c.polarity): c.agrees for c in result.genres}
    assert claims == {
        ("Horror", "liked"): False,
        ("Comedy", "liked"): False,
        ("Drama", "disliked"): False,
    }
    assert result.liked_genre_rate == 0.0 and result.disliked_genre_rate == 0.0


def test_echoed_item_lines_titles_without_years_and_negations(
    scorer: FaithfulnessScorer,
) -> None:
    """A model that copies the prompt's item lines, misspells a title's article order, or
    negates a like."""
    template = load_template("exploration")
    echoed = template.render(UserHistory("u", "train", WINDOW[:2])).user.splitlines()[1:3]
    profile = "\n".join(echoed) + (
        "\n- Manon des Sources (1986; Drama): like, 1/5\n"
        "They enjoyed The Empire Strikes Back and Independence Day, and doesn't really like "
        "Crime. Heat is on. Items from the 1980s (1980-1989) rated well."
    )
    result = scorer.score(profile, WINDOW)
    names = [(m.text, m.window_index) for m in result.titles]
    assert names == [
        ("Star Wars", 0),
        ("Empire Strikes Back, The", 1),
        ("Manon des Sources", 7),  # the alternative title
        ("Independence Day", None),  # in the catalog, not in the window
    ]  # 'Heat' is too common a word to count without a year; a range of years is no title
    assert [(r.stated, r.agrees) for r in result.ratings] == [
        (5.0, True),
        (5.0, True),
        (1.0, False),
    ]
    # The item lines' genre lists are parenthesized: no claim. 'doesn't really like' is a dislike.
    assert [(c.genre, c.polarity) for c in result.genres] == [("Crime", "disliked")]
    assert result.disliked_genre_rate == 0.0


def test_unknown_genres_and_titles_without_a_catalog() -> None:
    profile = "Loves westerns and Sci-Fi. Their favourite is Moonlight Express (1961), 5/5."
    (result,) = score_profiles([profile], [WINDOW])
    assert [(m.text, m.in_window) for m in result.titles] == [("Moonlight Express", False)]
    assert result.ratings == ()  # a rating of a film outside the window cannot be checked
    claims = {c.genre: (c.genre_mean, c.agrees) for c in result.genres}
    assert claims == {"western": (None, False), "Sci-Fi": (5.0, True)}


def test_summaries_pool_claims_and_average_profiles(scorer: FaithfulnessScorer) -> None:
    faithful = "Favourites: Star Wars (1977) 5/5; Fargo (1996) 4/5."
    unfaithful = "Favourites: Titanic Dreams (1997) 5/5; Scream (1996) 5/5. Enjoys horror."
    silent = "A thoughtful viewer."
    results = scorer.score_all([faithful, unfaithful, silent], [WINDOW] * 3)
    summary = summarize(results)
    assert summary.profiles == 3
    assert (summary.titles.claims, summary.titles.supported) == (4, 3)
    assert summary.titles.rate == pytest.approx(0.75)
    assert summary.titles.mean_profile_rate == pytest.approx((1.0 + 0.5) / 2)
    assert summary.titles.profiles_with_claims == 2
    assert (summary.ratings.claims, summary.ratings.supported) == (3, 2)
    assert (summary.liked_genres.claims, summary.liked_genres.supported) == (1, 0)
    assert summary.disliked_genres.rate is None and summary.disliked_genres.claims == 0
    flat = summary.as_dict()
    assert flat["titles_rate"] == pytest.approx(0.75) and flat["disliked_genres_rate"] is None

    by = summarize_by({"before": results[:1], "after": results[1:]})
    assert by["before"].titles.rate == 1.0 and by["after"].titles.rate == 0.5

    with pytest.raises(ValueError, match="2 profiles but 1 windows"):
        scorer.score_all(["a", "b"], [WINDOW])


def test_genres_in_another_datasets_spelling() -> None:
    window = (
        _item("Dune", 1984, ("Science Fiction",), 5),
        _item("Alien", 1979, ("Science Fiction", "Horror"), 4),
        _item("Clue", 1985, ("Comedy",), 1),
    )
    (result,) = score_profiles(["Loves science fiction; not fond of comedies."], [window])
    assert {(c.genre, c.polarity, c.agrees) for c in result.genres} == {
        ("Science Fiction", "liked", True),
        ("Comedy", "disliked", True),
    }


def test_a_rating_belongs_to_its_titles_clause() -> None:
    """'Lone Star' holds no 'one star', and a rating after a semicolon is the next clause's."""
    window = (
        _item("Lone Star", 1996, ("Drama", "Mystery"), 5),
        _item("Trainspotting", 1996, ("Drama",), 4),
    )
    profile = "Keywords: drama (Lone Star, Trainspotting); mystery (Lone Star). Scream: 2/5"
    (result,) = score_profiles([profile], [window])
    assert result.ratings == ()
    (result,) = score_profiles(["Trainspotting, 4 stars; Lone Star 1/5"], [window])
    assert [(r.title, r.stated) for r in result.ratings] == [
        ("Trainspotting", 4.0),
        ("Lone Star", 1.0),
    ]
