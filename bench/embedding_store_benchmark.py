"""How much the on-disk embedding store saves a step that reads texts another step has read.

    python bench/embedding_store_benchmark.py [--users 240]

The oracle study, the recommender, the rewards and the report each run in their own process
and encode many of the same texts: the writers' profiles and the raw long windows of the
calibration users. This encodes such texts for `--users` users of the planted-taste world (in
memory, seeded) the way a step does, in a fresh process each time:

1. without a store (what every step paid before the store);
2. with an empty store (the first step of a run: encodes and writes);
3. with the store the second process filled (every later step and rerun).

Prints the seconds of each, the ratio of 1 to 3 and one PASS/FAIL line (the store must make a
later step at least 5 times faster at encoding, and the first step at most 15% slower).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.verdict import verdict  # noqa: E402


def texts(users: int) -> list[str]:
    import numpy as np

    from lettingo_dagster.data.planted import PlantedParams, generate_planted_world
    from lettingo_dagster.evaluation.examples import long_window_text
    from lettingo_dagster.exploration.history import RatedItem, UserHistory
    from lettingo_dagster.exploration.writers import WRITERS, write_profiles

    world = generate_planted_world(PlantedParams(n_users=users))
    out: list[str] = []
    for user in range(users):
        rows = np.flatnonzero(world.user == user)[-40:-10]  # a 30-item long window
        items = []
        for row in rows:
            item, rating = world.items[int(world.item[row])], float(world.rating[row])
            label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
            items.append(RatedItem(item.item_id, item.title, item.year, item.genres, rating, label))
        history = UserHistory(str(user + 1), "calibration", tuple(items))
        out.extend(write_profiles(history, tuple(WRITERS)).values())
        out.append(long_window_text(history.items))
    return out


def encode_once(users: int, cache_dir: str | None) -> dict[str, float]:
    from lettingo_dagster.evaluation.offline.encoder import MiniLMEncoder

    batch = texts(users)
    encoder = MiniLMEncoder(torch_threads=2, cache_dir=Path(cache_dir) if cache_dir else None)
    encoder.encode(batch[:1])  # the model's load is not what is measured
    encoder._cache.clear()
    started = time.perf_counter()
    encoder.encode(batch)
    return {
        "seconds": time.perf_counter() - started,
        "texts": len(set(batch)),
        "encoded": encoder.encoded_texts,
        "stored": encoder.stored_texts,
    }


def _in_fresh_process(users: int, cache_dir: str | None) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from bench.embedding_store_benchmark import encode_once;"
        "print(json.dumps(encode_once(int(sys.argv[2]), sys.argv[3] or None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(users), cache_dir or ""],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=240)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        plain = _in_fresh_process(args.users, None)
        first = _in_fresh_process(args.users, store)
        later = _in_fresh_process(args.users, store)
    print(f"{plain['texts']:,.0f} distinct texts of {args.users} users (8 writers + long window)")
    print(f"no store:            {plain['seconds']:7.2f} s, {plain['encoded']:,.0f} encoded")
    print(f"empty store (first): {first['seconds']:7.2f} s, {first['encoded']:,.0f} encoded")
    print(
        f"filled store (later):{later['seconds']:7.2f} s, {later['encoded']:,.0f} encoded, "
        f"{later['stored']:,.0f} read from disk"
    )
    speedup = plain["seconds"] / max(later["seconds"], 1e-9)
    overhead = first["seconds"] / max(plain["seconds"], 1e-9)
    print(f"later step / no store: {speedup:.1f}x faster; first step: {overhead:.2f}x the time")
    return verdict(
        speedup >= 5 and overhead <= 1.15 and later["encoded"] == 0,
        f"a later step encodes {speedup:.1f}x faster (>= 5), the first pays {overhead:.2f}x "
        "(<= 1.15)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
