"""Exact clipped fields: per tensor, axis and unit, the input pixels it sees, with padding handled
exactly (a unit reading only padded positions sees nothing): *outer* = union over paths (the
field), *inner* = the narrowest path (max of the paths' first pixel, min of their last), which
rfa-toolbox approximates by the minimum r over paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..fields import Span
from ..semantics.transfer import Layout

_BIG = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class AxisRegions:
    """Per unit along one axis: clipped outer region [lo, hi] and inner (narrowest path) region;
    a unit that sees nothing has lo > hi."""

    lo: np.ndarray
    hi: np.ndarray
    inner_lo: np.ndarray
    inner_hi: np.ndarray

    @staticmethod
    def identity(n: int) -> AxisRegions:
        u = np.arange(n, dtype=np.int64)
        return AxisRegions(u, u.copy(), u.copy(), u.copy())

    @property
    def n(self) -> int:
        return len(self.lo)

    @property
    def empty(self) -> np.ndarray:
        return self.lo > self.hi

    def covers(self, size: int) -> np.ndarray:
        """Per unit: the (union) field contains every pixel 0..size-1."""
        return (self.lo <= 0) & (self.hi >= size - 1)

    def as_one_unit(self) -> AxisRegions:
        """The regions of a tensor whose positions along this axis are folded into its features:
        one unit holding them all, which sees their union (``analysis._unit_layout``)."""
        seen = ~self.empty
        if not seen.any():
            return AxisRegions(self.lo[:1], self.hi[:1], self.inner_lo[:1], self.inner_hi[:1])
        def one(v: np.ndarray, pick: Any) -> np.ndarray:
            return np.array([pick(v[seen])], dtype=np.int64)
        return AxisRegions(one(self.lo, np.min), one(self.hi, np.max), one(self.inner_lo, np.min),
                           one(self.inner_hi, np.max))

    def first_seen(self) -> np.ndarray:
        """Index of the first unit >= v that sees something (n if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), self.n)
        return np.minimum.accumulate(idx[::-1])[::-1]

    def last_seen(self) -> np.ndarray:
        """Index of the last unit <= v that sees something (-1 if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), -1)
        return np.maximum.accumulate(idx)


def units_along(layout: Layout, axis: int) -> int:
    """Units of a tensor along input spatial ``axis`` (1 when the tensor does not index it)."""
    for parts in layout:
        for a, size in parts:
            if a == axis:
                return int(size)
    return 1


def span_bounds(span: Span | None, u: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last input unit read by each output unit ``u`` (None span: all of them)."""
    if span is None:
        return np.zeros_like(u), np.full_like(u, n_in - 1)
    m, t = np.divmod(u, span.q)
    return m * span.A + np.asarray(span.lo)[t], m * span.A + np.asarray(span.hi)[t]


def exact_regions(analysis: Analysis) -> dict[str, tuple[AxisRegions, ...]]:
    """Clipped outer and inner regions of every analysed tensor (one forward sweep; gates held
    constant, as the local fields are)."""
    mg = analysis.graph
    sizes = input_sizes(analysis)
    out: dict[str, tuple[AxisRegions, ...]] = {
        analysis.input_name: tuple(AxisRegions.identity(n) for n in sizes)}
    for idx, tensor, ot in analysis.output_transfers():
        node = mg.nodes[idx]
        found = [(e, out.get(node.input[e.slot])) for e in analysis.local_edges(mg.names[idx], ot.edges)]
        ins = [(e, x) for e, x in found if x is not None]
        if len(ins) < len(found):  # an input without regions
            continue
        axes = tuple(_axis_regions(units_along(ot.layout, a), [(e.span(a), x[a]) for e, x in ins])
                     for a in range(len(sizes)))
        if all(r.n > 0 for r in axes):
            out[tensor] = axes
    return out


def _axis_regions(n_out: int, edges: Sequence[tuple[Span | None, AxisRegions]]) -> AxisRegions:
    """Regions of one output along one axis from its edges (exact padding, see module doc)."""
    lo = np.full(n_out, _BIG)
    hi = np.full(n_out, -_BIG)
    ilo = np.full(n_out, -_BIG)
    ihi = np.full(n_out, _BIG)
    for span, x in edges:
        if x.n == 0:
            continue
        ok, f, last = seen_range(span, x, n_out)
        lo = np.where(ok, np.minimum(lo, x.lo[f]), lo)
        hi = np.where(ok, np.maximum(hi, x.hi[last]), hi)
        ilo = np.where(ok, np.maximum(ilo, x.inner_lo[f]), ilo)
        ihi = np.where(ok, np.minimum(ihi, x.inner_hi[last]), ihi)
    dead = lo > hi
    ilo = np.where(dead, _BIG, ilo)
    ihi = np.where(dead, -_BIG, ihi)
    return AxisRegions(lo, hi, ilo, ihi)


def input_sizes(analysis: Analysis) -> tuple[int, ...]:
    """Input size along each spatial axis."""
    return tuple(int(analysis.input_shape[a]) for a in analysis.spatial_axes)

def seen_range(span: Span | None, x: AxisRegions, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output unit: whether the input units it reads include one that sees the image, and the
    first and last such unit (indices clipped into the input)."""
    u = np.arange(n_out, dtype=np.int64)
    v1, v2 = span_bounds(span, u, x.n)
    inside = (v1 <= x.n - 1) & (v2 >= 0)
    f = x.first_seen()[np.clip(v1, 0, x.n - 1)]
    last = x.last_seen()[np.clip(v2, 0, x.n - 1)]
    return inside & (f <= last), np.clip(f, 0, x.n - 1), np.clip(last, 0, x.n - 1)
