"""Resampling: Resize, Upsample, DepthToSpace, SpaceToDepth, GridSample."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from onnx import TensorProto

from .. import budgets
from ..errors import UnsupportedOpError
from ..fields import Span
from . import geometry
from .gradient import Builder, Grads, NodeView, _one_plus
from .gradient import Rule as VJPRule
from .transfer import (
    FOLDED,
    AxisLayout,
    Edge,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    _str_attr,
    mixed_maps,
    plain_layout,
    strip_spatial,
    window,
    with_sizes,
)

# ---------------------------------------------------------------- receptive-field (TRF) rules


def _resize_index_span(ctx: NodeContext, axis: geometry.ResizeAxis) -> Span:
    """Exact span of Resize along one axis: which input units each output unit interpolates
    (x_original is affine in the unit, so one period of taps describes every unit)."""
    if axis.scale <= 0:
        raise ctx.invalid(f"resize scale {axis.scale} must be positive")
    period, advance = axis.period()
    if axis.extrapolates():  # the border units break the period: one period spanning every unit
        repeat = -(-(axis.out_size or 1) // period)
        period, advance = repeat * period, repeat * advance
    budgets.RESIZE_PERIOD.check(period, f"node '{ctx.name}' ({ctx.op}): the exact span of scale {axis.scale}",
                                "give the model a plausible output size")
    taps = [axis.taps(t) for t in range(period)]
    return Span.periodic(advance, [a for a, _ in taps], [b for _, b in taps])


def resize_rule(ctx: NodeContext) -> Transfer:
    """Resize/Upsample: per axis, the exact taps of each output unit (stride in/out, fractional);
    the geometry (coordinates, nearest modes, taps) is decoded by ``geometry``."""
    for slot in ctx.data_slots():
        if slot != 0:
            raise ctx.unsupported("scales or sizes computed from the input values")
    in_shape, out_shape = ctx.in_shapes[0], ctx.out_shapes[0]
    scales = _resize_scales(ctx, ctx.rank(0), in_shape, out_shape)
    how = geometry.resampling(ctx.op, ctx.opset, ctx.attrs, ctx.name)
    if how.antialias and any(s < 1 for s in scales):
        raise ctx.unsupported("antialiased downsampling (support depends on the filter width)")
    roi = ctx.const(1) if how.coord == "tf_crop_and_resize" else None
    if how.coord == "tf_crop_and_resize" and roi is None:
        raise ctx.unsupported("tf_crop_and_resize without a constant roi")
    spans = []
    for t in range(ctx.rank(0)):  # every axis: an NHWC map (jax2onnx, tf2onnx) is resized along 1 and 2
        in_size = in_shape[t] if in_shape else None
        out_size = out_shape[t] if out_shape else None
        crop = geometry.resize_roi(ctx.attrs, roi, ctx.rank(0), t, ctx.name) if roi is not None \
            else geometry.WHOLE_AXIS
        spans.append(_resize_index_span(ctx, geometry.ResizeAxis(how, scales[t], in_size, out_size, crop)))
    return window(ctx, spans, first=0)


def _resize_scales(ctx: NodeContext, rank: int, in_shape, out_shape) -> list[Fraction]:
    """Scale per axis (``geometry.resize_scales``) from the constant scales or sizes input."""
    if ctx.op == "Upsample":
        scales, sizes = (ctx.const(1) if ctx.has_input(1) else ctx.attrs.get("scales")), None
    elif ctx.opset < 11:
        scales, sizes = ctx.const(1), None
    else:
        scales = ctx.const(2) if ctx.has_input(2) else None
        sizes = ctx.const(3) if ctx.has_input(3) else None
    if in_shape is None and out_shape is None:
        in_shape = [None] * rank
    return geometry.resize_scales(ctx.op, ctx.opset, ctx.attrs, scales, sizes, in_shape, out_shape, ctx.name)


def depth_to_space_rule(ctx: NodeContext) -> Transfer:
    """DepthToSpace (pixel shuffle): output unit u reads input unit floor(u / b).  Channels that
    hold positions a SpaceToDepth folded (``FOLDED``) are put back: each pixel is given its whole
    block's field, an upper bound of its own."""
    b = int(ctx.attrs.get("blocksize", 0))
    if b <= 0:
        raise ctx.invalid("blocksize must be positive")
    span = Span.periodic(1, [0] * b, [0] * b)
    tr = window(ctx, [span] * (ctx.rank(0) - 2))
    lay = ctx.data_layout(0)
    if len(lay) > 1 and any(a == FOLDED for a, _ in lay[1]):
        return dataclasses.replace(tr, bound="puts positions a SpaceToDepth folded into channels back in place: "
                                             "each pixel is given its whole block's field, an upper bound of its own")
    return tr


