"""Normalisation: BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization,
MeanVarianceNormalization, LpNormalization, LRN, Softmax/LogSoftmax/Hardmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from onnx import helper

from ..errors import UnsupportedOpError
from .gradient import Builder, Grads, NodeView, _square
from .gradient import Rule as VJPRule
from .transfer import NodeContext, Rule, Transfer, _norm_axis, mix_axes, mixed_maps, pointwise

# ---------------------------------------------------------------- receptive-field (TRF) rules


def softmax_rule(ctx: NodeContext) -> Transfer:
    """Softmax family: mixes its axis (opset >= 13) or all axes from ``axis`` on (older opsets)."""
    rank = ctx.rank(0)
    default = -1 if ctx.opset >= 13 else 1
    axis = _norm_axis(int(ctx.attrs.get("axis", default)), rank)
    axes = [axis] if ctx.opset >= 13 else list(range(axis, rank))
    return mix_axes(ctx, axes, why=f"{ctx.op} over axes {axes}")


def norm_over_axes_rule(first_axis_attr: str | None, default: int | list[int]) -> Callable[[NodeContext], Transfer]:
    """Normalisations whose statistics span some axes (LayerNorm, InstanceNorm, GroupNorm...)."""
    def rule(ctx: NodeContext) -> Transfer:
        rank = ctx.rank(0)
        if isinstance(default, list):
            axes = [_norm_axis(a, rank) for a in ctx.attrs.get("axes", default)]
        elif first_axis_attr is None:
            axes = list(range(default, rank))
        else:
            start = _norm_axis(int(ctx.attrs.get(first_axis_attr, default)), rank)
            axes = list(range(start, rank))
        return statistics_over(ctx, axes, "statistics")
    return rule


def statistics_over(ctx: NodeContext, axes: Sequence[int], what: str) -> Transfer:
    """A normalisation of input 0 by statistics over tensor ``axes``: each output position reads
    its own input position, and through the statistics every position along ``axes``.  Where those
    axes hold positions, output 0's edge is the local one (pointwise, the statistics held constant,
    as a gate's operand is) and ``statistics`` says ``what`` makes the exact field global (LayerNorm's
    Mean and InvStdDev outputs, for training, are not followed: as before this rule)."""
    lay = ctx.data_layout(0)
    mixed = sorted(mixed_maps(lay, axes))
    local = pointwise(ctx, outputs=len(ctx.node.output))
    if not mixed:
        return local
    every = len(mixed) == len({a for parts in lay for a, _ in parts if a >= 0})
    where = "every position" if every else f"the positions along input spatial axes {mixed}"
    return Transfer(local.outputs, statistics=f"{what} over {where} (tensor axes {list(axes)})",
                    statistics_axes=tuple(mixed))


def batch_norm_rule(ctx: NodeContext) -> Transfer:
    """BatchNormalization: pointwise with fixed statistics; with training_mode=1 the batch
    statistics span the batch and every spatial axis (spec), so each output reads everything."""
    if not ctx.attrs.get("training_mode", 0):
        return pointwise(ctx)
    return norm_over_axes_rule(None, [0] + list(range(2, ctx.rank(0))))(ctx)


def lp_norm_rule(ctx: NodeContext) -> Transfer:
    """LpNormalization: the norm spans one axis."""
    axis = _norm_axis(int(ctx.attrs.get("axis", -1)), ctx.rank(0))
    return statistics_over(ctx, [axis], "norm")


# ---------------------------------------------------------------- gradient (VJP) rules


def _softmax(b: Builder, n: NodeView, gys: list) -> Grads:
    """Softmax (opset >= 13, one axis): y * (g - sum(g * y, axis)).  A row of -inf (fully masked
    attention) gives NaN and stays NaN under any finite change of the input: its derivative is 0,
    so NaN outputs count as 0 here (else the NaN spreads to every gradient a Where had masked);
    that guard is left out where the input is finite for every finite model input (``b.finite``:
    no mask of -inf reaches it)."""
    y, g = n.outputs[0], gys[0]
    ax = n.attr_int("axis", -1) % len(b.shape(y))
    if n.inputs[0] not in b.finite:
        y = b.op("Where", b.op("IsNaN", y), b.scalar(0.0), y)
        s = b.op("ReduceSum", b.op("Mul", g, y), b.ints([ax]), keepdims=1)
    else:
        s = _attention_row_dot(b, y, ax) or b.op("ReduceSum", b.op("Mul", g, y), b.ints([ax]), keepdims=1)
    return [b.op("Mul", y, b.op("Sub", g, s))]


def _attention_row_dot(b: Builder, y: str, ax: int) -> str | None:
    """sum(g * y) over the last axis when y's one reader is o = y @ v (attention's weights, whose
    gradient g is go v^T): sum(go * o) over o's last axis, the same sum (sum_j y_ij (go_i . v_j)
    = go_i . o_i) over the head width instead of the sequence (ViT-S: 64 against 197 per row)."""
    readers = b.readers.get(y, [])
    if len(readers) != 1 or ax != len(b.shape(y)) - 1:
        return None
    product = readers[0]
    if product.op_type != "MatMul" or product.domain not in ("", "ai.onnx") or list(product.input[:1]) != [y] \
            or y in product.input[1:] or len(b.shape(y)) < 2:
        return None
    o = product.output[0]
    go = b.grads.get(o)
    if go is None or b.shape(o)[:-1] != b.shape(y)[:-1]:  # y broadcast over v's batch: sums over it too
        return None
    return b.op("ReduceSum", b.op("Mul", go, o), b.ints([len(b.shape(o)) - 1]), keepdims=1)


def _log_softmax(b: Builder, n: NodeView, gys: list) -> Grads:
    """LogSoftmax (opset >= 13): g - exp(y) * sum(g, axis)."""
    y, g = n.outputs[0], gys[0]
    ax = n.attr_int("axis", -1) % len(b.shape(y))
    s = b.op("ReduceSum", g, b.ints([ax]), keepdims=1)
    e = b.op("Exp", y)
    return [b.op("Sub", g, b.op("Mul", e, s))]


def _batch_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """BatchNormalization (inference): g * scale / sqrt(var + eps) per channel."""
    if n.attr("training_mode", 0):
        raise UnsupportedOpError(n.name, "BatchNormalization", "training_mode=1; export the model "
                                 "in eval mode")
    xs = b.shape(n.inputs[0])
    scale, var = b.value(n.inputs[1]), b.value(n.inputs[4])
    eps = n.attr_float("epsilon", 1e-5)
    bshape = [1, xs[1]] + [1] * (len(xs) - 2)
    if scale is not None and var is not None:
        factor = b.const((scale / np.sqrt(var.astype(np.float64) + eps)).reshape(bshape))
    else:
        factor = b.op("Div", n.inputs[1], b.op("Sqrt", b.op("Add", n.inputs[4], b.scalar(eps))))
        factor = b.op("Reshape", factor, b.ints(bshape))
    return [b.op("Mul", gys[0], factor)]


def _lrn_window(channels: int, size: int) -> np.ndarray:
    """(C x C) 0/1 matrix of LRN's channel window: row c sums channels max(0, c - floor((size-1)/2))
    to min(C-1, c + ceil((size-1)/2)) (the ONNX spec; an even size reaches one more channel up)."""
    lo, hi = (size - 1) // 2, size // 2
    c = np.arange(channels)
    return ((c[None, :] >= c[:, None] - lo) & (c[None, :] <= c[:, None] + hi)).astype(np.float64)


def _lrn(b: Builder, n: NodeView, gys: list) -> Grads:
    """LRN y = x d^-beta, d = bias + alpha/size * M x^2 (M: channel window):
    gx = g d^-beta - 2 alpha beta / size * x * M^T (g y / d)."""
    x, y = n.inputs[0], n.outputs[0]
    xs = b.shape(x)
    size = n.attr_int("size")
    alpha, beta, bias = n.attr_float("alpha", 1e-4), n.attr_float("beta", 0.75), n.attr_float("bias", 1.0)
    window = _lrn_window(xs[1], size).astype(helper.tensor_dtype_to_np_dtype(b.dtype))
    square_sum = b.along_axis(b.op("Mul", x, x), window, 1)
    d = b.op("Add", b.op("Mul", square_sum, b.scalar(alpha / size)), b.scalar(bias))
    direct = b.op("Mul", gys[0], b.op("Pow", d, b.scalar(-beta)))
    spread = b.along_axis(b.op("Div", b.op("Mul", gys[0], y), d), window.T.copy(), 1)
    cross = b.op("Mul", b.op("Mul", x, spread), b.scalar(2.0 * alpha * beta / size))
    return [b.op("Sub", direct, cross)]


def _layer_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """LayerNormalization: (gh - mean(gh) - xhat mean(gh xhat)) * invstd with gh = g * gamma.

    Mean and InvStdDev come from the forward node's optional outputs (no recomputation); with a
    unit scale and no shift (``vjp`` folds them into the next product) xhat is the output itself.
    """
    x = n.inputs[0]
    xs = b.shape(x)
    ax = n.attr_int("axis", -1) % len(xs)
    inv = b.optional_output(n.node, 2, "ln_invstd")
    axes = list(range(ax, len(xs)))
    if _unit_affine(b, n):
        return [_standardised(b, gys[0], n.outputs[0], inv, axes)]
    mean = b.optional_output(n.node, 1, "ln_mean")
    xhat = b.op("Mul", b.op("Sub", x, mean), inv)
    gh = b.op("Mul", gys[0], n.inputs[1])
    return [_standardised(b, gh, xhat, inv, axes)]


def _unit_affine(b: Builder, n: NodeView) -> bool:
    """True when a LayerNormalization's scale is a constant of ones and its shift absent or zero."""
    scale = b.value(n.inputs[1])
    shift = b.value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else np.zeros(1)
    return scale is not None and shift is not None and bool(np.all(scale == 1)) and not shift.any()


