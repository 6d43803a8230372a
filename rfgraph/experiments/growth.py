"""Luo et al. fig. 2: ERF size and ERF/TRF ratio against the number of layers, log-log, with the
fitted slopes (theory 0.5 and -0.5) and their 95% confidence intervals over seeds."""

from __future__ import annotations

import time

import numpy as np

import model_zoo

from . import plots
from .base import Context, Result, claim, finish, fmt, numeric_claim
from .fitting import SlopeFit, fit_slopes
from .measure import erf_of, record
from .registry import register

CHANNELS = 8  # channels per layer of the random nets: smoother averages than 1 (width unstated)
NAME = "growth"
SERIES = ("random", "relu")  # random linear stacks (the paper's fig. 2), and with ReLU (beyond)


def depths(ctx: Context) -> tuple[int, ...]:
    """Depths on the x axis (a geometric sequence so the log-log fit is balanced)."""
    return (3, 6, 12) if ctx.quick else (4, 8, 16, 32, 64)


def seeds(ctx: Context) -> int:
    """Independent seeds per depth (the slope CI is over them)."""
    return 3 if ctx.quick else 8


@register(NAME, "ERF size ~ sqrt(n), ERF/TRF ~ 1/sqrt(n)", "Luo et al. fig. 2, sec. 2.3")
def run(ctx: Context) -> Result:
    """ERF size and ERF/TRF per depth and seed; log-log slopes with CIs."""
    t0 = time.perf_counter()
    runs, ns, n_seeds = ctx.n_runs(20, 3), depths(ctx), seeds(ctx)
    res = Result(NAME, "Absolute growth and relative shrinkage of the ERF (fig. 2)",
                 f"3x3 stacks, {CHANNELS} channels, n in {list(ns)}; {n_seeds} seeds x {runs} "
                 f"runs (He "
                 f"weights and inputs redrawn per run); slope CI over seeds")
    folder = ctx.folder(NAME)
    size = {s: np.zeros((n_seeds, len(ns))) for s in SERIES}
    ratio = {s: np.zeros((n_seeds, len(ns))) for s in SERIES}
    jobs = [(s, k, i) for s in SERIES for k in range(n_seeds) for i in range(len(ns))]
    for s, k, i in ctx.bar(jobs, NAME):
        n = ns[i]
        m = erf_of(ctx, model_zoo.build(f"luo_conv_{s}_{n}:channels={CHANNELS}"), runs, redraw=True,
                   seed=10_000 * k + n)
        if k == 0:
            record(ctx, NAME, f"{s} n={n}", m)
        empty = m.metrics.erf_size <= 0  # the centre pixel got no gradient in any run (ReLU)
        size[s][k, i] = float("nan") if empty else m.metrics.erf_size
        ratio[s][k, i] = float("nan") if empty else m.metrics.erf_size / (2 * n + 1)
        res.rows.append({"series": s, "seed": k, "n": n, "trf": 2 * n + 1, "runs": runs,
                         "erf_size": m.metrics.erf_size, "erf_trf": m.metrics.erf_trf_ratio,
                         "gauss_sigma": m.sigma, "gauss_r2": m.r2})
    fits = {s: (_fit(ns, size[s]), _fit(ns, ratio[s])) for s in SERIES}
    for s in SERIES:
        for what, f in zip(("erf_size", "erf_trf"), fits[s]):
            res.rows.append({"series": s, "seed": "fit", "n": what, "slope": f.slope,
                             "ci_low": f.ci[0], "ci_high": f.ci[1],
                             "per_seed": " ".join(f"{v:.3f}" for v in f.per_seed)})
    f1 = plots.loglog(folder / "erf_size_vs_layers.png",
                      [(s, ns, size[s], *(_line(fits[s][0]))) for s in SERIES],
                      "number of layers", "ERF size (Luo, pixels)", "absolute growth")
    f2 = plots.loglog(folder / "erf_trf_ratio_vs_layers.png",
                      [(s, ns, ratio[s], *(_line(fits[s][1]))) for s in SERIES],
                      "number of layers", "ERF size / TRF size", "relative shrinkage")
    res.figures = [str(p.relative_to(ctx.out)) for p in (f1, f2)]
    res.claims = claims(ctx, fits, res.figures)
    res.notes.append("slopes of the seed-mean curve; the CI is the wider of a t interval over the "
                     "per-seed slopes and a bootstrap over seeds")
    return finish(res, ctx, t0)


def _fit(ns: tuple[int, ...], ys: np.ndarray) -> SlopeFit:
    """Slope fit; NaN entries (no ERF at the centre) are left out."""
    return fit_slopes(ns, ys)


def _line(f: SlopeFit) -> tuple[float, float]:
    """(slope, intercept) of a fit, for plotting."""
    return f.slope, f.intercept


def claims(ctx: Context, fits: dict[str, tuple[SlopeFit, SlopeFit]], figs: list[str]) -> list:
    """The two slopes against the paper's numbers, and their signs (robust at any size)."""
    (sz, ra), (sz_relu, ra_relu) = fits["random"], fits["relu"]
    return [
        numeric_claim(ctx, "log-log slope of ERF size", "log-log slope of ERF size vs layers",
                      sz.slope, 0.1, sz.ci, figure=figs[0]),
        numeric_claim(ctx, "log-log slope of ERF/TRF", "log-log slope of ERF/TRF vs layers",
                      ra.slope, 0.1, ra.ci, figure=figs[1]),
        claim(ctx, "", "ERF size grows with depth, ERF/TRF shrinks (random and random+ReLU)",
              f"size slopes {fmt(sz.slope)} / {fmt(sz_relu.slope)}; ratio slopes "
              f"{fmt(ra.slope)} / {fmt(ra_relu.slope)}",
              min(sz.slope, sz_relu.slope) > 0 and max(ra.slope, ra_relu.slope) < 0, figs[0],
              paper="ERF grows like sqrt(n), ERF/TRF shrinks like 1/sqrt(n) (sec. 2.3)"),
        numeric_claim(ctx, "log-log slope of ERF size", "with ReLU: log-log slope of ERF size",
                      sz_relu.slope, 0.1, sz_relu.ci, index=1, figure=figs[0],
                      note="compared with the theory's 0.5"),
    ]
