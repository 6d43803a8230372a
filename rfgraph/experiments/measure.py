"""ERF measurement for the experiments, on top of ``rfgraph.erf.compute_erf`` (Luo sec. 3: seed 1
at the centre output unit, |input gradient| summed over channels, averaged over runs).

A "run" redraws the inputs, and the weights too where the experiment says so (``redraw``): the
weights are then He-normal draws, one per run (Luo's "different random seed" per run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..erf import compute_erf
from ..metrics import ERFMetrics, compute_metrics
from .base import Context, MapRecord


@dataclass(frozen=True)
class Measured:
    """An averaged ERF map with its metrics (``trf`` per axis, None when global)."""

    erf: np.ndarray
    metrics: ERFMetrics
    runs: int
    seconds: float

    @property
    def r2(self) -> float | None:
        """R^2 of the Gaussian fit (None when the map is empty)."""
        g = self.metrics.gaussian
        return None if g is None else float(g.r2)

    @property
    def sigma(self) -> float | None:
        """1-sigma radius of the Gaussian fit (None when the map is empty)."""
        g = self.metrics.gaussian
        return None if g is None else float(g.radius)


def erf_of(ctx: Context, model: onnx.ModelProto | str, runs: int, *, redraw: bool = False,
           output: str | None = None, input_shape: Sequence[int] | None = None, seed: int = 0,
           unit: Sequence[int] | None = None, reinit: str | None = None) -> Measured:
    """The ERF of the centre unit of ``output``, averaged over ``runs`` inputs; with ``redraw``
    each run also redraws the weights (``reinit``, He by default)."""
    t0 = time.perf_counter()
    kwargs = {"input_shape": input_shape, "unit": unit, "seed": ctx.seed * 1000 + seed,
              "threads": ctx.threads}
    if redraw:
        res = compute_erf(model, output, runs=1, weight_runs=runs, reinit=reinit or "he",
                          batch=1, **kwargs)  # type: ignore[arg-type]
    else:
        res = compute_erf(model, output, runs=runs, reinit=reinit or "none",
                          batch=min(8, runs), **kwargs)  # type: ignore[arg-type]
    return Measured(res.erf, res.metrics, runs, time.perf_counter() - t0)


def erf_over_models(ctx: Context, models: Iterable[onnx.ModelProto], runs_per_model: int = 1,
                    output: str | None = None, seed: int = 0) -> Measured:
    """The ERF averaged over several models (one graph per weight/mask draw) and their inputs."""
    t0 = time.perf_counter()
    total: np.ndarray | None = None
    count, target = 0, None
    for i, model in enumerate(models):
        res = compute_erf(model, output, runs=runs_per_model, seed=ctx.seed * 1000 + seed + i,
                          batch=1, threads=ctx.threads)
        total = res.erf * runs_per_model if total is None else total + res.erf * runs_per_model
        count += runs_per_model
        target = res.target
    if total is None or target is None:
        raise ValueError("no model to measure")
    erf = total / count
    return Measured(erf, compute_metrics(erf, target.centre, target.trf_size), count,
                    time.perf_counter() - t0)


def token_erf(ctx: Context, make: Callable[[int], onnx.ModelProto], output: str,
              seed_at: Callable[[tuple[int, ...]], np.ndarray], weight_runs: int,
              runs: int, seed: int = 0, power: int = 1) -> np.ndarray:
    """|d(seed . y)/dx|^power summed over channels and averaged, for a seed that ``compute_erf``
    cannot place (one token of a (1, N, D) tensor) or a moment it does not compute (power 2: the
    gradient's second moment, Luo sec. 2.2): the VJP graph of ``rfgraph.vjp`` used directly."""
    from .. import vjp

    rng = np.random.default_rng(ctx.seed * 1000 + seed)
    total = None
    for w in range(weight_runs):
        model = make(w)
        graph = vjp.build_vjp(model, output)
        sess = vjp.session(graph, threads=ctx.threads)
        seed_arr = seed_at(graph.output_shape).astype(graph.dtype)
        for _ in range(runs):
            x = rng.standard_normal(graph.input_shape).astype(graph.dtype)
            grad = vjp.input_gradient(graph, sess, x, seed_arr).astype(np.float64)
            g = (np.abs(grad) ** power).sum(axis=(0, 1))
            total = g if total is None else total + g
    assert total is not None
    return total / (weight_runs * runs)


def record(ctx: Context, experiment: str, case: str, m: Measured) -> None:
    """Keep a map for the gaussianity summary."""
    ctx.maps.append(MapRecord(experiment, case, m.erf, m.r2, m.sigma, float(m.metrics.erf_size)))


def trf_png(ctx: Context, path: Path, m: Measured, title: str) -> str:
    """The map with its TRF box (``rfgraph.heatmap``, log colours), path relative to ``ctx.out``."""
    from ..heatmap import render_png

    region = None
    if m.metrics.trf_size is not None:
        region = [(int(round(c - (r - 1) / 2)), int(round(c + (r - 1) / 2)))
                  for c, r in zip(m.metrics.centre, m.metrics.trf_size)]
    return str(render_png(m.erf, path, region, log=True, title=title).relative_to(ctx.out))


def normalised(erf: np.ndarray) -> np.ndarray:
    """The map scaled to max 1 (zeros stay zeros)."""
    top = float(np.abs(erf).max())
    return erf / top if top > 0 else erf


def excess_kurtosis(erf: np.ndarray, axis: int = 0) -> float:
    """Excess kurtosis of the map's 1-D marginal along ``axis``: 0 for a Gaussian profile, -1.2 for
    a flat (box, "rectangular") profile."""
    other = tuple(a for a in range(erf.ndim) if a != axis)
    m = erf.sum(axis=other) if other else erf
    p = np.arange(m.size, dtype=float)
    w = m / m.sum()
    mu = (w * p).sum()
    var = (w * (p - mu) ** 2).sum()
    return float((w * (p - mu) ** 4).sum() / var ** 2 - 3.0) if var > 0 else float("nan")


def blur(erf: np.ndarray, width: int = 3, passes: int = 2) -> np.ndarray:
    """A separable box blur (``passes`` times, ~Gaussian) that fills the holes of dilated ERFs."""
    kernel = np.ones(width) / width
    out = erf.astype(float)
    for _ in range(passes):
        for ax in range(out.ndim):
            out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), ax, out)
    return out


def corner_ratio(erf: np.ndarray, fraction: float = 0.9545) -> float:
    """Shape of the ERF region (pixels of the blurred map above (1 - fraction) x its peak): the
    largest Euclidean distance from the peak over the largest Chebyshev one; 1 for a disc,
    sqrt(2) for a square ("rectangular" ERF), below 1 never."""
    m = blur(np.abs(erf))
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    pts = np.argwhere(m > (1 - fraction) * m.max()) - np.asarray(peak)
    cheb = np.abs(pts).max(axis=1)
    if cheb.max() == 0:
        return float("nan")
    return float(np.sqrt((pts ** 2).sum(axis=1)).max() / cheb.max())
