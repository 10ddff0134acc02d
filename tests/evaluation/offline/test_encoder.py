"""The MiniLM encoder's precision: bfloat16 stays close to float32, is named apart from it, and a
recommender fit in one precision never scores with the other."""

from __future__ import annotations

import numpy as np
import pytest
from test_recommender import build_world, profiles_of

from lettingo_dagster.evaluation.offline import MiniLMEncoder, OfflineConfig, OfflineRecommender
from lettingo_dagster.evaluation.offline.encoder import shared_encoder
from lettingo_dagster.settings import load_preset

TEXTS = [
    "The Shining (1980). Genres: Horror, Thriller.",
    "like: Toy Story (1995), Animation, Comedy",
    "The user enjoys westerns and dislikes romance.",
    "dislike: A Carnival in Tamarack (1991), Horror, Sci-Fi",
]


@pytest.fixture(scope="module")
def encoders() -> dict[str, MiniLMEncoder]:
    return {p: MiniLMEncoder(torch_threads=2, precision=p) for p in ("float32", "bfloat16")}


def test_bfloat16_embeddings_stay_close_to_float32(encoders) -> None:
    fp32 = encoders["float32"].encode(TEXTS)
    bf16 = encoders["bfloat16"].encode(TEXTS)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosines = (fp32 * bf16).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    assert not np.array_equal(fp32, bf16)  # the autocast really ran in bfloat16
    # A rerun reproduces it: a fresh encoder given the same call gives the same bits. (Which
    # texts share a call moves an embedding slightly, by up to about 1e-3 in bfloat16 and 1e-7
    # in float32, so a pipeline's calls must come in a fixed order, and they do.)
    np.testing.assert_array_equal(MiniLMEncoder(precision="bfloat16").encode(TEXTS), bf16)


def test_precision_is_part_of_the_identity(encoders) -> None:
    fp32, bf16 = encoders["float32"], encoders["bfloat16"]
    assert bf16.identity == f"{fp32.identity}/bfloat16"
    assert "/" not in fp32.identity.split("@", 1)[1]  # float32 keeps the name saved models have
    assert (fp32.batch_size, bf16.batch_size) == (64, 256)
    assert shared_encoder(precision="bfloat16") is shared_encoder(precision="bfloat16")
    assert shared_encoder(precision="bfloat16") is not shared_encoder()


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="encoder precision 'float16'"):
        MiniLMEncoder(precision="float16")  # type: ignore[arg-type]


def test_a_recommender_keeps_its_precision_through_save_and_load(encoders, tmp_path) -> None:
    train, test = build_world(16, seed=1, targets=2), build_world(4, seed=2, targets=2)
    config = OfflineConfig(item_dims=4, text_dims=4, encoder_precision="bfloat16")
    with pytest.raises(ValueError, match="precision is float32, the config's bfloat16"):
        OfflineRecommender(config, encoders["float32"])
    model = OfflineRecommender(config)  # the process's shared bfloat16 encoder
    assert model.encoder.precision == "bfloat16"
    model.fit(train, profiles_of(train), ("ranking",), holdout=False)
    model.save(tmp_path)
    loaded = OfflineRecommender.load(tmp_path)
    assert loaded.encoder.identity.endswith("/bfloat16")
    assert loaded.fingerprint == model.fingerprint
    profiles = [p["genre_affinity"] for p in profiles_of(test)]
    for ours, theirs in zip(
        loaded.score_candidates(test, profiles), model.score_candidates(test, profiles), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)
    float32_twin = OfflineRecommender(OfflineConfig(item_dims=4, text_dims=4), encoders["float32"])
    float32_twin.fit(train, profiles_of(train), ("ranking",), holdout=False)
    assert float32_twin.fingerprint != model.fingerprint


def test_presets_choose_their_precision() -> None:
    assert load_preset("default").recommender.encoder_precision == "float32"
    assert load_preset("planted").recommender.encoder_precision == "bfloat16"
