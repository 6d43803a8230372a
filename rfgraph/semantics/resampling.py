"""Resampling: Resize, Upsample, DepthToSpace, SpaceToDepth, GridSample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import DynamicShapeError, UnsupportedOpError
from ..fields import Span
from ..onnx_import import session_options
from .gradient import Builder, Grads, NodeView, _one_plus, _set_shape
from .gradient import Rule as VJPRule
from .transfer import (
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


def _resize_index_span(ctx: NodeContext, scale: Fraction, in_size: int | None, out_size: int | None,
                       mode: str, coord: str, nearest: str) -> Span:
    """Exact span of Resize along one axis: which input units each output unit interpolates."""
    if scale <= 0:
        raise ctx.invalid(f"resize scale {scale} must be positive")
    if coord == "align_corners":
        if not in_size or not out_size:
            raise DynamicShapeError(f"node '{ctx.name}' (Resize): align_corners needs known sizes; "
                                    f"set them with --input-shape")
        ratio = Fraction(in_size - 1, out_size - 1) if out_size > 1 else Fraction(0)
        x_of = lambda u: u * ratio
        period, advance = (ratio.denominator, ratio.numerator) if ratio else (1, 0)
    else:
        period, advance = scale.numerator, scale.denominator  # p output units span q input units
        if coord in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric"):
            offset = Fraction(0)
            if coord == "half_pixel_symmetric" and in_size and out_size:
                offset = Fraction(in_size, 2) * (1 - Fraction(out_size, in_size) / scale)
            x_of = lambda u: offset + (u + Fraction(1, 2)) / scale - Fraction(1, 2)
            if coord == "pytorch_half_pixel" and out_size == 1:  # spec: x_original = 0
                x_of = lambda u: Fraction(0)
        elif coord == "asymmetric":
            x_of = lambda u: u / scale
        else:
            raise ctx.unsupported(f"coordinate_transformation_mode '{coord}'")
    lo, hi = [], []
    for t in range(period):
        x = x_of(t)
        a, b = _taps(x, mode, nearest, ctx)
        lo.append(a)
        hi.append(b)
    return Span.periodic(advance, lo, hi)


def _taps(x: Fraction, mode: str, nearest: str, ctx: NodeContext) -> tuple[int, int]:
    """First and last input index with a nonzero interpolation weight at coordinate ``x``."""
    fl = math.floor(x)
    frac = x - fl
    if mode == "nearest":
        if nearest == "floor":
            i = fl
        elif nearest == "ceil":
            i = math.ceil(x)
        elif nearest == "round_prefer_ceil":
            i = math.floor(x + Fraction(1, 2))
        else:  # round_prefer_floor (ONNX default)
            i = math.ceil(x - Fraction(1, 2))
        return i, i
    if mode == "linear":
        return (fl, fl) if frac == 0 else (fl, fl + 1)
    if mode == "cubic":
        return (fl, fl) if frac == 0 else (fl - 1, fl + 2)
    raise ctx.unsupported(f"interpolation mode '{mode}'")


def resize_rule(ctx: NodeContext) -> Transfer:
    """Resize/Upsample: per axis, the exact taps of each output unit (stride in/out, fractional)."""
    for slot in ctx.data_slots():
        if slot != 0:
            raise ctx.unsupported("scales or sizes computed from the input values")
    in_shape, out_shape = ctx.in_shapes[0], ctx.out_shapes[0]
    rank = ctx.rank(0)
    scales = _resize_scales(ctx, rank, in_shape, out_shape)
    mode = _str_attr(ctx, "mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    default_coord = "half_pixel" if ctx.op == "Resize" and ctx.opset >= 11 else "asymmetric"
    coord = _str_attr(ctx, "coordinate_transformation_mode", default_coord)
    nearest = _str_attr(ctx, "nearest_mode",
                        "round_prefer_floor" if ctx.op == "Resize" and ctx.opset >= 11 else "floor")
    if ctx.op == "Upsample" or ctx.opset < 11:
        nearest = "floor"
    if ctx.attrs.get("antialias", 0) and any(s < 1 for s in scales):
        raise ctx.unsupported("antialiased downsampling (support depends on the filter width)")
    spans = []
    for t in range(2, rank):
        in_size = in_shape[t] if in_shape else None
        out_size = out_shape[t] if out_shape else None
        spans.append(_resize_index_span(ctx, scales[t], in_size, out_size, mode, coord, nearest))
    return window(ctx, spans)


def _resize_scales(ctx: NodeContext, rank: int, in_shape, out_shape) -> list[Fraction]:
    """Scale per axis: from constant scales, else from output/input sizes."""
    scales = None
    if ctx.op == "Upsample":
        scales = ctx.const(1) if ctx.has_input(1) else ctx.attrs.get("scales")
    elif ctx.opset < 11:
        scales = ctx.const(1)
    else:
        sc = ctx.const(2)
        if sc is not None and np.asarray(sc).size:
            scales = sc
    if scales is not None and len(np.asarray(scales).reshape(-1)) == rank:
        return [Fraction(float(s)).limit_denominator(10_000) for s in np.asarray(scales).reshape(-1)]
    if in_shape is None or out_shape is None or None in in_shape[2:] or None in out_shape[2:]:
        raise DynamicShapeError(f"node '{ctx.name}' ({ctx.op}): scale unknown (sizes not inferred); "
                                f"set the input size with --input-shape")
    return [Fraction(1)] * 2 + [Fraction(o, i) for i, o in zip(in_shape[2:], out_shape[2:])]


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
    b.shapes[back] = tuple(moved[i] for i in np.argsort(perm))
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
    """SpaceToDepth: the permutation of the ONNX spec (reshape, transpose, reshape), undone."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    split, perm = (N, C, H // bs, bs, W // bs, bs), (0, 3, 5, 1, 2, 4)
    return [_blocks_moved(b, gys[0], [split[i] for i in perm], perm, xs)]


