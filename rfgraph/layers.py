"""The layer view: one row per node that changes the receptive field, the rest folded into it.

A *layer* is a node with a sliding window (``semantics.WINDOW_OPS``) or one whose transfer maps
some output unit to other input units than its own along some axis (a stride, a window, a shift:
Pad, Slice, Resize, DepthToSpace...; or all of them: global pooling, attention).  Every other
analysed node (elementwise, normalisation per position, Reshape, Transpose, merges) is *folded*
into the latest layer before it (the last, in graph order, of its inputs' layers): its field is
that layer's (a merge's is the union of its branches'), so it adds no row.  Nodes computed only
for gates (an SE block's pooling and MLP) are folded too: the local fields hold them constant.

Per layer: its geometry (kernel, stride, pads, dilation: the ONNX attributes as
``semantics.geometry`` decodes them for window ops; for the others the window the op's rule
gives per input axis), its output's r, S, P (the per-tensor values of ``analyze --all``), how
much r grew over the largest r of its inputs, and two marks: the first layer whose output covers
the input, and per axis the last layer that grows r (the field stops growing there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .analysis import Analysis
from .fields import IDENTITY, Rational, Span
from .onnx_import import attributes
from .semantics import BROADCAST_OPS, WINDOW_OPS, geometry
from .semantics.transfer import Edge, OutTransfer, Transfer

# Where a window op's weight (and so its kernel size when ``kernel_shape`` is absent) is: the
# ONNX signatures of the ops in WINDOW_OPS; the pools require ``kernel_shape``.
WEIGHT_SLOT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}

GROWTH_SHOWN = 3  # layers named in the summary line


@dataclass(frozen=True)
class Geometry:
    """What one layer does: per axis kernel, stride, pads (begin, end) and dilation; ``source``
    says whether they are the ONNX attributes ('attributes', per axis of the op; pads None where
    they depend on an unknown input size) or the window its rule gives ('rule', per input spatial
    axis: extent, step, offset); a None kernel: the op reads every position along that axis."""

    kernel: tuple[int | None, ...]
    stride: tuple[Rational | None, ...]
    pads: tuple[tuple[int | None, int | None], ...]
    dilation: tuple[int, ...] | None
    source: str


@dataclass(frozen=True)
class Layer:
    """One row of the layer view."""

    node: str
    op: str
    output: str
    shape: tuple[int | None, ...]
    geometry: Geometry
    r: tuple[int | None, ...]
    S: tuple[Rational | None, ...]
    P: tuple[Any, ...]
    delta_r: tuple[int | None, ...]  # r minus the largest r of its inputs; None: became global here
    covers_input: bool | None
    marks: tuple[str, ...]  # 'first covers input', 'last growth' (+ ' along H' when axes differ)
    folded: tuple[str, ...]  # op types of the nodes folded into this row, in graph order


@dataclass(frozen=True)
class LayerView:
    """Every layer of an analysis, the ops folded before the first one, and the top growers."""

    layers: tuple[Layer, ...]
    folded_before: tuple[str, ...]  # op types of the nodes before the first layer (pre-processing)
    largest_growth: tuple[str, ...]  # layer nodes, largest delta r first

    @property
    def folded_count(self) -> int:
        return len(self.folded_before) + sum(len(lay.folded) for lay in self.layers)


def _changes_field(analysis: Analysis, idx: int, edges: Sequence[Edge]) -> bool:
    """True when some edge maps a unit to other units than its own along some axis; for an
    elementwise merge, only where that input's field is local (adding a global map, as a
    transformer's residual adds its attention's output, changes no unit's field: the attention did)."""
    node = analysis.graph.nodes[idx]
    merge = node.op_type in BROADCAST_OPS
    for e in edges:
        ep = analysis.endpoints.get(node.input[e.slot])
        if any(span != IDENTITY and not (merge and ep is not None and ep.fields[a].is_global)
               for a, span in e.maps.items()):
            return True
    return False


