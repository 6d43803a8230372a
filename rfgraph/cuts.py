"""The unit's cone inside the network: the last layers computed on the crop of an inner tensor.

A unit whose field covers the input still depends on only part of each late feature map: its cone
narrows toward the unit.  Take a *cut*, a tensor T through which every path from the input to the
unit passes (a residual block's output).  The layers after T are a model of their own with T as
its input, which ``rfgraph.cone.plan`` crops exactly as it crops the input (the same alignment
period, size and border rules).  The narrowed model runs the layers before T on the whole input,
Slices T to the crop and runs the layers after it at the crop's size; its input gradient is the
full model's (the Slice's gradient puts the crop's back into T, zero elsewhere), and ``rfgraph.erf``
checks that on a first input before using it.  Cuts are chosen by a cost model (the
multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm saved), several nested where that pays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import cone as cone_mod

if TYPE_CHECKING:
    from .analysis import Analysis
    from .erf import Target
    from .options import ModelOptions

MAX_CUTS = 3  # nested cuts at most (each loads and analyses the layers after it twice)
MIN_GAIN = 0.03  # a cut must save this share of the model's multiply-accumulates


@dataclass(frozen=True)
class Cut:
    """One inner crop: tensor ``tensor`` (of ``size`` units per spatial axis) cropped to
    ``[start, stop)`` along its tensor axes ``axes``."""

    tensor: str
    start: tuple[int, ...]
    stop: tuple[int, ...]
    size: tuple[int, ...]
    axes: tuple[int, ...]

    def text(self) -> str:
        """"'layer4.0' on [1:6, 1:6] of 7x7"."""
        box = ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop))
        return f"'{self.tensor}' on [{box}] of {'x'.join(map(str, self.size))}"


# ------------------------------------------------------------------------------ where to cut

def macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of a Conv, ConvTranspose, MatMul or Gemm (0 for other ops, or when a
    shape is unknown): what a crop saves."""
    op, ins = node.op_type, [shapes.get(i) for i in node.input[:2]]
    out = shapes.get(node.output[0]) if node.output else None
    if out is None or len(ins) < 2 or any(s is None for s in ins):
        return 0
    x, w = ins
    assert x is not None and w is not None
    if op == "Conv" and len(w) > 2:
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose" and len(w) > 2:
        return math.prod(x) * math.prod(w[1:])
    if op in ("MatMul", "Gemm") and x:
        transposed = op == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        return math.prod(out) * (x[-2] if transposed and len(x) > 1 else x[-1])
    return 0


def candidates(model: onnx.ModelProto, input_name: str, output: str) -> list[str]:
    """The cuts of ``output``: tensors that every path from the input to it passes through (its
    dominators, from the input), in graph order, the input and ``output`` excluded."""
    from .vjp import ancestors

    g = nx.DiGraph()
    g.add_node(input_name)
    reached = {input_name}
    for node in ancestors(model, output):
        ins = [i for i in node.input if i in reached]
        for o in filter(None, node.output):
            if ins:
                reached.add(o)
                g.add_edges_from((i, o) for i in ins)
        for attr in node.attribute:  # an If/Loop body reading the input: not cut through
            if attr.type == onnx.AttributeProto.GRAPH and ins:
                return []
    if output not in reached:
        return []
    idom = nx.immediate_dominators(g, input_name)
    chain, t = [], idom[output]
    while t != input_name:
        chain.append(t)
        t = idom[t]
    return chain[::-1]


