"""Detection heads: a Concat of flattened grids of positions, analysed piece by piece.

A YOLO or YOLOX head flattens each scale's grid (80x80, 40x40 and 20x20 cells) and concatenates
them along one axis: no one field (r, S, P) describes that axis, so the TRF pass reports every
unit after the Concat as reading the whole input, an upper bound.  Where what follows reads each
position of it on its own (the TRF pass run from the Concat's output says so: each unit reads
one position, its own) and otherwise only constants, every tensor after it is the concatenation
of the same computation on each piece.  ``split_pieces`` rewrites the model so: one copy of each
such node per piece (constants that run along the positions cut alike, shape targets resized),
each output replaced by its pieces, named ``output0#0`` (its elements 0 to 6399 along the axis
cut), ``output0#1``..., and the copies checked against the original nodes on random values with
onnxruntime before the analysis uses them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import RFGraphError
from .fields import IDENTITY, AxisField
from .onnx_import import ModelGraph, attributes, elem_types
from .rules import RuleTable
from .semantics import ALIGNED_OPERAND_OPS, SHAPE_TARGET_OPS
from .semantics.layout import GRIDS_JOINED, MIXED_BOUND
from .semantics.transfer import Layout, plain_layout, spatial_of
from .trf import PassResult, forward_pass


@dataclass(frozen=True)
class Piece:
    """Elements ``start:stop`` along ``axis`` of a tensor cut into pieces, as tensor ``name``."""

    name: str
    axis: int
    start: int
    stop: int


Pieces = dict[str, tuple[Piece, ...]]  # graph output -> its pieces, in order along the axis

OWN_POSITION = AxisField((IDENTITY,))  # each unit reads one position: its own
CHECK_TOLERANCE = 1e-5  # copies against the original (same ops on fewer positions): relative


def piece_name(tensor: str, index: int) -> str:
    """The name of piece ``index`` of ``tensor`` (by its rank, not its bounds: the same name at
    every input size, which an analysis at an unknown size compares)."""
    return f"{tensor}#{index}"


def pieces_text(pieces: Sequence[Piece]) -> str:
    """The pieces of a tensor, named, with their elements along the axis cut."""
    return f"{', '.join(f'{p.name} ({p.start}:{p.stop})' for p in pieces)} along axis {pieces[0].axis}"


def cut_text(name: str, pieces: Sequence[Piece], sized: bool = True) -> str:
    """What became of output ``name``: the pieces it is analysed as (not ``sized``: analysed at an
    unknown input size, where their lengths depend on it)."""
    which = pieces_text(pieces) if sized else \
        f"{', '.join(p.name for p in pieces)}, one per grid (their lengths depend on the input size)"
    return (f"'{name}' joins grids of positions of different sizes (a detection head's Concat): it is "
            f"analysed as its pieces {which}")


def one_piece(name: str, pieces: Sequence[Piece], indices: Sequence[Sequence[int]]) -> tuple[Piece, list[int]]:
    """The piece holding elements ``indices`` of output ``name`` (each one index along the axis
    cut) and their indices in that piece; refused where an index is not one number, lies outside
    the axis, or the elements lie in different pieces."""
    last = pieces[-1].stop - 1
    if any(len(i) != 1 for i in indices):
        raise RFGraphError(f"{cut_text(name, pieces)}: give a unit of '{name}' as one index along axis "
                           f"{pieces[0].axis} (0..{last}), or a unit of a piece")
    found = []
    for (index,) in indices:
        held = [p for p in pieces if p.start <= index < p.stop]
        if not held:
            raise RFGraphError(f"'{name}': index {index} is outside 0..{last}")
        found.append((held[0], index - held[0].start))
    if len({p.name for p, _ in found}) > 1:
        raise RFGraphError(f"the units of '{name}' lie in different pieces ({pieces_text(pieces)}): give "
                           f"the units of one piece at a time")
    return found[0][0], [k for _, k in found]


@dataclass
class _Cut:
    """A tensor cut into pieces: the axis of the concatenated positions, each piece's tensor."""

    axis: int
    bounds: tuple[tuple[int, int], ...]
    names: list[str]


