"""Convolutions: Conv, ConvInteger, QLinearConv, ConvTranspose (geometry decoded by ``geometry``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import UnsupportedOpError
from ..fields import Span
from . import geometry
from .gradient import Builder, Grads, NodeView, _quantized, _scatter_window, _window
from .gradient import Rule as VJPRule
from .transfer import FOLDED, NodeContext, Rule, Transfer, mixed_maps, spatial_of, window, with_scalar_edges

# ---------------------------------------------------------------- receptive-field (TRF) rules


def _spatial_sizes(ctx: NodeContext, n: int) -> list[int | None]:
    """Sizes of input 0's ``n`` spatial axes (None where unknown), for ``geometry``."""
    sizes = list(ctx.in_shapes[0][2:]) if ctx.in_shapes[0] else []
    return (sizes + [None] * n)[:n]


def _kernel(ctx: NodeContext, weight_slot: int | None) -> list[int]:
    """Kernel size from ``kernel_shape`` or from the weight's shape."""
    if "kernel_shape" in ctx.attrs:
        return list(ctx.attrs["kernel_shape"])
    w_shape = ctx.in_shapes[weight_slot] if weight_slot is not None else None
    if w_shape and None not in w_shape[2:]:
        return list(w_shape[2:])
    raise ctx.unsupported("kernel size unknown (no kernel_shape and no static weight shape)")


def _check_groups(ctx: NodeContext, weight_slot: int | None, data_slot: int = 0, transposed: bool = False) -> None:
    """The spec's channel constraints, where the shapes are known: a Conv's input has group x
    W.shape[1] channels, a ConvTranspose's W.shape[0]; either's groups divide W.shape[0]
    (onnxruntime refuses the model otherwise, and no gradient could be built)."""
    group = int(ctx.attrs.get("group", 1))
    if group < 1:
        raise ctx.invalid(f"group {group} is not a positive number")
    x = ctx.in_shapes[data_slot]
    w = ctx.in_shapes[weight_slot] if weight_slot is not None and weight_slot < len(ctx.in_shapes) else None
    if not x or not w or len(x) < 2 or len(w) < 2 or None in (x[1], w[0], w[1]):
        return
    expected = w[0] if transposed else group * w[1]
    if x[1] != expected or w[0] % group:
        rule = "W.shape[0]" if transposed else "group x W.shape[1]"
        raise ctx.invalid(f"group {group} does not fit the shapes: input channels {x[1]}, weight "
                          f"{list(w)} (ONNX: {rule} input channels, W.shape[0] divisible by group)")


def conv_rule(weight_slot: int | None = 1, data_slot: int = 0, scalar_slots: Sequence[int] = (),
              bias_slot: int = 2) -> Callable[[NodeContext], Transfer]:
    """Conv-like op: each output unit reads k_eff = d(k-1)+1 inputs from u*s - p_begin;
    ``scalar_slots`` (quantization scales, zero points) and the bias may be computed from the input,
    every unit reading them whole (tf2onnx folds a 1x1 map's residual into the next Conv's bias:
    Keras ResNetV2 at 32 px; one value per output channel, added at every position)."""
    biases = (*scalar_slots, bias_slot)

    def rule(ctx: NodeContext) -> Transfer:
        if data_slot != 0:
            ctx.layouts = [ctx.layouts[data_slot]] + ctx.layouts[1:]
        for slot in ctx.data_slots():
            if slot != 0 and slot != data_slot and slot not in biases:
                raise ctx.unsupported("weights computed from the input (data-dependent kernel)")
        kernel = _kernel(ctx, weight_slot)
        _check_groups(ctx, weight_slot, data_slot)
        geo = geometry.window(ctx.op, ctx.name, ctx.attrs, kernel, _spatial_sizes(ctx, len(kernel)))
        tr = window(ctx, [Span.layer(a.kernel, a.stride, a.pad_begin, a.dilation) for a in geo.axes],
                    geo.size_dependent)
        return with_scalar_edges(ctx, _channels_mixed(ctx, tr), biases)
    return rule


def _channels_mixed(ctx: NodeContext, tr: Transfer) -> Transfer:
    """A convolution of one group reads every input channel: positions folded into them
    (``FOLDED``) are summed, and positions the channel axis holds (an input moved there by a
    Transpose, under a layout that makes them positions) are all read, so its output channels are
    plain features.  A grouped one over channels that hold positions is refused."""
    out = tr.outputs[0]
    if out is None or len(out.layout) < 2:
        return tr
    held = spatial_of(ctx.data_layout(0)[1])
    if not held and out.layout[1][0][0] != FOLDED:
        return tr
    if int(ctx.attrs.get("group", 1)) != 1:
        if held:
            raise ctx.unsupported("a grouped convolution over a channel axis that holds positions")
        return tr
    size = (ctx.out_shapes[0] or (None, None))[1] or math.prod(n for _, n in out.layout[1])
    layout = (out.layout[0], ((-1, size),)) + out.layout[2:]
    mixed = mixed_maps(ctx.data_layout(0), [1])
    edges = tuple(dataclasses.replace(e, maps={**e.maps, **mixed}) if e.slot == 0 else e for e in out.edges)
    why = f"{ctx.op} over a channel axis that holds positions: every output reads them all" if held else ""
    return dataclasses.replace(tr, outputs=(dataclasses.replace(out, layout=layout, edges=edges),) + tr.outputs[1:],
                               mix_reason=tr.mix_reason or why)