def space_to_depth_rule(ctx: NodeContext) -> Transfer:
    """SpaceToDepth: output unit u reads input units [u*b, u*b + b - 1]; the b^(n) positions of a
    block become channels (``FOLDED``: a unit holds them all), ahead of the input's channels
    (DCR, the default) or after them (CRD)."""
    b = int(ctx.attrs.get("blocksize", 0))
    if b <= 0:
        raise ctx.invalid("blocksize must be positive")
    tr = window(ctx, [Span.layer(b, b, 0)] * (ctx.rank(0) - 2))
    out = tr.outputs[0]
    if out is None or len(out.layout) < 3:
        return tr
    channels = ctx.data_layout(0)[1]
    block: AxisLayout = ((FOLDED, b ** (len(out.layout) - 2)),)
    parts = channels + block if _str_attr(ctx, "mode", "DCR") == "CRD" else block + channels
    layout = (out.layout[0], parts) + out.layout[2:]
    return dataclasses.replace(tr, outputs=(dataclasses.replace(out, layout=layout),) + tr.outputs[1:])


def grid_sample_rule(ctx: NodeContext) -> Transfer:
    """GridSample (spatial transformers): each output position samples the input where the grid,
    a run-time tensor, points, so it may read any position: global on every spatial axis."""
    edges = [Edge(slot, mixed_maps(ctx.data_layout(slot), range(len(ctx.data_layout(slot)))))
             for slot in ctx.data_slots()]
    lay = ctx.layouts[0] if ctx.layouts[0] is not None else plain_layout(ctx.in_shapes[0] or ())
    out_lay = with_sizes(strip_spatial(lay, range(len(lay))), ctx.out_shapes[0])
    return Transfer((OutTransfer(out_lay, tuple(edges)),),
                    mix_reason="GridSample reads the positions its grid (a run-time tensor) points at")


# ---------------------------------------------------------------- gradient (VJP) rules


def _blocks_moved(b: Builder, g: str, moved: Sequence[int], perm: Sequence[int], xs: Sequence[int]) -> str:
    """Transpose of reshape(x, split) -> transpose(perm) -> reshape(y): the gradient reshaped to
    the transposed ``moved`` shape, put back by the inverse permutation, reshaped to x."""
    back = b.op("Transpose", b.reshape(g, moved), perm=[int(i) for i in np.argsort(perm)])
    return b.reshape(back, xs)


