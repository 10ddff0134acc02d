"""Text quality of candidate profiles: emptiness, length, degenerate repetition, diversity."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from lettingo_dagster.quality import CheckRule, expect

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of a set of texts (higher: more diverse)."""
    grams = [gram for text in texts for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def profile_frames(profiles: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-profile and per-user facts the checks run on."""
    per_profile = profiles[["user_id", "explorer", "sample_index", "profile"]].copy()
    per_profile["words"] = [len(words(text)) for text in per_profile["profile"]]
    per_profile["chars"] = per_profile["profile"].str.len()
    per_profile["repetition"] = [repetition_rate(text) for text in per_profile["profile"]]
    per_profile["stripped"] = per_profile["profile"].str.strip()
    per_user = (
        profiles.groupby("user_id")["profile"]
        .agg(lambda texts: distinct_n(list(texts), 2))
        .rename("distinct_2")
        .reset_index()
    )
    return {"profiles": per_profile, "users": per_user}


def profile_rules(
    min_words: int = 5,
    max_words: int = 400,
    max_repetition: float = 0.5,
    min_distinct_2: float = 0.3,
) -> list[CheckRule]:
    return [
        CheckRule(
            name="no_empty_profiles",
            description="At most 5% of generated samples are empty (empty samples are dropped, "
            "never stored; more of them means the generator is broken).",
            frame="profiles",
            expectations=(
                expect("ExpectColumnValuesToNotBeNull", column="profile"),
                expect(
                    "ExpectColumnValueLengthsToBeBetween",
                    column="stripped",
                    min_value=1,
                    mostly=0.95,
                ),
            ),
        ),
        CheckRule(
            name="no_degenerate_repetition",
            description=f"At least 95% of profiles repeat under {max_repetition:.0%} of their word trigrams.",
            frame="profiles",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="repetition",
                    max_value=max_repetition,
                    mostly=0.95,
                ),
            ),
            blocking=False,
        ),
        CheckRule(
            name="lengths_within_bounds",
            description=f"At least 95% of profiles have {min_words} to {max_words} words.",
            frame="profiles",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="words",
                    min_value=min_words,
                    max_value=max_words,
                    mostly=0.95,
                ),
            ),
            blocking=False,
        ),
        CheckRule(
            name="within_user_diversity",
            description=f"A user's candidates are diverse: distinct-2 above {min_distinct_2} for 90% of users.",
            frame="users",
            expectations=(
                expect(
                    "ExpectColumnValuesToBeBetween",
                    column="distinct_2",
                    min_value=min_distinct_2,
                    mostly=0.9,
                ),
            ),
            blocking=False,
        ),
    ]