def _resize_matrix(n: NodeView, b: Builder, axis: int) -> np.ndarray:
    """The (out x in) matrix of a Resize along one axis, measured by onnxruntime on basis vectors."""
    import onnxruntime as ort  # local: vjp building needs ORT only for Resize

    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    size_in, size_out = xs[axis], ys[axis]
    # decoded values, re-encoded by make_node (whose attribute kwargs are typed Any)
    attrs: dict[str, Any] = {k: v for k, v in n.attrs.items()
                             if k not in ("axes", "keep_aspect_ratio_policy")}
    scales = b.value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
    inits = []
    roi = b.value(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
    crop = attrs.get("coordinate_transformation_mode") in ("tf_crop_and_resize", b"tf_crop_and_resize")
    if roi is not None and roi.size and crop:  # roi: starts then ends of the resized axes
        axes = [int(a) % len(xs) for a in n.attr_ints("axes") or range(len(xs))]
        at = axes.index(axis) if axis in axes else None
        start, end = (roi[at], roi[roi.size // 2 + at]) if at is not None else (0.0, 1.0)
        inits.append(numpy_helper.from_array(np.array([0.0, start, 1.0, end], np.float32), "roi"))
    if scales is not None and scales.size:
        full = np.ones(len(xs), dtype=np.float32)
        axes = n.attr_ints("axes") or list(range(len(xs)))
        for a, s in zip(axes, scales.tolist()):
            full[int(a) % len(xs)] = s
        inits.append(numpy_helper.from_array(np.array([1.0, full[axis]], np.float32), "scales"))
        ins = ["x", "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([size_in, size_out], np.int64), "sizes"))
        ins = ["x", "", "", "sizes"]
    if len(inits) == 2:  # the crop's region of interest along this axis
        ins[1] = "roi"
    node = helper.make_node("Resize", ins, ["y"], **attrs)
    graph = helper.make_graph([node], "resize_matrix",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size_in, size_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.eye(size_in, dtype=np.float32)})
    (offset,) = sess.run(None, {"x": np.zeros((size_in, size_in), np.float32)})  # extrapolation_value
    y = y - offset
    if y.shape != (size_in, size_out):
        raise UnsupportedOpError(n.name, "Resize", "could not measure the resize along one axis")
    return y.T.astype(np.float64)  # (out, in): y = M x


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
        g = _set_shape(b, b.op("Identity", g), gys[0])
    return [g] + [None] * (len(n.inputs) - 1)


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
    b.shapes[scattered] = (batch, channels, h * w)
    return [b.reshape(scattered, xs), None]


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
