"""The cone of one output unit: the crop of the input that holds the unit's theoretical receptive
field, and the same model at the crop's size, on which the unit's gradient equals the full image's.

Why it is exact: along each spatial axis the crop ``[a, b)`` starts at a multiple of the
*alignment period* (the lcm of the numerators of the effective strides S of every tensor the
unit depends on), so each intermediate tensor of the crop model samples the same input positions
as the full model's, shifted by a whole number of units; its size ``b - a`` is the smallest that
holds the unit's region and equals the input size modulo the period, so size-dependent choices
(SAME pads, ceil_mode, the sizes an upsampled branch must match) are the full image's; where the
region reaches an image border, the crop keeps that border and its padding.  The crop model is
the same graph loaded at the crop's size (``onnx_import.load_model``), and its own TRF pass must
give the unit the same S, P and region, shifted by ``-a``; ``rfgraph.erf`` then checks the
gradient of a first input both ways before using the cone (a model whose values depend on the
size otherwise: a Shape-derived constant, a positional table).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .errors import RFGraphError

if TYPE_CHECKING:
    from .analysis import Analysis, EndPoint
    from .cuts import Cut
    from .erf import Target
    from .fields import Rational
    from .options import ModelOptions


@dataclass(frozen=True)
class Crop:
    """A box of the input: ``start`` (inclusive) and ``stop`` (exclusive) per spatial axis, at
    tensor axes ``axes``; ``inner``: the cuts inside the model whose later layers run on a crop
    of their own (``rfgraph.cuts``; the box may then be the whole input); ``trimmed``: the box of
    the output that the model rewritten by ``rfgraph.trim`` computes (each layer on the unit's
    cone), and ``trim_text`` what that saves; ``fallback`` the plan without that rewrite."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    axes: tuple[int, ...]
    inner: tuple[Cut, ...] = ()
    trimmed: tuple[tuple[int, int], ...] = ()
    trim_text: str = ""
    # the plan to use instead when the exactness check refuses the rewrite for float32 rounding:
    # (crop, model, target), or why the full image (``rfgraph.erf._narrowed`` without the rewrite)
    fallback: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def whole(cls, full_shape: Sequence[int], axes: Sequence[int], inner: tuple[Cut, ...] = ()) -> Crop:
        """The box of the whole input."""
        return cls((0,) * len(axes), tuple(full_shape[ax] for ax in axes), tuple(axes), inner)

    def shape(self, full_shape: Sequence[int]) -> tuple[int, ...]:
        """The input shape cropped to the box."""
        out = list(full_shape)
        for ax, a, b in zip(self.axes, self.start, self.stop):
            out[ax] = b - a
        return tuple(out)

    def _slices(self, rank: int) -> tuple[slice, ...]:
        index = [slice(None)] * rank
        for ax, a, b in zip(self.axes, self.start, self.stop):
            index[ax] = slice(a, b)
        return tuple(index)

    def take(self, x: np.ndarray) -> np.ndarray:
        """The box of a batch of full-size inputs (contiguous, for onnxruntime)."""
        return np.ascontiguousarray(x if self.covers(x.shape) else x[self._slices(x.ndim)])

    def place(self, g: np.ndarray, full_shape: Sequence[int]) -> np.ndarray:
        """Gradients of the crop (batch first) put into a zero map of the full input shape: the
        unit does not depend on the input outside its cone."""
        if self.covers(full_shape):
            return g
        out = np.zeros((g.shape[0],) + tuple(full_shape[1:]), g.dtype)
        out[self._slices(out.ndim)] = g
        return out

    def covers(self, full_shape: Sequence[int]) -> bool:
        """True when the box is the whole input (no gain)."""
        return all(a == 0 and b == full_shape[ax] for ax, a, b in zip(self.axes, self.start, self.stop))

    def text(self, full_shape: Sequence[int]) -> str:
        """'[56:152, 56:152] of 224x224 (18% of the pixels)' (two digits under 1%), then the
        inner cuts: 'the whole input 224x224; the layers after 'b3' on [1:6, 1:6] of 7x7', or the
        trim: '...; each layer on the unit's cone (85% of the multiply-accumulates)'."""
        size = [full_shape[ax] for ax in self.axes]
        inside = self.trim_text if self.trimmed else \
            "the layers after " + ", then after ".join(c.text() for c in self.inner) if self.inner else ""
        if inside:
            outer = Crop(self.start, self.stop, self.axes)
            where = f"the whole input {'x'.join(map(str, size))}" if self.covers(full_shape) else outer.text(full_shape)
            return f"{where}; {inside}"
        pct = 100 * math.prod(b - a for a, b in zip(self.start, self.stop)) / max(math.prod(size), 1)
        box = ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop))
        return f"[{box}] of {'x'.join(map(str, size))} ({pct:.0f}% of the pixels)" if pct >= 1 else \
            f"[{box}] of {'x'.join(map(str, size))} ({pct:.2g}% of the pixels)"


