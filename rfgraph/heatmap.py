"""PNG rendering of an ERF map with the unit's theoretical RF drawn over it (matplotlib, imported
lazily so the rest of rfgraph works without it).  2-D maps: image + TRF box; 1-D: a curve with the
TRF interval shaded.  ``log=True`` uses a logarithmic colour scale (the tails of a Gaussian ERF
are otherwise invisible).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RFGraphError
from .outputs import write_atomically


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RFGraphError("--png needs matplotlib: pip install 'rfgraph[plots]'") from exc
    return plt


def render_png(erf: np.ndarray, path: str | Path, region: Sequence[tuple[int, int]] | None = None,
               log: bool = False, title: str | None = None,
               axis_names: Sequence[str] = ("H", "W")) -> Path:
    """Write ``erf`` (1-D or 2-D) as a PNG, atomically; ``region`` is the TRF [u0, v0] per axis
    (unclipped)."""
    plt = _pyplot()
    erf = np.abs(np.asarray(erf, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(5.5, 4.5) if erf.ndim == 2 else (6, 3.5), dpi=120)
    try:
        if erf.ndim == 2:
            _draw_2d(plt, fig, ax, erf, region, log, axis_names)
        elif erf.ndim == 1:
            _draw_1d(ax, erf, region, log)
        else:
            raise RFGraphError(f"a heatmap needs a 1-D or 2-D ERF; this one has {erf.ndim} axes")
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        out = write_atomically(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return out


def trf_in_image(region: Sequence[tuple[int, int]], shape: Sequence[int]
                 ) -> tuple[tuple[tuple[int, int], ...], str]:
    """The TRF clipped to the map, and its legend label: "TRF", or, when the field reaches past
    the image (its box would be drawn off the picture), a label saying so."""
    clipped = tuple((max(u0, 0), min(v0, n - 1)) for (u0, v0), n in zip(region, shape))
    if clipped == tuple(tuple(r) for r in region):
        return clipped, "TRF"
    return clipped, "TRF exceeds the image (clipped edge)"


def _draw_2d(plt: Any, fig: Any, ax: Any, erf: np.ndarray,
             region: Sequence[tuple[int, int]] | None, log: bool,
             axis_names: Sequence[str]) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    norm = None
    if log and erf.max() > 0:
        positive = erf[erf > 0]
        norm = LogNorm(vmin=max(float(positive.min()), float(erf.max()) * 1e-6), vmax=float(erf.max()))
    img = ax.imshow(np.where(erf > 0, erf, np.nan) if log else erf, cmap="viridis", norm=norm,
                    interpolation="nearest")
    fig.colorbar(img, ax=ax, label="|d y / d x|" + (" (log)" if log else ""))
    if region is not None:
        ((h0, h1), (w0, w1)), label = trf_in_image(region, erf.shape)
        clipped = label != "TRF"  # its clipped edges lie on the image border: draw them thicker
        ax.add_patch(Rectangle((w0 - 0.5, h0 - 0.5), w1 - w0 + 1, h1 - h0 + 1, fill=False,
                               edgecolor="red", linewidth=3 if clipped else 1.2,
                               linestyle="--" if clipped else "-", label=label))
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlim(-0.5, erf.shape[1] - 0.5)
    ax.set_ylim(erf.shape[0] - 0.5, -0.5)
    ax.set_xlabel(axis_names[-1])
    ax.set_ylabel(axis_names[0])


def _draw_1d(ax: Any, erf: np.ndarray, region: Sequence[tuple[int, int]] | None,
             log: bool) -> None:
    ax.plot(np.arange(erf.size), erf, drawstyle="steps-mid", color="tab:blue", label="ERF")
    if region is not None:
        ((u0, v0),), label = trf_in_image(region, erf.shape)
        ax.axvspan(u0 - 0.5, v0 + 0.5, color="red", alpha=0.12, label=label)
    if log and erf.max() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("input position")
    ax.legend(fontsize=7)
