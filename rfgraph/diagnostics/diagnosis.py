"""Every diagnostic at once (``diagnose``), and the re-analyses it needs (other input sizes,
alignment fixes applied)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from .. import budgets
from ..analysis import Analysis, analyze
from ..errors import RFGraphError
from ..onnx_import import load_model, shapes_only
from ..options import ModelOptions, model_options
from ..unknown_size import require_size
from .alignment import AlignmentFix, alignment_fixes, apply_fixes
from .coverage import Coverage, LayerVerdict, coverage, layer_verdicts
from .growth import ERFGrowth, erf_growth
from .objects import ObjectFit, object_fit
from .regions import exact_regions
from .sizes import SizeRange, default_size_grid, size_range


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
             assume_pointwise: bool | None = None, input_name: str | None = None,
             layout: str | None = None, fill: Mapping[str, float] | None = None,
             progress: bool = False, options: ModelOptions | None = None) -> Diagnosis:
    """Run every diagnostic on ``model`` (path, bytes, ModelProto or zoo:NAME), read as
    ``options`` say (the keywords ``input_shape``, ``rules``... over it, as for ``analyze``);
    ``progress`` shows the input-size scan's progress on stderr."""
    check_counts(size_step=size_step, size_max=size_max, erf_runs=erf_runs, erf_layers=erf_layers)
    if size_max is not None:
        budgets.SCAN_SIZE.check(size_max, f"--size-max {size_max}", "scan a smaller range")
    for size in object_sizes:
        check_counts(object_size=size)
    opts = model_options(options, input_shapes=input_shape, input_name=input_name, layout=layout,
                         rules=rules, assume_pointwise=assume_pointwise, fill=fill)
    a = analyze(model, options=opts)
    require_size(a, "diagnose")
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
        light = shapes_only(free)
        sizes = size_range(lambda n: _reanalyse(light, free, opts.with_shapes(_square(a, n))), local, grid, step,
                           progress)
    growth = []
    extents: dict[str, tuple[int, ...]] = {}
    if erf:
        for n in local:
            g = erf_growth(model, a, n, erf_layers, erf_runs, options=opts, **(erf_options or {}))
            growth.append(g)
            if g.final is not None and g.final.tensor == n:
                extents[n] = g.final.erf_extent
    objects = [object_fit(a, n, o, extents.get(n)) for n in local for o in object_sizes]
    fixes = joint_fixes(model, a, opts)
    return Diagnosis(a, names, cov, verdicts, sizes, objects, fixes, growth)


def without_static_shapes(model: Any) -> onnx.ModelProto:
    """A copy whose intermediate and output shapes are left to shape inference, so the model can
    be re-analysed at another input size (files often store the shapes of one size)."""
    from ..onnx_import import forget_stored_shapes, read_model

    out = onnx.ModelProto()
    out.CopyFrom(read_model(model))
    forget_stored_shapes(out)
    return out


def _reanalyse(light: onnx.ModelProto, model: onnx.ModelProto, opts: ModelOptions) -> Analysis:
    """The analysis at another size, from the model without its weights' data first (``light``:
    shape inference then serialises kilobytes, not the weights, at each size), from the whole
    model where that fails (an onnxruntime probe needs the weights)."""
    try:
        return analyze(light, options=opts)
    except RFGraphError:
        return analyze(model, options=opts)


def _square(a: Analysis, n: int) -> dict[str, tuple[int, ...]]:
    """The analysed input's shape with every spatial axis set to n."""
    shape = list(a.input_shape)
    for ax in a.spatial_axes:
        shape[ax] = n
    return {a.input_name: tuple(int(d) if d is not None else 1 for d in shape)}


MAX_FIX_ROUNDS = 64  # merges fixed one after the other (one re-analysis each); the rest as computed alone


def joint_fixes(model: Any, a: Analysis, opts: ModelOptions) -> list[AlignmentFix]:
    """The alignment fixes, merge by merge in graph order, each computed on the model with the
    fixes before it applied (a shift moves the fields of every merge after it: fixes computed
    alone over-correct there), then verified all together by one re-analysis."""
    alone = alignment_fixes(a)
    if not any(f.fixable for f in alone):
        return alone
    chosen: dict[tuple[str, int], AlignmentFix] = {}
    try:
        base = load_model(model, opts.input_shapes or None)
        current = a
        for _ in range(MAX_FIX_ROUNDS):
            pending = [f for f in alignment_fixes(current) if f.fixable and (f.node, f.axis_index) not in chosen]
            if not pending:
                break
            for f in pending:  # every axis of the first merge left
                if f.node == pending[0].node:
                    chosen[(f.node, f.axis_index)] = _on_original(f, current)
            fixed = apply_fixes(base, list(chosen.values()), a.spatial_axes, a.graph.names)
            current = analyze(fixed, options=opts.with_shapes(None))
    except RFGraphError:
        return alone
    bad = {(m.node, m.axis) for m in current.misaligned}
    by_merge = {(f.node, f.axis_index): f for f in alone} | chosen  # merges a fix misaligned come last
    out = []
    for key, f in by_merge.items():
        if f.fixable and key not in chosen:  # aligned by the shifts before it, or past the rounds
            f = dataclasses.replace(f, pads={}, reason="aligned once the fixes before it are applied")
        out.append(dataclasses.replace(f, verified=key not in bad) if f.fixable else f)
    return out


def _on_original(fix: AlignmentFix, current: Analysis) -> AlignmentFix:
    """``fix``, computed on a model with fixes applied, naming the original tensors: a branch the
    fixes already padded at this merge (along another axis) is that Pad's input."""
    pads = {}
    for tensor, p in fix.pads.items():
        node = current.graph.node_of(tensor)
        pads[node.input[0] if node is not None and node.op_type == "Pad" and node.name == tensor
             and tensor.endswith("_aligned") else tensor] = p
    return dataclasses.replace(fix, pads=pads)
