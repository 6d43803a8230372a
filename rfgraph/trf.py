"""The theoretical receptive-field pass over an ONNX DAG (Araujo et al., "Arbitrary computation graphs").

Two directions over the same per-edge spans from ``semantics.TRF_RULES``:

* ``forward_pass``: topological order, the field of *every* tensor w.r.t. the input in one
  O(|E| + |L|) sweep: a tensor's field is the union over its incoming edges of (edge span, then
  the input tensor's field).  Alignment (eqs. 12-13) is checked at every merge.
* ``reverse_pass``: the paper's algorithm proper: reverse topological order from one end point,
  giving that end point's (r, S, P) measured on every tensor it depends on (r_l of eq. 1).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import DynamicShapeError, UnsupportedOpError
from .fields import (
    IDENTITY,
    AxisField,
    Rational,
    Span,
    compose,
    global_field,
    quick_init,
    union_fields,
    union_spans,
    with_gate,
)
from .onnx_import import ModelGraph, attributes, check_attribute_types, paused_gc, unknown_standard_op
from .rules import RuleTable
from .semantics import BROADCAST_OPS, CACHEABLE_OPS, GATE_OPS, STATIC_OPS, TRF_RULES
from .semantics.contrib import NOT_EXPANDED, contrib_stop_reason
from .semantics.transfer import (
    AxisOutOfRange,
    Edge,
    Layout,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    fine_axis,
    folded_back,
    spatial_of,
)


@quick_init
@dataclass(frozen=True, slots=True)
class TensorState:
    """What the pass knows of a tensor: its layout and its field along each input spatial axis."""

    layout: Layout
    fields: tuple[AxisField, ...]
    size_dependent: str | None = None  # first node whose padding depends on the input size
    misaligned: str | None = None  # first misaligned merge upstream (or here)
    bound: str | None = None  # first node upstream (or here) from which the field is an upper bound


@dataclass(frozen=True)
class Stop:
    """A node where the analysis stopped, and why; tensors after it are not reported."""

    node: str
    op: str
    reason: str
    lost: int = 0  # tensors downstream that could not be analysed


@dataclass(frozen=True)
class Branch:
    """One input of a merge: its field's stride and centre offset (eq. 11 at unit 0); after an
    upsampling, ``phases``: the centre of unit u minus u*S for each u mod q (two branches may
    agree at unit 0 and differ at unit 1)."""

    tensor: str
    S: Rational
    centre: Fraction
    r: int
    phases: tuple[Fraction, ...] = ()


def _phase_centres(fields: Sequence[AxisField]) -> list[tuple[Fraction, ...]]:
    """Per branch, the centre offset (centre of unit u minus u*S) of each phase of the merge's
    common period (empty for fields with several strides or global ones)."""
    spans = [f.spans[0] if len(f.spans) == 1 else None for f in fields]
    q = math.lcm(*(sp.q for sp in spans if sp is not None)) if any(spans) else 1
    out: list[tuple[Fraction, ...]] = []
    for sp in spans:
        if sp is None:
            out.append(())
            continue
        e = sp.expanded(q)
        out.append(tuple(Fraction(e.lo[t] + e.hi[t], 2) - Fraction(e.A * t, q) for t in range(q)))
    return out


@dataclass(slots=True)  # one per merge and axis of the pass: not frozen, a plain __init__ is cheaper
class Merge:
    """A node joining several paths, with the alignment verdict of conditions (12)-(13).

    The verdict is computed at every merge during the pass; the per-branch details are derived
    from the branches' fields only when read (most merges of a large net are never printed).
    """

    node: str
    op: str
    output: str
    axis: int
    inputs: tuple[str, ...]
    fields: tuple[AxisField, ...] = field(repr=False)
    aligned: bool
    layout: Layout = field(default=(), repr=False)  # the output's: how many units it has

    @property
    def branches(self) -> tuple[Branch, ...]:
        """Each input's stride, centre offset at unit 0 (eq. 11) and size along the axis (over
        the units the output has)."""
        phases = _phase_centres(self.fields)
        units = units_along(self.layout, self.axis) or None
        return tuple(Branch(t, f.stride, f.centre(0), f.size(units), p)
                     for t, f, p in zip(self.inputs, self.fields, phases))


@dataclass(frozen=True)
class Gate:
    """A node multiplying (or adding to) a feature map by a value constant over positions and
    computed from all of them (squeeze-excitation, ECA, a global-context block, a normalisation's
    mean and variance): ``tensor``, the gate's input, whose field was made global at ``source``.
    Held constant, it leaves the feature map's local field; the exact field through it is global.
    A normalisation op computes its statistics inside (``statistics``, why; ``slot`` -1: no
    operand is held, ``tensor`` is the map normalised and ``source`` the node itself)."""

    node: str
    op: str
    tensor: str
    slot: int
    source: str
    statistics: str = ""




@dataclass
class PassResult:
    """States of every analysed tensor, the transfers used, merges, stops and gates."""

    states: dict[str, TensorState]
    transfers: dict[int, Transfer]
    order: list[int]
    merges: list[Merge] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    global_at: dict[str, str] = field(default_factory=dict)  # node -> why it mixes positions
    gates: dict[str, Gate] = field(default_factory=dict)  # node -> the gate it applies
    bounds: dict[str, str] = field(default_factory=dict)  # node -> why fields are upper bounds from it
    input_sizes: tuple[int | None, ...] = ()  # positions of the input along each spatial axis (None: unknown)

    def local_edges(self, node: str, edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
        """A node's edges without its gate operand (held constant for the local fields)."""
        gate = self.gates.get(node)
        return edges if gate is None else tuple(e for e in edges if e.slot != gate.slot)