@dataclass(frozen=True)
class Cone:
    """Units computed on one crop: the model at the crop's size, its units (the seeded targets of
    the crop model) and the positions of those units in the caller's list."""

    crop: Crop
    model: onnx.ModelProto
    targets: tuple[Target, ...]
    units: tuple[int, ...]


def alignment_period(analysis: Analysis, model: onnx.ModelProto, output: str) -> tuple[int, ...]:
    """Per input spatial axis, the lcm of the numerators of the effective strides of ``output``
    and every tensor it depends on: a crop starting at a multiple of it shifts every
    intermediate tensor by a whole number of units."""
    from .vjp import ancestors

    names = {output} | {t for node in ancestors(model, output) for t in node.output}
    return stride_period(analysis, names)


def stride_period(analysis: Analysis, names: Iterable[str], base: Sequence[Rational | None] | None = None
                  ) -> tuple[int, ...]:
    """Per input spatial axis, the lcm of the numerators of the strides of ``names`` relative
    to ``base`` (strides of the tensor a crop is taken of; default: the input's, 1); 0 where one
    of them is pinned (stride 0: a constant pick of one position, which a crop would move)."""
    periods = [1] * len(analysis.spatial_axes)
    for name in names:
        if name not in analysis:
            continue
        for k, s in enumerate(analysis[name].S):
            b = 1 if base is None else base[k]
            if s is not None and b is not None:
                pinned = s == 0 or b == 0
                periods[k] = 0 if pinned else math.lcm(periods[k], (Fraction(s) / Fraction(b)).numerator)
    return tuple(periods)


def crop_span(region: tuple[int, int], n: int, period: int) -> tuple[int, int]:
    """``[a, b)`` along one axis of size ``n``: ``a`` the region's start (0 at the border)
    rounded down to the period, ``b`` the region's end (``n`` at the border) pushed up until
    ``b - a`` equals ``n`` modulo the period (so ``b <= n``); the whole axis for period 0."""
    if period == 0:
        return 0, n
    u0, v0 = region
    a = max(0, u0) // period * period
    m = min(n, v0 + 1) - a
    return a, a + m + (n - a - m) % period


def crop_for(regions: Sequence[tuple[int, int]], full_shape: Sequence[int], spatial: Sequence[int],
             periods: Sequence[int]) -> Crop:
    """The crop holding ``regions`` (one [u0, v0] per spatial axis)."""
    spans = [crop_span(r, full_shape[ax], p) for r, ax, p in zip(regions, spatial, periods)]
    return Crop(tuple(a for a, _ in spans), tuple(b for _, b in spans), tuple(spatial))


