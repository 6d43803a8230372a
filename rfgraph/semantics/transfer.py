"""The receptive-field (TRF) vocabulary every op rule speaks.

A TRF rule reads one node (``NodeContext``) and returns a ``Transfer``: for every output, its *layout* (which tensor
axis indexes which input spatial axis) and its *edges*: for each data input, the span that maps an output unit to the
input units it reads along each spatial axis, or ``MIXES`` where the op reads all positions (global pooling,
attention, Flatten+Gemm...).  The TRF pass, the paper's reverse pass and the path histogram all interpret these
transfers; none of them knows an op.  Here also the generic rule shapes the families share (pointwise, broadcast,
mix_axes, window) and the layout helpers.

Conventions: spatial axes of conv/pool ops are tensor axes 2.. (N, C, D, H, W); a layout axis is a tuple of parts
``(spatial_axis, size)`` with ``spatial_axis = -1`` for non-spatial factors, so a Reshape that flattens H and W into
tokens keeps track of both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import InvalidAttributeError, UnsupportedOpError
from ..fields import BROADCAST, IDENTITY, Span

Part = tuple[int, int]  # (input spatial axis or -1, size)


AxisLayout = tuple[Part, ...]


Layout = tuple[AxisLayout, ...]


MIXES = None  # edge value: the op reads every position along this spatial axis


FOLDED = -2  # part axis of positions folded into features (an unfold's rows within a patch): each
#              unit holds them all, so their elements' own fields are lost (a feature part is -1)


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
    """What a node does to spatial positions; ``size_dependent`` when its padding depends on sizes.
    ``statistics``: why output 0 also reads every position through statistics it computes (a
    normalisation's mean and variance), which its edges leave out: held constant, the op is local;
    ``statistics_axes``: the input spatial axes they span (the others' fields pass no gate).
    ``bound``: why its fields are an upper bound (each element of positions folded away and put
    back reads its whole fold)."""

    outputs: tuple[OutTransfer | None, ...]
    size_dependent: bool = False
    mix_reason: str = ""
    statistics: str = ""
    statistics_axes: tuple[int, ...] = ()
    bound: str = ""  # why the outputs' fields are an upper bound from here (folded positions put back)


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
    producer: Callable[[str], onnx.NodeProto | None] = lambda _: None  # the node computing a tensor

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

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.name, self.op, why)

    def invalid(self, why: str) -> InvalidAttributeError:
        return InvalidAttributeError(f"node '{self.name}' ({self.op}): {why}")


Rule = Callable[[NodeContext], Transfer]


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
    for s in slots:  # take each axis's layout from an input that is not broadcast along it,
        lay, shape = ctx.data_layout(s), ctx.in_shapes[s]  # one holding positions if any does
        off = rank - len(lay)
        for t, parts in enumerate(lay):
            dim = shape[t] if shape else None
            taken = layout[off + t]
            if (taken is None or (spatial_of(parts) and not spatial_of(taken))) and (
                    dim != 1 or (out_shape and out_shape[off + t] == 1)):
                layout[off + t] = parts
    final = _finest(ctx, slots, rank, [p if p is not None else ((-1, (out_shape or [1] * rank)[i] or 1),)
                                       for i, p in enumerate(layout)])
    out_axes = carried(final)
    edges, clashes = [], {}
    for s in slots:
        lay, in_shape = ctx.data_layout(s), ctx.in_shapes[s]
        off = rank - len(lay)
        mine = {a: t + off for a, t in carried(lay).items()}
        maps: dict[int, Span | None] = {}
        for a, t in out_axes.items():
            if mine.get(a) != t or (in_shape and in_shape[t - off] == 1 and final[t][0][1] != 1):
                maps[a] = BROADCAST
        for t, parts in enumerate(lay):
            if (in_shape and in_shape[t] == 1) or _without_ones(parts) == _without_ones(final[t + off]):
                continue
            for a in set(spatial_of(parts)) | set(spatial_of(final[t + off])):
                span = _refining(lay, off, final, a, t)
                if span is None:
                    clashes[t + off] = (parts, final[t + off])
                else:
                    maps[a] = span
        edges.append(Edge(s, maps))
    if clashes:
        return _clash(ctx, final, edges, clashes)
    return Transfer((OutTransfer(with_sizes(final, out_shape), tuple(edges)),))


def _without_ones(parts: AxisLayout) -> AxisLayout:
    """An axis's parts without those of size 1 (one position, or one feature: no index to match),
    runs of folded parts as one (a unit holds all of them: 16 x 2 x 2 folded positions index the
    same elements as 64, in the same order; Hiera's unrolled tokens as torch's dynamo writes them)."""
    out: list[Part] = []
    for p in parts:
        if p[1] == 1:
            continue
        if out and p[0] == FOLDED and out[-1][0] == FOLDED:
            out[-1] = (FOLDED, out[-1][1] * p[1])
        else:
            out.append(p)
    return tuple(out)


def _refining(lay: Layout, off: int, final: Layout, axis: int, t: int) -> Span | None:
    """How an input laid out as ``lay`` reads spatial ``axis`` of a merge laid out as ``final``,
    where they differ along tensor axis ``t``: K elements a unit (its axis ``t`` is the fine
    form of the merge's), or constant along the merge's least significant parts of ``axis``
    (it holds only the leading ones: a relative-position term added to attention logits).
    None when neither describes it."""
    fine = fine_axis(lay, t)
    if fine is not None and fine[0] == axis and final[t + off] == (refined_part(lay, t),):
        return coarsening(fine[1])
    mine = [(u + off, n) for u, _, n in axis_parts(lay, axis)]
    theirs = [(u, n) for u, _, n in axis_parts(final, axis)]
    extra = theirs[len(mine):]
    if theirs[:len(mine)] != mine or any(lay[u - off] != final[u] for u, _ in mine) \
            or any(u >= off and spatial_of(lay[u - off]) for u, _ in extra):
        return None
    return coarsening(math.prod(n for _, n in extra)) if extra else IDENTITY


def _finest(ctx: NodeContext, slots: Sequence[int], rank: int, final: list[AxisLayout]) -> Layout:
    """The merged layout, each fine axis (``fine_axis``) replaced by the single part of positions
    another input has there, so that units are elements along it."""
    for s in slots:
        lay = ctx.data_layout(s)
        off = rank - len(lay)
        for t, parts in enumerate(lay):
            refined = refined_part(tuple(final), t + off)
            if refined is not None and parts == (refined,):
                final[t + off] = parts
    return tuple(final)


def _clash(ctx: NodeContext, final: Layout, edges: list[Edge], clashes: Mapping[int, tuple]) -> Transfer:
    """Inputs whose positions are laid out differently along an axis (a key axis that one input
    indexes and another does not): every position along the spatial axes involved is reported as
    read, an upper bound, rather than a union of fields whose units do not match."""
    axes = sorted({a for pair in clashes.values() for parts in pair for a in spatial_of(parts)})
    mixed = [Edge(e.slot, {**e.maps, **dict.fromkeys(axes, MIXES)}) for e in edges]
    t, (mine, theirs) = next(iter(sorted(clashes.items())))
    why = (f"{ctx.op} of inputs whose positions are laid out differently along axis {t} ({mine} and "
           f"{theirs}); reported as the whole input, an upper bound")
    return Transfer((OutTransfer(with_sizes(final, ctx.out_shapes[0]), tuple(mixed)),), mix_reason=why)


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


def fine_axis(layout: Layout, t: int) -> tuple[int, int] | None:
    """``(spatial axis, K)`` when tensor axis ``t`` holds one part of positions followed only by
    feature parts (K values in all), and no later axis holds that spatial axis: each of its units
    is then K consecutive elements (a window reversed after an attention mixed its rows; a row
    flattened with its channels), so a window can slide over the elements themselves."""
    parts = layout[t]
    if len(parts) < 2 or parts[0][0] < 0 or any(a >= 0 for a, _ in parts[1:]):
        return None
    axis = parts[0][0]
    if any(a == axis for later in layout[t + 1:] for a, _ in later):
        return None
    return axis, math.prod(n for _, n in parts[1:])


def refined_part(layout: Layout, t: int) -> Part | None:
    """The one part of positions that fine axis ``t`` (``fine_axis``) stands for, one unit per
    element: ``(spatial axis, elements)``; None where ``t`` is no fine axis."""
    fine = fine_axis(layout, t)
    return None if fine is None else (fine[0], math.prod(n for _, n in layout[t]))


def folded_back(layout: Layout, t: int) -> bool:
    """Whether fine axis ``t``'s elements are positions folded away (``FOLDED``) and put back:
    each then reads its whole fold, an upper bound of its own field."""
    return any(a == FOLDED for a, _ in layout[t][1:])


def coarsening(k: int) -> Span:
    """Element e of a fine axis (``fine_axis``) reads unit e // k of the positions it refines."""
    return Span.periodic(1, [0] * k, [0] * k)


def slide_along(ctx: NodeContext, lay: Layout, t: int, span: Span, why: str) -> tuple[int, Span, AxisLayout | None]:
    """``(spatial axis, span, new layout of axis t)`` for a window or shift ``span`` along tensor
    axis ``t``: as it is on a single part; over the elements of a fine axis, then to its units
    (the axis becomes one part of positions); unsupported on other flattened axes."""
    parts = lay[t]
    if len(parts) == 1:
        if parts[0][0] in split_axes(lay):
            return parts[0][0], _along_split_part(ctx, lay, t, span, why), None
        return parts[0][0], span, None
    fine = fine_axis(lay, t)
    shape = ctx.out_shapes[0]
    if fine is None or shape is None or shape[t] is None:
        raise ctx.unsupported(f"{why} over a flattened axis holding spatial axes {spatial_of(parts)}")
    axis, k = fine
    return axis, span.then(coarsening(k)), ((axis, shape[t]),)


def rows_of_grid(lay: Layout, t: int, span: Span) -> tuple[dict[int, Span | None], AxisLayout] | None:
    """A window over a flattened grid (tensor axis ``t`` holds the parts of several spatial axes,
    row-major) that tiles it in whole blocks: ``k`` = stride, no padding, ``k`` = c x the product
    of the last parts with c dividing the part before them (NextViT's average pool of 16 tokens of
    an 8-wide grid: two whole rows).  The parts covered whole are read at every position (MIXES),
    the part cut by c is pooled by c; returns the edge maps and the output's parts, else None."""
    parts = lay[t]
    if span.q != 1 or span.lo[0] != 0 or span.hi[0] + 1 != span.A or any(a < 0 for a, _ in parts) \
            or len({a for a, _ in parts}) != len(parts) or set(spatial_of(parts)) & split_axes(lay):
        return None
    k, covered = span.A, 1
    for j in range(len(parts) - 1, -1, -1):
        axis, n = parts[j]
        if k % (covered * n) == 0:
            covered *= n
            continue
        c = k // covered
        if k % covered or n % c:
            return None
        maps: dict[int, Span | None] = {a: MIXES for a, _ in parts[j + 1:]}
        maps[axis] = Span.layer(c, c, 0)
        return maps, parts[:j] + ((axis, n // c),)
    return ({a: MIXES for a, _ in parts}, ((-1, 1),)) if covered == k else None


SPLIT_UNITS_MAX = 1 << 16  # units of a split axis enumerated by _along_split_part


def _along_split_part(ctx: NodeContext, lay: Layout, t: int, span: Span, why: str) -> Span:
    """The span, over the whole spatial axis, of a window or shift along tensor axis ``t`` that
    holds one part of a split axis (windows x rows): enumerated unit by unit, each output unit
    reading the units whose part ``t`` lies in the window and whose other parts are its own (the
    window's part clipped to its range: beyond it lies the padding, which reads nothing)."""
    axis = lay[t][0][0]
    where = axis_parts(lay, axis)
    shape = ctx.out_shapes[0]
    if shape is None or shape[t] is None:
        raise ctx.unsupported(f"{why} along one part of spatial axis {axis}, split across tensor axes, "
                              f"to a size that is unknown")
    in_sizes = [n for _, _, n in where]
    out_sizes = [shape[t] if u == t else n for u, _, n in where]
    if math.prod(out_sizes) > SPLIT_UNITS_MAX:
        raise ctx.unsupported(f"{why} along one part of spatial axis {axis}, split across tensor axes "
                              f"(more than {SPLIT_UNITS_MAX} units to enumerate)")
    k = [u for u, _, _ in where].index(t)
    strides = [math.prod(in_sizes[i + 1:]) for i in range(len(in_sizes))]
    lo, hi = [], []
    for digits in np.ndindex(*out_sizes):
        first = max(span.lo_of(digits[k]), 0)
        last = min(span.hi_of(digits[k]), in_sizes[k] - 1)
        if first > last:
            raise ctx.unsupported(f"{why} along one part of spatial axis {axis}, split across tensor "
                                  f"axes, where some units read only padding")
        base = sum(d * st for i, (d, st) in enumerate(zip(digits, strides)) if i != k)
        lo.append(base + first * strides[k])
        hi.append(base + last * strides[k])
    if any(b < a for a, b in itertools.pairwise(lo)) or any(b < a for a, b in itertools.pairwise(hi)):
        raise ctx.unsupported(f"{why} that reverses one part of spatial axis {axis}, split across tensor "
                              f"axes (its units would not read in order)")
    return regular_span(lo, hi, math.prod(in_sizes))


def regular_span(lo: list[int], hi: list[int], extent: int) -> Span:
    """A span of the whole axis's bounds (units past the last one are none of the tensor's):
    the shortest period that repeats them with a constant step, if any does, else one period
    advancing by ``extent``."""
    q = len(lo)
    for d in range(1, q):
        if q % d == 0:
            span = Span.periodic((lo[d] - lo[0]) * (q // d), lo, hi)
            if span.q == d:
                return span
    return Span.periodic(extent, lo, hi)


def window(ctx: NodeContext, spans: Sequence[Span], size_dependent: bool = False, first: int = 2) -> Transfer:
    """Sliding-window op over tensor axes ``first``.. of input 0 (Conv, pooling, Pad: 2, the
    spec's N, C, spatial...; Resize: 0, it resamples any axis)."""
    lay = ctx.data_layout(0)
    if len(spans) != len(lay) - first:
        raise ctx.invalid(f"window over {len(spans)} spatial axes, but the input has rank {len(lay)} "
                          f"({max(len(lay) - first, 0)} spatial axes)")
    maps: dict[int, Span | None] = {}
    out_lay = list(with_sizes(lay, ctx.out_shapes[0]))
    for j, span in enumerate(spans, start=first):
        axes = spatial_of(lay[j])
        if not axes or span == IDENTITY:
            continue  # a window over a non-spatial axis, or a 1x1 one (a flattened axis too), moves nothing
        grid = rows_of_grid(lay, j, span) if len(axes) > 1 else None
        if grid is not None:
            maps.update(grid[0])
            out_lay[j] = grid[1]
            continue
        axis, maps[axis], refined = slide_along(ctx, lay, j, span, "sliding window")
        if refined:
            out_lay[j] = refined
    out = OutTransfer(tuple(out_lay), (Edge(0, maps),))
    rest: list[OutTransfer | None] = [None] * (len(ctx.node.output) - 1)
    if ctx.op == "MaxPool" and rest:  # Indices output: same positions as Y
        rest[0] = out
    why = f"{ctx.op} over whole rows of a flattened grid" if MIXES in maps.values() else ""
    return Transfer((out, *rest), size_dependent=size_dependent, mix_reason=why)


def _str_attr(ctx: NodeContext, name: str, default: str) -> str:
    value = ctx.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


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
