"""Resampling: Resize, Upsample, DepthToSpace, SpaceToDepth, GridSample."""

from __future__ import annotations

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
    Edge,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
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
    for t in range(2, ctx.rank(0)):
        in_size = in_shape[t] if in_shape else None
        out_size = out_shape[t] if out_shape else None
        crop = geometry.resize_roi(ctx.attrs, roi, ctx.rank(0), t, ctx.name) if roi is not None \
            else geometry.WHOLE_AXIS
        spans.append(_resize_index_span(ctx, geometry.ResizeAxis(how, scales[t], in_size, out_size, crop)))
    return window(ctx, spans)


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
    """DepthToSpace (pixel shuffle): output unit u reads input unit floor(u / b)."""
    b = int(ctx.attrs.get("blocksize", 0))
    if b <= 0:
        raise ctx.invalid("blocksize must be positive")
    span = Span.periodic(1, [0] * b, [0] * b)
    return window(ctx, [span] * (ctx.rank(0) - 2))


def space_to_depth_rule(ctx: NodeContext) -> Transfer:
    """SpaceToDepth: output unit u reads input units [u*b, u*b + b - 1]."""
    b = int(ctx.attrs.get("blocksize", 0))
    if b <= 0:
        raise ctx.invalid("blocksize must be positive")
    return window(ctx, [Span.layer(b, b, 0)] * (ctx.rank(0) - 2))


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
    """GridSample (4-D, linear or nearest, zeros or border padding), gradient to the image: each
    output's gradient scattered onto the pixels it reads, with their bilinear weights (read from
    the grid at run time); a pixel outside the image reads 0 (zeros) or the clamped border pixel."""
    x, grid = n.inputs[0], n.inputs[1]
    xs = b.shape(x)
    mode = n.attr_str("mode", "linear")
    padding = n.attr_str("padding_mode", "zeros")
    if len(xs) != 4 or mode not in ("linear", "bilinear", "nearest") or padding not in ("zeros", "border"):
        raise UnsupportedOpError(n.name, "GridSample", f"{len(xs) - 2}-D, mode '{mode}', padding '{padding}' "
                                 "(rules: 2-D, linear or nearest, zeros or border padding)")
    if b.is_active(grid):
        raise UnsupportedOpError(n.name, "GridSample", "a grid computed from the input (the gradient "
                                 "to the grid is not written)")
    (batch, channels, h, w), outs = xs, math.prod(b.shape(n.outputs[0])[2:])
    align = bool(n.attr_int("align_corners", 0))
    ix, iy = _unnormalised(b, grid, 0, w, align), _unnormalised(b, grid, 1, h, align)
    indices, updates = [], []
    g = b.op("Reshape", gys[0], b.ints([batch, channels, outs]))
    for px, py, weight in _grid_taps(b, ix, iy, mode != "nearest"):
        cx = b.op("Clip", px, b.scalar(0.0), b.scalar(w - 1.0))
        cy = b.op("Clip", py, b.scalar(0.0), b.scalar(h - 1.0))
        if padding == "zeros":  # a tap outside the image reads 0: its weight is 0
            inside = b.op("Cast", b.op("And", b.op("Equal", px, cx), b.op("Equal", py, cy)), to=b.dtype)
            weight = inside if weight is None else b.op("Mul", weight, inside)
        flat = b.op("Cast", b.op("Add", b.op("Mul", cy, b.scalar(float(w))), cx), to=TensorProto.INT64)
        indices.append(b.op("Expand", b.op("Reshape", flat, b.ints([batch, 1, outs])),
                            b.ints([batch, channels, outs])))
        updates.append(g if weight is None else b.op("Mul", g, b.op("Reshape", weight, b.ints([batch, 1, outs]))))
    scattered = b.op("ScatterElements", b.zeros([batch, channels, h * w]), b.op("Concat", *indices, axis=2),
                     b.op("Concat", *updates, axis=2), axis=2, reduction="add")
    return [b.reshape(scattered, xs)]


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
