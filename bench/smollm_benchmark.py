"""SmolLM2-135M-Instruct on this machine: batched profile sampling, label scoring and DPO steps.

    python bench/smollm_benchmark.py [--model DIR] [--preset smollm] [--users 4] [--pairs 8]
        [--threads 2] [--budget-min 45] [--other-min 8] [--device cpu|cuda] [--bf16]

`--device cuda --bf16` measures the same on a GPU: bfloat16 weights for sampling and label
scoring, bfloat16 mixed precision for DPO (it stops with exit code 2 when no CUDA device is
visible).

The model is the folder `lettingo models fetch smollm2-135m-instruct` wrote (or `--model`).
The work is shaped by the preset's own settings, so the rates are the ones it runs at:

- sampling: `--users` synthetic histories of the preset's long window, rendered with the SmolLM
  explorer's prompt template, `samples_per_user` samples each with its decoding settings, in
  batches of its `batch_size` (LocalCausalLM, the pipeline's backend);
- label scoring: the LLM recommender's one-pass label probabilities (sentiment prompts: the
  recent window, a writer profile and the target), as `recommender.kind: llm` would score;
- DPO: LoRA DPO steps with the preset's dpo settings on `--pairs` pairs (a SmolLM sample
  chosen over a writer profile), through `train_dpo`, reference log-probs precomputed.

It then estimates the preset's SmolLM work from these rates (profiles for train and
calibration users, held-out profiles before and after DPO and the null check, DPO training)
and ends with PASS when that plus `--other-min` (the graph's other stages: data, the base
generator, the recommender, the report) fits `--budget-min`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generation_benchmark import synthetic_histories  # noqa: E402
from verdict import verdict  # noqa: E402

RECENT_WINDOW = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the fetched SmolLM2)")
    parser.add_argument("--preset", default="smollm", help="preset whose settings shape the work")
    parser.add_argument("--explorer", default="smollm", help="the preset's SmolLM explorer")
    parser.add_argument("--users", type=int, default=4, help="histories to sample profiles for")
    parser.add_argument("--targets", type=int, default=2, help="targets per user (label scoring)")
    parser.add_argument("--pairs", type=int, default=8, help="DPO pairs (0: skip DPO)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--budget-min", type=float, default=45.0, help="the preset's budget")
    parser.add_argument(
        "--other-min", type=float, default=8.0,
        help="minutes allowed for the graph's stages that do not run SmolLM",
    )  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--bf16", action="store_true",
        help="bfloat16 weights for sampling and scoring, bf16 mixed precision for DPO (CUDA)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    if args.bf16 and args.device != "cuda":
        print("--bf16 is for --device cuda (bfloat16 on CPU is slow here)", file=sys.stderr)
        return 2

    import numpy as np

    from lettingo_dagster.alignment.dpo import DpoJob, train_dpo, write_pair_file
    from lettingo_dagster.data.samples import LABELS
    from lettingo_dagster.evaluation.examples import ItemText, TargetExample
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.exploration.history import UserHistory
    from lettingo_dagster.exploration.prompts import load_template
    from lettingo_dagster.exploration.writers import write_profiles
    from lettingo_dagster.models.base import Decoding
    from lettingo_dagster.models.fetch import SMOLLM2_135M_INSTRUCT, model_folder
    from lettingo_dagster.models.local import LocalCausalLM
    from lettingo_dagster.settings import load_preset

    preset = load_preset(args.preset)
    explorer = next((e for e in preset.exploration.explorers if e.name == args.explorer), None)
    if explorer is None:
        print(f"preset {args.preset} has no explorer {args.explorer!r}", file=sys.stderr)
        return 2
    folder = args.model or model_folder(SMOLLM2_135M_INSTRUCT.name)
    if not (folder / "config.json").is_file():
        print(
            f"{folder}: no model here; run `lettingo models fetch {SMOLLM2_135M_INSTRUCT.name}` "
            "first (or pass --model)",
            file=sys.stderr,
        )
        return 2
    long_window = preset.task.long_window

    began = time.perf_counter()
    model = LocalCausalLM(
        folder, torch_threads=args.threads, batch_size=explorer.batch_size, device=args.device,
        dtype="bfloat16" if args.bf16 else "auto",
    )  # fmt: skip
    load_s = time.perf_counter() - began
    on = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
    # Other processes on the same cores slow every figure below: say how busy the machine was.
    print(
        f"model {folder}: loaded in {load_s:.1f} s on {args.device} ({on}), weights "
        f"{next(model.model.parameters()).dtype}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )

    # -- sampling ------------------------------------------------------------------------
    histories = synthetic_histories(args.users, long_window + RECENT_WINDOW + args.targets, seed=5)
    windows = [UserHistory(h.user_id, "train", h.items[:long_window]) for h in histories]
    template = load_template(explorer.prompt_template or "exploration")
    prompts = [template.render(window) for window in windows]
    decoding = Decoding(**explorer.decoding.model_dump())
    samples_per_user = explorer.samples_per_user
    began = time.perf_counter()
    samples = model.generate(prompts, decoding, samples_per_user)
    sample_s = time.perf_counter() - began
    profiles = [g for row in samples for g in row]
    tokens = sum(g.completion_tokens for g in profiles)
    prompt_tokens = np.mean([row[0].prompt_tokens for row in samples])
    per_profile_s = sample_s / len(profiles)
    print(
        f"sampling: {len(prompts)} prompts of ~{prompt_tokens:.0f} tokens x {samples_per_user} "
        f"samples, batch {explorer.batch_size}, temperature {decoding.temperature}, top_p "
        f"{decoding.top_p}, max {decoding.max_new_tokens} tokens: {sample_s:.1f} s, "
        f"{tokens / sample_s:.1f} tokens/s, {per_profile_s:.2f} s/profile "
        f"(mean {tokens / len(profiles):.0f} tokens)"
    )
    print(f"  first profile: {profiles[0].text[:300]!r}")

    # -- label scoring --------------------------------------------------------------------
    recommender = LLMRecommender(model, template=preset.recommender.prompt_template)

    def as_text(item) -> ItemText:
        return ItemText(item.item_id, item.title, item.year, item.genres)

    examples, writer_profiles = [], []
    for history, window in zip(histories, windows, strict=True):
        styles = write_profiles(window)
        for t in range(args.targets):
            end = len(history.items) - 1 - t
            target = history.items[end]
            example = TargetExample(
                user_id=history.user_id,
                split="train",
                target_index=t,
                recent=history.items[end - RECENT_WINDOW : end],
                target=as_text(target),
                target_rating=target.rating,
                label=target.label,
                negatives=(),
                long_window=window.items,
            )
            for profile in styles.values():
                examples.append(example)
                writer_profiles.append(profile)
    recommender.predict_sentiment(examples[:1], writer_profiles[:1])  # warm-up
    began = time.perf_counter()
    probabilities = recommender.predict_sentiment(examples, writer_profiles)
    score_s = time.perf_counter() - began
    score_tokens = np.mean(
        [len(model.prompt_ids(recommender.prompt(e, p, e.target))) for e, p in zip(examples[:8], writer_profiles[:8], strict=True)]
    )  # fmt: skip
    accuracy = np.mean(
        [LABELS[int(np.argmax(p))] == e.label for p, e in zip(probabilities, examples, strict=True)]
    )
    print(
        f"label scoring: {len(examples)} sentiment prompts of ~{score_tokens:.0f} tokens, one "
        f"forward pass each: {score_s:.1f} s, {len(examples) / score_s:.2f} prompts/s "
        f"(accuracy on random synthetic labels {accuracy:.2f}, not a quality figure)"
    )

    # -- DPO ------------------------------------------------------------------------------
    dpo_pair_s: float | None = None
    if args.pairs > 0:
        import pandas as pd

        rows = []
        for window, user_samples in zip(windows, samples, strict=True):
            styles = write_profiles(window)
            prompt = template.render(window)
            for sample in user_samples:
                for style in ("genre_affinity", "favourites"):
                    rows.append(
                        {"prompt_system": prompt.system, "prompt_user": prompt.user,
                         "chosen": sample.text or "(empty)", "rejected": styles[style]}
                    )  # fmt: skip
        pairs = pd.DataFrame(rows[: args.pairs])
        settings = {**preset.dpo.model_dump(), "epochs": 1, "save_steps": 10_000,
                    "logging_steps": 10_000, "max_train_pairs": None}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="smollm-dpo-bench-") as scratch:
            out = Path(scratch)
            train_file = write_pair_file(pairs, folder, out / "train.parquet")
            heldout_file = write_pair_file(pairs.head(0), folder, out / "heldout.parquet")
            job = DpoJob(str(folder), str(train_file), str(heldout_file), str(out / "run"),
                         settings, torch_threads=args.threads, device=args.device,
                         bf16=args.bf16)  # fmt: skip
            began = time.perf_counter()
            report = train_dpo(job, log=lambda _: None)
            dpo_s = time.perf_counter() - began
        steps = max(1, report.global_step)
        dpo_pair_s = dpo_s / len(pairs)
        print(
            f"DPO (LoRA r{preset.dpo.lora.rank}, batch {preset.dpo.batch_size}, precomputed "
            f"reference): {len(pairs)} pairs, {report.global_step} steps, "
            f"{report.trained_parameters:,} of {report.total_parameters:,} parameters trained; "
            f"train loop {report.pairs_per_second:.3f} pairs/s, "
            f"{steps / (len(pairs) / report.pairs_per_second):.3f} steps/s; whole call "
            f"{dpo_s:.0f} s ({dpo_pair_s:.1f} s/pair with loading, reference pass, saving)"
        )

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.device == "cuda":
        return verdict(True, f"figures on {on}{' in bf16' if args.bf16 else ''} printed (the "
                       "45-minute estimate is for 2 CPU cores)")  # fmt: skip

    # -- the preset's SmolLM work at these rates -------------------------------------------
    users = preset.task.split.max_users_per_split
    if users is None:
        print(f"preset {args.preset} keeps every user; no estimate against the budget")
        return verdict(True, "figures printed (no per-split user cap to estimate the preset)")
    explored = users * len(preset.exploration.splits) * samples_per_user
    heldout = users * preset.report.samples_per_user * 3  # before DPO, after DPO, the null check
    train_pairs = preset.dpo.max_train_pairs or 0
    minutes_sampling = (explored + heldout) * per_profile_s / 60
    minutes_dpo = (
        (train_pairs * preset.dpo.epochs + preset.dpo.heldout_pairs) * dpo_pair_s / 60
        if dpo_pair_s
        else 0.0
    )
    total = minutes_sampling + minutes_dpo + args.other_min
    print(
        f"preset {args.preset} at these rates: {explored} + {heldout} SmolLM profiles "
        f"{minutes_sampling:.1f} min, DPO on {train_pairs} pairs x {preset.dpo.epochs:g} epochs "
        f"(+{preset.dpo.heldout_pairs} held-out) {minutes_dpo:.1f} min, other stages "
        f"{args.other_min:.0f} min: {total:.1f} min"
    )
    return verdict(
        total <= args.budget_min,
        f"preset {args.preset}'s estimated wall time {total:.1f} min "
        f"(budget {args.budget_min:.0f} min on {args.threads} threads)",
    )


if __name__ == "__main__":
    sys.exit(main())
