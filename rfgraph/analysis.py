"""``analyze``: the public entry point of the TRF half, returning plain dataclasses.

An ``Analysis`` holds one ``EndPoint`` per tensor reached from the input, each with its field along
every input spatial axis (r, S, P; region [u0, v0] and centre of any unit, eqs. 5-8 and 11), the
alignment verdict of every merge, and the nodes where the analysis stopped (unsupported op).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import onnx

from . import custom_ops
from .borders import BorderCopy, border_copy, clipped_regions, copying_node
from .errors import DynamicShapeError, InputSizeError, InvalidAttributeError, RFGraphError
from .fields import AxisField, Rational, Span, compose, merged_gates
from .onnx_import import (
    ModelGraph,
    ModelSource,
    attributes,
    build_graph,
    contradiction_notes,
    forget_stored_shapes,
    inlined_ifs,
    load_model,
    read_model,
    set_input_shapes,
    shapes_only,
    smallest_input_size,
    upstream_shape_failure,
)
from .options import ModelOptions, model_options
from .pieces import Pieces, cut_text, one_piece, split_pieces
from .rules import RuleTable
from .semantics import CHANNELS_FIRST_OPS
from .semantics.contrib import expanded_from, writes_inner_tensor
from .semantics.transfer import Edge, Layout, OutTransfer, Transfer, carried, coarsening, fine_axis
from .space_to_batch import space_to_batch_notes
from .trf import Gate, Merge, PassResult, Stop, TensorState, forward_pass, output_transfers, reverse_pass

if TYPE_CHECKING:
    from .diagnostics.regions import AxisRegions
    from .unknown_size import PBySize, UnknownSize

AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
LAYOUT_PASSTHROUGH = {"Cast", "Sub", "Div", "Mul", "Add", "Identity", "Unsqueeze", "Pad"}  # keep the axes in place
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


@dataclass(frozen=True)
class EndPoint:
    """A tensor of the graph and its receptive field along each input spatial axis.

    After gates (``gates`` not empty: squeeze-excitation, ECA...) the fields, r, S, P, regions
    and boxes are the *local* field, with every gate's output held constant (what ``.detach()``
    on the gate gives in autograd); the exact field is global through those gates."""

    name: str
    node: str  # producing node ('' for the graph input)
    op: str  # producing op type ('Input' for the graph input)
    shape: tuple[int | None, ...]
    fields: tuple[AxisField, ...]
    units: tuple[int | None, ...]  # number of units along each input spatial axis (None: not indexed)
    tensor_axes: tuple[int | None, ...] = ()  # tensor axis indexing each input spatial axis
    size_dependent: str | None = None
    misaligned_at: str | None = None  # first misaligned merge on a path into this tensor
    # tensor axes whose index is a position: each with the input spatial axes it indexes, in
    # row-major order (one for a feature map's H; two for ViT tokens flattened from H, W)
    unit_axes: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # gate nodes on the paths into this tensor, in graph order (squeeze-excitation, ECA...: a
    # feature map times a value pooled from every position).  When not empty, r, S, P and the
    # regions are the local field with every gate's output held constant (what detaching the gate
    # gives in autograd); the exact field is global through these gates.
    gates: tuple[str, ...] = ()
    # per input spatial axis, the Pads (reflect / edge / wrap) on the paths into this tensor that
    # copy pixels into their border: the clipped boxes add those pixels (r, S, P do not change)
    copies: tuple[tuple[BorderCopy, ...], ...] = ()
    # analysed at an unknown input size (``unknown_size``): per axis, P where it depends on the
    # size (None where it does not); empty at a known size
    P_at_unknown_size: tuple[PBySize | None, ...] = ()
    # the node from which r, S, P and the regions are an upper bound (positions folded into
    # features, then put back: each element is given its whole fold's field); None: exact
    bound_at: str | None = None
    # per unit axis, how many times its grid repeats along it (features outside the positions: a
    # YOLOv5 head's anchors, token = anchor * H * W + cell); the units index the first repeat,
    # and every element along the axis is one of them.  Empty: no repeats
    repeats: tuple[int, ...] = ()
    # per axis, the clipped [lo, hi] of every unit at an input size (the pixels it reads, from the
    # Analysis's exact regions), or None where that size is not the analysed one: set by Analysis
    exact_clip: Callable[[Sequence[int]], list[np.ndarray] | None] | None = field(
        default=None, repr=False, compare=False)

    @property
    def aligned(self) -> bool:
        return self.misaligned_at is None

    @property
    def r(self) -> tuple[int | None, ...]:
        """Receptive-field size per axis (None where global; after gates, the local field:
        see ``gates``)."""
        return tuple(None if f.is_global else f.size(self._unit_count(a)) for a, f in enumerate(self.fields))

    def _unit_count(self, axis: int) -> int | None:
        """Units along ``axis``; an axis no tensor axis holds alone (folded into features, split
        over windows and rows, or collapsed) has exactly one, whose region is the union of all its
        positions: r is that unit's extent, not the largest over a period of units it does not
        have (NesT's blockified tokens read r=280 on a 224 input, region [0, 223]).  None: unknown."""
        n = self.units[axis]
        return n if n is not None or self.tensor_axes[axis] is not None else 1

    @property
    def S(self) -> tuple[Rational | None, ...]:
        """Effective stride per axis (eq. 10; a Fraction after upsampling; None where global)."""
        return tuple(None if f.is_global else f.stride for f in self.fields)

    @property
    def P(self) -> tuple[int | PBySize | None, ...]:
        """Effective padding per axis (eq. 9; None where global; at an unknown input size, a
        ``PBySize`` where it depends on the size: its value per residue of the size)."""
        by_size = self.P_at_unknown_size or (None,) * len(self.fields)
        return tuple(None if f.is_global else p or f.padding for f, p in zip(self.fields, by_size))

    @property
    def is_global(self) -> bool:
        """True when some axis is global for a reason other than gates (pooling, attention...)."""
        return any(f.is_global for f in self.fields)


    @property
    def shift_invariant(self) -> bool:
        """True when every path has one stride per axis, so r, S, P describe every unit."""
        return all(f.shift_invariant or f.is_global for f in self.fields)

    def region(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Input region ``[u0, v0]`` per axis of output unit ``index`` (eqs. 5-6; unclipped)."""
        index = self._check_index(index)
        return tuple(f.region(u) for f, u in zip(self.fields, index))

    def centre(self, index: Sequence[int]) -> tuple[Fraction, ...]:
        """Centre of the input region of output unit ``index`` per axis (eq. 11)."""
        index = self._check_index(index)
        return tuple(f.centre(u) for f, u in zip(self.fields, index))

    def field_centre(self, index: Sequence[int]) -> tuple[Fraction | None, ...]:
        """``centre(index)`` on local axes, None on global ones (a global field has no centre)."""
        index = self._check_index(index)
        return tuple(None if f.is_global else f.centre(u) for f, u in zip(self.fields, index))

    @property
    def global_at(self) -> str | None:
        """The node where the field became global (its first global axis's), None if local."""
        return next((f.global_at for f in self.fields if f.global_at is not None), None)

    def _check_index(self, index: Sequence[int]) -> tuple[int, ...]:
        self._check_size_known()
        index = tuple(int(i) for i in index)
        if len(index) != len(self.fields):
            raise RFGraphError(f"index {index} has {len(index)} coordinates; '{self.name}' has "
                               f"{len(self.fields)} spatial axes{self._as_spatial_hint(index)}")
        for u, n in zip(index, self.units):
            if not 0 <= u < (n if n is not None else 1):  # an axis no tensor axis indexes: one unit
                raise RFGraphError(f"index {index} is outside '{self.name}' (units per axis: "
                                   f"{tuple(1 if n is None else n for n in self.units)})")
        return index

    def _as_spatial_hint(self, index: tuple[int, ...]) -> str:
        """Where ``index`` reads as a tensor index (a flattened token axis: ``erf --unit``'s form),
        the same unit per spatial axis, as a hint."""
        try:
            spatial = self.spatial_index(index)
        except RFGraphError:
            return ""
        return (f": give one per axis, e.g. {','.join(map(str, spatial))} (unit {','.join(map(str, index))} "
                f"of its axes of positions)")

    def _check_size_known(self) -> None:
        """Units and their regions depend on the input size: refused at an unknown one."""
        if self.P_at_unknown_size:
            raise RFGraphError(f"'{self.name}': the input size is unknown, and the units of a tensor "
                               f"and their regions depend on it; set it with --input-shape")

    def tensor_index(self, index: Sequence[int]) -> tuple[int, ...]:
        """The unit ``index`` (one coordinate per input spatial axis) as one index per unit axis
        of the tensor (``unit_axes``): a flattened token axis takes the row-major token index."""
        index = self._check_index(index)
        return tuple(int(np.ravel_multi_index([index[a] for a in axes], [self.units[a] or 1 for a in axes]))
                     for _, axes in self.unit_axes)

    def repeat(self, k: int) -> int:
        """How many times the grid of unit axis ``k`` repeats along it (``repeats``)."""
        return self.repeats[k] if self.repeats else 1

    def spatial_index(self, tensor_index: Sequence[int]) -> tuple[int, ...]:
        """Inverse of ``tensor_index``: the unit at these indices of the unit axes (0 along axes
        no tensor axis indexes; on an axis whose grid repeats, the repeat's cell)."""
        if len(tensor_index) != len(self.unit_axes):
            raise RFGraphError(f"unit {tuple(tensor_index)} has {len(tensor_index)} coordinates; "
                               f"'{self.name}' has {len(self.unit_axes)} axes of positions")
        index = [0] * len(self.fields)
        for k, (u, (t, axes)) in enumerate(zip(tensor_index, self.unit_axes)):
            sizes = [self.units[a] or 1 for a in axes]
            length = math.prod(sizes) * self.repeat(k)
            if not 0 <= u < length:
                raise RFGraphError(f"unit {tuple(tensor_index)} is outside '{self.name}' (tensor axis "
                                   f"{t} has {length} positions)")
            for a, coord in zip(axes, np.unravel_index(int(u) % math.prod(sizes), sizes)):
                index[a] = int(coord)
        return tuple(index)

    def regions(self, axis: int) -> np.ndarray:
        """``[u0, v0]`` of every unit along one axis, shape (n, 2)."""
        self._check_size_known()
        n = self.units[axis] or 1
        f = self.fields[axis]
        return np.array([f.region(u) for u in range(n)], dtype=np.int64).reshape(n, 2)

    def boxes(self, clip_to: Sequence[int] | None = None) -> np.ndarray:
        """Input box of every output unit: array (*units, 2*ndim) = (u0 per axis..., v0 per axis...).

        For 2-D maps this is (y0, x0, y1, x1) per cell, inclusive; ``clip_to`` clips to an input size.
        """
        per_axis = [self.regions(a) for a in range(len(self.fields))]
        if clip_to is not None:
            per_axis = self._clipped(per_axis, clip_to)
        grids = np.meshgrid(*[np.arange(len(r)) for r in per_axis], indexing="ij")
        starts = [r[g, 0] for r, g in zip(per_axis, grids)]
        ends = [r[g, 1] for r, g in zip(per_axis, grids)]
        return np.stack(starts + ends, axis=-1)

    def reads_known(self, clip_to: Sequence[int]) -> bool:
        """Whether the input pixels each unit reads are known exactly at input size ``clip_to``
        (the analysis's exact regions): what a global field's unit shows, having no field box."""
        return (self.exact_clip is not None and all(n is not None for n in self.units)
                and self.exact_clip(clip_to) is not None)

    def clipped_region(self, index: Sequence[int], clip_to: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``region(index)`` clipped as ``boxes(clip_to)`` clips it: the input pixels the unit
        reads (first to last); empty (start past end) where it reads only zero padding."""
        index = self._check_index(index)
        exact = self.exact_clip(clip_to) if self.exact_clip is not None else None
        if exact is not None:
            at = [i if n is not None else 0 for i, n in zip(index, self.units)]
            return tuple((int(r[i, 0]), int(r[i, 1])) for r, i in zip(exact, at))
        return tuple((int(lo), int(hi)) for lo, hi in (clipped_regions(np.array([r]), n, c)[0] for r, n, c in
                                                       zip(self.region(index), clip_to, self._border_copies())))

    def _clipped(self, per_axis: list[np.ndarray], clip_to: Sequence[int]) -> list[np.ndarray]:
        """Each axis's regions clipped to the input: the pixels each unit reads, exactly where the
        analysis has them at this size (a crop before a zero-padded conv, a dilated kernel or a
        VALID conv's dropped tail leave pixels inside the arithmetic clip unread), else the
        regions cut to the input, widened by what reflect / edge pads copy into the border."""
        exact = self.exact_clip(clip_to) if self.exact_clip is not None else None
        if exact is not None:  # (one row per unit, as ``regions``: ``Analysis._exact_clip``)
            return exact
        return [clipped_regions(r, n, c) for r, n, c in zip(per_axis, clip_to, self._border_copies())]

    def _border_copies(self) -> tuple[tuple[BorderCopy, ...], ...]:
        """Per axis, the copying Pads on the paths into the tensor (none recorded: none)."""
        return self.copies or ((),) * len(self.fields)


@dataclass
class Analysis:
    """Receptive fields of every tensor of a model w.r.t. one input."""

    input_name: str
    input_shape: tuple[int, ...]  # None along the spatial axes at an unknown size (unknown_size)
    spatial_axes: tuple[int, ...]  # tensor axes of the input that are spatial
    axis_names: tuple[str, ...]
    endpoints: dict[str, EndPoint]
    outputs: list[str]
    merges: list[Merge]
    stops: list[Stop]
    global_at: dict[str, str]  # node -> why it mixes all positions
    graph: ModelGraph = field(repr=False)
    _pass: PassResult = field(repr=False)
    rule_notes: dict[str, str] = field(default_factory=dict)  # node -> declared/assumed rule used
    layout: str = ""  # the input's layout as --layout spells it (NCHW, NHWC, NL...)
    layout_reason: str = ""  # why that layout: given, a leading Transpose, a Conv, the shape
    options: ModelOptions = field(default_factory=ModelOptions, repr=False)  # how the model was read
    unknown_size: UnknownSize | None = None  # analysed without a size: how (periods, sizes used)
    # how the file was read: declared shapes dropped (inference contradicts them), Convs read as
    # dilated (space_to_batch)
    shape_notes: list[str] = field(default_factory=list)
    pieces: Pieces = field(default_factory=dict)  # an output cut into the grids a Concat joined: its pieces

    def __post_init__(self) -> None:
        for name, ep in self.endpoints.items():  # boxes clipped to the input read the exact regions
            object.__setattr__(ep, "exact_clip", functools.partial(self._exact_clip, name))

    def _exact_clip(self, name: str, clip_to: Sequence[int]) -> list[np.ndarray] | None:
        """Per axis, (n, 2) [lo, hi] of every unit of ``name`` from the exact regions, when
        ``clip_to`` is the analysed input size and they exist; else None."""
        if tuple(clip_to) != tuple(self.input_shape[a] for a in self.spatial_axes):
            return None
        exact = self.exact_regions.get(name)
        if exact is None:
            return None
        ep = self.endpoints[name]
        per_axis = [r if n is not None else r.as_one_unit() for r, n in zip(exact, ep.units)]
        if any((n or 1) % r.n for r, n in zip(per_axis, ep.units)):  # units of another layout
            return None
        # a fine axis (K elements a unit: rows put back, a nearest upsampling by Tile): the regions
        # sweep counts its units, each of whose elements reads what the unit reads
        return [np.repeat(np.stack([r.lo, r.hi], axis=1), (n or 1) // r.n, axis=0)
                for r, n in zip(per_axis, ep.units)]

    @functools.cached_property
    def exact_regions(self) -> dict[str, tuple[AxisRegions, ...]]:
        """Every tensor's clipped regions, per unit the input pixels it reads (with holes filled:
        ``diagnostics.regions.exact_regions``), computed once, when first asked ({} if they
        cannot be, as at an unknown input size)."""
        from .diagnostics.regions import exact_regions

        if any(self.input_shape[a] is None for a in self.spatial_axes):  # an unknown input size
            return {}
        try:
            return exact_regions(self)
        except (RFGraphError, ValueError, KeyError):  # a tensor without them keeps its TRF interval
            return {}

    def global_reach(self, name: str) -> tuple[tuple[int, int] | None, ...]:
        """Per axis where the field of ``name`` is global: the input pixels [first, last] its
        units all see, the union of the fields of the positions it mixed (exact clipped regions:
        a stride-2 VALID stem at an even size never reads the last pixel, so a global pool after
        it does not either); the whole axis where they cannot be computed; None on local axes."""
        exact = self.exact_regions.get(name)
        out: list[tuple[int, int] | None] = []
        for axis, f in enumerate(self[name].fields):
            size = int(self.input_shape[self.spatial_axes[axis]] or 0)
            if not f.is_global:
                out.append(None)
            elif exact is None or not (~exact[axis].empty).any():
                out.append((0, size - 1))
            else:
                seen = exact[axis].as_one_unit()
                out.append((max(int(seen.lo[0]), 0), min(int(seen.hi[0]), size - 1)))
        return tuple(out)

    def __getitem__(self, name: str) -> EndPoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise RFGraphError(self._missing(name)) from None

    def __contains__(self, name: str) -> bool:
        return name in self.endpoints

    def in_piece(self, name: str, indices: Sequence[Sequence[int]]) -> tuple[str, list[tuple[int, ...]]]:
        """Units of an output cut into pieces (``pieces``), each given as one index along the axis
        cut, as the piece holding them and their units there (one index per spatial axis)."""
        piece, found = one_piece(name, self.pieces[name], indices)
        return piece.name, [self[piece.name].spatial_index((k,)) for k in found]

    def _missing(self, name: str) -> str:
        if name in self.pieces:
            return cut_text(name, self.pieces[name])
        if name in self.graph.producer or name in self.graph.initializers:
            return f"tensor '{name}' was not analysed (it does not depend on the input, or lies after a stop)"
        return f"no tensor named '{name}' in the model"

    @property
    def aligned(self) -> bool:
        """True when every merge satisfies conditions (12)-(13)."""
        return all(m.aligned for m in self.merges)

    @property
    def gates(self) -> dict[str, Gate]:
        """Gate node -> the gate (its operand, constant over positions, and the node that pooled
        it): held constant for the local fields of the tensors after it (``EndPoint.gates``)."""
        return self._pass.gates

    @property
    def bounds(self) -> dict[str, str]:
        """Node -> why the fields after it are upper bounds (``EndPoint.bound_at``)."""
        return self._pass.bounds

    @property
    def node_order(self) -> list[int]:
        """Indices of the analysed nodes, in the order the pass visited them (topological)."""
        return list(self._pass.order)

    def output_transfers(self) -> Iterator[tuple[int, str, OutTransfer]]:
        """(node index, output tensor, its transfer) of every analysed node output, in topological
        order: what the diagnostics and the path counts sweep over."""
        return output_transfers(self.graph, self._pass)

    def node_transfers(self) -> Iterator[tuple[int, Transfer]]:
        """(node index, the transfer its rule gave) of every analysed node, in topological order."""
        return ((idx, self._pass.transfers[idx]) for idx in self._pass.order if idx in self._pass.transfers)

    def transfer(self, idx: int) -> Transfer:
        """The transfer the rule of node ``idx`` gave (KeyError when the node was not analysed)."""
        return self._pass.transfers[idx]

    def local_edges(self, node: str, edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
        """A node's edges without its gate operand (held constant for the local fields)."""
        return self._pass.local_edges(node, edges)

    @property
    def misaligned(self) -> list[Merge]:
        return [m for m in self.merges if not m.aligned]

    def default_endpoints(self) -> list[str]:
        """Graph outputs reached, plus the last local feature map feeding each op that mixes
        positions or where the analysis stopped (every input of it: each head of a detector whose
        heads meet in a stopping Concat), stepping back through Flatten/Reshape/Transpose to a
        tensor with a grid, and from there to the block input it relabels (``_block_input``: an
        attention's q, k and v are one row, its input)."""
        names = [o for o in self.outputs if o in self.endpoints]
        gating = self.gating_nodes()  # a gate's pooling is no end of the local field
        mixers = [idx for idx, transfer in self._pass.transfers.items()
                  if transfer.mix_reason and idx not in gating]
        index = {name: i for i, name in enumerate(self.graph.names)}
        stopped = [index[s.node] for s in self.stops if s.node in index]
        for idx in mixers + stopped:
            for tensor in self.graph.nodes[idx].input:
                feature_map = self._last_grid(tensor)
                if feature_map is not None:
                    feature_map = self._block_input(feature_map)
                if feature_map is not None and feature_map not in names:
                    names.append(feature_map)
        order = list(self.endpoints)
        return sorted(names, key=order.index)

    def gating_nodes(self) -> set[int]:
        """Nodes computed only to feed gate operands (an SE block's poolings and MLP): every use
        of their outputs is a gate's operand or another such node, and none is a graph output."""
        if not self.gates:
            return set()
        mg = self.graph
        uses: dict[str, list[tuple[int, int]]] = {}
        for i, ins in enumerate(mg.node_inputs):
            for slot, t in enumerate(ins):
                uses.setdefault(t, []).append((i, slot))
        gate_slot = {g.node: g.slot for g in self.gates.values()}
        outputs, only = set(mg.outputs), set[int]()
        for idx in reversed(self._pass.order):
            outs = [t for t in mg.node_outputs[idx] if t]
            used = [u for t in outs for u in uses.get(t, ())]
            if used and not outputs.intersection(outs) and all(
                    j in only or gate_slot.get(mg.names[j]) == slot for j, slot in used):
                only.add(idx)
        return only

    def _last_grid(self, tensor: str, steps: int = 16) -> str | None:
        """The nearest tensor at or before ``tensor`` that is local and indexed by spatial axes:
        the nearest plain grid (each axis of positions a tensor axis of its own), else the nearest
        with some axis of positions (tokens; a window partition's grid of windows)."""
        some = None
        for _ in range(steps):
            ep = self.endpoints.get(tensor)
            if ep is None or ep.is_global:
                break
            producer = self.graph.producer.get(tensor)
            inner = producer is not None and writes_inner_tensor(self.graph.nodes[producer])
            if not inner and all(t is not None for t in ep.tensor_axes) and all(ep.units):
                return tensor
            if some is None and not inner and any(ep.units):
                some = tensor
            if producer is None:
                break
            tensor = next((t for t in self.graph.nodes[producer].input if t in self.endpoints), "")
        return some

    def _block_input(self, tensor: str, steps: int = 16) -> str:
        """The earliest grid tensor before ``tensor`` with the very same fields, through ops of
        one analysed input that only relabel or project each position (``RELABELLING_OPS``: an
        attention's q, k and v come from its input by a projection, a head split and a scaling);
        a merge (a residual Add) or any other op ends the walk."""
        for _ in range(steps):
            producer = self.graph.producer.get(tensor)
            if producer is None or self.graph.op_types[producer] not in RELABELLING_OPS:
                return tensor
            gate = self.gates.get(self.graph.names[producer])
            ins = [t for t in self.graph.nodes[producer].input
                   if t in self.endpoints and (gate is None or t != gate.tensor)]
            if len(ins) != 1 or not any(self.endpoints[ins[0]].units) \
                    or not _same_spans(self.endpoints[ins[0]].fields, self.endpoints[tensor].fields):
                return tensor
            tensor = ins[0]
        return tensor

    def fields_toward(self, target: str) -> dict[str, tuple[AxisField, ...]]:
        """The paper's reverse pass: the field of one unit of ``target`` on every tensor before it."""
        self[target]
        if self.unknown_size is not None:  # the paddings in between may depend on the size
            from .unknown_size import require_size
            require_size(self, "the reverse pass")
        return reverse_pass(self.graph, self._pass, target)


def analyze(model: ModelSource, input_shape: Mapping[str, Sequence[int]] | None = None,
            input_name: str | None = None, layout: str | None = None, *,
            rules: custom_ops.RuleSet | str | Path | Sequence[str | Path] | None = None,
            assume_pointwise: bool | None = None, on_stage: Callable[[str], None] | None = None,
            fill: Mapping[str, float] | None = None, options: ModelOptions | None = None) -> Analysis:
    """Receptive fields of every tensor of an ONNX model (path, bytes or ModelProto), read as
    ``options`` say (``ModelOptions``: input shapes, input, layout, rules, assume-pointwise, fill).

    The keywords ``input_shape`` ({"x": (1, 3, 224, 224)}; name "" means the first input),
    ``input_name``, ``layout``, ``rules``, ``assume_pointwise`` and ``fill`` set the fields of the
    same meaning (``input_shape`` is ``input_shapes``), over ``options`` when both are given.
    Declared and assumed rules are listed in ``rule_notes``, and so is every If replaced by its
    branch (its condition known from the fixed shapes or the ``fill`` values).
    ``on_stage`` is called with the name of each stage as it starts (``STAGES``; progress display).
    """
    opts = model_options(options, input_shapes=input_shape, input_name=input_name, layout=layout,
                         rules=rules, assume_pointwise=assume_pointwise, fill=fill)
    table = RuleTable.build(opts.rules, opts.assume_pointwise)
    analysis = _analyze(model, opts, on_stage or (lambda _: None), table)
    analysis.options = opts
    analysis.rule_notes.update(table.notes)
    analysis.rule_notes.update({node: f"If replaced by its {which}: its condition is known once the "
                                      f"model is loaded (fixed input shapes, --fill values)"
                                for node, which in inlined_ifs(analysis.graph.model).items()})
    analysis.shape_notes = contradiction_notes(analysis.graph.model) + space_to_batch_notes(analysis.graph.model)
    return analysis


# What ``analyze`` does, in order (reported through ``on_stage``)
STAGES = ("loading and inferring shapes", "building the graph", "receptive-field pass", "end points")


def _analyze(model: ModelSource, opts: ModelOptions, on_stage: Callable[[str], None],
             table: RuleTable | None = None) -> Analysis:
    """``analyze`` with its rule table (default: the standard rules and register_op's)."""
    table = table or RuleTable.build()
    layout = opts.layout
    on_stage(STAGES[0])
    proto = custom_ops.declare_shapes(_load_at_size(model, opts), table.find)
    on_stage(STAGES[1])
    mg = build_graph(proto)
    name = _pick_input(mg, opts.input_name, layout)
    shape = mg.shapes.get(name)
    if shape is None or len(shape) < 2:
        raise DynamicShapeError(f"input '{name}' has no known rank >= 3; set it with --input-shape")
    spatial, layout_reason = _layout_choice(mg, name, shape, layout)
    if any(shape[a] is None for a in spatial):  # r, S at any size; P per residue of the size
        from .unknown_size import analyze_unknown_size

        return analyze_unknown_size(
            lambda at: _analyze(model, opts.merged(input_shapes={**opts.input_shapes, **at}, input_name=name),
                                lambda _: None, table),
            model, name, shape, spatial, opts.input_shapes or None, opts.fill or None)
    in_layout = _input_layout(shape, spatial)
    on_stage(STAGES[2])
    try:
        result = forward_pass(mg, name, in_layout, table)
    except InvalidAttributeError as exc:  # on shapes left unknown by a node that fails before it?
        failure = upstream_shape_failure(proto)
        if failure is None or f"node '{failure.node}'" in str(exc):
            raise
        raise failure from None
    if result.stops and (failure := upstream_shape_failure(proto)) is not None:
        raise failure  # a stop for want of shapes the model cannot have at this size
    cut = split_pieces(mg, result, table) if result.global_at else None
    if cut is not None:  # a detection head's Concat of grids: each output analysed piece by piece
        mg = build_graph(cut[0])
        result = forward_pass(mg, name, in_layout, table)
    on_stage(STAGES[3])
    result.stops = [_with_condition_hint(mg, stop, name) for stop in result.stops]
    endpoints = _endpoints(mg, result, name)
    axis_names = AXIS_NAMES.get(len(spatial), tuple(f"A{i}" for i in range(len(spatial))))
    return Analysis(name, tuple(shape), tuple(spatial), axis_names,
                    endpoints, mg.outputs, result.merges, result.stops, result.global_at, mg, result,
                    layout=layout_text(spatial, axis_names, len(shape)), layout_reason=layout_reason,
                    pieces=cut[1] if cut is not None else {})


def validate_input_size(model: ModelSource, input_shape: Mapping[str, Sequence[int]],
                        input_name: str | None = None, layout: str | None = None,
                        fill: Mapping[str, float] | None = None) -> str | None:
    """Whether the model can run at this input size: None when it can, else the reason (the node
    where a map vanishes and the smallest size that works, or the node that cannot take the size).
    Other problems of the model (unreadable, unsupported ops) raise as ``analyze`` does."""
    try:
        _load_at_size(model, ModelOptions(input_shape, input_name, layout, fill=fill or {}))
    except InputSizeError as exc:
        return str(exc)
    return None


def _load_at_size(model: ModelSource, opts: ModelOptions) -> onnx.ModelProto:
    """``load_model``, naming the smallest input size that works when a map vanishes."""
    try:
        return load_model(model, opts.input_shapes or None, opts.fill or None)
    except InputSizeError as exc:
        if not exc.vanished:
            raise
        found = _smallest_size(model, opts)
        hint = f"; the smallest input size that leaves every map a unit is {found}" if found else \
            "; no input size up to the search limit leaves every map a unit"
        raise InputSizeError(f"{exc}{hint}", exc.node, exc.op, vanished=True) from None


def _smallest_size(model: ModelSource, opts: ModelOptions) -> str | None:
    """The smallest valid size of the analysed input along its spatial axes, as NAME:1x3x61x61."""
    base = shapes_only(read_model(model))
    at_size = shapes_only(base)
    forget_stored_shapes(at_size)
    set_input_shapes(at_size, opts.input_shapes)
    mg = build_graph(at_size)  # structure and input shapes only: which input, which axes
    name = _pick_input(mg, opts.input_name, opts.layout)
    shape = mg.shapes.get(name)
    if shape is None or None in shape:
        return None
    spatial = _layout_choice(mg, name, shape, opts.layout)[0]  # the layout the analysis reads it with
    found = smallest_input_size(base, name, tuple(int(d) for d in shape), spatial, opts.fill or None)
    return f"{name}:{'x'.join(map(str, found))}" if found else None


def _with_condition_hint(mg: ModelGraph, stop: Stop, analysed: str) -> Stop:
    """An If whose condition comes from other model inputs only: its stop names them and --fill,
    which makes the condition known, so that the branch taken is analysed
    (``onnx_import.inlined_ifs``); one computed from the analysed input says so."""
    if stop.op != "If" or stop.node not in mg.names:
        return stop
    inputs = _source_inputs(mg, mg.node_inputs[mg.names.index(stop.node)][0])
    if analysed in inputs:
        return replace(stop, reason=f"{stop.reason}; its condition is computed from '{analysed}', the "
                                    f"input analysed: the branch taken depends on it")
    if not inputs:
        return stop
    fills = " ".join(f"--fill {name}=VALUE" for name in sorted(inputs))
    return replace(stop, reason=f"{stop.reason}; its condition comes from input(s) {', '.join(sorted(inputs))}: "
                                f"give them values ({fills}) and the branch taken is analysed")


def _source_inputs(mg: ModelGraph, tensor: str) -> set[str]:
    """The model inputs ``tensor`` is computed from (itself when it is one)."""
    producer = mg.producer.get(tensor)
    if producer is None:
        return {tensor} & set(mg.inputs)
    nodes = nx.ancestors(mg.dag, producer) | {producer}
    return {t for i in nodes for t in mg.node_inputs[i] if t in mg.inputs}


def _pick_input(mg: ModelGraph, requested: str | None, layout: str | None = None) -> str:
    """The input the fields refer to: the requested one, else among those whose rank fits the
    given layout (else rank >= 3) the first a convolution or pool reads, else a batch of 1-D
    signals (N, L) read by a Conv1d, else the first that fits: a recurrent state (N, 1, 128) read
    by an LSTM beside the audio it runs on is not the model's signal."""
    if requested:
        if requested not in mg.inputs:
            raise RFGraphError(f"the model has no input '{requested}' (inputs: {', '.join(mg.inputs)})")
        return requested
    ranks = {i: len(mg.shapes.get(i) or ()) for i in mg.inputs}
    fits = [i for i, r in ranks.items() if (r == len(layout) if layout else r >= 3)]
    convolved = [i for i in fits if _channels_first_reader(mg, i)]
    if convolved:
        return convolved[0]
    signals = [i for i, r in ranks.items() if r == 2 and not layout and _channels_first_reader(mg, i)]
    if signals:  # (N, L) given a channel axis and read by a Conv1d: a batch of 1-D signals
        return signals[0]
    if fits:
        return fits[0]
    if layout:
        shown = ", ".join(f"{i} (rank {r})" for i, r in ranks.items())
        raise RFGraphError(f"layout '{layout}' has {len(layout)} axes but no input has that rank: {shown}")
    hint = "fix the shape with --input-shape NAME:1x3x224x224"
    if any(r == 2 for r in ranks.values()):
        hint = "for a batch of 1-D signals of shape (N, L) pass --layout NL (and --input NAME)"
    raise DynamicShapeError(f"no input with spatial axes (rank >= 3) among {mg.inputs}; {hint}")


def _spatial_axes(mg: ModelGraph, name: str, rank: int, layout: str | None) -> list[int]:
    """Spatial tensor axes of the input: from ``layout``, a leading Transpose, or N, C, spatial..."""
    if layout:
        layout = layout.upper()
        if len(layout) != rank or "N" not in layout or not any(c not in "NC" for c in layout):
            raise RFGraphError(f"layout '{layout}' does not describe a rank-{rank} input "
                               f"(e.g. NCHW, NHWC, NCL, or NL for a batch of 1-D signals)")
        return [i for i, c in enumerate(layout) if c not in "NC"]
    perm = _leading_transpose(mg, name)
    if perm is not None and len(perm) == rank:
        return list(perm[2:])
    return list(range(2, rank))


CHANNEL_COUNTS = {1, 2, 3, 4}  # sizes of a channel axis of images and spectrograms (mono..RGBA)


def _layout_choice(mg: ModelGraph, name: str, shape: Sequence[int | None],
                   layout: str | None) -> tuple[list[int], str]:
    """Spatial axes of the input and why: ``layout``, a leading Transpose, a channels-first op
    reading the input (its axes followed through Unsqueeze, Reshape adding 1s and Transpose: those
    landing on the op's spatial axes), a norm or a recurrence reading its last axis as features
    (N, L, C), the shape (axis 1, else the last, with 1-4 entries is the channel axis), a MatMul
    reading the last axis as features, else N, C, L for rank 3; raises when a rank >= 4 shape leaves it a coin
    toss, and for an (N, L) input names --layout NL."""
    rank = len(shape)
    axes = _spatial_axes(mg, name, rank, layout)
    if layout:
        return axes, "given by --layout"
    if axes != list(range(2, rank)):
        return axes, f"the input feeds a Transpose with perm {_leading_transpose(mg, name)}"
    reader = _channels_first_reader(mg, name)
    if reader is not None and reader[0] == axes:
        return axes, f"the input is read by {reader[1]}, whose ONNX layout is N, C, spatial..."
    if reader is not None:  # its axes moved on the way: those landing on the op's spatial axes
        return reader[0], f"the input reaches {reader[1]} with its axes {_axes_text(reader[0])} as positions"
    features = _features_last_reader(mg, name)
    if features is not None and features[1]:  # a norm or a recurrence: surer than the shape
        return list(range(1, rank - 1)), f"the input is read by {features[0]}, over its last axis (features)"
    first, last = shape[1] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first or last:
        c, other = (1, rank - 1) if first else (rank - 1, 1)
        verdict = "could too; ONNX's order first" if first and last else "does not"
        why = (f"guessed from the shape: axis {c} ({shape[c]}) looks like channels, axis {other} "
               f"({shape[other]}) {verdict}; --layout overrides")
        return [a for a in range(1, rank) if a != c], why
    if features is not None:  # (N, T, D) tokens or frames through a projection (weaker than the shape)
        return list(range(1, rank - 1)), f"the input is read by {features[0]}, over its last axis (features)"
    if rank == 3:
        return axes, "assumed N, C, L (ONNX's order; the shape does not tell); --layout overrides"
    if rank == 2:
        raise RFGraphError(f"cannot tell the layout of input '{name}' {['?' if d is None else d for d in shape]}: "
                           f"for a batch of 1-D signals (N, L) pass --layout NL")
    raise RFGraphError(
        f"cannot tell the layout of input '{name}' {['?' if d is None else d for d in shape]}: no "
        f"Conv or Transpose reads it, and neither axis 1 nor the last axis is channel-like (1-4 "
        f"entries); give it with --layout, e.g. --layout {_layout_letters(rank, True)} (channels "
        f"first) or --layout {_layout_letters(rank, False)} (channels last)")


def _layout_letters(rank: int, channels_first: bool) -> str:
    """NCHW / NHWC-style text for a rank (N, C and the axis names of AXIS_NAMES)."""
    spatial = "".join(AXIS_NAMES.get(rank - 2, ("A",) * (rank - 2)))
    return "NC" + spatial if channels_first else "N" + spatial + "C"


def layout_text(spatial: Sequence[int], axis_names: Sequence[str], rank: int) -> str:
    """The layout as ``--layout`` spells it: N at axis 0, C at the other non-spatial axes."""
    where = dict(zip(spatial, axis_names))
    return "".join("N" if t == 0 else where.get(t, "C") for t in range(rank))


def _features_last_reader(mg: ModelGraph, name: str, steps: int = 16) -> tuple[str, bool] | None:
    """("MatMul 'm'", sure): an op reading the input's last axis as features (a LayerNormalization
    over it or a recurrence, whose X is [T, N, F] or [N, T, F]: sure; a MatMul with a constant
    right operand: not sure, a dense layer may read positions, unless a sure one reads its output),
    through ops keeping its axes or its last axis last (a Transpose to time-major); else None."""
    frontier, seen, projection = [name], 0, None
    while frontier and seen < steps:  # breadth first: the nearest reader
        tensor = frontier.pop(0)
        seen += 1
        for i, node in enumerate(mg.nodes):
            if tensor not in node.input:
                continue
            first = node.input[0] == tensor  # (an elementwise op may take it at any input)
            attrs = attributes(node)
            rank = len(mg.shapes.get(tensor) or ())
            if first and ((node.op_type == "LayerNormalization" and attrs.get("axis", -1) in (-1, rank - 1))
                          or node.op_type in ("LSTM", "GRU", "RNN")):
                reader = f"{node.op_type} '{mg.names[i]}'"
                return (f"{projection}, then {reader}" if projection else reader), True
            perm = list(attrs.get("perm") or [])
            keeps_last = node.op_type == "Transpose" and bool(perm) and perm[-1] == len(perm) - 1
            projects = first and node.op_type == "MatMul" and mg.constant(node.input[1]) is not None
            before, after = mg.shapes.get(tensor) or (), mg.shapes.get(node.output[0]) or ()
            keeps_last = keeps_last or (first and node.op_type == "Reshape" and bool(before) and bool(after)
                                        and before[-1] == after[-1])  # (N, T, D) -> (N*T, D): Keras' Dense
            if projects and projection is None:  # its output's last axis is features too
                projection = f"{node.op_type} '{mg.names[i]}'"
            if node.op_type in LAYOUT_PASSTHROUGH - {"Unsqueeze", "Pad"} or keeps_last or projects:
                frontier.extend(node.output[:1])
    return (projection, False) if projection else None


def _channels_first_reader(mg: ModelGraph, name: str, steps: int = 12) -> tuple[list[int], str] | None:
    """(spatial axes of the input, "Conv 'c'" or "Unsqueeze 'u', Transpose 't', then Conv 'c'"):
    a channels-first op reading the input, reached through ops that keep each value (elementwise
    ops, Pad), insert axes (Unsqueeze, a Reshape adding 1s) or move them (Transpose); its axes 2..
    are positions, so are the input axes that land there (a Keras Conv1D: Unsqueeze, Transpose,
    Conv2D; a spectrogram (N, T, F) unsqueezed into a Conv2d), and an axis that takes the batch's
    place (a video's frames (1, T, C, H, W) reshaped to (T, C, H, W): each frame its own image).
    None when another op comes first (a global pool reading the input is no evidence: tf2onnx
    writes a LayerNorm's mean so)."""
    rank = len(mg.shapes.get(name) or ())
    frontier: list[tuple[str, list[int], list[str]]] = [(name, list(range(rank)), [])]
    seen = 0
    while frontier and seen < steps:
        tensor, where, path = frontier.pop(0)
        seen += 1
        for i, node in enumerate(mg.nodes):
            if tensor not in node.input:
                continue
            label = f"{node.op_type} '{mg.names[i]}'"
            if node.op_type in CHANNELS_FIRST_OPS - GLOBAL_POOLS and node.input[0] == tensor:
                folded = where[0] == -1 and 0 in where[1:]  # frames folded into the batch (TimeSformer)
                spatial = [a for a in range(1, rank) if where[a] >= 2 or (folded and where[a] == 0)]
                return (spatial, ", then ".join([*path, label])) if (where[0] == 0 or folded) and spatial else None
            moved = _moved_axes(mg, node, tensor, where)
            if moved is not None and len(path) < 4:
                frontier.append((node.output[0], moved, path + [label] if moved != where else path))
    return None


def _axes_text(axes: Sequence[int]) -> str:
    return ", ".join(map(str, axes))


def _moved_axes(mg: ModelGraph, node: onnx.NodeProto, tensor: str, where: list[int]) -> list[int] | None:
    """Where the input's axes are in ``node``'s output (``where``: in ``tensor``), for ops that keep
    each value in place (elementwise, Pad), insert axes (Unsqueeze; a Reshape adding 1s) or move
    them (Transpose); None for any other op."""
    if node.op_type in LAYOUT_PASSTHROUGH - {"Unsqueeze"}:
        return where
    if node.op_type == "Transpose" and node.input[0] == tensor:
        perm = attributes(node).get("perm")
        if perm is None or sorted(perm) != list(range(len(perm))) or max(where, default=0) >= len(perm):
            return None  # (a malformed perm: no evidence)
        return [perm.index(w) if w >= 0 else -1 for w in where]
    before, after = mg.shapes.get(tensor), mg.shapes.get(node.output[0])
    if node.op_type not in ("Unsqueeze", "Squeeze", "Reshape") or node.input[0] != tensor \
            or before is None or after is None:
        return None
    moved = _moved_ones(tuple(before), tuple(after))
    return None if moved is None else [moved[w] if w >= 0 else -1 for w in where]


def _moved_ones(before: tuple, after: tuple) -> list[int] | None:
    """For each axis of ``before``, its axis in ``after`` (-1: gone), when the reshape only adds,
    drops or moves axes of size 1 (the other sizes in the same order; the batch stays first);
    None for any other reshape."""
    big_before = [i for i, d in enumerate(before) if d != 1]
    big_after = [i for i, d in enumerate(after) if d != 1]
    if [before[i] for i in big_before] != [after[i] for i in big_after]:
        return None
    ones = iter(i for i, d in enumerate(after) if d == 1 and i != 0)
    return [big_after[big_before.index(i)] if d != 1 else 0 if i == 0 and after[:1] == (1,) else next(ones, -1)
            for i, d in enumerate(before)]


def _leading_transpose(mg: ModelGraph, name: str) -> list[int] | None:
    """Perm of a Transpose reached from the input through elementwise pre-processing (NHWC models)."""
    tensor, steps = name, 0
    while steps < 6:
        users = [i for i, n in enumerate(mg.nodes) if tensor in n.input]
        if len(users) != 1:
            return None
        node = mg.nodes[users[0]]
        if node.op_type == "Transpose":
            for a in node.attribute:
                if a.name == "perm":
                    return list(a.ints)
            return None
        if node.op_type not in LAYOUT_PASSTHROUGH:
            return None
        tensor, steps = node.output[0], steps + 1
    return None


# ops that move or project each position's features without reading other positions (the
# path from an attention block's input to its q, k and v); a nonlinearity ends a feature map
RELABELLING_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "Flatten",
                   "Identity", "Cast", "MatMul", "Gemm", "Mul", "Div", "Add", "Sub", "LayerNormalization",
                   "BatchNormalization"}


def _same_spans(a: Sequence[AxisField], b: Sequence[AxisField]) -> bool:
    """The same field along every axis, gates aside (a gate, as XCA's L2 norm, relabels too)."""
    return len(a) == len(b) and all(f.spans == g.spans and f.global_at == g.global_at for f, g in zip(a, b))


def _input_layout(shape: Sequence[int | None], spatial: Sequence[int]) -> Layout:
    """Layout of the input tensor: spatial axis j at tensor axis spatial[j]."""
    index = {t: j for j, t in enumerate(spatial)}
    return tuple(((index.get(t, -1), d or 0),) for t, d in enumerate(shape))


def _endpoints(mg: ModelGraph, result: PassResult, input_name: str) -> dict[str, EndPoint]:
    """One EndPoint per analysed tensor, input first, then in topological order."""
    rank = {g: i for i, g in enumerate(mg.names) if g in result.gates}  # gates in graph order
    eps = {input_name: _endpoint(mg, input_name, "", "Input", result.states[input_name], rank)}
    copies: dict[str, tuple[frozenset[BorderCopy], ...]] = {}
    for idx in result.order:
        if idx not in result.transfers:
            continue
        node = mg.nodes[idx]
        for k, out in enumerate(node.output):
            state = result.states.get(out)
            if state is not None:
                eps[out] = _endpoint(mg, out, mg.names[idx], expanded_from(node) or node.op_type, state, rank)
                copies[out] = _copies_into(mg, result, idx, k, eps, copies)
                if any(copies[out]):
                    eps[out] = dataclasses.replace(eps[out], copies=tuple(
                        tuple(sorted(c, key=lambda b: b.order)) for c in copies[out]))
    return eps


def _copies_into(mg: ModelGraph, result: PassResult, idx: int, k: int, eps: Mapping[str, EndPoint],
                 known: Mapping[str, tuple[frozenset[BorderCopy], ...]]) -> tuple[frozenset[BorderCopy], ...]:
    """Per input spatial axis, the border-copying Pads on the paths into output ``k`` of node
    ``idx``: those of its data inputs, and the node itself when it is one."""
    out = result.transfers[idx].outputs[k] if k < len(result.transfers[idx].outputs) else None
    n_axes = len(eps[mg.node_outputs[idx][k]].fields)
    sets: list[frozenset[BorderCopy]] = [frozenset()] * n_axes
    if out is None:
        return tuple(sets)
    for e in out.edges:
        for a, c in enumerate(known.get(mg.node_inputs[idx][e.slot], ())):
            sets[a] = sets[a] | c
    copying = copying_node(mg, idx)
    if copying is not None and len(out.edges) == 1 and out.edges[0].slot == copying[1]:
        mode, slot = ("edge" if copying[0] == "clamp" else copying[0]), copying[1]  # a clamp copies as edge
        source, target = eps[mg.node_inputs[idx][slot]], eps[mg.node_outputs[idx][k]]
        field_in = result.states[mg.node_inputs[idx][slot]].fields
        for a in range(n_axes):
            span, n_in, n_out = out.edges[0].span(a), source.units[a], target.units[a]
            if span is None or n_in is None or n_out is None:
                continue
            begin, end = -span.lo_of(0), span.hi_of(n_out - 1) - (n_in - 1)  # units read past each side
            copy = border_copy(mg.names[idx], idx, mode, field_in[a], n_in, begin, end)
            if copy is not None:
                sets[a] = sets[a] | {copy}
    return tuple(sets)


def _endpoint(mg: ModelGraph, name: str, node: str, op: str, state: TensorState,
              gate_rank: Mapping[str, int]) -> EndPoint:
    """Build an EndPoint, finding how many units the tensor has along each spatial axis."""
    axes = carried(state.layout)
    units, folded, unit_axes, fine, repeats = _unit_layout(state.layout, len(state.fields))
    tensor_axes = tuple(axes.get(a, fine[a][0] if a in fine else None) for a in range(len(state.fields)))
    fields = tuple(compose(Span.layer(folded[a], 1, 0), f) if a in folded else
                   compose(coarsening(fine[a][1]), f) if a in fine else f
                   for a, f in enumerate(state.fields))
    gates = sorted(merged_gates(f for f in state.fields if not f.is_global), key=gate_rank.__getitem__)
    return EndPoint(name, node, op, tuple(mg.shapes.get(name) or ()), fields, units,
                    tensor_axes, state.size_dependent, state.misaligned, unit_axes, tuple(gates),
                    bound_at=state.bound, repeats=repeats if any(n > 1 for n in repeats) else ())


def _unit_layout(layout: Layout, n_axes: int) -> tuple[tuple[int | None, ...], dict[int, int],
                                                       tuple[tuple[int, tuple[int, ...]], ...],
                                                       dict[int, tuple[int, int]], tuple[int, ...]]:
    """Units per input spatial axis, the axes folded into features, the unit axes, the fine
    axes (spatial axis -> its tensor axis and K), and per unit axis how often its grid repeats.

    An axis indexed by a tensor axis of its own, or jointly with other spatial axes only (a
    flattened grid: ViT tokens), has one unit per position, and that tensor axis is a unit axis;
    a fine axis (``fine_axis``: K elements a position) has one unit per element.
    An axis merged with features (H folded into the channels by a Reshape, as a CRNN does) is no
    unit axis: every unit holds all of its n positions and sees their union (the pass keeps the
    per-position field, which later ops need), but on the one axis holding every position,
    features only outside them (a YOLOv5 head's anchors, token = anchor * H * W + cell) repeat
    the grid: each element is one of its units.  Axes the layout no longer holds (collapsed to
    one position) have one unit (None)."""
    units: list[int | None] = [None] * n_axes
    folded: dict[int, int] = {}
    unit_axes: list[tuple[int, tuple[int, ...]]] = []
    fines: dict[int, tuple[int, int]] = {}
    repeats: dict[int, int] = {}
    split = _split_axes(layout)
    for t, parts in enumerate(layout):
        spatial = [(a, n) for a, n in parts if a >= 0]
        if not spatial:
            continue
        fine = fine_axis(layout, t)
        if fine is not None and fine[0] not in split:  # K elements a position: each a unit
            units[fine[0]] = math.prod(n for _, n in parts)
            unit_axes.append((t, (fine[0],)))
            fines[fine[0]] = (t, fine[1])
            continue
        outer = _outer_features(parts)
        if outer > 1 and not any(a in split for a, _ in spatial) and \
                not any(a >= 0 for u, other in enumerate(layout) if u != t for a, _ in other):
            repeats[t] = outer  # the whole grid on one axis, once per anchor (not a CRNN's H in its features)
        elif any(a < 0 and n != 1 for a, n in parts) or any(a in split for a, _ in spatial):
            # features on this axis too, or an axis split over several tensor axes (windows and
            # rows within them): no unit axis, every unit holds all of its positions (sound)
            folded.update((a, split.get(a, n)) for a, n in spatial if n > 1)
            continue
        units_here = dict(spatial)
        for a, n in units_here.items():
            units[a] = n
        unit_axes.append((t, tuple(units_here)))
    unit_axes.sort(key=lambda ta: ta[1])  # input-axis order
    return tuple(units), folded, tuple(unit_axes), fines, tuple(repeats.get(t, 1) for t, _ in unit_axes)


def _outer_features(parts: Sequence[tuple[int, int]]) -> int:
    """The number of values of the feature parts before every part of positions on a tensor axis,
    where no feature part follows one (1 otherwise: no repeat)."""
    first = next(i for i, (a, _) in enumerate(parts) if a >= 0)
    if any(a < 0 and n != 1 for a, n in parts[first:]):
        return 1
    return math.prod(n for _, n in parts[:first])


def _split_axes(layout: Layout) -> dict[int, int]:
    """Input spatial axes whose parts lie on more than one tensor axis (a window partition), with
    their total number of positions."""
    where: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    for t, parts in enumerate(layout):
        for a, n in parts:
            if a >= 0:
                where.setdefault(a, set()).add(t)
                sizes[a] = sizes.get(a, 1) * n
    return {a: sizes[a] for a, ts in where.items() if len(ts) > 1}


__all__ = ["Analysis", "EndPoint", "analyze", "validate_input_size"]
