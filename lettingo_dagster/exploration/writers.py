"""Deterministic profile writers: rule-based profiles of a user's long window in several styles.

They seed the base generator's pretraining and also act as explorers of their own (as the
paper's closed models do): their profiles can be chosen or rejected in preference pairs. Two of
them imitate the paper's baselines: PALR (keywords in order of importance, each tied to
supporting items) and RLMRec (a JSON summary of at most 100 words plus reasoning).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from statistics import mean

from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.settings import DEFAULT_WRITER_STYLES

MIN_GENRE_ITEMS = 2


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _title(item: RatedItem) -> str:
    return f"{item.title} ({item.year})" if item.year else item.title


def genre_stats(history: UserHistory) -> list[tuple[str, int, float]]:
    """(genre, items, mean rating) for genres with enough items, best first."""
    ratings: dict[str, list[float]] = defaultdict(list)
    for item in history.items:
        for genre in item.genres:
            ratings[genre].append(item.rating)
    stats = [(g, len(r), mean(r)) for g, r in ratings.items() if len(r) >= MIN_GENRE_ITEMS]
    return sorted(stats, key=lambda s: (-s[2], -s[1], s[0]))


def _list_genres(stats: list[tuple[str, int, float]], figures: bool = True) -> str:
    parts = [
        f"{genre} ({count} rated, avg {_fmt(avg)})" if figures else genre
        for genre, count, avg in stats
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def genre_affinity(history: UserHistory, figures: bool = True) -> str:
    """Liked, neutral and disliked genres against the user's overall average. Without
    `figures`, the genres are named without their counts and means: the brief form a small
    generator learns to copy from a genre digest (base_generator.genre_figures)."""
    stats = genre_stats(history)
    overall = mean(item.rating for item in history.items)
    if not stats:
        return f"Genre affinity: too few items per genre to tell; average rating {_fmt(overall)}."
    liked = [s for s in stats if s[2] >= overall + 0.3][:3]
    disliked = [s for s in reversed(stats) if s[2] <= overall - 0.3][:3]
    neutral = [s for s in stats if s not in liked and s not in disliked][:2]
    sentences = []
    if liked:
        sentences.append(f"Enjoys {_list_genres(liked, figures)}.")
    if neutral:
        sentences.append(f"Close to their average on {_list_genres(neutral, figures)}.")
    if disliked:
        sentences.append(f"Tends to dislike {_list_genres(disliked, figures)}.")
    if not liked and not disliked:
        sentences.append("Rates all genres about the same.")
    return "Genre affinity: " + " ".join(sentences) + f" Overall average {_fmt(overall)}."


def frequent_genres(history: UserHistory) -> list[tuple[str, int, float]]:
    """(genre, items, mean rating) for the genres with enough items that the user rates at
    least at their average, most rated first (ties: the better rated first)."""
    overall = mean(item.rating for item in history.items) if history.items else 0.0
    return sorted(
        (s for s in genre_stats(history) if s[2] >= overall), key=lambda s: (-s[1], -s[2], s[0])
    )


def _genre_share_reading(history: UserHistory, header: str, count: int) -> str:
    stats = genre_stats(history)
    overall = mean(item.rating for item in history.items)
    if not stats:
        return f"{header}: too few items per genre to tell; average rating {_fmt(overall)}."
    liked = frequent_genres(history)[:count]
    disliked = [s for s in reversed(stats) if s[2] <= overall - 0.3][:count]
    sentences = [f"Mostly watches and enjoys {_list_genres(liked, figures=False)}."]
    if disliked:
        sentences.append(f"Tends to dislike {_list_genres(disliked, figures=False)}.")
    return f"{header}: " + " ".join(sentences) + f" Overall average {_fmt(overall)}."


def genre_share(history: UserHistory) -> str:
    """Another reading of the window than genre_affinity's, in the same words: as liked, the
    genres the user rates most often among those rated at least at their average (how much of
    the window a genre takes, which a few high ratings of a rare genre cannot top); as
    disliked, the worst rated. Three of each, genre names only, like genre_affinity's brief
    form. Which reading predicts a user better depends on the data; the recommender's reward
    says which."""
    return _genre_share_reading(history, "Genre share", 3)


def genre_focus(history: UserHistory) -> str:
    """genre_share's reading cut to the two most rated liked genres and the two worst rated: a
    shorter claim that is wrong less often where a taste rests on few genres, and says less
    where it rests on many. The reward tells which length helps."""
    return _genre_share_reading(history, "Genre focus", 2)


def eras(history: UserHistory) -> str:
    dated = [item for item in history.items if item.year]
    if not dated:
        return "Eras: release years unknown for this user's items."
    decades: dict[int, list[float]] = defaultdict(list)
    for item in dated:
        decades[item.year // 10 * 10].append(item.rating)
    common, common_ratings = max(decades.items(), key=lambda d: (len(d[1]), d[0]))
    text = (
        f"Eras: mostly items from the {common}s ({len(common_ratings)} of {len(dated)}), "
        f"rated {_fmt(mean(common_ratings))} on average."
    )
    others = [
        (decade, r) for decade, r in sorted(decades.items()) if decade != common and len(r) >= 2
    ]
    if others:
        best = max(others, key=lambda d: mean(d[1]))
        worst = min(others, key=lambda d: mean(d[1]))
        text += f" Items from the {best[0]}s average {_fmt(mean(best[1]))}"
        if worst[0] != best[0]:
            text += f", those from the {worst[0]}s {_fmt(mean(worst[1]))}"
        text += "."
    older = [item.rating for item in dated if item.year < 1980]
    newer = [item.rating for item in dated if item.year >= 1980]
    if older and newer and abs(mean(older) - mean(newer)) >= 0.4:
        which = "older" if mean(older) > mean(newer) else "newer"
        text += f" Prefers {which} titles."
    return text


def rating_tendency(history: UserHistory) -> str:
    ratings = [item.rating for item in history.items]
    labels = Counter(item.label for item in history.items)
    n = len(ratings)
    average = mean(ratings)
    kind = (
        "a generous rater"
        if average >= 4.0
        else "a harsh rater"
        if average <= 3.0
        else "a moderate rater"
    )
    text = (
        f"Rating tendency: {kind}, average {_fmt(average)} of 5 over {n} items; "
        f"{round(100 * labels['like'] / n)}% liked, {round(100 * labels['neutral'] / n)}% neutral, "
        f"{round(100 * labels['dislike'] / n)}% disliked."
    )
    recent = ratings[-10:]
    if len(ratings) > len(recent) and abs(mean(recent) - average) >= 0.3:
        trend = "higher" if mean(recent) > average else "lower"
        text += f" Lately rates {trend} (last {len(recent)} average {_fmt(mean(recent))})."
    return text


def favourites(history: UserHistory) -> str:
    ranked = sorted(history.items, key=lambda item: (-item.rating, item.title))
    best = [item for item in ranked if item.label == "like"][:5]
    worst = [item for item in reversed(ranked) if item.label == "dislike"][:3]
    parts = []
    if best:
        parts.append("Favourites: " + "; ".join(f"{_title(i)} {i.rating:g}/5" for i in best) + ".")
    if worst:
        parts.append("Disliked: " + "; ".join(f"{_title(i)} {i.rating:g}/5" for i in worst) + ".")
    return " ".join(parts) if parts else "No strong favourites or dislikes among the rated items."


def palr_keywords(history: UserHistory) -> str:
    """PALR-like: keywords in order of importance, each tied to supporting items."""
    support: dict[str, list[RatedItem]] = defaultdict(list)
    for item in history.items:
        if item.label == "like":
            for genre in item.genres:
                support[genre.lower()].append(item)
    ranked = sorted(support.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:5]
    if not ranked:
        return "Keywords: none; the user liked too few items to name a preference."
    keywords = [
        f"{keyword} ({', '.join(i.title for i in sorted(items, key=lambda i: -i.rating)[:2])})"
        for keyword, items in ranked
    ]
    disliked = Counter(
        g.lower() for item in history.items if item.label == "dislike" for g in item.genres
    )
    text = "Keywords: " + "; ".join(keywords) + "."
    avoid = [
        genre for genre, count in disliked.most_common(2) if count >= 2 and genre not in support
    ]
    if avoid:
        text += f" Avoids: {', '.join(avoid)}."
    return text


def rlmrec_summary(history: UserHistory) -> str:
    """RLMRec-like: a JSON object with a summary of at most 100 words and the reasoning."""
    stats = genre_stats(history)
    average = mean(item.rating for item in history.items)
    liked = [genre for genre, _n, avg in stats if avg >= 4.0][:3]
    disliked = [genre for genre, _n, avg in reversed(stats) if avg <= 2.5][:2]
    summary = f"This user rates {len(history.items)} items with an average of {_fmt(average)}."
    if liked:
        summary += f" They enjoy {', '.join(liked)}."
    if disliked:
        summary += f" They tend to dislike {', '.join(disliked)}."
    top = min(history.items, key=lambda item: (-item.rating, item.title))
    summary += f" A highlight is {_title(top)}."
    reasoning = (
        f"Genres with the highest average ratings ({', '.join(liked) or 'none stand out'}) suggest "
        f"what they will like; low-rated genres ({', '.join(disliked) or 'none'}) suggest dislikes."
    )
    words = summary.split()
    return json.dumps(
        {"summary": " ".join(words[:100]), "reasoning": reasoning}, ensure_ascii=False
    )


WRITERS: dict[str, Callable[[UserHistory], str]] = {
    "genre_affinity": genre_affinity,
    "eras": eras,
    "rating_tendency": rating_tendency,
    "favourites": favourites,
    "palr_keywords": palr_keywords,
    "rlmrec_summary": rlmrec_summary,
    "genre_share": genre_share,
    "genre_focus": genre_focus,
}


def write_profiles(
    history: UserHistory, styles: tuple[str, ...] | None = None, *, genre_figures: bool = True
) -> dict[str, str]:
    """One profile per style (the default styles unless named); `genre_figures=False` writes
    genre_affinity in its brief form."""
    chosen = styles or DEFAULT_WRITER_STYLES
    unknown = [style for style in chosen if style not in WRITERS]
    if unknown:
        raise ValueError(f"unknown writer style(s) {unknown}; known: {', '.join(WRITERS)}")
    return {
        style: genre_affinity(history, genre_figures)
        if style == "genre_affinity"
        else WRITERS[style](history)
        for style in chosen
    }
