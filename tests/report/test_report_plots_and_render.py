"""The report's figures and its Markdown / HTML renderings."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from lettingo_dagster.report import evaluation, plots
from lettingo_dagster.report.render import (
    Report,
    format_interval,
    render_html,
    render_markdown,
    results_markdown_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def sentiment_parts(sentiment_outputs, sentiment_table, generated, examples):
    differences = {
        "dpo": evaluation.paired_differences(
            sentiment_outputs, "dpo_generator", "base_generator", "sentiment", n_boot=50
        ),
        "null": evaluation.paired_differences(
            sentiment_outputs, "base_generator_null", "base_generator", "sentiment", n_boot=50
        ),
        "ceiling": evaluation.paired_differences(
            sentiment_outputs, "oracle_ceiling", "recent_only", "sentiment", n_boot=50
        ),
    }
    stats = evaluation.profile_statistics(generated, evaluation.writer_profiles_by_user(examples))
    matrices = evaluation.confusion_matrices(sentiment_outputs, "sentiment")
    return differences, stats, matrices


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, sentiment_table, sentiment_parts, generated) -> Path:
    differences, stats, matrices = sentiment_parts
    folder = tmp_path_factory.mktemp("report")
    plots.write_plots(
        folder,
        table=sentiment_table,
        matrices=matrices,
        highlights=differences["dpo"] + differences["null"],
        generated=generated,
        stats=stats,
    )
    return folder


def test_every_plot_is_a_png(report_dir, ranking_table, ranking_outputs, tmp_path):
    for name, file_name in plots.PLOT_FILES.items():
        assert _is_png(report_dir / file_name), name
    # Ranking: rank-bucket bars instead of confusion heatmaps; a single metric panel.
    buckets = evaluation.confusion_matrices(ranking_outputs, "ranking")
    assert _is_png(plots.plot_confusion(buckets, tmp_path / "buckets.png"))
    path = plots.plot_metric_intervals(ranking_table, tmp_path / "one.png", metrics=["ndcg@10"])
    assert path == tmp_path / "one.png" and _is_png(path)
    written = plots.write_plots(tmp_path / "sub", table=ranking_table, matrices=buckets)
    assert written == {k: plots.PLOT_FILES[k] for k in ("metrics", "differences", "confusion")}


def _report(sentiment_table, sentiment_parts, report_dir) -> Report:
    differences, stats, matrices = sentiment_parts
    return Report(
        dataset="ml-100k <test>",
        task="sentiment",
        preset="ci",
        users=6,
        targets=12,
        results=sentiment_table,
        dpo_minus_base=differences["dpo"],
        null_check=differences["null"],
        ceiling=differences["ceiling"],
        profile_stats=stats,
        confusion=matrices,
        plots={**plots.PLOT_FILES, "absent": "absent.png"},
        generator={"model": "tiny-gpt2", "sample": "<script>alert('x')</script> & co"},
        notes=["profiles may contain <script>alert(1)</script> | pipes & ampersands"],
        plot_dir=report_dir,
    )


def test_markdown_has_every_method_and_references_plots(
    sentiment_table, sentiment_parts, report_dir
):
    text = render_markdown(_report(sentiment_table, sentiment_parts, report_dir))
    for method in evaluation.METHODS:
        assert method in text
    for file_name in plots.PLOT_FILES.values():
        assert f"]({file_name})" in text
    for heading in ("DPO minus base", "Null check", "Oracle ceiling", "Confusion matrices"):
        assert heading in text
    assert "<script>" not in text and "\\|" in text
    assert "weighted_f1" in text and "share_palr_keywords" in text


def test_html_is_escaped_and_self_contained(sentiment_table, sentiment_parts, report_dir):
    page = render_html(_report(sentiment_table, sentiment_parts, report_dir))
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp; co" in page
    assert "ml-100k &lt;test&gt;" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(plots.PLOT_FILES)
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)
    assert "missing plot absent" in page
    for method in evaluation.METHODS:
        assert method in page


def test_results_markdown_table_cells(sentiment_table, ranking_table):
    text = results_markdown_table(sentiment_table)
    lines = text.splitlines()
    assert lines[0] == "| method | accuracy | macro_f1 | weighted_f1 |"
    assert len(lines) == 2 + len(evaluation.METHODS)
    row = sentiment_table.set_index(["method", "metric"]).loc[("oracle_ceiling", "accuracy")]
    at = 2 + list(evaluation.METHODS).index("oracle_ceiling")
    assert format_interval(row.value, row.low, row.high) in lines[at]
    assert lines[at].startswith("| oracle_ceiling | 100.0 [100.0, 100.0] |")
    assert re.fullmatch(r"\| recent_only( \| \d+\.\d \[\d+\.\d, \d+\.\d\]){3} \|", lines[2])
    decimals = results_markdown_table(ranking_table, scale="decimals").splitlines()
    assert decimals[0] == "| method | hit_rate@1 | hit_rate@5 | hit_rate@10 | ndcg@10 |"
    assert re.fullmatch(
        r"\| recent_only( \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]){4} \|", decimals[2]
    )
    assert format_interval(0.021, -0.003, 0.045, signed=True) == "+2.1 [-0.3, +4.5]"
    assert format_interval(float("nan"), 0, 0) == "n/a"


def test_the_llm_recommender_trial_and_its_decision_are_shown(
    sentiment_table, sentiment_parts, report_dir
):
    import pandas as pd

    from lettingo_dagster.evaluation.recommender_trial import LLM, MAJORITY, OFFLINE

    trial = pd.DataFrame(
        [
            {"recommender": MAJORITY, "profile": "none (always like)", "users": 20,
             "targets": 200, "accuracy": 0.66, "macro_f1": 0.27, "predicted": "like 200",
             "llm_minus_this": 0.04, "llm_minus_this_low": -0.03, "llm_minus_this_high": 0.11},
            {"recommender": OFFLINE, "profile": "none", "users": 20, "targets": 200,
             "accuracy": 0.62, "macro_f1": 0.45, "predicted": "like 150, dislike 50",
             "llm_minus_this": 0.08, "llm_minus_this_low": 0.01, "llm_minus_this_high": 0.15},
            {"recommender": LLM, "profile": "none", "users": 20, "targets": 200,
             "accuracy": 0.70, "macro_f1": 0.30, "predicted": "like 190, neutral 10",
             "llm_minus_this": float("nan"), "llm_minus_this_low": float("nan"),
             "llm_minus_this_high": float("nan")},
        ]
    )  # fmt: skip
    report = _report(sentiment_table, sentiment_parts, report_dir)
    report.recommender_trial = trial
    for text in (render_markdown(report), render_html(report)):
        assert "May the LLM serve as the recommender?" in text
        assert "+4.0 [-3.0, +11.0]" in text and "+8.0 [+1.0, +15.0]" in text
        assert "(the LLM's best)" in text or "(the LLM&#x27;s best)" in text  # HTML escapes it
        assert "may not serve (not shown to beat the majority label)" in text
    assert "May the LLM serve" not in render_markdown(
        _report(sentiment_table, sentiment_parts, report_dir)
    )
