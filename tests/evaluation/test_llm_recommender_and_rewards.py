"""The paper's LLM recommender on a tiny local model, and reward bookkeeping."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import TINY_GENERATOR as TINY

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import ItemText, TargetExample
from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
from lettingo_dagster.evaluation.rewards import outcome, profile_rewards
from lettingo_dagster.exploration import base_generator as bg
from lettingo_dagster.exploration.history import RatedItem
from lettingo_dagster.models.cache import ModelCallCache
from lettingo_dagster.models.local import LocalCausalLM


def _example(user: str, target_index: int, label: str, genre: str) -> TargetExample:
    recent = tuple(
        RatedItem(f"r{k}", f"Recent {k}", 1990 + k, ("Drama",), 4.0, "like") for k in range(3)
    )
    return TargetExample(
        user_id=user, split="train", target_index=target_index, recent=recent,
        target=ItemText(f"t{target_index}", f"Target {target_index}", 1995, (genre,)),
        target_rating={"like": 5.0, "neutral": 3.0, "dislike": 1.0}[label], label=label,
        negatives=tuple(ItemText(f"n{k}", f"Negative {k}", 1980, ("Comedy",)) for k in range(4)),
        long_window=(),
    )  # fmt: skip


EXAMPLES = [
    _example("u1", 0, "like", "Horror"),
    _example("u1", 1, "dislike", "Romance"),
    _example("u2", 0, "neutral", "Drama"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LocalCausalLM:
    folder = tmp_path_factory.mktemp("recommender-lm")
    texts = [f"Recent {k} (199{k}; Drama): like, 4/5" for k in range(5)] + list(LABELS) * 20
    tokenizer = bg.train_tokenizer(texts, TINY.vocab_size)
    model = bg.build_model(tokenizer, TINY)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return LocalCausalLM(folder, torch_threads=1, batch_size=2)


def test_label_probabilities_batched_equal_one_by_one(tiny_model: LocalCausalLM) -> None:
    recommender = LLMRecommender(tiny_model)
    profiles = ["Loves horror films.", None, "Finds dramas dull <|user|> </s>"]
    batched = recommender.predict_sentiment(EXAMPLES, profiles)
    single = np.vstack(
        [recommender.predict_sentiment([e], [p]) for e, p in zip(EXAMPLES, profiles, strict=True)]
    )
    assert batched.shape == (3, 3)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # The profile is part of what the model reads.
    assert not np.allclose(recommender.predict_sentiment(EXAMPLES[:1], ["Loves horror films."]),
                           recommender.predict_sentiment(EXAMPLES[:1], [None]))  # fmt: skip


def test_prompt_holds_recent_profile_and_target(tiny_model: LocalCausalLM) -> None:
    prompt = LLMRecommender(tiny_model).prompt(EXAMPLES[0], None, EXAMPLES[0].target)
    assert "- Recent 0 (1990; Drama): like, 4/5" in prompt.user
    assert "Profile of the user: (none)" in prompt.user
    assert "New item: Target 0 (1995); Horror" in prompt.user


def test_candidates_are_scored_target_first(tiny_model: LocalCausalLM) -> None:
    scores = LLMRecommender(tiny_model).score_candidates(EXAMPLES, ["a", "b", "c"])
    assert [len(s) for s in scores] == [5, 5, 5] and all(np.isfinite(s).all() for s in scores)


def test_shared_prefix_scoring_equals_scoring_each_prompt_alone(
    tiny_model: LocalCausalLM,
) -> None:
    """Candidates of one example share everything up to the item: scored from one prefix, the
    label probabilities are those of each prompt scored alone."""
    from lettingo_dagster.models.local import SHARED_PREFIX_MIN_TOKENS, _prefix_groups

    recommender = LLMRecommender(tiny_model)
    prompts = [
        recommender.prompt(e, profile, item)
        for e, profile in zip(EXAMPLES, ["Loves horror.", None, "Dramas, slowly."], strict=True)
        for item in e.candidates
    ]
    encoded = [tiny_model.prompt_ids(p) for p in prompts]
    groups = _prefix_groups(encoded, SHARED_PREFIX_MIN_TOKENS)
    assert sum(len(rows) for rows, shared in groups if shared) == len(prompts)
    shared = tiny_model.score_options(prompts, list(LABELS))
    alone = np.vstack([tiny_model.score_options([p], list(LABELS)) for p in prompts])
    np.testing.assert_allclose(shared, alone, atol=1e-4)
    assert tiny_model._shared_prefix  # the fast path ran, it did not fall back


def test_outcomes() -> None:
    example = EXAMPLES[0]  # label like
    assert outcome("sentiment", example, [0.1, 0.2, 0.7]) == ("like", True, pytest.approx(0.7))
    assert outcome("sentiment", example, [0.6, 0.2, 0.2])[1:] == (False, pytest.approx(0.2))
    assert outcome("sentiment", example, [np.nan] * 3) == (
        None,
        False,
        0.0,
    )  # unparseable counts wrong
    assert outcome("ranking", example, [3.0, 1, 2, 0, -1]) == ("t0", True, 1.0)
    assert outcome("ranking", example, [1.0, 2, 3, 0, -1])[1:] == (False, pytest.approx(1 / 3))
    assert outcome("ranking", example, [1.0] * 5)[1] is False  # ties never count as right


def test_profile_rewards_aggregate_targets_and_cache(
    tiny_model: LocalCausalLM, tmp_path: Path
) -> None:
    recommender = LLMRecommender(tiny_model)
    profiles = pd.DataFrame(
        {
            "dataset": "d", "user_id": ["u1", "u1", "u2"], "profile_id": ["a", "b", "c"],
            "split": "train", "explorer": ["base", "writers", "base"], "style": [None, "eras", None],
            "sample_index": [0, 0, 1], "profile": ["likes horror", "likes romance", "no idea"],
        }
    )  # fmt: skip
    by_user = {"u1": EXAMPLES[:2], "u2": EXAMPLES[2:]}
    cache = ModelCallCache(tmp_path / "cache.duckdb")
    rewards, stats = profile_rewards(recommender, "sentiment", profiles, by_user, cache)
    assert list(rewards["targets"]) == [2, 2, 1] and stats.misses == 5
    probabilities = recommender.predict_sentiment(EXAMPLES[:2], ["likes horror"] * 2)
    truth = [probabilities[0, LABELS.index("like")], probabilities[1, LABELS.index("dislike")]]
    assert rewards.loc[0, "graded_reward"] == pytest.approx(np.mean(truth), abs=1e-5)
    right = [
        LABELS[int(np.argmax(row))] == e.label
        for row, e in zip(probabilities, EXAMPLES[:2], strict=True)
    ]
    assert rewards.loc[0, "binary_reward"] == pytest.approx(np.mean(right))
    again, stats = profile_rewards(recommender, "sentiment", profiles, by_user, cache)
    assert stats.misses == 0 and stats.hits == 5
    pd.testing.assert_frame_equal(again, rewards)


def test_split_half_reliability_separates_signal_from_noise() -> None:
    import numpy as np
    import pandas as pd

    from lettingo_dagster.evaluation.rewards import split_half_reliability

    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(60)], 6)
    quality = rng.normal(size=len(users))  # a property of each profile
    signal = [list(q + 0.2 * rng.normal(size=4)) for q in quality]
    noise = [list(rng.normal(size=4)) for _ in quality]
    assert (
        split_half_reliability(pd.DataFrame({"user_id": users, "target_truth_scores": signal}))
        > 0.9
    )
    assert (
        abs(split_half_reliability(pd.DataFrame({"user_id": users, "target_truth_scores": noise})))
        < 0.15
    )
    one_target = pd.DataFrame({"user_id": ["a", "a"], "target_truth_scores": [[1.0], [0.5]]})
    assert np.isnan(split_half_reliability(one_target))


def test_reliability_interval_resamples_whole_users() -> None:
    """The interval from per-user sums equals resampling the profiles themselves: each draw's
    users (copies kept apart) re-centred and correlated, then Spearman-Brown."""
    import numpy as np
    import pandas as pd

    from lettingo_dagster.evaluation.rewards import (
        reliability_interval,
        spearman_brown,
        split_half_reliability,
    )

    rng = np.random.default_rng(3)
    users = np.repeat([f"u{i}" for i in range(40)], 5)
    quality = rng.normal(size=len(users))
    scores = [list(q + rng.normal(size=6)) for q in quality]
    frame = pd.DataFrame({"user_id": users, "target_rewards": scores})
    fast = reliability_interval(frame, n_boot=50, seed=11)

    draw_rng = np.random.default_rng(11)
    ids = frame["user_id"].unique()
    groups = {u: g for u, g in frame.groupby("user_id")}
    draws = []
    for _ in range(50):
        chosen = draw_rng.choice(ids, size=len(ids), replace=True)
        sample = pd.concat(
            [groups[u].assign(user_id=f"{u}#{k}") for k, u in enumerate(chosen)],
            ignore_index=True,
        )
        draws.append(spearman_brown(split_half_reliability(sample, "target_rewards")))
    low, high = np.percentile(draws, [2.5, 97.5])
    assert fast["low"] == pytest.approx(low, abs=1e-9)
    assert fast["high"] == pytest.approx(high, abs=1e-9)
    assert fast["low"] < fast["estimate"] < fast["high"]
    one_target = frame.assign(target_rewards=[[1.0]] * len(frame))
    assert np.isnan(reliability_interval(one_target, n_boot=5)["low"])
