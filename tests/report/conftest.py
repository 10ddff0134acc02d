"""Fixtures for the report tests, built on `report_world` (hand-built examples, recommenders
that read the profile text, generated profiles)."""

from __future__ import annotations

import pytest
from report_world import (
    LongWindowOracle,
    WordOverlapRecommender,
    build_examples,
    build_generated,
)

from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.report import evaluation


@pytest.fixture(scope="session")
def examples() -> list[TargetExample]:
    return build_examples()


@pytest.fixture(scope="session")
def generated(examples) -> dict[str, dict[str, list[str]]]:
    return build_generated(examples)


@pytest.fixture(scope="session")
def recommender() -> WordOverlapRecommender:
    return WordOverlapRecommender()


@pytest.fixture(scope="session")
def oracle_recommender() -> LongWindowOracle:
    return LongWindowOracle()


@pytest.fixture(scope="session")
def baselines(examples) -> dict:
    """The sanity baselines through item knowledge fit on the world's own windows."""
    import pandas as pd

    from lettingo_dagster.evaluation.baselines import ItemKnnRecommender, PopularityRecommender
    from lettingo_dagster.evaluation.knowledge import fit_item_knowledge
    from lettingo_dagster.settings import KnowledgeSettings, TaskSettings

    rows, catalog = [], {}
    for example in examples:
        for item in (*example.long_window, *example.recent):
            rows.append((example.user_id, item.item_id, item.rating))
        for item in (*example.long_window, *example.recent, *example.candidates):
            catalog[item.item_id] = (item.title, "|".join(item.genres))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    items = pd.DataFrame(
        [(i, t, g) for i, (t, g) in catalog.items()], columns=["item_id", "title", "genres"]
    )
    knowledge = fit_item_knowledge(interactions, items, KnowledgeSettings(factors=4))
    return {
        evaluation.POPULARITY: PopularityRecommender(knowledge, TaskSettings()),
        evaluation.ITEM_KNN: ItemKnnRecommender(knowledge, TaskSettings()),
    }


@pytest.fixture(scope="session")
def sentiment_outputs(recommender, oracle_recommender, examples, generated, baselines):
    return evaluation.method_outputs(
        recommender, oracle_recommender, "sentiment", examples, generated, baselines
    )


@pytest.fixture(scope="session")
def ranking_outputs(recommender, oracle_recommender, examples, generated, baselines):
    return evaluation.method_outputs(
        recommender, oracle_recommender, "ranking", examples, generated, baselines
    )


@pytest.fixture(scope="session")
def sentiment_table(sentiment_outputs):
    return evaluation.results_table(sentiment_outputs, "sentiment", n_boot=100, seed=0)


@pytest.fixture(scope="session")
def ranking_table(ranking_outputs):
    return evaluation.results_table(ranking_outputs, "ranking", n_boot=100, seed=0)