def _layer_output(analysis: Analysis, idx: int, transfer: Transfer) -> tuple[str, OutTransfer] | None:
    """The node's first analysed output and its transfer, None when nothing of it was analysed."""
    node = analysis.graph.nodes[idx]
    for j, ot in enumerate(transfer.outputs):
        if ot is not None and j < len(node.output) and node.output[j] in analysis.endpoints:
            return node.output[j], ot
    return None


def _local_edges(analysis: Analysis, idx: int, ot: OutTransfer) -> tuple[Edge, ...]:
    """The edges from inputs that carry a local field (a gate's operand is held constant)."""
    return analysis.local_edges(analysis.graph.names[idx], ot.edges)


def is_layer(analysis: Analysis, idx: int, ot: OutTransfer, gating: set[int]) -> bool:
    """A window op, or a node whose (local) edges change some unit's field; not a gate's helper."""
    if idx in gating:
        return False
    edges = _local_edges(analysis, idx, ot)
    return analysis.graph.nodes[idx].op_type in WINDOW_OPS or _changes_field(analysis, idx, edges)


def layer_geometry(analysis: Analysis, idx: int, edges: Sequence[Edge]) -> Geometry:
    """The layer's attributes as ``geometry`` decodes them (window ops), else its rule's window."""
    node = analysis.graph.nodes[idx]
    if node.op_type in WINDOW_OPS:
        return _window_geometry(analysis, idx)
    spans = [_axis_span(analysis, idx, edges, a) for a in range(len(analysis.axis_names))]
    return Geometry(tuple(_extent(s) for s in spans), tuple(None if s is None else s.S for s in spans),
                    tuple((None, None) if s is None else (-s.lo[0], None) for s in spans), None, "rule")


def _axis_span(analysis: Analysis, idx: int, edges: Sequence[Edge], axis: int) -> Span | None:
    """The window a non-window layer reads along ``axis``: its first edge's that moves units; a
    broadcast (every unit reads one unit: stride 0) only where no other edge moves them, and
    then as 'reads every position' (None) when what it broadcasts is global there (a lambda
    layer's q @ lambda read kernel 1, stride 0)."""
    moved = [e for e in edges if axis in e.maps]
    if not moved:
        return IDENTITY
    spans = [e.span(axis) for e in moved]
    windows = [sp for sp in spans if sp is None or sp.S != 0]
    if windows:
        return windows[0]
    tensor = analysis.graph.node_inputs[idx][moved[0].slot]
    ep = analysis.endpoints.get(tensor)
    return None if ep is not None and ep.fields[axis].is_global else spans[0]


def _extent(span: Span | None) -> int | None:
    """Units one output unit reads through a span (its widest phase); None: all of them."""
    return None if span is None else max(h - lo + 1 for lo, h in zip(span.lo, span.hi))


def _window_geometry(analysis: Analysis, idx: int) -> Geometry:
    """Kernel, strides, pads and dilations of a Conv/ConvTranspose/pool node (``geometry``)."""
    mg = analysis.graph
    node = mg.nodes[idx]
    attrs = attributes(node)
    in_shape = mg.shapes.get(node.input[0]) or ()
    kernel = list(attrs.get("kernel_shape") or [])
    if not kernel and node.op_type in WEIGHT_SLOT:
        kernel = [int(d) for d in (mg.shapes.get(node.input[WEIGHT_SLOT[node.op_type]]) or ())[2:]]
    sizes = list(in_shape[2:]) + [None] * len(kernel)
    if node.op_type == "ConvTranspose":
        geo = geometry.conv_transpose(mg.names[idx], attrs, kernel, sizes[:len(kernel)])
    else:
        geo = geometry.window(node.op_type, mg.names[idx], attrs, kernel, sizes[:len(kernel)])
    unknown = analysis.unknown_size is not None and geo.size_dependent  # pads of one sample size
    pads = tuple((None, None) if unknown else (a.pad_begin, a.pad_end) for a in geo.axes)
    return Geometry(tuple(geo.kernel), tuple(geo.strides), pads, tuple(geo.dilations), "attributes")