def _standardised(b: Builder, gh: str, xhat: str, inv: str, axes: Sequence[int]) -> str:
    """The gradient through xhat = (x - mean) * invstd over ``axes`` (statistics of x itself):
    (gh - mean(gh) - xhat mean(gh xhat)) * invstd, gh the gradient reaching xhat."""
    m1 = _mean(b, gh, axes)
    m2 = _mean(b, b.op("Mul", gh, xhat), axes)
    inner = b.op("Sub", b.op("Sub", gh, m1), b.op("Mul", xhat, m2))
    return b.op("Mul", inner, inv)


def _mean(b: Builder, t: str, axes: Sequence[int]) -> str:
    """The mean of ``t`` over ``axes``, dims kept (ReduceMean: one op where ReduceSum and a scaling
    took two, 46 tiny ops in ViT-S's gradient)."""
    if b.opset >= 18:
        return b.op("ReduceMean", t, b.ints(axes), keepdims=1)
    return b.op("ReduceMean", t, axes=list(axes), keepdims=1)


def _moments(b: Builder, x: str, axes: Sequence[int], eps: float, eps_on_std: bool = False) -> tuple[str, str]:
    """(xhat, invstd) of ``x`` over ``axes``: 1 / sqrt(var + eps), or 1 / (sqrt(var) + eps)."""
    xs = b.shape(x)
    count = b.scalar(1.0 / math.prod(xs[a] for a in axes))
    centred = b.op("Sub", x, b.op("Mul", b.op("ReduceSum", x, b.ints(axes), keepdims=1), count))
    var = b.op("Mul", b.op("ReduceSum", _square(b, centred), b.ints(axes), keepdims=1), count)
    if eps_on_std:
        inv = b.op("Reciprocal", b.op("Add", b.op("Sqrt", var), b.scalar(eps)))
    else:
        inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(eps))))
    return b.op("Mul", centred, inv), inv


