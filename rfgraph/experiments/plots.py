"""Figures of the experiments (matplotlib, Agg backend, PNG): heatmap grids, profiles, log-log
fits, bars and scatters.  Every function writes one file and returns its path."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap_grid(path: Path, maps: Sequence[Sequence[np.ndarray | None]],
                 row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> Path:
    """A grid of ERF heatmaps, each scaled to its own maximum (Luo fig. 1 style), drawn on one
    pixel scale: axes in input pixels from each map's centre, the same limits in every panel, so a
    deeper net's wider ERF looks wider (maps of different input sizes were stretched to one size)."""
    plt = _plt()
    rows, cols = len(maps), max(len(r) for r in maps)
    half = max((max(m.shape[:2]) - 1) / 2 for row in maps for m in row if m is not None)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 0.8, 2.2 * rows + 0.9),
                             squeeze=False, sharex=True, sharey=True)
    for i, row in enumerate(maps):
        for j in range(cols):
            ax = axes[i][j]
            m = row[j] if j < len(row) else None
            if m is not None:
                top = float(np.abs(m).max()) or 1.0
                h, w = m.shape[:2]
                ax.imshow(np.abs(m) / top, cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                          extent=(-w / 2, w / 2, h / 2, -h / 2))
            ax.set_xlim(-half - 0.5, half + 0.5)
            ax.set_ylim(half + 0.5, -half - 0.5)
            ax.tick_params(labelsize=7)
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.suptitle(title + "\naxes: input pixels from the unit's centre, one scale for every panel", fontsize=9)
    return _save(fig, path)


def profiles(path: Path, curves: Sequence[tuple[str, np.ndarray, str]], title: str,
             xlabel: str = "input pixel (offset from the centre)") -> Path:
    """1-D profiles (label, values, matplotlib style), each centred on its middle pixel."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, y, style in curves:
        x = np.arange(y.size) - (y.size - 1) / 2
        ax.plot(x, y, style, label=label, markersize=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised ERF")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def loglog(path: Path, series: Sequence[tuple[str, Sequence[float], np.ndarray, float, float]],
           xlabel: str, ylabel: str, title: str) -> Path:
    """Log-log points (mean and per-seed spread) with the fitted line for each series:
    (label, x, ys[seed, i], slope, intercept)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, xs_in, ys, slope, intercept in series:
        x = np.asarray(xs_in, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ys, axis=0)
            err = np.nanstd(ys, axis=0) if ys.shape[0] > 1 else None
        points = ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3, label=f"{label}")
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, np.exp(intercept) * xs ** slope, "--", color=points[0].get_color(),
                label=f"{label} fit: slope {slope:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis, sorted({float(v) for s in series for v in s[1]}))
    _label(ax, xlabel, ylabel, title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels and the small title every figure uses."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (figures are many in a full run)."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def _plain_ticks(axis: Any, values: Sequence[float]) -> None:
    """Ticks at ``values`` with plain labels (a log axis otherwise writes 4x10^0)."""
    from matplotlib.ticker import (
        FixedLocator,
        NullFormatter,
        NullLocator,
        ScalarFormatter,
    )

    axis.set_major_locator(FixedLocator(list(values)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def bars(path: Path, labels: Sequence[str], values: Sequence[float], ylabel: str, title: str,
         groups: Sequence[str] | None = None) -> Path:
    """A bar chart (one colour per group when ``groups`` is given)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(labels) + 2), 4))
    colours = None
    if groups:
        names = sorted(set(groups), key=list(groups).index)
        cmap = plt.get_cmap("tab10")
        colours = [cmap(names.index(g) % 10) for g in groups]
    ax.bar(range(len(values)), [0 if v is None else v for v in values], color=colours)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def scatter(path: Path, x: Sequence[float], y: Sequence[float], labels: Sequence[str],
            xlabel: str, ylabel: str, title: str, fit: tuple[float, float] | None = None,
            logx: bool = False) -> Path:
    """Labelled points; ``fit`` = (a, b) draws y = a + b log x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(x, y)
    for xi, yi, lab in zip(x, y, labels):
        ax.annotate(lab, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if fit is not None and len(x):
        xs = np.linspace(min(x), max(x), 100)
        ax.plot(xs, fit[0] + fit[1] * np.log(xs), "--", label=f"{fit[0]:.3f} + {fit[1]:.3f} ln r")
        ax.legend(fontsize=8)
    if logx:
        ax.set_xscale("log")
    _label(ax, xlabel, ylabel, title)
    return _save(fig, path)


def measured_vs_closed_form(path: Path, curves: Sequence[tuple[str, Sequence[float], Sequence[float],
                                                                Sequence[float]]],
                            xlabel: str, ylabel: str, title: str) -> Path:
    """Log-log measured points and closed-form lines, one colour per curve: (label, x, y, y_closed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (label, x, y, closed) in enumerate(curves):
        colour = f"C{i}"
        ax.plot(x, y, "o", color=colour, label=f"{label} (measured)")
        ax.plot(x, closed, "--", color=colour, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = sorted({v for _, x, _, _ in curves for v in x})
    _plain_ticks(ax.xaxis, xs)
    ys = [v for _, _, y, closed in curves for v in (*y, *closed)]
    _plain_ticks(ax.yaxis, [float(f"{v:.2g}") for v in np.geomspace(min(ys), max(ys), 5)])
    ax.legend(fontsize=7)
    _label(ax, xlabel, ylabel, title)
    return _save(fig, path)
