"""Luo et al. sec. 3.1: a 15-layer 3x3 conv net (ReLU), 3 of its layers made stride 2
("Subsample") or dilated by 2, 4, 8 ("Dilation"); both enlarge the ERF, dilation's is rectangular.

"Rectangular" is measured by ``corner_ratio``: on the (blurred) ERF region, the largest Euclidean
distance from the peak over the largest Chebyshev one, 1 for a disc and sqrt(2) for a square; the
marginal's excess kurtosis (0 Gaussian, -1.2 flat box) is reported too.
"""

from __future__ import annotations

import time

import model_zoo

from . import plots
from .base import Context, Result, claim, finish, fmt
from .measure import Measured, corner_ratio, erf_of, excess_kurtosis, normalised, record, trf_png
from .registry import register

NAME = "subsample-dilation"
VARIANTS = ("baseline", "subsample", "dilation")
CHANNELS = 8  # smoother averages than 1 channel (the paper does not state its width)


def zoo_name(variant: str) -> str:
    """The model_zoo name of a conv15 variant."""
    return "luo_conv15" if variant == "baseline" else f"luo_conv15_{variant}"


@register(NAME, "Subsampling and dilation enlarge the ERF", "Luo et al. sec. 3.1")
def run(ctx: Context) -> Result:
    """ERF of the three 15-layer variants: size, TRF ratio and shape."""
    t0 = time.perf_counter()
    runs = ctx.n_runs(20, 4)
    size = 80 if ctx.quick else 96
    res = Result(NAME, "15-layer baseline vs 3 stride-2 layers vs dilations 2, 4, 8 (sec. 3.1)",
                 f"15 3x3 layers + ReLU, {CHANNELS} channels, input {size}x{size}, layers 5, "
                 f"10, 15 "
                 f"changed; {runs} runs (weights and inputs redrawn)")
    folder = ctx.folder(NAME)
    found: dict[str, Measured] = {}
    for v in ctx.bar(VARIANTS, NAME):
        model = model_zoo.build(f"{zoo_name(v)}:size={size},channels={CHANNELS}")
        m = found[v] = erf_of(ctx, model, runs,
                              redraw=True, seed=31)
        record(ctx, NAME, v, m)
        res.rows.append({"variant": v, "runs": runs, "trf": m.metrics.trf_size[0]
                         if m.metrics.trf_size else None, "erf_size": m.metrics.erf_size,
                         "erf_trf": m.metrics.erf_trf_ratio, "gauss_sigma": m.sigma,
                         "gauss_r2": m.r2, "marginal_std": m.metrics.marginal_std[0],
                         "excess_kurtosis": excess_kurtosis(m.erf),
                         "corner_ratio": corner_ratio(m.erf)})
    fig = plots.heatmap_grid(folder / "erf_subsample_dilation.png",
                             [[found[v].erf for v in VARIANTS]], ["15 layers"],
                             ["Baseline", "Subsample", "Dilation"], f"ERF, {runs} runs")
    c = [(found[v].erf.shape[0] - 1) // 2 for v in VARIANTS]
    prof = plots.profiles(folder / "profiles.png",
                          [(v, normalised(found[v].erf)[ci], "o-") for v, ci in zip(VARIANTS, c)],
                          "centre row of each ERF")
    res.figures = [str(p.relative_to(ctx.out)) for p in (fig, prof)]
    res.figures += [trf_png(ctx, folder / f"erf_trf_{v}.png", found[v],
                            f"{v}: ERF (log colours) and TRF box") for v in VARIANTS]
    by = {r["variant"]: r for r in res.rows}
    base = by["baseline"]
    grow = {v: by[v]["erf_size"] / base["erf_size"] if base["erf_size"] else float("inf")
            for v in ("subsample", "dilation")}
    res.claims = [
        claim(ctx, "15 conv layers baseline", "subsample and dilation both enlarge the ERF",
              f"ERF size {fmt(base['erf_size'])} -> subsample {fmt(by['subsample']['erf_size'])} "
              f"(x{fmt(grow['subsample'])}), dilation {fmt(by['dilation']['erf_size'])} "
              f"(x{fmt(grow['dilation'])})", min(grow.values()) > 1.5, res.figures[0],
              "'much larger' = more than 1.5x the baseline's Luo size"),
        claim(ctx, "15 conv layers baseline", "dilation ERF rectangular (squarer than the others)",
              "corner ratio " + ", ".join(f"{v} {fmt(by[v]['corner_ratio'])}" for v in VARIANTS),
              by["dilation"]["corner_ratio"] > max(by["baseline"]["corner_ratio"],
                                                   by["subsample"]["corner_ratio"]),
              res.figures[0], "max L2 / max Linf distance of the ERF region: disc 1, square 1.41"),
    ]
    return finish(res, ctx, t0)
