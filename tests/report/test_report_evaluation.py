"""The evaluation protocol's plain logic: method outputs, results table, paired differences,
profile statistics and confusion matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from report_world import N_NEGATIVES, N_USERS, TARGETS, WordOverlapRecommender

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.exploration.writers import WRITERS
from lettingo_dagster.report import evaluation
from lettingo_dagster.report.evaluation import MethodOutputs
from lettingo_dagster.settings import DEFAULT_WRITER_STYLES, load_preset

N_TARGETS = N_USERS * TARGETS
SAMPLES = 2


class CountingRecommender(WordOverlapRecommender):
    def __init__(self) -> None:
        self.calls = 0

    def predict_sentiment(self, examples, profiles):
        self.calls += 1
        return super().predict_sentiment(examples, profiles)


def test_outputs_have_every_method_in_order_with_row_users(sentiment_outputs, ranking_outputs):
    assert list(sentiment_outputs) == list(evaluation.METHODS)
    assert list(ranking_outputs) == list(evaluation.METHODS)
    for method, output in sentiment_outputs.items():
        samples = SAMPLES if method in evaluation.GENERATOR_METHODS else 1
        assert output.rows.shape == (N_TARGETS * samples, 2)
        assert output.rows.dtype.kind == "i"
        assert output.users.shape == (N_TARGETS * samples,)
        counts = {
            u: int(n) for u, n in zip(*np.unique(output.users, return_counts=True), strict=True)
        }
        assert counts == {f"u{u}": TARGETS * samples for u in range(N_USERS)}
        assert set(np.unique(output.rows)) <= {0, 1, 2}
    truth = sentiment_outputs["recent_only"].rows[:, 0]
    assert [LABELS[i] for i in truth[:3]] == ["like", "dislike", "dislike"]
    for method, output in ranking_outputs.items():
        samples = SAMPLES if method in evaluation.GENERATOR_METHODS else 1
        assert output.rows.shape == (N_TARGETS * samples, 1)
        assert output.rows.min() >= 1 and output.rows.max() <= N_NEGATIVES + 1
    # The fixtures' recommenders read the text: the oracle and the DPO profiles beat nothing.
    accuracy = {m: metrics.accuracy_statistic(o.rows) for m, o in sentiment_outputs.items()}
    assert accuracy["oracle_ceiling"] == 1.0
    assert accuracy["dpo_generator"] > accuracy["base_generator"] > accuracy["recent_only"]
    by_user = sentiment_outputs["dpo_generator"].by_user()
    assert list(by_user) == [f"u{u}" for u in range(N_USERS)]
    assert all(rows.shape == (TARGETS * SAMPLES, 2) for rows in by_user.values())


def test_one_batched_call_per_method_and_optional_methods(examples, generated):
    counting = CountingRecommender()
    only_base = {"base_generator": generated["base_generator"]}
    outputs = evaluation.method_outputs(counting, None, "sentiment", examples, only_base)
    assert list(outputs) == [
        "recent_only",
        "raw_long_window",
        "rlmrec_like",
        "palr_like",
        "base_generator",
    ]
    assert counting.calls == len(outputs)


def test_missing_or_empty_generated_profiles_name_method_and_user(recommender, examples, generated):
    missing = {m: dict(by_user) for m, by_user in generated.items()}
    del missing["dpo_generator"]["u3"]
    with pytest.raises(ValueError, match=r"dpo_generator.*u3"):
        evaluation.method_outputs(recommender, None, "sentiment", examples, missing)
    empty = {m: dict(by_user) for m, by_user in generated.items()}
    empty["base_generator_null"]["u0"] = []
    with pytest.raises(ValueError, match=r"base_generator_null.*u0"):
        evaluation.method_outputs(recommender, None, "ranking", examples, empty)
    with pytest.raises(ValueError, match="unknown task"):
        evaluation.method_outputs(recommender, None, "rating", examples, generated)
    with pytest.raises(ValueError, match="not generator methods"):
        evaluation.method_outputs(
            recommender, None, "sentiment", examples, {"recent_only": generated["dpo_generator"]}
        )


@pytest.mark.parametrize("task", ["sentiment", "ranking"])
def test_results_table_intervals_and_baseline(task, sentiment_table, ranking_table):
    table = sentiment_table if task == "sentiment" else ranking_table
    assert list(table.columns) == evaluation.TABLE_COLUMNS
    names = list(evaluation.task_metrics(task))
    assert list(dict.fromkeys(table.metric)) == names
    assert list(dict.fromkeys(table.method)) == list(evaluation.METHODS)
    assert len(table) == len(names) * len(evaluation.METHODS)
    assert (table.low <= table.value + 1e-12).all() and (table.value <= table.high + 1e-12).all()
    assert (table.diff_low <= table.diff_vs_recent_only + 1e-12).all()
    assert (table.diff_vs_recent_only <= table.diff_high + 1e-12).all()
    baseline = table[table.method == "recent_only"]
    assert (baseline[["diff_vs_recent_only", "diff_low", "diff_high"]] == 0).all().all()
    assert (table.users == N_USERS).all()
    generator_rows = table[table.method.isin(evaluation.GENERATOR_METHODS)].rows
    assert (generator_rows == N_TARGETS * SAMPLES).all()
    assert (table[~table.method.isin(evaluation.GENERATOR_METHODS)].rows == N_TARGETS).all()


def test_weighted_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
        y_true[:5] = 0  # a class may be missing from one side
        assert evaluation.fast_weighted_f1(y_true, y_pred) == pytest.approx(
            metrics.weighted_f1(y_true, y_pred)
        )
    assert evaluation.fast_weighted_f1(np.array([1, 1]), np.array([0, 0])) == 0.0


def test_mlflow_names_have_no_at_sign(ranking_table, ranking_outputs):
    assert evaluation.mlflow_metric_name("hit_rate@5") == "hit_rate_at_5"
    assert evaluation.mlflow_metric_name("ndcg@10") == "ndcg_at_10"
    assert evaluation.mlflow_metric_name("a:b") == "a_b"
    diff = evaluation.paired_difference(
        ranking_outputs, "dpo_generator", "base_generator", "ranking", "hit_rate@5", n_boot=50
    )
    flat = evaluation.mlflow_metrics(ranking_table, [diff])
    assert flat and not any("@" in key for key in flat)
    assert "dpo_generator/hit_rate_at_5_low" in flat
    assert "dpo_generator_minus_base_generator/hit_rate_at_5" in flat
    assert "recent_only/ndcg_at_10_diff" not in flat


def test_paired_difference_dpo_null_and_ceiling(sentiment_outputs):
    dpo = evaluation.paired_difference(
        sentiment_outputs, "dpo_generator", "base_generator", "sentiment", "accuracy", 200, 0
    )
    assert set(dpo) == {
        "method_a",
        "method_b",
        "metric",
        "estimate",
        "low",
        "high",
        "users",
        "excludes_zero",
    }
    assert dpo["estimate"] > 0 and dpo["low"] <= dpo["estimate"] <= dpo["high"]
    assert dpo["users"] == N_USERS
    same = evaluation.paired_difference(
        sentiment_outputs, "base_generator", "base_generator", "sentiment", "macro_f1", 50, 0
    )
    assert (same["estimate"], same["low"], same["high"], same["excludes_zero"]) == (
        0.0,
        0.0,
        0.0,
        False,
    )
    every = evaluation.paired_differences(
        sentiment_outputs, "oracle_ceiling", "recent_only", "sentiment", n_boot=50
    )
    assert [d["metric"] for d in every] == ["accuracy", "macro_f1", "weighted_f1"]
    assert every[0]["estimate"] > 0


def test_paired_difference_rejects_mismatched_users_and_unknown_names(sentiment_outputs):
    base = sentiment_outputs["base_generator"]
    keep = base.users != "u2"
    outputs = {
        "base_generator": base,
        "dpo_generator": MethodOutputs(rows=base.rows[keep], users=base.users[keep]),
    }
    with pytest.raises(ValueError, match="same users"):
        evaluation.paired_difference(
            outputs, "dpo_generator", "base_generator", "sentiment", "accuracy", 10, 0
        )
    with pytest.raises(ValueError, match="same users"):
        evaluation.results_table(
            {"recent_only": sentiment_outputs["recent_only"], **outputs}, "sentiment", n_boot=10
        )
    with pytest.raises(ValueError, match="unknown sentiment metric"):
        evaluation.paired_difference(
            sentiment_outputs, "dpo_generator", "base_generator", "sentiment", "ndcg@10", 10, 0
        )
    with pytest.raises(ValueError, match="no outputs"):
        evaluation.paired_difference(
            sentiment_outputs, "sft_generator", "base_generator", "sentiment", "accuracy", 10, 0
        )
    with pytest.raises(ValueError, match="user ids"):
        MethodOutputs(rows=np.zeros((3, 2), dtype=int), users=np.array(["a", "b"]))


def test_profile_statistics_known_values(examples):
    writers = evaluation.writer_profiles_by_user(examples)
    assert set(writers) == {f"u{u}" for u in range(N_USERS)}
    assert all(set(by_style) == set(DEFAULT_WRITER_STYLES) for by_style in writers.values())
    generated = {
        "base_generator": {"u0": ["a b a", "b c"], "u1": ["x y z"]},
        # Copies of writer profiles: each must be assigned to its own style.
        "dpo_generator": {
            "u0": [writers["u0"]["palr_keywords"], writers["u0"]["rlmrec_summary"]],
            "u1": [writers["u1"]["palr_keywords"], writers["u1"]["palr_keywords"]],
        },
        "base_generator_null": {"u0": [writers["u0"]["eras"]], "u9": ["Rating tendency: harsh"]},
    }
    stats = evaluation.profile_statistics(generated, writers).set_index("method")
    assert list(stats.index) == list(generated)
    base = stats.loc["base_generator"]
    # unigrams a b a b c x y z: 6 distinct of 8; bigrams ab ba bc xy yz: all distinct.
    assert base.distinct_1 == pytest.approx(6 / 8)
    assert base.distinct_2 == pytest.approx(1.0)
    assert (base.profiles, base.users) == (3, 2)
    assert base.mean_words == pytest.approx(8 / 3) and base.median_words == 3
    assert 0 < base.within_user_similarity < 1  # only u0 has two samples
    dpo = stats.loc["dpo_generator"]
    assert dpo.share_palr_keywords == pytest.approx(0.75)
    assert dpo.share_rlmrec_summary == pytest.approx(0.25)
    assert dpo.within_user_similarity < 1.0  # u1's identical pair gives 1, u0's pair less
    null = stats.loc["base_generator_null"]
    assert np.isnan(null.within_user_similarity)  # every user has a single sample
    assert null.share_eras == pytest.approx(0.5)
    # u9 has no writer profiles: the style centroids decide.
    assert null.share_rating_tendency == pytest.approx(0.5)
    shares = stats[[c for c in stats.columns if c.startswith("share_")]]
    assert shares.sum(axis=1).to_numpy() == pytest.approx(np.ones(3))
    assert "share_unassigned" in shares.columns
    identical = evaluation.profile_statistics({"m": {"u0": ["same text", "same text"]}}, writers)
    assert identical.within_user_similarity.iloc[0] == pytest.approx(1.0)
    json.dumps(stats.reset_index().to_dict(orient="records"))  # plain values for metadata


def test_style_mix_counts_the_styles_a_preset_names(examples):
    from lettingo_dagster.report.build import style_mix_styles

    styles = style_mix_styles(load_preset("planted"))
    assert "genre_share" in styles and set(DEFAULT_WRITER_STYLES) <= set(styles)
    assert style_mix_styles(load_preset("default")) == DEFAULT_WRITER_STYLES
    assert set(WRITERS) == set(styles)
    # Against the brief forms the planted generator imitates, its two readings stay apart.
    writers = evaluation.writer_profiles_by_user(examples, styles, genre_figures=False)
    generated = {
        "dpo_generator": {
            "u0": [writers["u0"]["genre_share"]],
            "u1": [writers["u1"]["genre_affinity"]],
        }
    }
    stats = evaluation.profile_statistics(generated, writers).set_index("method")
    assert stats.loc["dpo_generator"].share_genre_share == pytest.approx(0.5)
    assert stats.loc["dpo_generator"].share_genre_affinity == pytest.approx(0.5)


def test_profile_statistics_degenerate_inputs():
    stats = evaluation.profile_statistics({"m": {"u0": ["", "..."]}}, {})
    row = stats.iloc[0]
    assert row.share_unassigned == 1.0 and row.mean_words == 0
    assert row.distinct_1 == 0.0 and np.isnan(row.within_user_similarity)


def test_confusion_matrices_and_rank_buckets(sentiment_outputs, ranking_outputs):
    sentiment = evaluation.confusion_matrices(sentiment_outputs, "sentiment")
    assert list(sentiment) == list(evaluation.METHODS)
    for method, frame in sentiment.items():
        assert frame.shape == (3, 3)
        assert list(frame.index) == list(LABELS) == list(frame.columns)
        assert frame.to_numpy().sum() == len(sentiment_outputs[method].rows)
        truth_counts = np.bincount(sentiment_outputs[method].rows[:, 0], minlength=3)
        assert frame.sum(axis=1).tolist() == truth_counts.tolist()
    assert np.trace(sentiment["oracle_ceiling"].to_numpy()) == N_TARGETS
    ranking = evaluation.confusion_matrices(ranking_outputs, "ranking")
    for method, frame in ranking.items():
        assert list(frame.index) == list(evaluation.RANK_BUCKETS)
        assert frame.targets.sum() == len(ranking_outputs[method].rows)
        assert frame.share.sum() == pytest.approx(1.0)
    assert evaluation.rank_buckets(np.array([1, 2, 5, 6, 10, 11, 30])).tolist() == [1, 2, 2, 2]
