"""Dagster asset of stage 3's input: the preference pairs DPO trains on."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from lettingo_dagster.alignment.pairs import PAIR_COLUMNS, PairOptions, build_pairs, pair_summary
from lettingo_dagster.checks import check_results, check_specs
from lettingo_dagster.data.assets import OWNERS, dataset_partitions
from lettingo_dagster.exploration.history import load_long_windows
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.quality import CheckRule, expect, validate_rules
from lettingo_dagster.resources import SettingsResource, Warehouse
from lettingo_dagster.settings import active_preset
from lettingo_dagster.storage import markdown_preview, replace_partition_from_frame


def pair_rules(min_pairs: int) -> list[CheckRule]:
    return [
        CheckRule(
            name="texts_present_and_distinct",
            description="Prompt, chosen and rejected texts are non-empty and chosen differs from rejected.",
            frame="pairs",
            expectations=(
                expect("ExpectColumnValueLengthsToBeBetween", column="prompt_user", min_value=1),
                expect(
                    "ExpectColumnValueLengthsToBeBetween", column="chosen_stripped", min_value=1
                ),
                expect(
                    "ExpectColumnValueLengthsToBeBetween", column="rejected_stripped", min_value=1
                ),
                expect("ExpectColumnValuesToBeInSet", column="same_text", value_set=[False]),
            ),
        ),
        CheckRule(
            name="no_test_users",
            description="Pairs come from train and calibration users only; test users stay unseen.",
            frame="pairs",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeInSet",
                    column="split",
                    value_set=["train", "calibration"],
                ),
            ),
        ),
        CheckRule(
            name="enough_pairs",
            description=f"At least {min_pairs} training pairs (the preset's pairs.min_pairs).",
            frame="train_pairs",
            expectations=(expect("ExpectTableRowCountToBeBetween", min_value=min_pairs),),
        ),
    ]


def pair_frames(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    frame = pairs[["user_id", "split", "prompt_user", "chosen", "rejected"]].copy()
    frame["chosen_stripped"] = frame["chosen"].str.strip()
    frame["rejected_stripped"] = frame["rejected"].str.strip()
    frame["same_text"] = frame["chosen_stripped"] == frame["rejected_stripped"]
    return {"pairs": frame, "train_pairs": frame[frame["split"] == "train"].reset_index(drop=True)}


@dg.asset(
    key="preference_pairs",
    partitions_def=dataset_partitions,
    group_name="alignment",
    kinds={"duckdb"},
    owners=OWNERS,
    pool="duckdb",
    code_version="1",
    deps=["reward_scores", "sampled_profiles"],
    description=(
        "Stage 3 input: every (better, worse) pair of a user's candidate profiles whose binary "
        "rewards differ (with T = 1 the paper's right-versus-wrong rule), with the DPO prompt "
        "(the generator's exploration prompt over the long window), both texts, rewards and "
        "sources. Train users' pairs train DPO; calibration users' pairs are its held-out slice."
    ),
    check_specs=check_specs("preference_pairs", pair_rules(active_preset().pairs.min_pairs)),
)
def preference_pairs(
    context: dg.AssetExecutionContext, settings: SettingsResource, warehouse: Warehouse
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    preset = settings.load()
    dataset = context.partition_key
    config = preset.pairs
    with warehouse.get_connection() as con:
        rewards = con.execute(
            """
            SELECT r.dataset, r.user_id, r.split, r.explorer, r.style, r.profile_id, p.profile,
                   r.binary_reward, r.graded_reward
            FROM reward_scores r JOIN sampled_profiles p USING (dataset, profile_id)
            WHERE r.dataset = ? ORDER BY r.user_id, r.explorer, r.style, r.sample_index
            """,
            [dataset],
        ).df()
        histories = load_long_windows(con, dataset, preset.task, splits=("train", "calibration"))
    template = load_template(preset.base_generator.prompt_template)
    prompts = {}
    for history in histories:
        prompt = template.render(history)
        prompts[history.user_id] = (prompt.system, prompt.user)
    options = PairOptions(
        graded_margin=config.graded_margin, max_pairs_per_user=config.max_pairs_per_user,
        scope=config.scope, balance_sources=config.balance_sources, seed=config.seed,
    )  # fmt: skip
    pairs = build_pairs(rewards, prompts, options)
    with warehouse.get_connection() as con:
        count = replace_partition_from_frame(con, "preference_pairs", dataset, pairs, PAIR_COLUMNS)
    users = rewards["user_id"].nunique()
    summary = {split: pair_summary(pairs[pairs.split == split], rewards[rewards.split == split]["user_id"].nunique())
               for split in ("train", "calibration")}  # fmt: skip
    sources = (
        pd.concat([pairs["chosen_source"].value_counts().rename("chosen"),
                   pairs["rejected_source"].value_counts().rename("rejected")], axis=1)
        .fillna(0).astype(int).rename_axis("source").reset_index()
    )  # fmt: skip
    context.log.info(f"{count} pairs from {users} users: {summary}")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "train_pairs": summary["train"]["pairs"],
            "calibration_pairs": summary["calibration"]["pairs"],
            "share_of_train_users_with_pairs": summary["train"]["share_of_users_with_pairs"],
            "pairs_per_train_user_with_pairs": summary["train"]["pairs_per_user_with_pairs"],
            "chosen_and_rejected_by_source": dg.MetadataValue.md(
                markdown_preview(sources, rows=50)
            ),
            "preview": dg.MetadataValue.md(
                markdown_preview(
                    pairs[["user_id", "chosen", "rejected", "chosen_reward", "rejected_reward"]],
                    width=120,
                )
            ),
        }
    )
    yield from check_results(validate_rules(pair_frames(pairs), pair_rules(config.min_pairs)))


alignment_assets = [preference_pairs]