def forward_pass(mg: ModelGraph, input_name: str, input_layout: Layout,
                 rules: RuleTable | None = None) -> PassResult:
    """Field of every tensor w.r.t. ``input_name``, in topological order (O(|E| + |L|)), by the
    op rules of ``rules`` (default: the standard table and register_op's rules)."""
    with paused_gc():
        return _forward_pass(mg, input_name, input_layout, rules or RuleTable.build())


def _forward_pass(mg: ModelGraph, input_name: str, input_layout: Layout, rules: RuleTable) -> PassResult:
    """``forward_pass`` proper."""
    n_axes = len({a for parts in input_layout for a, _ in parts if a >= 0})
    identity = AxisField((IDENTITY,))
    states = {input_name: TensorState(input_layout, (identity,) * n_axes)}
    order = mg.topological_nodes()
    result = PassResult(states, {}, order, input_sizes=tuple(units_along(input_layout, a) or None
                                                             for a in range(n_axes)))
    blocked: dict[str, int] = {}  # tensor -> index into result.stops
    cache = TransferCache(rules)  # repeated identical layers share one transfer
    node_inputs, node_outputs, op_types, names = mg.node_inputs, mg.node_outputs, mg.op_types, mg.names
    get_state = states.get
    for idx in order:
        inputs, outputs = node_inputs[idx], node_outputs[idx]
        causes = [blocked[t] for t in inputs if t in blocked] if blocked else None
        if causes:
            for out in outputs:
                if out:
                    blocked[out] = causes[0]
            continue
        layouts = [st.layout if (st := get_state(t)) is not None else None for t in inputs]
        captures = idx in mg.captured and any(t in states for t in mg.captured[idx])  # If/Loop bodies
        if op_types[idx] in STATIC_OPS or (layouts.count(None) == len(layouts) and not captures):
            continue  # a constant or shape computation, not a layer
        try:
            transfer = _transfer(mg, idx, layouts, cache)
        except (UnsupportedOpError, DynamicShapeError) as exc:
            result.stops.append(Stop(names[idx], op_types[idx], _reason(exc)))
            for out in outputs:
                if out:
                    blocked[out] = len(result.stops) - 1
            continue
        result.transfers[idx] = transfer
        _apply(result, mg, idx, transfer)
        if transfer.mix_reason and _made_global(states, outputs, names[idx]):
            result.global_at[names[idx]] = transfer.mix_reason
        if transfer.bound:
            result.bounds[names[idx]] = transfer.bound
        if transfer.statistics:
            _hold_statistics(result, mg, idx, transfer.statistics, transfer.statistics_axes)
    _count_lost(result, blocked)
    return result