def _depth_to_space(b: Builder, n: NodeView, gys: list) -> Grads:
    """DepthToSpace (pixel shuffle, DCR or CRD order): a fixed permutation, so the gradient is
    permuted back (the forward as the ONNX spec writes it: reshape, transpose, reshape)."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    if n.attr_str("mode", "DCR") == "CRD":
        split, perm = (N, C // (bs * bs), bs, bs, H, W), (0, 1, 4, 2, 5, 3)
    else:
        split, perm = (N, bs, bs, C // (bs * bs), H, W), (0, 3, 4, 1, 5, 2)
    return [_blocks_moved(b, gys[0], [split[i] for i in perm], perm, xs)]


def _space_to_depth(b: Builder, n: NodeView, gys: list) -> Grads:
    """SpaceToDepth: the permutation of the ONNX spec (reshape, transpose, reshape), undone; blocks
    ordered depth-column-row (DCR, default) or, from opset 28, column-row-depth (CRD)."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    split = (N, C, H // bs, bs, W // bs, bs)
    perm = (0, 1, 3, 5, 2, 4) if n.attr_str("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    return [_blocks_moved(b, gys[0], [split[i] for i in perm], perm, xs)]


def _resize_matrix(n: NodeView, b: Builder, axis: int) -> np.ndarray:
    """The (out x in) matrix of a Resize along one axis, from ``geometry`` (the decoder the TRF
    rule uses): coordinates, nearest modes, clamped taps, the crop's roi."""
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    # ``vjp.prepare`` lifted the model to opset >= 17: Resize with roi, scales, sizes inputs and the
    # defaults of opset 11 on
    roi, scales, sizes = (b.value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None for i in range(1, 4))
    scale = geometry.resize_scales("Resize", 11, n.attrs, scales, sizes, xs, ys, n.name)[axis]
    how = geometry.resampling("Resize", 11, n.attrs, n.name)
    if how.coord != "tf_crop_and_resize":
        return geometry.ResizeAxis(how, scale, xs[axis], ys[axis]).matrix()
    if roi is None:
        raise UnsupportedOpError(n.name, "Resize", "tf_crop_and_resize with a roi computed at run time")
    crop = geometry.resize_roi(n.attrs, roi, len(xs), axis, n.name)
    return geometry.ResizeAxis(how, scale, xs[axis], ys[axis], crop).matrix()


def _resize(b: Builder, n: NodeView, gys: list) -> Grads:
    """Resize (nearest, linear, cubic; separable): apply each resized axis's transposed matrix."""
    if n.attr("antialias", 0):
        raise UnsupportedOpError(n.name, "Resize", "antialias has no VJP rule")
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    g = gys[0]
    for ax in range(len(xs)):
        if xs[ax] != ys[ax] or ax >= 2:
            m = _resize_matrix(n, b, ax)
            if not (xs[ax] == ys[ax] and np.allclose(m, np.eye(xs[ax]))):
                g = b.along_axis(g, m.T, ax)
    if g == gys[0]:
        g = b.op("Identity", g)
    return [g]


def _unnormalised(b: Builder, grid: str, coord: int, size: int, align_corners: bool) -> str:
    """GridSample's pixel coordinate along one axis from the grid's ``coord`` component in [-1, 1]:
    (g + 1) / 2 (size - 1) with align_corners, ((g + 1) size - 1) / 2 without."""
    g = b.op("Squeeze", b.op("Gather", grid, b.ints([coord]), axis=-1), b.ints([-1]))
    if align_corners:
        return b.op("Mul", b.op("Add", g, b.scalar(1.0)), b.scalar((size - 1) / 2))
    return b.op("Sub", b.op("Mul", b.op("Add", g, b.scalar(1.0)), b.scalar(size / 2)), b.scalar(0.5))


def _grid_taps(b: Builder, ix: str, iy: str, linear: bool) -> list[tuple[str, str, str | None]]:
    """The (x, y, weight) of the pixels one output reads: the nearest (round half to even, weight
    1) or the four bilinear neighbours."""
    if not linear:
        return [(b.op("Round", ix), b.op("Round", iy), None)]
    x0, y0 = b.op("Floor", ix), b.op("Floor", iy)
    fx, fy = b.op("Sub", ix, x0), b.op("Sub", iy, y0)
    gx, gy = _one_plus(b, fx, -1.0), _one_plus(b, fy, -1.0)
    x1, y1 = b.op("Add", x0, b.scalar(1.0)), b.op("Add", y0, b.scalar(1.0))
    return [(x0, y0, b.op("Mul", gx, gy)), (x1, y0, b.op("Mul", fx, gy)),
            (x0, y1, b.op("Mul", gx, fy)), (x1, y1, b.op("Mul", fx, fy))]


def _grid_sample(b: Builder, n: NodeView, gys: list) -> Grads:
    """GridSample (4-D, linear or nearest, zeros or border padding). To the image: each output's
    gradient scattered onto the pixels it reads, with their bilinear weights (read from the grid at
    run time); a pixel outside the image reads 0 (zeros) or the clamped border pixel.  To a grid
    computed from the input (deformable attention's sampling points): the weights' derivative
    along each coordinate times the pixels they weigh (0 for nearest: a step function)."""
    x, grid = n.inputs[0], n.inputs[1]
    xs = b.shape(x)
    mode = n.attr_str("mode", "linear")
    padding = n.attr_str("padding_mode", "zeros")
    if len(xs) != 4 or mode not in ("linear", "bilinear", "nearest") or padding not in ("zeros", "border"):
        raise UnsupportedOpError(n.name, "GridSample", f"{len(xs) - 2}-D, mode '{mode}', padding '{padding}' "
                                 "(rules: 2-D, linear or nearest, zeros or border padding)")
    (batch, channels, h, w), outs = xs, math.prod(b.shape(n.outputs[0])[2:])
    align = bool(n.attr_int("align_corners", 0))
    ix, iy = _unnormalised(b, grid, 0, w, align), _unnormalised(b, grid, 1, h, align)
    g = b.op("Reshape", gys[0], b.ints([batch, channels, outs]))
    read = _grid_taps(b, ix, iy, mode != "nearest")
    taps = [_clamped_tap(b, px, py, (h, w), (batch, channels, outs), padding == "zeros") for px, py, _ in read]
    weights = [weight for _, _, weight in read]
    g_image = g_grid = None
    if b.is_active(x):
        updates = []
        for (_, inside), weight in zip(taps, weights):
            both = _times(b, inside, None if weight is None else b.reshape(weight, [batch, 1, outs]))
            updates.append(g if both is None else b.op("Mul", g, both))
        scattered = b.op("ScatterElements", b.zeros([batch, channels, h * w]),
                         b.op("Concat", *[index for index, _ in taps], axis=2),
                         b.op("Concat", *updates, axis=2), axis=2, reduction="add")
        g_image = b.reshape(scattered, xs)
    if b.is_active(grid) and mode != "nearest":
        g_grid = _grid_gradient(b, b.reshape(x, [batch, channels, h * w]), g, taps, ix, iy, (h, w), align,
                                b.shape(grid))
    return [g_image, g_grid]


def _read(b: Builder, flat: str, index: str, inside: str | None) -> str:
    """The pixels one tap reads ((batch, channels, outs)), 0 where it lies in zeros padding."""
    value = b.op("GatherElements", flat, index, axis=2)
    return value if inside is None else b.op("Mul", value, inside)


def _times(b: Builder, a: str | None, c: str | None) -> str | None:
    """a * c, where None stands for 1."""
    return c if a is None else a if c is None else b.op("Mul", a, c)


def _clamped_tap(b: Builder, px: str, py: str, size: tuple[int, int], out: tuple[int, int, int],
                 zeros: bool) -> tuple[str, str | None]:
    """One tap of every output: the flat index of the pixel it reads (clamped to the image, as
    (batch, channels, outs)) and, with zeros padding, 1 where that pixel lies inside the image and
    0 where it reads the padding (as (batch, 1, outs)); border padding reads the clamped pixel."""
    (h, w), (batch, channels, outs) = size, out
    cx = b.op("Clip", px, b.scalar(0.0), b.scalar(w - 1.0))
    cy = b.op("Clip", py, b.scalar(0.0), b.scalar(h - 1.0))
    inside = None
    if zeros:
        inside = b.reshape(b.op("Cast", b.op("And", b.op("Equal", px, cx), b.op("Equal", py, cy)), to=b.dtype),
                           [batch, 1, outs])
    flat = b.op("Cast", b.op("Add", b.op("Mul", cy, b.scalar(float(w))), cx), to=TensorProto.INT64)
    index = b.op("Expand", b.op("Reshape", flat, b.ints([batch, 1, outs])), b.ints([batch, channels, outs]))
    return index, inside


def _grid_gradient(b: Builder, flat: str, g: str, taps: list[tuple[str, str | None]], ix: str, iy: str,
                   size: tuple[int, int], align: bool, grid_shape: tuple[int, ...]) -> str:
    """The gradient to the grid of bilinear sampling from the four pixels v00, v10, v01, v11 as
    read (0 in the padding with zeros padding): along x, the channel sum of the seed times
    gy (v10 - v00) + fy (v11 - v01), times d ix / d grid_x ((w - 1) / 2 aligned, else w / 2);
    along y, gx (v01 - v00) + fx (v11 - v10), likewise (fx, fy: the fractions; gx = 1 - fx)."""
    (h, w), (batch, _, outs) = size, b.shape(g)
    v00, v10, v01, v11 = (_read(b, flat, index, inside) for index, inside in taps)
    fx, fy = b.op("Sub", ix, b.op("Floor", ix)), b.op("Sub", iy, b.op("Floor", iy))
    gx, gy = _one_plus(b, fx, -1.0), _one_plus(b, fy, -1.0)
    fx, fy, gx, gy = (b.reshape(t, [batch, 1, outs]) for t in (fx, fy, gx, gy))
    along_x = b.op("Add", b.op("Mul", gy, b.op("Sub", v10, v00)), b.op("Mul", fy, b.op("Sub", v11, v01)))
    along_y = b.op("Add", b.op("Mul", gx, b.op("Sub", v01, v00)), b.op("Mul", fx, b.op("Sub", v11, v10)))
    scales = ((w - 1) / 2 if align else w / 2, (h - 1) / 2 if align else h / 2)
    parts = [b.op("Mul", b.op("ReduceSum", b.op("Mul", g, d), b.ints([1]), keepdims=0), b.scalar(s))
             for d, s in zip((along_x, along_y), scales)]
    return b.op("Concat", *[b.reshape(p, [*grid_shape[:-1], 1]) for p in parts], axis=-1)


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "Resize": resize_rule, "Upsample": resize_rule,
    "DepthToSpace": depth_to_space_rule, "SpaceToDepth": space_to_depth_rule,
    "GridSample": grid_sample_rule,
}

VJP: dict[str, VJPRule] = {
    "Resize": _resize, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "GridSample": _grid_sample,
}
