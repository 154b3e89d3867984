"""Figures for design-space searches and method comparisons (PNG, no display needed).

Figures are built as bare :class:`matplotlib.figure.Figure` objects rendered by
the Agg canvas, never through ``pyplot``: no global backend switch, no figure
registry to leak, safe in headless workers and threads.  Each ``plot_*``
function has a ``*_figure`` twin that returns the unsaved figure, so callers
and tests can inspect it (e.g. with :func:`legend_texts`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peftspace.search.stats import edf, summarize

__all__ = [
    "edf_label",
    "edf_figure",
    "plot_edf",
    "comparison_figure",
    "plot_comparison",
    "allocation_figure",
    "plot_allocation",
    "legend_texts",
    "save_figure",
]


def _new_figure(width: float = 6.4, height: float = 4.8) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def legend_texts(fig: Figure) -> list[str]:
    """The legend entries of every axes of ``fig``, in order."""
    texts = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            texts.extend(t.get_text() for t in legend.get_texts())
    return texts


def edf_label(name: str, scores: Sequence[float | None]) -> str:
    """pycls-style legend entry ``"name n|min|mean"`` over the finite scores (Radosavovic et al. 2019)."""
    s = summarize(scores)
    return f"{name} {s['n']}|{s['min']:.3f}|{s['mean']:.3f}"


def edf_figure(scores: dict[str, Sequence[float | None]], title: str = "", xlabel: str = "dev score") -> Figure:
    """One EDF step curve per candidate, in the dict's order, legend ``name n|min|mean``.

    The curve starts at F=0 just left of the smallest score, so a candidate
    whose curve lies to the right (higher scores, when higher is better) is the
    better design space.  Candidates with no finite score keep their legend
    entry (``n=0``, ``nan``) but draw nothing.
    """
    fig, ax = _new_figure()
    for name, values in scores.items():
        x, f = edf(values)
        if x.size:
            x, f = np.concatenate([x[:1], x]), np.concatenate([[0.0], f])
        ax.step(x, f, where="post", linewidth=1.5, label=edf_label(name, values))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cumulative prob.")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.4)
    if title:
        ax.set_title(title)
    if scores:
        ax.legend(loc="best", fontsize="small", title="n|min|mean", title_fontsize="small")
    return fig


def plot_edf(
    scores: dict[str, Sequence[float | None]], path: str | Path, title: str = "", xlabel: str = "dev score"
) -> Path:
    """Save :func:`edf_figure` as a PNG at ``path``."""
    return save_figure(edf_figure(scores, title=title, xlabel=xlabel), path)


def _percent_label(percent: float) -> str:
    if percent is None or not math.isfinite(percent):
        return "?%"
    return f"{percent:.3g}%"


def comparison_figure(rows: list[dict], title: str = "") -> Figure:
    """Median score per method with a min–max bar, x labels giving the % of trainable parameters.

    Points rather than bars: scores of competing methods differ by a few
    points on a scale far from zero, which bars from zero would hide.
    """
    fig, ax = _new_figure(width=max(4.0, 1.1 * len(rows) + 1.5))
    pos = np.arange(len(rows))
    med = np.array([r["median"] for r in rows], dtype=float)
    lo = np.array([r["min"] for r in rows], dtype=float)
    hi = np.array([r["max"] for r in rows], dtype=float)
    yerr = np.vstack([np.clip(med - lo, 0, None), np.clip(hi - med, 0, None)])
    ax.errorbar(pos, med, yerr=yerr, fmt="o", capsize=4, linewidth=1.5)
    for x, y in zip(pos, med):
        if math.isfinite(y):
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(6, 0), fontsize="small")
    ax.set_xticks(pos, [f"{r['method']}\n{_percent_label(r.get('percent'))}" for r in rows])
    ax.set_ylabel("score (median, min–max)")
    ax.grid(True, axis="y", alpha=0.4)
    if title:
        ax.set_title(title)
    return fig


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Save :func:`comparison_figure` as a PNG at ``path``; rows have method, median, min, max, percent."""
    return save_figure(comparison_figure(rows, title=title), path)


def allocation_figure(layers: list[dict], title: str = "") -> Figure:
    """Stacked bars of trainable parameters per layer, one colour per strategy.

    Shows where a design spends its budget (e.g. Chen et al.'s spindle
    grouping puts more in the middle layers).  Strategies keep their order of
    first appearance so colours are stable across figures of the same search.
    """
    strategies: list[str] = []
    for layer in layers:
        for name in layer.get("counts", {}):
            if name not in strategies:
                strategies.append(name)
    fig, ax = _new_figure(width=max(5.0, 0.35 * len(layers) + 2.0))
    pos = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    for name in strategies:
        counts = np.array([float(layer.get("counts", {}).get(name, 0)) for layer in layers])
        ax.bar(pos, counts, bottom=bottom, label=name, width=0.8)
        bottom += counts
    ax.set_xticks(pos, [str(layer.get("label", i)) for i, layer in enumerate(layers)], rotation=90, fontsize=7)
    ax.set_ylabel("trainable parameters")
    ax.set_ylim(0.0, max(1.0, float(bottom.max(initial=0.0))) * 1.05)  # stacked tops fully visible
    ax.grid(True, axis="y", alpha=0.4)
    if strategies:  # outside the axes: it never hides a bar
        ax.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_allocation(layers: list[dict], path: str | Path, title: str = "") -> Path:
    """Save :func:`allocation_figure` as a PNG at ``path``."""
    return save_figure(allocation_figure(layers, title=title), path)