def _reason(exc: Exception) -> str:
    return exc.why if isinstance(exc, UnsupportedOpError) else str(exc)


@dataclass
class TransferCache:
    """What one pass looks up once: each standard op's rule, and the transfer of each node signature."""

    table: RuleTable
    rules: dict[str, Rule | None] = field(default_factory=dict)
    transfers: dict[tuple[object, ...], Transfer] = field(default_factory=dict)

    def rule(self, op: str, domain: str) -> Rule | None:
        """The op's rule (fixed for the whole pass; other domains are not cached)."""
        if domain:
            return self.table.rule(op, domain)
        if op not in self.rules:
            self.rules[op] = self.table.rule(op, "")
        return self.rules[op]


def _leftover_reason(op: str, declare: str) -> str:
    """Why an op ONNX does not define stops the pass, and what to do about it."""
    if isinstance(op, str) and op.startswith("TFL_"):  # tf2onnx --tflite keeps what it cannot convert
        return (f"ONNX has no such operator: a TensorFlow Lite op ({op[4:]}) that tf2onnx could not "
                f"convert and left as it is, without its parameters; declare a rule for it {declare}")
    return (f"ONNX has no such operator: the exporter left a framework call in the graph (a broken "
            f"export); export it again (that function inlined, or at another opset), or declare a "
            f"rule for it {declare}")


def _transfer(mg: ModelGraph, idx: int, layouts: list[Layout | None], cache: TransferCache) -> Transfer:
    """Run the op's rule on a node; unknown ops raise UnsupportedOpError naming the node.

    Rules of ``CACHEABLE_OPS`` read only attributes, layouts and shapes, so their transfer is
    reused for every node with the same signature (a 100k-layer net has a few dozen kinds).
    """
    node = mg.nodes[idx]
    op = mg.op_types[idx]
    rule = cache.rule(op, node.domain)
    if rule is not None and node.doc_string.startswith(NOT_EXPANDED):  # a contrib op a standard one's
        rule = None  # namesake (QLinearConv) with what its expansion does not cover: not that op
    if rule is None:
        dom = f" (domain '{node.domain}')" if node.domain else ""
        declare = "with --rules FILE or rfgraph.register_op (see docs/custom_ops.md)"
        why = (_leftover_reason(op, declare) if unknown_standard_op(op, node.domain) else
               f"no receptive-field rule for this op{dom}; declare one {declare}")
        why = contrib_stop_reason(node) or why
        raise UnsupportedOpError(mg.names[idx], node.op_type, why)
    shapes = mg.shapes
    in_shapes = [shapes.get(t) if t else None for t in mg.node_inputs[idx]]
    out_shapes = [shapes.get(t) if t else None for t in mg.node_outputs[idx]]
    key = None
    if op in CACHEABLE_OPS and rule is TRF_RULES.get(op) and not (op == "Concat" and mg.wrap_padding(idx)):
        # (a circular padding's transfer comes from its inputs' producers, which no key holds)
        # layouts mark the data inputs and the slot count; absent and unknown-shape constant
        # inputs both read None, which no cacheable rule tells apart.  The opset is the pass's.
        attrs = node.attribute
        key = (op, tuple([a.SerializeToString() for a in attrs]) if attrs else (), tuple(layouts),
               tuple(in_shapes), tuple(out_shapes))
        hit = cache.transfers.get(key)
        if hit is not None:
            return hit
    check_attribute_types(node, mg.opset, mg.names[idx])
    ctx = NodeContext(
        name=mg.names[idx], op=node.op_type, node=node, attrs=attributes(node), layouts=layouts,
        in_shapes=in_shapes, out_shapes=out_shapes, constant=mg.constant, opset=mg.opset,
        producer=mg.node_of)
    try:
        transfer = rule(ctx)
    except AxisOutOfRange as exc:
        raise ctx.invalid(str(exc)) from None
    _check_layout_sizes(ctx, transfer)
    transfer = _note_put_back(ctx, transfer)
    if key is not None:
        cache.transfers[key] = transfer
    return transfer


