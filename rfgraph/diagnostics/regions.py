"""Exact clipped fields: per tensor, axis and unit, the input pixels it sees, with padding handled
exactly (a unit reading only zero-padded positions sees nothing; one in the border of a reflect /
edge / wrap Pad sees the pixels it copies): *outer* = union over paths (the
field), *inner* = the narrowest path (max of the paths' first pixel, min of their last), which
rfa-toolbox approximates by the minimum r over paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..analysis import Analysis
from ..borders import COPYING_MODES, copying_node
from ..fields import Span
from ..onnx_import import attributes
from ..semantics import WINDOW_OPS, geometry
from ..trf import units_along

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

    @property
    def monotone(self) -> bool:
        """Whether the bounds of the units that see something never decrease along the axis
        (true of sliding windows; a reflect or wrap Pad's border units break it)."""
        seen = ~self.empty
        return all(bool(np.all(np.diff(v[seen]) >= 0))
                   for v in (self.lo, self.hi, self.inner_lo, self.inner_hi))

    def first_seen(self) -> np.ndarray:
        """Index of the first unit >= v that sees something (n if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), self.n)
        return np.minimum.accumulate(idx[::-1])[::-1]

    def last_seen(self) -> np.ndarray:
        """Index of the last unit <= v that sees something (-1 if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), -1)
        return np.maximum.accumulate(idx)


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
        copying = (copying_node(mg, idx) or (None,))[0]
        taps = [_dilations(analysis, node, node.input[e.slot]) for e, _ in ins]
        axes = tuple(_axis_regions(units_along(ot.layout, a),
                                   [(e.span(a), x[a], d.get(a, 1)) for (e, x), d in zip(ins, taps)], copying)
                     for a in range(len(sizes)))
        if all(r.n > 0 for r in axes):
            out[tensor] = axes
    return out


def _dilations(analysis: Analysis, node: onnx.NodeProto, tensor: str) -> dict[int, int]:
    """Per input spatial axis, the dilation of a dilated sliding window (Conv, MaxPool...) over
    ``tensor`` where that axis is a grid axis of its own: its taps skip units, so a window whose
    first taps fall in the padding reads from its first tap inside, not from the first unit."""
    if node.op_type not in WINDOW_OPS or node.op_type == "ConvTranspose" or node.input[0] != tensor:
        return {}
    dilations = attributes(node).get("dilations") or []
    ep = analysis.endpoints.get(tensor)
    if ep is None or all(d == 1 for d in dilations):
        return {}
    return {a: int(dilations[t - 2]) for a, t in enumerate(ep.tensor_axes)
            if t is not None and 2 <= t < 2 + len(dilations) and dilations[t - 2] > 1}


def _copied(span: Span | None, x: AxisRegions, n_out: int, mode: str) -> AxisRegions | None:
    """Regions of a copying Pad's output along one axis: unit u is a copy of input unit src[u]
    (``geometry.pad_source``), so it sees what that unit sees, exactly; None where the Pad's edge
    is no one-to-one shift along this axis (then the generic sweep applies)."""
    if span is None or span.q != 1 or span.A != 1 or span.lo[0] != span.hi[0]:
        return None
    begin = -int(span.lo[0])
    src = geometry.pad_source(x.n, begin, n_out - x.n - begin, mode)
    return AxisRegions(x.lo[src], x.hi[src], x.inner_lo[src], x.inner_hi[src])


def _axis_regions(n_out: int, edges: Sequence[tuple[Span | None, AxisRegions, int]],
                  copying: str | None = None) -> AxisRegions:
    """Regions of one output along one axis from its edges (exact padding, see module doc; a
    reflect / edge / wrap Pad's border units see the units they copy; a Resize's taps past its
    input, the border unit)."""
    if copying in COPYING_MODES and len(edges) == 1 and edges[0][1].n > 0:
        copied = _copied(edges[0][0], edges[0][1], n_out, copying)
        if copied is not None:
            return copied
    lo = np.full(n_out, _BIG)
    hi = np.full(n_out, -_BIG)
    ilo = np.full(n_out, -_BIG)
    ihi = np.full(n_out, _BIG)
    for span, x, dilation in edges:
        if x.n == 0:
            continue
        r = reads(span, x, n_out, dilation, clamped=copying == "clamp")
        lo = np.where(r.sees, np.minimum(lo, r.lo_min), lo)
        hi = np.where(r.sees, np.maximum(hi, r.hi_max), hi)
        ilo = np.where(r.sees, np.maximum(ilo, r.inner_lo_min), ilo)
        ihi = np.where(r.sees, np.minimum(ihi, r.inner_hi_max), ihi)
    dead = lo > hi
    ilo = np.where(dead, _BIG, ilo)
    ihi = np.where(dead, -_BIG, ihi)
    return AxisRegions(lo, hi, ilo, ihi)


