"""Coverage per end point and axis: r against the input size n; the *border layer* (first layer
on a path to the end point whose r exceeds n, as rfa-toolbox defines it); the first layer whose
every unit sees the whole axis; and *unproductive layers*: layers for which more than half of the
output units read only units whose every path already sees the whole axis (or read only
padding), so all the field they add lies outside the image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..fields import Span
from ..semantics import WINDOW_OPS
from .regions import AxisRegions, input_sizes, reads

UNPRODUCTIVE_FRACTION = 0.5  # a layer is unproductive when MORE than this share of units is


@dataclass(frozen=True)
class Layer:
    """A node that can grow the field: a conv/pool op, or any op whose span reads several units,
    strides, or mixes all positions."""

    node: str
    op: str
    output: str
    index: int  # node index in the graph


def layers(analysis: Analysis) -> list[Layer]:
    """Every field-growing node, in topological order, by its first analysed output."""
    mg = analysis.graph
    found = []
    for idx, transfer in analysis.node_transfers():
        node = mg.nodes[idx]
        outs = [node.output[j] for j, o in enumerate(transfer.outputs)
                if o is not None and j < len(node.output) and node.output[j] in analysis.endpoints]
        if outs and (node.op_type in WINDOW_OPS or _grows(transfer)):
            found.append(Layer(mg.names[idx], node.op_type, outs[0], idx))
    return found


def _grows(transfer: Any) -> bool:
    """True when some edge reads more than one unit, strides, or mixes an axis."""
    for ot in transfer.outputs:
        for e in ot.edges if ot is not None else ():
            for span in e.maps.values():
                if span is None or span.q != 1 or abs(span.A) > 1:  # A < 0: a reversal
                    return True
                if any(h > lo for lo, h in zip(span.lo, span.hi)):
                    return True
    return False


@dataclass(frozen=True)
class LayerVerdict:
    """One layer's share of output units whose added field lies wholly outside the image."""

    node: str
    op: str
    output: str
    fraction: tuple[float, ...]  # per axis

    @property
    def unproductive(self) -> bool:
        return all(f > UNPRODUCTIVE_FRACTION for f in self.fraction)

    def unproductive_along(self, axis: int) -> bool:
        return self.fraction[axis] > UNPRODUCTIVE_FRACTION


def layer_verdicts(analysis: Analysis, regions: Mapping[str, tuple[AxisRegions, ...]]
                   ) -> list[LayerVerdict]:
    """Unproductive share of every layer (see module doc), per axis; not of the layers that only
    feed gates (an SE block's squeeze), which are on no end point's local field either."""
    mg = analysis.graph
    sizes = input_sizes(analysis)
    gating = analysis.gating_nodes()  # a gate's pooling mixes positions to gate them, not to see more
    out = []
    for lay in layers(analysis):
        if lay.index in gating:
            continue
        node = mg.nodes[lay.index]
        j = list(node.output).index(lay.output)
        ot = analysis.transfer(lay.index).outputs[j]
        if ot is None or lay.output not in regions:  # ot: never None, layers() skips those
            continue
        if not _grows(analysis.transfer(lay.index)):  # a 1x1 conv adds no field: none of it is outside
            out.append(LayerVerdict(lay.node, lay.op, lay.output, (0.0,) * len(sizes)))
            continue
        fractions = []
        for a, size in enumerate(sizes):
            n_out = regions[lay.output][a].n
            useless = np.ones(n_out, dtype=bool)
            for e in ot.edges:
                x = regions.get(node.input[e.slot])
                if x is None:
                    continue
                useless &= _reads_only_saturated(e.span(a), x[a], n_out, size)
            fractions.append(float(useless.mean()) if n_out else 0.0)
        out.append(LayerVerdict(lay.node, lay.op, lay.output, tuple(fractions)))
    return out


def _reads_only_saturated(span: Span | None, x: AxisRegions, n_out: int, size: int) -> np.ndarray:
    """Per output unit: every unit it reads that sees something is saturated (or none does)."""
    r = reads(span, x, n_out)  # the whole read range is saturated iff its narrowest bounds are
    sat = (r.inner_lo_max <= 0) & (r.inner_hi_min >= size - 1)
    return ~r.sees | sat


@dataclass(frozen=True)
class AxisCoverage:
    """Coverage of one end point along one axis."""

    axis: str
    size: int  # input size n
    r: int | None  # None: global
    covers: bool  # every unit's field contains the whole axis
    covered_by_some: bool  # at least one unit's field contains the whole axis
    border_layer: str | None  # first layer on a path here with r > n
    full_layer: str | None  # first layer on a path here whose every unit covers the axis

    @property
    def ratio(self) -> float | None:
        return None if self.r is None else self.r / self.size


@dataclass(frozen=True)
class Coverage:
    """Coverage of one end point, and the unproductive layers on its paths."""

    endpoint: str
    axes: tuple[AxisCoverage, ...]
    unproductive: tuple[LayerVerdict, ...]
    gates: tuple[str, ...] = ()  # gates on its paths: the numbers are its local field's


def coverage(analysis: Analysis, endpoint: str, regions: Mapping[str, tuple[AxisRegions, ...]],
             verdicts: Sequence[LayerVerdict]) -> Coverage:
    """Coverage of ``endpoint``: r vs n, border and full-coverage layers, unproductive layers."""
    ep = analysis[endpoint]
    upstream = set(analysis.fields_toward(endpoint))
    chain = [lay for lay in layers(analysis) if lay.output in upstream]
    sizes = input_sizes(analysis)
    axes = []
    for a, (name, size) in enumerate(zip(analysis.axis_names, sizes)):
        border = next((lay.node for lay in chain if _exceeds(analysis, lay.output, a, size)),
                      None)
        full = next((lay.node for lay in chain if lay.output in regions
                     and regions[lay.output][a].covers(size).all()), None)
        reg = regions.get(endpoint, (None,) * len(sizes))[a]
        if reg is not None and ep.units[a] is None:  # no unit axis: one unit holds every position
            reg = reg.as_one_unit()
        glob = ep.fields[a].is_global
        if reg is None:  # no exact regions: a global field sees every pixel, a local one none known
            hit = np.full(1, glob)
        else:  # a global field's units see what the positions it mixed see (maybe not the last
            hit = reg.covers(size)  # row) and, an attention output's, each its own pixels
        axes.append(AxisCoverage(name, size, ep.r[a], bool(hit.all()), bool(hit.any()), border, full))
    names = {lay.node for lay in chain}
    bad = tuple(v for v in verdicts if v.node in names and v.unproductive)
    return Coverage(endpoint, tuple(axes), bad, ep.gates)


def _r(analysis: Analysis, tensor: str, axis: int) -> int | None:
    return analysis[tensor].r[axis]


def _exceeds(analysis: Analysis, tensor: str, axis: int, size: int) -> bool:
    """True when the field of ``tensor`` along ``axis`` is global or wider than ``size``."""
    r = _r(analysis, tensor, axis)
    return r is None or r > size
