"""Cache benchmark: materializing sampled_profiles cold, then again with unchanged inputs.

Runs in one process against a fresh LETTINGO_HOME (the data cache is shared): the upstream
assets first (not timed), then `sampled_profiles` twice, timing each materialization inside the
process. Target: the rerun takes at most a twentieth of the cold run.

    python bench/profiles_rerun_benchmark.py [--preset default] [--dataset movielens-100k]
        [--home DIR]

The default preset is the workload that matters (at the `ci` size a cold run takes a second,
so the fixed cost of a Dagster run sets the ratio). In a new LETTINGO_HOME the base generator is
pretrained first (minutes, not timed); `--home` reuses a LETTINGO_HOME whose upstream assets (and base generator) exist; the model-call
cache there is deleted first so that the first run is cold.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from verdict import verdict

TARGET_RATIO = 20.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--home", type=Path, help="an existing LETTINGO_HOME (default: a new one)")
    args = parser.parse_args(argv)

    scratch = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="rerun-bench-"))
    os.environ.setdefault(
        "LETTINGO_DATA", str(Path(os.environ.get("LETTINGO_HOME", ".lettingo")).resolve() / "data")
    )
    os.environ["LETTINGO_HOME"] = str(scratch)
    os.environ["LETTINGO_PRESET"] = args.preset

    import dagster as dg

    from lettingo_dagster.definitions import all_assets, defs
    from lettingo_dagster.resources import SettingsResource, Warehouse

    instance = dg.DagsterInstance.ephemeral()
    # Every asset's resources, as the code location has them, with this run's preset.
    resources = {
        **defs.resources,
        "settings": SettingsResource(preset=args.preset),
        "warehouse": Warehouse(),
    }

    def materialize(selection: list[str]) -> float:
        began = time.perf_counter()
        result = dg.materialize(all_assets, selection=selection, partition_key=args.dataset,
                                instance=instance, resources=resources)  # fmt: skip
        assert result.success
        return time.perf_counter() - began

    materialize(["interactions", "items", "task_samples", "base_generator"])
    from lettingo_dagster.paths import model_cache_path

    model_cache_path().unlink(missing_ok=True)
    cold = materialize(["sampled_profiles"])
    warm = materialize(["sampled_profiles"])
    ratio = cold / warm
    print(f"preset {args.preset}, dataset {args.dataset}")
    print(f"cold sampled_profiles: {cold:7.2f}s")
    print(f"warm sampled_profiles: {warm:7.2f}s (every model call from the cache)")
    return verdict(
        ratio >= TARGET_RATIO,
        f"rerun is 1/{ratio:.0f} of the cold time (target at most 1/{TARGET_RATIO:.0f})",
    )


if __name__ == "__main__":
    sys.exit(main())
