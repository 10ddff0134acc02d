"""A persistent cache of model calls, in its own DuckDB file.

Every generation and every score is stored under a hash of (model fingerprint, prompt, call
parameters, sample index, seed): a rerun with unchanged inputs makes no model call.

How much a kill loses depends on the backend. A local model generates a chunk of prompts in one
batch, and the chunk is written in one transaction: a kill loses the chunk in flight. An endpoint
(`StreamingTextModel`) answers request by request, and each answer is written the moment it
arrives (all answers that arrived together go in one transaction) before another request
starts: a kill loses at most the requests in flight, `max_concurrency` of them. Chunks are cut
from the full work list (not from what is missing) and each chunk's seed depends only on its
contents, so a resumed run reproduces an uninterrupted one.

One writer, never a torn or doubled row: DuckDB lets one process open a file at a time. Inside
a process only the thread that runs `generate_cached` (the step's own thread) writes; the threads
that wait on HTTP hand their answers to it and never touch the file. Across processes, every
read and write opens the file, does one transaction and closes it (about 50 ms), so no process
holds it for longer than that, and a process that finds it held waits for it (`lock_wait_s`)
instead of failing or writing beside it. Each write is one `INSERT OR REPLACE` transaction on
the primary key: a row is in the file whole or not at all (a kill mid-commit is rolled back
when the file is next opened), and an answer written twice replaces itself, never doubles.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from lettingo_dagster.models.base import (
    CallFailed,
    CallStats,
    ChatPrompt,
    Decoding,
    Generation,
    GenerationTask,
    StreamingTextModel,
    TextModel,
)

LOCK_WAIT_S = 120.0  # how long to wait for another process's hold on the cache file

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_calls (
    key VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,           -- generate / score
    model_fingerprint VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,        -- JSON text (Python json: keeps -Infinity for unmatched options)
    created_at TIMESTAMP DEFAULT current_timestamp
)
"""


