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
def sentiment_outputs(recommender, oracle_recommender, examples, generated):
    return evaluation.method_outputs(
        recommender, oracle_recommender, "sentiment", examples, generated
    )


@pytest.fixture(scope="session")
def ranking_outputs(recommender, oracle_recommender, examples, generated):
    return evaluation.method_outputs(
        recommender, oracle_recommender, "ranking", examples, generated
    )


@pytest.fixture(scope="session")
def sentiment_table(sentiment_outputs):
    return evaluation.results_table(sentiment_outputs, "sentiment", n_boot=100, seed=0)


@pytest.fixture(scope="session")
def ranking_table(ranking_outputs):
    return evaluation.results_table(ranking_outputs, "ranking", n_boot=100, seed=0)