def _check_layout_sizes(ctx: NodeContext, transfer: Transfer) -> None:
    """Each output layout describes as many units per axis as the tensor has: a rule that loses
    count of positions stops the pass at its node, never hands a wrong field downstream."""
    for out, shape in zip(transfer.outputs, ctx.out_shapes):
        if out is None or shape is None or len(shape) != len(out.layout):
            continue
        for t, (parts, dim) in enumerate(zip(out.layout, shape)):
            if dim is not None and spatial_of(parts) and math.prod(n for _, n in parts) != dim:
                raise ctx.unsupported(f"rfgraph's rule for {ctx.op} lost count of the positions on axis {t} "
                                      f"(its layout {parts} holds {math.prod(n for _, n in parts)} units, "
                                      f"the tensor {dim}); a defect in rfgraph: please report it")


def _note_put_back(ctx: NodeContext, transfer: Transfer) -> Transfer:
    """A node that puts positions folded into features back in place (a fine axis whose extra
    parts are ``FOLDED``: an unfold into patches, then a fold) gives each element its fold's
    field: the fields from here are upper bounds, and the transfer says so."""
    for out in transfer.outputs:
        if out is None:
            continue
        for t in range(len(out.layout)):
            if fine_axis(out.layout, t) is not None and folded_back(out.layout, t) and not any(
                    lay is not None and t < len(lay) and lay[t] == out.layout[t] for lay in ctx.layouts):
                return dataclasses.replace(transfer, bound=(
                    f"puts positions folded into features back in place (axis {t}): each element "
                    f"is given its whole fold's field, an upper bound of its own"))
    return transfer


def _apply(result: PassResult, mg: ModelGraph, idx: int, transfer: Transfer) -> None:
    """Compute the fields of a node's outputs from its inputs' fields and the transfer."""
    name, node_in, node_out = mg.names[idx], mg.node_inputs[idx], mg.node_outputs[idx]
    states = result.states
    for j, out in enumerate(transfer.outputs):
        tensor = node_out[j] if j < len(node_out) else ""
        if out is None or not tensor:
            continue
        if len(out.edges) == 1:  # fast path: one input, no merge (most layers of any net)
            edge = out.edges[0]
            st = states[node_in[edge.slot]]
            if not edge.maps and not transfer.size_dependent and out.layout == st.layout and not transfer.bound:
                states[tensor] = st  # a pointwise layer: the very same state
                continue
            fields = st.fields if not edge.maps else _through_edge(edge, st.fields, name)
            dep = st.size_dependent or (name if transfer.size_dependent else None)
            states[tensor] = TensorState(out.layout, fields, dep, st.misaligned,
                                         st.bound or (name if transfer.bound else None))
            continue
        inputs = [states[node_in[e.slot]] for e in out.edges]
        gate = _gate_slots(mg, mg.op_types[idx], out, inputs, [node_in[e.slot] for e in out.edges],
                           states, result.input_sizes) if len(out.edges) > 1 else ()
        if gate:
            out = _record_gates(result, mg, idx, out, gate)
            inputs = [states[node_in[e.slot]] for e in out.edges]
        n_axes = len(inputs[0].fields)
        per_edge = [_through_edge(e, st.fields, name) if e.maps else st.fields for e, st in zip(out.edges, inputs)]
        fields = _union_per_axis(per_edge, n_axes)
        if transfer.mix_reason:
            fields = _named_causes(mg.op_types[idx], name, fields, inputs, per_edge)
        if gate:
            fields = tuple(with_gate(f, name) for f in fields)
        dep = bad = bound = None
        for st in inputs:
            dep = dep or st.size_dependent
            bad = bad or st.misaligned
            bound = bound or st.bound
        if transfer.size_dependent and dep is None:
            dep = name
        if len(out.edges) > 1 and not _check_alignment(result, mg, idx, out, tensor, per_edge):
            bad = bad or name
        states[tensor] = TensorState(out.layout, fields, dep, bad, bound or (name if transfer.bound else None))


