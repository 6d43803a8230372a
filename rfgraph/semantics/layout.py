"""Shape and layout ops: Pad, Slice, Crop, Concat, Split, Gather, Transpose, Reshape, Flatten, Squeeze, Unsqueeze,
Expand, Tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
from onnx import helper

from ..errors import DynamicShapeError, UnsupportedOpError
from ..fields import IDENTITY, Span
from . import geometry
from .gradient import Builder, Grads, NodeView, _added_back, _kept_blocked
from .gradient import Rule as VJPRule
from .transfer import (
    FOLDED,
    MIXES,
    AxisLayout,
    Edge,
    Layout,
    NodeContext,
    OutTransfer,
    Part,
    Rule,
    Transfer,
    _norm_axis,
    axis_parts,
    broadcast,
    copy_span,
    mixed_maps,
    plain_layout,
    regular_span,
    slide_along,
    spatial_of,
    split_axes,
    strip_spatial,
    with_sizes,
)

# ---------------------------------------------------------------- receptive-field (TRF) rules


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
    shape, split = ctx.in_shapes[0], split_axes(lay)
    maps: dict[int, Span | None] = {}
    out_lay = list(with_sizes(lay, ctx.out_shapes[0]))
    for t, parts in enumerate(lay):
        begin, step = begin_by_axis.get(t, 0), (steps or {}).get(t, 1)
        resized = shape is None or ctx.out_shapes[0] is None or shape[t] != ctx.out_shapes[0][t]
        plain = len(parts) == 1 and parts[0][0] not in split  # its end moves no unit's position
        if not spatial_of(parts) or (begin == 0 and step == 1 and (plain or not resized)):
            continue
        axis, maps[axis], refined = slide_along(ctx, lay, t, Span.layer(1, step, begin), "shift or crop")
        if refined:
            out_lay[t] = refined
    return OutTransfer(tuple(out_lay), (Edge(0, maps),))


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


def circular_padding(node: onnx.NodeProto, producer: Callable[[str], onnx.NodeProto | None],
                     constant: Callable[[str], np.ndarray | None],
                     shape_of: Callable[[str], tuple | None]) -> tuple[int, int, int, int] | None:
    """(slot of x, axis, rows before, rows after) when Concat ``node`` pads x circularly along one
    axis, as torch exports ``padding_mode='circular'`` and ``F.pad(mode='circular')``:
    [x[n - p0:], x, x[:p1]] (one side may be absent); None for any other Concat."""
    names = list(node.input)
    if node.op_type != "Concat" or not 2 <= len(names) <= 3:
        return None
    for slot, x in enumerate(names):
        shape = shape_of(x)
        if shape is None or None in shape:
            continue
        axis = _norm_axis(int(next((a.i for a in node.attribute if a.name == "axis"), 0)), len(shape))
        n = shape[axis]
        before, after = names[:slot], names[slot + 1:]
        tail = [_sliced(producer(t), x, axis, len(shape), n, constant) for t in before]
        head = [_sliced(producer(t), x, axis, len(shape), n, constant) for t in after]
        if len(before) <= 1 and len(after) <= 1 and (before or after) \
                and all(b is not None and b[1] == n for b in tail) and all(b is not None and b[0] == 0 for b in head):
            return slot, axis, sum(n - b[0] for b in tail if b), sum(b[1] for b in head if b)
    return None


def _sliced(node: onnx.NodeProto | None, source: str, axis: int, rank: int, n: int,
            constant: Callable[[str], np.ndarray | None]) -> tuple[int, int] | None:
    """[start, stop) of ``source`` along ``axis`` that Slice ``node`` takes with step 1 (other axes
    whole), clamped as the spec does; None when ``node`` is anything else."""
    if node is None or node.op_type != "Slice" or len(node.input) < 3 or node.input[0] != source:
        return None
    values = [constant(t) if i < len(node.input) and t else None for i, t in enumerate(node.input[1:5], 1)]
    starts, ends = values[0], values[1]
    axes = values[2] if len(values) > 2 else None
    steps = values[3] if len(values) > 3 else None
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    sliced = 0 if axes is None else int(axes.reshape(-1)[0])
    if _norm_axis(sliced, rank) != axis or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    start, stop = (int(v.reshape(-1)[0]) for v in (starts, ends))
    start, stop = (min(max(v + n if v < 0 else v, 0), n) for v in (start, stop))
    return (start, stop) if start < stop else None


def concat_rule(ctx: NodeContext) -> Transfer:
    """Concat: a merge along channels; along a spatial axis, a shift when one input is data (input
    pieces of no rows add nothing: torch.roll by 0 is a Concat of the tensor and an empty Slice),
    or a circular padding written as slices of the tensor around it (a wrap Pad: r, S, P of the
    shift; the boxes clipped to the input add the wrapped pixels, as for Pad)."""
    rank = ctx.rank(ctx.data_slots()[0])
    axis = _norm_axis(int(ctx.attrs.get("axis", 1)), rank)
    wrap = circular_padding(ctx.node, ctx.producer, ctx.constant,
                            lambda t: ctx.in_shapes[list(ctx.node.input).index(t)])
    if wrap is not None and ctx.layouts[wrap[0]] is not None:
        slot = wrap[0]
        ctx.layouts, ctx.in_shapes = [ctx.layouts[slot]], [ctx.in_shapes[slot]]
        out = _shift_out(ctx, {wrap[1]: wrap[2]}, None)
        return Transfer((OutTransfer(out.layout, (Edge(slot, out.edges[0].maps),)),))
    data = ctx.data_slots()
    rows = [s for s in data if (ctx.in_shapes[s] or (None,) * rank)[axis] != 0]
    holding = [s for s in rows if spatial_of(ctx.data_layout(s)[axis])]
    if holding and len(rows) < len(data):
        data = rows
    if not holding:  # a merge along features
        return broadcast(ctx)
    parts = ctx.data_layout(holding[0])[axis]
    if len(holding) > 1 and any(len(ctx.data_layout(s)[axis]) > 1 for s in holding):
        return _concat_mixes(ctx, axis, data, GRIDS_JOINED)  # analysed piece by piece (pieces.py) where it can
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


def tile_rule(ctx: NodeContext) -> Transfer:
    """Tile: whole copies of the tensor along each axis.  Along an axis of size 1 it broadcasts (as
    Expand) and along a feature axis it only repeats features; copies along a spatial axis of size
    n > 1 (output unit o reads unit o mod n) have no sliding field, so they are refused."""
    if ctx.opset < 6:
        raise ctx.unsupported("Tile before opset 6 (tiles and axis inputs) has no rule")
    repeats = _tile_repeats(ctx)
    shape = ctx.in_shapes[0]
    for t, (r, parts) in enumerate(zip(repeats, ctx.data_layout(0))):
        dim = shape[t] if shape else None
        if r != 1 and dim != 1 and spatial_of(parts):
            raise ctx.unsupported(f"{r} copies along axis {t}, which holds positions: output unit o reads "
                                  f"unit o mod {dim if dim is not None else 'n'}, not a sliding window")
    return broadcast(ctx)


def _tile_repeats(ctx: NodeContext) -> list[int]:
    """Tile's repeats: the constant input, else the ratio of known output and input shapes."""
    repeats = ctx.ints(1, "repeats")
    if repeats is not None:
        return repeats
    ins, outs = ctx.in_shapes[0], ctx.out_shapes[0]
    if ins and outs and None not in ins and None not in outs and all(ins):
        return [o // i for o, i in zip(outs, ins)]
    raise ctx.unsupported("repeats computed at run time and the shapes unknown; set them with --input-shape")


MIXED_BOUND = "; reported as the whole input, an upper bound"  # ends the reason of a Concat that mixes
# why a Concat of flattened grids (a detection head's scales, a multi-scale encoder's tokens) mixes
GRIDS_JOINED = ("Concat of flattened grids of positions of different sizes along one axis (a detection "
                "head's scales, a multi-scale encoder's tokens): which grid a unit reads depends on the unit")


def _concat_mixes(ctx: NodeContext, axis: int, data: Sequence[int], why: str = "") -> Transfer:
    """Concat along positions that no shift describes: flattened grids joined (``GRIDS_JOINED``),
    several input-dependent pieces along one axis (a roll: which piece a unit reads depends on the
    unit) or tokens added to a flattened grid (a ViT's class token): reported as reading the whole
    input along those axes, an upper bound."""
    lay = ctx.data_layout(data[0])
    out_lay = with_sizes(strip_spatial(lay, [axis]), ctx.out_shapes[0])
    edges = tuple(Edge(s, mixed_maps(ctx.data_layout(s), [axis])) for s in data)
    why = why or ("Concat of several input-dependent pieces along positions (which piece a unit reads "
                  "depends on the unit)" if len(data) > 1 else
                  "Concat adds tokens to a flattened grid of positions (a class token): the token axis no "
                  "longer indexes the grid")
    return Transfer((OutTransfer(out_lay, edges),), mix_reason=why + MIXED_BOUND)


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
        return _looked_up(ctx, rank)
    axis = _norm_axis(int(ctx.attrs.get("axis", 0)), rank)
    idx = ctx.const(1)
    lay = ctx.layouts[0]
    parts = lay[axis]
    ishape = np.shape(idx) if idx is not None else (ctx.in_shapes[1] or ())
    new_axes = tuple(((-1, d or 0),) for d in ishape)
    out_lay = with_sizes(lay[:axis] + new_axes + lay[axis + 1:], ctx.out_shapes[0])
    if not spatial_of(parts):
        return Transfer((OutTransfer(out_lay, (Edge(0),)),))
    picked = _picked_rows(lay, axis, idx) if idx is not None and np.ndim(idx) in (1, 2) else None
    if picked is not None:
        span, picks = picked
        return Transfer((OutTransfer(with_sizes(lay[:axis] + picks + lay[axis + 1:], ctx.out_shapes[0]),
                                     (Edge(0, {parts[0][0]: span}),)),))
    if idx is None or np.size(idx) != 1 or len(parts) > 1:
        maps = mixed_maps(lay, [axis])
        return Transfer((OutTransfer(out_lay, (Edge(0, maps),)),),
                        mix_reason="Gather with run-time or several indices along a spatial axis")
    i = int(np.asarray(idx).reshape(-1)[0])
    if i < 0:
        i += parts[0][1]
    return Transfer((OutTransfer(out_lay, (Edge(0, {parts[0][0]: Span(1, 0, (i,), (i,))}),)),))


def _looked_up(ctx: NodeContext, rank: int) -> Transfer:
    """A Gather of a constant table by input-dependent indices (an embedding looked up by a TopK's
    indices, RT-DETR's queries): each output element reads its own index, the table being
    constant, so the output has the indices' positions where the gathered axis was."""
    shape = ctx.in_shapes[0]
    if shape is None or ctx.layouts[1] is None:
        raise ctx.unsupported("gather of a table of unknown shape by input-dependent indices")
    axis = _norm_axis(int(ctx.attrs.get("axis", 0)), rank)
    table = plain_layout(shape)
    out_lay = with_sizes(table[:axis] + ctx.layouts[1] + table[axis + 1:], ctx.out_shapes[0])
    return Transfer((OutTransfer(out_lay, (Edge(1),)),))


def _picked_rows(lay: Layout, axis: int, idx: np.ndarray) -> tuple[Span, tuple[AxisLayout, ...]] | None:
    """A Gather of constant rows along a spatial axis held alone, in order: indices [m] (unit u
    reads row idx[u]) or two-dimensional (torch's unfold: [k offsets, m blocks]), where the
    index axis whose units read runs of rows without gaps (the blocks; their span is then
    exact), the narrowest first, holds the positions and the other is folded into features
    (each block holds its k rows; halo windows overlap, and each offset's rows, one per block,
    are spread apart: the blocks are kept).  The span of the picks and
    the axes they become; None when the picks are not in order (a permutation: no monotone
    map), or when a flattened or split axis holds the positions."""
    parts = lay[axis]
    if len(parts) != 1 or parts[0][0] in split_axes(lay) or np.size(idx) < 2:
        return None
    n = parts[0][1]
    rows = np.where(np.asarray(idx) < 0, np.asarray(idx) + n, np.asarray(idx)).astype(np.int64)
    if rows.min() < 0 or rows.max() >= n:
        return None
    best = None
    for unit_axis in range(rows.ndim):
        per_unit = np.moveaxis(rows, unit_axis, 0).reshape(rows.shape[unit_axis], -1)
        lo, hi = per_unit.min(axis=1), per_unit.max(axis=1)
        gaps = any(len(np.unique(r)) != h - low + 1 for r, low, h in zip(per_unit, lo, hi))
        score = (gaps, int((hi - lo).max()))
        if (np.diff(lo) >= 0).all() and (np.diff(hi) >= 0).all() and (best is None or score < best[0]):
            best = (score, unit_axis, lo, hi)
    if best is None:
        return None
    _, unit_axis, lo, hi = best
    picks = tuple(((parts[0][0], d),) if k == unit_axis else ((FOLDED, d),) for k, d in enumerate(rows.shape))
    return regular_span([int(v) for v in lo], [int(v) for v in hi], n), picks


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
    new = tuple(tuple((FOLDED, s) if (t, i) in dropped else (a, s) for i, (a, s) in enumerate(p))
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
    new = tuple(tuple((FOLDED, s) if (t, i) in dropped else (a, s) for i, (a, s) in enumerate(p))
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
    wide = {a for a, s in parts if a >= 0 and s > 1}
    parts = [(a, s) for a, s in parts if s != 1 or a not in wide]  # a part of size 1 indexes nothing
    # neighbouring parts of one axis are its positions in row-major order: as one part, a Reshape
    # may split them at other sizes (MaxViT's grid partition after its window departition, dynamo)
    parts = list(_merge_adjacent(parts))
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
        out.append(_merge_adjacent(group) if spatial_of(group) else
                   ((FOLDED if any(a == FOLDED for a, _ in group) else -1, d),))
    return tuple(out)


def _merge_adjacent(group: Sequence[Part]) -> AxisLayout:
    """One part for consecutive parts of the same spatial axis (a window reverse joins the
    window index and the row within it back into the row; a layout lists an axis's parts most
    significant first, so neighbours are its positions in row-major order)."""
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


# ---------------------------------------------------------------- gradient (VJP) rules


def _reshape(b: Builder, n: NodeView, gys: list) -> Grads:
    """Reshape, Flatten, Squeeze, Unsqueeze: reshape the gradient back to the input's shape."""
    return [b.reshape(gys[0], b.shape(n.inputs[0]))]


def _transpose(b: Builder, n: NodeView, gys: list) -> Grads:
    """Transpose: the inverse permutation."""
    rank = len(b.shape(n.inputs[0]))
    perm = n.attr_ints("perm") or list(reversed(range(rank)))
    inverse = list(np.argsort(perm))
    out = b.op("Transpose", gys[0], perm=inverse)
    return [out]


def _expand(b: Builder, n: NodeView, gys: list) -> Grads:
    """Expand: sum over the broadcast axes."""
    return [b.reduce_to(gys[0], b.shape(n.inputs[0]))]


def _tile(b: Builder, n: NodeView, gys: list) -> Grads:
    """Tile: each axis of n units repeated r times is read as (r, n); the gradient sums the r copies."""
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    if 0 in xs:
        return [b.zeros(xs)]
    repeats = [y // x for x, y in zip(xs, ys)]
    if all(r == 1 for r in repeats):
        return [gys[0]]
    split = b.reshape(gys[0], [d for r, x in zip(repeats, xs) for d in (r, x)])
    axes = [2 * t for t, r in enumerate(repeats) if r != 1]
    return [b.reshape(b.op("ReduceSum", split, b.ints(axes), keepdims=1), xs)]


def _pad(b: Builder, n: NodeView, gys: list) -> Grads:
    """Pad: constant mode crops the gradient back with negated pads (and pads where Pad
    cropped); reflect/edge/wrap also add each border value's gradient onto the input position it
    copies (``_pad_copies``)."""
    mode = n.attr_str("mode", "constant")
    if mode != "constant" and mode not in COPYING_PADS:
        raise UnsupportedOpError(n.name, "Pad", f"mode '{mode}' has no VJP rule")
    xs = b.shape(n.inputs[0])
    rank = len(xs)
    pads = n.attr_ints("pads")
    if pads is None:
        value = b.value(n.inputs[1])
        if value is None:
            raise UnsupportedOpError(n.name, "Pad", "pads are not constant")
        pads = value.tolist()
    pads = list(pads)
    if len(n.inputs) > 3 and n.inputs[3]:  # axes input (opset 18)
        axes_value = b.value(n.inputs[3])
        if axes_value is None:
            raise UnsupportedOpError(n.name, "Pad", "axes are not constant")
        axes = [int(a) % rank for a in axes_value.tolist()]
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = full
    if mode != "constant":
        return [_pad_copies(b, gys[0], xs, pads, COPYING_PADS[mode])]
    out = b.op("Pad", gys[0], b.ints([-p for p in pads]))
    return [out]


COPYING_PADS: dict[str, Literal["reflect", "edge", "wrap"]] = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad_copies(b: Builder, g: str, xs: Sequence[int], pads: Sequence[int],
                mode: Literal["reflect", "edge", "wrap"]) -> str:
    """Transpose of a reflect/edge/wrap Pad, one padded axis at a time: output position j copies
    input position src[j] (numpy's pad of the index range, the same modes as ONNX), so the
    gradient of position i is the sum over every j with src[j] = i (a 0/1 matrix per axis)."""
    rank = len(xs)
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before == 0 and after == 0:
            continue
        n_in = xs[axis]
        src = geometry.pad_source(n_in, before, after, mode)
        if n_in * len(src) > DENSE_COPY_LIMIT:
            g = b.scatter_along_axis(g, src, n_in, axis)
            continue
        matrix = np.zeros((n_in, len(src)), dtype=helper.tensor_dtype_to_np_dtype(b.dtype))
        matrix[src, np.arange(len(src))] = 1
        g = b.along_axis(g, matrix, axis)
    return g


DENSE_COPY_LIMIT = 1 << 20  # entries of a per-axis 0/1 copy matrix; longer axes scatter-add instead


def _slice_indices(b: Builder, n: NodeView) -> dict[int, np.ndarray]:
    """Per sliced axis, the input positions the Slice keeps, in output order."""
    xs = b.shape(n.inputs[0])
    rank = len(xs)
    vals = [b.value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None for i in range(1, 5)]
    if vals[0] is None or vals[1] is None or (len(n.inputs) > 3 and n.inputs[3] and vals[2] is None) \
            or (len(n.inputs) > 4 and n.inputs[4] and vals[3] is None):
        raise UnsupportedOpError(n.name, "Slice", "starts/ends/axes/steps not constant")
    starts, ends = vals[0].tolist(), vals[1].tolist()
    axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
    steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    out: dict[int, np.ndarray] = {}
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % rank
        # slice.indices clamps as ONNX does; a range, not a re-slice: a backward stop of -1 means
        # "before index 0" there, but "the last index" to a slice
        out[ax] = np.array(range(*slice(int(st), int(en), int(sp)).indices(xs[ax])), dtype=np.int64)
    return out


def _slice(b: Builder, n: NodeView, gys: list) -> Grads:
    """Slice: zero-pad back for unit steps; other steps scatter through a 0/1 matrix per axis."""
    xs = b.shape(n.inputs[0])
    idx = _slice_indices(b, n)
    g = gys[0]
    rank = len(xs)
    if all(len(i) <= 1 or np.all(np.diff(i) == 1) for i in idx.values()):
        pads = [0] * (2 * rank)
        for ax, i in idx.items():
            if len(i) == 0:
                return [b.zeros(xs)]
            pads[ax], pads[ax + rank] = int(i[0]), int(xs[ax] - 1 - i[-1])
        return [_kept_blocked(b, b.op("Pad", g, b.ints(pads)))]  # Pad has no NCHWc kernel
    for ax, i in idx.items():
        m = np.zeros((xs[ax], len(i)))
        m[i, np.arange(len(i))] = 1.0
        g = b.along_axis(g, m, ax)
    return [g]


def _gather(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gather with constant indices: scatter-add through a 0/1 matrix on the gathered axis."""
    idx = b.value(n.inputs[1])
    if idx is None:
        raise UnsupportedOpError(n.name, "Gather", "indices are not constant")
    xs = b.shape(n.inputs[0])
    ax = n.attr_int("axis", 0) % len(xs)
    flat = idx.reshape(-1).astype(np.int64) % xs[ax]
    g = b.reshape(gys[0], xs[:ax] + (flat.size,) + xs[ax + 1:])
    m = np.zeros((xs[ax], flat.size))
    np.add.at(m, (flat, np.arange(flat.size)), 1.0)
    return [b.along_axis(g, m, ax)]


def _concat(b: Builder, n: NodeView, gys: list) -> Grads:
    """Concat: split the gradient back into the operands' sizes."""
    shapes = [b.shape(x) for x in n.inputs]
    ax = n.attr_int("axis") % len(shapes[0])
    sizes = [s[ax] for s in shapes]
    parts = b.emit("Split", [gys[0], b.ints(sizes)], n_out=len(sizes), axis=ax)
    return [p if b.is_active(x) else None for p, x in zip(parts, n.inputs)]


def _split(b: Builder, n: NodeView, gys: list) -> Grads:
    """Split: concatenate the outputs' gradients (zeros for outputs that receive none)."""
    xs = b.shape(n.inputs[0])
    ax = n.attr_int("axis", 0) % len(xs)
    parts = [g if g is not None else b.zeros(b.shape(y)) for g, y in zip(gys, n.outputs)]
    out = b.op("Concat", *parts, axis=ax)
    return [out]


def scatter_rule(ctx: NodeContext) -> Transfer:
    """ScatterND / ScatterElements: each output element is the data's at its position, or one of
    the updates, written wherever the indices say (MViTv2 adds its relative positions to the
    attention scores so): the data is read pointwise, the updates (and indices computed from the
    input) as a whole, an upper bound."""
    lay = ctx.layouts[0] if ctx.layouts[0] is not None else plain_layout(ctx.out_shapes[0] or ctx.in_shapes[0] or ())
    edges = [Edge(0)] if ctx.layouts[0] is not None else []
    edges += [Edge(s, mixed_maps(ctx.data_layout(s), range(ctx.rank(s)))) for s in ctx.data_slots() if s > 0]
    mixed = any(sp is MIXES for e in edges for sp in e.maps.values())
    why = (f"{ctx.op} writes its updates where its indices say: reported as reading all of them, an "
           f"upper bound") if mixed else ""
    return Transfer((OutTransfer(with_sizes(lay, ctx.out_shapes[0]), tuple(edges)),), mix_reason=why)


def gather_elements_rule(ctx: NodeContext) -> Transfer:
    """GatherElements: output[..i..] = data[..index[..i..]..] along ``axis``, the output shaped as
    the indices: along that axis which element of the data it reads depends on the index (the
    data's positions there are mixed); along the others each output element reads the same
    position of the data and of the indices (a kaldi filterbank's frame picks, RT-DETR's boxes)."""
    slots = ctx.data_slots()
    axis = _norm_axis(int(ctx.attrs.get("axis", 0)), ctx.rank(slots[0]))
    data, index = ctx.layouts[0], ctx.layouts[1]
    kept = strip_spatial(data, [axis]) if data is not None else None  # the data's, its axis mixed
    if kept is None:
        lay = ctx.data_layout(1)
    elif index is None:
        lay = kept
    else:  # each axis from the operand holding positions there; along ``axis`` the indices'
        lay = tuple(index[t] if t == axis or not spatial_of(kept[t]) else kept[t] for t in range(len(kept)))
    edges = tuple(Edge(s, mixed_maps(ctx.data_layout(0), [axis]) if s == 0 else {}) for s in slots)
    mixed = any(sp is MIXES for e in edges for sp in e.maps.values())
    why = f"GatherElements along axis {axis}: which element it reads depends on the indices" if mixed else ""
    return Transfer((OutTransfer(with_sizes(lay, ctx.out_shapes[0]), edges),), mix_reason=why)


def _gather_elements(b: Builder, n: NodeView, gys: list) -> Grads:
    """GatherElements: the seed scatter-added back to the places the indices read, along ``axis``
    (the indices are not differentiable)."""
    return [_added_back(b, b.shape(n.inputs[0]), n.inputs[1], gys[0], n.attr_int("axis", 0)), None]


def _scatter(b: Builder, n: NodeView, gys: list) -> Grads:
    """ScatterND / ScatterElements (each index once, as without a reduction it must be): the
    data's gradient is the seed with the written places zeroed, the updates' is the seed gathered
    there; with ``reduction="add"`` the data's is the seed itself."""
    data, idx, updates = n.inputs[:3]
    op, reduction = n.node.op_type, n.attr_str("reduction", "none")
    if reduction not in ("none", "add"):
        raise UnsupportedOpError(n.name, op, f"reduction '{reduction}': no gradient rule")
    elements = op == "ScatterElements"
    axis = {"axis": n.attr_int("axis", 0)} if elements else {}
    g_data = gys[0] if reduction == "add" else b.op(op, gys[0], idx, b.zeros(b.shape(updates)), **axis)
    g_updates = b.op("GatherElements" if elements else "GatherND", gys[0], idx, **axis)
    return [g_data if b.is_active(data) else None, None, g_updates if b.is_active(updates) else None]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "Pad": pad_rule, "Slice": slice_rule, "Crop": crop_rule,
    "Concat": concat_rule, "Split": split_rule, "Gather": gather_rule,
    "Transpose": transpose_rule, "Reshape": reshape_rule, "Flatten": flatten_rule,
    "Squeeze": squeeze_rule, "Unsqueeze": squeeze_rule, "Expand": broadcast, "Tile": tile_rule,
    "ScatterND": scatter_rule, "ScatterElements": scatter_rule, "GatherElements": gather_elements_rule,
}

VJP: dict[str, VJPRule] = {
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Transpose": _transpose, "Expand": _expand, "Tile": _tile,
    "Pad": _pad, "Slice": _slice, "Gather": _gather, "Concat": _concat, "Split": _split,
    "ScatterND": _scatter, "ScatterElements": _scatter, "GatherElements": _gather_elements,
}
