"""Luo et al. fig. 1 right: 20 random 3x3 conv layers with ReLU, Tanh or Sigmoid, ERF averaged over
100 runs that redraw the weights and the inputs; how Gaussian each ERF is."""

from __future__ import annotations

import time

import model_zoo

from . import plots
from .base import GAUSSIAN_R2, Context, Result, claim, finish, fmt
from .measure import erf_of, normalised, record
from .registry import register

CHANNELS = 8  # channels per layer of the random nets: smoother averages than 1 (width unstated)
NAME = "nonlinearities"
ACTS = ("relu", "tanh", "sigmoid")


@register(NAME, "ERF with ReLU, Tanh and Sigmoid", "Luo et al. fig. 1 right")
def run(ctx: Context) -> Result:
    """ERF of the 20-layer stack per nonlinearity; R^2 of the Gaussian fit."""
    t0 = time.perf_counter()
    runs = ctx.n_runs(100, 8)
    n = 10 if ctx.quick else 20
    res = Result(NAME, f"{n} random 3x3 layers with ReLU / Tanh / Sigmoid (fig. 1 right)",
                 f"{n} layers, {CHANNELS} channels, {runs} runs (He-normal weights and Gaussian "
                 f"inputs "
                 f"redrawn per run)")
    folder = ctx.folder(NAME)
    maps, r2 = [], {}
    for act in ctx.bar(ACTS, NAME):
        model = model_zoo.build(f"luo_conv_{act}_{n}:channels={CHANNELS}")
        m = erf_of(ctx, model, runs, redraw=True, seed=7)
        record(ctx, NAME, f"{act} n={n}", m)
        maps.append(m.erf)
        r2[act] = m.r2 or 0.0
        res.rows.append({"activation": act, "n": n, "runs": runs, "erf_size": m.metrics.erf_size,
                         "erf_trf": m.metrics.erf_trf_ratio, "gauss_sigma": m.sigma,
                         "gauss_r2": m.r2, "marginal_std": m.metrics.marginal_std[0]})
    fig = plots.heatmap_grid(folder / "erf_nonlinearities.png", [maps], [f"{n} layers"],
                             [a.capitalize() for a in ACTS], f"ERF, {runs} runs")
    c = (maps[0].shape[0] - 1) // 2
    prof = plots.profiles(folder / "profiles.png",
                          [(a, normalised(m)[c], "o-") for a, m in zip(ACTS, maps)],
                          "centre row of each ERF")
    res.figures = [str(p.relative_to(ctx.out)) for p in (fig, prof)]
    measured = ", ".join(f"{a}: R^2 {fmt(r2[a])}" for a in ACTS)
    res.claims = [
        claim(ctx, "ReLU / Tanh / Sigmoid", "all three near-Gaussian", measured,
              min(r2.values()) >= GAUSSIAN_R2, res.figures[0],
              f"near-Gaussian = Gaussian-fit R^2 >= {GAUSSIAN_R2}"),
        claim(ctx, "ReLU / Tanh / Sigmoid", "ReLU the least Gaussian", measured,
              r2["relu"] <= min(r2["tanh"], r2["sigmoid"]), res.figures[0]),
    ]
    return finish(res, ctx, t0)
