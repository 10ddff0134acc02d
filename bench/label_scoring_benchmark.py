"""LLM recommender benchmark: label probabilities in one forward pass against generate-then-parse.

Same model, same recommender prompts (recent window, profile, target). `score_options` reads the
three labels' probabilities from one batched forward pass; the alternative generates a short
greedy answer and parses it strictly. By default the model is a randomly initialized base
generator of the default size; `--model` benchmarks an existing folder. Target: at least 5x.

    python bench/label_scoring_benchmark.py [--model DIR] [--examples 64] [--batch-size 32]
        [--task sentiment|ranking]

With `--task ranking` every example has a prompt per candidate (the target and its negatives)
that differ only in the item at the end: the one-pass path scores them from one shared prefix.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generation_benchmark import bench_model, synthetic_histories  # noqa: E402

TARGET_SPEEDUP = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model folder (default: a random default-size model)"
    )
    parser.add_argument("--examples", type=int, default=64)
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
    from lettingo_dagster.exploration.writers import genre_affinity
    from lettingo_dagster.models.base import Decoding
    from lettingo_dagster.models.openai_compat import parse_option

    with tempfile.TemporaryDirectory(prefix="label-bench-") as scratch:
        model = bench_model(args.model, Path(scratch), args.threads, args.batch_size)
        folder = model.path
        recommender = LLMRecommender(model)
        histories = synthetic_histories(args.examples, 40, seed=3)
        examples = [
            TargetExample(
                user_id=h.user_id,
                split="train",
                target_index=0,
                recent=h.items[-10:],
                target=ItemText("t", h.items[0].title, h.items[0].year, h.items[0].genres),
                target_rating=h.items[0].rating,
                label=h.items[0].label,
                negatives=tuple(
                    ItemText(f"n{k}", item.title, item.year, item.genres)
                    for k, item in enumerate(
                        histories[(n + 1) % len(histories)].items[: args.negatives]
                    )
                )
                if args.task == "ranking"
                else (),
                long_window=h.items[:30],
            )  # fmt: skip
            for n, h in enumerate(histories)
        ]
        profiles = [genre_affinity(e.history()) for e in examples]
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
    print(
        f"model {folder}, task {args.task}, {len(examples)} examples, {len(prompts)} prompts, "
        f"batch {args.batch_size}, {args.threads} threads"
    )
    print(f"one forward pass:    {one_pass_s:6.2f}s ({len(prompts) / one_pass_s:7.1f} examples/s), "
          f"rows sum to {probabilities.sum(axis=1).mean():.3f}")  # fmt: skip
    print(f"generate then parse: {generate_s:6.2f}s ({len(prompts) / generate_s:7.1f} examples/s), "
          f"{sum(p is not None for p in parsed)}/{len(parsed)} answers parseable")  # fmt: skip
    verdict = "PASS" if ratio >= TARGET_SPEEDUP else "FAIL"
    print(
        f"{verdict}: one-pass scoring is {ratio:.1f}x generate-then-parse (target >= {TARGET_SPEEDUP:.0f}x)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
