"""The op-rule table: the only place in rfgraph that knows what ONNX ops do to spatial positions.

Each rule reads one node and returns a ``Transfer``: for every output, its *layout* (which tensor
axis indexes which input spatial axis) and its *edges*: for each data input, the span that maps an
output unit to the input units it reads along each spatial axis, or ``MIXES`` where the op reads all
positions (global pooling, attention, Flatten+Gemm...).  The TRF pass, the paper's reverse pass and
the path histogram all interpret these transfers; none of them knows an op.

Conventions: spatial axes of conv/pool ops are tensor axes 2.. (N, C, D, H, W); a layout axis is a
tuple of parts ``(spatial_axis, size)`` with ``spatial_axis = -1`` for non-spatial factors, so a
Reshape that flattens H and W into tokens keeps track of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx

from . import geometry
from .errors import DynamicShapeError, InvalidAttributeError, UnsupportedOpError
from .fields import BROADCAST, IDENTITY, Span

Part = tuple[int, int]  # (input spatial axis or -1, size)
AxisLayout = tuple[Part, ...]
Layout = tuple[AxisLayout, ...]
MIXES = None  # edge value: the op reads every position along this spatial axis


@dataclass(frozen=True)
class Edge:
    """How one output reads one data input: per spatial axis a span (absent: identity) or MIXES."""

    slot: int
    maps: Mapping[int, Span | None] = field(default_factory=dict)

    def span(self, axis: int) -> Span | None:
        return self.maps.get(axis, IDENTITY)


@dataclass(frozen=True)
class OutTransfer:
    """One output tensor: its layout and the edges from the node's data inputs."""

    layout: Layout
    edges: tuple[Edge, ...]


@dataclass(frozen=True)
class Transfer:
    """What a node does to spatial positions; ``size_dependent`` when its padding depends on sizes."""

    outputs: tuple[OutTransfer | None, ...]
    size_dependent: bool = False
    mix_reason: str = ""


@dataclass
class NodeContext:
    """Everything a rule may read about a node: attributes, layouts, shapes, constant inputs."""

    name: str
    op: str
    node: onnx.NodeProto
    attrs: dict
    layouts: list[Layout | None]  # per input slot; None for static (input-independent) tensors
    in_shapes: list[tuple | None]
    out_shapes: list[tuple | None]
    constant: Callable[[str], np.ndarray | None]
    opset: int

    def const(self, slot: int) -> np.ndarray | None:
        """Constant value of input ``slot`` (None when absent or computed at run time)."""
        if slot >= len(self.node.input) or not self.node.input[slot]:
            return None
        return self.constant(self.node.input[slot])

    def ints(self, slot: int, attr: str) -> list[int] | None:
        """An int list given either as input ``slot`` (newer opsets) or attribute ``attr``."""
        value = self.const(slot)
        if value is not None:
            return [int(v) for v in np.asarray(value).reshape(-1)]
        if attr in self.attrs:
            return [int(v) for v in self.attrs[attr]]
        return None

    def has_input(self, slot: int) -> bool:
        return slot < len(self.node.input) and bool(self.node.input[slot])

    def data_slots(self) -> list[int]:
        return [i for i, lay in enumerate(self.layouts) if lay is not None]

    def data_layout(self, slot: int = 0) -> Layout:
        """Layout of input ``slot``; unsupported when that input does not depend on the model input."""
        lay = self.layouts[slot]
        if lay is None:
            raise self.unsupported(f"input {slot} does not depend on the model input, but another "
                                   f"input does; no rule for that case")
        return lay

    def rank(self, slot: int = 0) -> int:
        lay = self.layouts[slot]
        return len(lay) if lay is not None else len(self.in_shapes[slot] or ())

    def out_dim(self, axis: int, out: int = 0) -> int | None:
        shape = self.out_shapes[out]
        return None if shape is None else shape[axis]

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.name, self.op, why)

    def invalid(self, why: str) -> InvalidAttributeError:
        return InvalidAttributeError(f"node '{self.name}' ({self.op}): {why}")


Rule = Callable[[NodeContext], Transfer]


# ---------------------------------------------------------------- layout helpers


def spatial_of(axis_layout: Sequence[Part]) -> list[int]:
    """Input spatial axes indexed by one tensor axis."""
    return [a for a, _ in axis_layout if a >= 0]


def carried(layout: Layout) -> dict[int, int]:
    """Map input spatial axis -> the tensor axis that indexes it alone (composites excluded)."""
    out = {}
    split = split_axes(layout)
    for t, parts in enumerate(layout):
        sp = spatial_of(parts)
        if len(sp) == 1 and len(parts) == 1 and sp[0] not in split:
            out[sp[0]] = t
    return out


def split_axes(layout: Layout) -> set[int]:
    """Input spatial axes split over several tensor axes (a window partition: windows x rows)."""
    seen: dict[int, int] = {}
    for parts in layout:
        for a in set(spatial_of(parts)):
            seen[a] = seen.get(a, 0) + 1
    return {a for a, n in seen.items() if n > 1}


def axis_parts(layout: Layout, axis: int) -> list[tuple[int, int, int]]:
    """(tensor axis, index within it, size) of every part of input spatial ``axis``, in layout
    order, which is their order of significance: the position is their row-major index."""
    return [(t, i, s) for t, parts in enumerate(layout) for i, (a, s) in enumerate(parts) if a == axis]


def all_spatial(layout: Layout) -> set[int]:
    """Every input spatial axis indexed anywhere in the layout."""
    return {a for parts in layout for a, _ in parts if a >= 0}


def with_sizes(layout: Layout, shape: Sequence[int | None] | None) -> Layout:
    """The same layout with single-part axes resized to a new shape (after a window op)."""
    if shape is None or len(shape) != len(layout):
        return layout
    out: list[AxisLayout] = []
    for parts, dim in zip(layout, shape):
        if dim is not None and (len(parts) == 1 or not spatial_of(parts)):
            out.append(((parts[0][0], dim),))
        else:
            out.append(parts)
    return tuple(out)


def plain_layout(shape: Sequence[int | None]) -> Layout:
    """Layout of a tensor with no spatial axes."""
    return tuple(((-1, d if d is not None else 0),) for d in shape)


def mixed_maps(layout: Layout, axes: Sequence[int]) -> dict[int, Span | None]:
    """Edge maps for an op that reads all positions along tensor ``axes``."""
    return {a: MIXES for t in axes for a in spatial_of(layout[t])}


def strip_spatial(layout: Layout, axes: Sequence[int]) -> Layout:
    """Layout where the given tensor axes no longer index input positions (after mixing them)."""
    out = list(layout)
    for t in axes:
        out[t] = ((-1, math.prod(s for _, s in layout[t])),)
    return tuple(out)