def _named_causes(op: str, node: str, fields: tuple[AxisField, ...], inputs: Sequence[TensorState],
                  per_edge: Sequence[tuple[AxisField, ...]]) -> tuple[AxisField, ...]:
    """Which node a merge's global fields name: after an elementwise merge, an input that was
    global already (each unit reads it at its position, so the union is global anyway); after a
    Concat along positions, this node where it made a piece global (a unit reads one piece)."""
    if op in BROADCAST_OPS:
        return tuple(next((st.fields[a] for st in inputs if st.fields[a].is_global), f)
                     if f.global_at == node else f for a, f in enumerate(fields))
    if op == "Concat":
        return tuple(next((pe[a] for pe in per_edge if pe[a].global_at == node), f) for a, f in enumerate(fields))
    return fields


def _made_global(states: dict[str, TensorState], outputs: Sequence[str], node: str) -> bool:
    """Whether some output of ``node`` is global because of it (not already before it)."""
    return any(f.global_at == node for t in outputs if t and (st := states.get(t)) is not None for f in st.fields)


def _hold_statistics(result: PassResult, mg: ModelGraph, idx: int, why: str, axes: Sequence[int] = ()) -> None:
    """A normalisation's output 0, computed with its statistics held constant: its local fields
    along the input spatial ``axes`` the statistics span (every axis: none given) pass this gate
    (recorded; a LayerNorm over W leaves H's field as it is), and where the input is global
    already nothing changes."""
    tensor = mg.node_outputs[idx][0] if mg.node_outputs[idx] else ""
    state = result.states.get(tensor)
    if state is None or not state.fields or all(f.is_global for f in state.fields):
        return
    name = mg.names[idx]
    result.gates[name] = Gate(name, mg.op_types[idx], mg.node_inputs[idx][0], -1, name, why)
    fields = tuple(with_gate(f, name) if not axes or a in axes else f for a, f in enumerate(state.fields))
    result.states[tensor] = TensorState(state.layout, fields, state.size_dependent, state.misaligned, state.bound)


def _gate_slots(mg: ModelGraph, op: str, out: OutTransfer, inputs: Sequence[TensorState],
                tensors: Sequence[str], states: dict[str, TensorState],
                input_sizes: Sequence[int | None]) -> tuple[int, ...]:
    """Indices (into ``out.edges``) of the gate operands of a Mul/Add/Sub/Div: constant along
    every tensor axis where the output has several positions (but for constant factors), and
    read from the whole input along every spatial axis (``_pooled_whole``).  Found from
    shapes and fields, never names; an attention map (several positions, even global ones) is no
    gate.  Empty unless another operand is a feature map with a local field (the map gated)."""
    if op not in GATE_OPS:
        return ()
    rank = len(out.layout)
    spread = [t - rank for t, parts in enumerate(out.layout) if any(a >= 0 and n != 1 for a, n in parts)]
    if not spread:
        return ()
    gates = tuple(k for k, (st, tensor) in enumerate(zip(inputs, tensors))
                  if _pooled_whole(st, input_sizes) and _constant_over_positions(mg, states, tensor, spread))
    gated = [st for k, st in enumerate(inputs) if k not in gates and not _all_global(st)]
    return gates if gated else ()  # a global map times a global value: no gate


REARRANGING_OPS = {"Reshape", "Flatten", "Cast", "Identity"}  # keep the elements' row-major order
COMBINING_OPS = {"Mul", "Add", "Sub", "Div", "Neg", "Reciprocal", "Sqrt", "Cast"}  # elementwise, broadcasting


