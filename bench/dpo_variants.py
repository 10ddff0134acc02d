"""Do the preference pairs carry a signal DPO can learn? A grid of DPO variants, each judged by
preference accuracy on calibration users' pairs (never trained on).

    python bench/dpo_variants.py export --home DIR --out FOLDER   # pairs + policy from a run
    python bench/dpo_variants.py grid --data FOLDER [--device cuda]

`export` copies a finished run's training and calibration pairs (rendered with the policy's chat
template) and its base generator into FOLDER, so the grid runs anywhere, a GPU machine included.
`grid` trains each variant from the same policy and prints the held-out accuracy and margin next
to the training figures: a variant that only memorizes its pairs has a high training accuracy
and a held-out accuracy near 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (
    # label, overrides of the default preset's dpo section
    ("default (640 pairs, 1 epoch)", {"max_train_pairs": 640}),
    ("all pairs, 1 epoch", {}),
    ("all pairs, 3 epochs", {"epochs": 3}),
    ("all pairs, beta 0.5", {"beta": 0.5}),
    ("all pairs, beta 0.02", {"beta": 0.02}),
    ("all pairs, lr 1e-4", {"learning_rate": 1e-4}),
    ("all pairs, LoRA r16", {"lora": {"enabled": True, "rank": 16, "alpha": 32, "dropout": 0.0,
                                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                             "learning_rate": 5e-3}),
)  # fmt: skip


def export(home: Path, out: Path, dataset: str) -> int:
    import duckdb

    from lettingo_dagster.alignment.dpo import write_pair_file

    out.mkdir(parents=True, exist_ok=True)
    [policy] = sorted((home / "models" / "base_generator" / dataset).glob("*/config.json"))[-1:]
    shutil.copytree(policy.parent, out / "policy", dirs_exist_ok=True)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        for split, name in (("train", "train"), ("calibration", "heldout")):
            pairs = con.execute(
                "SELECT * FROM preference_pairs WHERE dataset = ? AND split = ? "
                "ORDER BY hash(chosen_profile_id || '|' || rejected_profile_id || '|0')",
                [dataset, split],
            ).df()
            write_pair_file(pairs, out / "policy", out / f"{name}.parquet")
            print(f"{split}: {len(pairs)} pairs")
    return 0


def grid(data: Path, device: str, only: list[str] | None) -> int:
    import pandas as pd

    from lettingo_dagster.alignment.dpo import DpoJob, train_dpo
    from lettingo_dagster.settings import load_preset

    base = load_preset("default").dpo.model_dump()
    rows = []
    for label, overrides in VARIANTS:
        if only and label not in only:
            continue
        settings = {**base, "max_train_pairs": None, "device": device, "save_steps": 100_000,
                    "logging_steps": 10, **overrides}  # fmt: skip
        train_file = data / "train.parquet"
        if settings["max_train_pairs"]:
            limited = data / f"train_{settings['max_train_pairs']}.parquet"
            pd.read_parquet(train_file).head(settings["max_train_pairs"]).to_parquet(limited)
            train_file = limited
        folder = (
            data
            / "runs"
            / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        job = DpoJob(str(data / "policy"), str(train_file), str(data / "heldout.parquet"),
                     str(folder), settings, torch_threads=os.cpu_count() or 2)  # fmt: skip
        started = time.perf_counter()
        report = train_dpo(job, log=lambda _: None)
        last = report.history[-1] if report.history else {}
        rows.append({
            "variant": label,
            "train_pairs": report.train_pairs,
            "steps": report.global_step,
            "train_accuracy_last": round(last.get("rewards/accuracies", float("nan")), 3),
            "train_margin_last": round(last.get("rewards/margins", float("nan")), 3),
            "heldout_pairs": report.heldout_pairs,
            "heldout_accuracy": round(report.heldout_after.get("rewards/accuracies", float("nan")), 4),
            "heldout_margin": round(report.heldout_after.get("rewards/margins", float("nan")), 4),
            "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if os.environ.get("OUT"):
        table.to_csv(Path(os.environ["OUT"]) / "dpo_variants.csv", index=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("export")
    ex.add_argument("--home", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--dataset", default="movielens-100k")
    gr = commands.add_parser("grid")
    gr.add_argument("--data", type=Path, required=True)
    gr.add_argument("--device", default="auto")
    gr.add_argument("--only", action="append")
    args = parser.parse_args(argv)
    if args.command == "export":
        return export(args.home, args.out, args.dataset)
    return grid(args.data, args.device, args.only)


if __name__ == "__main__":
    sys.exit(main())