@dataclass
class _Rewrite:
    """The nodes and constants of the rewritten model, built in topological order."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: dict[str, np.ndarray] = field(default_factory=dict)  # constants cut per piece
    originals: dict[str, np.ndarray] = field(default_factory=dict)  # constants the copies read
    copies: list[onnx.NodeProto] = field(default_factory=list)
    cloned: list[onnx.NodeProto] = field(default_factory=list)  # the originals of the copies


def split_pieces(mg: ModelGraph, result: PassResult, rules: RuleTable) -> tuple[onnx.ModelProto, Pieces] | None:
    """The model with every output after a Concat of flattened grids replaced by its pieces (and
    what each output became), or None where the pass met no such Concat, no output after one is
    computed from its positions one by one, or the copies do not compute what the original does."""
    concats = grid_concats(mg, result)
    after = set().union(*(nx.descendants(mg.dag, i) for i in concats))
    concats = [i for i in concats if i not in after]  # one after another's: an upper bound, as it was
    cuts, passes = _sources(mg, concats, rules)
    if not cuts:
        return None
    sources = set(_sources_of(mg, concats)) & set(cuts)
    rewrite, rejoined = _rewritten_nodes(mg, concats, sources, cuts, passes)
    pieces, outputs, aliases = _piece_outputs(mg, cuts)
    if not pieces:
        return None
    frontier = [t for t in cuts if (t in pieces or t in rejoined) and t not in sources]
    if _check(mg, concats, cuts, rewrite, frontier) is not None:
        return None
    model = _model(mg, rewrite, aliases, outputs, cuts)
    return (model, pieces) if _complete(model) else None


def _sources_of(mg: ModelGraph, concats: Sequence[int]) -> list[str]:
    """The Concats' outputs: the tensors first cut (their inputs are the pieces)."""
    return [mg.node_outputs[i][0] for i in concats]


def _sources(mg: ModelGraph, concats: Sequence[int], rules: RuleTable) -> tuple[dict[str, _Cut], list[PassResult]]:
    """Each Concat's output as a cut tensor (its inputs the pieces), and the TRF pass run from it
    with its axis as the only axis of positions (which tensors after it read their own position)."""
    cuts: dict[str, _Cut] = {}
    passes: list[PassResult] = []
    for idx in concats:
        out = mg.node_outputs[idx][0]
        axis = _concat_axis(mg, idx)
        shape = mg.shapes.get(out)
        sizes = [(mg.shapes.get(t) or ())[axis] for t in mg.node_inputs[idx]] if axis is not None else [None]
        if shape is None or axis is None or None in sizes or None in shape:
            continue
        ends = np.cumsum([0, *sizes]).tolist()
        cuts[out] = _Cut(axis, tuple(itertools.pairwise(ends)), list(mg.node_inputs[idx]))
        passes.append(forward_pass(mg, out, _positions_layout(shape, axis), rules))
    return cuts, passes


def _rewritten_nodes(mg: ModelGraph, concats: Sequence[int], sources: set[str], cuts: dict[str, _Cut],
                     passes: Sequence[PassResult]) -> tuple[_Rewrite, set[str]]:
    """Every node in topological order: copied per piece, folded (a Shape of a cut tensor), or
    kept, reading a cut tensor joined again where it does (``sources``: the Concats' outputs cut);
    and the tensors joined again."""
    rewrite = _Rewrite()
    rejoined: set[str] = set()
    for idx in mg.topological_nodes():
        if idx in concats and mg.node_outputs[idx][0] in sources:
            continue  # emitted where a node that is not copied reads it
        axes = _copied_axes(mg, idx, cuts, passes)
        if axes is not None:
            _copy_node(mg, idx, axes, cuts, rewrite)
        elif any(t in cuts for t in mg.node_inputs[idx]) and _folded(mg, idx):
            rewrite.nodes += [helper.make_node("Constant", [], [out], name=f"{out} (folded)",
                                               value=numpy_helper.from_array(np.asarray(mg.constant(out)), out))
                              for out in mg.node_outputs[idx] if out]
        else:
            for t in mg.node_inputs[idx]:
                if t in cuts and t not in rejoined:
                    rewrite.nodes.append(_rejoin(mg, t, cuts[t]))
                    rejoined.add(t)
            rewrite.nodes.append(mg.nodes[idx])
    return rewrite, rejoined


