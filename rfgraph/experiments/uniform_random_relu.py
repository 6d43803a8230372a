"""Luo et al. fig. 1 left: ERFs of n stacked 3x3 convs (1 channel), n in {5, 10, 20, 40}, with
uniform (all-ones) kernels, random kernels, and random kernels + ReLU; the uniform case against
the closed form (multinomial coefficients, sec. 2.1) and eq. 11's standard deviation; and sec. 2.2:
for random linear stacks the gradient's second moment E[g^2] has exactly the uniform case's shape
(compared as distributions: total-variation distance and Pearson r)."""

from __future__ import annotations

import time

import numpy as np

import model_zoo

from . import plots
from .base import GAUSSIAN_R2, Context, Result, claim, finish, fmt
from .closed_form import embed, max_relative_error, uniform_erf_2d, uniform_std
from .measure import Measured, erf_of, normalised, record, token_erf
from .registry import register

CHANNELS = 8  # channels per layer of the random nets: smoother averages than 1 (width unstated)
NAME = "uniform-random-relu"
CASES = ("uniform", "random", "relu")
LABELS = {"uniform": "Uniform", "random": "Random", "relu": "Random + ReLU"}
K = 3


def layer_counts(ctx: Context) -> tuple[int, ...]:
    """Depths measured: the paper's four, or two in quick mode."""
    return (5, 10) if ctx.quick else (5, 10, 20, 40)


def measure_case(ctx: Context, case: str, n: int, runs: int) -> Measured:
    """The ERF of one stack: uniform weights are fixed (the ERF does not depend on the input), the
    random ones are redrawn (He normal) with the inputs at every run."""
    if case == "uniform":  # one channel: C channels of ones would scale the ERF by C^n
        return erf_of(ctx, model_zoo.build(f"luo_conv_{case}_{n}"), min(runs, 2), seed=n)
    model = model_zoo.build(f"luo_conv_{case}_{n}:channels={CHANNELS}")
    return erf_of(ctx, model, runs, redraw=True, seed=n)


