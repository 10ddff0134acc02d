"""The checks of the preference pairs, as Great Expectations rules (see `quality`)."""

from __future__ import annotations

import pandas as pd

from lettingo_dagster.quality import CheckRule, expect


def pair_rules(min_pairs: int = 1) -> list[CheckRule]:
    """The pair checks; descriptions do not depend on the preset (specs are made at import)."""
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
            name="chosen_scored_higher",
            description=(
                "In every calibration pair the chosen profile's reward exceeds the rejected "
                "one's: a sign error in the rewards-to-pairs step fails here (calibration pairs "
                "are never swapped, not even by the negative control)."
            ),
            frame="calibration_pairs",
            expectations=(
                expect(
                    "ExpectColumnPairValuesAToBeGreaterThanB",
                    column_A="chosen_reward",
                    column_B="rejected_reward",
                    or_equal=False,
                ),
            ),
        ),
        CheckRule(
            name="enough_pairs",
            description="At least the preset's pairs.min_pairs training pairs.",
            frame="train_pairs",
            expectations=(expect("ExpectTableRowCountToBeBetween", min_value=min_pairs),),
        ),
    ]


def pair_frames(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    frame = pairs[
        [
            "user_id",
            "split",
            "prompt_user",
            "chosen",
            "rejected",
            "chosen_reward",
            "rejected_reward",
        ]
    ].copy()
    frame["chosen_stripped"] = frame["chosen"].str.strip()
    frame["rejected_stripped"] = frame["rejected"].str.strip()
    frame["same_text"] = frame["chosen_stripped"] == frame["rejected_stripped"]
    return {
        "pairs": frame,
        "train_pairs": frame[frame["split"] == "train"].reset_index(drop=True),
        "calibration_pairs": frame[frame["split"] == "calibration"].reset_index(drop=True),
    }
