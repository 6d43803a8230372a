"""Every layer on the unit's cone: the model rewritten so that each tensor is computed only where
the unit reads it.

A unit of a late feature map reads a box of each earlier tensor (its cone there, shrinking layer by
layer toward the unit). A backward pass over the graph finds that box for every tensor, along the
tensor's *tracked* axes (those holding positions: a feature map's spatial axes, a transformer's
token axis), from each op's read rule below: window geometry of Conv and pooling nodes
(``semantics.geometry``), pointwise and broadcasting ops (``semantics``' op sets), per-channel and
per-token ops (BatchNormalization; LayerNormalization and Softmax over other axes), Concat and Split
over other axes, reductions over other axes, the rows of a MatMul, the layout ops that move
positions (Transpose, Reshape, Slice, Squeeze, Unsqueeze, SpaceToDepth), Resize by a whole
factor, ConvTranspose and DepthToSpace (which compute a larger box, sliced to theirs).
A forward pass then rewrites the model: each node reads Slices of its inputs to the boxes it
needs, window nodes pad only where the original padded (at the tensor's own borders), a Reshape's
shape and a Slice's bounds are rewritten for the box, so each computed value is the original's. Any
other op keeps the whole tensor: its inputs are needed whole and its output is computed whole
(Sliced where a consumer needs less). Unlike ``rfgraph.cuts`` (crop models at chosen cut tensors,
planned by TRF passes of sub-models), the rewrite needs no sub-model and crops every layer exactly
to its cone; ``rfgraph.erf`` checks its gradient against the whole model's on a first input
before using it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import projections
from .errors import RFGraphError
from .semantics import BROADCAST_OPS, POINTWISE_OPS, geometry
from .semantics.reductions import REDUCING_OPS, reduced_axes

Box = tuple[tuple[int, int], ...]  # per tracked axis: [lo, hi], inclusive

WINDOW_NODES = {"Conv", "MaxPool", "AveragePool", "LpPool"}
CHANNEL_NODES = {"BatchNormalization"}  # input 0 pointwise; the others per channel
SPLIT_NODES = {"Split"}  # input 0 split along an axis that holds no position; the sizes constant
SHAPE_NODES = {"Shape", "Size"}  # read no value: they keep the original's shape, whatever the box
NORMALISING_NODES = {"LayerNormalization", "Softmax", "LogSoftmax"}  # over axes that hold no position
# broadcasting ops whose extra operand is not data broadcast to the output (a shape)
NOT_BROADCAST = {"Expand"}
RESAMPLING_NODES = {"Resize", "Upsample"}
PIXEL_SHUFFLES = {"DepthToSpace", "SpaceToDepth"}  # blocks of positions to channels and back
# coordinate modes whose source coordinate is affine in the unit with slope 1 / scale: unit u + s
# reads one input unit further (s a whole scale), so a crop of the input resized gives the
# original's values
SHIFTING_COORDS = {"asymmetric", "half_pixel", "pytorch_half_pixel"}
MIN_GAIN = 0.03  # a rewrite must save this share of the model's multiply-accumulates


@dataclass(frozen=True)
class Trimmed:
    """The rewritten model, the box of the output it computes (in the original output's
    coordinates) and the multiply-accumulates it and the original model run."""

    model: onnx.ModelProto
    box: Box
    macs: int
    macs_before: int

    @property
    def saved(self) -> int:
        """The multiply-accumulates the rewrite saves per forward."""
        return self.macs_before - self.macs

    def text(self) -> str:
        """'each layer on the unit's cone (61% of the multiply-accumulates)'."""
        return (f"each layer on the unit's cone ({100 * self.macs / max(self.macs_before, 1):.0f}% of the "
                f"multiply-accumulates)")


@dataclass(frozen=True)
class _Tracked:
    """Which axes of a tensor are tracked (its positions, ascending) and its size along each."""

    axes: tuple[int, ...]
    sizes: tuple[int, ...]

    def full(self) -> Box:
        return tuple((0, n - 1) for n in self.sizes)


Read = tuple[_Tracked, Box]  # what a node needs of one input: its tracked axes and the box on them


def _sorted(axes: Sequence[int], sizes: Sequence[int], box: Sequence[tuple[int, int]]) -> Read:
    """A read with its axes in ascending order (one spelling per set of axes)."""
    order = sorted(range(len(axes)), key=lambda k: axes[k])
    return (_Tracked(tuple(axes[k] for k in order), tuple(sizes[k] for k in order)),
            tuple(box[k] for k in order))


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _axis(node: onnx.NodeProto, rank: int, default: int = 0) -> int:
    """A node's (non-negative) ``axis`` attribute."""
    return int(_attrs(node).get("axis", default)) % max(rank, 1)