def _constant_over_positions(mg: ModelGraph, states: dict[str, TensorState], tensor: str,
                             axes: Sequence[int], depth: int = 6) -> bool:
    """True when the operand ``tensor``'s value depends on the input only through values constant
    along the output's tensor ``axes`` (negative: counted from the last, as broadcasting aligns):
    of size 1 there; made by an Expand of such a value and reshaped (``_expanded_constant``); or
    an elementwise combination of such values with constants (Keras' LayerNormalization over
    H, W, C as tf2onnx writes it: 1/std times a scale of one value per position)."""
    shape = mg.shapes.get(tensor)
    if shape is not None and all(-a > len(shape) or shape[a] == 1 for a in axes):
        return True
    if shape is None or None in shape:
        return False
    if _expanded_constant(mg, tensor, shape, axes):
        return True
    producer = mg.producer.get(tensor)
    if depth == 0 or producer is None or mg.op_types[producer] not in COMBINING_OPS:
        return False
    dynamic = [t for t in mg.node_inputs[producer] if t and t in states]  # the others are constants
    return bool(dynamic) and all(_constant_over_positions(mg, states, t, axes, depth - 1) for t in dynamic)


def _expanded_constant(mg: ModelGraph, tensor: str, shape: tuple, axes: Sequence[int]) -> bool:
    """True when ``tensor`` (of ``shape``) is an Expand of a value reshaped after it, constant
    along ``axes`` (ECA's gate, Expand(gate, Shape(x)); EvoNorm's group deviation, expanded to
    (N, G, C/G, H, W) and reshaped to (N, C, H, W)): its value depends on the row-major index
    only through index // T, T the Expand's block after its last varying axis, so a multiple of
    T spans the block of ``axes`` and every axis after them."""
    while tensor in mg.producer and mg.op_types[mg.producer[tensor]] in REARRANGING_OPS:
        tensor = mg.nodes[mg.producer[tensor]].input[0]
    if tensor not in mg.producer or mg.op_types[mg.producer[tensor]] != "Expand":
        return False
    node = mg.nodes[mg.producer[tensor]]
    source, expanded = mg.shapes.get(node.input[0]), mg.shapes.get(tensor)
    if source is None or expanded is None or None in source or None in expanded:
        return False
    off = len(expanded) - len(source)
    varying = [k for k, d in enumerate(source) if d != 1]
    block = math.prod(expanded[off + varying[-1] + 1:]) if varying else math.prod(expanded)
    first = len(shape) + min(axes)
    return first >= 0 and block % math.prod(shape[first:]) == 0


def _all_global(state: TensorState) -> bool:
    return bool(state.fields) and all(f.global_at is not None for f in state.fields)


def _pooled_whole(state: TensorState, input_sizes: Sequence[int | None]) -> bool:
    """Whether a tensor's values are each computed from the whole input: global along every
    spatial axis, or one unit along each whose local field covers the input (tflite writes Keras'
    GlobalAveragePooling2D as an AveragePool of the map's size: a field of the recursion, eq. 2)."""
    if not state.fields:
        return False
    for axis, (f, n) in enumerate(zip(state.fields, input_sizes)):
        if f.global_at is not None:
            continue
        if n is None or units_along(state.layout, axis) != 1:
            return False
        first, last = f.region(0)
        if first > 0 or last < n - 1:
            return False
    return True


def _record_gates(result: PassResult, mg: ModelGraph, idx: int, out: OutTransfer,
                  gate: Sequence[int]) -> OutTransfer:
    """Record the gate applied at node ``idx``; the output's transfer without the gate edges."""
    name, node_in = mg.names[idx], mg.node_inputs[idx]
    for k in gate:
        e = out.edges[k]
        source = result.states[node_in[e.slot]].fields[0].global_at or _pooled_at(mg, result, node_in[e.slot])
        result.gates.setdefault(name, Gate(name, mg.op_types[idx], node_in[e.slot], e.slot, source))
    return OutTransfer(out.layout, tuple(e for k, e in enumerate(out.edges) if k not in gate))


def _pooled_at(mg: ModelGraph, result: PassResult, tensor: str) -> str:
    """The node where a gate operand with local fields (``_pooled_whole``) came to one unit over
    the whole input: followed up its data inputs while they are such operands too."""
    node = ""
    while (idx := mg.producer.get(tensor)) is not None:
        node = mg.names[idx]
        tensor = next((t for t in mg.node_inputs[idx] if t in result.states
                       and _pooled_whole(result.states[t], result.input_sizes)), "")
    return node