def _channel_scaled(b: Builder, g: str, scale: str, channels: int) -> str:
    """g times a per-channel (axis 1) scale of length ``channels``."""
    xs = b.shape(g)
    s = b.reshape(scale, [1, channels] + [1] * (len(xs) - 2))
    return b.op("Mul", g, s)


def _instance_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """InstanceNormalization: per (sample, channel) standardisation over space, then scale."""
    x = n.inputs[0]
    xs = b.shape(x)
    axes = list(range(2, len(xs)))
    xhat, inv = _moments(b, x, axes, n.attr_float("epsilon", 1e-5))
    gh = _channel_scaled(b, gys[0], n.inputs[1], xs[1])
    return [_standardised(b, gh, xhat, inv, axes)]


def _group_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """GroupNormalization: standardisation over each group of channels and space, then a
    per-channel scale (opset 21; opset 18's per-group scale is repeated over its channels)."""
    x = n.inputs[0]
    xs = b.shape(x)
    groups = n.attr_int("num_groups")
    scale = n.inputs[1]
    if b.shape(scale)[0] != xs[1]:  # opset 18: one scale per group
        scale = b.reshape(b.op("Expand", b.reshape(scale, (groups, 1)), b.ints([groups, xs[1] // groups])),
                          (xs[1],))
    gh = _channel_scaled(b, gys[0], scale, xs[1])
    grouped = (xs[0], groups, math.prod(xs[1:]) // groups)
    xhat, inv = _moments(b, b.reshape(x, grouped), [2], n.attr_float("epsilon", 1e-5))
    return [b.reshape(_standardised(b, b.reshape(gh, grouped), xhat, inv, [2]), xs)]


def _mean_variance_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """MeanVarianceNormalization, (x - mean) / (std + 1e-9) over ``axes`` (the spec's function
    body; the 1e-9 is dropped from one term, a relative change of 1e-9 / std)."""
    x = n.inputs[0]
    rank = len(b.shape(x))
    axes = sorted(a % rank for a in (n.attr_ints("axes") or [0, 2, 3]))
    xhat, inv = _moments(b, x, axes, 1e-9, eps_on_std=True)
    return [_standardised(b, gys[0], xhat, inv, axes)]


def _lp_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """LpNormalization y = x / ||x||_p along ``axis`` (p = 1 or 2): (g - w sum(g y)) / ||x||_p,
    with w = y for p = 2 and sign(x) for p = 1."""
    x, y, g = n.inputs[0], n.outputs[0], gys[0]
    xs = b.shape(x)
    axis = n.attr_int("axis", -1) % len(xs)
    p = n.attr_int("p", 2)
    if p not in (1, 2):
        raise n.invalid(f"p is {p}, expected 1 or 2")
    if p == 2:
        norm, w = b.op("Sqrt", b.op("ReduceSum", _square(b, x), b.ints([axis]), keepdims=1)), y
    else:
        norm, w = b.op("ReduceSum", b.op("Abs", x), b.ints([axis]), keepdims=1), b.op("Sign", x)
    dot = b.op("ReduceSum", b.op("Mul", g, y), b.ints([axis]), keepdims=1)
    return [b.op("Div", b.op("Sub", g, b.op("Mul", w, dot)), norm)]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "BatchNormalization": batch_norm_rule,
    "Softmax": softmax_rule, "LogSoftmax": softmax_rule, "Hardmax": softmax_rule,
    "LayerNormalization": norm_over_axes_rule("axis", -1),
    "InstanceNormalization": norm_over_axes_rule(None, 2),
    "GroupNormalization": norm_over_axes_rule(None, 2),
    "MeanVarianceNormalization": norm_over_axes_rule(None, [0, 2, 3]),
    "LpNormalization": lp_norm_rule,
    "LRN": pointwise,  # across channels only: pointwise in space
}

VJP: dict[str, VJPRule] = {
    "Softmax": _softmax, "LogSoftmax": _log_softmax,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "LRN": _lrn,
    "InstanceNormalization": _instance_norm, "GroupNormalization": _group_norm,
    "MeanVarianceNormalization": _mean_variance_norm, "LpNormalization": _lp_norm,
}
