"""Luo et al. sec. 4.1, "New Initialization": He weights whose kernel taps get a variance growing
from the centre outward (``--reinit periphery:S``), and the extreme that maximises the variance of
Eq. 10, all weight on the kernel's corners (``--reinit corners``), widen the ERF at init.

For linear stacks the expected squared gradient is exactly the n-fold convolution of the taps'
variance shares (sec. 2.2's variance analysis: weights independent, zero mean), so its per-axis
variance is n Var[X] with p(X = offset) the normalised shares (Eq. 10): the closed form the
measurement (mean of g^2 over weight draws) is compared with.  A ResNet at init (ReLU, BN) has no
closed form: only the measured widening is reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

import model_zoo

from .. import erf_conventions as ec
from ..erf import compute_erf
from ..inputs import WeightInit, tap_variances
from . import plots
from .base import Claim, Context, Result, claim, finish, fmt
from .measure import erf_of
from .registry import register

NAME = "new-init"
INITS = ("he", "periphery:1", "periphery:4", "corners")
KERNEL = 3
CHANNELS = 8  # as in the growth experiment: smoother averages than 1 channel
SQUARED = ec.ERFConventions(aggregation=ec.Aggregation.SQUARE, runs=1)


def depths(ctx: Context) -> tuple[int, ...]:
    """Depths of the linear stacks."""
    return (4, 8) if ctx.quick else (4, 8, 16, 32)


def closed_form_variance(n: int, init: str, kernel: int = KERNEL) -> float:
    """Eq. 10: per-axis variance n Var[X] of the n-fold convolution of the taps' variance shares
    (square kernels: both axes alike)."""
    share = tap_variances((kernel, kernel), WeightInit.parse(init))
    marginal = share.sum(axis=1) / share.sum()
    offsets = np.arange(kernel) - (kernel - 1) / 2
    mean = float((marginal * offsets).sum())
    return n * float((marginal * (offsets - mean) ** 2).sum())


def map_variance(erf: np.ndarray) -> float:
    """The per-axis variance of a map read as a distribution over input pixels, averaged over
    the axes (the measured counterpart of ``closed_form_variance``)."""
    p = erf / erf.sum()
    out = []
    for axis in range(p.ndim):
        marginal = p.sum(axis=tuple(a for a in range(p.ndim) if a != axis))
        x = np.arange(marginal.size)
        mean = (marginal * x).sum()
        out.append(float((marginal * (x - mean) ** 2).sum()))
    return float(np.mean(out))


def linear_stack(ctx: Context, n: int, init: str, draws: int, seed: int) -> tuple[np.ndarray, dict]:
    """The E[g^2] map of a linear stack's centre unit over ``draws`` weight draws, and its row."""
    model = model_zoo.build(f"luo_conv_random_{n}:channels={CHANNELS}")
    res = compute_erf(model, runs=1, weight_runs=draws, reinit=init, conventions=SQUARED,
                      batch=1, seed=ctx.seed * 1000 + seed, threads=ctx.threads)
    measured, closed = map_variance(res.erf), closed_form_variance(n, init)
    g = res.metrics.gaussian
    return res.erf, {"net": "linear", "n": n, "init": init, "draws": draws,
                     "variance_measured": measured, "variance_eq10": closed,
                     "measured_over_eq10": measured / closed,
                     "sigma_measured": float(np.sqrt(measured)),
                     "gauss_sigma": None if g is None else g.radius, "erf_size": res.metrics.erf_size}


@register(NAME, "Periphery-weighted and 4-corner initialisations widen the ERF",
          "Luo et al. sec. 4.1 (New Initialization), Eq. 10")
def run(ctx: Context) -> Result:
    """Linear stacks per depth and init against Eq. 10; a ResNet at init per init."""
    t0 = time.perf_counter()
    draws, ns = ctx.n_runs(100, 20), depths(ctx)
    res = Result(NAME, "Luo's new initialisation (sec. 4.1)",
                 f"linear {KERNEL}x{KERNEL} stacks, {CHANNELS} channels, n in {list(ns)}: E[g^2] over "
                 f"{draws} weight draws per init ({', '.join(INITS)}); ResNet (luo_cifar_resnet) at init: "
                 f"|g| over {draws} weight and input draws")
    folder = ctx.folder(NAME)
    maps: dict[tuple[int, str], np.ndarray] = {}
    jobs = [(n, init) for n in ns for init in INITS]
    for i, (n, init) in enumerate(ctx.bar(jobs, NAME)):
        maps[n, init], row = linear_stack(ctx, n, init, draws, seed=i)
        res.rows.append(row)
    _add_ratios(res.rows)
    resnet = _resnet_rows(ctx, draws)
    res.rows += resnet
    figs = _figures(ctx, folder, res.rows, maps, ns)
    res.figures = figs
    res.claims = _claims(ctx, res.rows, resnet, figs)
    res.notes.append("variance shares of a tap at normalised squared distance d2 from the kernel centre: "
                     "1 + S d2 for periphery:S, only the corners for 'corners'; every init keeps He's "
                     "total variance, so only the spatial spread changes")
    res.notes.append("'corners' moves by +-1 pixel per layer along each axis, so after n layers it reaches "
                     "only the pixels whose offsets have n's parity: the map is a lattice with every other "
                     "pixel 0 (see maps.png). Its spread is the widest, but Luo's size, read at the centre "
                     "pixel, collapses (0 when the centre is off the lattice): the paper's 'too aggressive'")
    return finish(res, ctx, t0)