def _delta_r(analysis: Analysis, output: str, edges: Sequence[Edge], node_inputs: Sequence[str]
             ) -> tuple[int | None, ...]:
    """Per axis, r of the output minus the largest r of the inputs it reads (None: the field
    became global here; 0 when it already was)."""
    ins = [analysis[node_inputs[e.slot]] for e in edges if node_inputs[e.slot] in analysis.endpoints]
    out = analysis[output].r
    deltas: list[int | None] = []
    for a, r in enumerate(out):
        before = [ep.r[a] for ep in ins]
        local = [b for b in before if b is not None]
        if r is None:
            deltas.append(None if len(local) == len(before) else 0)
        else:
            deltas.append(r - max(local, default=1))
    return tuple(deltas)


def layer_view(analysis: Analysis) -> LayerView:
    """The layer rows of an analysis, in the pass's (topological) order."""
    from .report import covers_input

    mg = analysis.graph
    gating = analysis.gating_nodes()
    owner: dict[str, int | None] = {analysis.input_name: None}  # tensor -> row that owns its field
    rows: list[dict[str, Any]] = []
    folded_before: list[str] = []
    for idx, transfer in analysis.node_transfers():
        found = _layer_output(analysis, idx, transfer)
        if found is None:
            continue
        output, ot = found
        node = mg.nodes[idx]
        if is_layer(analysis, idx, ot, gating):
            edges = _local_edges(analysis, idx, ot)
            ep = analysis[output]
            rows.append({"node": mg.names[idx], "op": node.op_type, "output": output, "shape": ep.shape,
                         "geometry": layer_geometry(analysis, idx, edges), "r": ep.r, "S": ep.S, "P": ep.P,
                         "delta_r": _delta_r(analysis, output, edges, mg.node_inputs[idx]),
                         "covers_input": covers_input(ep, analysis), "folded": []})
            here: int | None = len(rows) - 1
        else:
            before = [i for i in (owner.get(t) for t in node.input) if i is not None]
            here = max(before, default=None)
            (folded_before if here is None else rows[here]["folded"]).append(node.op_type)
        for t in node.output:
            if t in analysis.endpoints:
                owner[t] = here
    marks = _marks(rows, analysis.axis_names)
    layers = tuple(Layer(**{**row, "folded": tuple(row["folded"])}, marks=tuple(marks.get(i, ())))
                   for i, row in enumerate(rows))
    return LayerView(layers, tuple(folded_before), _largest_growth(layers))


def _marks(rows: Sequence[dict[str, Any]], axis_names: Sequence[str]) -> dict[int, list[str]]:
    """Row index -> its marks: the first row covering the input; per axis the last row growing r
    (or making it global): after it the field stops growing."""
    marks: dict[int, list[str]] = {}
    first = next((i for i, row in enumerate(rows) if row["covers_input"]), None)
    if first is not None:
        marks.setdefault(first, []).append("first covers input")
    last: dict[int, list[str]] = {}
    for a, axis in enumerate(axis_names):
        growing = [i for i, row in enumerate(rows) if row["delta_r"][a] is None or row["delta_r"][a] > 0]
        if growing:
            last.setdefault(growing[-1], []).append(axis)
    for i, axes in last.items():
        whole = len(axes) == len(axis_names)
        marks.setdefault(i, []).append("last growth" if whole else f"last growth along {', '.join(axes)}")
    return marks


def _growth(layer: Layer) -> int:
    """The largest local growth of r over the axes (a field made global counts as none)."""
    return max((d for d in layer.delta_r if d is not None), default=0)


def _largest_growth(layers: Sequence[Layer]) -> tuple[str, ...]:
    """The GROWTH_SHOWN layers with the largest growth of r (ties: the earlier first)."""
    growing = [lay for lay in layers if _growth(lay) > 0]
    return tuple(lay.node for lay in sorted(growing, key=_growth, reverse=True)[:GROWTH_SHOWN])


__all__ = ["Geometry", "Layer", "LayerView", "is_layer", "layer_geometry", "layer_view"]
