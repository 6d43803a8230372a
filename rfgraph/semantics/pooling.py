"""Pooling: MaxPool, AveragePool, LpPool and the global pools."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from . import geometry
from .convolution import conv_rule
from .gradient import Builder, Grads, NodeView, _lp_derivative, _ones_scatter, _window
from .gradient import Rule as VJPRule
from .transfer import NodeContext, Rule, Transfer, mix_axes

# ---------------------------------------------------------------- receptive-field (TRF) rules


def pool_rule(ctx: NodeContext) -> Transfer:
    """Max/Average/Lp pooling: a window like Conv; ceil_mode only adds end padding."""
    return conv_rule(weight_slot=None)(ctx)


def global_pool_rule(ctx: NodeContext) -> Transfer:
    """GlobalAverage/Max/LpPool: every output reads all spatial positions."""
    return mix_axes(ctx, range(2, ctx.rank(0)), why=f"{ctx.op} over all spatial positions")


# ---------------------------------------------------------------- gradient (VJP) rules


def _max_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """MaxPool: each output's gradient goes to the first input of its window, in row-major tap
    order, that equals the output (the input onnxruntime's Indices and torch's argmax name).

    Built from the input under each window tap, put back phase by phase (``_Phases``), not from
    the Indices output: onnxruntime's MaxPool with Indices has no blocked (NCHWc) kernel and took
    6.6 ms of ResNet-50's 7.9 ms MaxPool gradient; this one never reads the Indices, so
    ``storage_order`` (which only orders them) does not matter.  Which tap is a window's first
    maximum is kept in booleans (And, Xor: a byte a cell; ResNet-50's ERF 1.3 ms less than with
    float masks).  Windows of more than ``MAX_TAPS`` cells scatter to the Indices (a pass per tap
    costs more there: 9x9, 156 vs 116 ms)."""
    geo = _window(n, b)
    if math.prod(geo.kernel) > MAX_TAPS and not n.attr("storage_order", 0):
        return _max_pool_by_indices(b, n, gys)
    x, y = n.inputs[0], n.outputs[0]
    xs, ys = b.shape(x), b.shape(y)
    if geo.ceil_mode:  # ONNX's inference keeps a window that starts in the end padding, the spec
        y = b.op("Slice", y, b.ints([0] * len(ys)), b.ints(ys))  # and onnxruntime drop it: pin ys
    grid = _Phases(b, geo, xs, ys)
    source = grid.split(x)
    taps = list(itertools.product(*(range(k) for k in geo.kernel)))
    left: str | None = None  # true where no earlier tap of the window was its maximum
    per_phase: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]] = {}
    for i, tap in enumerate(taps):
        phase, shift = grid.place(tap)
        hit = b.op("Equal", grid.tap(source, phase, shift), y)
        first = hit if left is None else b.op("And", hit, left)
        if i + 1 < len(taps):  # first is within left: left and not hit = left xor first
            left = b.op("Not", hit) if left is None else b.op("Xor", left, first)
        per_phase.setdefault(phase, []).append((shift, b.where(first, gys[0])))
    return [grid.merge(per_phase)]


MAX_TAPS = 32  # 5x5 windows (YOLO's SPPF) by taps: 40 vs 64 ms; 9x9: 156 vs 116 ms by the Indices


def _max_pool_by_indices(b: Builder, n: NodeView, gys: list) -> Grads:
    """MaxPool: scatter-add the gradient to each window's argmax (the forward node's Indices,
    row-major as ``storage_order`` 0 numbers them)."""
    indices = b.optional_output(n.node, 1, "maxpool_indices")
    xs = b.shape(n.inputs[0])
    flat = b.op("ScatterElements", b.zeros([math.prod(xs)]), b.op("Reshape", indices, b.ints([-1])),
                b.op("Reshape", gys[0], b.ints([-1])), axis=0, reduction="add")
    return [b.reshape(flat, xs)]


class _Phases:
    """The input of a strided window op seen as stride-phase planes at the output's resolution:
    input position s * q + r (padded coordinates) is cell q of phase r.  A window tap at offset
    o = tap * dilation reads phase o % s shifted by o // s for every output unit at once.

    2-D windows with one stride s > 1 split the input with SpaceToDepth (a strided Slice per tap
    took 0.43 ms on ResNet-50's stem, SpaceToDepth and 9 plain slices 0.85 ms in all), others
    with strided slices; the phases are put back by an Unsqueeze/Concat interleave (0.8 ms there,
    onnxruntime's DepthToSpace 1.9 ms)."""

    def __init__(self, b: Builder, geo: geometry.Window, xs: Sequence[int], ys: Sequence[int]) -> None:
        self.b, self.geo, self.xs, self.ys = b, geo, list(xs), list(ys)
        self.strides = geo.strides
        strides = set(self.strides)
        self.blocked = len(self.strides) == 2 and len(strides) == 1 and strides.pop() > 1
        # cells per phase that every tap reaches (the output's length plus the largest shift)
        self.span = [y + (a.k_eff - 1) // s for y, a, s in zip(ys[2:], geo.axes, self.strides)]

    def place(self, tap: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(phase, shift) of a window tap."""
        offsets = [t * d for t, d in zip(tap, self.geo.dilations)]
        return (tuple(o % s for o, s in zip(offsets, self.strides)),
                tuple(o // s for o, s in zip(offsets, self.strides)))

    def split(self, x: str) -> str:
        """``x`` padded with NaN, which equals nothing (a padded cell is never a window's maximum,
        as in onnxruntime and torch, which skip it), to whole phase cells; blocked: SpaceToDepth."""
        begins = self.geo.pads_begin
        lengths = [v * s for v, s in zip(self.span, self.strides)]
        ends = [t - p - n for t, p, n in zip(lengths, begins, self.xs[2:])]
        if not self.blocked:  # slices need only reach the last tap
            ends = [max(s * (y - 1) + a.k_eff - p - n, 0)
                    for s, y, a, p, n in zip(self.strides, self.ys[2:], self.geo.axes, begins, self.xs[2:])]
        padded = x
        if any(begins) or any(e != 0 for e in ends):
            padded = self.b.op("Pad", x, self.b.ints([0, 0, *begins, 0, 0, *ends]), self.b.scalar(float("nan")))
        return self.b.op("SpaceToDepth", padded, blocksize=self.strides[0]) if self.blocked else padded

    def tap(self, source: str, phase: Sequence[int], shift: Sequence[int]) -> str:
        """The input under one window tap of every output unit (shape of the output)."""
        b, spatial = self.b, self.ys[2:]
        if self.blocked:
            c = self.xs[1]
            block = (phase[0] * self.strides[0] + phase[1]) * c
            return b.op("Slice", source, b.ints([block, *shift]),
                        b.ints([block + c, *(q + y for q, y in zip(shift, spatial))]), b.ints([1, 2, 3]))
        starts = [q * s + r for q, s, r in zip(shift, self.strides, phase)]
        ends = [a + s * (y - 1) + 1 for a, s, y in zip(starts, self.strides, spatial)]
        return b.op("Slice", source, b.ints(starts), b.ints(ends), b.ints(range(2, 2 + len(spatial))),
                    b.ints(self.strides))

    def merge(self, per_phase: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]]) -> str:
        """The transpose of ``tap``: each phase's taps summed at the output's resolution (shifted
        by Pad), the phases interleaved onto the input grid, cropped to the input."""
        b, spatial = self.b, self.ys[2:]
        lead = list(self.ys[:2])

        def phase_sum(phase: tuple[int, ...]) -> str:
            parts = []
            for shift, g in per_phase.get(phase, []):
                ends = [v - y - q for v, y, q in zip(self.span, spatial, shift)]
                parts.append(b.op("Pad", g, b.ints([0, 0, *shift, 0, 0, *ends]))
                             if any(shift) or any(ends) else g)
            if not parts:
                return b.zeros(lead + self.span)
            return parts[0] if len(parts) == 1 else b.op("Sum", *parts)

        grid = b.reshape(self._stacked((), phase_sum), lead + [v * s for v, s in zip(self.span, self.strides)])
        begins = self.geo.pads_begin
        ends = [p + n for p, n in zip(begins, self.xs[2:])]
        short = [max(e - v * s, 0) for e, v, s in zip(ends, self.span, self.strides)]
        if any(short):  # input cells after the last window: no gradient
            grid = b.op("Pad", grid, b.ints([0] * len(self.xs) + [0, 0, *short]))
        return b.op("Slice", grid, b.ints(begins), b.ints(ends), b.ints(range(2, len(self.xs))))

    def _stacked(self, prefix: tuple[int, ...], phase_sum: Callable[[tuple[int, ...]], str]) -> str:
        """The phases that start with ``prefix`` as a [N, C, V1, s1, ..., Vk, sk] block (the phase
        axes after the prefix's still of size 1): one Concat per strided axis."""
        axis = len(prefix)
        if axis == len(self.strides):
            return self.b.op("Unsqueeze", phase_sum(prefix), self.b.ints([3 + 2 * a for a in range(axis)]))
        blocks = [self._stacked(prefix + (r,), phase_sum) for r in range(self.strides[axis])]
        return blocks[0] if len(blocks) == 1 else self.b.op("Concat", *blocks, axis=3 + 2 * axis)


def _pool_divisor(xs: Sequence[int], ys: Sequence[int], geo: geometry.Window) -> np.ndarray:
    """Per-output-unit divisor of AveragePool: window cells inside the input (or the padded input)."""
    per_axis, include_pad = [], geo.count_include_pad
    for x, y, k, s, d, p0, p1 in zip(xs, ys, geo.kernel, geo.strides, geo.dilations, geo.pads_begin,
                                     geo.pads_end):
        start = np.arange(y)[:, None] * s - p0 + np.arange(k)[None, :] * d
        hi = x + p1 if include_pad else x
        lo = -p0 if include_pad else 0
        per_axis.append(((start >= lo) & (start < hi)).sum(axis=1))
    div = per_axis[0]
    for a in per_axis[1:]:
        div = np.multiply.outer(div, a)
    return np.maximum(div, 1).astype(np.float64)


def _average_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """AveragePool: divide by each window's count, then spread over the window (ones kernel)."""
    geo = _window(n, b)
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    div = _pool_divisor(xs[2:], ys[2:], geo)
    g = b.op("Mul", gys[0], b.const(1.0 / div))
    return [_ones_scatter(b, g, n)]


def _lp_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """LpPool, y = (sum |x|^p)^(1/p) per window: dx = |x|^(p-1) sign(x) * scatter(g * y^(1-p))."""
    p = float(n.attr_int("p", 2))
    x, y = n.inputs[0], n.outputs[0]
    zero = b.scalar(0.0)
    safe = b.op("Where", b.op("Greater", y, zero), b.op("Pow", y, b.scalar(1.0 - p)), zero)  # y = 0: no slope
    g = b.op("Mul", gys[0], safe)
    spread = _ones_scatter(b, g, n)
    slope = b.op("Mul", b.op("Pow", b.op("Abs", x), b.scalar(p - 1.0)), b.op("Sign", x))
    return [b.op("Mul", spread, slope)]


def _global_average_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalAveragePool: the gradient spread evenly over every spatial position."""
    xs = b.shape(n.inputs[0])
    g = b.op("Mul", gys[0], b.scalar(1.0 / math.prod(xs[2:])))
    out = b.op("Expand", g, b.ints(xs))
    return [out]


def _global_max_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalMaxPool: each channel's gradient to its first maximum (MaxPool's indices, torch's
    adaptive_max_pool, which the exporter writes as GlobalMaxPool)."""
    x = n.inputs[0]
    xs = b.shape(x)
    flat = (xs[0], xs[1], math.prod(xs[2:]))
    first = b.op("ArgMax", b.reshape(x, flat), axis=2, keepdims=1)
    out = b.op("ScatterElements", b.zeros(flat), first, b.reshape(gys[0], flat[:2] + (1,)), axis=2)
    return [b.reshape(out, xs)]


def _global_lp_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalLpPool, y = (sum over space |x|^p)^(1/p): g |x|^(p-1) sign(x) y^(1-p)."""
    x = n.inputs[0]
    d = _lp_derivative(b, x, n.outputs[0], float(n.attr_int("p", 2)))
    return [b.op("Mul", gys[0], d)]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "MaxPool": pool_rule, "AveragePool": pool_rule, "LpPool": pool_rule,
    "GlobalAveragePool": global_pool_rule, "GlobalMaxPool": global_pool_rule, "GlobalLpPool": global_pool_rule,
}

VJP: dict[str, VJPRule] = {
    "MaxPool": _max_pool, "AveragePool": _average_pool, "LpPool": _lp_pool,
    "GlobalAveragePool": _global_average_pool, "GlobalMaxPool": _global_max_pool, "GlobalLpPool": _global_lp_pool,
}
