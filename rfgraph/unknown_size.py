"""Receptive fields at an unknown input size (the receptive_field library's 'None' column, made exact).

r and S do not depend on the input size; P does only where a begin padding does (TF 'SAME' with
stride > 1: the padding of a layer whose output stride is S_out depends on the size n mod S_out,
since every tensor of stride S_t has floor((n + c) / S_t) units).  So P is periodic in n with
period M, the lcm of the strides, and the analysis at one size per residue of n modulo M gives
every value P takes and the sizes that give each.

The sizes are analysed along the diagonal (every axis at residue k mod its period, k = 0..M-1),
from a multiple of M at least twice M and no smaller than the smallest valid size, plus one check
size a period further with the axes at different residues (P must repeat, and depend on its own
axis only).  Where r or S differ between sizes the geometry of an op depends on the size (Resize
to fixed sizes, adaptive pooling, a Reshape to a fixed grid): the analysis is refused naming the
op, and a size is asked for, as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

from .analysis import Analysis, EndPoint
from .errors import DynamicShapeError, InputSizeError
from .onnx_import import attributes, read_model, set_input_shapes, shapes_only, smallest_input_size
from .semantics import BROADCAST_OPS

MAX_PERIOD = 256  # largest stride product sampled (one analysis per residue)
MIN_PERIODS = 4  # the sizes analysed start at this many periods or more (no map shrunk to 1 unit)
FIRST_SIZES = (256, 512, 1024, 2048)  # where the strides are read (not where maps shrink to one unit)


@dataclass(frozen=True)
class PBySize:
    """Effective padding P along one axis where it depends on the input size n along that axis:
    ``by_residue[k]`` is P at every size n = k (mod ``period``), from the smallest valid size on;
    ``ops`` are the nodes on paths into the tensor whose padding depends on the size; None at the
    residues where the model cannot run (``UnknownSize.runs_at``)."""

    period: int
    by_residue: tuple[int | None, ...]
    ops: tuple[str, ...]

    @staticmethod
    def of(by_residue: Sequence[int | None], ops: Sequence[str]) -> PBySize:
        """The values at sizes 0..M-1 mod M, reduced to their shortest period."""
        seq = tuple(by_residue)
        period = next(d for d in range(1, len(seq) + 1)
                      if len(seq) % d == 0 and all(v == seq[i % d] for i, v in enumerate(seq)))
        return PBySize(period, seq[:period], tuple(ops))

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(sorted({v for v in self.by_residue if v is not None}))

    def residues(self, value: int) -> tuple[int, ...]:
        """The sizes mod ``period`` at which P is ``value``."""
        return tuple(k for k, v in enumerate(self.by_residue) if v == value)

    def __str__(self) -> str:
        return "|".join(map(str, self.values))

    def describe(self) -> str:
        """'3 at n = 0, 2 (mod 4); 4 at n = 1, 3 (mod 4)'."""
        return "; ".join(f"{v} at n = {', '.join(map(str, self.residues(v)))} (mod {self.period})"
                         for v in self.values)

    def as_json(self) -> dict[str, object]:
        return {"values": list(self.values), "modulo": self.period,
                "residues": [list(self.residues(v)) for v in self.values], "ops": list(self.ops)}


@dataclass(frozen=True)
class UnknownSize:
    """How an analysis at unknown input size was made: the period of P along each axis (the lcm
    of the strides), the spatial sizes analysed (the last one the check), and the nodes whose
    padding depends on the size.  ``runs_at``: the residues k (every axis at a size = k modulo
    its period) at which the model can run, when not all (the maps of a merge differ in size
    elsewhere: ``cannot_run`` says where)."""

    period: tuple[int, ...]
    sizes: tuple[tuple[int, ...], ...]
    ops: tuple[str, ...]
    runs_at: tuple[int, ...] | None = None
    cannot_run: str = ""
    only_residue_0: bool = False  # strides multiply past MAX_PERIOD and no padding depends on the size
    free_axes: tuple[int, ...] = ()  # the input axes of unknown size (the other spatial axes kept theirs)


Runner = Callable[[Mapping[str, Sequence[int]]], Analysis]


def analyze_unknown_size(run: Runner, model: object, name: str,
                         shape: Sequence[int | None], spatial: Sequence[int],
                         user_shapes: Mapping[str, Sequence[int]] | None,
                         fill: Mapping[str, float] | None) -> Analysis:
    """The analysis of input ``name`` whose ``spatial`` axes have no size (those of them with one,
    a spectrogram's mel bins beside its unknown time, keep it): ``run`` analyses the model at a
    given input shape; r and S checked equal at every size, P merged per residue."""
    free = [a for a in spatial if shape[a] is None]
    concrete = _concrete(name, shape, spatial)
    smallest = _smallest_size(model, name, concrete, free, user_shapes, fill)
    first = _first_that_runs(run, name, smallest, free)
    period = tuple(p if a in free else 1 for a, p in zip(spatial, _period(first)))  # a known size stays
    few = max(period) > MAX_PERIOD  # too many residues to analyse: only where P cannot depend on them
    if few:
        _refuse_size_dependent(first, period)
    base = [p * max(MIN_PERIODS, -(-smallest[a] // p)) if a in free else smallest[a]
            for a, p in zip(spatial, period)]
    sizes = [tuple(b + k % p for b, p in zip(base, period)) for k in range(1 if few else max(period))]
    tried = [_attempt(run, name, _at(smallest, spatial, s)) for s in sizes]
    why = [_why_not(t) for t in tried]
    runs = [k for k, w in enumerate(why) if w is None]
    if not runs:
        raise refusal(name, concrete, free, f"the model runs at none of the sizes "
                      f"{_size_text(sizes[0])} to {_size_text(sizes[-1])}: {why[0]}")
    samples = [t if w is None and not isinstance(t, str) else None for t, w in zip(tried, why)]
    further = [p if a in free else 0 for a, p in zip(spatial, period)]  # a period further, on the free axes
    check = tuple(b + f + runs[j % len(runs)] % p for j, (b, f, p) in enumerate(zip(base, further, period)))
    checked = _attempt(run, name, _at(smallest, spatial, check))
    if _why_not(checked):  # the residues that run depend on each other: the same on all axes
        check = tuple(b + f + runs[0] % p for b, f, p in zip(base, further, period))
        checked = _attempt(run, name, _at(smallest, spatial, check))
    if isinstance(checked, str) or _why_not(checked):
        raise refusal(name, concrete, free, f"the model runs at size {_size_text(sizes[runs[0]])} but not "
                                            f"a period further, at {_size_text(check)}: {_why_not(checked)}")
    valid = [s for s in samples if s is not None]
    _check_geometry([*valid, checked], [*(sizes[k] for k in runs), check])
    _check_period(samples, checked, check, base, period)
    first_bad = next((w for w in why if w), "")
    how = UnknownSize(tuple(period), (*(sizes[k] for k in runs), check), (),
                      tuple(runs) if len(runs) < len(sizes) else None, first_bad, few, tuple(free))
    return _merged(samples, how, checked)


def _first_that_runs(run: Runner, name: str, smallest: tuple[int, ...], spatial: Sequence[int]) -> Analysis:
    """The analysis at the first of ``FIRST_SIZES`` (or the smallest size, when larger) along the
    ``spatial`` axes of unknown size where the model runs: the strides are read off it (at a size
    where maps shrink to one unit a stride can be lost; a model whose merges agree only at
    multiples of 32 runs at few sizes)."""
    low = max(smallest[a] for a in spatial)
    sizes = [_at(smallest, spatial, (n,) * len(spatial)) for n in FIRST_SIZES if n > low] or [smallest]
    why = ""
    for shape in sizes:
        tried = _attempt(run, name, shape)
        why = _why_not(tried) or ""
        if not isinstance(tried, str) and not why:
            return tried
    raise refusal(name, smallest, spatial, f"the model runs at none of the sizes {_size_text(sizes[0])} to "
                                           f"{_size_text(sizes[-1])}: {why}")


def _attempt(run: Runner, name: str, shape: tuple[int, ...]) -> Analysis | str:
    """The analysis at this input shape, or why the model cannot run at it (onnxruntime's
    refusal when the loader ran the model to learn shapes)."""
    try:
        return run({name: shape})
    except InputSizeError as exc:
        if exc.vanished:
            raise
        return str(exc)


def _why_not(tried: Analysis | str) -> str | None:
    """Why the model cannot run at the size of an attempt, or None when it can."""
    return tried if isinstance(tried, str) else _cannot_run(tried)


def _cannot_run(analysis: Analysis) -> str | None:
    """Why the model cannot run at this analysis's input size, or None: inputs of an elementwise
    op (Add, Mul...) or a Concat whose known sizes neither match nor broadcast (ONNX's
    multidirectional broadcasting; a Concat's inputs agree off its axis)."""
    mg = analysis.graph
    for idx, node in enumerate(mg.nodes):
        if node.op_type not in BROADCAST_OPS - {"Expand"} and node.op_type != "Concat":
            continue
        shapes = [mg.shapes.get(t) for t in node.input if t]
        known = [sh for sh in shapes if sh is not None]
        if len(known) < 2:
            continue
        rank = max(len(sh) for sh in known)
        concat_axis = attributes(node).get("axis", 0) % rank if node.op_type == "Concat" else None
        for t in range(rank):
            dims = {sh[t - rank + len(sh)] for sh in known if t - rank + len(sh) >= 0} - {None}
            if t != concat_axis and len(dims - ({1} if concat_axis is None else set())) > 1:
                return (f"node '{mg.names[idx]}' ({node.op_type}) takes maps of shapes "
                        f"{' and '.join(str(list(sh)) for sh in known)}")
    return None


def _concrete(name: str, shape: Sequence[int | None], spatial: Sequence[int]) -> tuple[int, ...]:
    """The shape with batch 1 where unknown and unknown spatial sizes 1; other unknown dims refused."""
    other = [a for a, d in enumerate(shape) if d is None and a not in spatial and a != 0]
    if other:
        raise refusal(name, shape, [a for a in spatial if shape[a] is None], f"so do other axes ({other}): "
                                                                            f"set every axis")
    return tuple(1 if d is None else d for d in shape)


def _at(shape: Sequence[int], spatial: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with its spatial axes set to ``sizes``."""
    where = dict(zip(spatial, sizes))
    return tuple(where.get(a, d) for a, d in enumerate(shape))


def _smallest_size(model: object, name: str, shape: tuple[int, ...], spatial: Sequence[int],
                   user_shapes: Mapping[str, Sequence[int]] | None,
                   fill: Mapping[str, float] | None) -> tuple[int, ...]:
    """The input shape of smallest spatial sizes at which no map vanishes."""
    base = shapes_only(read_model(model))  # type: ignore[arg-type]
    set_input_shapes(base, {k: v for k, v in (user_shapes or {}).items() if k not in ("", name)})
    found = smallest_input_size(base, name, shape, spatial, fill)
    if found is None:
        raise refusal(name, shape, spatial, "no input size up to the search limit leaves every map a unit")
    return found


def _period(first: Analysis) -> tuple[int, ...]:
    """Per axis, the lcm of the strides (numerators of S) of every tensor: P repeats with it."""
    out = []
    for axis in range(len(first.spatial_axes)):
        strides = {abs(Fraction(sp.A, sp.q).numerator) for ep in first.endpoints.values()
                   for sp in ep.fields[axis].spans} - {0}
        period = math.lcm(*strides) if strides else 1
        out.append(max(period, 1))
    return tuple(out)


def _refuse_size_dependent(first: Analysis, period: Sequence[int]) -> None:
    """Strides multiplying past MAX_PERIOD: P is analysed at one residue only, which is exact only
    when no node's padding depends on the size (explicit pads); else refused, naming that node."""
    dependent = sorted({ep.size_dependent for ep in first.endpoints.values() if ep.size_dependent})
    if dependent:
        axis = max(range(len(period)), key=lambda a: period[a])
        raise _refused_at(first, f"the strides along {first.axis_names[axis]} multiply to {period[axis]}, more "
                                 f"sizes than the {MAX_PERIOD} rfgraph analyses for an unknown size, and the "
                                 f"padding of '{dependent[0]}' depends on the size")


def _field_key(ep: EndPoint, axis: int) -> tuple[object, ...]:
    """What must not depend on the size: global or not, r and S."""
    return (ep.fields[axis].global_at, ep.r[axis], ep.S[axis])


def _check_geometry(samples: Sequence[Analysis], sizes: Sequence[tuple[int, ...]]) -> None:
    """Refuse, naming the first op, where r, S or the tensors analysed differ between sizes."""
    first = samples[0]
    for sample, size in zip(samples[1:], sizes[1:]):
        if list(sample.endpoints) != list(first.endpoints) or \
                [s.node for s in sample.stops] != [s.node for s in first.stops]:
            lost = next((t for t in first.endpoints if t not in sample.endpoints), None)
            raise _geometry_error(first, lost, f"the tensors analysed differ at sizes {_size_text(sizes[0])} "
                                                  f"and {_size_text(size)}")
        for tensor, ep in first.endpoints.items():
            other = sample.endpoints[tensor]
            for axis in range(len(ep.fields)):
                if _field_key(ep, axis) != _field_key(other, axis):
                    what = (f"r, S along {first.axis_names[axis]} are {ep.r[axis]}, {ep.S[axis]} at "
                            f"size {_size_text(sizes[0])} and {other.r[axis]}, {other.S[axis]} at "
                            f"size {_size_text(size)}")
                    raise _geometry_error(first, tensor, what)


def _size_text(size: Sequence[int]) -> str:
    return "x".join(map(str, size))


def _geometry_error(first: Analysis, tensor: str | None, what: str) -> DynamicShapeError:
    """The refusal: the op whose geometry depends on the input size, and how to set one."""
    ep = first.endpoints.get(tensor) if tensor else None
    where = f" at node '{ep.node}' ({ep.op}), tensor '{tensor}'" if ep is not None else ""
    return _refused_at(first, f"the receptive field depends on the input size{where}: {what} (an op "
                              f"whose geometry depends on the size: a Resize to a fixed size, adaptive "
                              f"pooling, a Reshape to a fixed grid)")


def _check_period(samples: Sequence[Analysis | None], check: Analysis, size: Sequence[int],
                  base: Sequence[int], period: Sequence[int]) -> None:
    """P at the check size equals P at the diagonal size of the same residue, axis by axis."""
    for tensor, ep in check.endpoints.items():
        for axis, (n, b, p) in enumerate(zip(size, base, period)):
            if ep.fields[axis].is_global:
                continue
            k = (n - b) % p
            at = samples[k]
            if at is None:
                continue
            want = at.endpoints[tensor].P[axis]
            if ep.P[axis] != want:
                raise _refused_at(check, f"P of '{tensor}' along {check.axis_names[axis]} is {ep.P[axis]} at "
                                         f"size {_size_text(size)} but {want} at size "
                                         f"{_size_text([at.input_shape[a] for a in check.spatial_axes])} "
                                         f"(same residue mod {p}): it does not repeat with the strides "
                                         f"at node '{ep.node}' ({ep.op})")


def _merged(samples: Sequence[Analysis | None], how: UnknownSize, checked: Analysis) -> Analysis:
    """The analysis at the first size the model runs at, with P per residue where it varies,
    sizes unknown (``samples`` by residue, None where the model cannot run; ``checked``: the
    analysis a period further, whose tensor sizes differ from the samples' where they vary)."""
    valid = [s for s in samples if s is not None]
    first = valid[0]
    # axis -> residue -> end points (None where the model cannot run at any size of that residue)
    per_axis = [[_at_residue(samples, j, p) for j in range(p)] for p in how.period]
    sources = _size_dependent_nodes(first, per_axis)
    deps = _dependencies(first, sources)
    endpoints = {}
    for tensor, ep in first.endpoints.items():
        p_by = []
        for axis, at in enumerate(per_axis):
            values = [None if eps is None or eps[tensor].fields[axis].is_global else eps[tensor].P[axis]
                      for eps in at]
            varies = len(set(values) - {None}) > 1
            p_by.append(PBySize.of(values, deps[tensor][axis]) if varies else None)  # type: ignore[arg-type]
        ops = sorted({o for pb in p_by if pb for o in pb.ops}, key=first.graph.names.index)
        misaligned = next((s.endpoints[tensor].misaligned_at for s in valid
                           if s.endpoints[tensor].misaligned_at), None)
        endpoints[tensor] = dataclasses.replace(
            ep, shape=_common_shape([s.endpoints[tensor].shape for s in [*valid, checked]]),
            P_at_unknown_size=tuple(p_by), size_dependent=ops[0] if ops else None,
            misaligned_at=misaligned)
    merges = _merges(valid)
    # None along the spatial axes: typed as sizes for the commands that need one (they call
    # ``require_size`` first)
    shape = cast("tuple[int, ...]", tuple(None if a in how.free_axes else d
                                          for a, d in enumerate(first.input_shape)))
    all_ops = sorted(sources, key=first.graph.names.index)
    return dataclasses.replace(first, endpoints=endpoints, merges=merges, input_shape=shape,
                               unknown_size=dataclasses.replace(how, ops=tuple(all_ops)))


def _at_residue(samples: Sequence[Analysis | None], j: int, period: int) -> Mapping[str, EndPoint] | None:
    """End points at the first size analysed of residue j modulo ``period`` where the model runs."""
    return next((s.endpoints for k, s in enumerate(samples) if k % period == j and s is not None), None)


def _common_shape(shapes: Sequence[tuple[int | None, ...]]) -> tuple[int | None, ...]:
    """Dims equal at every size, None where they differ."""
    return tuple(d[0] if len(set(d)) == 1 else None for d in zip(*shapes))


def _merges(samples: Sequence[Analysis]) -> list:
    """The merges at the first size, each replaced by its verdict at a size where it is
    misaligned, if any (alignment may depend on the size's residue)."""
    out = {(m.node, m.axis): m for m in samples[0].merges}
    for s in samples[1:]:
        for m in s.misaligned:
            if out[(m.node, m.axis)].aligned:
                out[(m.node, m.axis)] = m
    return list(out.values())


def _size_dependent_nodes(first: Analysis, per_axis: Sequence[Sequence[Mapping[str, EndPoint] | None]]
                          ) -> dict[str, set[int]]:
    """Node -> the axes along which its own padding varies with the size: P of its output minus
    the largest P of its inputs (a window adds p*S_in; a merge takes the largest) is not constant."""
    mg = first.graph
    out: dict[str, set[int]] = {}
    for idx in first.node_order:
        ins = [t for t in mg.node_inputs[idx] if t in first.endpoints]
        for tensor in mg.node_outputs[idx]:
            if tensor not in first.endpoints or not ins:
                continue
            for axis, at in enumerate(per_axis):
                deltas = {_local_padding(eps, tensor, ins, axis) for eps in at if eps is not None}
                if len(deltas - {None}) > 1:
                    out.setdefault(mg.names[idx], set()).add(axis)
    return out


def _local_padding(eps: Mapping[str, EndPoint], tensor: str, ins: Sequence[str], axis: int) -> int | None:
    """P of ``tensor`` minus the largest P of its local inputs (None where global)."""
    if eps[tensor].fields[axis].is_global:
        return None
    before = [eps[t].fields[axis].padding for t in ins if not eps[t].fields[axis].is_global]
    return eps[tensor].fields[axis].padding - max(before, default=0)


def _dependencies(first: Analysis, sources: Mapping[str, set[int]]) -> dict[str, list[tuple[str, ...]]]:
    """Tensor -> per axis, the size-dependent nodes on the paths into it, in graph order."""
    mg = first.graph
    n_axes = len(first.spatial_axes)
    deps: dict[str, list[set[str]]] = {first.input_name: [set() for _ in range(n_axes)]}
    for idx in first.node_order:
        ins = [deps[t] for t in mg.node_inputs[idx] if t in deps]
        own = sources.get(mg.names[idx], set())
        here = [set().union(*(d[a] for d in ins)) | ({mg.names[idx]} if a in own else set())
                for a in range(n_axes)]
        for tensor in mg.node_outputs[idx]:
            if tensor in first.endpoints:
                deps[tensor] = here
    rank = {n: i for i, n in enumerate(mg.names)}
    return {t: [tuple(sorted(s, key=rank.__getitem__)) for s in d] for t, d in deps.items()}


def require_size(analysis: Analysis, what: str) -> None:
    """Refuse, in one line, a command that needs a concrete input size at an unknown one."""
    if analysis.unknown_size is not None:
        raise _refused_at(analysis, f"{what} needs a concrete input size")


def refusal(name: str, shape: Sequence[int | None], spatial: Sequence[int], why: str) -> DynamicShapeError:
    """'input 'x' has dynamic spatial dims (axes [2, 3] of shape [1, 3, ?, ?]); WHY; set them,
    e.g. --input-shape x:1x3x224x224'."""
    shown = ", ".join("?" if a in spatial or d is None else str(d) for a, d in enumerate(shape))
    example = "x".join(str(224 if a in spatial else 1 if d is None else d) for a, d in enumerate(shape))
    return DynamicShapeError(f"input '{name}' has dynamic spatial dims (axes {list(spatial)} of shape "
                             f"[{shown}]); {why}; set them, e.g. --input-shape {name}:{example}")


def _refused_at(analysis: Analysis, why: str) -> DynamicShapeError:
    """``refusal`` for the input of an analysis (at a sampled size, or at the unknown size: only
    the axes of unknown size are shown as such)."""
    free = analysis.unknown_size.free_axes if analysis.unknown_size is not None else ()
    return refusal(analysis.input_name, analysis.input_shape, free or analysis.spatial_axes, why)


__all__ = ["PBySize", "UnknownSize", "analyze_unknown_size", "require_size"]
