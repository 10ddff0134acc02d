"""Small datasets the tests write themselves, in real raw formats (no third-party data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lettingo_dagster.settings import BaseGeneratorSettings

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Children's"]


# The base generator's architecture at toy size: a real Llama that builds and runs in a second.
TINY_GENERATOR = BaseGeneratorSettings(
    vocab_size=400,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_positions=1024,
)


def write_movielens_atomic(
    folder: Path,
    *,
    users: int = 30,
    items: int = 120,
    min_ratings: int = 12,
    max_ratings: int = 60,
    seed: int = 0,
    name: str = "synthetic",
) -> tuple[Path, Path]:
    """RecBole atomic `.inter` / `.item` files; each user has a taste for two genres, so ratings
    depend on the items' genres the way real ones do."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    item_genres = [
        rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False) for _ in range(items)
    ]
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for item in range(1, items + 1):
        genres = " ".join(GENRES[g] for g in item_genres[item - 1])
        item_lines.append(f"{item}\tMovie {item}: The Sequel\t{1950 + item % 60}\t{genres}")
    inter_lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(1, users + 1):
        liked = set(rng.choice(len(GENRES), size=2, replace=False))
        count = int(rng.integers(min_ratings, max_ratings + 1))
        rated = rng.choice(items, size=min(count, items), replace=False) + 1
        start = 880_000_000 + int(rng.integers(0, 10_000_000))
        for step, item in enumerate(rated):
            match = len(liked & set(item_genres[item - 1])) > 0
            rating = int(np.clip(rng.normal(4.2 if match else 2.3, 0.9), 1, 5).round())
            inter_lines.append(f"{user}\t{item}\t{rating}\t{start + 3600 * step}")
    inter_path = folder / f"{name}.inter"
    item_path = folder / f"{name}.item"
    inter_path.write_text("\n".join(inter_lines) + "\n", encoding="utf-8")
    item_path.write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    return inter_path, item_path
