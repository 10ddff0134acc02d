"""The evaluation report as Markdown (PNGs referenced by relative file name) and as one
self-contained HTML file (PNGs embedded as base64 data URIs). All text is escaped: notes and
generator info may carry profile text with '<', '&' or '|'."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from lettingo_dagster.report.evaluation import BASELINE

Scale = Literal["points", "decimals"]


@dataclass
class Report:
    """Everything the report shows. `plots` maps a plot name to its PNG file name, relative to
    `plot_dir` (the report's folder); `results` is `results_table`'s frame; the difference
    lists hold `paired_difference` dicts (one per metric)."""

    dataset: str
    task: str
    preset: str
    users: int
    targets: int
    results: pd.DataFrame
    dpo_minus_base: Sequence[Mapping[str, Any]] = ()
    null_check: Sequence[Mapping[str, Any]] = ()
    ceiling: Sequence[Mapping[str, Any]] = ()
    profile_stats: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None  # faithfulness (and planted-taste agreement) per method
    confusion: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    recommender_trial: pd.DataFrame | None = None  # rows of the recommender_trial table
    plots: Mapping[str, str] = field(default_factory=dict)
    generator: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()
    plot_dir: Path | None = None


# ---- number formatting ---------------------------------------------------------------------


def _number(value: float, scale: Scale, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.1f}" if scale == "points" else f"{value:{sign}.3f}"


def format_interval(
    value: float, low: float, high: float, scale: Scale = "points", signed: bool = False
) -> str:
    """'53.0 [50.1, 55.9]' in points (x100, one decimal) or '0.530 [0.501, 0.559]'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    v, lo, hi = (_number(x, scale, signed) for x in (value, low, high))
    return f"{v} [{lo}, {hi}]"


# ---- Markdown ------------------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    text = str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _results_grid(table: pd.DataFrame, scale: Scale, diff: bool) -> tuple[list[str], list[list]]:
    metric_names = list(dict.fromkeys(table["metric"]))
    header = ["method", *metric_names]
    rows = []
    for method, group in table.groupby("method", sort=False):
        by_metric = group.set_index("metric")
        cells: list[Any] = [method]
        for metric in metric_names:
            if metric not in by_metric.index:
                cells.append("n/a")
                continue
            row = by_metric.loc[metric]
            if diff:
                cells.append(
                    "0 (baseline)"
                    if method == BASELINE
                    else format_interval(
                        row["diff_vs_recent_only"], row["diff_low"], row["diff_high"], scale, True
                    )
                )
            else:
                cells.append(format_interval(row["value"], row["low"], row["high"], scale))
        rows.append(cells)
    return header, rows


def results_markdown_table(table: pd.DataFrame, scale: Scale = "points") -> str:
    """The compact table `lettingo report` prints: one row per method, one column per metric,
    cells 'value [low, high]' (95% bootstrap interval over users) in points or 3 decimals."""
    header, rows = _results_grid(table, scale, diff=False)
    return _md_table(header, rows)


def _differences_rows(differences: Sequence[Mapping[str, Any]], scale: Scale) -> list[list[Any]]:
    return [
        [
            f"{d['method_a']} - {d['method_b']}",
            d["metric"],
            format_interval(d["estimate"], d["low"], d["high"], scale, signed=True),
            "yes" if d.get("excludes_zero") else "no",
            d.get("users", ""),
        ]
        for d in differences
    ]


_DIFF_HEADER = ["comparison", "metric", "difference [95% CI]", "excludes 0", "users"]


CLAIMS_NOTE = (
    "Shares of each method's checkable claims that the user's long window supports: titles "
    "in it, stated ratings within one point, liked and disliked genres its ratings back; on the "
    "planted-taste world also the share of stated liked / disliked genres that are the user's "
    "planted ones, and of planted liked genres stated. n/a: no such claim."
)


def _stats_rows(stats: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    header = list(stats.columns)
    rows = []
    for record in stats.itertuples(index=False):
        cells = []
        for value in record:
            if isinstance(value, float):
                cells.append("n/a" if math.isnan(value) else f"{value:.3f}")
            else:
                cells.append(value)
        rows.append(cells)
    return header, rows


def _frame_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    index_name = frame.index.name or ""
    if frame.columns.name:
        index_name = f"{index_name} \\ {frame.columns.name}" if index_name else frame.columns.name
    header = [index_name, *map(str, frame.columns)]
    rows = []
    for label, row in frame.iterrows():
        cells = [label]
        for value in row:
            cells.append(f"{value:.3f}" if isinstance(value, float) else value)
        rows.append(cells)
    return header, rows


TRIAL_NOTE = (
    "The LLM recommender candidate on calibration users' targets (sentiment: like, neutral, "
    "dislike), beside the majority label of training users' targets and the offline "
    "recommender fit on training users. Differences are paired, with 95% bootstrap intervals "
    "over users. It may serve only when its best condition beats the majority label beyond "
    "noise (lower bound above 0) and is at least as accurate as the offline recommender's best."
)


def _trial_parts(trial: pd.DataFrame) -> tuple[list[str], list[list[Any]], str]:
    from lettingo_dagster.evaluation.recommender_trial import decide

    header = ["recommender", "profile", "targets", "accuracy", "macro-F1", "predicts",
              "LLM's best minus this (points)"]  # fmt: skip
    rows = [
        [r.recommender, r.profile, r.targets, f"{r.accuracy:.3f}", f"{r.macro_f1:.3f}",
         r.predicted,
         format_interval(r.llm_minus_this, r.llm_minus_this_low, r.llm_minus_this_high,
                         signed=True) if pd.notna(r.llm_minus_this) else "(the LLM's best)"]
        for r in trial.itertuples()
    ]  # fmt: skip
    return header, rows, decide(trial).verdict


def _summary_lines(report: Report) -> list[tuple[str, Any]]:
    return [
        ("dataset", report.dataset),
        ("task", report.task),
        ("preset", report.preset),
        ("test users", report.users),
        ("targets", report.targets),
    ]


_INTRO = (
    "Held-out test users, all targets of each user, the same recommender for every method. "
    "Values in points (x100) with 95% percentile bootstrap intervals over users; differences "
    "are paired (both arms resample the same users)."
)


def render_markdown(report: Report, scale: Scale = "points") -> str:
    """The report as Markdown; plots are referenced by their relative file names."""
    out = [f"# LettinGo evaluation: {_md_cell(report.dataset)} ({_md_cell(report.task)})", ""]
    out += [f"- **{k}**: {_md_cell(v)}" for k, v in _summary_lines(report)]
    out += ["", _md_cell(_INTRO), "", "## Results", ""]
    out += [results_markdown_table(report.results, scale), ""]
    out += ["### Difference vs recent_only", ""]
    header, rows = _results_grid(report.results, scale, diff=True)
    out += [_md_table(header, rows), ""]
    sections = (
        ("DPO minus base generator", report.dpo_minus_base),
        ("Null check: base generator, other seed, minus base generator", report.null_check),
        ("Oracle ceiling minus recent_only", report.ceiling),
    )
    out += ["## Paired differences", ""]
    for title, differences in sections:
        out += [f"### {title}", ""]
        out += [
            _md_table(_DIFF_HEADER, _differences_rows(differences, scale))
            if differences
            else "_not computed_",
            "",
        ]
    if report.profile_stats is not None and len(report.profile_stats):
        out += ["## Profiles", ""]
        out += [
            "Length (words), diversity (distinct-n over all profiles; within-user TF-IDF "
            "similarity between one user's samples) and style mix (share of profiles nearest "
            "to each deterministic writer style).",
            "",
        ]
        out += [_md_table(*_stats_rows(report.profile_stats)), ""]
    if report.claims is not None and len(report.claims):
        out += ["## What the profiles claim", "", CLAIMS_NOTE, ""]
        out += [_md_table(*_stats_rows(report.claims)), ""]
    if report.recommender_trial is not None and len(report.recommender_trial):
        header, rows, verdict = _trial_parts(report.recommender_trial)
        out += ["## May the LLM serve as the recommender?", "", TRIAL_NOTE, ""]
        out += [_md_table(header, rows), "", f"**{_md_cell(verdict)}**", ""]
    if report.confusion:
        title = "Confusion matrices" if report.task == "sentiment" else "Target rank buckets"
        out += [f"## {title}", ""]
        for method, frame in report.confusion.items():
            out += [f"### {_md_cell(method)}", "", _md_table(*_frame_rows(frame)), ""]
    if report.plots:
        out += ["## Plots", ""]
        for name, file_name in report.plots.items():
            out += [f"![{_md_cell(name)}]({_md_link(file_name)})", ""]
    if report.generator:
        out += ["## Generator", ""]
        out += [f"- **{_md_cell(k)}**: {_md_cell(v)}" for k, v in report.generator.items()]
        out += [""]
    if report.notes:
        out += ["## Notes", ""]
        out += [f"- {_md_cell(note)}" for note in report.notes]
        out += [""]
    return "\n".join(out).rstrip() + "\n"


def _md_link(file_name: str) -> str:
    return str(file_name).replace(" ", "%20").replace("(", "%28").replace(")", "%29")


# ---- HTML ----------------------------------------------------------------------------------


def _h(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(report: Report, name: str, file_name: str) -> str:
    path = Path(file_name)
    if not path.is_absolute() and report.plot_dir is not None:
        path = Path(report.plot_dir) / path
    if not path.is_file():
        return f'<p class="missing">missing plot {_h(name)}: {_h(file_name)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_h(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_h(name)}</figcaption></figure>"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em; }
figcaption { font-size: 0.8em; color: #555; }
.missing { color: #a00; }
"""


def render_html(report: Report, scale: Scale = "points") -> str:
    """The report as one self-contained HTML page (plots embedded as base64 PNG data URIs,
    read from `report.plot_dir`; a missing file shows as a visible 'missing plot' line)."""
    title = f"LettinGo evaluation: {report.dataset} ({report.task})"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        "<ul>" + "".join(f"<li><b>{_h(k)}</b>: {_h(v)}</li>" for k, v in _summary_lines(report)),
        "</ul>",
        f"<p>{_h(_INTRO)}</p>",
        "<h2>Results</h2>",
        _html_table(*_results_grid(report.results, scale, diff=False)),
        "<h3>Difference vs recent_only</h3>",
        _html_table(*_results_grid(report.results, scale, diff=True)),
        "<h2>Paired differences</h2>",
    ]
    sections = (
        ("DPO minus base generator", report.dpo_minus_base),
        ("Null check: base generator, other seed, minus base generator", report.null_check),
        ("Oracle ceiling minus recent_only", report.ceiling),
    )
    for heading, differences in sections:
        out.append(f"<h3>{_h(heading)}</h3>")
        out.append(
            _html_table(_DIFF_HEADER, _differences_rows(differences, scale))
            if differences
            else "<p><i>not computed</i></p>"
        )
    if report.profile_stats is not None and len(report.profile_stats):
        out += ["<h2>Profiles</h2>", _html_table(*_stats_rows(report.profile_stats))]
    if report.claims is not None and len(report.claims):
        out += ["<h2>What the profiles claim</h2>", f"<p>{html.escape(CLAIMS_NOTE)}</p>",
                _html_table(*_stats_rows(report.claims))]  # fmt: skip
    if report.recommender_trial is not None and len(report.recommender_trial):
        header, rows, verdict = _trial_parts(report.recommender_trial)
        out += ["<h2>May the LLM serve as the recommender?</h2>", f"<p>{_h(TRIAL_NOTE)}</p>",
                _html_table(header, rows), f"<p><b>{_h(verdict)}</b></p>"]  # fmt: skip
    if report.confusion:
        heading = "Confusion matrices" if report.task == "sentiment" else "Target rank buckets"
        out.append(f"<h2>{_h(heading)}</h2>")
        for method, frame in report.confusion.items():
            out += [f"<h3>{_h(method)}</h3>", _html_table(*_frame_rows(frame))]
    if report.plots:
        out.append("<h2>Plots</h2>")
        out += [_image(report, name, file_name) for name, file_name in report.plots.items()]
    if report.generator:
        out.append("<h2>Generator</h2>")
        out.append(
            "<ul>"
            + "".join(f"<li><b>{_h(k)}</b>: {_h(v)}</li>" for k, v in report.generator.items())
            + "</ul>"
        )
    if report.notes:
        out.append("<h2>Notes</h2>")
        out.append("<ul>" + "".join(f"<li>{_h(n)}</li>" for n in report.notes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
