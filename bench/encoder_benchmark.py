"""Encoder benchmark: the offline recommender's MiniLM in float32 and in bfloat16 autocast.

Encoding is the largest single cost of the planted preset's recommender steps: the oracle study,
the recommender's fit, reward scoring and the report read about 12,000 texts. This encodes the
texts those steps read on the planted-taste world (each catalog item's title, year and genres,
and the raw long window's clauses, about 50 characters each) with a fresh encoder of each
precision, after an untimed warm-up, in one run, and compares the embeddings: their cosine, and
whether each item's nearest other item (the featurizer's centred item space) stays the same.

Target on a CPU with native bfloat16 (AMX or AVX512-BF16): at least 1.5x faster, and every
embedding within a cosine of 0.9995 of float32's. Elsewhere bfloat16 is emulated and slower,
which is why the default preset keeps float32; there only the closeness is checked.

    python bench/encoder_benchmark.py [--users 120] [--items 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from verdict import verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIN_SPEEDUP = 1.5
MIN_COSINE = 0.9995
LONG_WINDOW = 30


def planted_texts(users: int, items: int) -> tuple[list[str], int]:
    """(texts, catalog items among them): the first `items` catalog items' texts, then the first
    `users` users' raw long-window clauses."""
    from lettingo_dagster.data.planted import PlantedParams, generate_planted_world
    from lettingo_dagster.evaluation.examples import ItemText, item_text, long_window_text
    from lettingo_dagster.evaluation.offline import profile_segments
    from lettingo_dagster.exploration.history import RatedItem

    world = generate_planted_world(PlantedParams(n_users=max(users, 8)))
    catalog = world.items[:items]
    texts = [item_text(ItemText(i.item_id, i.title, i.year, i.genres)) for i in catalog]
    for user in range(users):
        rows = np.flatnonzero(world.user == user)[:LONG_WINDOW]
        window = []
        for row in rows:
            item, rating = world.items[world.item[row]], float(world.rating[row])
            label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
            window.append(
                RatedItem(item.item_id, item.title, item.year, item.genres, rating, label)
            )
        texts += profile_segments(long_window_text(window))
    return list(dict.fromkeys(texts)), len(catalog)


def nearest_item(vectors: np.ndarray) -> np.ndarray:
    """Each item's nearest other item after centring (the featurizer's item space)."""
    centred = vectors - vectors.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    sims = centred @ centred.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from lettingo_dagster.evaluation.offline import MiniLMEncoder
    from lettingo_dagster.models.precision import native_bf16

    texts, n_items = planted_texts(args.users, args.items)
    vectors, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        encoder = MiniLMEncoder(torch_threads=args.threads, precision=precision)
        encoder.encode(["An untimed warm-up: the model loads and its kernels initialize."] * 8)
        started = time.perf_counter()
        vectors[precision] = encoder.encode(texts)
        seconds[precision] = time.perf_counter() - started

    fp32, bf16 = vectors["float32"], vectors["bfloat16"]
    cosines = (fp32 * bf16).sum(axis=1)
    same_nearest = float(np.mean(nearest_item(fp32[:n_items]) == nearest_item(bf16[:n_items])))
    speedup = seconds["float32"] / seconds["bfloat16"]
    native = native_bf16("cpu")
    print(f"{len(texts)} texts ({n_items} items, the rest long-window clauses), "
          f"{args.threads} threads, native bfloat16: {native}")  # fmt: skip
    for precision in ("float32", "bfloat16"):
        rate = len(texts) / seconds[precision]
        print(f"{precision:9} {seconds[precision]:7.1f}s {rate:7.0f} texts/s")
    print(f"speed-up {speedup:.2f}x; cosine to float32: min {cosines.min():.6f}, "
          f"mean {cosines.mean():.6f}; items whose nearest item is unchanged: {same_nearest:.1%}")  # fmt: skip
    close = bool(cosines.min() >= MIN_COSINE)
    if not native:
        return verdict(
            close,
            f"embeddings within cosine {cosines.min():.5f} of float32 (needed >= {MIN_COSINE}); "
            f"no native bfloat16 on this CPU, so its {speedup:.2f}x is not a target here",
        )
    return verdict(
        close and speedup >= MIN_SPEEDUP,
        f"bfloat16 {speedup:.2f}x faster (needed >= {MIN_SPEEDUP}x), embeddings within cosine "
        f"{cosines.min():.5f} of float32 (needed >= {MIN_COSINE})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
