"""Pair construction holds its invariants (property-based)."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from lettingo_dagster.alignment.pairs import PairOptions, build_pairs, clears_noise, profile_source

SOURCES = [("base", None), ("writers", "genre_affinity"), ("writers", "eras"), ("remote", None)]


@st.composite
def reward_tables(draw: st.DrawFn) -> pd.DataFrame:
    rows = []
    for user in range(draw(st.integers(1, 6))):
        for k in range(draw(st.integers(1, 7))):
            explorer, style = draw(st.sampled_from(SOURCES))
            binary = draw(st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]))
            targets = draw(
                st.lists(st.sampled_from([-0.5, 0.0, 0.1, 0.4, 1.0]), min_size=3, max_size=3)
            )
            rows.append(
                {
                    "dataset": "d",
                    "user_id": f"u{user}",
                    "split": draw(st.sampled_from(["train", "calibration"])),
                    "explorer": explorer,
                    "style": style,
                    "profile_id": f"u{user}-{k}",
                    "profile": draw(st.sampled_from([f"text {k}", "same text", f"other {k}"])),
                    "binary_reward": binary,
                    "graded_reward": draw(st.floats(0, 1)),
                    "target_rewards": targets,
                    "reward": float(np.mean(targets)),
                }
            )
    return pd.DataFrame(rows)


def _prompts(rewards: pd.DataFrame) -> dict[str, tuple[str, str]]:
    return {u: ("system", f"history of {u}") for u in rewards.user_id.unique()}


OPTIONS = st.builds(
    PairOptions,
    graded_margin=st.sampled_from([0.0, 0.1, 0.3]),
    min_z=st.sampled_from([0.0, 1.0, 2.0]),
    max_pairs_per_user=st.sampled_from([None, 1, 3]),
    scope=st.sampled_from(["all", "within_explorer", "policy"]),
    policy=st.just("base"),
    balance_sources=st.booleans(),
    seed=st.integers(0, 3),
)


@settings(max_examples=150, deadline=None)
@given(rewards=reward_tables(), options=OPTIONS)
def test_pair_invariants(rewards: pd.DataFrame, options: PairOptions) -> None:
    pairs = build_pairs(rewards, _prompts(rewards), options)
    by_id = rewards.set_index("profile_id")
    for pair in pairs.itertuples():
        chosen, rejected = by_id.loc[pair.chosen_profile_id], by_id.loc[pair.rejected_profile_id]
        assert chosen.user_id == rejected.user_id == pair.user_id  # pairs never cross users
        assert chosen.reward > rejected.reward  # better over worse
        if options.min_z:  # the difference clears its standard error over the targets
            assert clears_noise(chosen.target_rewards, rejected.target_rewards, options.min_z)
        assert pair.chosen != pair.rejected  # identical texts teach nothing
        assert pair.chosen == chosen.profile and pair.rejected == rejected.profile
        assert pair.prompt_user == f"history of {pair.user_id}"
        if options.graded_margin:
            assert chosen.graded_reward - rejected.graded_reward >= options.graded_margin
        if options.scope == "within_explorer":
            assert chosen.explorer == rejected.explorer
        if options.scope == "policy":  # on-policy: both sides sampled from the trained model
            assert chosen.explorer == rejected.explorer == options.policy
    assert not pairs.duplicated(["chosen_profile_id", "rejected_profile_id"]).any()
    if options.max_pairs_per_user is not None and len(pairs):
        assert pairs.groupby("user_id").size().max() <= options.max_pairs_per_user
    if options.balance_sources:
        different = pairs[pairs.chosen_source != pairs.rejected_source]
        wins = different.groupby(["chosen_source", "rejected_source"]).size()
        for (a, b), count in wins.items():
            assert wins.get((b, a), 0) == count  # no source beats another by format alone
    assert build_pairs(rewards, _prompts(rewards), options).equals(pairs)  # deterministic


@settings(max_examples=100, deadline=None)
@given(rewards=reward_tables())
def test_default_rule_is_every_right_wrong_combination(rewards: pd.DataFrame) -> None:
    pairs = build_pairs(rewards, _prompts(rewards), PairOptions())
    expected = 0
    for _user, group in rewards.groupby("user_id"):
        rows = list(group.itertuples())
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                expected += a.reward != b.reward and a.profile != b.profile
    assert len(pairs) == expected


def test_paper_rule_with_one_target() -> None:
    rewards = pd.DataFrame(
        {
            "dataset": "d", "user_id": ["u"] * 4, "split": "train",
            "explorer": ["base", "base", "writers", "writers"], "style": [None, None, "eras", "favourites"],
            "profile_id": ["a", "b", "c", "d"], "profile": ["p1", "p2", "p3", "p4"],
            "binary_reward": [1.0, 0.0, 1.0, 0.0], "graded_reward": [0.9, 0.2, 0.6, 0.5],
            "reward": [1.0, 0.0, 1.0, 0.0], "target_rewards": [[1.0], [0.0], [1.0], [0.0]],
        }
    )  # fmt: skip
    pairs = build_pairs(rewards, {"u": (None, "prompt")}, PairOptions())
    assert sorted(zip(pairs.chosen_profile_id, pairs.rejected_profile_id, strict=True)) == [
        ("a", "b"), ("a", "d"), ("c", "b"), ("c", "d"),
    ]  # fmt: skip
    margin = build_pairs(rewards, {"u": (None, "prompt")}, PairOptions(graded_margin=0.3))
    assert sorted(zip(margin.chosen_profile_id, margin.rejected_profile_id, strict=True)) == [
        ("a", "b"),
        ("a", "d"),
        ("c", "b"),
    ]
    assert profile_source("writers", "eras") == "writers/eras"


def test_min_z_keeps_only_differences_that_clear_their_standard_error() -> None:
    steady = [0.30, 0.32, 0.28, 0.31, 0.29]  # +0.3 on every target
    noisy = [1.5, -1.2, 1.4, -1.1, 1.0]  # a larger mean, but mostly noise
    base = [0.0] * 5
    assert clears_noise(steady, base, 2.0)
    assert not clears_noise(noisy, base, 2.0)
    rewards = pd.DataFrame(
        {
            "dataset": "d", "user_id": "u", "split": "train", "explorer": "writers",
            "style": ["a", "b", "c"], "profile_id": ["s", "n", "b"], "profile": ["s", "n", "b"],
            "binary_reward": 0.0, "graded_reward": 0.0,
            "target_rewards": [steady, noisy, base],
            "reward": [float(np.mean(x)) for x in (steady, noisy, base)],
        }
    )  # fmt: skip
    pairs = build_pairs(rewards, {"u": (None, "prompt")}, PairOptions(min_z=2.0))
    assert sorted(zip(pairs.chosen_profile_id, pairs.rejected_profile_id, strict=True)) == [
        ("s", "b")
    ]
    everything = build_pairs(rewards, {"u": (None, "prompt")}, PairOptions())
    assert len(everything) == 3


def test_policy_scope_keeps_exactly_the_policys_own_pairs() -> None:
    rewards = pd.DataFrame(
        [
            {"dataset": "d", "user_id": "u", "split": "train", "explorer": explorer,
             "style": style, "profile_id": f"p{k}", "profile": f"text {k}",
             "binary_reward": 0.0, "graded_reward": 0.0,
             "target_rewards": [reward] * 3, "reward": reward}
            for k, (explorer, style, reward) in enumerate(
                [("base", None, 0.3), ("base", None, 0.1), ("writers", "eras", 0.9),
                 ("writers", "genre_affinity", 0.0)]
            )
        ]
    )  # fmt: skip
    every = build_pairs(rewards, _prompts(rewards), PairOptions())
    own = build_pairs(rewards, _prompts(rewards), PairOptions(scope="policy", policy="base"))
    assert len(every) == 6
    assert list(zip(own.chosen_profile_id, own.rejected_profile_id, strict=True)) == [("p0", "p1")]


def test_pair_checks_pass_built_pairs_and_fail_a_sign_error() -> None:
    """The pair checks pass what build_pairs makes, with the negative control's swapped training
    pairs too; pairs whose sides were swapped everywhere (a sign error) fail chosen_scored_higher."""
    from lettingo_dagster.alignment.pairs import swap_sides
    from lettingo_dagster.alignment.rules import pair_frames, pair_rules
    from lettingo_dagster.quality import validate_rules

    rows = [
        {"dataset": "d", "user_id": f"u{u}", "split": split, "explorer": "base", "style": None,
         "profile_id": f"u{u}-{k}", "profile": f"profile {k} of u{u}", "binary_reward": 0.0,
         "graded_reward": 0.0, "target_rewards": [reward] * 3, "reward": reward}
        for u, split in enumerate(["train", "train", "calibration", "calibration"])
        for k, reward in enumerate([0.0, 0.5, 1.0])
    ]  # fmt: skip
    rewards = pd.DataFrame(rows)
    pairs = build_pairs(rewards, _prompts(rewards), PairOptions())
    assert set(pairs["split"]) == {"train", "calibration"}

    def outcomes(frame: pd.DataFrame) -> dict[str, bool]:
        return {o.rule.name: o.passed for o in validate_rules(pair_frames(frame), pair_rules())}

    assert all(outcomes(pairs).values())
    swapped_training = build_pairs(rewards, _prompts(rewards), PairOptions(swap=True))
    assert all(outcomes(swapped_training).values())  # the negative control is not an error
    sign_error = outcomes(swap_sides(pairs))
    assert not sign_error["chosen_scored_higher"]
    assert all(passed for name, passed in sign_error.items() if name != "chosen_scored_higher")
