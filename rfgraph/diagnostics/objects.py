"""Object sizes: the fraction of positions of an object of size o that lie wholly inside some
unit's TRF (exact: from every unit's region), and whether o fits in the ERF extent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis
from .regions import input_sizes


@dataclass(frozen=True)
class ObjectFit:
    """Which placements of an object of ``size`` px a head's TRF (and ERF) can contain."""

    endpoint: str
    size: int
    trf_fraction: tuple[float, ...]  # per axis: share of positions inside some unit's TRF
    erf_extent: tuple[int, ...] | None = None  # per axis, Luo ERF extent (None: not computed)
    input_size: tuple[int, ...] = ()

    @property
    def trf_verdict(self) -> str:
        if any(self.size > n for n in self.input_size):
            return "larger than the input"
        p = math.prod(self.trf_fraction)
        if p >= 1.0:
            return "inside a unit's TRF at every position"
        if p <= 0.0:
            return "larger than every unit's TRF"
        return f"inside a unit's TRF at {100 * p:.0f}% of positions"

    @property
    def erf_verdict(self) -> str:
        if self.erf_extent is None:
            return "- (needs --erf)"
        return ("within the ERF" if all(self.size <= e for e in self.erf_extent)
                else "larger than the ERF")


def contained_fraction(regions: np.ndarray, size: int, n: int) -> float:
    """Share of the n - size + 1 placements [x, x+size-1] of an object lying wholly inside one of
    the intervals ``regions`` (k, 2) (exact; 0 when the object is larger than the input)."""
    if size > n or len(regions) == 0:
        return 0.0
    order = np.argsort(regions[:, 0], kind="stable")
    lo, hi = regions[order, 0], np.maximum.accumulate(regions[order, 1])
    x = np.arange(n - size + 1)
    k = np.searchsorted(lo, x, side="right") - 1  # last interval starting at or before x
    ok = (k >= 0) & (hi[np.clip(k, 0, None)] >= x + size - 1)
    return float(ok.mean())


def object_fit(analysis: Analysis, endpoint: str, size: int,
               erf_extent: Sequence[int] | None = None) -> ObjectFit:
    """TRF containment of an object of ``size`` px along every axis of ``endpoint``."""
    ep = analysis[endpoint]
    fractions = []
    for a, n in enumerate(input_sizes(analysis)):
        if ep.fields[a].is_global:
            fractions.append(1.0 if size <= n else 0.0)
        else:
            fractions.append(contained_fraction(ep.regions(a), size, n))
    return ObjectFit(endpoint, size, tuple(fractions),
                     None if erf_extent is None else tuple(int(e) for e in erf_extent),
                     input_sizes(analysis))
