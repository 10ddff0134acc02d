"""Sentence embeddings kept on disk: shared across processes and runs, never half written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lettingo_dagster.evaluation.offline.encoder import EmbeddingStore, MiniLMEncoder

TEXTS = ["Genre share: Mostly watches and enjoys Horror.", "Rating tendency: generous.", "x"]


def _vectors(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{seed:02d}{i:038x}": rng.normal(size=4).astype(np.float32) for i in range(n)}


def test_store_reads_back_every_shard_and_merges_once_there_are_too_many(tmp_path: Path):
    store = EmbeddingStore(tmp_path / "w", max_shards=3)
    written: dict[str, np.ndarray] = {}
    for seed in range(5):
        batch = _vectors(4, seed)
        store.add(batch)
        written.update(batch)
    assert len(list((tmp_path / "w").glob("*.npz"))) == 5
    assert not list((tmp_path / "w").glob(".*"))  # no scratch file left behind
    loaded = store.load()  # five shards > three: merged into one
    assert set(loaded) == set(written)
    for key, vector in written.items():
        np.testing.assert_array_equal(loaded[key], vector)
    assert len(list((tmp_path / "w").glob("*.npz"))) == 1
    assert set(EmbeddingStore(tmp_path / "w").load()) == set(written)
    assert EmbeddingStore(tmp_path / "empty").load() == {}


def test_unreadable_shard_is_named(tmp_path: Path):
    store = EmbeddingStore(tmp_path)
    store.add(_vectors(2, 1))
    (tmp_path / "0-broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"0-broken\.npz: not a readable embedding shard"):
        store.load()


def test_second_encoder_on_the_same_store_encodes_nothing(tmp_path: Path):
    first = MiniLMEncoder(torch_threads=2, cache_dir=tmp_path)
    vectors = first.encode(TEXTS + TEXTS[:1])  # a repeated text is encoded once
    assert first.encoded_texts == 3 and vectors.shape == (4, 384)
    shards = list((tmp_path / first.identity).glob("*.npz"))
    assert len(shards) == 1
    # The texts themselves are never written, only their hashes.
    assert b"Horror" not in shards[0].read_bytes()

    second = MiniLMEncoder(torch_threads=2, cache_dir=tmp_path)
    again = second.encode(TEXTS[::-1])
    assert second.encoded_texts == 0 and second.stored_texts == 3
    np.testing.assert_array_equal(again, vectors[:3][::-1])
    # A new text is encoded and appended; the store then holds all four.
    second.encode(["Eras: mostly items from the 1990s."])
    assert second.encoded_texts == 1
    assert len(EmbeddingStore(tmp_path / first.identity).load()) == 4
