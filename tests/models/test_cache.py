"""The model-call cache: no call on rerun, resume after a crash reproduces the same results; an
endpoint's answers are kept one by one and its failed calls are listed, not cached."""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lettingo_dagster.models.base import ChatPrompt, Decoding, Generation, TextModel
from lettingo_dagster.models.cache import (
    ChunkProgress,
    ModelCallCache,
    generate_cached,
    score_cached,
)
from lettingo_dagster.models.openai_compat import OpenAICompatibleModel


class SeededTextModel(TextModel):
    """A deterministic model: each sample is a function of (prompt, seed, row in the call), like a
    sampler drawing from one seeded stream per call. Counts calls and can fail on demand."""

    name = "seeded"

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.prompts_seen = 0
        self.fail_on_call = fail_on_call

    @property
    def fingerprint(self) -> str:
        return "seeded-v1"

    def generate(
        self, prompts: Sequence[ChatPrompt], decoding: Decoding, num_samples: int = 1
    ) -> list[list[Generation]]:
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("killed mid-run")
        self.prompts_seen += len(prompts)
        out = []
        for row, prompt in enumerate(prompts):
            samples = []
            for j in range(num_samples):
                digest = hashlib.sha256(
                    f"{decoding.seed}:{row}:{j}:{prompt.user}".encode()
                ).hexdigest()
                samples.append(Generation(f"profile {digest[:12]}", 5, 3, 0.01, "stop"))
            out.append(samples)
        return out

    def score_options(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.prompts_seen += len(prompts)
        logits = np.array(
            [[len(p.user) % (k + 2) for k in range(len(options))] for p in prompts], float
        )
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


PROMPTS = [ChatPrompt(user=f"history of user {i}", system="sys") for i in range(23)]
DECODING = Decoding(temperature=1.0, seed=3)


def test_rerun_makes_no_model_call(tmp_path: Path) -> None:
    cache = ModelCallCache(tmp_path / "cache.duckdb")
    model = SeededTextModel()
    first, stats = generate_cached(model, PROMPTS, DECODING, 3, cache, chunk_size=5)
    assert stats.misses == 69 and stats.hits == 0 and model.calls == 5
    assert [len(row) for row in first] == [3] * 23
    again = SeededTextModel()
    second, stats = generate_cached(again, PROMPTS, DECODING, 3, cache, chunk_size=5)
    assert again.calls == 0 and stats.hit_rate == 1.0
    assert second == first


def test_changed_inputs_miss(tmp_path: Path) -> None:
    cache = ModelCallCache(tmp_path / "cache.duckdb")
    generate_cached(SeededTextModel(), PROMPTS, DECODING, 2, cache, chunk_size=8)
    model = SeededTextModel()
    _, stats = generate_cached(
        model, PROMPTS, Decoding(temperature=0.7, seed=3), 2, cache, chunk_size=8
    )
    assert stats.hits == 0
    _, stats = generate_cached(SeededTextModel(), PROMPTS, DECODING, 3, cache, chunk_size=8)
    assert stats.hits == 46 and stats.misses == 23  # only the new third sample


def test_crash_resumes_and_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, _ = generate_cached(
        SeededTextModel(), PROMPTS, DECODING, 2, ModelCallCache(tmp_path / "a.duckdb"), chunk_size=5
    )
    cache = ModelCallCache(tmp_path / "b.duckdb")
    with pytest.raises(KeyboardInterrupt):
        generate_cached(SeededTextModel(fail_on_call=3), PROMPTS, DECODING, 2, cache, chunk_size=5)
    assert cache.count() == 2 * 5 * 2  # two whole chunks survived, nothing of the third
    resumed_model = SeededTextModel()
    resumed, stats = generate_cached(resumed_model, PROMPTS, DECODING, 2, cache, chunk_size=5)
    assert resumed_model.prompts_seen == 13 and stats.hits == 20
    assert resumed == reference


def test_scores_are_cached_with_infinities(tmp_path: Path) -> None:
    class WithUnmatched(SeededTextModel):
        def score_options(self, prompts, options):
            scores = super().score_options(prompts, options)
            scores[:, -1] = -np.inf
            return scores

    cache = ModelCallCache(tmp_path / "cache.duckdb")
    first, stats = score_cached(
        WithUnmatched(), PROMPTS, ["like", "neutral", "dislike"], cache, chunk_size=10
    )
    assert stats.misses == 23 and np.isneginf(first[:, -1]).all()
    model = WithUnmatched()
    second, stats = score_cached(
        model, PROMPTS, ["like", "neutral", "dislike"], cache, chunk_size=10
    )
    assert model.calls == 0 and stats.hits == 23
    np.testing.assert_array_equal(first, second)


def _endpoint(server: Any, **overrides: Any) -> OpenAICompatibleModel:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "model": "test-model",
        "timeout_s": 2,
        "max_retries": 1,
        "backoff_base_s": 0.01,
        "max_concurrency": 3,
        **overrides,
    }
    return OpenAICompatibleModel(**settings)