@dataclass(frozen=True)
class Reads:
    """Per output unit, over the input units it reads that see something: whether there is one,
    and the extremes of their bounds (outer first/last pixel, inner first/last pixel)."""

    sees: np.ndarray
    lo_min: np.ndarray
    hi_max: np.ndarray
    inner_lo_min: np.ndarray
    inner_lo_max: np.ndarray
    inner_hi_min: np.ndarray
    inner_hi_max: np.ndarray


def reads(span: Span | None, x: AxisRegions, n_out: int, dilation: int = 1, clamped: bool = False) -> Reads:
    """What each output unit reads of ``x`` (``Reads``).  Bounds monotone in the unit (every
    sliding window) take the first and last unit read; after a reflect / wrap Pad they are not,
    and each window's extremes come from range queries (``_window_reduce``).  ``dilation``: the
    window's taps are that far apart (``_tap_reads``); ``clamped``: taps past ``x`` read its
    border unit (a Resize), not zeros."""
    if dilation > 1 and span is not None and span.q == 1 and (span.hi[0] - span.lo[0]) % dilation == 0:
        return _tap_reads(span, x, n_out, dilation)
    ok, f, last = seen_range(span, x, n_out, clamped)
    if x.monotone:
        return Reads(ok, x.lo[f], x.hi[last], x.inner_lo[f], x.inner_lo[last], x.inner_hi[f], x.inner_hi[last])
    v1, v2 = span_bounds(span, np.arange(n_out, dtype=np.int64), x.n)
    v1, v2 = np.clip(v1, 0, x.n - 1), np.clip(v2, 0, x.n - 1)
    seen = ~x.empty

    def low(v: np.ndarray) -> np.ndarray:
        return _window_reduce(np.where(seen, v, _BIG), v1, v2, np.minimum)

    def high(v: np.ndarray) -> np.ndarray:
        return _window_reduce(np.where(seen, v, -_BIG), v1, v2, np.maximum)

    return Reads(ok, low(x.lo), high(x.hi), low(x.inner_lo), high(x.inner_lo), low(x.inner_hi), high(x.inner_hi))


def _window_reduce(values: np.ndarray, first: np.ndarray, last: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``op`` (np.minimum / np.maximum) of ``values[first[i]:last[i] + 1]`` for every i, from a
    sparse table (level k holds the reduction of 2^k consecutive values): O(n log n)."""
    levels = [values]
    while 2 ** len(levels) <= len(values):
        prev, half = levels[-1], 2 ** (len(levels) - 1)
        levels.append(op(prev[:-half], prev[half:]))
    k = np.floor(np.log2(np.maximum(last - first + 1, 1))).astype(np.int64)
    out = np.empty(len(first), dtype=values.dtype)
    for level in np.unique(k):
        at = k == level
        table = levels[level]
        out[at] = op(table[first[at]], table[last[at] - 2 ** level + 1])
    return out


def input_sizes(analysis: Analysis) -> tuple[int, ...]:
    """Input size along each spatial axis."""
    return tuple(int(analysis.input_shape[a]) for a in analysis.spatial_axes)

def _tap_reads(span: Span, x: AxisRegions, n_out: int, dilation: int) -> Reads:
    """``reads`` of a dilated window: over its taps only (``dilation`` apart, those inside the
    input), not every unit between its first and last (a tap in the padding, or a unit between
    taps that reads a farther pixel, would widen the region)."""
    v1, _ = span_bounds(span, np.arange(n_out, dtype=np.int64), x.n)
    taps = v1[:, None] + dilation * np.arange((span.hi[0] - span.lo[0]) // dilation + 1)[None, :]
    at = np.clip(taps, 0, x.n - 1)
    seen = (taps >= 0) & (taps < x.n) & ~x.empty[at]

    def low(v: np.ndarray) -> np.ndarray:
        return np.where(seen, v[at], _BIG).min(axis=1)

    def high(v: np.ndarray) -> np.ndarray:
        return np.where(seen, v[at], -_BIG).max(axis=1)

    return Reads(seen.any(axis=1), low(x.lo), high(x.hi), low(x.inner_lo), high(x.inner_lo), low(x.inner_hi),
                 high(x.inner_hi))


def seen_range(span: Span | None, x: AxisRegions, n_out: int, clamped: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output unit: whether the input units it reads include one that sees the image, and the
    first and last such unit (indices clipped into the input; ``clamped``: a unit whose taps all
    lie past ``x`` reads its border unit)."""
    u = np.arange(n_out, dtype=np.int64)
    v1, v2 = span_bounds(span, u, x.n)
    inside = np.ones(n_out, bool) if clamped else (v1 <= x.n - 1) & (v2 >= 0)
    f = x.first_seen()[np.clip(v1, 0, x.n - 1)]
    last = x.last_seen()[np.clip(v2, 0, x.n - 1)]
    return inside & (f <= last), np.clip(f, 0, x.n - 1), np.clip(last, 0, x.n - 1)
