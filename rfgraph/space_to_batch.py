"""Dilated convolutions written as space-to-batch, read as the dilated Conv they compute.

TensorFlow runs an atrous convolution as SpaceToBatchND, a plain convolution and BatchToSpaceND:
the b x b phases of the (padded) map move into the batch, each phase's grid is convolved with the
undilated kernel, and the phases move back.  tf2onnx writes the moves as SpaceToDepth and
DepthToSpace with Transposes, or as Reshape/Transpose chains (unequal rates, 1-D), whenever the
size is dynamic.  Position by position that is a Conv of dilation b*d and padding b*P.  Read op by
op, the phases in the batch are positions no layout holds in row-major order, so they would be
folded into features: every unit reading its whole block (a field one unit wider per such Conv,
and merges after it reported misaligned where the model is aligned).

Found by applying the layout chains before and after the Conv to arrays of element indices (so
any spelling of the moves is recognised), checked element by element, and replaced by a
Transpose/Reshape, the dilated Conv and a Reshape/Transpose: the same function, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from .projections import readers_of
from .semantics.geometry import window

if TYPE_CHECKING:
    from .onnx_import import ModelGraph

LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "SpaceToDepth",
              "DepthToSpace"}
MOVES_POSITIONS = {"Reshape", "SpaceToDepth", "DepthToSpace"}  # the ops that can put phases in the batch
SHAPE_OPS = {"Shape", "Size"}
MAX_TRACED = 1 << 24  # elements of the largest map whose layout chain is traced
REWRITTEN = "rfgraph:space-to-batch"  # metadata key: one line per Conv read as dilated
NOTE_CONVS = 3  # more Convs read as dilated than this: one note for all

RunNode = Callable[[onnx.NodeProto, Sequence[np.ndarray | None]], np.ndarray | None]


@dataclass(frozen=True)
class PhaseFold:
    """How a Conv's tensor (N', C, s_1..s_k) holds a map's elements: element (n', c, i) is the map's
    element with channel c, position ``blocks[a] * i_a + phases[n', a]`` along map axis
    ``axes[a]`` (None: a size-1 axis of the Conv only), and batch coordinates ``batch[n']`` along
    the map's ``other`` axes."""

    channel: int | None
    axes: tuple[int | None, ...]
    blocks: tuple[int, ...]
    phases: np.ndarray  # (N', k)
    other: tuple[int, ...]
    batch: np.ndarray  # (N',): the row-major index of the other axes' coordinates

    def perm(self) -> list[int]:
        """The map's axes ordered batch, channel, spatial (the Conv's order)."""
        chan = [] if self.channel is None else [self.channel]
        return list(self.other) + chan + [x for x in self.axes if x is not None]


def rewrite_space_to_batch(mg: ModelGraph, run_node: RunNode) -> list[str]:
    """Replace each Conv between phase-moving layout chains by the dilated Conv it computes, in
    ``mg.model`` (then stale: rebuild it); returns one metadata line per Conv replaced."""
    scan = _Scan(mg, run_node)
    lines: list[str] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}  # Conv index -> the nodes in its place
    removed: set[int] = set()
    for idx, node in enumerate(mg.nodes):
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and scan.moves_positions(node):
            found = scan.rewrite(idx)
            if found and not found[1] & removed:
                lines.append(found[0])
                removed |= found[1]
                replaced.update(found[2])
    if lines:
        _put(mg.model, mg.nodes, replaced, removed)
        captured = {t for tensors in mg.captured.values() for t in tensors}
        _drop_unread(mg.model, {t for i in removed for t in mg.nodes[i].input if t}, captured)
        mg.model.metadata_props.add(key=REWRITTEN, value="\n".join(lines))
    return lines


def space_to_batch_notes(model: onnx.ModelProto) -> list[str]:
    """What ``rewrite_space_to_batch`` read as dilated Convs: one sentence per Conv, or one for all
    of them when there are more than ``NOTE_CONVS``."""
    text = next((p.value for p in model.metadata_props if p.key == REWRITTEN), "")
    rows = [line.split("\t") for line in text.splitlines() if line.count("\t") == 2]
    what = "tf2onnx's space-to-batch form of a dilated convolution"
    if len(rows) > NOTE_CONVS:
        convs = ", ".join(f"'{name}' ({rates})" for name, rates, _ in rows)
        return [(f"{len(rows)} Convs with the layout nodes around them that move their inputs' phases into the "
                 f"batch and back ({what}) are read as the Convs of the dilations they compute: {convs}")]
    return [f"Conv '{name}' and the {moves} layout nodes around it that move its input's phases into the batch "
            f"and back ({what}) are read as the Conv of dilation {rates} it computes" for name, rates, moves in rows]


def may_hold_space_to_batch(model: onnx.ModelProto) -> bool:
    """Cheap test before building a graph: some Conv reads a SpaceToDepth or a Reshape through
    layout ops only."""
    producer = {t: n for n in model.graph.node for t in n.output}
    return any(n.op_type in MOVES_POSITIONS for node in model.graph.node if node.op_type == "Conv" and node.input
               for n in _layout_chain(node.input[0], producer.get))


def _layout_chain(tensor: str, producer: Callable[[str], onnx.NodeProto | None]) -> list[onnx.NodeProto]:
    """The layout nodes computing ``tensor`` in a line, first to last (``producer``: a tensor's node)."""
    chain: list[onnx.NodeProto] = []
    while (up := producer(tensor)) is not None and up.op_type in LAYOUT_OPS and up.input:
        chain.insert(0, up)
        tensor = up.input[0]
    return chain


class _Scan:
    """One pass over a graph: who reads what, and the rewrite of one Conv."""

    def __init__(self, mg: ModelGraph, run_node: RunNode) -> None:
        self.mg, self.run_node = mg, run_node
        self.readers = readers_of(mg.nodes)
        for idx, tensors in mg.captured.items():  # an If/Loop/Scan body reads them too
            for t in tensors:
                self.readers.setdefault(t, []).append(mg.nodes[idx])
        self.outputs = set(mg.outputs)

    def moves_positions(self, conv: onnx.NodeProto) -> bool:
        """Whether a layout chain that can move positions into the batch leads to ``conv``."""
        return any(n.op_type in MOVES_POSITIONS for n in self.chain_before(conv))

    def rewrite(self, idx: int) -> tuple[str, set[int], dict[int, list[onnx.NodeProto]]] | None:
        """The rewrite of Conv ``idx`` when its chains fold phases: its line for the metadata (name,
        dilations, layout nodes; ``space_to_batch_notes`` reads it), the indices of the
        nodes it removes, and the nodes put where the Conv was."""
        conv = self.mg.nodes[idx]
        found = self.folds(conv)
        if found is None:
            return None
        before, after, fold_in, fold_out = found
        attrs = _dilated_attributes(self.mg, conv, fold_in.blocks)
        if attrs is None:
            return None
        own = self.own_part(before, conv)
        old = {idx} | {self.mg.producer[n.output[0]] for n in [*own, *after]}
        if not self.shapes_die([*own, conv, *after[:-1]], old):
            return None
        names = _names(conv, own, after)
        new = {idx: _dilated_nodes(self.mg, conv, (before[0].input[0], after[-1].output[0]), names,
                                   (fold_in, fold_out), attrs)}
        rates = "x".join(str(d) for d in attrs["dilations"])
        return f"{conv.name or conv.output[0]}\t{rates}\t{len(before) + len(after)}", old, new

    def folds(self, conv: onnx.NodeProto
              ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], PhaseFold, PhaseFold] | None:
        """The chains before and after ``conv`` (longest first) that move the same phases into its
        batch and back, with their folds; None when no pair does."""
        before, after = self.chain_before(conv), self.chain_after(conv)
        outs: dict[int, PhaseFold | None] = {}  # each chain after the Conv traced once
        for i in range(len(before)):
            fold_in = self.fold_through(before[i:], forward=True)
            if fold_in is None or max(fold_in.blocks, default=1) == 1:
                continue
            for j in range(len(after), 0, -1):
                if j not in outs:
                    outs[j] = self.fold_through(after[:j], forward=False)
                fold_out = outs[j]
                if fold_out is not None and _same_moves(fold_in, fold_out):
                    return before[i:], after[:j], fold_in, fold_out
        return None

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The one node that reads ``tensor``'s values (once, as its data input; other readers may
        read its known shape), unless it is a graph output."""
        readers = [r for r in self.readers.get(tensor, []) if not self.shape_reader(r)]
        if len(readers) != 1 or tensor in self.outputs or list(readers[0].input).count(tensor) != 1:
            return None
        return readers[0] if readers[0].input[0] == tensor else None

    def shape_reader(self, node: onnx.NodeProto) -> bool:
        """A Shape or Size node of a tensor whose shape is known: a constant at this size."""
        shape = self.mg.shapes.get(node.input[0]) if node.input else None
        return node.op_type in SHAPE_OPS and shape is not None and None not in shape

    def dies_with(self, node: onnx.NodeProto, removed: set[int], memo: dict[int, bool]) -> bool:
        """Whether ``node`` computes only what the ``removed`` nodes read (so it goes with them)."""
        idx = self.mg.producer[node.output[0]]
        if idx in removed:
            return True
        if idx not in memo:
            memo[idx] = False  # until shown: a DAG, so no cycle reaches it again
            memo[idx] = all(o not in self.outputs and all(self.dies_with(r, removed, memo)
                                                          for r in self.readers.get(o, []))
                            for o in node.output if o)
        return memo[idx]

    def shapes_die(self, nodes: Sequence[onnx.NodeProto], removed: set[int]) -> bool:
        """Every Shape/Size node reading an output of ``nodes`` (those removed) serves only the
        ``removed`` nodes (tf2onnx's targets of the moves): no size gets baked into the model."""
        memo: dict[int, bool] = {}
        return all(self.dies_with(r, removed, memo) for node in nodes
                   for r in self.readers.get(node.output[0], []) if self.shape_reader(r))

    def chain_before(self, conv: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Layout nodes feeding ``conv``'s data input (tf2onnx moves the phases once for the
        Convs of one input and one rate: the chain may be theirs too)."""
        return _layout_chain(conv.input[0], self.mg.node_of)

    def own_part(self, before: Sequence[onnx.NodeProto], conv: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The end of the chain ``before`` that only ``conv`` reads (removed with it; the rest goes
        once no Conv reads it)."""
        own: list[onnx.NodeProto] = []
        reader = conv
        for node in reversed(before):
            if self.only_reader(node.output[0]) is not reader:
                break
            own.insert(0, node)
            reader = node
        return own

    def chain_after(self, conv: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Layout nodes reading ``conv``'s output in a line, each output read by the next node only."""
        chain: list[onnx.NodeProto] = []
        t = conv.output[0]
        while (reader := self.only_reader(t)) is not None and reader.op_type in LAYOUT_OPS:
            chain.append(reader)
            t = reader.output[0]
        return chain

    def fold_through(self, chain: Sequence[onnx.NodeProto], forward: bool) -> PhaseFold | None:
        """The fold of the map at the far end of ``chain`` in the Conv's tensor at the near end
        (before the Conv, ``forward``: the chain's input is the map; after it, its output)."""
        index = self.traced(chain)
        if index is None:
            return None
        in_shape, out_shape = index.shape, self.mg.shapes[chain[-1].output[0]]
        if forward:  # each element of the Conv's input: where it sits in the map
            first = self.mg.shapes[chain[0].input[0]]
            return _phase_fold(np.unravel_index(index, first), first, in_shape)
        conv_shape = self.mg.shapes[chain[0].input[0]]
        where = np.empty(index.size, dtype=np.int64)  # each element of the Conv's output: where it lands
        where[index.reshape(-1)] = np.arange(index.size)
        return _phase_fold(np.unravel_index(where.reshape(conv_shape), out_shape), out_shape, conv_shape)

    def traced(self, chain: Sequence[onnx.NodeProto]) -> np.ndarray | None:
        """The chain applied to the element indices of its input (None: sizes unknown or too large)."""
        first, last = _static(self.mg.shapes.get(chain[0].input[0])), _static(self.mg.shapes.get(chain[-1].output[0]))
        if first is None or last is None or not 0 < math.prod(first) <= MAX_TRACED \
                or math.prod(first) != math.prod(last):
            return None
        index: np.ndarray | None = np.arange(math.prod(first), dtype=np.int64).reshape(first)
        for node in chain:
            rest = [self.mg.constant(t) if t else None for t in node.input[1:]]
            if index is None or any(v is None for t, v in zip(node.input[1:], rest) if t):
                return None
            index = self.run_node(node, [index, *rest])
        return index if index is not None and tuple(index.shape) == last else None


def _static(shape: Sequence[int | None] | None) -> tuple[int, ...] | None:
    """A shape whose every dim is known, else None."""
    return None if shape is None or None in shape else tuple(int(d) for d in shape if d is not None)


def _phase_fold(coords: Sequence[np.ndarray], map_shape: Sequence[int], conv_shape: Sequence[int]
                ) -> PhaseFold | None:
    """The ``PhaseFold`` that ``coords`` (per map axis, the coordinate of each element of the
    Conv's tensor) follows exactly, else None."""
    rank = len(conv_shape)
    if rank < 3:
        return None
    origin = (0,) * rank

    def steps(axis: int) -> dict[int, int]:  # the map axes that move, and by how much, along ``axis``
        if conv_shape[axis] == 1:
            return {}
        nxt = tuple(1 if a == axis else 0 for a in range(rank))
        return {x: int(c[nxt] - c[origin]) for x, c in enumerate(coords) if c[nxt] != c[origin]}

    chan = steps(1)
    if len(chan) > 1 or any(v != 1 for v in chan.values()):
        return None
    channel = next(iter(chan), None)
    axes: list[int | None] = []
    blocks: list[int] = []
    for a in range(2, rank):
        moved = steps(a)
        if len(moved) > 1 or any(v < 1 for v in moved.values()):
            return None
        axes.append(next(iter(moved), None))
        blocks.append(next(iter(moved.values()), 1))
    used = [x for x in [channel, *axes] if x is not None]
    if len(set(used)) != len(used):
        return None
    other = tuple(x for x in range(len(map_shape)) if x not in used)
    n = conv_shape[0]
    firsts = [c[(slice(None),) + (0,) * (rank - 1)] for c in coords]  # per map axis, along the batch
    phases = np.stack([firsts[x] if x is not None else np.zeros(n, np.int64) for x in axes], axis=1)
    if (phases < 0).any() or (phases >= np.array(blocks)).any():
        return None
    batch = np.ravel_multi_index([firsts[x] for x in other], [map_shape[x] for x in other]) if other \
        else np.zeros(n, np.int64)
    fold = PhaseFold(channel, tuple(axes), tuple(blocks), phases, other, np.asarray(batch))
    return fold if _follows(fold, coords, conv_shape) else None


def _follows(fold: PhaseFold, coords: Sequence[np.ndarray], conv_shape: Sequence[int]) -> bool:
    """Every element of the Conv's tensor sits where ``fold`` says."""
    rank = len(conv_shape)
    grid = np.indices(conv_shape, sparse=True)
    along_batch = (-1,) + (1,) * (rank - 1)
    for a, (x, b) in enumerate(zip(fold.axes, fold.blocks)):
        if x is not None and not np.array_equal(coords[x], np.broadcast_to(
                b * grid[2 + a] + fold.phases[:, a].reshape(along_batch), conv_shape)):
            return False
    if fold.channel is not None and not np.array_equal(coords[fold.channel], np.broadcast_to(grid[1], conv_shape)):
        return False
    return all(np.array_equal(coords[x], np.broadcast_to(coords[x][(slice(None),) + (slice(0, 1),) * (rank - 1)],
                                                          conv_shape)) for x in fold.other)


def _same_moves(fold_in: PhaseFold, fold_out: PhaseFold) -> bool:
    """The chain after the Conv puts each batch item's phases and batch index back as the chain
    before it took them: one dilated Conv computes the whole."""
    return fold_in.blocks == fold_out.blocks and np.array_equal(fold_in.phases, fold_out.phases) \
        and np.array_equal(fold_in.batch, fold_out.batch) \
        and [x is None for x in fold_in.axes] == [x is None for x in fold_out.axes]


def _dilated_attributes(mg: ModelGraph, conv: onnx.NodeProto, blocks: Sequence[int]) -> dict | None:
    """The dilated Conv's attributes: dilation and pads times the block (stride 1 only: a strided
    Conv over phase grids is no dilated Conv)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    w_shape, x_shape = mg.shapes.get(conv.input[1]), mg.shapes.get(conv.input[0])
    if w_shape is None or x_shape is None or None in w_shape or None in x_shape:
        return None
    kernel = [int(k) for k in attrs.get("kernel_shape", w_shape[2:])]
    geo = window("Conv", conv.name, attrs, kernel, x_shape[2:])
    if any(s != 1 for s in geo.strides):
        return None
    pads = [b * p for b, p in zip(blocks, geo.pads_begin)] + [b * p for b, p in zip(blocks, geo.pads_end)]
    return {"kernel_shape": kernel, "strides": [1] * len(kernel), "group": int(attrs.get("group", 1)),
            "dilations": [b * d for b, d in zip(blocks, geo.dilations)], "pads": pads}


def _names(conv: onnx.NodeProto, own: Sequence[onnx.NodeProto], after: Sequence[onnx.NodeProto]) -> list[str]:
    """Names of the Transpose and Reshape before the dilated Conv and of the Reshape and Transpose
    after it: those of the first and last moves they replace, where the model had its own (the
    model's names stay), else the Conv's with a suffix."""
    base = conv.name or conv.output[0]
    first = [n.name for n in own[:1]] + [n.name for n in own[1:][-1:]]
    last = [n.name for n in after[:-1][:1]] + [after[-1].name]
    first += [f"{base}::moved", f"{base}::dilated_input"][len(first):]
    return first + [f"{base}::dilated_arranged"][:2 - len(last)] + last


def _dilated_nodes(mg: ModelGraph, conv: onnx.NodeProto, ends: tuple[str, str], names: Sequence[str],
                   folds: tuple[PhaseFold, PhaseFold], attrs: dict) -> list[onnx.NodeProto]:
    """The moves' input -> Transpose, Reshape to (N, C, positions) -> the dilated Conv -> Reshape,
    Transpose -> the moves' output (``ends``): the nodes that replace the Conv and its moves,
    ``names`` those of the Transposes and Reshapes (``_names``)."""
    base = conv.name or conv.output[0]
    fold_in, fold_out = folds
    dense_in, dense_out, arranged = f"{base}::dilated_input", f"{base}::dilated", f"{base}::dilated_arranged"
    nodes = [helper.make_node("Transpose", [ends[0]], [f"{dense_in}::moved"], name=names[0], perm=fold_in.perm())]
    dense = _dense_shape(mg.shapes[conv.input[0]], fold_in.blocks)
    nodes += _reshape(f"{dense_in}::moved", _target(dense, _sources_in(fold_in)), dense_in, names[1])
    nodes.append(helper.make_node("Conv", [dense_in, *conv.input[1:]], [dense_out], name=base, **attrs))
    perm_out = fold_out.perm()
    dims = [int(mg.shapes[ends[1]][p] or 0) for p in perm_out]
    nodes += _reshape(dense_out, _target(dims, _sources_out(fold_out)), arranged, names[2])
    nodes.append(helper.make_node("Transpose", [arranged], [ends[1]], name=names[3],
                                  perm=[int(i) for i in np.argsort(perm_out)]))
    return nodes


def _sources_in(fold: PhaseFold) -> list[tuple[int | None, bool]]:
    """Per dim of the dense input (N, C, positions): its index in the map transposed by
    ``fold.perm()`` (None: merged or inserted) and whether it is a position."""
    perm = fold.perm()
    out: list[tuple[int | None, bool]] = [(0 if len(fold.other) == 1 else None, False),
                                          (None if fold.channel is None else perm.index(fold.channel), False)]
    return out + [(None if x is None else perm.index(x), x is not None) for x in fold.axes]


def _sources_out(fold: PhaseFold) -> list[tuple[int | None, bool]]:
    """Per dim of the output map transposed by ``fold.perm()``: its index in the dense output
    (N, C', positions) (None: split off) and whether it is a position."""
    out: list[tuple[int | None, bool]] = [(0 if len(fold.other) == 1 else None, False)] * len(fold.other)
    if fold.channel is not None:
        out.append((1, False))
    return out + [(2 + a, True) for a, x in enumerate(fold.axes) if x is not None]


def _target(dims: Sequence[int], sources: Sequence[tuple[int | None, bool]]) -> list[int]:
    """A Reshape target for ``dims`` that follows the input's size where it can: a dim that is the
    input's dim at the same index copied (0), one other position inferred (-1), the rest as
    they are at this size (then the model holds this size only, like its moves did)."""
    target, inferred = [], False
    for i, (d, (src, position)) in enumerate(zip(dims, sources)):
        if src == i:
            target.append(0)
        elif position and not inferred:
            target.append(-1)
            inferred = True
        else:
            target.append(int(d))
    return target


def _dense_shape(conv_shape: Sequence[int | None], blocks: Sequence[int]) -> list[int]:
    """The Conv tensor's shape with its phases back in place: (N, C, b_1 s_1, ...)."""
    n, c, *spatial = (int(d or 0) for d in conv_shape)
    return [n // math.prod(blocks), c, *(b * s for b, s in zip(blocks, spatial))]


def _reshape(tensor: str, shape: Sequence[int], out: str, name: str) -> list[onnx.NodeProto]:
    """Node ``name``: ``tensor`` reshaped to ``shape`` as ``out`` (its target a Constant node)."""
    target = f"{out}::shape"
    const = helper.make_node("Constant", [], [target], name=target, value=helper.make_tensor(
        target, onnx.TensorProto.INT64, [len(shape)], [int(d) for d in shape]))
    return [const, helper.make_node("Reshape", [tensor, target], [out], name=name)]


def _put(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], replaced: dict[int, list[onnx.NodeProto]],
         removed: set[int]) -> None:
    """The graph's nodes with each replaced Conv's new nodes in its place (where all its inputs
    exist) and the ``removed`` ones left out."""
    kept: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        kept += replaced.get(i, [])
        if i not in removed:
            kept.append(onnx.NodeProto.FromString(node.SerializeToString()))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    gone = {t for i in removed for t in nodes[i].output} - {t for n in kept for t in n.output}
    stale = [vi for vi in model.graph.value_info if vi.name in gone]
    for vi in stale:
        model.graph.value_info.remove(vi)


def _drop_unread(model: onnx.ModelProto, candidates: set[str], captured: set[str]) -> None:
    """Remove, repeatedly, what served only the replaced nodes: the nodes and initializers
    computing ``candidates`` (the moves' targets) once nothing reads them (``captured``: what
    subgraphs read), and the nodes reading a tensor that is gone (Shape nodes of the moved
    tensors, which ``_Scan.shapes_die`` proved serve nothing else)."""
    g = model.graph
    keep = {o.name for o in g.output} | captured
    while True:
        read = {t for n in g.node for t in n.input} | keep
        for w in [w for w in g.initializer if w.name in candidates and w.name not in read]:
            g.initializer.remove(w)
        have = {i.name for i in g.input} | {w.name for w in g.initializer} | {t for n in g.node for t in n.output}
        dead = [i for i, n in enumerate(g.node) if any(t and t not in have for t in n.input)
                or (any(o in candidates for o in n.output) and not any(o in read for o in n.output))]
        if not dead:
            return
        candidates = {t for i in dead for t in g.node[i].input if t}
        for i in reversed(dead):
            del g.node[i]
