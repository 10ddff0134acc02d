"""The learning loop on a tiny planted-taste world, at the ci preset's sizes: the controls that
would catch a sign error, swapped pairs, or a recommender that ignores the profile.

- Positive control: trained on the true pairs, DPO prefers the chosen profile of held-out
  (calibration) users' pairs clearly more often than not.
- Negative control: trained on swapped pairs (`pairs.swap_chosen_rejected`, training pairs
  only), the same held-out accuracy falls clearly below 0.5.
- With the recommender's profile input blanked, one user's candidates all get the same reward.
- The reward's sign: a profile stating the user's planted liked and disliked genres scores above
  one stating them the wrong way round.

Thresholds chosen from world seeds 7, 8 and 9 (LETTINGO_CONTROL_SEED): held-out preference
accuracy 0.734 / 0.688 / 0.797 with the true pairs against 0.266 / 0.250 / 0.203 swapped;
planted minus opposite reward +0.33 / +0.52 / +0.30, planted ahead for 95% / 90% / 82% of 40
training users. Measured again on the current code: 0.766 / 0.688 / 0.797 against 0.281 /
0.297 / 0.203; +0.44 / +0.37 / +0.34, ahead for 92% / 90% / 85%. Checked by hand: swapping the training pairs inside `build_pairs` fails the
first test (accuracy 0.27), and swapping every pair fails the blocking pair check
`chosen_scored_higher`, so the run stops before DPO.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from lettingo_dagster.data.planted import PlantedParams, write_planted_world

pytestmark = pytest.mark.integration

DATASET = "planted-taste"
WORLD_SEED = int(os.environ.get("LETTINGO_CONTROL_SEED", "7"))
# The thresholds below were measured on this tiny world with a popularity exponent of 0.5, the
# full world's default until it became 0.3; at 0.3 the tiny world gave 0.688 / 0.641 / 0.578 with
# the true pairs (seeds 8 and 9 under the threshold) and 0.312 / 0.344 / 0.422 swapped, so it
# keeps 0.5.
TINY = PlantedParams(
    seed=WORLD_SEED, n_users=120, n_items=300, history_min=45, history_max=60,
    popularity_exponent=0.5,
)  # fmt: skip


def _preset(swap: bool) -> dict:
    ci = yaml.safe_load((Path(__file__).parents[2] / "assets/presets/ci.yaml").read_text())
    ci["data"] = {"datasets": [DATASET]}
    ci["task"].update(recent_window=10, long_window=20, targets_per_user=5)
    ci["task"]["split"]["max_users_per_split"] = 40
    ci["pairs"] = {"min_pairs": 5, "min_z": 1.0, "swap_chosen_rejected": swap}
    ci["dpo"].update(epochs=3, max_train_pairs=128, heldout_pairs=64)
    return ci


@pytest.fixture(scope="module")
def control_world(tmp_path_factory: pytest.TempPathFactory):
    import dagster as dg

    from lettingo_dagster.definitions import all_assets, defs
    from lettingo_dagster.resources import SettingsResource, Warehouse
    from lettingo_dagster.tracking import MlflowTracking

    root = tmp_path_factory.mktemp("control")
    write_planted_world(Path(os.environ["LETTINGO_DATA"]), TINY, log=lambda _line: None)
    presets = root / "presets"
    presets.mkdir()
    for name, swap in (("control", False), ("control-swapped", True)):
        (presets / f"{name}.yaml").write_text(yaml.safe_dump(_preset(swap)))
    instance = dg.DagsterInstance.ephemeral()
    base = {
        **defs.resources,
        "warehouse": Warehouse(database=str(root / "warehouse.duckdb")),
        "mlflow": MlflowTracking(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts")
        ),
    }

    def run(preset: str, selection):
        resources = {**base, "settings": SettingsResource(preset=preset, presets_dir=str(presets))}
        result = dg.materialize(all_assets, selection=selection, partition_key=DATASET,
                                instance=instance, resources=resources)  # fmt: skip
        assert result.success
        return result

    positive = run("control", dg.AssetSelection.assets("dpo_checkpoint").upstream())
    negative = run("control-swapped", ["preference_pairs", "dpo_checkpoint"])
    return positive, negative, root


def _metadata(result, key: str) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_dpo_learns_the_true_preferences_and_unlearns_swapped_ones(control_world) -> None:
    positive, negative, _root = control_world
    true_pairs = _metadata(positive, "dpo_checkpoint")
    swapped = _metadata(negative, "dpo_checkpoint")
    print(f"world seed {WORLD_SEED}: held-out preference accuracy "
          f"{true_pairs['heldout_preference_accuracy']:.3f} (true pairs), "
          f"{swapped['heldout_preference_accuracy']:.3f} (swapped)")  # fmt: skip
    assert true_pairs["heldout_pairs"] >= 20 and swapped["heldout_pairs"] >= 20
    assert true_pairs["heldout_preference_accuracy"] > 0.65, true_pairs
    assert swapped["heldout_preference_accuracy"] < 0.35, swapped


def test_blanked_profiles_give_every_candidate_the_same_reward(control_world) -> None:
    import duckdb

    from lettingo_dagster.evaluation.examples import load_target_examples
    from lettingo_dagster.evaluation.recommender import Recommender, load_recommender
    from lettingo_dagster.evaluation.rewards import profile_rewards
    from lettingo_dagster.models.cache import ModelCallCache
    from lettingo_dagster.settings import load_preset

    positive, _negative, root = control_world
    preset = load_preset("control", root / "presets")
    real = load_recommender(positive.output_for_node("recommender"), preset)

    class BlankedProfiles(Recommender):
        """The real recommender with its profile input blanked."""

        name = "blanked"
        fingerprint = "blanked-" + real.fingerprint

        def predict_sentiment(self, examples, profiles):
            return real.predict_sentiment(examples, [None] * len(examples))

        def score_candidates(self, examples, profiles):
            return real.score_candidates(examples, [None] * len(examples))

    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        profiles = con.execute("SELECT * FROM sampled_profiles WHERE split = 'train'").df()
        examples = load_target_examples(con, DATASET, preset.task, ("train",))
    grouped: dict[str, list] = {}
    for example in examples:
        grouped.setdefault(example.user_id, []).append(example)
    cache = ModelCallCache(root / "blanked-cache.duckdb")
    blanked, _ = profile_rewards(BlankedProfiles(), "ranking", profiles, grouped, cache)
    spread = blanked.groupby("user_id")["reward"].agg(lambda r: float(np.ptp(r)))
    assert (spread == 0).all() and (blanked["reward"] == 0).all()
    # The real recommender does tell one user's candidates apart.
    scored, _ = profile_rewards(real, "ranking", profiles, grouped, cache)
    assert (scored.groupby("user_id")["reward"].agg(lambda r: float(np.ptp(r))) > 0).mean() > 0.5


def test_reward_ranks_the_planted_taste_above_its_opposite(control_world) -> None:
    """The reward's sign: stating the user's planted liked and disliked genres must score above
    stating them the wrong way round, on training users (the recommender never saw them)."""
    import duckdb
    import pandas as pd

    from lettingo_dagster.data.planted import load_planted_truth
    from lettingo_dagster.evaluation.examples import load_target_examples
    from lettingo_dagster.evaluation.recommender import load_recommender
    from lettingo_dagster.evaluation.rewards import profile_rewards
    from lettingo_dagster.models.cache import ModelCallCache
    from lettingo_dagster.settings import load_preset

    positive, _negative, root = control_world
    preset = load_preset("control", root / "presets")
    recommender = load_recommender(positive.output_for_node("recommender"), preset)
    truth = load_planted_truth(Path(os.environ["LETTINGO_DATA"]) / DATASET)
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        examples = load_target_examples(con, DATASET, preset.task, ("train",))
    grouped: dict[str, list] = {}
    for example in examples:
        grouped.setdefault(example.user_id, []).append(example)

    def stated(liked: tuple[str, ...], disliked: tuple[str, ...]) -> str:
        return f"Enjoys {' and '.join(liked)}. Tends to dislike {' and '.join(disliked)}."

    rows = [
        {"dataset": DATASET, "user_id": user, "split": "train", "explorer": form, "style": None,
         "sample_index": 0, "profile_id": f"{form}-{user}", "profile": text}
        for user in grouped
        for form, text in (
            ("planted", stated(truth[user].liked_genres, truth[user].disliked_genres)),
            ("opposite", stated(truth[user].disliked_genres, truth[user].liked_genres)),
        )
    ]  # fmt: skip
    cache = ModelCallCache(root / "sign-cache.duckdb")
    scored, _ = profile_rewards(recommender, "ranking", pd.DataFrame(rows), grouped, cache)
    by_user = scored.pivot_table(index="user_id", columns="explorer", values="reward")
    gap = by_user["planted"] - by_user["opposite"]
    print(f"world seed {WORLD_SEED}: planted minus opposite reward {gap.mean():+.3f}, "
          f"planted ahead for {(gap > 0).mean():.0%} of {len(gap)} users")  # fmt: skip
    assert gap.mean() > 0.1 and (gap > 0).mean() > 0.7
