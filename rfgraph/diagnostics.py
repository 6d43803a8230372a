"""Architecture diagnostics on top of the TRF pass (definitions: docs/diagnostics.md).

* **Exact clipped fields** (``exact_regions``): per tensor, axis and unit, the input pixels it
  sees, with padding handled exactly (a unit reading only padded positions sees nothing):
  *outer* = union over paths (the field), *inner* = the narrowest path (max of the paths' first
  pixel, min of their last), which rfa-toolbox approximates by the minimum r over paths.
* **Coverage** per end point and axis: r against the input size n; the *border layer* (first
  layer on a path to the end point whose r exceeds n, as rfa-toolbox defines it); the first layer
  whose every unit sees the whole axis; and *unproductive layers*: layers for which more than
  half of the output units read only units whose every path already sees the whole axis (or
  read only padding), so all the field they add lies outside the image.
* **Input-size range**: square input sizes n for which the end points cover the whole input and
  no layer is unproductive (found by re-analysing the model at each size).
* **Object sizes**: the fraction of positions of an object of size o that lie wholly inside some
  unit's TRF (exact: from every unit's region), and whether o fits in the ERF extent.
* **Alignment fixes**: for each misaligned merge, the smallest pad/crop of one branch (in that
  branch's units) that makes every branch's centre equal (eqs. 12-13), verified by re-analysis.
* **ERF growth**: ERF/TRF ratio per end point and the layer after which the ERF stops growing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import budgets
from .analysis import Analysis, analyze
from .errors import RFGraphError
from .fields import Span
from .semantics import WINDOW_OPS
from .semantics.transfer import Layout
from .trf import output_transfers

UNPRODUCTIVE_FRACTION = 0.5  # a layer is unproductive when MORE than this share of units is
ERF_PLATEAU_TOL = 0.05  # the ERF "stops growing" once later layers add less than 5% to its size
_BIG = np.iinfo(np.int64).max // 4


# ---------------------------------------------------------------- exact clipped fields


@dataclass(frozen=True)
class AxisRegions:
    """Per unit along one axis: clipped outer region [lo, hi] and inner (narrowest path) region;
    a unit that sees nothing has lo > hi."""

    lo: np.ndarray
    hi: np.ndarray
    inner_lo: np.ndarray
    inner_hi: np.ndarray

    @staticmethod
    def identity(n: int) -> AxisRegions:
        u = np.arange(n, dtype=np.int64)
        return AxisRegions(u, u.copy(), u.copy(), u.copy())

    @property
    def n(self) -> int:
        return len(self.lo)

    @property
    def empty(self) -> np.ndarray:
        return self.lo > self.hi

    def covers(self, size: int) -> np.ndarray:
        """Per unit: the (union) field contains every pixel 0..size-1."""
        return (self.lo <= 0) & (self.hi >= size - 1)

    def as_one_unit(self) -> AxisRegions:
        """The regions of a tensor whose positions along this axis are folded into its features:
        one unit holding them all, which sees their union (``analysis._unit_layout``)."""
        seen = ~self.empty
        if not seen.any():
            return AxisRegions(self.lo[:1], self.hi[:1], self.inner_lo[:1], self.inner_hi[:1])
        def one(v: np.ndarray, pick: Any) -> np.ndarray:
            return np.array([pick(v[seen])], dtype=np.int64)
        return AxisRegions(one(self.lo, np.min), one(self.hi, np.max), one(self.inner_lo, np.min),
                           one(self.inner_hi, np.max))

    def saturated(self, size: int) -> np.ndarray:
        """Per unit: every path's field contains every pixel 0..size-1."""
        return (self.inner_lo <= 0) & (self.inner_hi >= size - 1) & ~self.empty

    def first_seen(self) -> np.ndarray:
        """Index of the first unit >= v that sees something (n if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), self.n)
        return np.minimum.accumulate(idx[::-1])[::-1]

    def last_seen(self) -> np.ndarray:
        """Index of the last unit <= v that sees something (-1 if none), for every v."""
        idx = np.where(~self.empty, np.arange(self.n), -1)
        return np.maximum.accumulate(idx)


def units_along(layout: Layout, axis: int) -> int:
    """Units of a tensor along input spatial ``axis`` (1 when the tensor does not index it)."""
    for parts in layout:
        for a, size in parts:
            if a == axis:
                return int(size)
    return 1


def span_bounds(span: Span | None, u: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last input unit read by each output unit ``u`` (None span: all of them)."""
    if span is None:
        return np.zeros_like(u), np.full_like(u, n_in - 1)
    m, t = np.divmod(u, span.q)
    return m * span.A + np.asarray(span.lo)[t], m * span.A + np.asarray(span.hi)[t]


