"""The benchmarks run end to end at a toy size.

Their speed ratios mean nothing at this size, so the verdict (exit code) is not checked; what
is checked is that every configuration runs and agrees with the others.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1 is a FAIL verdict, not a crash
    assert re.search(r"^(PASS|FAIL): ", done.stdout, re.MULTILINE), done.stdout
    return done.stdout


def test_generation_benchmark_paths_agree() -> None:
    out = _run(
        "generation_benchmark.py", "--prompts", "3", "--max-new-tokens", "6",
        "--batch-size", "3", "--threads", "1",
    )  # fmt: skip
    # Own decoding loop, transformers' generate and one prompt at a time: the same samples.
    assert len(re.findall(r"3/3 prompts' samples identical to batched", out)) == 3, out
    assert "own decoding loop:" in out


def test_label_scoring_benchmark_runs_both_tasks() -> None:
    for task, prompts in (("sentiment", 6), ("ranking", 6 * 4)):
        out = _run(
            "label_scoring_benchmark.py", "--task", task, "--users", "1", "--targets", "1",
            "--negatives", "3", "--threads", "1",
        )  # fmt: skip
        assert f"= 6 examples, {prompts} prompts" in out, out
        assert "rows sum to 1.000" in out


def test_profiles_rerun_benchmark_materializes_twice(pipeline_world, tmp_path: Path) -> None:
    """The cache benchmark materializes the real assets (here the tests' small dataset under
    `ci`, in a home of its own) and times a cold and a warm `sampled_profiles`."""
    out = _run(
        "profiles_rerun_benchmark.py", "--preset", "ci", "--dataset", "synthetic",
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    cold = float(re.search(r"cold sampled_profiles:\s+([\d.]+)s", out).group(1))
    warm = float(re.search(r"warm sampled_profiles:\s+([\d.]+)s", out).group(1))
    assert 0 < warm < cold, out


def test_scoring_benchmark_kept_and_fresh_featurizers_agree() -> None:
    out = _run("scoring_benchmark.py", "--users", "4", "--targets", "2", "--methods", "2")
    assert "3 methods (no profile and 2 writer styles)" in out, out
    assert "scores identical: True" in out, out


def test_deterministic_fill_benchmark_gives_identical_weights() -> None:
    out = _run("deterministic_fill_benchmark.py", "--users", "8", "--pairs", "16")
    assert re.search(r"^pretraining .* identical", out, re.MULTILINE), out
    assert re.search(r"^DPO .* identical", out, re.MULTILINE), out


def test_encoder_benchmark_compares_both_precisions() -> None:
    out = _run("encoder_benchmark.py", "--users", "4", "--items", "60")
    assert re.search(r"^float32 .* texts/s$", out, re.MULTILINE), out
    assert re.search(r"^bfloat16 .* texts/s$", out, re.MULTILINE), out
    cosine = float(re.search(r"cosine to float32: min ([0-9.]+)", out).group(1))
    assert cosine >= 0.9995, out