def _complete(model: onnx.ModelProto) -> bool:
    """Whether every node reads tensors computed before it (or given) and every output exists."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        if not set(node.input) <= known:
            return False
        known.update(node.output)
    return all(o.name in known for o in model.graph.output)


def grid_concats(mg: ModelGraph, result: PassResult) -> list[int]:
    """The Concats of flattened grids (``GRIDS_JOINED``) whose inputs all depend on the input and
    hold positions along the axis joined."""
    found = []
    for idx, transfer in result.transfers.items():
        if mg.op_types[idx] != "Concat" or transfer.mix_reason != GRIDS_JOINED + MIXED_BOUND:
            continue
        states = [result.states.get(t) for t in mg.node_inputs[idx]]
        axis = _concat_axis(mg, idx)
        if len(states) > 1 and axis is not None and all(
                s is not None and axis < len(s.layout) and spatial_of(s.layout[axis]) for s in states):
            found.append(idx)
    return sorted(found)


def _folded(mg: ModelGraph, idx: int) -> bool:
    """Whether every output of node ``idx`` is a constant (a Shape: known from shapes alone)."""
    return all(mg.constant(out) is not None for out in mg.node_outputs[idx] if out)


def _concat_axis(mg: ModelGraph, idx: int) -> int | None:
    """A Concat's axis, counted from the front (None where its rank is unknown)."""
    shape = mg.shapes.get(mg.node_outputs[idx][0])
    if shape is None:
        return None
    axis = int(attributes(mg.nodes[idx]).get("axis", 1))
    return axis + len(shape) if axis < 0 else axis


def _positions_layout(shape: Sequence[int | None], axis: int) -> Layout:
    """The Concat's output as the input of a pass of its own: one axis of positions, ``axis``."""
    layout = list(plain_layout(shape))
    layout[axis] = ((0, int(shape[axis] or 0)),)
    return tuple(layout)


def _copied_axes(mg: ModelGraph, idx: int, cuts: dict[str, _Cut], passes: Sequence[PassResult]
                 ) -> list[int] | None:
    """Per output, the axis holding the cut positions, where node ``idx`` is copied per piece: it
    reads a cut tensor, every other input is a constant, and every output unit reads one position
    of the cut, its own (every pass that reaches it says so); else None."""
    node = mg.nodes[idx]
    reads = [t for t in mg.node_inputs[idx] if t in cuts]
    if not reads or node.domain not in ("", "ai.onnx") or idx in mg.captured:
        return None
    if len({cuts[t].bounds for t in reads}) > 1:
        return None
    if any(t and t not in cuts and mg.constant(t) is None for t in mg.node_inputs[idx]):
        return None
    axes = []
    for out in mg.node_outputs[idx]:
        if not out:
            axes.append(-1)
            continue
        found = {_own_axis(p, mg.names[idx], idx, out, cuts[reads[0]]) for p in passes if out in p.states}
        if len(found) != 1 or None in found:
            return None
        axes.append(found.pop())  # type: ignore[arg-type]
    return axes


def _own_axis(result: PassResult, node: str, idx: int, tensor: str, cut: _Cut) -> int | None:
    """The axis of ``tensor`` (an output of node ``idx``) holding the cut's positions, each unit
    reading its own position and nothing else; else None."""
    transfer = result.transfers.get(idx)
    if transfer is None or transfer.statistics or transfer.bound or transfer.mix_reason:
        return None
    state = result.states[tensor]
    if state.fields != (OWN_POSITION,) or node in result.gates:
        return None
    whole = ((0, cut.bounds[-1][1]),)
    axes = [t for t, parts in enumerate(state.layout) if parts == whole]
    return axes[0] if len(axes) == 1 else None