# ------------------------------------------------------------------ read rules, one per op kind
# Each takes the plan (shapes, constants), the node, its output's tracked axes and box, and gives
# the box the output is computed on (the box asked for, or a larger one where the op needs it) and
# what the node reads of each data input (inputs it does not name are read whole); None: the node
# keeps the whole tensor.

ReadRule = Callable[["_Plan", onnx.NodeProto, _Tracked, Box], tuple[Box, dict[str, Read]] | None]


def _window(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> geometry.Window | None:
    """The geometry of a window node the rewrite can crop (None: it keeps the whole tensor): one
    output, known shapes, and not an AveragePool whose ceil_mode windows count the padding."""
    attrs = _attrs(node)
    x = shapes.get(node.input[0])
    if x is None or len([o for o in node.output if o]) != 1:
        return None
    if node.op_type == "Conv":
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        kernel = list(attrs.get("kernel_shape") or (w[2:] if w else []))
    else:
        kernel = list(attrs.get("kernel_shape", []))
    if not kernel or len(kernel) != len(x) - 2:
        return None
    geo = geometry.window(node.op_type, node.name, attrs, kernel, list(x[2:]))
    if node.op_type == "AveragePool" and geo.ceil_mode and geo.count_include_pad:
        return None
    return geo


def _window_reads(axes: Sequence[geometry.AxisWindow], box: Box, sizes: Sequence[int]) -> Box | None:
    """The box of the input positions that output ``box``'s windows (one per axis) read (padding
    excluded: a dilated window may step over the first or last positions); None when none is read."""
    out = []
    for a, (lo, hi), n in zip(axes, box, sizes):
        first = _tap(range(lo, hi + 1), a, n, min)
        last = _tap(range(hi, lo - 1, -1), a, n, max)
        if first is None or last is None:
            return None
        out.append((first, last))
    return tuple(out)


def _tap(outputs: range, a: geometry.AxisWindow, n: int, pick: Callable[[list[int]], int]) -> int | None:
    """The first (``pick`` min) or last (max) input position inside [0, n) that the windows of
    ``outputs`` read, walking from the box's edge until a window lies wholly inside."""
    best: list[int] = []
    for o in outputs:
        start = o * a.stride - a.pad_begin
        taps = [v for j in range(a.kernel) if 0 <= (v := start + j * a.dilation) < n]
        if taps:
            best.append(pick(taps))
        if start >= 0 and start + a.k_eff <= n:  # wholly inside: later windows read nothing further out
            break
    return pick(best) if best else None


def _read_window(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Conv and pooling: the input box the output box's windows read.  A spatial axis not tracked
    (a YOLO head's DFL conv over (4 coordinates, anchors): only the anchors are positions) must
    have a window of one tap: each output reads its own position there, all of which are kept."""
    geo, x = _window(node, plan.shapes), plan.shapes.get(node.input[0])
    if geo is None or x is None or not set(tracked.axes) <= set(range(2, len(x))):
        return None
    if any(not _one_tap(geo.axes[a - 2]) for a in range(2, len(x)) if a not in tracked.axes):
        return None
    sizes = tuple(x[a] for a in tracked.axes)
    reads = _window_reads([geo.axes[a - 2] for a in tracked.axes], box, sizes)
    return None if reads is None else (box, {node.input[0]: (_Tracked(tracked.axes, sizes), reads)})


def _one_tap(a: geometry.AxisWindow) -> bool:
    """A window axis along which output u reads input u alone (kernel 1, stride 1, no padding)."""
    return a.kernel == 1 and a.stride == 1 and a.pad_begin == 0 and a.pad_end == 0


def _operand(tracked: _Tracked, box: Box, shape: tuple[int, ...] | None, rank: int) -> Read | None:
    """What a broadcast operand of shape ``shape`` must hold for an output of rank ``rank`` on
    ``box`` along ``tracked.axes``: its own tracked axes (right-aligned; those of size 1 broadcast,
    dropped) and box, or None when its shape is unknown."""
    if shape is None:
        return None
    shift = rank - len(shape)
    kept = [(ax - shift, b) for ax, b in zip(tracked.axes, box) if ax - shift >= 0 and shape[ax - shift] != 1]
    return _Tracked(tuple(a for a, _ in kept), tuple(shape[a] for a, _ in kept)), tuple(b for _, b in kept)


def _read_aligned(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Pointwise and broadcasting ops, Concat over an axis that holds no position, LayerNorm and
    Softmax over such axes: each output position reads the same position of every operand."""
    rank = len(plan.shapes[node.output[0]])
    op = node.op_type
    if op == "Concat" and _axis(node, rank) in tracked.axes:
        return None
    if op in NORMALISING_NODES:  # LayerNorm, and Softmax before opset 13, normalise over axis and all after it
        flattens = op == "LayerNormalization" or plan.opset < 13
        axis = _axis(node, rank, -1 if op == "LayerNormalization" or plan.opset >= 13 else 1)
        if any(ax == axis or (flattens and ax > axis) for ax in tracked.axes):
            return None
    got: dict[str, Read] = {}
    for i in filter(None, node.input):
        mine = _operand(tracked, box, plan.shapes.get(i), rank)
        if mine is None:
            return None
        got[i] = mine
    return box, got


def _read_first(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """BatchNormalization and a Split over an axis that holds no position: input 0 on the same
    box (the other inputs are per-channel constants or split sizes)."""
    x = plan.shapes.get(node.input[0])
    rank = len(plan.shapes[node.output[0]])
    if node.op_type in SPLIT_NODES and _axis(node, rank) in tracked.axes:
        return None
    if x is None or len(x) != rank or any(x[a] != n for a, n in zip(tracked.axes, tracked.sizes)):
        return None
    return box, {node.input[0]: (tracked, box)}


def _read_matmul(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """MatMul tracked on its rows only: the same rows of the first operand (the second read whole)."""
    a, b = plan.shapes.get(node.input[0]), plan.shapes.get(node.input[1])
    rank = len(plan.shapes[node.output[0]])
    if a is None or b is None or len(a) < 2 or len(b) < 2 or tracked.axes != (rank - 2,):
        return None
    return box, {node.input[0]: (_Tracked((len(a) - 2,), tracked.sizes), box)}


def _read_transpose(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box
                    ) -> tuple[Box, dict[str, Read]] | None:
    """Transpose: output axis k is input axis perm[k]."""
    x = plan.shapes.get(node.input[0])
    if x is None:
        return None
    perm = list(_attrs(node).get("perm", range(len(x) - 1, -1, -1)))
    return box, {node.input[0]: _sorted([perm[a] for a in tracked.axes], tracked.sizes, box)}


def _read_reshape(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Reshape with a constant shape that keeps each tracked axis (same size, same product of the
    axes before it), merges two input axes into one tracked one (rows and columns flattened into
    tokens: a YOLO head's grid) or splits one input axis into two tracked ones (a token axis into
    rows and columns): the box there is one flat range of the token axis, so one spanning
    several rows takes them whole.  A tracked axis of size 1 the Reshape makes (a split part's) reads nothing."""
    x, y = plan.shapes.get(node.input[0]), plan.shapes[node.output[0]]
    if x is None or plan.constant(node.input[1]) is None:
        return None
    axes, sizes, out_box, in_box = [], [], list(box), []
    k = 0
    while k < len(tracked.axes):
        a = tracked.axes[k]
        if y[a] == 1 and not any(x[b] == 1 and math.prod(x[:b]) == math.prod(y[:a]) for b in range(len(x))):
            k += 1  # its box is its one unit: nothing of the input to track
            continue
        kept = [b for b in range(len(x)) if x[b] == y[a] and math.prod(x[:b]) == math.prod(y[:a])]
        if kept:
            axes.append(kept[0])
            sizes.append(x[kept[0]])
            in_box.append(box[k])
            k += 1
            continue
        merged = [b for b in range(len(x) - 1) if x[b] * x[b + 1] == y[a] and math.prod(x[:b]) == math.prod(y[:a])]
        if merged:  # rows and columns flattened into tokens: a range within one row, else whole rows
            b, width = merged[0], x[merged[0] + 1]
            (t0, t1) = box[k]
            (r0, c0), (r1, c1) = divmod(t0, width), divmod(t1, width)
            if r0 != r1:
                c0, c1 = 0, width - 1
            out_box[k] = (r0 * width + c0, r1 * width + c1)
            axes += [b, b + 1]
            sizes += [x[b], width]
            in_box += [(r0, r1), (c0, c1)]
            k += 1
            continue
        split = [b for b in range(len(x)) if k + 1 < len(tracked.axes) and tracked.axes[k + 1] == a + 1
                 and x[b] == y[a] * y[a + 1] and math.prod(x[:b]) == math.prod(y[:a])]
        if not split:
            return None
        (r0, r1), (c0, c1) = box[k], box[k + 1]
        if r0 != r1:  # several rows: whole rows, one flat range
            c0, c1 = 0, y[a + 1] - 1
            out_box[k + 1] = (c0, c1)
        axes.append(split[0])
        sizes.append(x[split[0]])
        in_box.append((r0 * y[a + 1] + c0, r1 * y[a + 1] + c1))
        k += 2
    return tuple(out_box), {node.input[0]: _sorted(axes, sizes, in_box)}


def _read_slice(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Slice with constant bounds and step 1 along the tracked axes: output position u reads
    input position start + u."""
    x = plan.shapes.get(node.input[0])
    bounds = plan.slice_bounds(node)
    if x is None or bounds is None:
        return None
    starts = {ax: (st, step) for ax, st, _, step in bounds}
    shifted = []
    for ax, (lo, hi) in zip(tracked.axes, box):
        st, step = starts.get(ax, (0, 1))
        if step != 1:
            return None
        st = min(max(st + x[ax] if st < 0 else st, 0), x[ax])  # ONNX clamps a start to [0, dim]
        shifted.append((lo + st, hi + st))
    return box, {node.input[0]: (_Tracked(tracked.axes, tuple(x[a] for a in tracked.axes)), tuple(shifted))}


def _written_axes(plan: _Plan, node: onnx.NodeProto) -> tuple[list[int] | None, bool]:
    """(axes, known): the ``axes`` attribute of a reduction or (Un)Squeeze, or its constant axes
    input (opset 13/18 on), None when it has neither; ``known`` False when that input is computed
    at run time."""
    written = _attrs(node).get("axes")
    if written is not None or len(node.input) < 2 or not node.input[1]:
        return (None if written is None else [int(a) for a in written]), True
    value = plan.constant(node.input[1])
    return (None, False) if value is None else ([int(v) for v in np.ravel(value)], True)


def _read_reduce(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Reduce*, ArgMax, ArgMin over axes that hold no position (the channels: a hand-written
    softmax's or norm's statistics): each output position reads the same position of the input."""
    x = plan.shapes.get(node.input[0])
    if x is None:
        return None
    attrs = _attrs(node)
    written, known = _written_axes(plan, node)
    if not known:
        return None
    axes = reduced_axes(node.op_type, attrs, written, len(x))
    kept = list(range(len(x))) if attrs.get("keepdims", 1) else [a for a in range(len(x)) if a not in axes]
    mine = tuple(kept[a] for a in tracked.axes)
    if any(a in axes for a in mine):
        return None
    return box, {node.input[0]: (_Tracked(mine, tracked.sizes), box)}


def _read_squeeze(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Squeeze and Unsqueeze with constant axes: each output position reads the same position of
    the input.  An axis Squeeze removes is tracked on its one unit (a Conv1D written as a 2-D
    convolution, as tf2onnx does, is then a window node over all its spatial axes); one Unsqueeze
    inserts is dropped.  Squeeze without axes (it would also drop a box of one unit) keeps the
    whole tensor."""
    x, y = plan.shapes.get(node.input[0]), plan.shapes.get(node.output[0])
    written, known = _written_axes(plan, node)
    if x is None or y is None or not known or not written:
        return None
    if node.op_type == "Squeeze":
        removed = {a % len(x) for a in written}
        kept = [i for i in range(len(x)) if i not in removed]
        axes = [kept[a] for a in tracked.axes] + sorted(removed)
        return box, {node.input[0]: _sorted(axes, list(tracked.sizes) + [1] * len(removed),
                                            list(box) + [(0, 0)] * len(removed))}
    inserted = {a % len(y) for a in written}
    source = [None if o in inserted else o - sum(i < o for i in inserted) for o in range(len(y))]
    axes, sizes, boxes = [], [], []
    for a, n, b in zip(tracked.axes, tracked.sizes, box):
        src = source[a]
        if src is None:  # an inserted axis: one unit, nothing to read
            if b != (0, 0):
                return None
            continue
        axes.append(src)
        sizes.append(n)
        boxes.append(b)
    return box, {node.input[0]: _sorted(axes, sizes, boxes)}


def _read_pixel_shuffle(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box
                        ) -> tuple[Box, dict[str, Read]] | None:
    """DepthToSpace: output unit u reads input unit floor(u / b); the input box makes whole blocks,
    a larger box, sliced to the box.  SpaceToDepth: output unit u reads input units b u .. b u + b - 1."""
    x = plan.shapes.get(node.input[0])
    b = int(_attrs(node).get("blocksize", 0))
    if x is None or len(x) != 4 or b < 1 or tracked.axes != (2, 3):
        return None
    if node.op_type == "SpaceToDepth":
        return box, {node.input[0]: (_Tracked((2, 3), tuple(x[2:])), tuple((lo * b, hi * b + b - 1) for lo, hi in box))}
    reads = tuple((lo // b, hi // b) for lo, hi in box)
    plan.held[id(node)] = tuple((lo * b, hi * b + b - 1) for lo, hi in reads)
    return box, {node.input[0]: (_Tracked((2, 3), tuple(x[2:])), reads)}


def _resize_axes(plan: _Plan, node: onnx.NodeProto) -> list[geometry.ResizeAxis] | None:
    """Each axis of a Resize/Upsample with constant scales or sizes (``semantics.geometry``
    decodes them), or None: not constant, or a mode the rewrite does not crop."""
    x, y = plan.shapes.get(node.input[0]), plan.shapes.get(node.output[0])
    attrs = _attrs(node)
    if x is None or y is None or geometry._str(attrs, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return None
    scales, sizes = plan.resize_inputs(node)
    try:
        how = geometry.resampling(node.op_type, plan.opset, attrs, node.name)
        factors = geometry.resize_scales(node.op_type, plan.opset, attrs, scales, sizes, x, y, node.name)
    except RFGraphError:
        return None
    if how.coord not in SHIFTING_COORDS or how.antialias:
        return None
    return [geometry.ResizeAxis(how, f, n, m) for f, n, m in zip(factors, x, y)]


def _read_resize(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box) -> tuple[Box, dict[str, Read]] | None:
    """Resize/Upsample by a whole factor s on the tracked axes (nearest, linear, cubic): the input
    box [first, last] holding every tap of the box's units (clamped to the input as the taps
    are) and the units floor(lo / s), floor(hi / s); resized with the same scale it gives units
    [s * first, s * last + s - 1], equal to the original's on the box (the crop reads every tap
    the original reads there, and clamps only where the original does), which ``_rewrite``
    Slices out."""
    axes, x = _resize_axes(plan, node), plan.shapes.get(node.input[0])
    if axes is None or x is None or any(a.scale != 1 for k, a in enumerate(axes) if k not in tracked.axes):
        return None
    reads, held = [], []
    for ax, (lo, hi) in zip(tracked.axes, box):
        a = axes[ax]
        if a.scale.denominator != 1 or a.scale < 1 or a.in_size is None or a.out_size != a.scale * a.in_size:
            return None
        s = int(a.scale)
        # the box's taps, and the input units the crop's resized units must start and end on
        first, last = max(min(a.taps(lo)[0], lo // s), 0), min(max(a.taps(hi)[1], hi // s), a.in_size - 1)
        if not s * first <= lo <= hi <= s * last + s - 1:
            return None
        reads.append((first, last))
        held.append((s * first, s * last + s - 1))
    plan.held[id(node)] = tuple(held)
    return box, {node.input[0]: (_Tracked(tracked.axes, tuple(x[a] for a in tracked.axes)), tuple(reads))}


def _read_conv_transpose(plan: _Plan, node: onnx.NodeProto, tracked: _Tracked, box: Box
                         ) -> tuple[Box, dict[str, Read]] | None:
    """ConvTranspose: input unit i adds into outputs i * s - pad_begin + k * d; the input box
    [first, last] holds every unit adding into the box, and run on it without padding it gives
    outputs [first * s - pad_begin, last * s - pad_begin + k_eff - 1], whole on the box (the units
    near the crop's edges miss inputs outside it, but lie outside the box), which ``_rewrite``
    Slices out."""
    x, y = plan.shapes.get(node.input[0]), plan.shapes.get(node.output[0])
    w = plan.shapes.get(node.input[1]) if len(node.input) > 1 else None
    if x is None or y is None or w is None or tracked.axes != tuple(range(2, len(x))):
        return None
    attrs = _attrs(node)
    try:
        geo = geometry.conv_transpose(node.name, attrs, list(attrs.get("kernel_shape") or w[2:]), list(x[2:]))
    except RFGraphError:
        return None
    reads, held = [], []
    for a, (lo, hi), n, m in zip(geo.axes, box, x[2:], y[2:]):
        if geometry.conv_transpose_output_size(a, n) != m:  # onnxruntime's clamped SAME: not ours to crop
            return None
        s, p = a.stride, a.pad_begin
        first = max(min(-(-(lo + p - a.k_eff + 1) // s), (lo + p) // s), 0)
        last = min(max((hi + p) // s, -(-(hi + p - a.k_eff + 1) // s)), n - 1)
        start, stop = first * s - p, last * s - p + a.k_eff - 1
        if first > last or not start <= lo <= hi <= stop:
            return None
        reads.append((first, last))
        held.append((start, stop))
    plan.held[id(node)] = tuple(held)
    return box, {node.input[0]: (_Tracked(tracked.axes, tuple(x[2:])), tuple(reads))}


def _rule(node: onnx.NodeProto) -> ReadRule | None:
    """The read rule of ``node``'s op (None: it keeps the whole tensor)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in WINDOW_NODES:
        return _read_window
    if op in CHANNEL_NODES or op in SPLIT_NODES:
        return _read_first
    if op in POINTWISE_OPS | NORMALISING_NODES | {"Concat"} or (op in BROADCAST_OPS and op not in NOT_BROADCAST):
        return _read_aligned
    if op in RESAMPLING_NODES:
        return _read_resize
    if op == "ConvTranspose":
        return _read_conv_transpose
    if op in REDUCING_OPS:
        return _read_reduce
    if op in PIXEL_SHUFFLES:
        return _read_pixel_shuffle
    return {"MatMul": _read_matmul, "Transpose": _read_transpose, "Reshape": _read_reshape,
            "Slice": _read_slice, "Squeeze": _read_squeeze, "Unsqueeze": _read_squeeze}.get(op)


# ------------------------------------------------------------------ the backward pass

class _Plan:
    """The backward pass: per tensor, its tracked axes and the box the unit reads; per node
    computed on a box, that box and what it reads of its inputs."""

    def __init__(self, model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], shapes: dict[str, tuple[int, ...]],
                 output: str, axes: tuple[int, ...], box: Box) -> None:
        self.shapes, self.output = shapes, output
        from .onnx_import import default_opset
        from .vjp import constant_folder

        self.opset = default_opset(model, 17)
        self.fold = constant_folder(model, shapes)
        self.tracked: dict[str, _Tracked] = {}
        self.need: dict[str, Box] = {}
        self.box: dict[int, Box] = {}  # the box of the outputs of each node computed on one (by id)
        self.reads: dict[int, dict[str, Read]] = {}
        self.held: dict[int, Box] = {}  # the larger box a cropped Resize, ConvTranspose, DepthToSpace computes
        shape = shapes[output]
        self._want(output, *_sorted(axes, [shape[a] for a in axes], box))
        for node in reversed(nodes):
            self._visit(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor computed from constants and shapes alone (the loader's folder:
        a Reshape's shape from Shape, Gather and Concat), None for one that depends on the input."""
        return self.fold(name) if name else None

    def resize_inputs(self, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(scales, sizes) of a Resize/Upsample as its opset spells them, each None unless constant."""
        def at(slot: int) -> np.ndarray | None:
            return self.constant(node.input[slot]) if len(node.input) > slot and node.input[slot] else None

        if node.op_type == "Upsample":
            scale_attr = _attrs(node).get("scales")
            return (at(1) if scale_attr is None else np.asarray(scale_attr)), None
        if self.opset < 11:
            return at(1), None
        sizes = at(3)
        return at(2), (sizes if sizes is not None and sizes.size else None)

    def slice_bounds(self, node: onnx.NodeProto) -> list[tuple[int, int, int, int]] | None:
        """A Slice's (axis, start, end, step) per sliced axis as written, the axis made
        non-negative, when its bounds are constants (None otherwise)."""
        x = self.shapes.get(node.input[0])
        if x is None:
            return None
        if self.opset < 10:
            a = _attrs(node)
            parts: list[Any] = [a.get("starts"), a.get("ends"), a.get("axes"), None]
        else:
            parts = [self.constant(i) if i else None for i in list(node.input[1:5]) + [""] * (5 - len(node.input))]
            if parts[0] is None or parts[1] is None or any(p is None and i for p, i in zip(parts[2:], node.input[3:5])):
                return None
        starts, ends = [int(v) for v in parts[0]], [int(v) for v in parts[1]]
        axes = [int(v) % len(x) for v in (parts[2] if parts[2] is not None else range(len(starts)))]
        steps = [int(v) for v in (parts[3] if parts[3] is not None else [1] * len(starts))]
        return list(zip(axes, starts, ends, steps))

    def _want(self, name: str, tracked: _Tracked, box: Box) -> None:
        if name in self.tracked and self.tracked[name].axes != tracked.axes:
            box, tracked = self.tracked[name].full(), self.tracked[name]  # read two ways: whole
        self.tracked[name] = tracked
        self.need[name] = _union(self.need.get(name), box)

    def _whole(self, name: str) -> None:
        """``name`` is read whole (by a node that keeps the whole tensor)."""
        if name in self.tracked:
            self.need[name] = self.tracked[name].full()
        elif name in self.shapes:
            self.tracked[name] = _Tracked((), ())
            self.need[name] = ()

    def _joint(self, wanted: list[str]) -> Box | None:
        """The box around the needs of several outputs tracked alike (None when they differ)."""
        if len({self.tracked[o] for o in wanted}) != 1:
            return None
        box: Box | None = None
        for o in wanted:
            box = _union(box, self.need[o])
        return box

    def _visit(self, node: onnx.NodeProto) -> None:
        wanted = [o for o in node.output if o and o in self.need]
        if not wanted or node.op_type in SHAPE_NODES:  # shapes: the original's (``_rewrite``)
            return
        made = self._reads(node, wanted)
        if made is None:
            for o in wanted:  # computed whole
                self.need[o] = self.tracked[o].full()
            for i in filter(None, node.input):
                self._whole(i)
            return
        box, reads = made
        self.box[id(node)], self.reads[id(node)] = box, reads
        for i in filter(None, node.input):
            if i in reads:
                self._want(i, *reads[i])
            else:
                self._whole(i)

    def _reads(self, node: onnx.NodeProto, wanted: list[str]) -> tuple[Box, dict[str, Read]] | None:
        """The node's rule applied to the box around its outputs' needs; None when it keeps the
        whole tensor (no rule, several outputs other than a Split's, an unknown shape, nothing to save)."""
        rule = _rule(node)
        several = len([o for o in node.output if o]) != 1
        if rule is None or (several and node.op_type not in SPLIT_NODES) or node.output[0] not in self.shapes:
            return None
        tracked, box = self.tracked[wanted[0]], self._joint(wanted)
        if box is None or not tracked.axes or box == tracked.full():
            return None
        return rule(self, node, tracked, box)


# ------------------------------------------------------------------ the rewrite

def trim(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], output: str,
         axes: Sequence[int], box: Box) -> Trimmed | None:
    """``model`` rewritten to compute tensor ``output`` on ``box`` (along its ``axes``, inclusive
    bounds) with every earlier tensor on the box that one reads (``shapes``: every tensor's static
    shape); None when that saves under MIN_GAIN of the multiply-accumulates."""
    from .cuts import macs
    from .onnx_import import elem_type, model_like
    from .vjp import ancestors

    nodes = ancestors(model, output)
    if output not in shapes:
        return None
    plan = _Plan(model, nodes, shapes, output, tuple(axes), tuple(box))
    split = _split_where_parts_differ(model, nodes, shapes, plan)
    if split is not None:
        model, shapes = split
        nodes = ancestors(model, output)
        plan = _Plan(model, nodes, shapes, output, tuple(axes), tuple(box))
    before = after = 0
    for n in nodes:
        cost = macs(n, shapes)
        before += cost
        if cost and id(n) in plan.box:  # the share of its output positions it computes
            kept = math.prod(hi - lo + 1 for lo, hi in plan.box[id(n)])
            cost = cost * kept // math.prod(plan.tracked[n.output[0]].sizes)
        after += cost
    if not before or before - after < MIN_GAIN * before:
        return None
    new_nodes, inits, computed = _rewrite(model, nodes, plan)
    out_vi = helper.make_tensor_value_info(output, elem_type(model, output), None)
    used = {i for n in new_nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used] + inits
    inputs = [i for i in model.graph.input if i.name in used]
    out_box = computed.get(output, plan.tracked[output].full())
    return Trimmed(model_like(model, new_nodes, keep, inputs, [out_vi]), out_box, after, before)


def _split_where_parts_differ(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
                              shapes: dict[str, tuple[int, ...]], plan: _Plan
                              ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]] | None:
    """``model`` with the fused projections (``rfgraph.projections``) whose parts the unit reads
    on different boxes (attention's queries on its token, keys and values on all) computed as one
    product per part, and the new tensors' shapes; None where there is none."""
    found = [f for f in projections.fused_projections(nodes, shapes, plan.opset, plan.constant, [plan.output])
             if len({plan.need.get(o) for o in f.split.output}) > 1]
    return projections.split_products(model, found, shapes) if found else None


def _rewrite(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], plan: _Plan
             ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, Box]]:
    """The forward pass: each node computed on a box reads Slices of its inputs to the boxes it
    needs, with its attributes or constant inputs rewritten for the box (``_adapt``); also the box
    each such tensor holds."""
    from .onnx_import import slice_node

    computed: dict[str, Box] = {}  # the box each cropped node's output holds
    slices: dict[tuple[str, Box], str] = {}
    out_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def read(name: str, tracked: _Tracked, box: Box) -> str:
        """``name`` Sliced from the box it holds to ``box`` (itself where they are the same)."""
        held = plan.tracked.get(name)
        have = computed.get(name) if held is not None and held.axes == tracked.axes else None
        have = have or tracked.full()
        if have == box or not tracked.axes:
            return name
        if (name, box) not in slices:
            tag = f"rfgraph_trim/{len(slices)}"
            cut(name, f"{tag}/out", tag, box, have, tracked.axes)
            slices[name, box] = f"{tag}/out"
        return slices[name, box]

    def cut(name: str, out: str, tag: str, box: Box, have: Box, axes: Sequence[int]) -> None:
        """A Slice of ``name``, which holds box ``have``, to ``box``, named ``out``."""
        node, consts = slice_node(model, name, out, tag, [lo - h for (lo, _), (h, _) in zip(box, have)],
                                  [hi - h + 1 for (_, hi), (h, _) in zip(box, have)], axes)
        out_nodes.append(node)
        inits.extend(consts)

    for node in nodes:
        if node.op_type in SHAPE_NODES and node.input[0] in computed:  # the original's shape
            value = plan.constant(node.output[0])
            if value is None:
                raise ValueError(f"no constant shape for '{node.output[0]}'")
            inits.append(numpy_helper.from_array(np.asarray(value), node.output[0]))
            continue
        if id(node) not in plan.box:
            out_nodes.append(node)
            continue
        box, reads = plan.box[id(node)], plan.reads[id(node)]
        m = onnx.NodeProto()
        m.CopyFrom(node)
        for k, i in enumerate(node.input):
            if i in reads:
                m.input[k] = read(i, *reads[i])
        inits.extend(_adapt(m, node, plan, box, reads))
        computed.update((o, box) for o in node.output if o)
        out_nodes.append(m)
        if id(node) in plan.held:  # it computes a larger box: its box Sliced out
            m.output[0] = f"{node.output[0]}/rfgraph_trim_held"
            cut(m.output[0], node.output[0], f"{m.output[0]}/cut", box, plan.held[id(node)],
                plan.tracked[node.output[0]].axes)
    return out_nodes, inits, computed


def _adapt(m: onnx.NodeProto, node: onnx.NodeProto, plan: _Plan, box: Box, reads: dict[str, Read]
           ) -> list[onnx.TensorProto]:
    """Rewrite ``m`` (a copy of ``node`` reading its inputs' boxes) for output ``box``: a window
    node's pads, a Reshape's shape, a Slice's bounds on the tracked axes; the new constants."""
    if node.op_type in WINDOW_NODES:
        geo = _window(node, plan.shapes)
        assert geo is not None
        (kept, read), y, x = reads[node.input[0]], plan.shapes[node.output[0]], plan.shapes[node.input[0]]
        out_box, in_box = dict(zip(plan.tracked[node.output[0]].axes, box)), dict(zip(kept.axes, read))
        _set_pads(m, geo, tuple(out_box.get(a, (0, y[a] - 1)) for a in range(2, len(y))),  # an axis not
                  tuple(in_box.get(a, (0, x[a] - 1)) for a in range(2, len(x))))  # tracked: kept whole
        return []
    tracked = plan.tracked[node.output[0]]
    if node.op_type in RESAMPLING_NODES:
        return _resize_sizes(m, node, plan, reads[node.input[0]][1])
    if node.op_type == "ConvTranspose":  # no padding: the crop's full output, Sliced to the box
        keep = [a for a in m.attribute if a.name not in ("pads", "auto_pad", "output_padding", "output_shape")]
        del m.attribute[:]
        m.attribute.extend(keep)
        return []
    if node.op_type == "Reshape":
        shape = plan.constant(node.input[1])
        assert shape is not None
        shape = shape.copy()
        for ax, (lo, hi) in zip(tracked.axes, box):
            shape[ax] = hi - lo + 1
        return [_constant(m, 1, shape)]
    if node.op_type == "Slice":  # its input already holds the box: the tracked axes read whole
        bounds = plan.slice_bounds(node)
        assert bounds is not None
        held = dict(zip(tracked.axes, box))
        starts = [0 if ax in held else st for ax, st, _, _ in bounds]
        ends = [held[ax][1] - held[ax][0] + 1 if ax in held else en for ax, _, en, _ in bounds]
        if plan.opset < 10:
            keep = [a for a in m.attribute if a.name not in ("starts", "ends")]
            del m.attribute[:]
            m.attribute.extend(keep + [helper.make_attribute("starts", starts), helper.make_attribute("ends", ends)])
            return []
        return [_constant(m, 1, np.array(starts, np.int64)), _constant(m, 2, np.array(ends, np.int64))]
    return []


def _resize_sizes(m: onnx.NodeProto, node: onnx.NodeProto, plan: _Plan, reads: Box) -> list[onnx.TensorProto]:
    """A Resize given output sizes: those of its input box times the scale (the scales, where
    given, stay as they are)."""
    _, sizes = plan.resize_inputs(node)
    if sizes is None:
        return []
    x = plan.shapes[node.input[0]]
    scale = {ax: plan.shapes[node.output[0]][ax] // x[ax] for ax in plan.tracked[node.input[0]].axes}
    held = dict(zip(plan.tracked[node.input[0]].axes, reads))
    listed = [int(a) % len(x) for a in _attrs(node).get("axes", [])] or list(range(len(x)))
    new = sizes.astype(np.int64).copy()
    for k, ax in enumerate(listed):
        if ax in held:
            new[k] = scale[ax] * (held[ax][1] - held[ax][0] + 1)
    return [_constant(m, 3, new)]


def _constant(m: onnx.NodeProto, slot: int, value: np.ndarray) -> onnx.TensorProto:
    """A new initializer for input ``slot`` of ``m``, named after the node."""
    name = f"rfgraph_trim/{m.name or m.output[0]}#{slot}"
    m.input[slot] = name
    return numpy_helper.from_array(value, name)


def _set_pads(node: onnx.NodeProto, geo: geometry.Window, box: Box, reads: Box) -> None:
    """Explicit pads that make the window node map its input box ``reads`` onto output ``box``:
    begin pad = what the original padded before the box's first window, end pad likewise."""
    begins = [r_lo - (lo * a.stride - a.pad_begin) for a, (lo, _), (r_lo, _) in zip(geo.axes, box, reads)]
    ends = [(hi * a.stride - a.pad_begin + a.k_eff - 1) - r_hi for a, (_, hi), (_, r_hi) in zip(geo.axes, box, reads)]
    keep = [a for a in node.attribute if a.name not in ("pads", "auto_pad", "ceil_mode")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(helper.make_attribute("pads", begins + ends))


__all__ = ["MIN_GAIN", "Trimmed", "trim"]
