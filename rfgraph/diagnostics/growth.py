"""ERF growth: ERF/TRF ratio per end point and the layer after which the ERF stops growing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Analysis
from .coverage import layers

ERF_PLATEAU_TOL = 0.05  # the ERF "stops growing" once later layers add less than 5% to its size


@dataclass(frozen=True)
class ERFPoint:
    """ERF of the centre unit of one tensor: Luo size, extent, TRF size and ratio."""

    tensor: str
    erf_size: float
    erf_extent: tuple[int, ...]
    trf: tuple[int, ...] | None
    ratio: float | None


@dataclass(frozen=True)
class ERFGrowth:
    """ERF along the layers leading to an end point, and where it stops growing."""

    endpoint: str
    points: tuple[ERFPoint, ...]
    plateau: str | None  # first tensor after which the ERF grows by <= ERF_PLATEAU_TOL
    error: str = ""

    @property
    def final(self) -> ERFPoint | None:
        return self.points[-1] if self.points else None


def plateau_index(sizes: Sequence[float], tol: float = ERF_PLATEAU_TOL) -> int | None:
    """First i such that every later size is at most (1 + tol) x sizes[i] (None if empty)."""
    if not sizes:
        return None
    for i, s in enumerate(sizes):
        if all(t <= (1 + tol) * s for t in sizes[i + 1:]):
            return i
    return len(sizes) - 1  # pragma: no cover - the last index always qualifies


def erf_growth(model: Any, analysis: Analysis, endpoint: str, max_layers: int = 8,
               runs: int = 8, compute: Callable[..., Any] | None = None, **erf_options: Any
               ) -> ERFGrowth:
    """ERF (``rfgraph.erf.compute_erf``) of up to ``max_layers`` layer outputs leading to
    ``endpoint`` (evenly spaced, the end point last), and the plateau layer."""
    if compute is None:
        from ..erf import compute_erf

        compute = compute_erf
    upstream = set(analysis.fields_toward(endpoint))
    chain = [lay.output for lay in layers(analysis) if lay.output in upstream
             and not analysis[lay.output].is_global and lay.output != endpoint]
    if len(chain) > max_layers - 1:
        keep = np.linspace(0, len(chain) - 1, max_layers - 1).round().astype(int)
        chain = [chain[i] for i in sorted(set(keep.tolist()))]
    chain.append(endpoint)
    points = []
    try:
        for tensor in chain:
            if analysis[tensor].is_global:
                continue
            shape = (1,) + tuple(1 if d is None else int(d) for d in analysis.input_shape[1:])
            res = compute(model, tensor, input_shape=shape, runs=runs, **erf_options)
            m = res.metrics
            points.append(ERFPoint(tensor, float(m.erf_size), tuple(m.erf_extent),
                                   tuple(m.trf_size) if m.trf_size else None, m.erf_trf_ratio))
    except Exception as exc:  # noqa: BLE001 - the ERF engine (onnxruntime) may fail on any op
        return ERFGrowth(endpoint, tuple(points), None, f"ERF unavailable: {exc}".split("\n")[0])
    i = plateau_index([p.erf_size for p in points])
    return ERFGrowth(endpoint, tuple(points), None if i is None else points[i].tensor)
