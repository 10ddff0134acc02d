"""LLM recommender benchmark: label probabilities in one forward pass against generate-then-parse.

Same model, same recommender prompts (recent window, profile, target), shaped like
`reward_scores`' work: every profile of a user (the six writer styles of its long window)
against each of its T targets, in the order `reward_scores` scores them. `score_options` reads
the three labels' probabilities from one batched forward pass and computes a prefix that rows
share once; the alternative generates a short greedy answer per prompt and parses it strictly.
By default the model is a randomly initialized base generator of the default size; `--model`
benchmarks an existing folder. Target: at least 5x.

    python bench/label_scoring_benchmark.py [--model DIR] [--users 8] [--targets 5]
        [--batch-size 32] [--task sentiment|ranking]

With `--task ranking` (the default preset's task) every (profile, target) has a prompt per
candidate, the target and its negatives, that differ only in the item on the last line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generation_benchmark import bench_model, synthetic_histories  # noqa: E402
from verdict import verdict  # noqa: E402

TARGET_SPEEDUP = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model folder (default: a random default-size model)"
    )
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--targets", type=int, default=5, help="targets per user (T)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=4, help="tokens generated per answer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--task", choices=["sentiment", "ranking"], default="sentiment",
        help="sentiment: one prompt per example; ranking: one per candidate (target + negatives)",
    )  # fmt: skip
    parser.add_argument("--negatives", type=int, default=19, help="negatives per target (ranking)")
    args = parser.parse_args(argv)

    import numpy as np

    from lettingo_dagster.data.samples import LABELS
    from lettingo_dagster.evaluation.examples import ItemText, TargetExample
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.exploration.history import UserHistory
    from lettingo_dagster.exploration.writers import write_profiles
    from lettingo_dagster.models.base import Decoding
    from lettingo_dagster.models.openai_compat import parse_option

    def as_text(item) -> ItemText:
        return ItemText(item.item_id, item.title, item.year, item.genres)

    with tempfile.TemporaryDirectory(prefix="label-bench-") as scratch:
        model = bench_model(args.model, Path(scratch), args.threads, args.batch_size)
        folder = model.path
        recommender = LLMRecommender(model)
        # reward_scores' workload: every profile of a user (here the six writer styles of its
        # long window) against each of the user's T targets, in the order it scores them.
        histories = synthetic_histories(args.users, 30 + 10 + args.targets, seed=3)
        examples, profiles = [], []
        for n, h in enumerate(histories):
            long_window = h.items[:30]
            styles = write_profiles(UserHistory(h.user_id, "train", long_window))
            others = histories[(n + 1) % len(histories)].items
            for t in range(args.targets):
                end = len(h.items) - 1 - t
                target = h.items[end]
                example = TargetExample(
                    user_id=h.user_id,
                    split="train",
                    target_index=t,
                    recent=h.items[end - 10 : end],
                    target=as_text(target),
                    target_rating=target.rating,
                    label=target.label,
                    negatives=tuple(as_text(item) for item in others[: args.negatives])
                    if args.task == "ranking"
                    else (),
                    long_window=long_window,
                )
                for profile in styles.values():
                    examples.append(example)
                    profiles.append(profile)
        prompts = [
            recommender.prompt(e, p, item)
            for e, p in zip(examples, profiles, strict=True)
            for item in (e.candidates if args.task == "ranking" else (e.target,))
        ]
        model.score_options(prompts[:2], list(LABELS))  # warm-up

        began = time.perf_counter()
        if args.task == "ranking":
            scores = recommender.score_candidates(examples, profiles)
            probabilities = np.exp(model.score_options(prompts[:1], list(LABELS)))
            assert sum(len(s) for s in scores) == len(prompts)
        else:
            probabilities = recommender.predict_sentiment(examples, profiles)
        one_pass_s = time.perf_counter() - began
        began = time.perf_counter()
        answers = model.generate(
            prompts, Decoding(temperature=0.0, max_new_tokens=args.answer_tokens)
        )
        parsed = [parse_option(row[0].text, list(LABELS)) for row in answers]
        generate_s = time.perf_counter() - began

    ratio = generate_s / one_pass_s
    tokens = sum(len(model.prompt_ids(p)) for p in prompts) / len(prompts)
    print(
        f"model {folder}, task {args.task}: {args.users} users x {args.targets} targets x "
        f"{len(examples) // (args.users * args.targets)} profiles = {len(examples)} examples, "
        f"{len(prompts)} prompts of ~{tokens:.0f} tokens, batch {args.batch_size}, "
        f"{args.threads} threads"
    )
    print(f"one forward pass:    {one_pass_s:6.2f}s ({len(prompts) / one_pass_s:7.1f} examples/s), "
          f"rows sum to {probabilities.sum(axis=1).mean():.3f}")  # fmt: skip
    print(f"generate then parse: {generate_s:6.2f}s ({len(prompts) / generate_s:7.1f} examples/s), "
          f"{sum(p is not None for p in parsed)}/{len(parsed)} answers parseable")  # fmt: skip
    return verdict(
        ratio >= TARGET_SPEEDUP,
        f"one-pass scoring is {ratio:.1f}x generate-then-parse (target >= {TARGET_SPEEDUP:.0f}x)",
    )


if __name__ == "__main__":
    sys.exit(main())
