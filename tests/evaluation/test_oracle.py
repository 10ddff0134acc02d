"""The oracle study end to end on constructed calibration users whose long window decides the
label (each user loves one genre and hates another; the recent window is neutral filler)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lettingo_dagster.evaluation import oracle
from lettingo_dagster.evaluation.examples import ItemText, TargetExample, long_window_text
from lettingo_dagster.evaluation.offline import MiniLMEncoder, OfflineConfig, OfflineRecommender
from lettingo_dagster.evaluation.protocol import task_metrics
from lettingo_dagster.exploration.history import RatedItem

GENRES = ("Horror", "Comedy", "Romance", "Western")
FILLER = ("Documentary", "Drama")
RATING = {"like": 5.0, "dislike": 1.0, "neutral": 3.0}


def _rated(item: ItemText, label: str) -> RatedItem:
    return RatedItem(item.item_id, item.title, item.year, item.genres, RATING[label], label)


def build_study(n_users: int = 30, targets: int = 3, seed: int = 0) -> list[TargetExample]:
    rng = np.random.default_rng(seed)
    catalog = {
        g: [ItemText(f"{g}{i}", f"Picture {i}{g[0]}", 1960 + i, (g,)) for i in range(20)]
        for g in GENRES + FILLER
    }

    def pick(genre: str) -> ItemText:
        return catalog[genre][int(rng.integers(0, 20))]

    examples = []
    for u in range(n_users):
        love, hate = (GENRES[i] for i in rng.choice(len(GENRES), size=2, replace=False))
        others = [g for g in GENRES if g not in (love, hate)]
        window = [_rated(pick(love), "like") for _ in range(5)]
        window += [_rated(pick(hate), "dislike") for _ in range(5)]
        window += [_rated(pick(str(rng.choice(others))), "neutral") for _ in range(5)]
        long_window = tuple(window[i] for i in rng.permutation(len(window)))
        recent = tuple(_rated(pick(str(rng.choice(FILLER))), "neutral") for _ in range(4))
        for t in range(targets):
            label = str(rng.choice(["like", "dislike", "neutral"]))
            genre = {"like": love, "dislike": hate}.get(label) or str(rng.choice(others))
            examples.append(
                TargetExample(
                    user_id=f"u{u}",
                    split="calibration",
                    target_index=t,
                    recent=recent,
                    target=pick(genre),
                    target_rating=RATING[label],
                    label=label,
                    negatives=tuple(pick(g) for g in rng.choice([*others, hate], size=5)),
                    long_window=long_window,
                )
            )
    return examples


@pytest.fixture(scope="module")
def table():
    encoder = MiniLMEncoder(torch_threads=2)
    config = OfflineConfig(item_dims=4, text_dims=4)

    def factory(is_oracle: bool) -> OfflineRecommender:
        return OfflineRecommender(replace(config, oracle_long_window=is_oracle), encoder)

    examples = build_study()
    profiles = oracle.writer_profiles(examples, ("genre_affinity", "palr_keywords"))
    return oracle.oracle_table(factory, examples, profiles, n_folds=2, n_boot=200, seed=0)


def test_table_has_every_condition_and_metric(table) -> None:
    assert list(table.columns) == oracle.TABLE_COLUMNS
    conditions = {"recent_only", "raw_long_window", "genre_affinity", "palr_keywords",
                  "oracle_ceiling"}  # fmt: skip
    for task in ("sentiment", "ranking"):
        metric_names = task_metrics(task)
        rows = table[table.task == task]
        assert conditions | {oracle.CONTROL} == set(rows.condition)
        assert set(rows.metric) == set(metric_names)
    assert (table.users == 30).all() and (table.targets == 90).all()
    assert (table.low <= table.value + 1e-9).all() and (table.value <= table.high + 1e-9).all()
    baseline = table[table.condition == "recent_only"]
    assert (baseline.diff_vs_recent_only == 0).all() and (baseline.diff_low == 0).all()


def test_ceiling_is_positive_when_the_long_window_decides(table) -> None:
    def diff(task: str, condition: str, metric: str) -> tuple[float, float]:
        row = table[
            (table.task == task) & (table.condition == condition) & (table.metric == metric)
        ]
        return float(row.diff_vs_recent_only.iloc[0]), float(row.diff_low.iloc[0])

    estimate, low = diff("sentiment", "oracle_ceiling", "accuracy")
    assert estimate > 0.15 and low > 0
    assert diff("ranking", "oracle_ceiling", "ndcg@10")[1] > 0
    # The writer profile that states the genre preference carries it through the text.
    assert diff("sentiment", "genre_affinity", "accuracy")[1] > 0


def test_only_calibration_users_and_raw_window_text() -> None:
    examples = [replace(e, split="test") for e in build_study(n_users=2, targets=1)]
    with pytest.raises(ValueError, match="calibration"):
        oracle.oracle_table(lambda _oracle: None, examples)  # type: ignore[arg-type, return-value]
    text = long_window_text(examples[0].long_window)
    assert text.count(";") == len(examples[0].long_window) - 1
    assert text.startswith(("like: ", "dislike: ", "neutral: "))
