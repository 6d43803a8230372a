"""Alignment fixes: for each misaligned merge, the smallest pad/crop of one branch (in that
branch's units) that makes every branch's centre equal (eqs. 12-13), verified by re-analysis."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..analysis import Analysis
from ..errors import RFGraphError


@dataclass(frozen=True)
class AlignmentFix:
    """The smallest pad/crop making a misaligned merge aligned along one axis.

    ``pads[b] = (begin, end)`` in units of branch b's tensor, ONNX Pad convention (negative =
    crop); a shift keeps the branch's size.  ``fixable`` is False when strides differ or the
    centre offset is not a whole number of branch units.
    """

    node: str
    op: str
    axis: str
    axis_index: int
    branches: tuple[str, ...]
    pads: Mapping[str, tuple[int, int]]
    offset: Fraction  # largest centre offset between branches before the fix (input px)
    fixable: bool
    reason: str = ""
    verified: bool | None = None  # re-analysed with the fix applied: aligned?

    def describe(self) -> str:
        if not self.fixable:
            return self.reason
        parts = []
        for tensor, (b, e) in self.pads.items():
            what = "crop" if b < 0 else "pad"
            other = "pad" if b < 0 else "crop"
            parts.append(f"{what} {abs(b)} at the start and {other} {abs(e)} at the end of "
                         f"'{tensor}' (Pad pads begin={b}, end={e})")
        return "; ".join(parts) if parts else (self.reason or "already aligned")


def alignment_fixes(analysis: Analysis) -> list[AlignmentFix]:
    """One fix per misaligned (merge, axis), choosing the shift that moves the fewest units."""
    fixes = []
    for m in analysis.misaligned:
        fixes.append(_fix(analysis, m))
    return fixes


def _largest_offset(branches: Any) -> Fraction:
    """The largest gap between the branches' centres over the units of the merge (per phase of
    its period: with upsampling the centres differ from unit to unit, and unit 0's gap can be 0
    where unit 1's is 4 px: HRNet's fuse)."""
    phases = [[Fraction(c) for c in b.phases] or [Fraction(b.centre)] for b in branches]
    if len({Fraction(b.S) for b in branches}) > 1:  # the phases subtract u*S: comparable at unit 0 only
        phases = [[Fraction(b.centre)] for b in branches]
    return max(max(col) - min(col) for col in zip(*phases))


def _fix(analysis: Analysis, m: Any) -> AlignmentFix:
    axis = analysis.axis_names[m.axis]
    tensors = tuple(b.tensor for b in m.branches)
    offset = _largest_offset(m.branches)
    strides = {Fraction(b.S) for b in m.branches}
    if len(strides) > 1:
        return AlignmentFix(m.node, m.op, axis, m.axis, tensors, {}, offset, False,
                            f"branch strides differ ({', '.join(str(b.S) for b in m.branches)}): "
                            f"no pad or crop aligns them; resample one branch")
    S = strides.pop()
    fields = list(m.fields)  # as the merge reads them: a window partition's tensor folds its positions
    if any(not f.shift_invariant for f in fields):
        return AlignmentFix(m.node, m.op, axis, m.axis, tensors, {}, offset, False,
                            "a branch mixes several strides: no pad or crop aligns it")
    if S == 0:
        return AlignmentFix(m.node, m.op, axis, m.axis, tensors, {}, offset, False,
                            "the branches read fixed input positions (S = 0: the merged tensor has no "
                            "axis along this input axis, e.g. time steps picked by Gather); no pad or "
                            "crop moves them")
    reach = math.ceil(offset / abs(S)) + math.lcm(*(f.spans[0].q for f in fields)) + 1
    best: tuple[int, dict[str, tuple[int, int]]] | None = None
    for ref in fields:
        shifts = [_shift_onto(ref, f, reach) for f in fields]
        if any(t is None for t in shifts):
            continue
        pads = {tensor: (-t, t) for tensor, t in zip(tensors, shifts) if t}
        cost = sum(abs(t) for t in shifts if t is not None)
        if best is None or cost < best[0]:
            best = (cost, pads)
    if best is None:
        period = math.lcm(*(f.spans[0].q for f in fields))
        why = (f"the branch centres differ from unit to unit, with a period of {period} units "
               f"(upsampling phases, or windows whose units share one field, as in window attention): "
               f"no single shift aligns every unit; where an upsampling causes it, use one whose units "
               f"are centred consistently"
               if period > 1 else
               f"{offset} px is not a multiple of the stride {S}: no pad or crop at "
               f"the merge aligns them; change a begin padding before it (p units at a layer of "
               f"input stride s moves the centre p*s px)")
        return AlignmentFix(m.node, m.op, axis, m.axis, tensors, {}, offset, False, why)
    return AlignmentFix(m.node, m.op, axis, m.axis, tensors, best[1], offset, True)


def _shift_onto(ref: Any, f: Any, reach: int) -> int | None:
    """Smallest |t| such that unit u + t of ``f`` is centred like unit u of ``ref`` for every u
    (checked over two full periods); None when no |t| <= reach does."""
    period = math.lcm(ref.spans[0].q, f.spans[0].q)
    units = range(reach, reach + 2 * period)
    for t in sorted(range(-reach, reach + 1), key=lambda v: (abs(v), v)):
        if all(f.centre(u + t) == ref.centre(u) for u in units):
            return t
    return None


def apply_fixes(model: onnx.ModelProto, fixes: Sequence[AlignmentFix], spatial_axes: Sequence[int],
                node_names: Sequence[str] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with a Pad node inserted on each fixed branch, just before its merge
    (``node_names``: the analysis' display name of each node, for unnamed nodes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    by_branch: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
    for fx in fixes:
        for tensor, pads in fx.pads.items():
            by_branch.setdefault((fx.node, tensor), {})[fx.axis_index] = pads
    names = {n.name for n in g.node}
    nodes = list(g.node)
    before: dict[int, list[onnx.NodeProto]] = {}  # node index -> the Pads inserted before it
    for (node_name, tensor), per_axis in by_branch.items():
        idx = _node_index(nodes, node_name, node_names)
        rank = max(spatial_axes) + 1
        begin, end = [0] * rank, [0] * rank
        for ax, (b, e) in per_axis.items():
            begin[spatial_axes[ax]], end[spatial_axes[ax]] = b, e
        new = _fresh(f"{tensor}_aligned", names)
        pads_name = _fresh(f"{tensor}_align_pads", names)
        g.initializer.append(numpy_helper.from_array(np.array(begin + end, np.int64), pads_name))
        before.setdefault(idx, []).append(helper.make_node("Pad", [tensor, pads_name], [new], name=new))
        for i, t in enumerate(nodes[idx].input):
            if t == tensor:
                nodes[idx].input[i] = new
    placed = [n for i, node in enumerate(nodes) for n in [*before.get(i, []), node]]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in placed]
    del g.node[:]
    g.node.extend(copies)
    return out


def _node_index(nodes: Sequence[onnx.NodeProto], node_name: str, node_names: Sequence[str] | None) -> int:
    """Index of the merge node a fix names (by the analysis' display names where given: unnamed
    nodes), resolved before any Pad is inserted (an insertion shifts the indices after it)."""
    if node_names is not None and node_name in node_names:
        return list(node_names).index(node_name)
    idx = next((i for i, n in enumerate(nodes) if n.name == node_name), None)
    if idx is None:
        raise RFGraphError(f"cannot apply the fix: no node named '{node_name}' in the model")
    return idx


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name