class AxisOutOfRange(ValueError):
    """An axis attribute outside [-rank, rank): the pass reports it naming the node."""


def _norm_axis(axis: int, rank: int) -> int:
    """``axis`` in [0, rank), negative axes counted from the end; out of range is refused (a
    Softmax axis of -10^8 built a list of 10^8 axes, 6 GB)."""
    if not -rank <= axis < rank:
        raise AxisOutOfRange(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- generic rule shapes


def pointwise(ctx: NodeContext, outputs: int | None = None) -> Transfer:
    """Each output position reads the same position of input 0 (activations, BatchNorm, Cast)."""
    n_out = len(ctx.node.output) if outputs is None else outputs
    lay = with_sizes(ctx.data_layout(0), ctx.out_shapes[0])
    out = OutTransfer(lay, (Edge(0),))
    return Transfer(tuple(out if i == 0 or outputs is None else None for i in range(n_out)))


def broadcast(ctx: NodeContext) -> Transfer:
    """Elementwise n-ary op with numpy broadcasting (Add, Mul, Where, PRelu, Concat on channels)."""
    out_shape = ctx.out_shapes[0]
    slots = ctx.data_slots()
    rank = max([len(out_shape or ())] + [ctx.rank(s) for s in slots])  # inputs align on the right
    if out_shape is not None and len(out_shape) < rank:
        raise ctx.invalid(f"output rank {len(out_shape)} is below an input's rank {rank}")
    layout: list[AxisLayout | None] = [None] * rank
    for s in slots:  # take each axis's layout from an input that is not broadcast along it
        lay, shape = ctx.data_layout(s), ctx.in_shapes[s]  # a data slot: never raises
        off = rank - len(lay)
        for t, parts in enumerate(lay):
            dim = shape[t] if shape else None
            if layout[off + t] is None and (dim != 1 or (out_shape and out_shape[off + t] == 1)):
                layout[off + t] = parts
    final = tuple(p if p is not None else ((-1, (out_shape or [1] * rank)[i] or 1),)
                  for i, p in enumerate(layout))
    out_axes = carried(final)
    edges = []
    for s in slots:
        lay, in_shape = ctx.data_layout(s), ctx.in_shapes[s]
        off = rank - len(lay)
        mine = {a: t + off for a, t in carried(lay).items()}
        maps: dict[int, Span | None] = {}
        for a, t in out_axes.items():
            if mine.get(a) != t or (in_shape and in_shape[t - off] == 1 and final[t][0][1] != 1):
                maps[a] = BROADCAST
        edges.append(Edge(s, maps))
    return Transfer((OutTransfer(with_sizes(final, out_shape), tuple(edges)),))


def cast_like_rule(ctx: NodeContext) -> Transfer:
    """CastLike(x, like): x in like's type; ``like`` gives only the type, so the output reads
    input 0 alone, and is a constant when input 0 is (the opset-18 function bodies of Relu, Elu,
    Gelu... cast their constants this way)."""
    if ctx.layouts[0] is None:
        return Transfer((None,))
    return Transfer((OutTransfer(with_sizes(ctx.data_layout(0), ctx.out_shapes[0]), (Edge(0),)),))


def with_scalar_edges(ctx: NodeContext, transfer: Transfer, slots: Sequence[int]) -> Transfer:
    """The transfer, with the input-dependent ones of ``slots`` (scales and zero points of
    quantized ops, scalars or per-channel vectors) read by every output unit: a broadcast."""
    extra = [s for s in ctx.data_slots() if s in slots]
    if not extra:
        return transfer
    outs = []
    for out in transfer.outputs:
        if out is not None:
            maps = dict.fromkeys(carried(out.layout), BROADCAST)
            out = OutTransfer(out.layout, out.edges + tuple(Edge(s, maps) for s in extra))
        outs.append(out)
    return Transfer(tuple(outs), transfer.size_dependent, transfer.mix_reason)


def quantize_rule(ctx: NodeContext) -> Transfer:
    """QuantizeLinear/DequantizeLinear: pointwise in x; a scale or zero point computed at run time
    (DynamicQuantizeLinear's) is read by every unit."""
    if ctx.layouts[0] is None:
        raise ctx.unsupported("quantized data is constant but its scale depends on the input")
    return with_scalar_edges(ctx, pointwise(ctx, 1), (1, 2))


def dynamic_quantize_rule(ctx: NodeContext) -> Transfer:
    """DynamicQuantizeLinear: y = round(x / scale) + zero point, where scale and zero point come
    from the min and max over all of x: every output reads every position (y keeps its layout)."""
    lay = ctx.data_layout(0)
    maps = mixed_maps(lay, range(len(lay)))
    y = OutTransfer(with_sizes(lay, ctx.out_shapes[0]), (Edge(0, maps),))
    scalar = OutTransfer((), (Edge(0, maps),))
    why = "DynamicQuantizeLinear: its scale and zero point are the min and max over the whole tensor"
    return Transfer((y, scalar, scalar)[: len(ctx.node.output)], mix_reason=why if maps else "")


def mix_axes(ctx: NodeContext, axes: Sequence[int], keepdims: bool = True, why: str = "") -> Transfer:
    """An op that reads all positions along tensor ``axes`` of input 0 (reductions, softmax)."""
    lay = ctx.data_layout(0)
    maps = mixed_maps(lay, axes)
    out_lay = strip_spatial(lay, axes)
    if not keepdims:
        out_lay = tuple(p for t, p in enumerate(out_lay) if t not in set(axes))
    out_lay = with_sizes(out_lay, ctx.out_shapes[0])
    outs: list[OutTransfer | None] = [OutTransfer(out_lay, (Edge(0, maps),))]
    outs += [None] * (len(ctx.node.output) - 1)
    return Transfer(tuple(outs), mix_reason=(why or f"{ctx.op} mixes all positions") if maps else "")


def window(ctx: NodeContext, spans: Sequence[Span], size_dependent: bool = False) -> Transfer:
    """Sliding-window op over tensor axes 2.. of input 0 (Conv, pooling, Resize, Pad...)."""
    lay = ctx.data_layout(0)
    if len(spans) != len(lay) - 2:
        raise ctx.invalid(f"window over {len(spans)} spatial axes, but the input has rank {len(lay)} "
                          f"({max(len(lay) - 2, 0)} spatial axes)")
    maps: dict[int, Span | None] = {}
    for j, span in enumerate(spans):
        parts = lay[2 + j]
        axes = spatial_of(parts)
        if not axes:
            continue  # a window over a non-spatial axis does not move the field
        if len(parts) > 1:
            raise ctx.unsupported(f"sliding window over a flattened axis holding spatial axes {axes}")
        if span != IDENTITY:
            maps[axes[0]] = span
    out = OutTransfer(with_sizes(lay, ctx.out_shapes[0]), (Edge(0, maps),))
    rest: list[OutTransfer | None] = [None] * (len(ctx.node.output) - 1)
    if ctx.op == "MaxPool" and rest:  # Indices output: same positions as Y
        rest[0] = out
    return Transfer((out, *rest), size_dependent=size_dependent)


# ---------------------------------------------------------------- sliding windows


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


def conv_rule(weight_slot: int | None = 1, data_slot: int = 0,
              scalar_slots: Sequence[int] = ()) -> Callable[[NodeContext], Transfer]:
    """Conv-like op: each output unit reads k_eff = d(k-1)+1 inputs from u*s - p_begin;
    ``scalar_slots`` (quantization scales, zero points) may be computed from the input."""
    def rule(ctx: NodeContext) -> Transfer:
        if data_slot != 0:
            ctx.layouts = [ctx.layouts[data_slot]] + ctx.layouts[1:]
        for slot in ctx.data_slots():
            if slot != 0 and slot != data_slot and slot not in scalar_slots:
                raise ctx.unsupported("weights computed from the input (data-dependent kernel)")
        kernel = _kernel(ctx, weight_slot)
        geo = geometry.window(ctx.op, ctx.name, ctx.attrs, kernel, _spatial_sizes(ctx, len(kernel)))
        tr = window(ctx, [Span.layer(a.kernel, a.stride, a.pad_begin, a.dilation) for a in geo.axes],
                    geo.size_dependent)
        return with_scalar_edges(ctx, tr, scalar_slots)
    return rule


def pool_rule(ctx: NodeContext) -> Transfer:
    """Max/Average/Lp pooling: a window like Conv; ceil_mode only adds end padding."""
    return conv_rule(weight_slot=None)(ctx)


def conv_transpose_rule(ctx: NodeContext) -> Transfer:
    """ConvTranspose: output o reads inputs i with i*s + j*d - p_begin = o (fractional stride 1/s)."""
    if 1 in ctx.data_slots():
        raise ctx.unsupported("weights computed from the input (data-dependent kernel)")
    kernel = _kernel(ctx, 1)
    geo = geometry.conv_transpose(ctx.name, ctx.attrs, kernel, _spatial_sizes(ctx, len(kernel)))
    spans = []
    for ax in geo.axes:
        s, p = ax.stride, ax.pad_begin
        lo = [-((-(t + p - (ax.k_eff - 1))) // s) for t in range(s)]
        hi = [(t + p) // s for t in range(s)]
        spans.append(Span.periodic(1, lo, hi))
    return window(ctx, spans, geo.size_dependent)


# ---------------------------------------------------------------- resampling


def _resize_index_span(ctx: NodeContext, axis: geometry.ResizeAxis) -> Span:
    """Exact span of Resize along one axis: which input units each output unit interpolates
    (x_original is affine in the unit, so one period of taps describes every unit)."""
    if axis.scale <= 0:
        raise ctx.invalid(f"resize scale {axis.scale} must be positive")
    if axis.how.coord == "tf_crop_and_resize":
        raise ctx.unsupported("coordinate_transformation_mode 'tf_crop_and_resize' (roi)")
    period, advance = axis.period()
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
    spans = []
    for t in range(2, ctx.rank(0)):
        in_size = in_shape[t] if in_shape else None
        out_size = out_shape[t] if out_shape else None
        spans.append(_resize_index_span(ctx, geometry.ResizeAxis(how, scales[t], in_size, out_size)))
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


def _str_attr(ctx: NodeContext, name: str, default: str) -> str:
    value = ctx.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


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


# ---------------------------------------------------------------- shifts and crops


def pad_rule(ctx: NodeContext) -> Transfer:
    """Pad (any mode): output unit u reads input u - pad_begin; reflect/edge only remap the border."""
    rank = ctx.rank(0)
    pads = ctx.ints(1, "pads") if ctx.opset >= 11 else list(ctx.attrs.get("pads", ctx.attrs.get("paddings", [])))
    if pads is None:
        return _shape_only_shift(ctx, "pads computed at run time")
    axes = ctx.ints(3, "axes") if ctx.has_input(3) else list(range(rank))
    if axes is None:
        raise ctx.unsupported("Pad axes computed at run time")
    axes = [_norm_axis(a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ctx.invalid(f"pads {pads} do not match axes {axes}")
    begins = dict(zip(axes, pads[: len(axes)]))
    return _shifts(ctx, {t: begins.get(t, 0) for t in range(rank)})


def _shifts(ctx: NodeContext, begin_by_axis: Mapping[int, int], steps: Mapping[int, int] | None = None) -> Transfer:
    """Output unit u along tensor axis t reads input unit u*step - begin (Pad, Slice, Crop)."""
    out = _shift_out(ctx, begin_by_axis, steps)
    return Transfer((out,) + (None,) * (len(ctx.node.output) - 1))


def _shift_out(ctx: NodeContext, begin_by_axis: Mapping[int, int], steps: Mapping[int, int] | None) -> OutTransfer:
    """The first output of ``_shifts``: the shifted layout and its one edge from input 0."""
    lay = ctx.data_layout(0)
    maps: dict[int, Span | None] = {}
    for t, begin in begin_by_axis.items():
        step = (steps or {}).get(t, 1)
        if begin == 0 and step == 1:
            continue
        parts = lay[t]
        axes = spatial_of(parts)
        if not axes:
            continue
        if len(parts) > 1:
            raise ctx.unsupported(f"shift/crop along a flattened axis holding spatial axes {axes}")
        maps[axes[0]] = Span.layer(1, step, begin)
    return OutTransfer(with_sizes(lay, ctx.out_shapes[0]), (Edge(0, maps),))


def _shape_only_shift(ctx: NodeContext, why: str) -> Transfer:
    """When offsets are not constant: fine if no spatial size changed, else unsupported."""
    lay, ins, outs = ctx.data_layout(0), ctx.in_shapes[0], ctx.out_shapes[0]
    for t, parts in enumerate(lay):
        if spatial_of(parts) and (ins is None or outs is None or ins[t] != outs[t]):
            raise ctx.unsupported(f"{why}; the spatial offset cannot be determined")
    return _shifts(ctx, {})


def slice_rule(ctx: NodeContext) -> Transfer:
    """Slice: output unit u reads input start + u*step along each sliced axis (a negative step
    reverses the axis: the span decreases, S < 0)."""
    rank = ctx.rank(0)
    if ctx.opset >= 10:
        starts = ctx.ints(1, "starts")
        axes = ctx.ints(3, "axes") if ctx.has_input(3) else None
        steps = ctx.ints(4, "steps") if ctx.has_input(4) else None
    else:
        starts, axes, steps = ctx.attrs.get("starts"), ctx.attrs.get("axes"), None
    if starts is None or (ctx.has_input(3) and axes is None) or (ctx.has_input(4) and steps is None):
        return _shape_only_shift(ctx, "slice bounds computed at run time")
    axes = [_norm_axis(a, rank) for a in (axes or range(len(starts)))]
    steps = list(steps or [1] * len(axes))
    shape = ctx.in_shapes[0]
    begins, step_by = {}, {}
    for a, st, sp in zip(axes, starts, steps):
        if sp == 0:
            raise ctx.invalid("slice step 0")
        dim = shape[a] if shape else None
        if dim is not None:  # ONNX clamps the start to [0, dim], or [0, dim - 1] going backwards
            st = min(max(st + dim if st < 0 else st, 0), dim if sp > 0 else dim - 1)
        elif st < 0 or (sp < 0 and spatial_of(ctx.data_layout(0)[a])):
            raise DynamicShapeError(f"node '{ctx.name}' (Slice): a negative start or step needs a known "
                                    f"size; set it with --input-shape")
        begins[a], step_by[a] = -st, sp  # a negative step reverses the axis: a flip
    return _shifts(ctx, begins, step_by)


def crop_rule(ctx: NodeContext) -> Transfer:
    """Crop (opset 1): border = [left, top, right, bottom]; output starts at (top, left)."""
    border = list(ctx.attrs.get("border", [0, 0, 0, 0]))
    return _shifts(ctx, {2: -border[1], 3: -border[0]})


def concat_rule(ctx: NodeContext) -> Transfer:
    """Concat: a merge along channels; along a spatial axis, a shift when one input is data."""
    rank = ctx.rank(ctx.data_slots()[0])
    axis = _norm_axis(int(ctx.attrs.get("axis", 1)), rank)
    data = ctx.data_slots()
    if not spatial_of(ctx.data_layout(data[0])[axis]):  # a data slot: never raises
        return broadcast(ctx)
    parts = ctx.data_layout(data[0])[axis]
    if len(data) > 1 and any(len(ctx.data_layout(s)[axis]) > 1 for s in data):
        raise ctx.unsupported("concatenation of several input-dependent tensors along flattened grids "
                              "of positions (detection heads): each piece keeps its own field")
    if len(data) > 1 or len(parts) > 1 or parts[0][0] in split_axes(ctx.data_layout(data[0])):
        return _concat_mixes(ctx, axis, data)
    offset = 0
    for slot in range(data[0]):
        shape = ctx.in_shapes[slot]
        if shape is None or shape[axis] is None:
            raise DynamicShapeError(f"node '{ctx.name}' (Concat): size of input {slot} unknown")
        offset += shape[axis]
    ctx.layouts = [ctx.layouts[data[0]]]
    out = _shift_out(ctx, {axis: offset}, None)
    return Transfer((OutTransfer(out.layout, (Edge(data[0], out.edges[0].maps),)),))


def _concat_mixes(ctx: NodeContext, axis: int, data: Sequence[int]) -> Transfer:
    """Concat along positions that no shift describes: several input-dependent pieces along one
    axis (a roll: which piece a unit reads depends on the unit) or tokens added to a flattened grid (a
    ViT's class token): reported as reading the whole input along those axes, an upper bound."""
    lay = ctx.data_layout(data[0])
    out_lay = with_sizes(strip_spatial(lay, [axis]), ctx.out_shapes[0])
    edges = tuple(Edge(s, mixed_maps(ctx.data_layout(s), [axis])) for s in data)
    why = ("Concat of several input-dependent pieces along positions (which piece a unit reads "
           "depends on the unit)" if len(data) > 1 else
           "Concat adds tokens to a flattened grid of positions (a class token): the token axis no "
           "longer indexes the grid")
    return Transfer((OutTransfer(out_lay, edges),), mix_reason=why + "; reported as the whole input, an upper bound")


def split_rule(ctx: NodeContext) -> Transfer:
    """Split: channel splits are pointwise; spatial splits shift each output by its offset."""
    rank = ctx.rank(0)
    axis = _norm_axis(int(ctx.attrs.get("axis", 0)), rank)
    lay0 = ctx.data_layout(0)
    outs: list[OutTransfer | None] = []
    offset = 0
    for i in range(len(ctx.node.output)):
        shape = ctx.out_shapes[i]
        lay = with_sizes(lay0, shape)
        maps: dict[int, Span | None] = {}
        axes = spatial_of(lay0[axis])
        if axes and offset:
            if len(lay0[axis]) > 1:
                raise ctx.unsupported("split along a flattened spatial axis")
            maps[axes[0]] = Span.layer(1, 1, -offset)
        outs.append(OutTransfer(lay, (Edge(0, maps),)))
        if axes:
            if shape is None or shape[axis] is None:
                raise DynamicShapeError(f"node '{ctx.name}' (Split): output sizes unknown")
            offset += shape[axis]
    return Transfer(tuple(outs))


def gather_rule(ctx: NodeContext) -> Transfer:
    """Gather: pointwise along other axes; along a spatial axis, a constant pick pins the unit."""
    rank = ctx.rank(0)
    if ctx.layouts[0] is None:
        raise ctx.unsupported("gather of a constant table with input-dependent indices")
    axis = _norm_axis(int(ctx.attrs.get("axis", 0)), rank)
    idx = ctx.const(1)
    lay = ctx.layouts[0]
    parts = lay[axis]
    ishape = np.shape(idx) if idx is not None else (ctx.in_shapes[1] or ())
    new_axes = tuple(((-1, d or 0),) for d in ishape)
    out_lay = with_sizes(lay[:axis] + new_axes + lay[axis + 1:], ctx.out_shapes[0])
    if not spatial_of(parts):
        return Transfer((OutTransfer(out_lay, (Edge(0),)),))
    if idx is None or np.size(idx) != 1 or len(parts) > 1:
        maps = mixed_maps(lay, [axis])
        return Transfer((OutTransfer(out_lay, (Edge(0, maps),)),),
                        mix_reason="Gather with run-time or several indices along a spatial axis")
    i = int(np.asarray(idx).reshape(-1)[0])
    if i < 0:
        i += parts[0][1]
    return Transfer((OutTransfer(out_lay, (Edge(0, {parts[0][0]: Span(1, 0, (i,), (i,))}),)),))


# ---------------------------------------------------------------- relayouts


def transpose_rule(ctx: NodeContext) -> Transfer:
    """Transpose: permutes which tensor axis indexes which spatial axis; positions unchanged,
    unless it moves the rows within a block ahead of the block index (``_fold_out_of_order``)."""
    lay = ctx.data_layout(0)
    perm = list(ctx.attrs.get("perm", list(range(len(lay)))[::-1]))
    if sorted(perm) != list(range(len(lay))):
        raise ctx.invalid(f"perm {perm} is not a permutation of {len(lay)} axes")
    out = tuple(lay[p] for p in perm)
    maps: dict[int, Span | None] = {}
    for a in split_axes(lay):
        before = [(t, i) for t, i, _ in axis_parts(lay, a)]
        after = sorted(before, key=lambda ti: (perm.index(ti[0]), ti[1]))
        if after != before:
            out, maps[a] = _fold_out_of_order(lay, out, perm, a)
    return Transfer((OutTransfer(out, (Edge(0, maps),)),))


def _fold_out_of_order(lay: Layout, out: Layout, perm: Sequence[int], axis: int) -> tuple[Layout, Span | None]:
    """A Transpose that moves a less significant part of a split spatial axis before a more
    significant one (pixel_unshuffle, bytes folded into channels): a position can no longer be
    read row-major, so the parts moved ahead of a more significant one become features and
    each unit reads the whole of them (SpaceToDepth's block when they are the innermost)."""
    parts = axis_parts(lay, axis)
    where = {(t, i): (perm.index(t), i) for t, i, _ in parts}  # the part's place after the Transpose
    kept = [all(where[(t, i)] > where[(t2, i2)] for t2, i2, _ in parts[:j]) for j, (t, i, _) in enumerate(parts)]
    dropped = {where[(t, i)] for (t, i, _), keep in zip(parts, kept) if not keep}
    new = tuple(tuple((-1, s) if (t, i) in dropped else (a, s) for i, (a, s) in enumerate(p))
                for t, p in enumerate(out))
    sizes = [s for _, _, s in parts]
    copied = [k for k, keep in enumerate(kept) if keep]
    return new, copy_span(sizes, [sizes[k] for k in copied], copied)


def reshape_rule(ctx: NodeContext) -> Transfer:
    """Reshape/Flatten: regroups axis parts; a spatial axis may split into parts (windows x rows
    within a window), kept most significant first so a position is their row-major index."""
    out_shape = ctx.out_shapes[0]
    if (out_shape is None or None in out_shape) and ctx.op == "Reshape":
        out_shape = _reshape_target(ctx)
    if out_shape is None or None in out_shape:
        raise DynamicShapeError(f"node '{ctx.name}' ({ctx.op}): output shape unknown after shape "
                                f"inference; set the input size with --input-shape")
    layout = regroup(ctx, ctx.data_layout(0), out_shape)
    maps: dict[int, Span | None] = {}
    for a in split_axes(layout):
        layout, maps[a] = _fold_inner_parts(layout, a)
    edge = Edge(0, {a: sp for a, sp in maps.items() if sp is not IDENTITY})
    return Transfer((OutTransfer(layout, (edge,)),) + (None,) * (len(ctx.node.output) - 1))


def _fold_inner_parts(layout: Layout, axis: int) -> tuple[Layout, Span | None]:
    """Rows within a block merged into the features (Swin's patch merging: [B, H/2, 2, W/2, 2, C]
    -> [B, H/2, W/2, 4C]) while the block index keeps an axis of its own: those rows become
    features and each unit reads its whole block.  The most significant part stays a position
    even beside a batch axis (windows folded into the batch)."""
    parts = axis_parts(layout, axis)
    features = {t for t, p in enumerate(layout) if any(a < 0 and s > 1 for a, s in p)}
    kept = [j == 0 or t not in features for j, (t, _, _) in enumerate(parts)]
    if all(kept):
        return layout, IDENTITY
    dropped = {(t, i) for (t, i, _), keep in zip(parts, kept) if not keep}
    new = tuple(tuple((-1, s) if (t, i) in dropped else (a, s) for i, (a, s) in enumerate(p))
                for t, p in enumerate(layout))
    sizes = [s for _, _, s in parts]
    copied = [k for k, keep in enumerate(kept) if keep]
    return new, copy_span(sizes, [sizes[k] for k in copied], copied)


def _reshape_target(ctx: NodeContext) -> tuple[int, ...] | None:
    """Reshape's output shape from a folded constant target (0 copies a dim, -1 is inferred);
    for exporters that compute the target from Shape, where ONNX shape inference gives up."""
    target, in_shape = ctx.const(1), ctx.in_shapes[0]
    if target is None or in_shape is None or None in in_shape:
        return None
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    if not ctx.attrs.get("allowzero", 0):
        dims = [in_shape[i] if d == 0 and i < len(in_shape) else d for i, d in enumerate(dims)]
    known = math.prod(d for d in dims if d != -1)
    if dims.count(-1) > 1 or any(d < -1 for d in dims) or (dims.count(-1) and known == 0):
        raise ctx.invalid(f"Reshape target {dims} is not a valid shape")
    total = math.prod(in_shape)
    dims = [total // known if d == -1 else d for d in dims]
    if math.prod(dims) != total:
        raise ctx.invalid(f"cannot reshape {list(in_shape)} to {dims}")
    return tuple(dims)


def regroup(ctx: NodeContext, layout: Layout, out_shape: Sequence[int]) -> Layout:
    """Assign the input's axis parts, in row-major order, to the output dims."""
    parts = [p for axis in layout for p in axis if p[1] != 1 or p[0] >= 0]
    out: list[AxisLayout] = []
    i = 0
    for d in out_shape:
        group: list[Part] = []
        prod = 1
        while prod < d:
            if i >= len(parts):
                raise ctx.unsupported(f"cannot map input dims onto output shape {list(out_shape)}")
            a, s = parts[i]
            if s == 0:
                raise DynamicShapeError(f"node '{ctx.name}' ({ctx.op}): input shape unknown")
            if d % (prod * s) == 0:
                group.append(parts[i])
                prod *= s
                i += 1
            elif d % prod == 0 and s % (d // prod) == 0:  # split: the outer part here, the rest next
                need = d // prod
                group.append((a, need))
                parts[i] = (a, s // need)
                prod *= need
            else:
                what = "a spatial axis" if a >= 0 else "an axis"
                raise ctx.unsupported(f"Reshape to {list(out_shape)} splits {what} across output dims "
                                      f"in a way that does not keep its positions row-major")
        while i < len(parts) and parts[i][1] == 1 and d == 1 and not group:
            group.append(parts[i])
            i += 1
        out.append(_merge_adjacent(group) if spatial_of(group) else ((-1, d),))
    return tuple(out)


def _merge_adjacent(group: Sequence[Part]) -> AxisLayout:
    """One part for consecutive parts of the same spatial axis (a window reverse joins the
    window index and the row within it back into the row)."""
    out: list[Part] = []
    for a, s in group:
        if out and a >= 0 and out[-1][0] == a:
            out[-1] = (a, out[-1][1] * s)
        else:
            out.append((a, s))
    return tuple(out)


def flatten_rule(ctx: NodeContext) -> Transfer:
    """Flatten(axis): a Reshape to (prod(dims[:axis]), prod(dims[axis:]))."""
    return reshape_rule(ctx)


def squeeze_rule(ctx: NodeContext) -> Transfer:
    """Squeeze/Unsqueeze: drop or insert size-1 axes (a squeezed spatial axis stays pinned)."""
    out_shape = ctx.out_shapes[0]
    lay = ctx.data_layout(0)
    rank = len(lay)
    axes = ctx.ints(1, "axes")
    if ctx.op == "Squeeze":
        if axes is None:
            axes = [t for t, parts in enumerate(lay) if math.prod(s for _, s in parts) == 1]
        drop = {_norm_axis(a, rank) for a in axes}
        new = tuple(p for t, p in enumerate(lay) if t not in drop)
    else:
        if axes is None:
            raise ctx.unsupported("Unsqueeze axes computed at run time")
        out_rank = rank + len(axes)
        ins = sorted(_norm_axis(a, out_rank) for a in axes)
        it = iter(lay)
        new = tuple(((-1, 1),) if t in ins else next(it) for t in range(out_rank))
    return Transfer((OutTransfer(with_sizes(new, out_shape), (Edge(0),)),))


# ---------------------------------------------------------------- mixing ops


def global_pool_rule(ctx: NodeContext) -> Transfer:
    """GlobalAverage/Max/LpPool: every output reads all spatial positions."""
    return mix_axes(ctx, range(2, ctx.rank(0)), why=f"{ctx.op} over all spatial positions")


def reduce_rule(ctx: NodeContext) -> Transfer:
    """Reduce*/ArgMax/ArgMin: reduced spatial axes become global."""
    rank = ctx.rank(0)
    axes: list[int] | None
    if ctx.op in ("ArgMax", "ArgMin"):
        axes = [int(ctx.attrs.get("axis", 0))]
    else:
        axes = ctx.ints(1, "axes")
        if axes is None and ctx.has_input(1):
            raise ctx.unsupported("reduction axes computed at run time")
        if not axes:
            axes = [] if ctx.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted({_norm_axis(a, rank) for a in axes})
    return mix_axes(ctx, axes, keepdims=bool(ctx.attrs.get("keepdims", 1)),
                    why=f"{ctx.op} over axes {axes}")


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
        tr = mix_axes(ctx, axes, why=f"{ctx.op} statistics over axes {axes}")
        lay = with_sizes(ctx.data_layout(0), ctx.out_shapes[0])  # positions keep their meaning
        outs = tuple(None if o is None else OutTransfer(lay, o.edges) for o in tr.outputs)
        return Transfer(outs, mix_reason=tr.mix_reason)
    return rule


def batch_norm_rule(ctx: NodeContext) -> Transfer:
    """BatchNormalization: pointwise with fixed statistics; with training_mode=1 the batch
    statistics span the batch and every spatial axis (spec), so each output reads everything."""
    if not ctx.attrs.get("training_mode", 0):
        return pointwise(ctx)
    return norm_over_axes_rule(None, [0] + list(range(2, ctx.rank(0))))(ctx)


def lp_norm_rule(ctx: NodeContext) -> Transfer:
    """LpNormalization: the norm spans one axis."""
    return mix_axes(ctx, [_norm_axis(int(ctx.attrs.get("axis", -1)), ctx.rank(0))],
                    why="LpNormalization over its axis")


def matmul_rule(ctx: NodeContext) -> Transfer:
    """MatMul/Gemm: contracted spatial axes mix (attention, Flatten+Gemm); others pass through."""
    return _matmul(ctx, 0, 1)


def quantized_matmul_rule(b_slot: int, scalar_slots: Sequence[int]) -> Rule:
    """MatMulInteger (B at slot 1) and QLinearMatMul (B at slot 3): a MatMul whose zero points
    and scales (``scalar_slots``) may be computed from the input (dynamic quantization)."""
    def rule(ctx: NodeContext) -> Transfer:
        for slot in ctx.data_slots():
            if slot not in (0, b_slot, *scalar_slots):
                raise ctx.unsupported(f"input {slot} computed from the input; no rule for that case")
        return with_scalar_edges(ctx, _matmul(ctx, 0, b_slot), scalar_slots)
    return rule


def _matmul(ctx: NodeContext, a_slot: int, b_slot: int) -> Transfer:
    """The matrix product of the operands at ``a_slot`` and ``b_slot`` (see ``matmul_rule``)."""
    a_lay, b_lay = ctx.layouts[a_slot], ctx.layouts[b_slot]
    a_shape = ctx.in_shapes[a_slot] or tuple(0 for _ in (a_lay or ()))
    b_shape = ctx.in_shapes[b_slot] or tuple(0 for _ in (b_lay or ()))
    a_lay = a_lay if a_lay is not None else plain_layout(a_shape)
    b_lay = b_lay if b_lay is not None else plain_layout(b_shape)
    if ctx.op == "Gemm":
        if ctx.attrs.get("transA", 0):
            a_lay = a_lay[::-1]
        if ctx.attrs.get("transB", 0):
            b_lay = b_lay[::-1]
    if len(a_lay) < 2 or len(b_lay) < 2:
        raise ctx.unsupported("1-D matrix product")
    batch_rank = max(len(a_lay), len(b_lay)) - 2
    pad_a = ((((-1, 1),),) * (batch_rank + 2 - len(a_lay))) + a_lay
    pad_b = ((((-1, 1),),) * (batch_rank + 2 - len(b_lay))) + b_lay
    batch = tuple(pa if spatial_of(pa) or math.prod(s for _, s in pa) != 1 else pb
                  for pa, pb in zip(pad_a[:batch_rank], pad_b[:batch_rank]))
    out_lay = batch + (pad_a[-2], pad_b[-1])
    rows, cols = set(spatial_of(pad_a[-2])), set(spatial_of(pad_b[-1]))
    if rows & cols:  # attention scores: the query positions index the rows, the keys are read
        out_lay = out_lay[:-1] + (((-1, math.prod(s for _, s in pad_b[-1])),),)
    n = batch_rank
    to_out = {a_slot: list(range(n)) + [n, None], b_slot: list(range(n)) + [None, n + 1]}
    operands = [(slot, lay) for slot, lay in ((a_slot, pad_a), (b_slot, pad_b)) if ctx.layouts[slot] is not None]
    per_slot = {slot: _product_maps(lay, out_lay, to_out[slot]) for slot, lay in operands}
    mixed = {a for maps in per_slot.values() for a, sp in maps.items() if sp is MIXES}
    out_lay = tuple(((-1, math.prod(s for _, s in p)),) if set(spatial_of(p)) & mixed else p for p in out_lay)
    out_axes = carried(out_lay)
    edges = []
    for slot, _ in operands:
        maps = {a: sp for a, sp in per_slot[slot].items() if a not in mixed} | dict.fromkeys(mixed, MIXES)
        edges.append(Edge(slot, maps))
    if ctx.op == "Gemm" and len(ctx.node.input) > 2 and ctx.layouts[2] is not None:
        edges.append(Edge(2, dict.fromkeys(mixed, MIXES) | dict.fromkeys(out_axes, BROADCAST)))
    out_lay = with_sizes(out_lay, ctx.out_shapes[0])
    why = "matrix product over positions" if mixed else ""
    return Transfer((OutTransfer(out_lay, tuple(edges)),), mix_reason=why)


def _product_maps(lay: Layout, out_lay: Layout, to_out: Sequence[int | None]) -> dict[int, Span | None]:
    """Edge maps of one operand of a product: tensor axis t of the operand becomes output axis
    ``to_out[t]`` (None: contracted).  Per spatial axis: the output's parts copied from the
    operand's, the others read whole (MIXES when none is copied; a window's span when the
    window index is copied but not the row within it); BROADCAST where only the output has it."""
    maps: dict[int, Span | None] = {}
    for a in {x for p in [*lay, *out_lay] for x in spatial_of(p)}:
        mine = axis_parts(lay, a)
        if not mine:
            maps[a] = BROADCAST
            continue
        index = {(to_out[t], i): k for k, (t, i, _) in enumerate(mine) if to_out[t] is not None}
        theirs = axis_parts(out_lay, a)
        out_from = [index.get((t, i)) for t, i, _ in theirs]
        if out_from != list(range(len(mine))):
            maps[a] = copy_span([s for _, _, s in mine], [s for _, _, s in theirs], out_from)
    return maps


def copy_span(in_sizes: Sequence[int], out_sizes: Sequence[int], out_from: Sequence[int | None]) -> Span | None:
    """Span along one spatial axis split into parts of ``in_sizes`` (most significant first):
    output part j (``out_sizes[j]`` long) copies input part ``out_from[j]`` (None: it comes
    from another input, any value reads the same); input
    parts no output part copies are read at every value (a within-window attention, a block
    folded into features).  MIXES when no part is copied."""
    copied = [k for k in out_from if k is not None]
    if not copied:
        return MIXES
    strides = [math.prod(in_sizes[i + 1:]) for i in range(len(in_sizes))]
    whole = sum((n - 1) * st for k, (n, st) in enumerate(zip(in_sizes, strides)) if k not in copied)
    lo, hi = [], []
    for digits in np.ndindex(*out_sizes):
        first = sum(d * strides[k] for d, k in zip(digits, out_from) if k is not None)
        lo.append(first)
        hi.append(first + whole)
    return Span.periodic(math.prod(in_sizes), lo, hi)


def einsum_terms(equation: str, ranks: Sequence[int]) -> tuple[list[str], str] | None:
    """Operand and output index strings of an Einsum equation ("bqd,bkd->bqk"), or None when it
    uses what the rules below do not read (an ellipsis, a letter repeated within one term)."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return None
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if not arrow:  # implicit output: the letters seen once, in alphabetical order
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(terms) != len(ranks) or any(len(t) != r for t, r in zip(terms, ranks)):
        return None
    if any(len(set(t)) != len(t) for t in [*terms, out]):
        return None
    return terms, out


def einsum_rule(ctx: NodeContext) -> Transfer:
    """Einsum: like MatMul, positions on a summed letter mix (attention's q.k over tokens, a
    Dense layer over flattened positions), positions indexed by two output letters mix too (the
    scores of every query with every key); other output letters carry their operand's positions."""
    ranks = [ctx.rank(i) for i in range(len(ctx.node.input))]
    equation = _str_attr(ctx, "equation", "")
    parsed = einsum_terms(equation, ranks)
    if parsed is None:
        raise ctx.unsupported("an Einsum equation with an ellipsis or a repeated letter in one term")
    terms, out = parsed
    parts: dict[str, AxisLayout] = {}
    for slot in ctx.data_slots():
        for letter, axis_parts in zip(terms[slot], ctx.data_layout(slot)):
            if spatial_of(axis_parts):
                parts.setdefault(letter, axis_parts)
    mixed = {a for letter, p in parts.items() if letter not in out for a in spatial_of(p)}
    seen: dict[int, int] = {}
    for letter in out:
        for a in spatial_of(parts.get(letter, ())):
            seen[a] = seen.get(a, 0) + 1
    mixed |= {a for a, count in seen.items() if count > 1}
    shape = ctx.out_shapes[0] or tuple(0 for _ in out)
    out_lay = tuple(((-1, shape[i] or 0),) if letter not in parts or set(spatial_of(parts[letter])) & mixed
                    else parts[letter] for i, letter in enumerate(out))
    out_axes = carried(out_lay)
    edges = []
    for slot in ctx.data_slots():
        mine = {a for p in ctx.data_layout(slot) for a in spatial_of(p)}
        maps: dict[int, Span | None] = dict.fromkeys(mixed & mine, MIXES)
        maps.update({a: BROADCAST for a in out_axes if a not in mine})
        edges.append(Edge(slot, maps))
    why = f"Einsum '{equation}' over positions" if mixed else ""
    return Transfer((OutTransfer(with_sizes(out_lay, ctx.out_shapes[0]), tuple(edges)),), mix_reason=why)


def grid_sample_rule(ctx: NodeContext) -> Transfer:
    """GridSample (spatial transformers): each output position samples the input where the grid,
    a run-time tensor, points, so it may read any position: global on every spatial axis."""
    edges = [Edge(slot, mixed_maps(ctx.data_layout(slot), range(len(ctx.data_layout(slot)))))
             for slot in ctx.data_slots()]
    lay = ctx.layouts[0] if ctx.layouts[0] is not None else plain_layout(ctx.in_shapes[0] or ())
    out_lay = with_sizes(strip_spatial(lay, range(len(lay))), ctx.out_shapes[0])
    return Transfer((OutTransfer(out_lay, tuple(edges)),),
                    mix_reason="GridSample reads the positions its grid (a run-time tensor) points at")


def recurrent_rule(ctx: NodeContext) -> Transfer:
    """RNN/GRU/LSTM: every step reads every step and every feature (contracted by W and R);
    only the batch axis keeps its positions.  Data may arrive on X or on initial_h/initial_c."""
    batch_first = bool(ctx.attrs.get("layout", 0))
    in_batch = {0: 0 if batch_first else 1, 5: 0 if batch_first else 1, 6: 0 if batch_first else 1, 4: 0}
    edges: list[Edge] = []
    batch_parts: AxisLayout | None = None
    for slot in ctx.data_slots():
        if slot not in in_batch:
            raise ctx.unsupported("weights computed from the input (data-dependent recurrence)")
        lay = ctx.data_layout(slot)  # a data slot: never raises
        keep = in_batch[slot]
        edges.append(Edge(slot, mixed_maps(lay, [t for t in range(len(lay)) if t != keep])))
        if batch_parts is None and keep < len(lay):
            batch_parts = lay[keep]
    outs: list[OutTransfer | None] = []
    for i, shape in enumerate(ctx.out_shapes):
        if not ctx.node.output[i]:
            outs.append(None)
            continue
        out_lay = list(plain_layout(shape or ()))
        out_batch = (0 if batch_first else (2 if i == 0 else 1))
        if batch_parts is not None and out_batch < len(out_lay):
            out_lay[out_batch] = batch_parts
        outs.append(OutTransfer(tuple(out_lay), tuple(edges)))
    mixes = any(e.maps for e in edges)  # the sequence axis may index no input position (silero-vad
    # runs its frames as the LSTM's batch, over a sequence of length 1): then nothing is global
    return Transfer(tuple(outs), mix_reason=_recurrence_reason(ctx) if mixes else "")


def _recurrence_reason(ctx: NodeContext) -> str:
    """Why a recurrence is global, by direction: a causal step reads only one side of itself, so
    the whole input is an upper bound for it (exact for the final state and bidirectional runs)."""
    direction = _str_attr(ctx, "direction", "forward")
    if direction == "bidirectional":
        return f"{ctx.op} recurrence (bidirectional): every step reads the whole sequence"
    side = "earlier" if direction == "forward" else "later"
    return (f"{ctx.op} recurrence ({direction}): step t reads all {side} steps, the final state the "
            f"whole sequence; reported as the whole input")


def control_flow_rule(ctx: NodeContext) -> Transfer:
    """If/Loop/Scan: their subgraphs are out of scope; reported, never guessed."""
    raise ctx.unsupported("control-flow op with subgraphs; subgraphs are out of scope for the analysis")


# ---------------------------------------------------------------- the table


POINTWISE_OPS = {
    # activations and elementwise math: output (…, u) reads input (…, u)
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Softplus", "Softsign", "Mish", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Asinh", "Acosh", "Atanh", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Swish",
    # per-position normalisation with fixed statistics, and no-ops at inference
    "Identity", "Cast", "Dropout", "LRN",
}

BROADCAST_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift",
    "Clip", "Expand", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}

# Ops whose output never depends on input values (shapes only): never layers.
STATIC_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "RandomNormal",
              "RandomUniform", "RandomNormalLike", "RandomUniformLike"}

# Ops whose rule reads only attributes, layouts and shapes, never a constant input's value: the
# pass may reuse one transfer for every node with the same signature (a speed-up, same results).
CACHEABLE_OPS = POINTWISE_OPS | BROADCAST_OPS | {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "Transpose", "Concat", "Flatten", "Softmax", "LogSoftmax", "DepthToSpace", "SpaceToDepth",
    "BatchNormalization",
}

OP_RULES: dict[str, Rule] = {
    **dict.fromkeys(POINTWISE_OPS, pointwise),
    **dict.fromkeys(BROADCAST_OPS, broadcast),
    "CastLike": cast_like_rule,
    "QuantizeLinear": quantize_rule, "DequantizeLinear": quantize_rule,
    "DynamicQuantizeLinear": dynamic_quantize_rule,
    "Conv": conv_rule(1), "ConvInteger": conv_rule(1, scalar_slots=(2, 3)),
    "QLinearConv": conv_rule(3, scalar_slots=(1, 2, 4, 5, 6, 7, 8)),
    "ConvTranspose": conv_transpose_rule, "BatchNormalization": batch_norm_rule,
    "MaxPool": pool_rule, "AveragePool": pool_rule, "LpPool": pool_rule,
    "Resize": resize_rule, "Upsample": resize_rule,
    "DepthToSpace": depth_to_space_rule, "SpaceToDepth": space_to_depth_rule,
    "Pad": pad_rule, "Slice": slice_rule, "Crop": crop_rule,
    "Concat": concat_rule, "Split": split_rule, "Gather": gather_rule,
    "Transpose": transpose_rule, "Reshape": reshape_rule, "Flatten": flatten_rule,
    "Squeeze": squeeze_rule, "Unsqueeze": squeeze_rule,
    "GlobalAveragePool": global_pool_rule, "GlobalMaxPool": global_pool_rule,
    "GlobalLpPool": global_pool_rule,
    **dict.fromkeys(("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax",
                     "ArgMin"), reduce_rule),
    "Softmax": softmax_rule, "LogSoftmax": softmax_rule, "Hardmax": softmax_rule,
    "LayerNormalization": norm_over_axes_rule("axis", -1),
    "InstanceNormalization": norm_over_axes_rule(None, 2),
    "GroupNormalization": norm_over_axes_rule(None, 2),
    "MeanVarianceNormalization": norm_over_axes_rule(None, [0, 2, 3]),
    "LpNormalization": lp_norm_rule,
    "MatMul": matmul_rule, "Gemm": matmul_rule, "MatMulInteger": quantized_matmul_rule(1, (2, 3)),
    "QLinearMatMul": quantized_matmul_rule(3, (1, 2, 4, 5, 6, 7)),
    "RNN": recurrent_rule, "GRU": recurrent_rule, "LSTM": recurrent_rule, "Einsum": einsum_rule,
    "GridSample": grid_sample_rule,
    "If": control_flow_rule, "Loop": control_flow_rule, "Scan": control_flow_rule,
}


def rule_for(op_type: str, domain: str = "") -> Rule | None:
    """The rule of an op: a user-declared one (``rfgraph.register_op``, ``--rules``) first, then
    the table (standard domain, or ``com.microsoft`` ops that share a standard name), then the
    ``--assume-pointwise`` fallback; None when there is none."""
    from .custom_ops import (  # late: custom_ops builds on this module
        custom_rule,
        fallback_rule,
    )

    rule = custom_rule(op_type, domain)
    if rule is None and (domain in ("", "ai.onnx", "com.microsoft", "ai.onnx.ml") or domain is None):
        rule = OP_RULES.get(op_type)
    return rule if rule is not None else fallback_rule(op_type, domain)