def crop_unit(full: EndPoint, crop: EndPoint, index: Sequence[int], start: Sequence[int]) -> tuple[int, ...]:
    """The unit of the crop model's tensor whose region is ``full``'s unit ``index`` (one
    coordinate per input spatial axis) shifted by ``-start``, with the same S and P; raises
    RFGraphError saying which does not match."""
    if crop.S != full.S or crop.P != full.P:
        raise RFGraphError(f"at the crop's size '{full.name}' has S={_text(crop.S)}, P={_text(crop.P)} "
                           f"instead of S={_text(full.S)}, P={_text(full.P)} (the geometry depends on "
                           f"the input size)")
    out = []
    for k, (j, a, s) in enumerate(zip(index, start, full.S)):
        if not s and a:  # a pinned axis (S 0: one constant position picked) is never cropped
            raise RFGraphError(f"the crop moves the pinned axis {k} of '{full.name}'")
        shift = Fraction(a) / Fraction(s) if s else Fraction(0)  # S is local here
        if shift.denominator != 1:
            raise RFGraphError(f"the crop's start {a} is not a whole number of units of '{full.name}'")
        jc = j - int(shift)
        if not 0 <= jc < (crop.units[k] or 1):
            raise RFGraphError(f"the crop model's '{full.name}' has no unit {jc} along axis {k} "
                               f"({crop.units[k]} units)")
        out.append(jc)
    want = tuple((u0 - a, v0 - a) for (u0, v0), a in zip(full.region(index), start))
    if crop.region(out) != want:
        raise RFGraphError(f"the crop model's unit {tuple(out)} of '{full.name}' has region "
                           f"{crop.region(out)}, not {want} (the full image's, shifted)")
    return tuple(out)


def _text(values: Sequence[object]) -> str:
    return "x".join(str(v) for v in values) if len(set(map(str, values))) > 1 else str(values[0])


def why_not_local(ep: EndPoint) -> str | None:
    """Why a unit of ``ep`` depends on the whole input (None when its field is local)."""
    if ep.is_global:
        node = ep.global_at
        return f"the field of '{ep.name}' is global (made so at node '{node}'): its units mix the positions there"
    if ep.gates:
        return (f"'{ep.name}' is gated ({', '.join(ep.gates[:3])}{', ...' if len(ep.gates) > 3 else ''}): "
                f"the gradient also flows through each gate's pooling (or normalisation statistics) "
                f"over every position")
    return None


def plan(model: onnx.ModelProto, analysis: Analysis, output: str, target: Target, seeded: Target,
         full_shape: tuple[int, ...], opts: ModelOptions, cache: dict[tuple[int, ...], Any] | None = None
         ) -> tuple[Crop, onnx.ModelProto, Target] | str:
    """The crop, the crop model and its (seeded) unit for ``target`` of tensor ``output`` (the
    seeded tensor ``seeded.output`` is ``output`` or a head on it, in ``model``), or why the
    full image is used; ``cache`` keeps the crop model and its analysis per crop shape."""
    if output not in analysis:
        return f"'{output}' has no TRF (the analysis did not reach it)"
    ep = analysis[output]
    reason = why_not_local(ep)
    if reason is not None or target.region is None:
        return reason or f"'{output}' has no TRF region"
    index = ep.spatial_index(target.unit)
    spatial = tuple(analysis.spatial_axes)
    crop = crop_for(target.region, full_shape, spatial, alignment_period(analysis, model, output))
    if crop.covers(full_shape):
        return COVERS
    crop_shape = crop.shape(full_shape)
    cache = {} if cache is None else cache
    try:
        if crop_shape not in cache:
            cache[crop_shape] = _crop_model(model, analysis, opts, crop_shape, seeded.output)
        crop_model, crop_analysis, shape = cache[crop_shape]
        jc = crop_unit(ep, crop_analysis[output], index, crop.start)
    except Exception as exc:  # noqa: BLE001 - any failure at that size (loader, ORT probe): the image
        return f"the model at the crop's size {'x'.join(map(str, crop_shape[1:]))} differs: {exc}"
    regions = tuple((u0 - a, v0 - a) for (u0, v0), a in zip(target.region, crop.start))
    centre = None if target.centre is None else tuple(c - a for c, a in zip(target.centre, crop.start))
    return crop, crop_model, replace(seeded, shape=shape, unit=crop_analysis[output].tensor_index(jc), region=regions,
                                     centre=centre)


