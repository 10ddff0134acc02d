"""The CUDA path of the base generator's pretraining, local generation and DPO, on synthetic
user histories (no warehouse, no Dagster, no DuckDB).

    python bench/device_check.py [--device cuda] [--tiny] [--out DIR]

Steps, each timed and printed; a JSON summary goes to `--out` (default: $OUT when set):

1. `base_generator.pretrain` with the ci preset's sizes and with the default sizes;
2. `LocalCausalLM.generate` on prompts x samples: tokens/s, and the per-row seeded sampling
   giving the same sample for the same (prompt, seed, index) twice (also in another batch);
3. `train_dpo` on favourites (chosen) vs eras (rejected) profile pairs, in-process and through
   the real entry point under torchrun (`lettingo_dagster.alignment.train --job`), then the
   trained model reloaded with LocalCausalLM and one profile generated.

`--tiny` shrinks everything for a quick CPU run of the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CI_SIZES = {
    "vocab_size": 1000,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 128,
    "max_positions": 512,
    "epochs": 2,
    "learning_rate": 0.003,
    "batch_size": 16,
}
DEFAULT_SIZES = {  # BaseGeneratorSettings' defaults: 128 wide, 4 layers, 8 heads, vocab 4000
    "epochs": 2,
}


def pair_frame(histories, template, specials):
    import pandas as pd

    from lettingo_dagster.exploration.prompts import sanitize_field
    from lettingo_dagster.exploration.writers import write_profiles

    rows = []
    for history in histories:
        prompt = template.render(history, specials)
        profiles = write_profiles(history, ("favourites", "eras"))
        rows.append(
            {
                "prompt_system": prompt.system,
                "prompt_user": prompt.user,
                "chosen": sanitize_field(profiles["favourites"], specials),
                "rejected": sanitize_field(profiles["eras"], specials),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    )
    parser.add_argument("--skip-torchrun", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from lettingo_dagster.exploration import base_generator as bg
    from lettingo_dagster.exploration.prompts import load_template
    from lettingo_dagster.exploration.synthetic import genre_lover_histories
    from lettingo_dagster.models.base import Decoding
    from lettingo_dagster.models.local import LocalCausalLM
    from lettingo_dagster.settings import BaseGeneratorSettings, load_preset

    device = args.device
    tiny = args.tiny
    summary: dict = {"device_arg": device, "tiny": tiny, "torch": torch.__version__, "errors": {}}
    if torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
    import transformers

    summary["transformers"] = transformers.__version__
    try:
        import trl

        summary["trl"] = trl.__version__
    except Exception as exc:  # reported, DPO then fails below
        summary["errors"]["import trl"] = repr(exc)
    print(json.dumps({k: summary[k] for k in summary if k != "errors"}), flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    template = load_template("exploration_compact")
    users, items = (12, 10) if tiny else (400, 20)
    histories = genre_lover_histories(users, items, seed=1)
    examples = bg.training_examples(histories, template)
    print(f"{len(histories)} histories x {items} items -> {len(examples)} examples", flush=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def save():
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "device_check.json").write_text(json.dumps(summary, indent=1, default=str))

    # ------------------------------------------------------------------ 1. pretraining
    sizes = {"ci": CI_SIZES, "default": DEFAULT_SIZES}
    if tiny:
        sizes = {
            "ci": {**CI_SIZES, "epochs": 1},
            "default": {**DEFAULT_SIZES, "epochs": 1, "vocab_size": 600, "max_positions": 1024},
        }
    folders = {}
    summary["pretrain"] = {}
    for name, overrides in sizes.items():
        settings = BaseGeneratorSettings(**overrides)
        folder = scratch / f"base-{name}"
        try:
            sync()
            began = time.perf_counter()
            report = bg.pretrain(
                examples, settings, folder, device=device, bf16=None,
                torch_threads=1 if tiny else 2,
                log=lambda line: print("  " + line, flush=True), progress_every=100,
            )  # fmt: skip
            sync()
            wall = time.perf_counter() - began
            folders[name] = folder
            summary["pretrain"][name] = {
                "settings": settings.model_dump(),
                "seconds": report.seconds,
                "wall": round(wall, 2),
                "final_loss": report.final_loss,
                "first_loss": report.loss_curve[0][1],
                "steps": report.steps,
                "examples": report.examples,
                "dropped": report.dropped_examples,
                "parameters": report.parameters,
                "tokens_per_second": report.tokens_per_second,
                "extra": report.extra,
            }
            print(
                f"PRETRAIN {name}: {report.parameters:,} params, {report.steps} steps, "
                f"{report.seconds:.1f}s, loss {report.loss_curve[0][1]:.3f} -> "
                f"{report.final_loss:.3f}, {report.tokens_per_second:,.0f} tokens/s, "
                f"dropped {report.dropped_examples}, {report.extra}",
                flush=True,
            )
        except Exception:
            summary["errors"][f"pretrain {name}"] = traceback.format_exc()
            print(summary["errors"][f"pretrain {name}"], flush=True)
        save()
    policy = folders.get("default") or folders.get("ci")
    if policy is None:
        save()
        return 1

    # ------------------------------------------------------------------ 2. generation
    try:
        model = LocalCausalLM(policy, device=device, batch_size=8 if tiny else 32)
        param = next(model.model.parameters())
        prompts = [template.render(h, model.tokenizer.all_special_tokens) for h in histories]
        n_prompts, n_samples = (4, 2) if tiny else (64, 4)
        chosen = prompts[:n_prompts]
        decoding = Decoding(temperature=1.0, top_p=0.95, max_new_tokens=16 if tiny else 96, seed=7)
        model.generate(chosen[:2], decoding, 1)  # warm-up
        sync()
        began = time.perf_counter()
        first = model.generate(chosen, decoding, n_samples)
        sync()
        seconds = time.perf_counter() - began
        tokens = sum(g.completion_tokens for row in first for g in row)
        second = model.generate(chosen, decoding, n_samples)
        same = sum(
            a.text == b.text for ra, rb in zip(first, second, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )  # fmt: skip
        # The same (prompt, seed, index) in other batches: reversed prompt order, 1 sample more.
        other = model.generate(list(reversed(chosen)), decoding, n_samples + 1)[::-1]
        same_other = sum(
            a.text == b.text for ra, rb in zip(first, other, strict=True)
            for a, b in zip(ra, rb[:n_samples], strict=True)
        )  # fmt: skip
        distinct = sum(len({g.text for g in row}) for row in first) / len(first)
        total = n_prompts * n_samples
        summary["generation"] = {
            "model_device": str(param.device),
            "dtype": str(param.dtype),
            "prompts": n_prompts,
            "samples": n_samples,
            "seconds": round(seconds, 3),
            "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1),
            "identical_repeat": f"{same}/{total}",
            "identical_other_batches": f"{same_other}/{total}",
            "mean_distinct_samples_per_prompt": distinct,
            "example": first[0][0].text[:300],
        }
        print(
            f"GENERATE on {param.device} ({param.dtype}): {total} samples, {tokens} tokens in "
            f"{seconds:.2f}s = {tokens / seconds:,.0f} tokens/s; same sample twice {same}/{total}; "
            f"same in other batches {same_other}/{total}; distinct/prompt {distinct:.2f}",
            flush=True,
        )
        print(f"  sample: {first[0][0].text[:200]!r}", flush=True)
        del model
    except Exception:
        summary["errors"]["generation"] = traceback.format_exc()
        print(summary["errors"]["generation"], flush=True)
    save()

    # ------------------------------------------------------------------ 3. DPO
    try:
        from lettingo_dagster.alignment.dpo import DpoJob, train_dpo, write_pair_file

        n_train, n_heldout = (24, 8) if tiny else (256, 64)
        train_hist = genre_lover_histories(n_train, items, seed=11)
        heldout_hist = genre_lover_histories(
            n_heldout, items, seed=12, split="calibration", user_prefix="calibration"
        )
        train_file = write_pair_file(
            pair_frame(train_hist, template, bg.SPECIAL_TOKENS), policy, scratch / "train.parquet"
        )
        heldout_file = write_pair_file(
            pair_frame(heldout_hist, template, bg.SPECIAL_TOKENS),
            policy,
            scratch / "heldout.parquet",
        )
        dpo = {**load_preset("default").dpo.model_dump(), "device": device}
        if tiny:
            dpo.update(batch_size=8, logging_steps=1)
        summary["dpo_settings"] = dpo
        summary["dpo"] = {}
        runs = [("in_process", None)] + ([] if args.skip_torchrun else [("torchrun", True)])
        for label, under_torchrun in runs:
            out_dir = scratch / f"dpo-{label}"
            out_dir.mkdir()
            job = DpoJob(str(policy), str(train_file), str(heldout_file), str(out_dir), dpo,
                         torch_threads=1 if tiny else 2)  # fmt: skip
            began = time.perf_counter()
            if under_torchrun:
                job_file = job.write(out_dir / "job.json")
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}  # fmt: skip
                proc = subprocess.run(
                    [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node=1", "-m", "lettingo_dagster.alignment.train",
                     "--job", str(job_file)],
                    env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=240,
                )  # fmt: skip
                tail = (proc.stdout + proc.stderr)[-3000:]
                print(f"  torchrun rc={proc.returncode}\n{tail}", flush=True)
                if proc.returncode != 0:
                    summary["errors"]["dpo torchrun"] = f"rc={proc.returncode}\n{tail}"
                    continue
                report = json.loads((out_dir / "training_report.json").read_text())
            else:
                report = train_dpo(job, log=lambda line: print("  " + line, flush=True)).as_dict()
            wall = time.perf_counter() - began
            after = report["heldout_after"]
            summary["dpo"][label] = {
                "device": report["device"],
                "world_size": report["world_size"],
                "train_pairs": report["train_pairs"],
                "heldout_pairs": report["heldout_pairs"],
                "global_step": report["global_step"],
                "seconds": round(report["seconds"], 2),
                "wall": round(wall, 2),
                "pairs_per_second": round(report["pairs_per_second"], 2),
                "final_loss": report["final_loss"],
                "heldout_after": after,
                "margin_grew": report["margin_grew"],
            }
            print(
                f"DPO {label}: device {report['device']} world {report['world_size']}, "
                f"{report['train_pairs']} pairs, {report['global_step']} steps in "
                f"{report['seconds']:.2f}s ({wall:.1f}s wall) = {report['pairs_per_second']:.1f} "
                f"pairs/s; loss {report['final_loss']:.4f}; held-out accuracy "
                f"{after.get('rewards/accuracies', float('nan')):.3f}, margin "
                f"{after.get('rewards/margins', float('nan')):.3f}, chosen "
                f"{after.get('rewards/chosen', float('nan')):.3f}, rejected "
                f"{after.get('rewards/rejected', float('nan')):.3f}",
                flush=True,
            )
            save()

        trained = scratch / "dpo-in_process" / "model"
        model = LocalCausalLM(trained, device=device)
        param = next(model.model.parameters())
        prompt = template.render(heldout_hist[0], model.tokenizer.all_special_tokens)
        [[generated]] = model.generate([prompt], Decoding(max_new_tokens=96, seed=0), 1)
        summary["dpo_generation"] = {"model_device": str(param.device), "text": generated.text}
        print(f"DPO model on {param.device}: {generated.text[:300]!r}", flush=True)
    except Exception:
        summary["errors"]["dpo"] = traceback.format_exc()
        print(summary["errors"]["dpo"], flush=True)
    save()
    print("ERRORS: " + (", ".join(summary["errors"]) or "none"), flush=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
