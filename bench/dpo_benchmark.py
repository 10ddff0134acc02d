"""DPO training throughput: precomputed reference log-probs or a live reference, LoRA or full
fine-tuning, measured in one run on the same pairs and the same policy.

    python bench/dpo_benchmark.py --home DIR [--dataset movielens-100k] [--pairs 96]

`--home` is a LETTINGO_HOME whose `preference_pairs` table and base generator exist (after
`lettingo run`). Each configuration trains one epoch on the same `--pairs` training pairs in a
fresh folder (no cache is shared between them) and reports:

- train pairs/s: pairs through the optimizer per second of the training loop;
- end-to-end pairs/s: the same pairs over the whole call (reference pass, tokenizing, saving);

and the ratios against full fine-tuning with a live reference model (TRL's default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (
    ("full, live reference", False, False),
    ("full, precomputed reference", False, True),
    ("LoRA, live reference", True, False),
    ("LoRA, precomputed reference", True, True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["LETTINGO_HOME"] = str(args.home.resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"

    import duckdb

    from lettingo_dagster.alignment.dpo import DpoJob, train_dpo, write_pair_file
    from lettingo_dagster.settings import load_preset

    warehouse = args.home / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        pairs = con.execute(
            "SELECT * FROM preference_pairs WHERE dataset = ? AND split = 'train' "
            "ORDER BY hash(chosen_profile_id || rejected_profile_id) LIMIT ?",
            [args.dataset, args.pairs],
        ).df()
    generators = sorted(
        (args.home / "models" / "base_generator" / args.dataset).glob("*/config.json")
    )
    if pairs.empty or not generators:
        print(
            f"{args.home}: no preference pairs or base generator for {args.dataset}",
            file=sys.stderr,
        )
        return 1
    policy = generators[-1].parent
    base = load_preset(args.preset).dpo.model_dump()
    scratch = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    train_file = write_pair_file(pairs, policy, scratch / "train.parquet")
    heldout_file = write_pair_file(pairs.head(0), policy, scratch / "heldout.parquet")
    print(f"policy {policy}, {len(pairs)} pairs, batch {base['batch_size']}, 1 epoch, "
          f"{args.threads} threads")  # fmt: skip
    rows = []
    for label, lora, precompute in CONFIGS:
        settings = {**base, "epochs": 1, "precompute_ref_log_probs": precompute,
                    "lora": {**base["lora"], "enabled": lora}, "save_steps": 10_000,
                    "logging_steps": 10_000}  # fmt: skip
        folder = scratch / label.replace(",", "").replace(" ", "-")
        folder.mkdir()
        job = DpoJob(str(policy), str(train_file), str(heldout_file), str(folder), settings,
                     torch_threads=args.threads)  # fmt: skip
        started = time.perf_counter()
        report = train_dpo(job, log=lambda _: None)
        total = time.perf_counter() - started
        rows.append((label, report.pairs_per_second, len(pairs) / total, report.trained_parameters))
    reference = rows[0]
    print(f"\n{'configuration':32} {'train pairs/s':>14} {'end-to-end':>11} {'x train':>8} "
          f"{'x e2e':>6} {'trained params':>15}")  # fmt: skip
    for label, train_rate, e2e_rate, trained in rows:
        print(f"{label:32} {train_rate:14.2f} {e2e_rate:11.2f} {train_rate / reference[1]:8.2f} "
              f"{e2e_rate / reference[2]:6.2f} {trained:15,}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
