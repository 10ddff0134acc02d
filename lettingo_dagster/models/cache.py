"""A persistent cache of model calls (DESIGN §4), in its own DuckDB file.

Every generation and every score is stored under a hash of (model fingerprint, prompt, call
parameters, sample index, seed). Work is split into fixed chunks, each written in one
transaction: a rerun with unchanged inputs makes no model call, and a run killed half-way loses
only the chunk in flight. Chunks are cut from the full work list (not from what is missing) and
each chunk's seed depends only on its contents, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from lettingo_dagster.models.base import ChatPrompt, Decoding, Generation, TextModel

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


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    chunks_run: int = 0
    model_seconds: float = 0.0
    completion_tokens: int = 0

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

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.path))

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
        """Store one chunk atomically."""
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
) -> tuple[list[list[Generation]], CacheStats]:
    """`model.generate` through the cache: result[i][j] is sample j of prompt i."""
    fingerprint = model.fingerprint
    params = decoding.as_dict()
    keys = [
        [call_key("generate", fingerprint, prompt, params, j) for j in range(num_samples)]
        for prompt in prompts
    ]
    results: list[list[Generation | None]] = [[None] * num_samples for _ in prompts]
    stats = CacheStats()
    for start in range(0, len(prompts), chunk_size):
        indexes = list(range(start, min(start + chunk_size, len(prompts))))
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
    return [[sample for sample in row if sample is not None] for row in results], stats


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
