"""How Gaussian is each ERF?  The R^2 of the 2-D axis-aligned Gaussian fit (``rfgraph.metrics``)
of every map the other experiments of this invocation measured, so that "near Gaussian" becomes a
number; run alone, it measures a small core set itself."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

import model_zoo

from . import plots
from .base import GAUSSIAN_R2, Context, Result, claim, finish, fmt
from .measure import erf_of, record
from .registry import register

NAME = "gaussianity"
LUO_EXPERIMENTS = ("uniform-random-relu", "nonlinearities", "growth", "subsample-dilation",
                   "skip-connections", "dropout")


def core_set(ctx: Context) -> None:
    """Measure a few of Luo's nets when no other experiment ran first."""
    runs, n = ctx.n_runs(20, 4), (10 if ctx.quick else 20)
    cases = [("uniform-random-relu", f"uniform n={n}", f"luo_conv_uniform_{n}", False)]
    cases += [("nonlinearities", f"{a} n={n}", f"luo_conv_{a}_{n}:channels=8", True)
              for a in ("random", "relu", "tanh", "sigmoid")]
    cases += [("subsample-dilation", v, (f"luo_conv15{'' if v == 'baseline' else '_' + v}:"
                "channels=8,size=80"), True) for v in ("baseline", "subsample", "dilation")]
    for exp, case, name, redraw in ctx.bar(cases, NAME):
        record(ctx, exp, case, erf_of(ctx, model_zoo.build(name), runs, redraw=redraw, seed=77))


@register(NAME, "Goodness of the Gaussian fit of every ERF", "Luo et al. sec. 2-3 (beyond)")
def run(ctx: Context) -> Result:
    """R^2 of every map recorded so far (or of a core set), per experiment and overall."""
    t0 = time.perf_counter()
    own = not ctx.maps
    if own:
        core_set(ctx)
    res = Result(NAME, "Gaussian goodness of fit per experiment",
                 "R^2 of the 2-D Gaussian fit of each ERF map measured "
                 + ("by this experiment (run alone)" if own else "by the experiments above"))
    folder = ctx.folder(NAME)
    groups: dict[str, list[float]] = defaultdict(list)
    for rec in ctx.maps:
        if rec.experiment == NAME:
            continue
        res.rows.append({"experiment": rec.experiment, "case": rec.case, "gauss_r2": rec.r2,
                         "gauss_sigma": rec.sigma, "erf_size": rec.erf_size})
        groups[rec.experiment].append(rec.r2 if rec.r2 is not None else float("nan"))
    labels = [f"{r['experiment']}: {r['case']}" for r in res.rows]
    fig = plots.bars(folder / "gaussian_r2.png", labels, [r["gauss_r2"] for r in res.rows],
                     "R^2 of the 2-D Gaussian fit", "How Gaussian is each ERF?",
                     groups=[r["experiment"] for r in res.rows])
    res.figures = [str(fig.relative_to(ctx.out))]
    for exp, vals in groups.items():
        v = np.asarray(vals, float)
        res.rows.append({"experiment": exp, "case": "(median)", "gauss_r2": float(np.nanmedian(v)),
                         "share_gaussian": float(np.mean(v >= GAUSSIAN_R2))})
    luo = [x for e in LUO_EXPERIMENTS for x in groups.get(e, [])]
    share = float(np.mean(np.asarray(luo) >= GAUSSIAN_R2)) if luo else float("nan")
    res.claims.append(claim(ctx, "ReLU / Tanh / Sigmoid", "Luo's conv nets: ERFs near Gaussian",
                            f"{fmt(100 * share)}% of {len(luo)} maps with R^2 >= {GAUSSIAN_R2}; "
                            "median R^2 per experiment: " + ", ".join(
                                f"{e} {fmt(float(np.nanmedian(groups[e])))}"
                                for e in LUO_EXPERIMENTS if e in groups),
                            share >= 0.75 if luo else None, res.figures[0],
                            "match = at least 75% of the maps Gaussian"))
    for e in ("trained-vs-init", "cnn-vs-transformer"):
        if e in groups:
            res.claims.append(claim(ctx, "", f"{e}: how Gaussian", "R^2 " + ", ".join(
                f"{r['case']} {fmt(r['gauss_r2'])}" for r in res.rows
                if r["experiment"] == e and r["case"] != "(median)"), None, res.figures[0],
                paper="not in the paper"))
    return finish(res, ctx, t0)