def _crop_model(model: onnx.ModelProto, analysis: Analysis, opts: ModelOptions,
                crop_shape: tuple[int, ...], seeded: str) -> tuple[onnx.ModelProto, Analysis, tuple[int, ...]]:
    """The model loaded at the crop's size (the loader's shape inference and checks), its TRF
    pass (read as the full model was: layout, rules) and the shape of the ``seeded`` tensor."""
    from .analysis import analyze
    from .erf import _output_shape, _sort_nodes
    from .onnx_import import load_model

    crop_model = load_model(pruned(model, seeded), {analysis.input_name: crop_shape})
    _sort_nodes(crop_model.graph)
    crop_analysis = analyze(crop_model, options=replace(opts, input_shapes={}, input_name=analysis.input_name,
                                                        fill={}, layout=analysis.layout or opts.layout))
    return crop_model, crop_analysis, _output_shape(crop_model, seeded, analysis.input_name, crop_shape)


def pruned(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """A model of the nodes of ``model`` that ``output`` depends on, ``output`` its only output
    (built from those parts, with the weights and inputs they read): what follows it (a head, a
    positional table, a Reshape to the full size, an op onnxruntime cannot run) plays no part in
    the unit's value and need not run (at the crop's size)."""
    from .onnx_import import elem_type, model_like
    from .vjp import ancestors

    keep = ancestors(model, output)
    subgraphs = [a.g for n in keep for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    used = {t for n in keep for t in n.input} | {t for g in subgraphs for m in g.node for t in m.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    inputs = [i for i in model.graph.input if i.name in used]  # (old IRs list initializers as inputs)
    out = onnx.helper.make_tensor_value_info(output, elem_type(model, output), None)
    return model_like(model, keep, inits, inputs, [out])


def with_weights(crop_model: onnx.ModelProto, weights: onnx.ModelProto) -> onnx.ModelProto:
    """``crop_model`` with the initializers of ``weights`` (a re-initialised full model) of the
    same name and shape (weights held by Constant nodes made initializers first, as
    ``inputs.reinitialise`` does): both models then compute with the same weights."""
    from .inputs import weight_constants_to_initializers
    from .onnx_import import copy_model

    drawn = {i.name: i for i in weights.graph.initializer}
    out = copy_model(crop_model)
    weight_constants_to_initializers(out)  # as ``reinitialise`` does to the full model
    for init in out.graph.initializer:
        new = drawn.get(init.name)
        if new is not None and list(new.dims) == list(init.dims) and new.data_type == init.data_type:
            init.CopyFrom(new)
    return out


def group(plans: Sequence[tuple[Crop, onnx.ModelProto, Target] | str]) -> tuple[Cone, ...]:
    """One Cone per distinct crop, holding the units (positions in ``plans``) cropped to it."""
    cones: dict[Crop, list[tuple[int, onnx.ModelProto, Target]]] = {}
    for k, p in enumerate(plans):
        if not isinstance(p, str):
            cones.setdefault(p[0], []).append((k, p[1], p[2]))
    return tuple(Cone(crop, units[0][1], tuple(t for _, _, t in units), tuple(k for k, _, _ in units))
                 for crop, units in cones.items())


COVERS = "the unit's field covers the input (its cone is the whole image)"  # not a refusal
GUARD_TOLERANCE = 1e-6  # cone vs full image, relative to max |gradient| of the full image
# A cone and the full image that differ by less than this (of max |g|) compute the same values in
# another float32 order (onnxruntime picks kernels by size); more is a size-dependent model.
ROUNDING_LEVEL = 1e-4


def mismatch(cone: np.ndarray, full: np.ndarray) -> float | None:
    """The largest difference between the two gradients relative to the full image's max |g|
    (None when they disagree on which entries are finite)."""
    finite = np.isfinite(full)
    if not np.array_equal(finite, np.isfinite(cone)):
        return None
    scale = float(np.abs(full[finite]).max(initial=0.0)) or 1.0
    return float(np.abs(cone[finite] - full[finite]).max(initial=0.0)) / scale


__all__ = ["Cone", "Crop", "alignment_period", "crop_for", "crop_span", "crop_unit", "group", "plan",
           "stride_period", "why_not_local", "with_weights"]