def _through_edge(edge: Edge, fields_in: tuple[AxisField, ...], node: str) -> tuple[AxisField, ...]:
    """Fields of an output along every axis through one edge; an axis whose span and input field
    are the very objects of the previous axis (square layers) reuses its result."""
    out: list[AxisField] = []
    prev_span, prev_in = None, None
    for i, f in enumerate(fields_in):
        span = edge.span(i)
        if out and span is prev_span and f is prev_in:
            out.append(out[-1])
            continue
        out.append(_edge_field(span, f, node))
        prev_span, prev_in = span, f
    return tuple(out)


def _union_per_axis(per_edge: list[tuple[AxisField, ...]], n_axes: int) -> tuple[AxisField, ...]:
    """Union over edges, axis by axis; an axis whose inputs are those of the previous one reuses it."""
    out: list[AxisField] = []
    for i in range(n_axes):
        if i and all(f[i] is f[i - 1] for f in per_edge):
            out.append(out[-1])
        else:
            out.append(union_fields(f[i] for f in per_edge))
    return tuple(out)


def _edge_field(span: Span | None, field_in: AxisField, node: str) -> AxisField:
    """Field through one edge along one axis (None: the op reads every position)."""
    if span is None:
        return field_in if field_in.is_global else global_field(node)
    if span is IDENTITY:
        return field_in
    return compose(span, field_in)


def _check_alignment(result: PassResult, mg: ModelGraph, idx: int, out: OutTransfer, tensor: str,
                     per_edge: list[tuple[AxisField, ...]]) -> bool:
    """Conditions (12)-(13): equal effective strides and equal centres on every branch (one
    record per axis; an axis whose branch fields are those of the previous axis reuses its verdict).
    Along an axis where the output has one unit, strides do not matter (no second unit to shift
    to): aligned when the branches' centres of that unit agree (eq. 13 at u = 0)."""
    node_in = mg.node_inputs[idx]
    inputs = tuple([node_in[e.slot] for e in out.edges])
    name, op, merges = mg.names[idx], mg.op_types[idx], result.merges
    ok = True
    prev: tuple[AxisField, ...] = ()
    verdict = True
    for axis, fields in enumerate(zip(*per_edge)):
        if any([f.global_at is not None for f in fields]):  # noqa: C419 - a list is faster for 2-3 items
            prev = ()
            continue
        if not prev or any([a is not b for a, b in zip(fields, prev)]):  # noqa: C419 - idem
            verdict = _aligned(fields)
        prev = fields
        aligned = verdict or _centred_alike(fields, units_along(out.layout, axis))
        ok = ok and aligned
        merges.append(Merge(name, op, tensor, axis, inputs, fields, aligned, out.layout))
    return ok


CENTRES_CHECKED_MAX = 4096  # units whose centres _centred_alike compares one by one


def _centred_alike(fields: Sequence[AxisField], n_units: int) -> bool:
    """Whether the branches agree on the centre of every unit the output has (eq. 13 unit by
    unit), where their spans differ only beyond them: one unit (no second to shift to), or a
    period that a window partition's enumerated map extends past the tensor's last unit."""
    if n_units == 1:
        return len({f.centre(0) for f in fields}) == 1
    if not 1 < n_units <= CENTRES_CHECKED_MAX or all(sp.q == 1 for f in fields for sp in f.spans):
        return False
    return all(len({f.centre(u) for f in fields}) == 1 for u in range(n_units))


def units_along(layout: Layout, axis: int) -> int:
    """Positions of a tensor along input spatial ``axis`` (1 when no tensor axis holds it; 0 unknown):
    the product of its parts where it is split over several tensor axes (blocks x rows within
    them: the position is their row-major index)."""
    return math.prod(n for parts in layout for a, n in parts if a == axis)


