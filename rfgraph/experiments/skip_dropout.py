"""Luo et al. sec. 2.5 and appendix: skip connections make the ERF smaller; dropout does not change
its Gaussian shape.  Plain vs residual 3x3 stacks of equal depth, and a plain stack with and
without dropout (p = 0.5, a new mask per run), weights and inputs redrawn per run."""

from __future__ import annotations

import time

import numpy as np

from . import plots
from .base import GAUSSIAN_R2, Context, Result, claim, finish, fmt
from .measure import Measured, erf_over_models, normalised, record
from .nets import stack
from .registry import register

SKIP = "skip-connections"
DROPOUT = "dropout"
CHANNELS = 8
P_DROP = 0.5


def block_counts(ctx: Context) -> tuple[int, ...]:
    """Residual blocks per stack (two convs each)."""
    return (2, 4) if ctx.quick else (2, 4, 8)


def measure(ctx: Context, blocks: int, residual: bool, runs: int, dropout: float = 0.0,
            seed: int = 0) -> Measured:
    """ERF over ``runs`` builds (new weights, mask and input each)."""
    models = (stack(blocks, residual, CHANNELS, seed=seed + i, dropout=dropout)
              for i in range(runs))
    return erf_over_models(ctx, models, 1, seed=seed)


@register(SKIP, "Skip connections make the ERF smaller", "Luo et al. sec. 2.5, appendix")
def run_skip(ctx: Context) -> Result:
    """Plain vs residual stacks of equal depth: Luo size and Gaussian sigma."""
    t0 = time.perf_counter()
    runs, bs = ctx.n_runs(20, 4), block_counts(ctx)
    res = Result(SKIP, "Residual vs plain stacks of equal depth (sec. 2.5)",
                 f"blocks of two 3x3 convs + ReLU, {CHANNELS} channels, blocks in {list(bs)} "
                 f"(conv depth {[2 * b for b in bs]}); {runs} runs (He weights, inputs redrawn)")
    folder = ctx.folder(SKIP)
    found: dict[tuple[str, int], Measured] = {}
    for kind, blocks in ctx.bar([(k, b) for k in ("plain", "residual") for b in bs], SKIP):
        m = found[(kind, blocks)] = measure(ctx, blocks, kind == "residual", runs,
                                            seed=100 * blocks)
        record(ctx, SKIP, f"{kind} {2 * blocks} convs", m)
        res.rows.append({"net": kind, "blocks": blocks, "conv_layers": 2 * blocks,
                         "trf": 4 * blocks + 1, "runs": runs, "erf_size": m.metrics.erf_size,
                         "erf_trf": m.metrics.erf_trf_ratio, "gauss_sigma": m.sigma,
                         "gauss_r2": m.r2, "marginal_std": m.metrics.marginal_std[0]})
    fig = plots.heatmap_grid(folder / "erf_plain_vs_residual.png",
                             [[found[(k, b)].erf for b in bs] for k in ("plain", "residual")],
                             ["plain", "residual"], [f"{2 * b} conv layers" for b in bs],
                             f"ERF, {runs} runs")
    res.figures = [str(fig.relative_to(ctx.out))]
    smaller = [found[("residual", b)].metrics.erf_size < found[("plain", b)].metrics.erf_size
               for b in bs]
    sig = [(found[("residual", b)].sigma or 0) < (found[("plain", b)].sigma or 0) for b in bs]
    res.claims = [
        claim(ctx, "skip connections", "residual ERF smaller than plain (Luo size)",
              ", ".join(f"{2 * b} convs: {fmt(found[('residual', b)].metrics.erf_size)} vs "
                        f"{fmt(found[('plain', b)].metrics.erf_size)}" for b in bs),
              all(smaller), res.figures[0]),
        claim(ctx, "skip connections", "residual ERF smaller than plain (Gaussian sigma)",
              ", ".join(f"{2 * b} convs: {fmt(found[('residual', b)].sigma)} vs "
                        f"{fmt(found[('plain', b)].sigma)}" for b in bs), all(sig),
              res.figures[0]),
    ]
    return finish(res, ctx, t0)


@register(DROPOUT, "Dropout does not change the Gaussian ERF shape",
          "Luo et al. sec. 2.5, appendix")
def run_dropout(ctx: Context) -> Result:
    """The same stack, weights and inputs with and without dropout."""
    t0 = time.perf_counter()
    runs = ctx.n_runs(20, 4)
    blocks = 2 if ctx.quick else 5
    res = Result(DROPOUT, "Dropout on / off (sec. 2.5)",
                 f"plain stack of {2 * blocks} 3x3 convs + ReLU, {CHANNELS} channels, dropout "
                 f"p={P_DROP} after every ReLU (training mode, new mask per run); {runs} runs")
    folder = ctx.folder(DROPOUT)
    off = measure(ctx, blocks, False, runs, 0.0, seed=500)
    on = measure(ctx, blocks, False, runs, P_DROP, seed=500)
    for label, m in (("off", off), ("on", on)):
        record(ctx, DROPOUT, f"dropout {label}", m)
        res.rows.append({"dropout": label, "p": P_DROP if label == "on" else 0.0,
                         "conv_layers": 2 * blocks, "runs": runs, "erf_size": m.metrics.erf_size,
                         "gauss_sigma": m.sigma, "gauss_r2": m.r2,
                         "marginal_std": m.metrics.marginal_std[0]})
    diff = float(np.abs(normalised(on.erf) / normalised(on.erf).sum()
                        - normalised(off.erf) / normalised(off.erf).sum()).sum())
    res.rows.append({"dropout": "on vs off", "l1_distance_normalised": diff})
    fig = plots.heatmap_grid(folder / "erf_dropout.png", [[off.erf, on.erf]], [""],
                             ["dropout off", f"dropout p={P_DROP}"], f"ERF, {runs} runs")
    c = (off.erf.shape[0] - 1) // 2
    prof = plots.profiles(folder / "profiles.png", [("off", normalised(off.erf)[c], "o-"),
                                                    ("on", normalised(on.erf)[c], "s-")],
                          "centre row")
    res.figures = [str(p.relative_to(ctx.out)) for p in (fig, prof)]
    ratio = (on.sigma or 0) / (off.sigma or 1)
    r2_on, r2_off = on.r2 or 0.0, off.r2 or 0.0
    res.claims = [
        claim(ctx, "dropout", "dropout keeps the Gaussian shape",
              f"R^2 {fmt(r2_on)} (on) vs {fmt(r2_off)} (off); sigma ratio on/off {fmt(ratio)}; "
              f"L1 distance of the normalised maps {fmt(diff)}",
              min(r2_on, r2_off) >= GAUSSIAN_R2 and abs(ratio - 1) < 0.2, res.figures[1],
              f"same shape = both R^2 >= {GAUSSIAN_R2} and sigma within 20%"),
    ]
    return finish(res, ctx, t0)
