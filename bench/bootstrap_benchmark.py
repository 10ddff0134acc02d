"""Bootstrap benchmark: the report's and the oracle study's intervals, per-draw against
per-user sums.

Every interval resamples users (metrics.bootstrap_ci, metrics.paired_bootstrap_diff). For the
ranking metrics and accuracy, which are means over rows, the resamples are drawn from per-user
sums in one matrix product; the per-draw path stacks each resample's rows and calls the
statistic 1,000 times. This times both on the shape of a report (120 test users, 10 targets
each, the four ranking metrics, an interval and a paired difference per method) and checks that
they give the same figures. Target: at least 20 times faster, differences below 1e-12.

    python bench/bootstrap_benchmark.py [--users N] [--targets T] [--methods M]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from verdict import verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lettingo_dagster.evaluation import metrics  # noqa: E402
from lettingo_dagster.evaluation.protocol import RANKING_METRICS  # noqa: E402

MIN_SPEEDUP = 20.0
MAX_DIFFERENCE = 1e-12


def intervals(methods, baseline, statistics, n_boot: int) -> np.ndarray:
    out = []
    for values in methods:
        for statistic in statistics:
            point = metrics.bootstrap_ci(values, statistic, n_boot, 0)
            diff = metrics.paired_bootstrap_diff(values, baseline, statistic, n_boot, 0)
            out.append([*vars(point).values(), *vars(diff).values()])
    return np.array(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--methods", type=int, default=12)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    methods = [
        [rng.integers(1, 21, size=(args.targets, 1)) for _ in range(args.users)]
        for _ in range(args.methods)
    ]
    baseline = methods[0]
    fast = list(RANKING_METRICS.values())
    # The same statistics without the RowMeanStatistic type: the per-draw path.
    per_draw = [lambda rows, s=s: s(rows) for s in fast]

    started = time.perf_counter()
    reference = intervals(methods, baseline, per_draw, args.n_boot)
    per_draw_seconds = time.perf_counter() - started
    started = time.perf_counter()
    summed = intervals(methods, baseline, fast, args.n_boot)
    summed_seconds = time.perf_counter() - started

    difference = float(np.abs(reference - summed).max())
    speedup = per_draw_seconds / summed_seconds
    print(
        f"{args.methods} methods x {len(fast)} metrics, {args.users} users x {args.targets} "
        f"targets, {args.n_boot} resamples: an interval and a paired difference each"
    )
    print(f"per-draw:       {per_draw_seconds:7.2f} s")
    print(f"per-user sums:  {summed_seconds:7.2f} s   ({speedup:.0f}x faster)")
    print(f"largest difference in any estimate or bound: {difference:.1e}")
    return verdict(
        speedup >= MIN_SPEEDUP and difference <= MAX_DIFFERENCE,
        f"per-user sums {speedup:.0f}x faster (needed >= {MIN_SPEEDUP:.0f}x), largest "
        f"difference {difference:.1e} (needed <= {MAX_DIFFERENCE:.0e})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