def _copy_node(mg: ModelGraph, idx: int, axes: list[int], cuts: dict[str, _Cut], rewrite: _Rewrite) -> None:
    """One copy of node ``idx`` per piece, reading the pieces of its cut inputs and the constants
    cut alike; its outputs become cut tensors."""
    node = mg.nodes[idx]
    cut = next(cuts[t] for t in mg.node_inputs[idx] if t in cuts)
    total = cut.bounds[-1][1]
    rank = len(mg.shapes.get(mg.node_outputs[idx][0]) or ()) or None
    axis = axes[0]
    for i, bounds in enumerate(cut.bounds):
        inputs = [_piece_input(mg, node, slot, t, i, bounds, axis, rank, total, cuts, rewrite)
                  for slot, t in enumerate(mg.node_inputs[idx])]
        outputs = [piece_name(t, i) if t else "" for t in mg.node_outputs[idx]]
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = piece_name(mg.names[idx], i)
        del copy.input[:], copy.output[:]
        copy.input.extend(inputs)
        copy.output.extend(outputs)
        rewrite.nodes.append(copy)
        rewrite.copies.append(copy)
    rewrite.cloned.append(node)
    for out, ax in zip(mg.node_outputs[idx], axes):
        if out:
            cuts[out] = _Cut(ax, cut.bounds, [piece_name(out, i) for i in range(len(cut.bounds))])


def _piece_input(mg: ModelGraph, node: onnx.NodeProto, slot: int, tensor: str, i: int,
                 bounds: tuple[int, int], axis: int, rank: int | None, total: int,
                 cuts: dict[str, _Cut], rewrite: _Rewrite) -> str:
    """What piece ``i``'s copy reads at ``slot``: the piece of a cut input, or the constant, cut
    like the positions where it runs along them (or resized where it is the output's shape)."""
    if not tensor:
        return ""
    if tensor in cuts:
        return cuts[tensor].names[i]
    value = np.asarray(mg.constant(tensor))
    rewrite.originals[tensor] = value
    cut = _cut_constant(node.op_type, slot, value, bounds, axis, rank, total)
    if cut is None:
        return tensor
    name, k = piece_name(tensor, i), 0
    while name in rewrite.inits and not np.array_equal(rewrite.inits[name], cut):  # cut another way elsewhere
        k += 1
        name = f"{piece_name(tensor, i)}.{k}"
    rewrite.inits[name] = cut
    return name


def _cut_constant(op: str, slot: int, value: np.ndarray, bounds: tuple[int, int], axis: int,
                  rank: int | None, total: int) -> np.ndarray | None:
    """A constant operand as piece ``bounds`` reads it (None: unchanged): a target shape's size
    along the cut axis, or an operand aligned with the output that runs along it, cut."""
    lo, hi = bounds
    if rank is None:
        return None
    if SHAPE_TARGET_OPS.get(op) == slot and value.ndim == 1 and len(value) == rank and value[axis] == total:
        resized = value.copy()
        resized[axis] = hi - lo
        return resized
    along = axis - (rank - value.ndim)
    if op in ALIGNED_OPERAND_OPS and 0 <= along < value.ndim and value.shape[along] == total:
        return np.take(value, np.arange(lo, hi), axis=along)
    return None


def _rejoin(mg: ModelGraph, tensor: str, cut: _Cut) -> onnx.NodeProto:
    """The Concat that makes a cut tensor whole again for a node that is not copied (the Concat
    of the grids itself where it is that tensor)."""
    if tensor in mg.producer and mg.op_types[mg.producer[tensor]] == "Concat" and \
            list(mg.node_inputs[mg.producer[tensor]]) == cut.names:
        return mg.nodes[mg.producer[tensor]]
    return helper.make_node("Concat", cut.names, [tensor], name=f"{tensor} (pieces joined)", axis=cut.axis)


def _piece_outputs(mg: ModelGraph, cuts: dict[str, _Cut]) -> tuple[Pieces, list[str], list[onnx.NodeProto]]:
    """What each graph output became (its pieces), the new list of outputs, and the Identity
    nodes naming an output's pieces where they are a Concat's inputs."""
    pieces: Pieces = {}
    outputs: list[str] = []
    aliases: list[onnx.NodeProto] = []
    for out in mg.outputs:
        cut = cuts.get(out)
        if cut is None:
            outputs.append(out)
            continue
        names = [piece_name(out, i) for i in range(len(cut.bounds))]
        aliases += [helper.make_node("Identity", [src], [dst], name=dst)
                    for src, dst in zip(cut.names, names) if src != dst]
        pieces[out] = tuple(Piece(n, cut.axis, lo, hi) for n, (lo, hi) in zip(names, cut.bounds))
        outputs += names
    return pieces, outputs, aliases


