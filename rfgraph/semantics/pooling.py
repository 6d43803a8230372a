"""Pooling: MaxPool, AveragePool, LpPool and the global pools."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import UnsupportedOpError
from . import geometry
from .convolution import conv_rule
from .gradient import Builder, Grads, NodeView, _lp_derivative, _scatter_window, _window
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
    """MaxPool: scatter-add the gradient to each window's argmax (the forward node's Indices)."""
    if n.attr("storage_order", 0):
        raise UnsupportedOpError(n.name, "MaxPool", "column-major storage_order")
    indices = b.optional_output(n.node, 1, "maxpool_indices")
    xs = b.shape(n.inputs[0])
    flat = b.op("ScatterElements", b.zeros([math.prod(xs)]),
                b.op("Reshape", indices, b.ints([-1])),
                b.op("Reshape", gys[0], b.ints([-1])), axis=0, reduction="add")
    return [b.reshape(flat, xs)]


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
    kernel = geo.kernel
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    div = _pool_divisor(xs[2:], ys[2:], geo)
    g = b.op("Mul", gys[0], b.const(1.0 / div))
    channels = xs[1]
    ones = b.const(np.ones((channels, 1, *kernel)))
    return [_scatter_window(b, g, ones, channels, n)]


def _lp_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """LpPool, y = (sum |x|^p)^(1/p) per window: dx = |x|^(p-1) sign(x) * scatter(g * y^(1-p))."""
    p = float(n.attr_int("p", 2))
    x, y = n.inputs[0], n.outputs[0]
    xs = b.shape(x)
    zero = b.scalar(0.0)
    safe = b.op("Where", b.op("Greater", y, zero), b.op("Pow", y, b.scalar(1.0 - p)), zero)  # y = 0: no slope
    g = b.op("Mul", gys[0], safe)
    spread = _scatter_window(b, g, b.const(np.ones((xs[1], 1, *_window(n, b).kernel))), xs[1], n)
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
