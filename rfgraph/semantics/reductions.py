"""Reductions: Reduce*, ArgMax/ArgMin (TRF), TopK (TRF and gradient)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import UnsupportedOpError
from .gradient import Builder, Derivative, Grads, NodeView, _added_back, _lp_derivative
from .gradient import Rule as VJPRule
from .transfer import (
    Edge,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    _norm_axis,
    mix_axes,
    mixed_maps,
    strip_spatial,
    with_sizes,
)

# ---------------------------------------------------------------- receptive-field (TRF) rules


REDUCING_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}


def reduced_axes(op: str, attrs: dict[str, Any], axes: Sequence[int] | None, rank: int) -> list[int]:
    """The input axes a Reduce*/ArgMax/ArgMin node reduces, sorted and non-negative; ``axes``: its
    axes attribute or constant input (None: it has neither).  No axes reduce them all, unless
    noop_with_empty_axes; ArgMax/ArgMin reduce their one ``axis``."""
    if op in ("ArgMax", "ArgMin"):
        return [_norm_axis(int(attrs.get("axis", 0)), rank)]
    if not axes:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({_norm_axis(int(a), rank) for a in axes})


def reduce_rule(ctx: NodeContext) -> Transfer:
    """Reduce*/ArgMax/ArgMin: reduced spatial axes become global."""
    written = None if ctx.op in ("ArgMax", "ArgMin") else ctx.ints(1, "axes")
    if written is None and ctx.op not in ("ArgMax", "ArgMin") and ctx.has_input(1):
        raise ctx.unsupported("reduction axes computed at run time")
    axes = reduced_axes(ctx.op, ctx.attrs, written, ctx.rank(0))
    return mix_axes(ctx, axes, keepdims=bool(ctx.attrs.get("keepdims", 1)),
                    why=f"{ctx.op} over axes {axes}")


def top_k_rule(ctx: NodeContext) -> Transfer:
    """TopK: the k largest along ``axis``; which positions they are depends on every value there,
    so both outputs (values and indices) read every position along it (along features: pointwise)."""
    axis = _norm_axis(int(ctx.attrs.get("axis", -1)), ctx.rank(0))
    lay = ctx.data_layout(0)
    maps = mixed_maps(lay, [axis])
    kept = strip_spatial(lay, [axis])
    outs = tuple(OutTransfer(with_sizes(kept, shape), (Edge(0, maps),)) for shape in ctx.out_shapes)
    return Transfer(outs, mix_reason=f"TopK over axis {axis}: which positions it keeps depends on their "
                                     f"values" if maps else "")


# ---------------------------------------------------------------- gradient (VJP) rules


def _top_k(b: Builder, n: NodeView, gys: list) -> Grads:
    """TopK values: scatter-add the gradient back to the selected positions (the forward
    node's Indices output) along the TopK axis; k is not differentiable."""
    return [_added_back(b, b.shape(n.inputs[0]), n.node.output[1], gys[0], n.attr_int("axis", -1))]


def _reduce_axes(b: Builder, n: NodeView) -> list[int]:
    axes = n.attr_ints("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1]:
        value = b.value(n.inputs[1])
        if value is None:
            raise UnsupportedOpError(n.name, n.node.op_type, "axes are not constant")
        axes = value.tolist()
    return reduced_axes(n.node.op_type, n.attrs, axes, len(b.shape(n.inputs[0])))


def _reduce_sum(b: Builder, n: NodeView, gys: list) -> Grads:
    """ReduceSum / ReduceMean: broadcast the gradient back over the reduced axes (/ count)."""
    xs = b.shape(n.inputs[0])
    axes = _reduce_axes(b, n)
    kept = [1 if i in axes else d for i, d in enumerate(xs)]
    g = b.reshape(gys[0], kept)
    if n.node.op_type == "ReduceMean":
        g = b.op("Mul", g, b.scalar(1.0 / max(math.prod(xs[a] for a in axes), 1)))
    out = b.op("Expand", g, b.ints(xs))
    return [out]


def _sum_kept(b: Builder, n: NodeView, t: str) -> str:
    """ReduceSum of ``t`` over the axes the forward reduction ``n`` reduces, dims kept."""
    return b.op("ReduceSum", t, b.ints(_reduce_axes(b, n)), keepdims=1)


def _again_kept(b: Builder, n: NodeView, t: str) -> str:
    """The forward reduction ``n`` applied to ``t``, dims kept (its axes written as ``n`` writes
    them: an attribute before opset 18, an input after)."""
    attrs: dict[str, Any] = {k: v for k, v in n.attrs.items() if k != "keepdims"}
    return b.emit(n.node.op_type, [t] + n.inputs[1:], keepdims=1, **attrs)[0]


def _max_derivative(b: Builder, n: NodeView, x: str, y: str) -> str:
    """ReduceMax / ReduceMin: 1 / (number of ties) at the extreme, 0 elsewhere (torch.amax/amin)."""
    mask = b.op("Cast", b.op("Equal", x, y), to=b.dtype)
    return b.op("Div", mask, _sum_kept(b, n, mask))


def _prod_derivative(b: Builder, n: NodeView, x: str, y: str) -> str:
    """ReduceProd: the product of the other elements (y / x off zeros; at a zero, the product of
    the non-zeros if it is the only zero, else 0: torch's prod_backward)."""
    zero = b.op("Equal", x, b.scalar(0.0))
    safe = b.op("Where", zero, b.scalar(1.0), x)
    zeros = _sum_kept(b, n, b.op("Cast", zero, to=b.dtype))
    at_zero = b.op("Mul", _again_kept(b, n, safe),
                   b.op("Cast", b.op("Equal", zeros, b.scalar(1.0)), to=b.dtype))
    return b.op("Where", zero, at_zero, b.op("Div", y, safe))


REDUCTION_DERIVATIVES: dict[str, Derivative] = {
    "ReduceMax": _max_derivative, "ReduceMin": _max_derivative,
    "ReduceProd": _prod_derivative,
    "ReduceL1": lambda b, n, x, y: b.op("Sign", x),
    "ReduceL2": lambda b, n, x, y: _lp_derivative(b, x, y, 2.0),
    "ReduceSumSquare": lambda b, n, x, y: b.op("Mul", x, b.scalar(2.0)),
    "ReduceLogSumExp": lambda b, n, x, y: b.op("Exp", b.op("Sub", x, y)),
    "ReduceLogSum": lambda b, n, x, y: b.op("Expand", b.op("Exp", b.op("Neg", y)), b.ints(b.shape(x))),
}


def _reduction(b: Builder, n: NodeView, gys: list) -> Grads:
    """The reductions of ``REDUCTION_DERIVATIVES``: g, broadcast back over the reduced axes,
    times dy/dx (y read with its reduced axes kept)."""
    x = n.inputs[0]
    xs = b.shape(x)
    axes = _reduce_axes(b, n)
    if not axes:
        raise UnsupportedOpError(n.name, n.node.op_type, "noop_with_empty_axes with no axes")
    kept = [1 if i in axes else d for i, d in enumerate(xs)]
    d = REDUCTION_DERIVATIVES[n.node.op_type](b, n, x, b.reshape(n.outputs[0], kept))
    return [b.op("Mul", b.reshape(gys[0], kept), d)]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    **dict.fromkeys(sorted(REDUCING_OPS), reduce_rule), "TopK": top_k_rule,
}

VJP: dict[str, VJPRule] = {
    "TopK": _top_k, "ReduceSum": _reduce_sum, "ReduceMean": _reduce_sum,
    **dict.fromkeys(REDUCTION_DERIVATIVES, _reduction),
}
