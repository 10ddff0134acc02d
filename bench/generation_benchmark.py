"""Generation benchmark: batched ``LocalCausalLM.generate`` against one prompt at a time.

Same model, same prompts, same decoding. By default the model is a randomly initialized base
generator of the default preset's size (tokenizer trained on synthetic histories, saved to a
temporary folder); ``--model`` benchmarks an existing folder instead (e.g. a pretrained base
generator). A random model rarely emits EOS, so both runs generate the same number of tokens.
Target: batched tokens/s at least 4x the one-at-a-time loop.

    python bench/generation_benchmark.py [--model DIR] [--prompts 32] [--samples 1]
        [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from verdict import verdict

TARGET_SPEEDUP = 4.0
GENRES = (
    "Action",
    "Adventure",
    "Comedy",
    "Crime",
    "Drama",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
)
WORDS = (
    "Night",
    "Return",
    "Star",
    "Love",
    "Dead",
    "Man",
    "City",
    "Blue",
    "Last",
    "King",
    "Dream",
    "War",
)


def synthetic_histories(users: int, items: int, seed: int = 0):
    """Uniform ratings of items with random titles: prompts of realistic length and vocabulary."""
    from lettingo_dagster.data.samples import rating_label
    from lettingo_dagster.exploration.history import RatedItem, UserHistory
    from lettingo_dagster.settings import TaskSettings

    rng = random.Random(seed)
    labels = TaskSettings()
    histories = []
    for user in range(users):
        rated = []
        for k in range(items):
            rating = float(rng.randint(1, 5))
            label = rating_label(rating, labels)
            title = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
            genres = tuple(rng.sample(GENRES, rng.randint(1, 3)))
            rated.append(RatedItem(str(k), title, rng.randint(1930, 1998), genres, rating, label))
        histories.append(UserHistory(f"u{user}", "train", tuple(rated)))
    return histories


def build_random_model(folder: Path) -> None:
    """The default preset's generator size, randomly initialized (seconds, no training)."""
    from lettingo_dagster.exploration.base_generator import (
        build_model,
        train_tokenizer,
        training_examples,
    )
    from lettingo_dagster.exploration.prompts import load_template
    from lettingo_dagster.settings import load_preset

    settings = load_preset("default").base_generator
    examples = training_examples(
        synthetic_histories(200, 30, seed=1), load_template(settings.prompt_template)
    )
    texts = [prompt.user for prompt, _, _ in examples[::6]] + [
        profile for _, profile, _ in examples
    ]
    tokenizer = train_tokenizer(texts, settings.vocab_size)
    model = build_model(tokenizer, settings)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def bench_model(folder: Path | None, scratch: Path, threads: int, batch_size: int):
    """The model under test on CPU: `folder`, or a random default-size one built in `scratch`."""
    from lettingo_dagster.models.local import LocalCausalLM

    if folder is None:
        folder = scratch / "model"
        build_random_model(folder)
    return LocalCausalLM(folder, torch_threads=threads, batch_size=batch_size, device="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model folder (default: a random default-size model)"
    )
    parser.add_argument("--prompts", type=int, default=32, help="prompts")
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        help="samples per prompt (the loop then makes one call per prompt with its samples)",
    )
    parser.add_argument(
        "--items", type=int, default=30, help="history items per prompt (the long window)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=96,
        help="profile length limit (the default preset's base-generator explorer: 96)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batched forward")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)

    from lettingo_dagster.exploration.prompts import load_template
    from lettingo_dagster.models.base import Decoding
    from lettingo_dagster.settings import load_preset

    with tempfile.TemporaryDirectory(prefix="generation-bench-") as scratch:
        model = bench_model(args.model, Path(scratch), args.threads, args.batch_size)
        folder = model.path
        template = load_template(load_preset("default").base_generator.prompt_template)
        histories = synthetic_histories(args.prompts, args.items, seed=2)
        prompts = [template.render(h, model.tokenizer.all_special_tokens) for h in histories]
        decoding = Decoding(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
        parameters = sum(p.numel() for p in model.model.parameters())
        prompt_tokens = sum(len(model.prompt_ids(p)) for p in prompts) / len(prompts)
        print(
            f"model {folder} ({parameters:,} parameters), {len(prompts)} prompts of "
            f"~{prompt_tokens:.0f} tokens x {args.samples} samples, "
            f"max_new_tokens {args.max_new_tokens}, "
            f"batch_size {args.batch_size}, {args.threads} threads"
        )
        model.generate(prompts[:2], decoding)  # warm-up: allocator and kernels

        began = time.perf_counter()
        batched = model.generate(prompts, decoding, args.samples)
        batched_s = time.perf_counter() - began
        model._own_decode = False  # the same batches through transformers' generate
        began = time.perf_counter()
        through_generate = model.generate(prompts, decoding, args.samples)
        through_generate_s = time.perf_counter() - began
        model._own_decode = True
        began = time.perf_counter()
        single = [model.generate([prompt], decoding, args.samples)[0] for prompt in prompts]
        single_s = time.perf_counter() - began

    tokens = sum(g.completion_tokens for row in batched for g in row)
    for label, result, seconds in (
        ("batched", batched, batched_s),
        ("batched, transformers generate", through_generate, through_generate_s),
        ("one at a time", single, single_s),
    ):
        same = sum(
            [g.text for g in a] == [g.text for g in b] for a, b in zip(batched, result, strict=True)
        )
        print(
            f"{label:31s} {seconds:6.2f}s = {tokens / seconds:7.1f} tokens/s, "
            f"{same}/{len(prompts)} prompts' samples identical to batched"
        )
    lengths = sorted(g.completion_tokens for row in batched for g in row)
    print(
        f"{tokens} tokens; per sample min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
        f"max {lengths[-1]}"
    )
    print(f"own decoding loop: {through_generate_s / batched_s:.2f}x transformers generate")
    ratio = single_s / batched_s
    return verdict(
        ratio >= TARGET_SPEEDUP,
        f"batched is {ratio:.1f}x one-at-a-time (target >= {TARGET_SPEEDUP:.0f}x)",
    )


if __name__ == "__main__":
    sys.exit(main())