def _aligned(fields: Sequence[AxisField]) -> bool:
    """All branches shift-invariant with the same stride and the same centre at every phase, or
    tiling each unit's block of S pixels (a space-to-depth: ``_tiles_blocks``)."""
    spans = [f.spans for f in fields]
    if any(len(s) != 1 for s in spans):
        return False
    first = spans[0][0]
    for (sp,) in spans[1:]:
        if sp.S != first.S:
            return False
        if first.q == 1 and sp.q == 1:  # fast path: affine spans, one centre offset each
            if first.lo[0] + first.hi[0] != sp.lo[0] + sp.hi[0]:
                return _tiles_blocks([s for (s,) in spans])
            continue
        q = first.q * sp.q
        if first.expanded(q).centre_sums() != sp.expanded(q).centre_sums():
            return False
    return True


def _tiles_blocks(spans: Sequence[Span]) -> bool:
    """Affine branches of integer stride S whose regions, equally long and side by side, cover
    exactly S pixels per unit: YOLOv5's Focus (four strided Slices + Concat) reads each 2x2
    block once, as a 2x2 stride-2 conv does, so the merged field is a block centred on itself.
    A branch nested in another (a 1x1/2 conv beside a 2x2/2 one, a query beside its window's
    keys) keeps its own centre: misaligned, as eq. 13 says."""
    S = spans[0].A
    if S <= 1 or any(sp.q != 1 or sp.A != S for sp in spans):
        return False
    regions = sorted({(sp.lo[0], sp.hi[0]) for sp in spans})
    length = regions[0][1] - regions[0][0]
    tiled = all(b[0] == a[1] + 1 and b[1] - b[0] == length for a, b in itertools.pairwise(regions))
    return tiled and regions[-1][1] - regions[0][0] + 1 == S


def _count_lost(result: PassResult, blocked: dict[str, int]) -> None:
    """Record how many tensors each stop kept from being analysed."""
    counts = [0] * len(result.stops)
    for i in blocked.values():
        counts[i] += 1
    result.stops = [Stop(s.node, s.op, s.reason, c) for s, c in zip(result.stops, counts)]


def output_transfers(mg: ModelGraph, result: PassResult) -> Iterator[tuple[int, str, OutTransfer]]:
    """(node index, output tensor, its transfer) of every analysed output, in topological order."""
    for idx in result.order:
        transfer = result.transfers.get(idx)
        if transfer is None:
            continue
        node = mg.nodes[idx]
        for j, out in enumerate(transfer.outputs):
            tensor = node.output[j] if j < len(node.output) else ""
            if out is not None and tensor:
                yield idx, tensor, out


def reverse_pass(mg: ModelGraph, result: PassResult, target: str) -> dict[str, tuple[AxisField, ...]]:
    """Field of one unit of ``target`` measured on every tensor it depends on (paper's algorithm).

    Visits nodes in reverse topological order, so all paths from a tensor to ``target`` are known
    when the tensor is reached; keeps per tensor the union of paths (largest field, eqs. 1, 9, 10).
    A gate of the forward pass is held constant here too: its operand is not followed, and the
    fields through its node name it (as the forward pass's local fields do).
    """
    n_axes = len(result.states[target].fields)
    fields: dict[str, tuple[AxisField, ...]] = {target: (AxisField((IDENTITY,)),) * n_axes}
    for idx in reversed(result.order):
        transfer = result.transfers.get(idx)
        if transfer is None:
            continue
        node = mg.nodes[idx]
        gate = result.gates.get(mg.names[idx])
        for j, out in enumerate(transfer.outputs):
            if out is None or j >= len(node.output) or node.output[j] not in fields:
                continue
            seen = fields[node.output[j]]
            if gate is not None:
                seen = tuple(with_gate(f, gate.node) for f in seen)
            for e in result.local_edges(mg.names[idx], out.edges):
                x = node.input[e.slot]
                new = tuple(_extend(seen[i], e.span(i), mg.names[idx]) for i in range(n_axes))
                old = fields.get(x)
                fields[x] = new if old is None else tuple(union_fields(p) for p in zip(old, new))
    return fields


def _extend(field_out: AxisField, span: Span | None, node: str) -> AxisField:
    """Backward step: the target's field on a layer's output, then the layer's span."""
    if field_out.is_global:
        return field_out
    if span is None:
        return global_field(node)
    return AxisField(union_spans(sp.then(span) for sp in field_out.spans), None, field_out.gates)
