"""Convolutions: Conv, ConvInteger, QLinearConv, ConvTranspose, Col2Im (geometry decoded by ``geometry``)."""

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
from .transfer import (
    FOLDED,
    SPLIT_UNITS_MAX,
    AxisLayout,
    Edge,
    Layout,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    _without_ones,
    mixed_maps,
    regular_span,
    spatial_of,
    split_axes,
    window,
    with_scalar_edges,
)

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
    return window(ctx, [_transposed_span(ax) for ax in geo.axes], geo.size_dependent)


def _transposed_span(ax: geometry.AxisWindow) -> Span:
    """Output o of the transpose of a window axis reads the inputs b one of whose taps b*s - p_begin +
    j*d lands on o: between ceil((o + p - k_eff + 1) / s) and floor((o + p) / s), those with
    o + p - b*s a multiple of d (stride 1/s; none: the output is the bias alone)."""
    s, p, d = ax.stride, ax.pad_begin, ax.dilation
    lo, hi = [], []
    for t in range(s):
        first, last = -((-(t + p - (ax.k_eff - 1))) // s), (t + p) // s
        taps = [b for b in range(first, last + 1) if (t + p - b * s) % d == 0]
        lo.append(taps[0] if taps else last + 1)
        hi.append(taps[-1] if taps else last)
    return Span.periodic(1, lo, hi)


def col2im_rule(ctx: NodeContext) -> Transfer:
    """Col2Im (torch's F.fold): input (N, C x prod(block), L) holds C x block values for each of
    the L blocks of the block grid, row-major; output pixel o sums the blocks whose window covers
    it, a ConvTranspose's span along each image axis.  The L axis must hold the grid's positions
    (one part per grid axis), or one spatial axis enumerated across the image axes."""
    for slot in (1, 2):
        if slot in ctx.data_slots():
            raise ctx.unsupported("image_shape or block_shape computed from the input")
    image, block = ctx.ints(1, "image_shape"), ctx.ints(2, "block_shape")
    if image is None or block is None:
        raise ctx.unsupported("image_shape or block_shape computed at run time")
    lay = ctx.data_layout(0)
    if len(image) != len(block) or len(lay) != 3:
        raise ctx.invalid(f"image_shape {image} and block_shape {block} should have one value per image "
                          f"axis, the input rank 3 (N, C x block, L), not {len(lay)}")
    if spatial_of(lay[1]):
        raise ctx.unsupported(f"positions on the input's channel axis {lay[1]}, which Col2Im spreads "
                              f"over the block")
    geo = geometry.window("Col2Im", ctx.name, ctx.attrs, block, image)
    grid = [geometry.output_size(ax, n) for ax, n in zip(geo.axes, image)]
    channels = ctx.out_shapes[0][1] if ctx.out_shapes[0] and ctx.out_shapes[0][1] else 0
    head = (lay[0], ((-1, channels),))
    placed = _blocks_placed(ctx, lay, geo, grid, image)
    bound = ("puts positions folded into features back in place (Col2Im): each pixel is given its blocks' "
             "whole folds' fields, an upper bound of its own") if FOLDED in (a for a, _ in lay[1] + lay[2]) else ""
    out = OutTransfer(head + placed[0], (Edge(0, placed[1]),))
    return Transfer((out,), bound=bound)


def _blocks_placed(ctx: NodeContext, lay: Layout, geo: geometry.Window, grid: Sequence[int],
                   image: Sequence[int]) -> tuple[Layout, dict[int, Span | None]]:
    """The image axes' layouts and the edge maps of Col2Im (``col2im_rule``): per grid axis, the
    spatial part of L that indexes it reads through the transposed window; a feature part or a
    grid axis of one block leaves the image axis a feature axis."""
    parts = _without_ones(lay[2])
    moving = [i for i, g in enumerate(grid) if g != 1]
    features = [((-1, n),) for n in image]
    if not spatial_of(parts):
        return tuple(features), {}
    if set(spatial_of(parts)) & split_axes(lay):
        raise ctx.unsupported(f"the blocks axis holds spatial axes {spatial_of(parts)} that other axes also hold")
    if [n for _, n in parts] == [grid[i] for i in moving]:
        out: list[AxisLayout] = list(features)
        maps: dict[int, Span | None] = {}
        for i, (axis, _) in zip(moving, parts):
            if axis >= 0:
                out[i], maps[axis] = ((axis, image[i]),), _transposed_span(geo.axes[i])
        return tuple(out), maps
    if len(parts) == 1:
        return _blocks_enumerated(ctx, parts[0][0], geo, grid, image, moving)
    raise ctx.unsupported(f"the blocks axis holds {list(parts)}, not the block grid {list(grid)}")


def _blocks_enumerated(ctx: NodeContext, axis: int, geo: geometry.Window, grid: Sequence[int],
                       image: Sequence[int], moving: Sequence[int]) -> tuple[Layout, dict[int, Span | None]]:
    """Col2Im whose blocks are the positions of one spatial axis, the block grid flattened: every
    image axis of several blocks indexes that axis (a split axis), and each pixel reads the blocks
    between its first and last covering block in that order, enumerated pixel by pixel."""
    if math.prod(image[i] for i in moving) > SPLIT_UNITS_MAX:
        raise ctx.unsupported(f"blocks of one spatial axis spread over an image of {list(image)} pixels "
                              f"(more than {SPLIT_UNITS_MAX} to enumerate)")
    spans = [_transposed_span(geo.axes[i]) for i in moving]
    sizes = [grid[i] for i in moving]
    strides = [math.prod(sizes[j + 1:]) for j in range(len(sizes))]
    lo, hi = [], []
    for pixel in np.ndindex(*[image[i] for i in moving]):
        first = [max(sp.lo_of(o), 0) for sp, o in zip(spans, pixel)]
        last = [min(sp.hi_of(o), g - 1) for sp, o, g in zip(spans, pixel, sizes)]
        if any(f > la for f, la in zip(first, last)):
            raise ctx.unsupported("blocks of one spatial axis spread over an image where some pixels "
                                  "lie in no block")
        lo.append(sum(f * st for f, st in zip(first, strides)))
        hi.append(sum(la * st for la, st in zip(last, strides)))
    out = [((axis, n),) if i in moving else ((-1, n),) for i, n in enumerate(image)]
    return tuple(out), {axis: regular_span(lo, hi, math.prod(sizes))}


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


def _col2im(b: Builder, n: NodeView, gys: list) -> Grads:
    """Col2Im: its transpose cuts every block back out of the image (Im2Col), a Conv with the same
    strides, pads and dilations whose one-hot kernels copy one block element per output channel
    (grouped by image channel), reshaped to the input's (N, C x block, L)."""
    image, block = b.value(n.inputs[1]), b.value(n.inputs[2])
    if image is None or block is None:
        raise UnsupportedOpError(n.name, "Col2Im", "image_shape or block_shape computed at run time")
    sizes, kernel = [int(v) for v in image.reshape(-1)], [int(v) for v in block.reshape(-1)]
    geo = geometry.window("Col2Im", n.name, n.attrs, kernel, sizes)
    x_shape = b.shape(n.inputs[0])
    k = math.prod(kernel)
    one_hot = np.tile(np.eye(k).reshape(k, 1, *kernel), (x_shape[1] // k,) + (1,) * (len(kernel) + 1))
    blocks = b.op("Conv", gys[0], b.const(one_hot), strides=geo.strides, dilations=geo.dilations,
                  pads=geo.pads_begin + geo.pads_end, group=x_shape[1] // k)
    return [b.reshape(blocks, x_shape), None, None]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "Conv": conv_rule(1), "ConvInteger": conv_rule(1, scalar_slots=(2, 3)),
    "QLinearConv": conv_rule(3, scalar_slots=(1, 2, 4, 5, 6, 7, 8), bias_slot=8),
    "ConvTranspose": conv_transpose_rule, "Col2Im": col2im_rule,
}

VJP: dict[str, VJPRule] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Col2Im": _col2im,
    "ConvInteger": _quantized, "QLinearConv": _quantized,
}