def test_endpoint_answers_are_kept_one_by_one(chat_server: Any, tmp_path: Path) -> None:
    chat_server.delay_s = 0.01
    with _endpoint(chat_server) as model:
        reference, _ = generate_cached(
            model, PROMPTS, DECODING, 2, ModelCallCache(tmp_path / "a.duckdb"), chunk_size=5
        )
    chat_server.answered.clear()
    cache = ModelCallCache(tmp_path / "b.duckdb")
    kept_when_stopped: list[int] = []

    def stop_after_five_users(progress: ChunkProgress) -> None:
        if progress.done >= 5:
            kept_when_stopped.append(cache.count())
            raise KeyboardInterrupt("killed mid-run")

    with _endpoint(chat_server) as model, pytest.raises(KeyboardInterrupt):
        generate_cached(
            model, PROMPTS, DECODING, 2, cache, chunk_size=5, on_chunk=stop_after_five_users
        )
    # Every answer handed over was in the file before the next request started; the calls
    # in flight when it stopped (at most max_concurrency) are the only ones lost.
    [kept] = kept_when_stopped
    assert kept >= 10 and cache.count() == kept
    before = list(chat_server.answered)
    assert len(before) - kept <= 3

    chat_server.answered.clear()
    with _endpoint(chat_server) as model:
        resumed, stats = generate_cached(model, PROMPTS, DECODING, 2, cache, chunk_size=5)
    assert stats.hits == kept and stats.misses == 46 - kept
    assert len(chat_server.answered) == 46 - kept  # nothing kept is asked for again
    assert [[g.text for g in row] for row in resumed] == [
        [g.text for g in row] for row in reference
    ]


def test_failed_calls_are_listed_not_cached_and_asked_again(
    chat_server: Any, tmp_path: Path
) -> None:
    for _ in range(2):
        chat_server.fail(500, body=b'{"error": "overloaded"}')
    chat_server.fail(400, body=b'{"error": "prompt too long"}')
    cache = ModelCallCache(tmp_path / "cache.duckdb")
    with _endpoint(chat_server, max_concurrency=1) as model:
        samples, stats = generate_cached(model, PROMPTS[:4], DECODING, 2, cache, chunk_size=2)
    assert [
        (f.prompt_index, f.sample_index, f.error_class, f.attempts) for f in stats.failures
    ] == [
        (0, 0, "HTTP 500", 2),
        (0, 1, "HTTP 400", 1),
    ]
    assert samples[0] == [None, None] and all(g is not None for row in samples[1:] for g in row)
    assert stats.misses == 6 and cache.count() == 6 and stats.calls.requests == 9

    with _endpoint(chat_server) as model:
        again, stats = generate_cached(model, PROMPTS[:4], DECODING, 2, cache, chunk_size=2)
    assert stats.hits == 6 and stats.misses == 2 and not stats.failures
    assert all(g is not None for row in again for g in row)


def test_no_call_starts_once_more_failed_than_allowed(chat_server: Any, tmp_path: Path) -> None:
    for _ in range(6):
        chat_server.fail(500)
    cache = ModelCallCache(tmp_path / "cache.duckdb")
    with _endpoint(chat_server, max_concurrency=1, max_retries=0) as model:
        samples, stats = generate_cached(
            model, PROMPTS, DECODING, 1, cache, chunk_size=5, max_failures=2
        )
    assert len(stats.failures) == 3 and stats.not_attempted == 20 and stats.misses == 0
    assert len(chat_server.requests) == 3


def test_a_writer_waits_for_another_process_holding_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    cache = ModelCallCache(tmp_path / "cache.duckdb", lock_wait_s=30)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " time.sleep(1.5)",
            str(cache.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    cache.put_many("generate", "m", {"k": {"text": "kept"}})  # waits instead of failing
    waited = time.perf_counter() - started
    holder.wait(timeout=30)
    assert cache.get_many(["k"]) == {"k": {"text": "kept"}} and waited > 0.5
