"""Does the learning loop learn? The positive and the negative control on the planted-taste world.

    python bench/learning_control.py [--preset planted] [--home DIR]

1. Positive control: `lettingo run --preset planted` on the planted-taste world, where the long
   window holds the user's taste by construction. DPO minus base on the headline metric must
   have a lower 95% bound above 0.
2. Negative control: the same run with every preference pair's chosen and rejected swapped
   (`pairs.swap_chosen_rejected: true`, a derived preset written to a scratch copy of the assets
   folder). Its DPO minus base upper bound must stay below the positive control's lower bound.

Both runs share one LETTINGO_HOME, so the second reuses the world, the base generator, the
sampled profiles and every recommender score from the cache; only the pairs, DPO and the test
users' DPO profiles differ. Prints both differences with intervals, the null checks, the share
of the base-to-oracle room the positive control recovers, and one PASS/FAIL line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.verdict import verdict  # noqa: E402

DATASET = "planted-taste"


def _lettingo(args: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "lettingo_dagster.cli", *args]
    print("$ lettingo " + " ".join(args), flush=True)
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stdout[-4000:], completed.stderr[-4000:], sep="\n")
        raise SystemExit(f"lettingo {' '.join(args)} failed with exit code {completed.returncode}")


def _on(report: dict, key: str) -> dict:
    metric = report["headline_metric"]
    return next(d for d in report[key] if d["metric"] == metric)


def _points(d: dict) -> str:
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _metric_value(report: dict, method: str) -> float | None:
    metric = report["headline_metric"]
    for line in report["results_markdown"].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].split(" ")[0] == method:
            header = [
                c.strip() for c in report["results_markdown"].splitlines()[0].strip("|").split("|")
            ]
            if metric in header:
                return float(cells[header.index(metric)].split(" ")[0])
    return None


def _by_method(report: dict, key: str) -> dict[str, dict]:
    return {row["method"]: row for row in report.get(key) or []}


def _profile_line(report: dict, method: str) -> str:
    """What a generator's test-user profiles say: its style mix and how often the genres it
    states are the user's planted ones (the report's profile tables)."""
    stats = _by_method(report, "profile_statistics").get(method, {})
    claims = _by_method(report, "profile_claims").get(method, {})
    mix = sorted(
        ((k.removeprefix("share_"), v) for k, v in stats.items() if k.startswith("share_") and v),
        key=lambda kv: -kv[1],
    )
    figures = ", ".join(
        f"{name.removeprefix('planted_').replace('_', ' ')} {claims[name]:.2f}"
        for name in (
            "planted_liked_precision",
            "planted_liked_recall",
            "planted_disliked_precision",
        )
        if claims.get(name) is not None
    )
    styles = ", ".join(f"{name} {100 * share:.0f}%" for name, share in mix[:3])
    return f"{figures or 'no planted-genre claims'}; style mix {styles or 'n/a'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="planted")
    parser.add_argument("--home", help="LETTINGO_HOME to use (default: a new temporary folder)")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="lettingo-control-")).resolve()
    assets = home / "control-assets"
    shutil.rmtree(assets, ignore_errors=True)
    shutil.copytree(ROOT / "assets", assets)
    preset = yaml.safe_load((assets / "presets" / f"{args.preset}.yaml").read_text())
    swapped = dict(preset, description="Negative control: every preference pair swapped.")
    swapped["pairs"] = {**preset.get("pairs", {}), "swap_chosen_rejected": True}
    (assets / "presets" / f"{args.preset}-swapped.yaml").write_text(yaml.safe_dump(swapped))
    env = {
        **os.environ,
        "LETTINGO_HOME": str(home),
        "LETTINGO_ASSETS_DIR": str(assets),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }
    env.pop("DAGSTER_HOME", None)
    print(f"LETTINGO_HOME={home}")
    started = time.perf_counter()
    _lettingo(["data", "fetch", DATASET], env)
    reports: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for name in (args.preset, f"{args.preset}-swapped"):
        t0 = time.perf_counter()
        _lettingo(["run", "--preset", name], env)
        seconds[name] = time.perf_counter() - t0
        report_file = home / "reports" / DATASET / "report.json"
        reports[name] = json.loads(report_file.read_text())
        shutil.copyfile(report_file, home / f"report-{name}.json")

    positive, negative = reports[args.preset], reports[f"{args.preset}-swapped"]
    metric = positive["headline_metric"]
    pos, neg = _on(positive, "dpo_minus_base"), _on(negative, "dpo_minus_base")
    ceiling = _on(positive, "ceiling")
    base = _metric_value(positive, "base_generator")
    oracle = _metric_value(positive, "oracle_ceiling")
    dpo = _metric_value(positive, "dpo_generator")
    print(
        f"\nheadline metric: {metric} (points, 95% intervals over {positive['users']} test users)"
    )
    print(f"positive control, DPO minus base:     {_points(pos)}  ({seconds[args.preset]:.0f} s)")
    print(f"  null check (base resampled):         {_points(_on(positive, 'null_check'))}")
    print(
        f"negative control (pairs swapped):     {_points(neg)}  "
        f"({seconds[f'{args.preset}-swapped']:.0f} s)"
    )
    print(f"  null check (base resampled):         {_points(_on(negative, 'null_check'))}")
    print(f"ceiling (oracle minus recent only):   {_points(ceiling)}")
    if base is not None and oracle is not None and dpo is not None and oracle > base:
        share = (dpo - base) / (oracle - base)
        print(
            f"room recovered: DPO {dpo:.1f} vs base {base:.1f}, oracle {oracle:.1f}: "
            f"{100 * share:.0f}% of the base-to-oracle room"
        )
    # Whether the base generator reads its window at all decides what DPO can learn here: a
    # generator that did not learn to copy names wrong genres and the reward rightly prefers
    # saying nothing (README, "The positive control").
    print("profiles of test users (the report's profile tables):")
    print(f"  base generator:         {_profile_line(positive, 'base_generator')}")
    print(f"  DPO generator:          {_profile_line(positive, 'dpo_generator')}")
    print(f"  DPO on swapped pairs:   {_profile_line(negative, 'dpo_generator')}")
    print(f"total {time.perf_counter() - started:.0f} s; reports under {home}")
    passed = pos["low"] > 0 and neg["high"] < pos["low"]
    return verdict(
        passed,
        f"positive DPO-base {metric} lower bound {100 * pos['low']:+.1f} > 0 and negative upper "
        f"bound {100 * neg['high']:+.1f} < {100 * pos['low']:+.1f}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