def _value_info(name: str, elem: int, shape: Sequence[int | None] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _piece_shapes(mg: ModelGraph, cuts: dict[str, _Cut]) -> dict[str, tuple[int | None, ...]]:
    """The shape of every piece: its tensor's, with the cut axis the piece's length."""
    shapes = {}
    for tensor, cut in cuts.items():
        shape = mg.shapes.get(tensor)
        if shape is None:
            continue
        for name, (lo, hi) in zip(cut.names, cut.bounds):
            shapes[name] = tuple(hi - lo if a == cut.axis else d for a, d in enumerate(shape))
    return shapes


def _model(mg: ModelGraph, rewrite: _Rewrite, aliases: list[onnx.NodeProto], outputs: list[str],
           cuts: dict[str, _Cut]) -> onnx.ModelProto:
    """The rewritten model: its nodes, the constants cut per piece, the pieces' shapes declared
    and the outputs replaced by their pieces."""
    model = onnx.ModelProto()
    model.CopyFrom(mg.model)
    graph = model.graph
    del graph.node[:]
    graph.node.extend(rewrite.nodes + aliases)
    graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in rewrite.inits.items())
    types = elem_types(mg.model)
    shapes = _piece_shapes(mg, cuts)
    shapes.update({a.output[0]: shapes[a.input[0]] for a in aliases if a.input[0] in shapes})
    source = {n: t for t, cut in cuts.items() for n in cut.names}
    copied = {o for c in rewrite.copies for o in c.output}
    graph.value_info.extend(_value_info(n, types.get(source[n], onnx.TensorProto.FLOAT), s)
                            for n, s in shapes.items() if n in copied)
    declared = {o.name: o for o in graph.output}
    del graph.output[:]
    for name in outputs:
        if name in declared:
            graph.output.append(declared[name])
        else:
            base = source.get(name, name.rsplit("#", 1)[0])
            graph.output.append(_value_info(name, types.get(base, onnx.TensorProto.FLOAT), shapes.get(name)))
    return model


def _check(mg: ModelGraph, concats: Sequence[int], cuts: dict[str, _Cut], rewrite: _Rewrite,
           frontier: Sequence[str]) -> str | None:
    """Run the Concats and the copied nodes, originals and copies, on random pieces with
    onnxruntime: None where every copy equals its piece of the original, else why not."""
    from . import runtime

    types = elem_types(mg.model)
    feeds: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for idx in concats:
        for t in mg.node_inputs[idx]:
            shape = mg.shapes.get(t)
            elem = types.get(t, onnx.TensorProto.FLOAT)
            if shape is None or None in shape or elem != onnx.TensorProto.FLOAT:
                return f"input '{t}' of a Concat is not a float tensor of known shape"
            feeds[t] = rng.standard_normal(shape).astype(np.float32)
    checked = list(frontier)
    if not checked:
        return None
    outputs = [n for t in checked for n in [t, *cuts[t].names]]
    graph = helper.make_graph(
        [mg.nodes[i] for i in concats if mg.node_outputs[i][0] in cuts] + rewrite.cloned + rewrite.copies,
        "pieces_check", [_value_info(t, onnx.TensorProto.FLOAT, v.shape) for t, v in feeds.items()],
        [helper.make_tensor_value_info(n, types.get(n.rsplit("#", 1)[0], onnx.TensorProto.FLOAT), None)
         for n in outputs],
        [numpy_helper.from_array(v, n) for n, v in {**rewrite.originals, **rewrite.inits}.items()])
    model = helper.make_model(graph, opset_imports=list(mg.model.opset_import), ir_version=mg.model.ir_version)
    try:
        values = dict(zip(outputs, runtime.session(model, quiet=True).run(outputs, feeds)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: the rewrite is dropped
        return f"onnxruntime could not run the copies: {str(exc).splitlines()[0]}"
    for t in checked:
        whole = np.asarray(values[t], dtype=np.float64)
        scale = max(1.0, float(np.max(np.abs(whole), initial=0.0)))
        for name, (lo, hi) in zip(cuts[t].names, cuts[t].bounds):
            part = np.take(whole, np.arange(lo, hi), axis=cuts[t].axis)
            got = np.asarray(values[name], dtype=np.float64)
            if got.shape != part.shape or np.max(np.abs(got - part), initial=0.0) > CHECK_TOLERANCE * scale:
                return f"'{name}' differs from its piece of '{t}'"
    return None
