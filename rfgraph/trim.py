"""Every layer on the unit's cone: the model rewritten so that each tensor is computed only where
the unit reads it.

A unit of a late feature map reads a box of each earlier tensor (its cone there, shrinking layer by
layer toward the unit). A backward pass over the graph finds that box for every tensor from the
window geometry of Conv and pooling nodes (``semantics.geometry``) and the pointwise and
broadcasting ops (``semantics``' op sets); a forward pass then rewrites the model: each window node
reads a Slice of its input to the box it needs and pads only where the original padded (at the
tensor's own borders), so each computed value is the original's, and pointwise ops run on their
operands' boxes. Any other op keeps the whole tensor: its inputs are needed whole and its output is
computed whole (Sliced where a consumer needs less). Unlike ``rfgraph.cuts`` (crop models at chosen
cut tensors, planned by TRF passes of sub-models), the rewrite needs no sub-model and crops every
layer exactly to its cone; ``rfgraph.erf`` checks its gradient against the whole model's on a first
input before using it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from .semantics import BROADCAST_OPS, POINTWISE_OPS, geometry

Box = tuple[tuple[int, int], ...]  # per tracked axis: [lo, hi], inclusive

WINDOW_NODES = {"Conv", "MaxPool", "AveragePool", "LpPool"}
CHANNEL_NODES = {"BatchNormalization"}  # input 0 pointwise; the others per channel
SPLIT_NODES = {"Split"}  # input 0 split along an axis that holds no position; the sizes constant
# broadcasting ops whose extra operand is not data broadcast to the output (a shape)
NOT_BROADCAST = {"Expand"}
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
    """Which axes of a tensor are tracked (its positions) and its size along each."""

    axes: tuple[int, ...]
    sizes: tuple[int, ...]

    def full(self) -> Box:
        return tuple((0, n - 1) for n in self.sizes)


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _window(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> geometry.Window | None:
    """The geometry of a window node the rewrite can crop (None: it keeps the whole tensor): one
    output, known shapes, and not an AveragePool whose ceil_mode windows count the padding."""
    attrs = _attrs(node)
    x = shapes.get(node.input[0])
    if node.op_type not in WINDOW_NODES or x is None or len([o for o in node.output if o]) != 1:
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


def _window_reads(geo: geometry.Window, box: Box, sizes: Sequence[int]) -> Box | None:
    """The box of the input positions that output ``box``'s windows read (padding excluded: a
    dilated window may step over the first or last positions); None when none is read."""
    out = []
    for a, (lo, hi), n in zip(geo.axes, box, sizes):
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


def _operand(tracked: _Tracked, box: Box, shape: tuple[int, ...] | None, rank: int
             ) -> tuple[_Tracked, Box] | None:
    """What a broadcast operand of shape ``shape`` must hold for an output of rank ``rank`` on
    ``box`` along ``tracked.axes``: its own tracked axes (right-aligned; those of size 1 broadcast,
    dropped) and box, or None when its shape is unknown."""
    if shape is None:
        return None
    shift = rank - len(shape)
    kept = [(ax - shift, b) for ax, b in zip(tracked.axes, box) if ax - shift >= 0 and shape[ax - shift] != 1]
    return _Tracked(tuple(a for a, _ in kept), tuple(shape[a] for a, _ in kept)), tuple(b for _, b in kept)


def _axis(node: onnx.NodeProto, rank: int) -> int:
    """The (non-negative) ``axis`` attribute of a Concat or Split (default 0)."""
    return int(_attrs(node).get("axis", 0)) % max(rank, 1)


def _aligned(node: onnx.NodeProto, axes: tuple[int, ...], rank: int) -> bool:
    """True for a node whose output position reads the same position of each (broadcast) input:
    pointwise and broadcasting ops, and a Concat along an axis that holds no position."""
    if node.op_type == "Concat":
        return _axis(node, rank) not in axes
    return node.op_type in POINTWISE_OPS or (node.op_type in BROADCAST_OPS and node.op_type not in NOT_BROADCAST)


class _Plan:
    """The backward pass: per tensor, its tracked axes and the box the unit reads."""

    def __init__(self, nodes: Sequence[onnx.NodeProto], shapes: dict[str, tuple[int, ...]],
                 output: str, axes: tuple[int, ...], box: Box) -> None:
        self.shapes = shapes
        self.tracked: dict[str, _Tracked] = {}
        self.need: dict[str, Box] = {}
        self.box: dict[int, Box] = {}  # the box of the outputs of each node computed on one (by id)
        shape = shapes[output]
        self._want(output, _Tracked(axes, tuple(shape[a] for a in axes)), box)
        for node in reversed(nodes):
            self._visit(node)

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

    def _visit(self, node: onnx.NodeProto) -> None:
        outs = [o for o in node.output if o]
        wanted = [o for o in outs if o in self.need]
        if not wanted:
            return
        reads = self._reads(node, wanted)
        if reads is None:
            for o in wanted:  # computed whole
                self.need[o] = self.tracked[o].full()
            for i in node.input:
                if i:
                    self._whole(i)
            return
        box = self._joint(wanted)
        assert box is not None  # _reads refuses outputs tracked differently
        self.box[id(node)] = box
        for name, (tracked, box) in reads.items():
            self._want(name, tracked, box)

    def _joint(self, wanted: list[str]) -> Box | None:
        """The box around the needs of several outputs tracked alike (None when they differ)."""
        if len({self.tracked[o] for o in wanted}) != 1:
            return None
        box: Box | None = None
        for o in wanted:
            box = _union(box, self.need[o])
        return box

    def _reads(self, node: onnx.NodeProto, wanted: list[str]) -> dict[str, tuple[_Tracked, Box]] | None:
        """What each data input of ``node`` must hold for its outputs' boxes, or None when the node
        keeps the whole tensor."""
        several = len([o for o in node.output if o]) != 1
        if several and node.op_type not in SPLIT_NODES:
            return None
        out = wanted[0]
        tracked, box = self.tracked[out], self._joint(wanted)
        if box is None or not tracked.axes or box == tracked.full():
            return None
        rank = len(self.shapes.get(out, ()))
        if node.op_type in WINDOW_NODES:
            geo = _window(node, self.shapes)
            x = self.shapes.get(node.input[0])
            if geo is None or x is None or tracked.axes != tuple(range(2, rank)):
                return None
            reads = _window_reads(geo, box, x[2:])
            return None if reads is None else {node.input[0]: (_Tracked(tracked.axes, tuple(x[2:])), reads)}
        if node.op_type in CHANNEL_NODES or (node.op_type in SPLIT_NODES and _axis(node, rank) not in tracked.axes):
            x = self.shapes.get(node.input[0])
            same = x is not None and len(x) == rank and all(x[a] == n for a, n in zip(tracked.axes, tracked.sizes))
            return {node.input[0]: (tracked, box)} if same else None
        if _aligned(node, tracked.axes, rank):
            got: dict[str, tuple[_Tracked, Box]] = {}
            for i in filter(None, node.input):
                mine = _operand(tracked, box, self.shapes.get(i), rank)
                if mine is None:
                    return None
                got[i] = mine
            return got
        return None


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
    plan = _Plan(nodes, shapes, output, tuple(axes), tuple(box))
    before = sum(macs(n, shapes) for n in nodes)
    after = 0
    for n in nodes:
        cost = macs(n, shapes)
        out = n.output[0]
        if cost and id(n) in plan.box:
            t = plan.tracked[out]
            cost = cost * math.prod(hi - lo + 1 for lo, hi in plan.box[id(n)]) // math.prod(t.sizes)
        after += cost
    if not before or before - after < MIN_GAIN * before:
        return None
    new_nodes, inits, computed = _rewrite(model, nodes, plan)
    out_vi = helper.make_tensor_value_info(output, elem_type(model, output), None)
    used = {i for n in new_nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used] + inits
    inputs = [i for i in model.graph.input if i.name in used]
    box = computed.get(output, plan.tracked[output].full())
    return Trimmed(model_like(model, new_nodes, keep, inputs, [out_vi]), box, after, before)


def _rewrite(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], plan: _Plan
             ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, Box]]:
    """The forward pass: each cropped node reads Slices of its inputs to the boxes it needs and
    (window nodes) pads only where the original padded; also the box each cropped tensor holds."""
    from .onnx_import import slice_node

    computed: dict[str, Box] = {}  # the box each cropped node's output holds
    slices: dict[tuple[str, Box], str] = {}
    out_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def holds(name: str) -> Box | None:
        t = plan.tracked.get(name)
        return computed.get(name, t.full() if t is not None and t.axes else None)

    def read(name: str, tracked: _Tracked, box: Box) -> str:
        have = holds(name) if tracked.axes == plan.tracked.get(name, tracked).axes else tracked.full()
        have = have or tracked.full()
        if have == box or not tracked.axes:
            return name
        key = (name, box)
        if key not in slices:
            tag = f"rfgraph_trim/{len(slices)}"
            node, consts = slice_node(model, name, f"{tag}/out", tag, [lo - h for (lo, _), (h, _) in zip(box, have)],
                                      [hi - h + 1 for (_, hi), (h, _) in zip(box, have)], tracked.axes)
            out_nodes.append(node)
            inits.extend(consts)
            slices[key] = f"{tag}/out"
        return slices[key]

    for node in nodes:
        if id(node) not in plan.box:
            out_nodes.append(node)
            continue
        out = node.output[0]
        box = plan.box[id(node)]
        m = onnx.NodeProto()
        m.CopyFrom(node)
        if node.op_type in WINDOW_NODES:
            x = plan.shapes[node.input[0]]
            geo = _window(node, plan.shapes)
            assert geo is not None
            reads = _window_reads(geo, box, x[2:])
            assert reads is not None
            m.input[0] = read(node.input[0], _Tracked(plan.tracked[out].axes, tuple(x[2:])), reads)
            _set_pads(m, geo, box, reads)
        else:
            rank = len(plan.shapes[out])
            for k, i in enumerate(node.input):
                if not i or (node.op_type in CHANNEL_NODES | SPLIT_NODES and k > 0):
                    continue
                mine = _operand(plan.tracked[out], box, plan.shapes[i], rank)
                assert mine is not None
                m.input[k] = read(i, *mine)
        computed.update((o, box) for o in node.output if o)
        out_nodes.append(m)
    return out_nodes, inits, computed


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
