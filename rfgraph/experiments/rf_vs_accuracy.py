"""Araujo et al. 2019, "receptive fields of modern networks": ImageNet top-1 accuracy against the
receptive field size, with rfgraph's r for each TF-slim net of ``model_zoo`` (computed here) next to
the published r, and a fit acc = a + b ln r (the article's "logarithmic relationship").  The
accuracies and published r are read at run time from the reference data."""

from __future__ import annotations

import time

import numpy as np

import model_zoo

from .. import analyze
from . import plots
from .base import Claim, Context, Result, Verdict, claim, finish
from .registry import register

NAME = "rf-vs-accuracy"


def final_r(name: str) -> int | None:
    """rfgraph's r (axis 0) at the final end point of a zoo net (None when global or unknown)."""
    model = model_zoo.build(name)
    a = analyze(model)
    end = model_zoo.endpoints(model)[-1]
    if end not in a or a[end].is_global:
        return None
    r = a[end].r[0]
    return None if r is None else int(r)  # r is None only on a global axis, handled above


@register(NAME, "ImageNet accuracy vs receptive field size", "Araujo et al. 2019, modern networks")
def run(ctx: Context) -> Result:
    """rfgraph r per TF-slim net vs the published r and accuracy; log fit."""
    t0 = time.perf_counter()
    ref = ctx.reference
    res = Result(NAME, "ImageNet top-1 vs receptive field (Araujo et al.)",
                 "rfgraph TRF of the TF-slim nets of model_zoo; accuracies from "
                 "seeds/araujo2019_*.txt at run time")
    folder = ctx.folder(NAME)
    names = list(model_zoo.SLIM_MODELS)
    for n in ctx.bar(names, NAME):
        res.rows.append({"model": n, "r_rfgraph": final_r(n),
                         "r_published": ref.networks.get(n, {}).get("r"),
                         "top1": ref.accuracy.get(n)})
    bar = plots.bars(folder / "rf_per_net.png", [r["model"] for r in res.rows],
                     [r["r_rfgraph"] or 0 for r in res.rows], "r (rfgraph, pixels)",
                     "Receptive field of the final end point")
    res.figures.append(str(bar.relative_to(ctx.out)))
    agree = [r for r in res.rows if r["r_published"] is not None]
    same = [r for r in agree if r["r_rfgraph"] == r["r_published"]]
    if agree:
        res.claims.append(claim(ctx, "", "rfgraph's r = the published r of each net",
                                f"{len(same)} of {len(agree)} equal" + "".join(
                                    f"; {r['model']} {r['r_rfgraph']} vs {r['r_published']}"
                                    for r in agree if r not in same),
                                len(same) == len(agree),
                                paper="table 'receptive fields of modern networks'"))
    pts = [r for r in res.rows if r["top1"] is not None and r["r_rfgraph"]]
    if len(pts) >= 3:
        x = np.array([r["r_rfgraph"] for r in pts], float)
        y = np.array([r["top1"] for r in pts], float)
        b, a = np.polyfit(np.log(x), y, 1)
        corr_log = float(np.corrcoef(np.log(x), y)[0, 1])
        corr_lin = float(np.corrcoef(x, y)[0, 1])
        fig = plots.scatter(folder / "accuracy_vs_rf.png", list(x), list(y),
                            [r["model"] for r in pts], "receptive field r (rfgraph, pixels)",
                            "ImageNet top-1 (published)", "Accuracy vs receptive field",
                            fit=(float(a), float(b)), logx=True)
        res.figures.insert(0, str(fig.relative_to(ctx.out)))
        res.rows.append({"model": "(fit acc = a + b ln r)", "a": a, "b": b,
                         "pearson_log": corr_log, "pearson_linear": corr_lin})
        res.claims.append(claim(ctx, "", "accuracy grows logarithmically with r",
                                f"acc = {a:.3f} + {b:.4f} ln r; Pearson(acc, ln r) "
                                f"{corr_log:.3f} vs Pearson(acc, r) {corr_lin:.3f}; "
                                f"{len(pts)} nets",
                                b > 0 and corr_log > corr_lin and corr_log > 0.5,
                                res.figures[0],
                                paper="logarithmic relationship, diminishing returns (article)"))
    else:
        res.claims.append(Claim("accuracy grows logarithmically with r", "", "-",
                                Verdict.NO_REFERENCE, note="no accuracy table (seeds/araujo2019_"
                                "*.txt): only rfgraph's r is listed in the CSV"))
    return finish(res, ctx, t0)