def _region_at(analysis: Analysis, tensor: str, region: Sequence[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """The units of ``tensor`` whose input regions lie inside ``region`` (the unit's), clipped to
    the tensor, per spatial axis: the unit's cone there (None where not local)."""
    ep = analysis[tensor]
    if ep.is_global or ep.gates or any(not isinstance(s, (int, Fraction)) or Fraction(s).denominator != 1
                                       for s in ep.S):
        return None
    out = []
    for (u0, v0), r, s, p, n in zip(region, ep.r, ep.S, ep.P, ep.units):
        if r is None or n is None or not isinstance(p, int):
            return None
        s = int(s)  # type: ignore[arg-type]
        lo, hi = max(0, -((-(u0 + p)) // s)), min(n - 1, (v0 - r + 1 + p) // s)
        out.append((lo, max(lo, hi)))
    return out


def choose(model: onnx.ModelProto, analysis: Analysis, output: str, seeded: str,
           region: Sequence[tuple[int, int]]) -> tuple[list[str], int]:
    """The cuts that save most multiply-accumulates for the unit of ``output`` whose input
    region is ``region`` (at most MAX_CUTS, each saving at least MIN_GAIN of the total) and the
    forward MACs they save: an estimate from the full model's TRF, the crop of each cut decided
    later by ``cone.plan``."""
    from .onnx_import import known_shapes
    from .vjp import ancestors

    shapes = known_shapes(model)
    nodes = ancestors(model, seeded)
    cost = [macs(n, shapes) for n in nodes]
    total = sum(cost)
    if not total:
        return [], 0
    position = {o: k for k, n in enumerate(nodes) for o in n.output}
    names = [o for n in nodes for o in n.output if o in analysis]
    cuts: list[tuple[str, float, int]] = []  # (tensor, kept share of its later layers, their MACs)
    for t in candidates(model, analysis.input_name, output):
        at, k = _region_at(analysis, t, region) if t in analysis else None, position.get(t)
        shape, axes = shapes.get(t), analysis[t].tensor_axes if t in analysis else ()
        if at is None or k is None or shape is None or not axes or None in axes:
            continue
        later = names[names.index(t) + 1:] if t in names else []
        sizes = [shape[ax] for ax in axes]  # type: ignore[index]  # no None left
        period = cone_mod.stride_period(analysis, later, analysis[t].S)  # alignment_period, from t
        spans = [cone_mod.crop_span(r, n, p) for r, n, p in zip(at, sizes, period)]
        kept = math.prod(b - a for a, b in spans) / math.prod(sizes)
        if kept < 1:
            cuts.append((t, kept, sum(cost[k + 1:])))
    return _best_chain(cuts, total)


def _best_chain(cuts: Sequence[tuple[str, float, int]], total: int) -> tuple[list[str], int]:
    """The nested cuts (graph order) of least estimated cost: the layers after cut i and before
    cut j cost their MACs times cut i's kept share; each cut pays MIN_GAIN / 3 of ``total``."""
    fee = MIN_GAIN / 3 * total
    best: dict[tuple[int, int], tuple[float, list[str]]] = {}
    for i in reversed(range(len(cuts))):
        name, kept, later = cuts[i]
        for depth in range(1, MAX_CUTS + 1):
            options = [(later * kept + fee, [name])]
            if depth > 1:
                options += [((later - cuts[j][2]) * kept + fee + best[j, depth - 1][0], [name] + best[j, depth - 1][1])
                            for j in range(i + 1, len(cuts)) if cuts[j][1] < kept]
            best[i, depth] = min(options, key=lambda o: o[0])
    plans = [(total - cuts[i][2] + best[i, MAX_CUTS][0], best[i, MAX_CUTS][1]) for i in range(len(cuts))]
    if not plans:
        return [], 0
    cost, chain = min(plans, key=lambda p: p[0])
    saved = total - cost  # the fees counted: a conservative estimate
    return (chain, int(saved)) if saved >= MIN_GAIN * total else ([], 0)


# ------------------------------------------------------------------------------ the narrowed model

def narrow(model: onnx.ModelProto, analysis: Analysis, output: str, target: Target, seeded: Target,
           opts: ModelOptions, chain: Sequence[str] | None = None
           ) -> tuple[onnx.ModelProto, Target, tuple[Cut, ...]] | None:
    """``model`` with the layers after each cut of ``chain`` (default: ``choose``'s) on that
    cut's crop, its seeded unit, and the cuts (None when no cut pays or none can be made: the
    model is then used whole)."""
    from .inputs import weight_constants_to_initializers
    from .onnx_import import copy_model

    if target.region is None or cone_mod.why_not_local(analysis[output]) is not None:
        return None
    if chain is None:
        chain = choose(model, analysis, output, seeded.output, target.region)[0]
    if not chain:
        return None
    if any(n.op_type == "Constant" for n in model.graph.node):  # weights keep their names (re-initialisation)
        model = weight_constants_to_initializers(copy_model(model))
    return _narrow(model, analysis, output, seeded.unit, seeded, opts, chain, 1)


def _narrow(model: onnx.ModelProto, analysis: Analysis, output: str, unit: tuple[int, ...],
            seeded: Target, opts: ModelOptions, chain: Sequence[str], depth: int
            ) -> tuple[onnx.ModelProto, Target, tuple[Cut, ...]] | None:
    """The first cut of ``chain`` that can be made applied to ``model`` (whose input is
    ``analysis``'s), then the later ones inside its crop model; None when none can be made."""
    made = _cut(model, analysis, output, unit, seeded, opts, chain[0])
    if made is None:
        return _narrow(model, analysis, output, unit, seeded, opts, chain[1:], depth) if len(chain) > 1 else None
    cut, crop_model, crop_analysis, seeded_c = made
    cuts: tuple[Cut, ...] = (cut,)
    if len(chain) > 1:
        inner = _narrow(crop_model, crop_analysis, output, seeded_c.unit, seeded_c, opts, chain[1:], depth + 1)
        if inner is not None:
            crop_model, seeded_c, more = inner
            cuts += more
    merged = merge(model, analysis.input_name, cut, crop_model, seeded_c.output, f"cone{depth}/")
    if merged is None:
        return None
    # the merged model's input is the full model's: the unit's region is the input's again
    return merged, replace(seeded_c, output=f"cone{depth}/{seeded_c.output}", region=seeded.region,
                           centre=seeded.centre, trf_size=seeded.trf_size), cuts


def _cut(model: onnx.ModelProto, analysis: Analysis, output: str, unit: tuple[int, ...], seeded: Target,
         opts: ModelOptions, tensor: str) -> tuple[Cut, onnx.ModelProto, Analysis, Target] | None:
    """The layers after ``tensor`` cropped by ``cone.plan``: the cut, the crop model (input
    ``tensor``), its analysis and seeded unit; None where it cannot be made (or is not exact by
    the TRF: the strides and paddings after the cut must be the full model's)."""
    from .analysis import analyze, layout_text
    from .erf import resolve_target

    upper = later_layers(model, analysis.input_name, tensor, seeded.output)
    axes = analysis[tensor].tensor_axes if tensor in analysis else ()
    if upper is None or not axes or None in axes or list(axes) != sorted(axes):  # type: ignore[type-var]
        return None
    rank = len(upper.graph.input[0].type.tensor_type.shape.dim)
    layout = layout_text(axes, analysis.axis_names, rank)  # type: ignore[arg-type]  # no None left
    sub_opts = replace(opts, input_shapes={}, input_name=tensor, fill={}, layout=layout)
    try:
        a = analyze(upper, options=sub_opts)
        if tuple(a.spatial_axes) != tuple(axes) or not _same_geometry(a, analysis, output, tensor):
            return None
        shape = tuple(int(d) for d in a.input_shape)
        target = resolve_target(a, upper, output, unit, seeded.channel, len(shape), a.spatial_axes,
                                tuple(int(d) for d in a[output].shape))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a sub-model the loader or the TRF pass refuses: no cut
        return None
    cache: dict[tuple[int, ...], Any] = {}
    plan = cone_mod.plan(upper, a, output, target, replace(seeded, unit=unit), shape, sub_opts, cache)
    if isinstance(plan, str):
        return None
    crop, crop_model, seeded_c = plan
    sizes = tuple(shape[ax] for ax in crop.axes)
    return Cut(tensor, crop.start, crop.stop, sizes, crop.axes), crop_model, cache[crop.shape(shape)][1], seeded_c


def _same_geometry(sub: Analysis, full: Analysis, output: str, tensor: str) -> bool:
    """The output's stride and padding after the cut, relative to the cut, are the full
    model's relative to the cut's (the sub-model reads the cut as the full model does)."""
    o, t, so = full[output], full[tensor], sub[output]
    for s_full, s_t, s_sub in zip(o.S, t.S, so.S):
        if s_full is None or s_t is None or s_sub is None or Fraction(s_full) / Fraction(s_t) != Fraction(s_sub):
            return False
    return True


def later_layers(model: onnx.ModelProto, input_name: str, tensor: str, output: str) -> onnx.ModelProto | None:
    """The model of the layers after the cut ``tensor``: graph input ``tensor``, output
    ``output``, the nodes ``output`` needs that do not compute the cut from the input (constants
    they share are copied); None when one reads another tensor computed from the input."""
    from .onnx_import import elem_type, known_shapes, model_like
    from .vjp import ancestors

    shapes = known_shapes(model)
    before = ancestors(model, tensor)
    from_input = {input_name}
    for n in before:
        if any(i in from_input for i in n.input):
            from_input.update(n.output)
    lower = {id(n) for n in before if any(o in from_input for o in n.output)}
    keep = [n for n in ancestors(model, output) if id(n) not in lower]
    readable = {tensor, ""} | {o for n in keep for o in n.output} | {i.name for i in model.graph.initializer}
    if tensor not in shapes or any(i not in readable for n in keep for i in n.input):
        return None
    used = {i for n in keep for i in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    inp = helper.make_tensor_value_info(tensor, elem_type(model, tensor), shapes[tensor])
    out = helper.make_tensor_value_info(output, elem_type(model, output), None)
    return model_like(model, keep, inits, [inp], [out])


def merge(model: onnx.ModelProto, input_name: str, cut: Cut, crop_model: onnx.ModelProto, output: str,
          prefix: str) -> onnx.ModelProto | None:
    """One model: the layers of ``model`` up to ``cut.tensor``, a Slice of it to the cut's crop,
    and ``crop_model`` (input: the cut, at the crop's size) with its tensors prefixed; weights
    keep their names (one copy where both parts use one).  None when a weight name is shared
    with different values, or the crop model has subgraphs."""
    from .onnx_import import elem_type, model_like
    from .vjp import ancestors

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in crop_model.graph.node for a in n.attribute):
        return None
    lower = ancestors(model, cut.tensor)
    read = {t for n in lower for t in n.input}
    inits = {i.name: i for i in model.graph.initializer if i.name in read}
    produced = {o for n in crop_model.graph.node for o in n.output if o} | {cut.tensor}
    for init in crop_model.graph.initializer:
        have = inits.get(init.name)
        if have is not None and not np.array_equal(numpy_helper.to_array(have), numpy_helper.to_array(init)):
            return None
        inits.setdefault(init.name, init)
    nodes = list(lower) + [_slice(model, cut, prefix, inits)]
    for n in crop_model.graph.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = prefix + (n.name or n.output[0])
        m.input[:] = [prefix + i if i in produced else i for i in n.input]
        m.output[:] = [prefix + o if o else o for o in n.output]
        nodes.append(m)
    inputs = [i for i in model.graph.input if i.name == input_name or i.name in inits]
    out = helper.make_tensor_value_info(prefix + output, elem_type(crop_model, output), None)
    return model_like(model, nodes, list(inits.values()), inputs, [out])


def _slice(model: onnx.ModelProto, cut: Cut, prefix: str, inits: dict[str, onnx.TensorProto]) -> onnx.NodeProto:
    """The Slice of the cut tensor to its crop (``onnx_import.slice_node``)."""
    from .onnx_import import slice_node

    node, consts = slice_node(model, cut.tensor, prefix + cut.tensor, f"{prefix}crop", cut.start, cut.stop, cut.axes)
    inits.update((c.name, c) for c in consts)
    return node


__all__ = ["Cut", "candidates", "choose", "later_layers", "macs", "merge", "narrow"]
