"""Synthetic user histories for tests and benchmarks on machines without a dataset (a GPU node,
a CI runner): users who each like two genres, rate items of those genres 4-5 and the rest 1-3.
The pipeline never uses them; they stand in for `load_long_windows` where no warehouse exists."""

from __future__ import annotations

import random

from lettingo_dagster.data.samples import rating_label
from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.settings import TaskSettings

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller")


def genre_lover_histories(
    users: int, items: int, seed: int = 0, split: str = "train", user_prefix: str = "u"
) -> list[UserHistory]:
    """`users` histories of `items` rated items each, seeded: the same arguments give the same
    histories on every machine."""
    rng = random.Random(seed)
    labels = TaskSettings()  # the default like / dislike thresholds
    histories = []
    for user in range(users):
        liked = set(rng.sample(GENRES, 2))
        rated = []
        for k in range(items):
            genres = tuple(rng.sample(GENRES, rng.randint(1, 2)))
            rating = float(rng.choice((4, 5)) if liked & set(genres) else rng.choice((1, 2, 3)))
            rated.append(
                RatedItem(
                    item_id=str(k),
                    title=f"Movie {rng.randint(1, 60)}",
                    year=1950 + rng.randint(0, 49),
                    genres=genres,
                    rating=rating,
                    label=rating_label(rating, labels),
                )
            )
        histories.append(
            UserHistory(user_id=f"{user_prefix}{user}", split=split, items=tuple(rated))
        )
    return histories