def _add_ratios(rows: list[dict]) -> None:
    """Each linear row's sigma over He's at the same depth."""
    he = {r["n"]: r["sigma_measured"] for r in rows if r["init"] == "he"}
    for r in rows:
        r["sigma_over_he"] = r["sigma_measured"] / he[r["n"]]


def _resnet_rows(ctx: Context, draws: int) -> list[dict]:
    """Luo's CIFAR ResNet at init under each init: Gaussian sigma and Luo's size, ratio to He."""
    rows = []
    for i, init in enumerate(ctx.bar(INITS, f"{NAME} resnet")):
        m = erf_of(ctx, model_zoo.build("luo_cifar_resnet"), draws, redraw=True, reinit=init, seed=100 + i)
        rows.append({"net": "resnet", "n": None, "init": init, "draws": draws, "gauss_sigma": m.sigma,
                     "erf_size": m.metrics.erf_size, "sigma_measured": float(np.sqrt(map_variance(m.erf)))})
    he = rows[0]["sigma_measured"]
    for r in rows:
        r["sigma_over_he"] = r["sigma_measured"] / he
    return rows


def _figures(ctx: Context, folder, rows: list[dict], maps: dict, ns: Sequence[int]) -> list[str]:
    """Sigma vs depth (measured points, Eq. 10 lines) and the deepest maps side by side."""
    curves = []
    for init in INITS:
        lin = [r for r in rows if r["net"] == "linear" and r["init"] == init]
        curves.append((init, [r["n"] for r in lin], [r["sigma_measured"] for r in lin],
                       [float(np.sqrt(r["variance_eq10"])) for r in lin]))
    f1 = plots.measured_vs_closed_form(folder / "sigma_vs_depth.png", curves, "number of layers",
                                       "per-axis std of E[g^2] (input pixels)",
                                       "new initialisation: points measured, lines Eq. 10")
    deepest = max(ns)
    f2 = plots.heatmap_grid(folder / "maps.png", [[maps[deepest, init] for init in INITS]],
                            [f"linear n={deepest}"], list(INITS),
                            f"E[g^2] at init, n={deepest}")
    return [str(p.relative_to(ctx.out)) for p in (f1, f2)]


def _claims(ctx: Context, rows: list[dict], resnet: list[dict], figs: list[str]) -> list[Claim]:
    """Widening, the corners' maximum, Eq. 10's agreement, and the ResNet (beyond the paper)."""
    lin = [r for r in rows if r["net"] == "linear"]
    per = [r for r in lin if r["init"] == "periphery:4"]
    corners = [r for r in lin if r["init"] == "corners"]
    widest = all(c["sigma_measured"] >= max(r["sigma_measured"] for r in lin if r["n"] == c["n"]) for c in corners)
    worst = max(abs(r["measured_over_eq10"] - 1) for r in lin)
    tol = 0.15 if ctx.quick else 0.08
    return [
        claim(ctx, "", "periphery-weighted scaling widens the ERF at init (linear stacks, every depth)",
              "sigma / He: " + ", ".join(f"n={r['n']}: {fmt(r['sigma_over_he'])}" for r in per),
              all(r["sigma_over_he"] > 1 for r in per), figs[0],
              paper="centre weights at a smaller scale, the outside larger, diffuse the ERF outward (sec. 4.1)"),
        claim(ctx, "", "all weight at the kernel's 4 corners maximises the variance of Eq. 10 (widest ERF)",
              "corners / He: " + ", ".join(f"n={r['n']}: {fmt(r['sigma_over_he'])}" for r in corners),
              widest, figs[0], paper="the optimum of Eq. 10's variance puts the weights at the 4 corners"),
        claim(ctx, "", "linear stacks: measured variance of E[g^2] = n Var[X] of Eq. 10",
              f"largest |measured / Eq. 10 - 1| = {fmt(worst)} (tolerance {tol:g}, sampling noise of the "
              f"weight draws)", worst <= tol, figs[0], paper="Var[S_n] = n Var[X] (Eq. 10)"),
        claim(ctx, "", "a ResNet at init (ReLU, BN): the same widening (beyond the paper)",
              ", ".join(f"{r['init']}: {fmt(r['sigma_over_he'])}" for r in resnet[1:]) + " x He's sigma",
              None, figs[0], paper="(not studied in the paper)"),
    ]
