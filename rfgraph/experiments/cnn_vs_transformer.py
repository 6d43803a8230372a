"""The open question of Taha's review (seeds/taha_erf_review.txt): a ViT's TRF is global after one
attention block, but how large is its ERF, and how Gaussian?  A small ViT (patch embedding +
pre-norm attention blocks, ``model_zoo`` ``vit_small``) against its CNN twin of the same depth
(``cnn_small``: same patch stem, residual 3x3 blocks), at random init, block by block.

The seed is the centre token (ViT, a (1, N, D) tensor) or the centre unit (CNN), all channels.
Besides Luo's size: r50 (side of the centred square holding half of the mass), the fraction of
the mass outside the centre patch, and the fraction of input pixels above 1% of the peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import model_zoo

from .. import analyze
from ..metrics import compute_metrics
from . import plots
from .base import Context, Result, claim, finish, fmt
from .measure import Measured, record, token_erf
from .registry import register

NAME = "cnn-vs-transformer"
PATCH = 4


def centre_seed(kind: str, grid: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """The seed builder: 1 at the centre token (ViT) or centre unit (CNN), every channel."""
    c = grid // 2

    def seed(shape: tuple[int, ...]) -> np.ndarray:
        """The seed array for an output of ``shape``."""
        s = np.zeros(shape, np.float32)
        if kind == "vit":
            s[0, c * grid + c, :] = 1
        else:
            s[0, :, c, c] = 1
        return s
    return seed


def shape_stats(erf: np.ndarray, grid: int) -> dict[str, float]:
    """Mass outside the centre patch and the fraction of pixels above 1% of the peak."""
    c = (grid // 2) * PATCH
    inside = float(erf[c:c + PATCH, c:c + PATCH].sum())
    total = float(erf.sum()) or 1.0
    return {"mass_outside_centre_patch": 1 - inside / total,
            "pixels_above_1pct": float((erf > 0.01 * erf.max()).mean())}


def _sizes(row: dict) -> str:
    """"Luo size / r50 / pixels above 1%" of one CSV row."""
    return f"{fmt(row['erf_size'])} / {row['r50']} / {fmt(100 * row['pixels_above_1pct'])}%"


@register(NAME, "ERF of a small ViT vs a CNN of the same depth", "Taha's review: open question")
def run(ctx: Context) -> Result:
    """ERF of the centre token (ViT) / unit (CNN) after each block, with TRF and shape stats."""
    t0 = time.perf_counter()
    runs = ctx.n_runs(20, 3)
    size = 32 if ctx.quick else 64
    depth = 2 if ctx.quick else 4
    grid = size // PATCH
    res = Result(NAME, "ViT vs CNN of similar depth (beyond the paper)",
                 f"input {size}x{size}, patch {PATCH}, width 32, {depth} blocks; random init, "
                 f"{runs} runs (weights and Gaussian inputs redrawn)")
    folder = ctx.folder(NAME)
    trf = {k: analyze(model_zoo.build(f"{k}_small:size={size},depth={depth}"))
           for k in ("vit", "cnn")}
    found: dict[tuple[str, int], Measured] = {}
    centre = ((grid // 2) * PATCH + (PATCH - 1) / 2,) * 2
    for kind, block in ctx.bar([(k, b) for k in ("vit", "cnn") for b in range(1, depth + 1)],
                               NAME):
        t1 = time.perf_counter()
        make = (lambda w, k=kind: model_zoo.build(f"{k}_small:size={size},depth={depth},"
                                                   f"seed={ctx.seed * 1000 + w}"))
        erf = token_erf(ctx, make, f"block{block}", centre_seed(kind, grid), runs, 1, seed=block)
        ep = trf[kind][f"block{block}"]
        r = None if ep.is_global else tuple(int(v) for v in ep.r if v is not None)  # not global: no v is None
        m = found[(kind, block)] = Measured(erf, compute_metrics(erf, centre, r), runs,
                                            time.perf_counter() - t1)
        record(ctx, NAME, f"{kind} block{block}", m)
        half = next((a.side for a in m.metrics.area_ratios if a.t == 0.5), None)
        res.rows.append({"net": kind, "block": block, "trf": "global" if r is None else r[0],
                         "runs": runs, "erf_size": m.metrics.erf_size, "r50": half,
                         "gauss_sigma": m.sigma, "gauss_r2": m.r2,
                         "erf_over_input": m.metrics.erf_size / size, **shape_stats(erf, grid)})
    fig = plots.heatmap_grid(folder / "erf_vit_vs_cnn.png",
                             [[found[(k, b)].erf for b in range(1, depth + 1)]
                              for k in ("vit", "cnn")], ["ViT", "CNN"],
                             [f"block {b}" for b in range(1, depth + 1)],
                             f"ERF of the centre token / unit, {runs} runs")
    logfig = plots.heatmap_grid(folder / "erf_vit_vs_cnn_log.png",
                                [[np.log10(1 + 1e3 * found[(k, b)].erf / found[(k, b)].erf.max())
                                  for b in range(1, depth + 1)] for k in ("vit", "cnn")],
                                ["ViT", "CNN"], [f"block {b}" for b in range(1, depth + 1)],
                                "log10(1 + 1000 x ERF / max): the tails")
    res.figures = [str(p.relative_to(ctx.out)) for p in (fig, logfig)]
    by = {(r["net"], r["block"]): r for r in res.rows}
    last_v, last_c = by[("vit", depth)], by[("cnn", depth)]
    res.claims = [
        claim(ctx, "", "ViT TRF global after one block (rfgraph TRF pass)",
              f"block 1 TRF: ViT {by[('vit', 1)]['trf']}, CNN {by[('cnn', 1)]['trf']}",
              by[("vit", 1)]["trf"] == "global", res.figures[0],
              paper="attention spans all tokens after one layer (review)"),
        claim(ctx, "", "how large is the ViT's ERF? (block by block)",
              "; ".join(f"block {b}: ViT {_sizes(by[('vit', b)])} vs CNN "
                        f"{_sizes(by[('cnn', b)])}" for b in range(1, depth + 1))
              + " (Luo size / r50 / share of pixels above 1% of the peak)", None, res.figures[1],
              paper="open question"),
        claim(ctx, "", "how Gaussian is the ViT's ERF?",
              f"R^2 at block {depth}: ViT {fmt(last_v['gauss_r2'])}, CNN "
              f"{fmt(last_c['gauss_r2'])}; mass outside the centre patch: ViT "
              f"{fmt(last_v['mass_outside_centre_patch'])}, CNN "
              f"{fmt(last_c['mass_outside_centre_patch'])}", None, res.figures[0],
              paper="open question"),
    ]
    res.notes.append("random init only: no trained ViT is shipped as ONNX by the packages used "
                     "here; a trained ViT may spread its attention differently")
    return finish(res, ctx, t0)