def exact_regions(analysis: Analysis) -> dict[str, tuple[AxisRegions, ...]]:
    """Clipped outer and inner regions of every analysed tensor (one forward sweep; gates held
    constant, as the local fields are)."""
    mg, res = analysis.graph, analysis._pass
    sizes = input_sizes(analysis)
    out: dict[str, tuple[AxisRegions, ...]] = {
        analysis.input_name: tuple(AxisRegions.identity(n) for n in sizes)}
    for idx, tensor, ot in output_transfers(mg, res):
        node = mg.nodes[idx]
        found = [(e, out.get(node.input[e.slot])) for e in res.local_edges(mg.names[idx], ot.edges)]
        ins = [(e, x) for e, x in found if x is not None]
        if len(ins) < len(found):  # an input without regions
            continue
        axes = tuple(_axis_regions(units_along(ot.layout, a), [(e.span(a), x[a]) for e, x in ins])
                     for a in range(len(sizes)))
        if all(r.n > 0 for r in axes):
            out[tensor] = axes
    return out


def _axis_regions(n_out: int, edges: Sequence[tuple[Span | None, AxisRegions]]) -> AxisRegions:
    """Regions of one output along one axis from its edges (exact padding, see module doc)."""
    lo = np.full(n_out, _BIG)
    hi = np.full(n_out, -_BIG)
    ilo = np.full(n_out, -_BIG)
    ihi = np.full(n_out, _BIG)
    for span, x in edges:
        if x.n == 0:
            continue
        ok, f, last = _seen_range(span, x, n_out)
        lo = np.where(ok, np.minimum(lo, x.lo[f]), lo)
        hi = np.where(ok, np.maximum(hi, x.hi[last]), hi)
        ilo = np.where(ok, np.maximum(ilo, x.inner_lo[f]), ilo)
        ihi = np.where(ok, np.minimum(ihi, x.inner_hi[last]), ihi)
    dead = lo > hi
    ilo = np.where(dead, _BIG, ilo)
    ihi = np.where(dead, -_BIG, ihi)
    return AxisRegions(lo, hi, ilo, ihi)


def input_sizes(analysis: Analysis) -> tuple[int, ...]:
    """Input size along each spatial axis."""
    return tuple(int(analysis.input_shape[a]) for a in analysis.spatial_axes)


# ---------------------------------------------------------------- layers and coverage


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
    mg, res = analysis.graph, analysis._pass
    found = []
    for idx in res.order:
        transfer = res.transfers.get(idx)
        if transfer is None:
            continue
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
    """Unproductive share of every layer (see module doc), per axis."""
    mg, res = analysis.graph, analysis._pass
    sizes = input_sizes(analysis)
    out = []
    for lay in layers(analysis):
        node = mg.nodes[lay.index]
        j = list(node.output).index(lay.output)
        ot = res.transfers[lay.index].outputs[j]
        if ot is None or lay.output not in regions:  # ot: never None, layers() skips those
            continue
        if not _grows(res.transfers[lay.index]):  # a 1x1 conv adds no field: none of it is outside
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


