"""The evaluation report's figures, written as small PNGs (dpi 100).

Figures are drawn with matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`, imported
inside the functions): no pyplot, so no global figure registry to leak into and no GUI backend,
whatever backend the process has selected. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.report.evaluation import (
    BASE_GENERATOR,
    BASELINE,
    DPO_GENERATOR,
    profile_lengths,
)

DPI = 100
PLOT_FILES = {
    "metrics": "metrics.png",
    "differences": "differences.png",
    "confusion": "confusion.png",
    "profile_lengths": "profile_lengths.png",
    "style_mix": "style_mix.png",
}
_HIGHLIGHT_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:brown")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    figure.clear()  # Agg figures outside pyplot are freed with their last reference
    return path


def _metrics_of(table: pd.DataFrame, chosen: Sequence[str] | None) -> list[str]:
    return list(chosen) if chosen is not None else list(dict.fromkeys(table["metric"]))


def _interval_panels(metrics: Sequence[str], rows: int):
    """A figure with one panel per metric side by side sharing `rows` labelled rows, and the
    rows' y positions, top to bottom."""
    figure = _figure(3.2 * len(metrics), 0.32 * rows + 1.2)
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    return figure, axes, np.arange(rows)[::-1]


def _finish_panel(ax, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def plot_metric_intervals(
    table: pd.DataFrame, path: Path | str, metrics: Sequence[str] | None = None
) -> Path:
    """(a) Each method's value (point) with its 95% interval (horizontal error bar), one panel
    per metric; methods top to bottom in table order. `table`: `results_table`'s frame."""
    names = _metrics_of(table, metrics)
    methods = list(dict.fromkeys(table["method"]))
    figure, axes, y = _interval_panels(names, len(methods))
    for ax, metric in zip(axes, names, strict=True):
        rows = table[table["metric"] == metric].set_index("method").reindex(methods)
        values = rows["value"].to_numpy(float)
        errors = np.vstack([values - rows["low"].to_numpy(float), rows["high"] - values])
        ax.errorbar(values, y, xerr=np.abs(errors), fmt="o", color="tab:blue", capsize=3, ms=4)
        if BASELINE in methods:
            ax.axvline(float(rows.loc[BASELINE, "value"]), color="grey", lw=0.8, ls="--")
        _finish_panel(ax, metric)
    axes[0].set_yticks(y, methods)
    figure.tight_layout()
    return _save(figure, path)


def plot_differences(
    table: pd.DataFrame,
    path: Path | str,
    highlights: Sequence[Mapping[str, Any]] = (),
    metrics: Sequence[str] | None = None,
) -> Path:
    """(b) Paired differences against `recent_only` with their intervals, one panel per metric,
    plus highlighted rows for `paired_difference` results (DPO minus base, the null check) of
    the same metric. A dashed line marks 0."""
    names = _metrics_of(table, metrics)
    methods = [m for m in dict.fromkeys(table["method"]) if m != BASELINE]
    labels_h = list(dict.fromkeys(f"{h['method_a']} - {h['method_b']}" for h in highlights))
    labels = [f"{m} - {BASELINE}" for m in methods] + labels_h
    figure, axes, y = _interval_panels(names, len(labels))
    for ax, metric in zip(axes, names, strict=True):
        rows = table[table["metric"] == metric].set_index("method").reindex(methods)
        est = rows["diff_vs_recent_only"].to_numpy(float)
        err = np.vstack([est - rows["diff_low"].to_numpy(float), rows["diff_high"] - est])
        ax.errorbar(
            est, y[: len(methods)], xerr=np.abs(err), fmt="o", color="tab:blue", capsize=3, ms=4
        )
        for h in highlights:
            if h["metric"] != metric:
                continue
            label = f"{h['method_a']} - {h['method_b']}"
            index = labels_h.index(label)
            colour = _HIGHLIGHT_COLOURS[index % len(_HIGHLIGHT_COLOURS)]
            estimate = float(h["estimate"])
            ax.errorbar(
                [estimate],
                [y[len(methods) + index]],
                xerr=[[abs(estimate - float(h["low"]))], [abs(float(h["high"]) - estimate)]],
                fmt="D",
                color=colour,
                capsize=3,
                ms=5,
                lw=2,
            )
        ax.axvline(0.0, color="grey", lw=0.8, ls="--")
        if labels_h and methods:
            ax.axhline(y[len(methods) - 1] - 0.5, color="black", lw=0.5)
        _finish_panel(ax, f"difference in {metric}")
    axes[0].set_yticks(y, labels)
    for tick, label in zip(axes[0].get_yticklabels(), labels, strict=True):
        if label in labels_h:
            index = labels_h.index(label)
            tick.set_color(_HIGHLIGHT_COLOURS[index % len(_HIGHLIGHT_COLOURS)])
            tick.set_fontweight("bold")
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion(matrices: Mapping[str, pd.DataFrame], path: Path | str) -> Path:
    """(c) Sentiment: one confusion-matrix heatmap per method (rows truth, columns predicted,
    normalized per true label, counts written in the cells). Ranking: grouped bars of the share
    of targets per rank bucket and method."""
    if not matrices:
        raise ValueError("no confusion matrices to plot")
    methods = list(matrices)
    first = next(iter(matrices.values()))
    if list(first.columns) == list(LABELS):
        cols = min(4, len(methods))
        rows_n = -(-len(methods) // cols)
        figure = _figure(2.3 * cols, 2.3 * rows_n + 0.3)
        axes = figure.subplots(rows_n, cols, squeeze=False).ravel()
        for ax, method in zip(axes, methods, strict=False):
            counts = matrices[method].to_numpy(float)
            totals = counts.sum(axis=1, keepdims=True)
            shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
            ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
            for (i, j), count in np.ndenumerate(counts):
                colour = "white" if shares[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=7, color=colour)
            ax.set_xticks(range(len(LABELS)), LABELS, fontsize=6)
            ax.set_yticks(range(len(LABELS)), LABELS, fontsize=6)
            ax.set_title(method, fontsize=8)
        for ax in axes[len(methods) :]:
            ax.axis("off")
        figure.supxlabel("predicted", fontsize=8)
        figure.supylabel("truth", fontsize=8)
    else:
        buckets = list(first.index)
        figure = _figure(min(8.0, 4.0 + 0.3 * len(methods)), 3.0)
        ax = figure.subplots()
        width = 0.8 / len(methods)
        x = np.arange(len(buckets))
        for k, method in enumerate(methods):
            shares = matrices[method]["share"].reindex(buckets).to_numpy(float)
            ax.bar(x + k * width - 0.4 + width / 2, shares, width, label=method)
        ax.set_xticks(x, [f"rank {b}" for b in buckets], fontsize=8)
        ax.set_ylabel("share of targets", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_profile_lengths(
    generated: Mapping[str, Mapping[str, Sequence[str]]],
    path: Path | str,
    methods: Sequence[str] = (BASE_GENERATOR, DPO_GENERATOR),
) -> Path:
    """(d) Histogram of profile lengths in words, the chosen methods overlaid (base vs DPO by
    default; methods absent from `generated` are skipped)."""
    lengths = {m: v for m, v in profile_lengths(generated).items() if m in methods and len(v)}
    figure = _figure(4.5, 3.0)
    ax = figure.subplots()
    if lengths:
        top = max(int(v.max()) for v in lengths.values())
        bins = np.linspace(0, max(top, 1) + 1, min(30, max(top, 1) + 1) + 1)
        for method, values in lengths.items():
            ax.hist(values, bins=bins, alpha=0.55, label=f"{method} (mean {values.mean():.1f})")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no profiles", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("words per profile", fontsize=8)
    ax.set_ylabel("profiles", fontsize=8)
    ax.tick_params(labelsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_style_mix(stats: pd.DataFrame, path: Path | str) -> Path:
    """(d) Stacked horizontal bars: each generator method's share of profiles nearest to each
    writer style (`profile_statistics`' `share_*` columns)."""
    columns = [c for c in stats.columns if c.startswith("share_")]
    methods = list(stats["method"])
    figure = _figure(6.0, 0.4 * len(methods) + 1.6)
    ax = figure.subplots()
    y = np.arange(len(methods))[::-1]
    left = np.zeros(len(methods))
    for column in columns:
        shares = stats[column].fillna(0.0).to_numpy(float)
        if not shares.any():
            continue
        ax.barh(y, shares, left=left, label=column.removeprefix("share_"), height=0.6)
        left += shares
    ax.set_yticks(y, methods, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of profiles by nearest writer style", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    figure.tight_layout()
    return _save(figure, path)


def write_plots(
    folder: Path | str,
    *,
    table: pd.DataFrame,
    matrices: Mapping[str, pd.DataFrame],
    highlights: Sequence[Mapping[str, Any]] = (),
    generated: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    stats: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Every figure into `folder` under the names of `PLOT_FILES`; returns {plot: file name}
    (relative, as the Markdown report references them). The profile figures are drawn only
    when `generated` / `stats` are given."""
    folder = Path(folder)
    written = {
        "metrics": plot_metric_intervals(table, folder / PLOT_FILES["metrics"]),
        "differences": plot_differences(table, folder / PLOT_FILES["differences"], highlights),
        "confusion": plot_confusion(matrices, folder / PLOT_FILES["confusion"]),
    }
    if generated is not None:
        written["profile_lengths"] = plot_profile_lengths(
            generated, folder / PLOT_FILES["profile_lengths"]
        )
    if stats is not None and len(stats):
        written["style_mix"] = plot_style_mix(stats, folder / PLOT_FILES["style_mix"])
    return {name: path.name for name, path in written.items()}