def conv_transpose_rule(ctx: NodeContext) -> Transfer:
    """ConvTranspose: output o reads inputs i with i*s + j*d - p_begin = o (fractional stride 1/s)."""
    if 1 in ctx.data_slots():
        raise ctx.unsupported("weights computed from the input (data-dependent kernel)")
    kernel = _kernel(ctx, 1)
    _check_groups(ctx, 1, transposed=True)
    geo = geometry.conv_transpose(ctx.name, ctx.attrs, kernel, _spatial_sizes(ctx, len(kernel)))
    spans = []
    for ax in geo.axes:
        s, p = ax.stride, ax.pad_begin
        lo = [-((-(t + p - (ax.k_eff - 1))) // s) for t in range(s)]
        hi = [(t + p) // s for t in range(s)]
        spans.append(Span.periodic(1, lo, hi))
    return window(ctx, spans, geo.size_dependent)


# ---------------------------------------------------------------- gradient (VJP) rules


def _flipped_kernel(b: Builder, w: str, group: int) -> str:
    """Weights of the stride-1 Conv that equals the transpose of Conv(w): in/out channels swapped
    per group, spatial axes reversed; emitted as nodes on ``w`` (Reshape, Transpose, Slice), which
    onnxruntime folds into one constant at load, so the graph carries each weight once."""
    shape = b.shape(w)
    cout, cin_g, space = shape[0], shape[1], list(shape[2:])
    rank = len(space)
    if group == 1:
        swapped = b.op("Transpose", w, perm=[1, 0, *range(2, 2 + rank)])
    else:
        ws = b.reshape(w, (group, cout // group, cin_g, *space))
        ws = b.op("Transpose", ws, perm=[0, 2, 1, *range(3, 3 + rank)])
        swapped = b.reshape(ws, (group * cin_g, cout // group, *space))
    axes = list(range(2, 2 + rank))
    big = np.iinfo(np.int64).max
    return b.op("Slice", swapped, b.ints([-1] * rank), b.ints([-big] * rank), b.ints(axes), b.ints([-1] * rank))


def _conv(b: Builder, n: NodeView, gys: list) -> Grads:
    """Conv: the transposed convolution with the same weights (groups, dilation, strides, pads).

    Stride 1 with constant weights uses a Conv with flipped weights instead: the same numbers,
    and onnxruntime's Conv kernels are much faster than its ConvTranspose.
    """
    group = n.attr_int("group", 1)
    geo = _window(n, b)
    strides, dil, pb = geo.strides, geo.dilations, geo.pads_begin
    constant = n.inputs[1] in b.initializers or b.value(n.inputs[1]) is not None
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [a.k_eff for a in geo.axes]
    bias = _bias_gradient(b, n, gys[0])
    if constant and all(s == 1 for s in strides):
        new_pb = [k - 1 - p for k, p in zip(k_eff, pb)]
        new_pe = [x - y - q + k - 1 for x, y, q, k in zip(xs, ys, new_pb, k_eff)]
        if all(p >= 0 for p in new_pb + new_pe):
            wf = _flipped_kernel(b, n.inputs[1], group)
            out = b.op("Conv", gys[0], wf, dilations=dil, pads=new_pb + new_pe, group=group)
            return [out, None, bias]
    return [_scatter_window(b, gys[0], n.inputs[1], group, n), None, bias]


def _bias_gradient(b: Builder, n: NodeView, gy: str) -> str | None:
    """The gradient of a bias computed from the input (``conv_rule``'s ``bias_slot``): the output's gradient
    summed over the batch and the positions, one value per channel; None for a constant bias."""
    if len(n.inputs) < 3 or not b.is_active(n.inputs[2]):
        return None
    rank = len(b.shape(gy))
    return b.op("ReduceSum", gy, b.ints([0, *range(2, rank)]), keepdims=0)


def _conv_transpose(b: Builder, n: NodeView, gys: list) -> Grads:
    """ConvTranspose: the forward convolution with the same weights, strides, pads and dilations.

    The pads are the spec's (``geometry.conv_transpose``); the Conv's end pad is chosen so that
    exactly x rows come out (rows added by output_padding are never read). Negative pads (a SAME
    or output_shape total below 0) crop the gradient with a Pad before the Conv.
    """
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    kernel = n.attr_ints("kernel_shape") or list(b.shape(n.inputs[1])[2:])
    if len(ys) != len(xs) or len(kernel) != len(xs):
        raise UnsupportedOpError(n.name, "ConvTranspose", f"output sizes {list(ys)} unknown or not matching "
                                 f"the {len(xs)} spatial input axes (output_shape={n.attr_ints('output_shape')})")
    geo = geometry.conv_transpose(n.name, n.attrs, kernel, xs)
    pb = geo.pads_begin
    pe = [a.stride * (x - 1) + a.k_eff - y - p for a, x, y, p in zip(geo.axes, xs, ys, pb)]
    g, rank = gys[0], len(xs)
    if any(p < 0 for p in pb + pe):  # crop (negative) and pad with one Pad, then an unpadded Conv
        g = b.op("Pad", g, b.ints([0, 0, *pb, 0, 0, *pe]))
        pb, pe = [0] * rank, [0] * rank
    out = b.op("Conv", g, n.inputs[1], strides=geo.strides, dilations=geo.dilations, pads=pb + pe,
               group=n.attr_int("group", 1))
    return [out]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "Conv": conv_rule(1), "ConvInteger": conv_rule(1, scalar_slots=(2, 3)),
    "QLinearConv": conv_rule(3, scalar_slots=(1, 2, 4, 5, 6, 7, 8), bias_slot=8),
    "ConvTranspose": conv_transpose_rule,
}

VJP: dict[str, VJPRule] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "ConvInteger": _quantized, "QLinearConv": _quantized,
}