def _seen_range(span: Span | None, x: AxisRegions, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output unit: whether the input units it reads include one that sees the image, and the
    first and last such unit (indices clipped into the input)."""
    u = np.arange(n_out, dtype=np.int64)
    v1, v2 = span_bounds(span, u, x.n)
    inside = (v1 <= x.n - 1) & (v2 >= 0)
    f = x.first_seen()[np.clip(v1, 0, x.n - 1)]
    last = x.last_seen()[np.clip(v2, 0, x.n - 1)]
    return inside & (f <= last), np.clip(f, 0, x.n - 1), np.clip(last, 0, x.n - 1)


def _reads_only_saturated(span: Span | None, x: AxisRegions, n_out: int, size: int) -> np.ndarray:
    """Per output unit: every unit it reads that sees something is saturated (or none does)."""
    sees, f, last = _seen_range(span, x, n_out)
    # inner bounds are monotone in the unit, so the whole read range is saturated iff its last
    # unit's inner_lo <= 0 and its first unit's inner_hi >= size - 1
    sat = (x.inner_lo[last] <= 0) & (x.inner_hi[f] >= size - 1)
    return ~sees | sat


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
        hit = reg.covers(size) if reg is not None else np.zeros(1, bool)
        glob = ep.fields[a].is_global
        axes.append(AxisCoverage(name, size, ep.r[a], glob or bool(hit.all()),
                                 glob or bool(hit.any()), border, full))
    names = {lay.node for lay in chain}
    bad = tuple(v for v in verdicts if v.node in names and v.unproductive)
    return Coverage(endpoint, tuple(axes), bad)


def _r(analysis: Analysis, tensor: str, axis: int) -> int | None:
    return analysis[tensor].r[axis]


def _exceeds(analysis: Analysis, tensor: str, axis: int, size: int) -> bool:
    """True when the field of ``tensor`` along ``axis`` is global or wider than ``size``."""
    r = _r(analysis, tensor, axis)
    return r is None or r > size


# ---------------------------------------------------------------- input-size range


@dataclass(frozen=True)
class SizePoint:
    """The verdicts at one square input size n."""

    size: int
    covers: tuple[bool, ...] | None  # per axis: in every end point some unit sees the whole
    # axis (None: the model cannot be analysed at this size)
    unproductive: tuple[int, ...] | None  # per axis, number of layers unproductive along it
    error: str = ""

    @property
    def good(self) -> bool:
        return (self.covers is not None and all(self.covers)
                and self.unproductive is not None and not any(self.unproductive))


@dataclass(frozen=True)
class SizeRange:
    """Square input sizes (scanned on a grid) where some unit of every end point sees the whole
    input and no layer is unproductive; ``intervals`` are the maximal runs of good grid sizes."""

    points: tuple[SizePoint, ...]
    step: int

    @property
    def intervals(self) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for p in self.points:
            if p.good and runs and runs[-1][1] + self.step == p.size:
                runs[-1] = (runs[-1][0], p.size)
            elif p.good:
                runs.append((p.size, p.size))
        return runs


def size_range(reanalyse: Callable[[int], Analysis], endpoints: Sequence[str],
               sizes: Iterable[int], step: int, progress: bool = False) -> SizeRange:
    """Evaluate coverage and unproductive layers at every size (failures recorded, not raised);
    ``progress`` shows a bar on stderr (one re-analysis per size)."""
    import sys

    from tqdm import tqdm

    points = []
    for n in tqdm(list(sizes), desc="rfgraph: input-size scan", unit="size", file=sys.stderr,
                  disable=not progress, leave=False):
        try:
            a = reanalyse(n)
            regions = exact_regions(a)
            verdicts = layer_verdicts(a, regions)
            covers = tuple(all(_covers_axis(a, e, ax, regions) for e in endpoints)
                           for ax in range(len(a.spatial_axes)))
            unprod = tuple(sum(v.unproductive_along(ax) for v in verdicts)
                           for ax in range(len(a.spatial_axes)))
            points.append(SizePoint(n, covers, unprod))
        except RFGraphError as exc:
            points.append(SizePoint(n, None, None, str(exc)))
    return SizeRange(tuple(points), step)


def _covers_axis(a: Analysis, endpoint: str, axis: int, regions: Mapping[str, tuple[AxisRegions, ...]]) -> bool:
    if endpoint not in a.endpoints:
        raise RFGraphError(f"end point '{endpoint}' not analysed at this size")
    ep = a[endpoint]
    size = input_sizes(a)[axis]
    if ep.fields[axis].is_global:
        return True
    if endpoint not in regions:  # exact_regions keeps only tensors with units along every axis
        raise RFGraphError(f"end point '{endpoint}' has no units at this size (shape "
                           f"{list(ep.shape)})")
    return bool(regions[endpoint][axis].covers(size).any())


def default_size_grid(analysis: Analysis, endpoints: Sequence[str], step: int | None = None,
                      largest: int | None = None, max_points: int = 64) -> tuple[list[int], int]:
    """Sizes to scan: multiples of ``step`` (default: the largest integer stride S of the end
    points) up to ``largest`` (default: twice the largest r, at least the current size)."""
    strides = [abs(int(s)) for e in endpoints for s in analysis[e].S
               if s is not None and Fraction(s).denominator == 1]
    step = step or max(strides + [1])
    rs = [r for e in endpoints for r in analysis[e].r if r is not None]
    top = largest or max([2 * max(rs + [1]), *input_sizes(analysis)])
    while top // step > max_points:
        step *= 2
    return list(range(step, top + 1, step)), step


# ---------------------------------------------------------------- object sizes


@dataclass(frozen=True)
class ObjectFit:
    """Which placements of an object of ``size`` px a head's TRF (and ERF) can contain."""

    endpoint: str
    size: int
    trf_fraction: tuple[float, ...]  # per axis: share of positions inside some unit's TRF
    erf_extent: tuple[int, ...] | None = None  # per axis, Luo ERF extent (None: not computed)
    input_size: tuple[int, ...] = ()

    @property
    def trf_verdict(self) -> str:
        if any(self.size > n for n in self.input_size):
            return "larger than the input"
        p = math.prod(self.trf_fraction)
        if p >= 1.0:
            return "inside a unit's TRF at every position"
        if p <= 0.0:
            return "larger than every unit's TRF"
        return f"inside a unit's TRF at {100 * p:.0f}% of positions"

    @property
    def erf_verdict(self) -> str:
        if self.erf_extent is None:
            return "- (needs --erf)"
        return ("within the ERF" if all(self.size <= e for e in self.erf_extent)
                else "larger than the ERF")


def contained_fraction(regions: np.ndarray, size: int, n: int) -> float:
    """Share of the n - size + 1 placements [x, x+size-1] of an object lying wholly inside one of
    the intervals ``regions`` (k, 2) (exact; 0 when the object is larger than the input)."""
    if size > n or len(regions) == 0:
        return 0.0
    order = np.argsort(regions[:, 0], kind="stable")
    lo, hi = regions[order, 0], np.maximum.accumulate(regions[order, 1])
    x = np.arange(n - size + 1)
    k = np.searchsorted(lo, x, side="right") - 1  # last interval starting at or before x
    ok = (k >= 0) & (hi[np.clip(k, 0, None)] >= x + size - 1)
    return float(ok.mean())


def object_fit(analysis: Analysis, endpoint: str, size: int,
               erf_extent: Sequence[int] | None = None) -> ObjectFit:
    """TRF containment of an object of ``size`` px along every axis of ``endpoint``."""
    ep = analysis[endpoint]
    fractions = []
    for a, n in enumerate(input_sizes(analysis)):
        if ep.fields[a].is_global:
            fractions.append(1.0 if size <= n else 0.0)
        else:
            fractions.append(contained_fraction(ep.regions(a), size, n))
    return ObjectFit(endpoint, size, tuple(fractions),
                     None if erf_extent is None else tuple(int(e) for e in erf_extent),
                     input_sizes(analysis))


# ---------------------------------------------------------------- alignment fixes


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
        return "; ".join(parts) if parts else "already aligned"


def alignment_fixes(analysis: Analysis) -> list[AlignmentFix]:
    """One fix per misaligned (merge, axis), choosing the shift that moves the fewest units."""
    fixes = []
    for m in analysis.misaligned:
        fixes.append(_fix(analysis, m))
    return fixes


def _fix(analysis: Analysis, m: Any) -> AlignmentFix:
    axis = analysis.axis_names[m.axis]
    tensors = tuple(b.tensor for b in m.branches)
    centres = [Fraction(b.centre) for b in m.branches]
    offset = max(centres) - min(centres)
    strides = {Fraction(b.S) for b in m.branches}
    if len(strides) > 1:
        return AlignmentFix(m.node, m.op, axis, m.axis, tensors, {}, offset, False,
                            f"branch strides differ ({', '.join(str(b.S) for b in m.branches)}): "
                            f"no pad or crop aligns them; resample one branch")
    S = strides.pop()
    fields = [analysis[t].fields[m.axis] for t in tensors]
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
        periodic = any(f.spans[0].q > 1 for f in fields)
        why = ("the branch centres differ from unit to unit (upsampling phases): no single shift "
               "aligns every unit; use an upsampling whose units are centred consistently"
               if periodic else
               f"centres differ by {offset} px, not a multiple of the stride {S}: no pad or crop at "
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
    for (node_name, tensor), per_axis in by_branch.items():
        if node_names is not None and node_name in node_names:
            node = g.node[list(node_names).index(node_name)]
        else:
            node = next((n for n in g.node if n.name == node_name), None)
        if node is None:
            raise RFGraphError(f"cannot apply the fix: no node named '{node_name}' in the model")
        rank = max(spatial_axes) + 1
        begin, end = [0] * rank, [0] * rank
        for ax, (b, e) in per_axis.items():
            begin[spatial_axes[ax]], end[spatial_axes[ax]] = b, e
        new = _fresh(f"{tensor}_aligned", names)
        pads_name = _fresh(f"{tensor}_align_pads", names)
        g.initializer.append(numpy_helper.from_array(np.array(begin + end, np.int64), pads_name))
        pos = list(g.node).index(node)
        g.node.insert(pos, helper.make_node("Pad", [tensor, pads_name], [new], name=new))
        for i, t in enumerate(node.input):
            if t == tensor:
                node.input[i] = new
    return out


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


# ---------------------------------------------------------------- ERF growth


@dataclass(frozen=True)
class ERFPoint:
    """ERF of the centre unit of one tensor: Luo size, extent, TRF size and ratio."""

    tensor: str
    erf_size: float
    erf_extent: tuple[int, ...]
    trf: tuple[int, ...] | None
    ratio: float | None


@dataclass(frozen=True)
class ERFGrowth:
    """ERF along the layers leading to an end point, and where it stops growing."""

    endpoint: str
    points: tuple[ERFPoint, ...]
    plateau: str | None  # first tensor after which the ERF grows by <= ERF_PLATEAU_TOL
    error: str = ""

    @property
    def final(self) -> ERFPoint | None:
        return self.points[-1] if self.points else None


def plateau_index(sizes: Sequence[float], tol: float = ERF_PLATEAU_TOL) -> int | None:
    """First i such that every later size is at most (1 + tol) x sizes[i] (None if empty)."""
    if not sizes:
        return None
    for i, s in enumerate(sizes):
        if all(t <= (1 + tol) * s for t in sizes[i + 1:]):
            return i
    return len(sizes) - 1  # pragma: no cover - the last index always qualifies


def erf_growth(model: Any, analysis: Analysis, endpoint: str, max_layers: int = 8,
               runs: int = 8, compute: Callable[..., Any] | None = None, **erf_options: Any
               ) -> ERFGrowth:
    """ERF (``rfgraph.erf.compute_erf``) of up to ``max_layers`` layer outputs leading to
    ``endpoint`` (evenly spaced, the end point last), and the plateau layer."""
    if compute is None:
        from .erf import compute_erf

        compute = compute_erf
    upstream = set(analysis.fields_toward(endpoint))
    chain = [lay.output for lay in layers(analysis) if lay.output in upstream
             and not analysis[lay.output].is_global and lay.output != endpoint]
    if len(chain) > max_layers - 1:
        keep = np.linspace(0, len(chain) - 1, max_layers - 1).round().astype(int)
        chain = [chain[i] for i in sorted(set(keep.tolist()))]
    chain.append(endpoint)
    points = []
    try:
        for tensor in chain:
            if analysis[tensor].is_global:
                continue
            shape = (1,) + tuple(1 if d is None else int(d) for d in analysis.input_shape[1:])
            res = compute(model, tensor, input_shape=shape, runs=runs, **erf_options)
            m = res.metrics
            points.append(ERFPoint(tensor, float(m.erf_size), tuple(m.erf_extent),
                                   tuple(m.trf_size) if m.trf_size else None, m.erf_trf_ratio))
    except Exception as exc:  # noqa: BLE001 - the ERF engine (onnxruntime) may fail on any op
        return ERFGrowth(endpoint, tuple(points), None, f"ERF unavailable: {exc}".split("\n")[0])
    i = plateau_index([p.erf_size for p in points])
    return ERFGrowth(endpoint, tuple(points), None if i is None else points[i].tensor)


# ---------------------------------------------------------------- everything at once


@dataclass
class Diagnosis:
    """Every diagnostic of one model (see ``diagnose``)."""

    analysis: Analysis
    endpoints: list[str]
    coverage: list[Coverage]
    verdicts: list[LayerVerdict]
    sizes: SizeRange | None
    objects: list[ObjectFit]
    fixes: list[AlignmentFix]
    erf: list[ERFGrowth] = field(default_factory=list)


def check_counts(**counts: int | None) -> None:
    """Sizes, steps and counts must be positive when given (the option named in the error),
    checked before any analysis."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise RFGraphError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")


def diagnose(model: Any, input_shape: Mapping[str, Sequence[int]] | None = None, *,
             endpoints: Sequence[str] | None = None, object_sizes: Sequence[int] = (),
             scan_sizes: bool = True, size_step: int | None = None, size_max: int | None = None,
             erf: bool = False, erf_runs: int = 8, erf_layers: int = 8,
             erf_options: Mapping[str, Any] | None = None, rules: Any = None,
             assume_pointwise: bool = False, input_name: str | None = None,
             layout: str | None = None, fill: Mapping[str, float] | None = None,
             progress: bool = False) -> Diagnosis:
    """Run every diagnostic on ``model`` (path, bytes, ModelProto or zoo:NAME); ``progress``
    shows the input-size scan's progress on stderr."""
    check_counts(size_step=size_step, size_max=size_max, erf_runs=erf_runs, erf_layers=erf_layers)
    if size_max is not None:
        budgets.SCAN_SIZE.check(size_max, f"--size-max {size_max}", "scan a smaller range")
    for size in object_sizes:
        check_counts(object_size=size)
    opts = {"input_name": input_name, "layout": layout, "rules": rules,
            "assume_pointwise": assume_pointwise, "fill": fill}
    a = analyze(model, input_shape, **opts)
    names = list(endpoints) if endpoints else list(a.default_endpoints()
                                                      or list(a.endpoints)[-1:])
    for n in names:
        a[n]
    local = [n for n in names if not a[n].is_global and n != a.input_name]
    regions = exact_regions(a)
    verdicts = layer_verdicts(a, regions)
    cov = [coverage(a, n, regions, verdicts) for n in names]
    sizes = None
    if scan_sizes and local:
        grid, step = default_size_grid(a, local, size_step, size_max)
        free = without_static_shapes(model)
        sizes = size_range(lambda n: analyze(free, _square(a, n), **opts), local, grid, step,
                           progress)
    growth = []
    extents: dict[str, tuple[int, ...]] = {}
    if erf:
        for n in local:
            g = erf_growth(model, a, n, erf_layers, erf_runs, **{**opts, **(erf_options or {})})
            growth.append(g)
            if g.final is not None and g.final.tensor == n:
                extents[n] = g.final.erf_extent
    objects = [object_fit(a, n, o, extents.get(n)) for n in local for o in object_sizes]
    fixes = alignment_fixes(a)
    if fixes:
        _verify(model, a, fixes, input_shape, opts)
    return Diagnosis(a, names, cov, verdicts, sizes, objects, fixes, growth)


def without_static_shapes(model: Any) -> onnx.ModelProto:
    """A copy whose intermediate and output shapes are left to shape inference, so the model can
    be re-analysed at another input size (files often store the shapes of one size)."""
    from .onnx_import import forget_stored_shapes, read_model

    out = onnx.ModelProto()
    out.CopyFrom(read_model(model))
    forget_stored_shapes(out)
    return out


def _square(a: Analysis, n: int) -> dict[str, tuple[int, ...]]:
    """The analysed input's shape with every spatial axis set to n."""
    shape = list(a.input_shape)
    for ax in a.spatial_axes:
        shape[ax] = n
    return {a.input_name: tuple(int(d) if d is not None else 1 for d in shape)}


def _verify(model: Any, a: Analysis, fixes: list[AlignmentFix],
            input_shape: Mapping[str, Sequence[int]] | None, opts: dict[str, Any]) -> None:
    """Apply all fixable fixes to the model and re-analyse; record per fix whether it holds."""
    ok = [f for f in fixes if f.fixable]
    if not ok:
        return
    from .onnx_import import load_model

    try:
        fixed = apply_fixes(load_model(model, input_shape), ok, a.spatial_axes, a.graph.names)
        b = analyze(fixed, None, **opts)
    except RFGraphError:
        return
    bad = {(m.node, m.axis) for m in b.misaligned}
    for i, f in enumerate(fixes):
        if f.fixable:
            fixes[i] = AlignmentFix(f.node, f.op, f.axis, f.axis_index, f.branches, f.pads,
                                    f.offset, True, f.reason, (f.node, f.axis_index) not in bad)


__all__ = ["AlignmentFix", "AxisCoverage", "AxisRegions", "Coverage", "Diagnosis", "ERFGrowth",
           "LayerVerdict", "ObjectFit", "SizeRange", "alignment_fixes", "apply_fixes",
           "contained_fraction", "coverage", "diagnose", "erf_growth", "exact_regions",
           "layer_verdicts", "layers", "object_fit", "plateau_index", "size_range"]