def second_moment_vs_closed_form(ctx: Context, n: int,
                                 runs: int) -> tuple[np.ndarray, float, float]:
    """Sec. 2.2: E[g^2] of the random linear stack (weights redrawn per run) against the uniform
    closed form, both normalised to sum 1: (map, total-variation distance, Pearson r)."""
    side = 4 * n + 9  # conv_stack's default size for k = 3
    c = (side - 1) // 2

    def seed(shape: tuple[int, ...]) -> np.ndarray:
        """Seed 1 at the centre unit, every channel."""
        s = np.zeros(shape, np.float32)
        s[0, :, c, c] = 1
        return s

    var = token_erf(ctx, lambda w: model_zoo.build(f"luo_conv_random_{n}:channels={CHANNELS},"
                                                   f"seed={ctx.seed * 1000 + 500 + w}"),
                    "output", seed, runs, 1, seed=n, power=2)
    exact = embed(uniform_erf_2d(n, K), var.shape, (c, c))
    a, b = var / var.sum(), exact / exact.sum()
    return var, float(0.5 * np.abs(a - b).sum()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def closed_form_error(m: Measured, n: int) -> float:
    """Max relative difference between the measured uniform ERF and the exact outer product."""
    exact = embed(uniform_erf_2d(n, K), m.erf.shape, m.metrics.centre)
    return max_relative_error(m.erf / m.erf.max(), exact / exact.max())


@register(NAME, "ERF of uniform, random and random+ReLU conv stacks", "Luo et al. fig. 1 left")
def run(ctx: Context) -> Result:
    """ERF per case and depth; uniform vs closed form; E[g^2] vs closed form."""
    t0 = time.perf_counter()
    runs, ns = ctx.n_runs(20, 4), layer_counts(ctx)
    res = Result(NAME, "Uniform / random / random+ReLU 3x3 stacks (fig. 1 left)",
                 f"n in {list(ns)}; {CHANNELS} channels (uniform: 1); {runs} runs (E[g^2]: "
                 f"{ctx.n_runs(100, 16)}) (random: weights He-normal and "
                 f"Gaussian inputs redrawn per run; uniform: all-ones, deterministic)")
    folder = ctx.folder(NAME)
    found: dict[tuple[str, int], Measured] = {}
    for case, n in ctx.bar([(c, n) for c in CASES for n in ns], NAME):
        m = found[(case, n)] = measure_case(ctx, case, n, runs)
        record(ctx, NAME, f"{case} n={n}", m)
        err = closed_form_error(m, n) if case == "uniform" else None
        res.rows.append({"case": case, "n": n, "runs": m.runs, "trf": 2 * n + 1,
                         "erf_size": m.metrics.erf_size, "erf_trf": m.metrics.erf_trf_ratio,
                         "marginal_std": m.metrics.marginal_std[0],
                         "eq11_std": uniform_std(n, K), "gauss_sigma": m.sigma, "gauss_r2": m.r2,
                         "closed_form_max_rel_err": err})
    second: dict[int, np.ndarray] = {}
    m_runs = ctx.n_runs(100, 16)  # a second moment needs more draws than a mean
    for n in ctx.bar(ns, f"{NAME} E[g^2]"):
        second[n], tv, pearson = second_moment_vs_closed_form(ctx, n, m_runs)
        res.rows.append({"case": "random E[g^2]", "n": n, "runs": m_runs, "trf": 2 * n + 1,
                         "tv_vs_closed_form": tv, "pearson_vs_closed_form": pearson})
    fig = plots.heatmap_grid(folder / "erf_heatmaps.png",
                             [[found[(c, n)].erf for n in ns] for c in CASES],
                             [LABELS[c] for c in CASES], [f"{n} layers" for n in ns],
                             "ERF of the centre unit, 3x3 kernels")
    n_max = ns[-1]
    u = found[("uniform", n_max)]
    c = int(round(u.metrics.centre[0]))
    exact = embed(uniform_erf_2d(n_max, K), u.erf.shape, u.metrics.centre)
    prof = plots.profiles(folder / "uniform_vs_closed_form.png",
                          [("measured (uniform)", normalised(u.erf)[c], "o"),
                           ("closed form (sec. 2.1)", normalised(exact)[c], "-"),
                           ("random", normalised(found[("random", n_max)].erf)[c], "s-"),
                           ("random + ReLU", normalised(found[("relu", n_max)].erf)[c], "^-")],
                          f"centre row of the ERF, {n_max} layers")
    cv = (second[n_max].shape[0] - 1) // 2
    var_prof = plots.profiles(folder / "second_moment_vs_closed_form.png",
                              [("E[g^2], random weights", normalised(second[n_max])[cv], "o"),
                               ("closed form (uniform)", normalised(exact)[c], "-")],
                              f"sec. 2.2: centre row of E[g^2], {n_max} layers, {m_runs} runs")
    res.figures = [str(p.relative_to(ctx.out)) for p in (fig, prof, var_prof)]
    res.claims = claims(ctx, res.rows, ns, res.figures)
    return finish(res, ctx, t0)


def claims(ctx: Context, rows: list[dict], ns: tuple[int, ...], figs: list[str]) -> list:
    """Uniform = closed form; eq. 11; random Gaussian; ReLU less Gaussian."""
    by = {(r["case"], r["n"]): r for r in rows}
    err = max(by[("uniform", n)]["closed_form_max_rel_err"] for n in ns)
    std_dev = max(abs(by[("uniform", n)]["marginal_std"] / by[("uniform", n)]["eq11_std"] - 1)
                  for n in ns)
    r2_rand = [by[("random", n)]["gauss_r2"] or 0.0 for n in ns]
    r2_relu = [by[("relu", n)]["gauss_r2"] or 0.0 for n in ns]
    less = sum(a < b for a, b in zip(r2_relu, r2_rand))
    second = {r["n"]: r for r in rows if r["case"] == "random E[g^2]"}
    return [
        claim(ctx, "Var of gradient", "random weights: E[g^2] has the uniform case's shape",
              ", ".join(f"n={n}: TV {fmt(second[n]['tv_vs_closed_form'])}, r "
                        f"{fmt(second[n]['pearson_vs_closed_form'], 4)}" for n in ns),
              min(second[n]["pearson_vs_closed_form"] for n in ns) >= 0.95, figs[2],
              "match = Pearson r >= 0.95 with the closed form; TV falls as runs grow"),
        claim(ctx, "uniform kernels", "uniform kernels: ERF = multinomial coefficients, exactly",
              f"max relative error {err:.2e} (float32 rounding) over n = {list(ns)}", err < 1e-5,
              figs[1]),
        claim(ctx, "std of ERF for uniform", "uniform kernels: std = sqrt(n (k^2-1)/12) (eq. 11)",
              f"largest relative deviation {std_dev:.2e}", std_dev < 1e-3, figs[1]),
        claim(ctx, "random weights, no nonlinearity", "random weights, no nonlinearity: Gaussian",
              "Gaussian-fit R^2 " + ", ".join(f"n={n}: {fmt(v)}" for n, v in zip(ns, r2_rand)),
              min(r2_rand) >= GAUSSIAN_R2, figs[0], f"Gaussian = R^2 >= {GAUSSIAN_R2}"),
        claim(ctx, "ReLU / Tanh / Sigmoid", "random + ReLU: less Gaussian than random (fig. 1)",
              f"R^2 lower with ReLU at {less} of {len(ns)} depths: " +
              ", ".join(f"n={n}: {fmt(a)} vs {fmt(b)}" for n, a, b in zip(ns, r2_relu, r2_rand)),
              less > len(ns) / 2, figs[0]),
    ]