def call_key(
    kind: str, fingerprint: str, prompt: ChatPrompt, params: dict[str, Any], index: int
) -> str:
    payload = json.dumps(
        {
            "kind": kind,
            "model": fingerprint,
            "prompt": prompt.digest(),
            "params": params,
            "index": index,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class FailedCall:
    """A call that failed for good (after the backend's retries): nothing of it is cached, so
    the next run asks again."""

    prompt_index: int
    sample_index: int
    error_class: str
    attempts: int
    message: str


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # new answers, computed and kept in this run
    chunks_run: int = 0
    model_seconds: float = 0.0
    completion_tokens: int = 0
    failures: list[FailedCall] = field(default_factory=list)
    not_attempted: int = 0  # calls left out once more failed than allowed
    calls: CallStats | None = None  # what an endpoint's requests met

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 1.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.model_seconds if self.model_seconds else 0.0


@dataclass(frozen=True)
class ChunkProgress:
    done: int  # prompts finished (cached or computed)
    total: int
    stats: CacheStats


class ModelCallCache:
    """Model calls persisted in `path` (a DuckDB file). Connections are short-lived so that a
    reader or another writer is never locked out for a whole run."""

    def __init__(self, path: Path, *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = path
        self.lock_wait_s = lock_wait_s
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as error:
                # Another process holds the file: wait for it rather than fail the step.
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        if not keys:
            return {}
        with self._connect() as con:
            con.register("wanted", _key_frame(keys))
            rows = con.execute(
                "SELECT m.key, m.payload FROM model_calls m JOIN wanted w ON m.key = w.key"
            ).fetchall()
        return {key: json.loads(payload) for key, payload in rows}

    def put_many(self, kind: str, fingerprint: str, items: dict[str, Any]) -> None:
        """Store a batch of answers in one transaction."""
        if not items:
            return
        import pandas as pd

        frame = pd.DataFrame(
            {
                "key": list(items),
                "kind": kind,
                "model_fingerprint": fingerprint,
                "payload": [json.dumps(value) for value in items.values()],
            }
        )
        with self._connect() as con:
            con.register("incoming", frame)
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "INSERT OR REPLACE INTO model_calls (key, kind, model_fingerprint, payload) "
                "SELECT key, kind, model_fingerprint, payload FROM incoming"
            )
            con.execute("COMMIT")

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT count(*) FROM model_calls").fetchone()[0])


def _key_frame(keys: Sequence[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({"key": list(keys)})


def _chunk_seed(base_seed: int, keys: Sequence[str]) -> int:
    digest = hashlib.sha256(f"{base_seed}:{''.join(keys)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def generate_cached(
    model: TextModel,
    prompts: Sequence[ChatPrompt],
    decoding: Decoding,
    num_samples: int,
    cache: ModelCallCache,
    *,
    chunk_size: int = 64,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    max_failures: int | None = None,
) -> tuple[list[list[Generation | None]], CacheStats]:
    """`model.generate` through the cache: result[i][j] is sample j of prompt i.

    A streaming model's failed calls (CallFailed) are recorded in `stats.failures` and leave
    None in their place; once more than `max_failures` failed, no new call starts (the step
    cannot succeed any more) and the rest stay None, counted in `stats.not_attempted`. A local
    model's error propagates."""
    fingerprint = model.fingerprint
    params = decoding.as_dict()
    keys = [
        [call_key("generate", fingerprint, prompt, params, j) for j in range(num_samples)]
        for prompt in prompts
    ]
    results: list[list[Generation | None]] = [[None] * num_samples for _ in prompts]
    stats = CacheStats()
    chunks = [
        list(range(start, min(start + chunk_size, len(prompts))))
        for start in range(0, len(prompts), chunk_size)
    ]
    if isinstance(model, StreamingTextModel):
        _generate_streaming(
            model, prompts, decoding, keys, chunks, cache, results, stats, on_chunk, max_failures
        )
        return results, stats
    for indexes in chunks:
        chunk_keys = [key for i in indexes for key in keys[i]]
        cached = cache.get_many(chunk_keys)
        stats.hits += len(cached)
        missing = [i for i in indexes if any(key not in cached for key in keys[i])]
        for i in indexes:
            for j, key in enumerate(keys[i]):
                if key in cached:
                    results[i][j] = Generation(**cached[key])
        if missing:
            chunk_decoding = replace(decoding, seed=_chunk_seed(decoding.seed, chunk_keys))
            started = time.perf_counter()
            fresh = model.generate([prompts[i] for i in missing], chunk_decoding, num_samples)
            stats.model_seconds += time.perf_counter() - started
            stored: dict[str, Any] = {}
            for i, samples in zip(missing, fresh, strict=True):
                for j, sample in enumerate(samples):
                    if keys[i][j] in cached:
                        continue
                    results[i][j] = sample
                    stored[keys[i][j]] = asdict(sample)
                    stats.misses += 1
                    stats.completion_tokens += sample.completion_tokens
            cache.put_many("generate", fingerprint, stored)
            stats.chunks_run += 1
        if on_chunk is not None:
            on_chunk(ChunkProgress(done=indexes[-1] + 1, total=len(prompts), stats=stats))
    return results, stats


def _generate_streaming(
    model: StreamingTextModel,
    prompts: Sequence[ChatPrompt],
    decoding: Decoding,
    keys: list[list[str]],
    chunks: list[list[int]],
    cache: ModelCallCache,
    results: list[list[Generation | None]],
    stats: CacheStats,
    on_chunk: Callable[[ChunkProgress], None] | None,
    max_failures: int | None,
) -> None:
    """Only the missing (prompt, sample) calls, each answer written as it arrives. Every call
    is asked with its chunk's seed, as the chunked path would, so both give the same samples."""
    cached = cache.get_many([key for row in keys for key in row])
    stats.hits += len(cached)
    tasks: list[GenerationTask] = []
    where: list[tuple[int, int]] = []
    for indexes in chunks:
        chunk_keys = [key for i in indexes for key in keys[i]]
        chunk_decoding = replace(decoding, seed=_chunk_seed(decoding.seed, chunk_keys))
        for i in indexes:
            for j, key in enumerate(keys[i]):
                if key in cached:
                    results[i][j] = Generation(**cached[key])
                else:
                    tasks.append(GenerationTask(prompts[i], chunk_decoding, j))
                    where.append((i, j))
    open_calls = [0] * len(prompts)
    for i, _ in where:
        open_calls[i] += 1
    finished = sum(1 for count in open_calls if count == 0)
    reported = finished
    report_every = max(1, len(chunks[0]) if chunks else 1)
    started = time.perf_counter()
    stopping = False
    with closing(model.generate_each(tasks)) as stream:
        while True:
            try:
                batch = stream.send(True if stopping else None)
            except StopIteration:
                break
            answers: dict[str, Any] = {}
            for position, outcome in batch:
                i, j = where[position]
                open_calls[i] -= 1
                finished += int(open_calls[i] == 0)
                if isinstance(outcome, CallFailed):
                    if not stopping:  # once stopping, a call cut short has not failed
                        stats.failures.append(
                            FailedCall(i, j, outcome.error_class, outcome.attempts, str(outcome))
                        )
                    continue
                results[i][j] = outcome
                answers[keys[i][j]] = asdict(outcome)
                stats.misses += 1
                stats.completion_tokens += outcome.completion_tokens
            # Kept before the stream is asked for more, so before any new request starts.
            cache.put_many("generate", model.fingerprint, answers)
            stats.model_seconds = time.perf_counter() - started
            if on_chunk is not None and finished - reported >= report_every:
                reported = finished
                on_chunk(ChunkProgress(done=finished, total=len(prompts), stats=stats))
            if not stopping and max_failures is not None and len(stats.failures) > max_failures:
                # The step cannot succeed any more: start nothing new, keep what is in flight.
                stopping = True
    if stopping:
        stats.not_attempted = len(tasks) - stats.misses - len(stats.failures)
    stats.chunks_run = len({i // report_every for i, _ in where})
    stats.calls = model.call_stats()
    if on_chunk is not None:
        on_chunk(ChunkProgress(done=finished, total=len(prompts), stats=stats))


def score_cached(
    model: TextModel,
    prompts: Sequence[ChatPrompt],
    options: Sequence[str],
    cache: ModelCallCache,
    *,
    chunk_size: int = 64,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> tuple[np.ndarray, CacheStats]:
    """`model.score_options` through the cache: log-probabilities (len(prompts), len(options))."""
    fingerprint = model.fingerprint
    params = {"options": list(options)}
    keys = [call_key("score", fingerprint, prompt, params, 0) for prompt in prompts]

    def compute(indexes: list[int]) -> list[Any]:
        return model.score_options([prompts[i] for i in indexes], options).tolist()

    values, stats = cached_map(
        cache, "score", fingerprint, keys, compute, chunk_size=chunk_size, on_chunk=on_chunk
    )
    return np.array(values, dtype=float).reshape(len(prompts), len(options)), stats


def cached_map(
    cache: ModelCallCache,
    kind: str,
    fingerprint: str,
    keys: Sequence[str],
    compute: Callable[[list[int]], list[Any]],
    *,
    chunk_size: int = 256,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> tuple[list[Any], CacheStats]:
    """Values for `keys` (JSON-serializable), computing only the missing ones, a chunk at a time:
    `compute(indexes)` returns the values of those positions."""
    values: list[Any] = [None] * len(keys)
    stats = CacheStats()
    for start in range(0, len(keys), chunk_size):
        indexes = list(range(start, min(start + chunk_size, len(keys))))
        cached = cache.get_many([keys[i] for i in indexes])
        stats.hits += len(cached)
        missing = [i for i in indexes if keys[i] not in cached]
        for i in indexes:
            if keys[i] in cached:
                values[i] = cached[keys[i]]
        if missing:
            started = time.perf_counter()
            fresh = compute(missing)
            stats.model_seconds += time.perf_counter() - started
            stats.misses += len(missing)
            for i, value in zip(missing, fresh, strict=True):
                values[i] = value
            cache.put_many(
                kind, fingerprint, {keys[i]: value for i, value in zip(missing, fresh, strict=True)}
            )
            stats.chunks_run += 1
        if on_chunk is not None:
            on_chunk(ChunkProgress(done=indexes[-1] + 1, total=len(keys), stats=stats))
    return values, stats
