"""Effective receptive fields (Luo et al. 2016): the input gradient of one output unit, averaged
over N inputs (and M weight re-initialisations), with its metrics.

Conventions (Luo sec. 3, the default): the seed is 1 at the chosen unit (default: the centre unit
of the end point, all its channels summed, or one ``channel``) and 0 elsewhere; each run's gradient
is made absolute (or kept signed) and summed over the input's non-spatial axes (channels); the ERF
is the mean over runs.  ``conventions`` (``rfgraph.erf_conventions``: the differentiated scalar,
the aggregation, the centre rule, the image order, skipping non-finite samples; presets ``luo`` and
``replknet``) replaces any of these.  The gradient comes from the VJP graph (``method="grad"``,
exact) or from central differences inside the unit's theoretical RF (``method="fd"``, any op).
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnx

from . import cone as cone_mod
from . import cuts as cuts_mod
from . import erf_conventions as ec
from . import runtime
from . import trim as trim_mod
from . import vjp as vjp_mod
from .errors import DynamicShapeError, GraphStructureError, RFGraphError, UnsupportedOpError
from .finite_diff import FiniteDifference
from .inputs import (
    FLOAT32,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolder,
    InputKind,
    Reinit,
    WeightInit,
    random_inputs,
    reinitialise,
)
from .metrics import AREA_THRESHOLDS, LUO_FRACTION, POOR_FIT_R2, AreaRatio, ERFMetrics, compute_metrics
from .onnx_import import prepare, shapes_only
from .options import ModelOptions, model_options
from .pieces import Piece, one_piece
from .semantics import NORMALISING_OPS
from .silent import silent_notes

if TYPE_CHECKING:  # analysis is imported lazily (it pulls in the whole TRF pass)
    from . import custom_ops
    from .analysis import Analysis, EndPoint
    from .onnx_import import ModelSource


class Method(str, Enum):
    """How the input gradient is computed."""

    GRAD = "grad"  # the VJP graph: exact, one forward+backward per batch of inputs
    FD = "fd"  # central differences inside the TRF: any op, 2 forwards per input element


@dataclass(frozen=True)
class Target:
    """Where the seed goes: a tensor, one unit along its spatial axes, one channel or all."""

    output: str
    shape: tuple[int, ...]  # the tensor's shape at batch 1
    tensor_axes: tuple[int, ...]  # tensor axes holding positions (EndPoint.unit_axes; empty: global)
    unit: tuple[int, ...]  # index along tensor_axes (a flattened token axis: the token index)
    channel: int | None = None  # index along the first other non-batch axis; None: summed
    region: tuple[tuple[int, int], ...] | None = None  # TRF [u0, v0] per input spatial axis
    centre: tuple[float, ...] | None = None  # TRF centre per input spatial axis
    trf_size: tuple[int, ...] | None = None
    grid: tuple[int, ...] | None = None  # the unit per input spatial axis, where ``unit`` folds them


@dataclass(frozen=True)
class ERFResult:
    """An ERF map (input spatial shape) with its metrics and how it was obtained."""

    erf: np.ndarray
    metrics: ERFMetrics
    target: Target
    input_name: str
    input_shape: tuple[int, ...]
    spatial_axes: tuple[int, ...]
    method: str
    runs: int
    weight_runs: int
    absolute: bool
    batch: int
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    conventions: ec.ERFConventions = ec.DEFAULT  # those in force (inputs: what was drawn)
    samples: int = 0  # maps averaged (runs x weight_runs, less the non-finite ones skipped)
    displayed_area_ratios: tuple[AreaRatio, ...] = ()  # RepLKNet's, of the scaled display


def make_seed(target: Target, batch: int, dtype: np.dtype = FLOAT32) -> np.ndarray:
    """Luo's Dirac delta: 1 at the target unit (channel, or all channels), 0 elsewhere; per sample.
    At batch 1 the seed has the tensor's own shape, whichever axis holds the batch (a
    time-major RNN output is (T, N, C)); batched graphs put it first (checked by the engine)."""
    seed = np.zeros(target.shape if batch == 1 else (batch,) + target.shape[1:], dtype=dtype)
    index: list[int | slice] = [slice(None)] * len(target.shape)
    for ax, u in zip(target.tensor_axes, target.unit):
        if not 0 <= u < target.shape[ax]:  # the analysis's shapes and the run's disagree (bad pads)
            raise RFGraphError(f"unit {tuple(target.unit)} is outside '{target.output}', whose shape is "
                               f"{list(target.shape)} for the gradient graph (the spec's output size): the "
                               f"model's declared shapes or pads are inconsistent")
        index[ax] = u
    if target.channel is not None:
        others = [a for a in range(1, len(target.shape)) if a not in target.tensor_axes]
        if not others:
            raise RFGraphError(f"'{target.output}' has no channel axis; drop --channel")
        if not 0 <= target.channel < target.shape[others[0]]:
            raise RFGraphError(f"channel {target.channel} is outside '{target.output}' "
                               f"({target.shape[others[0]]} channels)")
        index[others[0]] = target.channel
    seed[tuple(index)] = 1
    return seed


def _no_positions_hint(shape: Sequence[int]) -> str:
    """What to give instead of --unit on a tensor without an axis of positions: the tensor axis it
    indexes (a ViT's tokens, rank 3 and more), or a feature of a vector (logits) with --channel."""
    if len(shape) >= 3:
        return ("; it has no axis of positions (its field is global): --unit-axis T picks the tensor axis "
                "--unit indexes (a ViT's tokens: --unit-axis 1)")
    return (f"; it has no axis of positions (its field is global): drop --unit (the unit is the whole "
            f"tensor), or pick one of its {shape[-1]} features with --channel K")


def resolve_target(analysis: Analysis | None, model: onnx.ModelProto, output: str,
                   unit: Sequence[int] | None, channel: int | None,
                   input_rank: int, spatial_axes: Sequence[int], shape: tuple[int, ...],
                   centre: ec.CentreRule = ec.CentreRule.FLOOR, unit_axis: int | None = None) -> Target:
    """The seed position: ``unit`` (one index per tensor axis of positions; a flattened token
    axis takes the token index) or the centre unit (by the ``centre`` rule); TRF region and
    centre from the analysis.  ``unit_axis``: for a tensor without an axis of positions (a ViT's
    tokens after its class token; one after a stop), the tensor axis ``unit`` indexes."""
    ep = _endpoint(analysis, output)
    if not shape:
        raise RFGraphError(f"'{output}' is a single number (rank 0, no batch axis): the ERF averages "
                           f"the gradients of a batch of inputs; export the model with keepdims=1 (or "
                           f"a batch axis) or choose another tensor with --output")
    if unit_axis is not None:
        return _on_unit_axis(ep, output, shape, unit, unit_axis, channel, centre)
    if ep is None and len(shape) != input_rank:
        raise RFGraphError(f"'{output}' (shape {list(shape)}) has no known axis of positions "
                           f"({_not_analysed(analysis)}); {_unit_choices(analysis)}")
    if ep is None or ep.is_global:  # global: its own axes of positions, if any; else (or with
        # no analysis) the input's spatial axes where the ranks match (a ViT's 14x14 map)
        axes = [t for t, _ in ep.unit_axes] if ep is not None and ep.unit_axes else \
            (list(spatial_axes) if len(shape) == input_rank else [])
        sizes = [shape[a] for a in axes]
        if unit is None and ep is not None and ep.unit_axes and all(ep.units):  # the grid's centre
            unit = ep.tensor_index(ec.centre_unit([n or 1 for n in ep.units], centre))  # (a token axis holds H x W)
        unit = tuple(int(u) for u in (ec.centre_unit(sizes, centre) if unit is None else unit))
        if len(unit) != len(axes) or any(not 0 <= u < n for u, n in zip(unit, sizes)):
            hint = "" if axes else _no_positions_hint(shape)
            raise RFGraphError(f"unit {unit} is not an index of the spatial axes of '{output}' "
                               f"(sizes {tuple(sizes)}){hint}")
        return Target(output, shape, tuple(axes), unit, channel)
    if unit is None:  # the centre of the grid, whichever tensor axes hold it
        unit = ep.tensor_index(ec.centre_unit([n or 1 for n in ep.units], centre))
    unit = tuple(int(u) for u in unit)
    index = ep.spatial_index(unit)  # validates the unit
    region = tuple((int(a), int(b)) for a, b in ep.region(index))
    middle = tuple(float(c) for c in ep.centre(index))
    trf = tuple(int(r) for r in ep.r if r is not None)  # not global: no r is None
    folds = any(len(held) > 1 for _, held in ep.unit_axes)  # a token axis holding H x W: say where
    grid = index if folds else None  # (not a pinned axis, which has no units: silero-vad's last frame)
    return Target(output, shape, tuple(t for t, _ in ep.unit_axes), unit, channel, region, middle, trf, grid)


def _on_unit_axis(ep: EndPoint | None, output: str, shape: tuple[int, ...], unit: Sequence[int] | None,
                  axis: int, channel: int | None, centre: ec.CentreRule) -> Target:
    """The seed at ``unit`` along tensor ``axis`` of a tensor the analysis gives no axis of
    positions (its field global, or not analysed): the gradient is exact, no TRF region."""
    if ep is not None and ep.unit_axes:
        raise RFGraphError(f"'{output}' has axes of positions ({', '.join(str(t) for t, _ in ep.unit_axes)}): "
                           f"give --unit along them, without --unit-axis")
    if not 0 < axis < len(shape) or (channel is not None and axis == 1):
        seeded = " and the seeded channel's" if channel is not None else ""
        raise RFGraphError(f"--unit-axis {axis}: expected an axis of '{output}' (shape {list(shape)}) "
                           f"other than the batch axis 0{seeded}")
    index = tuple(int(u) for u in (ec.centre_unit([shape[axis]], centre) if unit is None else unit))
    if len(index) != 1 or not 0 <= index[0] < shape[axis]:
        raise RFGraphError(f"unit {index} is not an index of axis {axis} of '{output}' (size {shape[axis]})")
    return Target(output, shape, (axis,), index, channel)


def _not_analysed(analysis: Analysis | None) -> str:
    """Why a tensor has no field: no TRF pass, or it lies after the nodes where it stopped."""
    if analysis is None:
        return "no TRF pass"
    if analysis.stops:
        where = ", ".join(f"'{s.node}' ({s.op})" for s in analysis.stops[:3])
        return f"not analysed: it lies after the analysis stopped at {where}, or does not depend on the input"
    return "not analysed: it does not depend on the input"


def _unit_choices(analysis: Analysis | None) -> str:
    """The way out of a tensor without units: the local tensors that have them (the default
    end points first, else the last analysed ones)."""
    if analysis is None:
        return "choose a tensor with spatial axes like the input's (--output NAME)"

    def has_units(n: str) -> bool:
        ep = analysis[n]
        return bool(ep.unit_axes) and not ep.is_global and n != analysis.input_name
    names = [n for n in analysis.default_endpoints() if has_units(n)]
    names = names or [n for n in reversed(analysis.endpoints) if has_units(n)][:4]
    if not names:
        return "no analysed tensor has units along the input's spatial axes"
    return f"choose a tensor with units (--output NAME): {', '.join(names[:NOTE_CHOICES])}"


NOTE_CHOICES = 8  # tensors named as choices in an error


def _endpoint(analysis: Analysis | None, name: str) -> EndPoint | None:
    if analysis is None or name not in analysis:
        return None
    return analysis[name]


class GradientEngine:
    """Batched input gradients from the VJP graph (forward and backward in one ORT session)."""

    def __init__(self, model: onnx.ModelProto, target: Target, input_name: str,
                 input_shape: tuple[int, ...], batch: int, providers: Sequence[str] | None = None,
                 threads: int = 0, config: dict[str, str] | None = None) -> None:
        self.target, self.input_name = target, input_name
        self.providers, self.threads, self.config = providers, threads, config
        one = vjp_mod.build_vjp(model, target.output, input_shape, input_name)
        self.dtype = one.dtype
        self.graph, self.sess, self.batch = one, self._session(one), 1
        if batch > 1 and target.shape[:1] == (1,):  # batching stacks samples on the output's axis 0
            self._try_batch(model, input_shape, batch)

    def _try_batch(self, model: onnx.ModelProto, input_shape: tuple[int, ...], batch: int) -> None:
        """Use a batch-``batch`` graph when it reproduces the batch-1 gradient (it may not, when
        the model bakes its batch into shapes)."""
        shape = (batch,) + tuple(input_shape[1:])
        try:
            many = vjp_mod.build_vjp(model, self.target.output, shape, self.input_name)
            sess = self._session(many)
            probe = np.random.default_rng(12345).standard_normal(shape).astype(self.dtype)
            g_many = vjp_mod.input_gradient(many, sess, probe, make_seed(self.target, batch,
                                                                         self.dtype))
            g_one = vjp_mod.input_gradient(self.graph, self.sess, probe[-1:],
                                           make_seed(self.target, 1, self.dtype))
        except Exception:  # noqa: BLE001 - any failure (shape inference, ORT): keep batch 1
            return
        scale = float(np.abs(g_one).max()) or 1.0
        if g_many.shape == shape and float(np.abs(g_many[-1:] - g_one).max()) <= 1e-4 * scale:
            self.graph, self.sess, self.batch = many, sess, batch

    def _session(self, graph: vjp_mod.VJPGraph) -> object:
        return vjp_mod.session(graph, self.providers, self.threads, self.config)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Gradients for a batch of inputs (``x.shape[0] <= batch``)."""
        return self._run(x, make_seed(self.target, self.batch, self.dtype))

    def _run(self, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """One run on ``x`` (padded with zero inputs and zero seeds to the engine's batch)."""
        n = x.shape[0]
        if n < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - n,) + x.shape[1:], x.dtype)])
        if seed.shape[0] < self.batch:
            seed = np.concatenate([seed, np.zeros((self.batch - seed.shape[0],) + seed.shape[1:],
                                                  seed.dtype)])
        return vjp_mod.input_gradient(self.graph, self.sess, x, seed)[:n]

    def units(self, x: np.ndarray, targets: Sequence[Target]) -> list[np.ndarray]:
        """Gradients of several units of the engine's tensor for inputs ``x``, one per target:
        the (input, unit) pairs are packed in batches, unit k's seed on its pair's batch item, so
        one backward serves up to ``batch`` units."""
        seeds = [make_seed(t, 1, self.dtype) for t in targets]
        pairs = [(j, k) for j in range(x.shape[0]) for k in range(len(targets))]
        out = [np.empty(x.shape, self.dtype) for _ in targets]
        for a in range(0, len(pairs), self.batch):
            chunk = pairs[a:a + self.batch]
            grads = self._run(np.concatenate([x[j:j + 1] for j, _ in chunk]),
                              np.concatenate([seeds[k] for _, k in chunk]))
            for (j, k), g in zip(chunk, grads):
                out[k][j] = g
        return out


class Region(str, Enum):
    """Which input the gradient is computed on (``rfgraph.cone``)."""

    AUTO = "auto"  # the unit's cone when it is smaller than the image and proven exact, else the image
    CONE = "cone"  # the cone, or an error saying why it cannot be used
    FULL = "full"  # the full image


class FDEngine:
    """Input gradients by central differences inside the unit's TRF (one input at a time)."""

    def __init__(self, model: onnx.ModelProto, target: Target, input_name: str,
                 input_shape: tuple[int, ...], spatial_axes: Sequence[int], batch: int,
                 step: float | None = None, on_forwards: Callable[[int], None] | None = None) -> None:
        self.target = target
        self.fd = FiniteDifference(model, target.output, input_name, (1,) + tuple(input_shape[1:]),
                                   tuple(spatial_axes), target.region, step, max(batch, 16))
        self.batch = 1
        self.dtype = self.fd.dtype
        self.on_forwards = on_forwards

    def __call__(self, x: np.ndarray) -> np.ndarray:
        seed = make_seed(self.target, 1, self.dtype)
        return np.concatenate([self.fd.gradient(x[i:i + 1], seed, self.on_forwards)
                               for i in range(x.shape[0])])

    def check_cost(self, inputs: int, budget_s: float) -> None:
        """Refuse, before any gradient, when ``inputs`` gradients would take longer than
        ``budget_s`` seconds (forward passes x the measured time of one)."""
        forwards = self.fd.forwards() * inputs
        seconds = forwards * self.fd.seconds_per_forward()
        if seconds > budget_s:
            raise RFGraphError(
                f"--method fd would need about {forwards:,} forward passes ({self.fd.forwards() // 2:,} "
                f"input elements in the unit's field x 2 x {inputs} inputs), about "
                f"{_duration(seconds)} at the measured {1000 * seconds / max(forwards, 1):.3g} ms per "
                f"forward: over the budget of {_duration(budget_s)}; use --method grad (exact, one "
                f"backward pass per input), fewer --runs, or raise the budget with --fd-budget SECONDS")


class UnitsEngine:
    """Input gradients of one or several units of a tensor: list of (n, *input) arrays, one per
    unit (the VJP graph serves several units per backward; finite differences: one at a time)."""

    def __init__(self, method: Method, model: onnx.ModelProto, targets: Sequence[Target],
                 input_name: str, full_shape: tuple[int, ...], spatial: Sequence[int], batch: int,
                 fd_step: float | None, providers: Sequence[str] | None, threads: int,
                 config: dict[str, str] | None = None) -> None:
        self.targets = tuple(targets)
        self.engines = [_engine(method, model, t, input_name, full_shape, spatial, batch, fd_step,
                                providers, threads, config)
                        for t in (self.targets if method is Method.FD else self.targets[:1])]
        self.batch, self.dtype = self.engines[0].batch, self.engines[0].dtype

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        first = self.engines[0]
        if isinstance(first, GradientEngine) and len(self.targets) > 1:
            return first.units(x, self.targets)
        return [e(x) for e in self.engines]

    def providers(self) -> list[str]:
        """The execution providers onnxruntime's session kept (none for finite differences)."""
        sess = getattr(self.engines[0], "sess", None)
        return list(sess.get_providers()) if sess is not None else []


class ConeEngine:
    """UnitsEngine's interface over cones: each Cone's units computed on its crop (one
    UnitsEngine per crop), the others on the full image; every gradient has the full input's
    shape (zero outside the crop)."""

    def __init__(self, parts: Sequence[tuple[tuple[int, ...], cone_mod.Crop | None, UnitsEngine]],
                 full_shape: tuple[int, ...], units: int) -> None:
        self.parts, self.full_shape, self.units = list(parts), full_shape, units
        self.engines = [e for _, _, part in self.parts for e in part.engines]
        self.batch = max(part.batch for _, _, part in self.parts)
        self.dtype = self.parts[0][2].dtype

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.empty(0)] * self.units
        for units, crop, engine in self.parts:
            xs = x if crop is None else crop.take(x)
            chunks = [engine(xs[i:i + engine.batch]) for i in range(0, len(xs), engine.batch)]
            for k, unit in enumerate(units):
                g = np.concatenate([c[k] for c in chunks])
                out[unit] = g if crop is None else crop.place(g, self.full_shape)
        return out

    def providers(self) -> list[str]:
        """The execution providers of the first engine's session."""
        return self.parts[0][2].providers()


FD_BUDGET_S = 600.0  # default: finite differences refused when estimated to take longer


def _duration(seconds: float) -> str:
    """'42 s', '12 min', '3.5 h': a duration for an estimate."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def sample_maps(grads: np.ndarray, scale: float, spatial_axes: Sequence[int],
                conv: ec.ERFConventions) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample maps (batch, *spatial): gradients times the seed ``scale``, aggregated over
    channels; and the mask of samples kept (the finite ones when ``conv.skip_nonfinite``)."""
    maps = ec.aggregate(grads * scale if scale != 1 else grads, spatial_axes, conv.aggregation)
    keep = ec.finite_samples(maps) if conv.skip_nonfinite else np.ones(len(maps), dtype=bool)
    return maps, keep


WEIGHT_KEY, INPUT_KEY, ORDER_KEY = 0, 1, 2  # SeedSequence spawn keys: what a Generator draws


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    """The Generator of one draw, keyed by what it draws and its indices (weight draw w, input
    run i): any grouping of the runs (batches, worker processes, a cluster) draws the same samples."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def input_batches(kind: InputKind, shape: tuple[int, ...], start: int, stop: int, seed: int,
                  weight_run: int, dtype: np.dtype, folder: str | Path | None = None,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  order: ec.Order = ec.Order.RANDOM, spatial: Sequence[int] | None = None
                  ) -> Iterator[np.ndarray]:
    """Inputs ``start`` to ``stop`` (exclusive) of weight run ``weight_run`` in batches of
    shape[0]: input i is drawn from its own Generator (random kinds) or is the i-th image of a
    seeded order; images are loaded as NCHW and moved to the input's layout (``spatial``)."""
    for a in range(start, stop, shape[0]):
        b = min(a + shape[0], stop)
        if kind is InputKind.IMAGES:
            yield _images(folder or ".", shape, a, b, seed, mean, std, order, spatial).astype(dtype)
            continue
        one = (1,) + tuple(shape[1:])
        yield np.concatenate([random_inputs(kind, one, keyed_rng(seed, INPUT_KEY, weight_run, i), dtype)
                              for i in range(a, b)])


def _images(folder: str | Path, shape: tuple[int, ...], start: int, stop: int, seed: int,
            mean: Sequence[float], std: Sequence[float], order: ec.Order,
            spatial: Sequence[int] | None) -> np.ndarray:
    """Images ``start`` to ``stop`` of the seeded order (the same for every weight run), in the
    input's layout."""
    perm = _from_nchw(len(shape), spatial)
    nchw = tuple(shape[perm.index(a)] for a in range(len(shape)))
    images = ImageFolder(folder, mean, std)
    list(images.batches(nchw, 0, keyed_rng(seed, ORDER_KEY)))  # checks the input takes images
    picks = ec.image_order(len(images.files), stop, order, keyed_rng(seed, ORDER_KEY))[start:]
    return np.stack([images.load(images.files[i], nchw[1:]) for i in picks]).transpose(perm)


def _from_nchw(rank: int, spatial: Sequence[int] | None) -> list[int]:
    """The transpose taking an N, C, H, W image batch to a rank-4 input whose H, W sit at tensor
    axes ``spatial`` (identity for NCHW, and for anything not rank 4: ImageFolder refuses it)."""
    if rank != 4 or spatial is None or len(spatial) != 2:
        return list(range(rank))
    channel = next(a for a in range(1, 4) if a not in spatial)
    source = {0: 0, channel: 1, spatial[0]: 2, spatial[1]: 3}
    return [source[t] for t in range(4)]


def compute_erf(model: ModelSource, output: str | None = None, *,
                unit: Sequence[int] | None = None, **options: Any) -> ERFResult:
    """The ERF of one output unit of an ONNX model, averaged as Luo et al. do, with its metrics
    (``unit``: its index, default the centre; ``options``: those of ``compute_erfs``)."""
    return compute_erfs(model, output, units=[unit], **options)[0]


def compute_erfs(model: ModelSource, output: str | None = None, *,
                 units: Sequence[Sequence[int] | None] = (None,),
                 input_shape: Sequence[int] | None = None,
                 channel: int | None = None, runs: int | None = None, method: str = "grad",
                 inputs: str | None = None, reinit: str = "none", weight_runs: int = 1,
                 absolute: bool = True, seed: int = 0, batch: int = 0, progress: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 fd_step: float | None = None, providers: Sequence[str] | None = None,
                 threads: int = 0, conventions: ec.ERFConventions | None = None,
                 input_name: str | None = None, layout: str | None = None,
                 rules: custom_ops.RuleSet | str | Path | Sequence[str | Path] | None = None,
                 assume_pointwise: bool | None = None, fill: Mapping[str, float] | None = None,
                 fd_budget: float = FD_BUDGET_S, workers: int = 1, scheduler: str | None = None,
                 provider: str = "auto", options: ModelOptions | None = None,
                 region: str = "full", step_back: bool = False, unit_axis: int | None = None) -> list[ERFResult]:
    """The ERFs of several units of one tensor (``units``: indices, None for the centre), each
    averaged as Luo et al. do over the same inputs, with its metrics; one backward serves several
    units (one seed per batch item).

    ``model``: path, ``zoo:NAME`` or ModelProto; ``inputs``: "gaussian", "uniform" or a folder of
    PNG/JPEG images; ``reinit``: "none", "ones", "he", "glorot", "corners" or "periphery[:S]"
    (Luo's new initialisation; ``weight_runs`` draws);
    deterministic under ``seed`` whatever the grouping: input i of weight draw w comes from its own
    Generator (``keyed_rng``); ``batch`` inputs per run (0: ``auto_batch``); ``workers`` local
    processes or a Dask ``scheduler`` address share the weight draws and inputs, their sums merged
    in a fixed order (``erf_parallel``); ``threads``: onnxruntime threads per session, 0 to let
    rfgraph choose: one process then runs one input batch per core at a time, one thread each, on
    the same session (``erf_parallel.lanes``); ``provider``: "cpu", "cuda" or "auto" (CUDA when
    onnxruntime has it); ``conventions``
    (e.g. ``erf_conventions.REPLKNET``) sets the scalar, aggregation, centre rule, image order and
    the defaults of ``runs`` and ``inputs``; ``channel`` and ``absolute=False`` fold into it.
    ``options`` (``ModelOptions``) say how the model is read, as for ``rfgraph.analyze``: the
    input differentiated (``input_name``, else the one ``input_shapes`` names, else the first) and
    its shape, ``layout``, ``rules``, ``assume_pointwise``, and ``fill``: the model's other inputs
    given a value (an RNN state, a sample rate: {"sr": 16000}), each a constant of its declared
    shape.  The keywords ``input_name``, ``input_shape`` (the differentiated input's shape),
    ``layout``, ``rules``, ``assume_pointwise`` and ``fill`` set those fields over ``options``.
    ``fd_budget``: seconds the finite differences may take, estimated before they start
    (forward passes x the measured cost of one).  ``region``: "full" (the whole input), "cone"
    (each unit on the crop of its field, ``rfgraph.cone``: the same gradient at the cost of the
    cone; refused, saying why, where it cannot be used) or "auto" (the cone where it is smaller
    than the input and exact, else the full input; a note says which and why).
    ``step_back`` (implied when ``output`` is None): where the seeded channel sum of the tensor is
    constant (a Softmax or a uniformly scaled LayerNorm over the channels), the ERF of the centre
    is that of the normalisation's input instead, with a note; else such a tensor is refused.
    ``unit_axis``: for a tensor the analysis gives no axis of positions (a ViT's tokens after its
    class token), the tensor axis each unit's one index runs along (its field is global).
    """
    import time

    from . import erf_parallel

    method_e = Method(method)
    region_e = _region(region)
    reinit_e = WeightInit.parse(reinit)
    conv = effective_conventions(conventions, channel, absolute)
    runs = conv.runs if runs is None else runs
    if runs < 1 or weight_runs < 1 or workers < 1 or not units:
        raise RFGraphError("--runs, --weight-runs and --workers must be at least 1, and a unit given")
    if threads < 0:
        raise RFGraphError(f"--threads {threads}: give 0 (rfgraph's choice) or a number of threads")
    inputs, notes = _inputs(inputs, conv)
    conv = replace(conv, runs=runs, inputs=inputs)
    kind, folder = _input_kind(inputs)
    providers, provider_notes = resolve_providers(provider, providers)
    opts = model_options(options, input_shapes=None if input_shape is None else {input_name or "": input_shape},
                         input_name=input_name, layout=layout, rules=rules,
                         assume_pointwise=assume_pointwise, fill=fill)
    proto, analysis, load_notes = _load(model, opts)
    notes = load_notes + notes
    input_name, full_shape, spatial = _input_facts(proto, analysis, opts.erf_input()[0])
    step_back = (step_back or output is None) and all(u is None for u in units) and unit_axis is None
    if output is None:
        output, stopped = _default_output(proto, analysis)
        notes += stopped
    if analysis is not None and output in analysis.pieces:
        output, units, piece_note = _piece_units(analysis.pieces[output], output, units)
        notes.append(piece_note)
    proto = _only_what_feeds(proto, output, input_name)
    _refuse_other_inputs(proto, input_name)

    def seeded_targets(name: str) -> tuple[list[Target], tuple[onnx.NodeProto, set[int]] | None, str]:
        """The targets on tensor ``name``, the normalisation computing it (when its channel sum is
        seeded) and why that sum is constant ("" when it is not)."""
        shape = _output_shape(proto, name, input_name, full_shape)
        found = [resolve_target(analysis, proto, name, u, conv.channel, len(full_shape), spatial,
                                shape, conv.centre, unit_axis) for u in units]
        by = _normalisation(proto, found[0].output, len(found[0].shape)) \
            if conv.scalar in (ec.Scalar.SUM, ec.Scalar.MEAN) else None  # the channel sum is seeded
        return found, by, _constant_sum(proto, found[0], by)

    targets, norm, constant = seeded_targets(output)
    while constant and step_back and norm is not None:  # a chain of them: wav2vec2-conformer's two last LayerNorms
        notes.append(f"'{output}' comes from {norm[0].op_type} '{norm[0].name}', which {constant}: its "
                     f"channel sum is constant, so the ERF is that of its input '{norm[0].input[0]}' "
                     f"(--channel C for one channel of '{output}')")
        output = norm[0].input[0]
        targets, norm, constant = seeded_targets(output)
    if constant:
        raise RFGraphError(f"'{targets[0].output}' comes from {norm[0].op_type} '{norm[0].name}', which "  # type: ignore[index]
                           f"{constant}: summed over channels it is constant, so its gradient is rounding "
                           f"noise, not an ERF; pick one channel (--channel C) or a tensor before it "
                           f"(--output NAME)")
    notes += _seed_notes(targets[0], conv, norm) + _gate_notes(analysis, output) + _bound_notes(analysis, output)
    notes += _repeat_notes(analysis, output, targets)
    silent = silent_notes(proto, input_name, output, _analysis_options(opts, input_name),
                          None if (ep := _endpoint(analysis, output)) is None else ep.r) \
        if reinit_e.kind is Reinit.NONE else []  # the model's own weights: say which silence a path
    notes += silent
    make_seed(targets[0], 1)  # checks the channel against the tensor's axes, with their names
    plan = ec.seed_plan(proto, output, conv, _unit_channels(targets[0]))
    batch = batch or auto_batch(full_shape, providers)
    if len(units) > 1 and method_e is Method.GRAD:  # one backward per up to MOST_UNITS units
        batch = max(batch, min(len(units), MOST_UNITS))
    t0 = time.perf_counter()  # the cones' planning and check included
    seeded = tuple(replace(t, output=plan.output, channel=plan.channel) for t in targets)
    cones, cone_notes = _cones(region_e, method_e, plan.model, analysis, output, targets, seeded,  # type: ignore[arg-type]
                               tuple(full_shape), opts, runs * weight_runs)
    lanes = erf_parallel.lanes(workers, scheduler, threads, method_e is Method.GRAD and _on_cpu(providers),
                               weight_runs * -(-runs // batch), batch * activation_bytes(plan.model))  # type: ignore[arg-type]
    sampler = Sampler(plan.model, reinit_e, method_e, seeded,  # type: ignore[arg-type]
                      input_name, tuple(full_shape), tuple(spatial), batch, kind, folder,
                      tuple(mean), tuple(std), conv, plan.scale, seed, fd_step, providers,
                      threads or erf_parallel.threads_per_worker(workers, scheduler, lanes), cones)
    sampler, guard_notes, checked = _guard(sampler, region_e, fd_budget, runs * weight_runs)
    notes += cone_notes + guard_notes
    sums = erf_parallel.sample_sums(sampler, weight_runs, runs, workers, scheduler, progress,
                                    fd_budget, checked, lanes)
    notes += provider_notes + erf_parallel.provider_notes(sums.providers)
    return [_result(total, int(kept), int(drawn), target, sampler, weight_runs, sums.batch,
                    time.perf_counter() - t0, notes, bool(silent))
            for total, kept, drawn, target in zip(sums.totals, sums.kept, sums.drawn, targets)]


MOST_UNITS = 8  # units sharing one backward (batch items) when several are asked for


def _first_output(proto: onnx.ModelProto, analysis: Analysis | None) -> str:
    """The model's first output (the tensor it was, where the analysis cut it into pieces)."""
    first = proto.graph.output[0].name
    cut = analysis.pieces if analysis is not None else {}
    return next((out for out, pieces in cut.items() if pieces[0].name == first), first)


def _default_output(proto: onnx.ModelProto, analysis: Analysis | None) -> tuple[str, list[str]]:
    """The tensor whose ERF is shown when none is named: the model's first output, or, where it
    lies after the analysis stopped, the last feature map analysed before the stop (the end point
    ``analyze`` shows; never the input itself), with a note saying so."""
    first = _first_output(proto, analysis)
    if analysis is None or not analysis.stops or first in analysis.endpoints:
        return first, []
    made = {o for n in proto.graph.node for o in n.output}
    before = [t for t in analysis.default_endpoints() if t in made]
    if not before:
        return first, []
    stop = analysis.stops[0]
    note = (f"'{first}' lies after the analysis stopped at '{stop.node}' ({stop.op}): the ERF is that of "
            f"'{before[-1]}', the last feature map analysed before it (--output NAME for another)")
    return before[-1], [note]


def _only_what_feeds(proto: onnx.ModelProto, output: str, input_name: str) -> onnx.ModelProto:
    """The model cut to what ``output`` depends on (``cone.pruned``): what comes after it (an op
    onnxruntime cannot run, such as a TFLite op tf2onnx left; another head) and inputs it never
    reads no longer stop the runs.  Unchanged where every node feeds it, or where no node
    computes it or it does not read ``input_name`` (the errors say why)."""
    graph = proto.graph
    needed = vjp_mod.ancestors(proto, output)
    if not needed or (len(needed) == len(graph.node) and [o.name for o in graph.output] == [output]):
        return proto
    cut = cone_mod.pruned(proto, output)
    return cut if any(i.name == input_name for i in cut.graph.input) else proto


def _piece_units(pieces: Sequence[Piece], output: str, units: Sequence[Sequence[int] | None]
                 ) -> tuple[str, list[Sequence[int] | None], str]:
    """A tensor cut into pieces (``analysis.pieces``): the piece holding the units (each one
    index along the axis cut; none: the first piece's centre), their indices in it, and a note."""
    local: list[Sequence[int] | None] = [None] * len(units)
    piece = pieces[0]
    if all(u is not None for u in units):
        piece, found = one_piece(output, pieces, units)  # type: ignore[arg-type]
        local = [(k,) for k in found]
    return piece.name, local, (f"'{output}' joins grids of different sizes along axis {piece.axis}: the unit is "
                               f"in its piece '{piece.name}' (elements {piece.start}:{piece.stop})")


def _on_cpu(providers: Sequence[str] | None) -> bool:
    """Whether the gradient sessions run on the CPU only (no CUDA among ``providers``)."""
    return runtime.CUDA not in (runtime.best_providers() if providers is None else providers)


def activation_bytes(model: onnx.ModelProto) -> int:
    """Twice the bytes of every tensor the nodes of ``model`` produce, at the shapes inference
    knows (unknown ones count 0, an unknown element size 4): a bound on one input's run of its
    gradient graph, whose backward holds the forward's values and gradients of their size."""
    from .onnx_import import elem_types, element_size, known_shapes

    shapes, types = known_shapes(model), elem_types(model)
    produced = {o for n in model.graph.node for o in n.output if o}
    return 2 * sum(math.prod(shapes[t]) * (element_size(types.get(t, 0)) or 4)
                   for t in produced if t in shapes)

# Region.AUTO cuts inside the network when the multiply-accumulates the cuts save over the run
# (forward and backward, every input) reach this: their set-up (two TRF passes per cut, the
# whole-graph check, one more gradient graph) took 3.0 s for ResNet-50 at 224x224 on the 2-core
# box, about 120 GMAC of its gradient rate (1.4 s for YOLOv8n at 1024, benchmarks/README.md).
# ResNet-50's centre unit saves 0.5 GMAC per input (from ~230 inputs), YOLOv8n's P3 centre 7.5
# (from 16).
INNER_CUT_SETUP_MACS = 120e9


def gradient_engine(model: ModelSource, output: str | None = None, *, unit: Sequence[int] | None = None,
                    channel: int | None = None, region: str = "auto", batch: int = 1, threads: int = 0,
                    inputs: int = 1000, config: dict[str, str] | None = None
                    ) -> tuple[UnitsEngine | ConeEngine, list[str]]:
    """The engine ``compute_erfs`` samples one unit's gradient with (its cones, inner cuts and
    their check included), at the model's own weights, and the notes saying where it runs: for
    callers that bring their own inputs (``benchmarks/bench_erf.py``).  ``engine(x)[0]`` is the
    input gradient of the inputs ``x`` (at most ``batch``); ``inputs``: how many the caller means to
    run (region "auto" weighs the set-up of cuts inside the network against them)."""
    region_e, opts = _region(region), model_options(None)
    proto, analysis, notes = _load(model, opts)
    input_name, full_shape, spatial = _input_facts(proto, analysis)
    output = output or _first_output(proto, analysis)
    if analysis is not None and output in analysis.pieces:
        output, (unit,), piece_note = _piece_units(analysis.pieces[output], output, [unit])
        notes.append(piece_note)
    target = resolve_target(analysis, proto, output, unit, channel, len(full_shape), spatial,
                            _output_shape(proto, output, input_name, full_shape))
    cones, cone_notes = _cones(region_e, Method.GRAD, proto, analysis, output, [target], [target],
                               tuple(full_shape), opts, inputs)
    sampler = Sampler(proto, WeightInit.parse("none"), Method.GRAD, (target,), input_name, tuple(full_shape),
                      tuple(spatial), batch, InputKind.GAUSSIAN, None, IMAGENET_MEAN, IMAGENET_STD, ec.DEFAULT,
                      1.0, 0, None, [runtime.CPU], threads, cones, config)
    sampler, guard_notes, engine = _guard(sampler, region_e, FD_BUDGET_S, 1)
    return engine or sampler.engine(0), notes + cone_notes + guard_notes


def _region(region: str) -> Region:
    try:
        return Region(region)
    except ValueError:
        raise RFGraphError(f"region '{region}': expected auto, cone or full") from None


def _cones(region: Region, method: Method, model: onnx.ModelProto, analysis: Analysis | None,
           output: str, targets: Sequence[Target], seeded: Sequence[Target],
           full_shape: tuple[int, ...], opts: ModelOptions, inputs: int
           ) -> tuple[tuple[cone_mod.Cone, ...], list[str]]:
    """The cones of the units (``rfgraph.cone.plan``) and, for the units left on the full image,
    why (``Region.CONE``: an error instead).  The cone inside the network (``rfgraph.trim``, or
    ``rfgraph.cuts`` where that saves more; ``_narrowed``) is used under ``Region.CONE``, and under
    ``Region.AUTO`` where it saves enough over the run's ``inputs`` to repay its set-up
    (``INNER_CUT_SETUP_MACS``)."""
    if region is Region.FULL:
        return (), []
    if analysis is None:
        plans: list[Any] = ["there is no TRF pass"] * len(targets)
    else:
        cache: dict[tuple[int, ...], Any] = {}
        plans = [cone_mod.plan(model, analysis, output, t, s, full_shape, opts, cache)
                 for t, s in zip(targets, seeded)]
        run = None if region is Region.CONE else inputs
        # each layer cropped: not under finite differences (their quotients magnify the rounding of
        # convolutions run at other sizes past the check's tolerance), nor for several units that
        # read the whole input (they share one model; a rewrite each would not)
        trims = [method is Method.GRAD and (len(targets) == 1 or not isinstance(p, str)) for p in plans]
        plans = [_narrowed(p, model, analysis, output, t, s, full_shape, opts, cache, run, ok)
                 for p, t, s, ok in zip(plans, targets, seeded, trims)]
    why_full: dict[str, list[Target]] = {}
    for t, p in zip(targets, plans):
        if isinstance(p, str):
            why_full.setdefault(p, []).append(t)
    notes = [f"computed on the full image{_which(ts, len(targets))}: {why}" for why, ts in why_full.items()]
    refused = [n for n, why in zip(notes, why_full) if not why.startswith(cone_mod.COVERS)]
    if region is Region.CONE and refused:
        raise RFGraphError(f"--region cone: {refused[0]}")
    return cone_mod.group(plans), notes


def _narrowed(plan: tuple[cone_mod.Crop, onnx.ModelProto, Target] | str, model: onnx.ModelProto,
              analysis: Analysis, output: str, target: Target, seeded: Target, full_shape: tuple[int, ...],
              opts: ModelOptions, cache: dict[tuple[int, ...], Any], inputs: int | None = None,
              trim: bool = True) -> tuple[cone_mod.Crop, onnx.ModelProto, Target] | str:
    """``plan`` with the layers of its model on the unit's cone inside the network: each layer
    cropped (``rfgraph.trim``, where ``trim``) or the last ones after cut tensors
    (``rfgraph.cuts``), whichever saves more; for a unit whose field covers the input, or inside
    its input crop, or (each layer cropped only) on the whole input where the field is global or
    gated; with ``inputs``, only where the MACs saved over that many repay the set-up."""
    if plan == cone_mod.COVERS:
        crop = cone_mod.Crop.whole(full_shape, analysis.spatial_axes)
        inner, inner_analysis, inner_target = model, analysis, target
    elif isinstance(plan, str):
        return _trimmed_whole(plan, model, analysis, seeded, full_shape, inputs) if trim else plan
    else:
        crop, inner, inner_target = plan
        inner_analysis = cache[crop.shape(full_shape)][1]
    inner_seeded = seeded if isinstance(plan, str) else inner_target
    if inner_target.region is None:
        return plan
    trimmed = _trimmed(inner, inner_seeded, analysis.input_name, crop.shape(full_shape)) if trim else None
    region = inner_target.region
    nothing: tuple[list[str], int] = ([], 0)
    chain, saved = _or_else(lambda: cuts_mod.choose(inner, inner_analysis, output, inner_seeded.output, region),
                            nothing)
    use_trim = trimmed is not None and trimmed[0].saved >= saved
    if use_trim:
        saved = trimmed[0].saved  # type: ignore[index]
    elif not chain:
        return plan
    if not _repays(saved, inputs):
        what = ("each layer on the unit's cone" if use_trim
                else f"the cone inside the network (from '{chain[0]}' on, cropped)")
        return plan if plan != cone_mod.COVERS else (
            f"{plan}; {what} would save {2 * saved / 1e9:.2g} GMAC per input, too little over {inputs} inputs "
            f"to repay planning and checking it (--region cone uses it)")
    if use_trim:
        made_trim, seeded_t = trimmed  # type: ignore[misc]
        instead = functools.partial(_narrowed, plan, model, analysis, output, target, seeded, full_shape, opts,
                                    cache, inputs, False)
        return (replace(crop, trimmed=made_trim.box, trim_text=made_trim.text(), fallback=instead),
                made_trim.model, seeded_t)
    made = _or_else(lambda: cuts_mod.narrow(inner, inner_analysis, output, inner_target, inner_seeded, opts, chain),
                    None)
    runtime.release_free_memory()  # the sub-models the cuts were planned with
    if made is None:
        return plan
    merged, seeded_m, cuts = made
    return replace(crop, inner=cuts), merged, seeded_m


def _repays(saved: int, inputs: int | None) -> bool:
    """Whether a cone inside the network that saves ``saved`` forward MACs per input (about as
    many again in the backward) repays its set-up over ``inputs`` (None: always used)."""
    return inputs is None or 2 * saved * inputs >= INNER_CUT_SETUP_MACS


_T = TypeVar("_T")


def _or_else(plan: Callable[[], _T], fallback: _T) -> _T:
    """``plan()``, or ``fallback`` where planning a cone inside the network fails on some model:
    the model then runs as it is, never wrong (RFGRAPH_DEBUG=1 raises instead)."""
    try:
        return plan()
    except Exception:
        if os.environ.get("RFGRAPH_DEBUG"):
            raise
        return fallback


def _trimmed_whole(why: str, model: onnx.ModelProto, analysis: Analysis, seeded: Target, full_shape: tuple[int, ...],
                   inputs: int | None) -> tuple[cone_mod.Crop, onnx.ModelProto, Target] | str:
    """A unit that reads the whole input (``why``: its field is global, gated...) with each layer
    on its cone (``rfgraph.trim``: the last transformer block on one token), or ``why`` where that
    saves too little over ``inputs`` or cannot be made."""
    if not seeded.tensor_axes:
        return why
    made = _trimmed(model, seeded, analysis.input_name, full_shape)
    if made is None or not _repays(made[0].saved, inputs):
        return why
    crop = cone_mod.Crop.whole(full_shape, analysis.spatial_axes)
    return replace(crop, trimmed=made[0].box, trim_text=f"{made[0].text()}; {why}"), made[0].model, made[1]


def _trimmed(model: onnx.ModelProto, seeded: Target, input_name: str, input_shape: tuple[int, ...]
             ) -> tuple[trim_mod.Trimmed, Target] | None:
    """``model`` with each layer on the cone of ``seeded``'s unit (``rfgraph.trim``) and the unit
    in the output it computes, or None where that saves too little or cannot be made."""
    if seeded.channel is None and _producer(model, seeded.output) in NORMALISING_OPS:
        return None  # a channel sum after a normalisation: gradient ~0, the check would compare rounding

    def rewrite() -> trim_mod.Trimmed | None:
        shapes = vjp_mod.tensor_shapes(prepare(model, input_shape, input_name), input_name)[0]
        return trim_mod.trim(model, shapes, seeded.output, seeded.tensor_axes, tuple((u, u) for u in seeded.unit))

    made = _or_else(rewrite, None)
    if made is None:
        return None
    shape = list(seeded.shape)
    for ax, (lo, hi) in zip(seeded.tensor_axes, made.box):
        shape[ax] = hi - lo + 1
    unit = tuple(u - lo for u, (lo, _) in zip(seeded.unit, made.box))
    return made, replace(seeded, shape=tuple(shape), unit=unit)


def _which(targets: Sequence[Target], total: int) -> str:
    """' for unit (3, 4), (5, 6)' when some of several units are meant, else ''."""
    if total == 1:
        return ""
    return " for unit " + ", ".join(str(tuple(t.unit)) for t in targets)


def _guard(sampler: Sampler, region: Region, fd_budget: float, inputs: int
           ) -> tuple[Sampler, list[str], UnitsEngine | ConeEngine | None]:
    """Each cone checked on the first input of the first weight draw against the full image
    (``cone.GUARD_TOLERANCE`` of max |g|): one that differs is dropped (its units use the full
    image), or refused under ``Region.CONE``; a rewritten model (``rfgraph.trim``) that differs
    by float32 rounding only gives way to its plan without the rewrite, checked in turn; notes
    say which ran where; and the engine of weight draw 0 when every cone was kept (the sampling
    reuses it).  Finite differences are refused first when the run's ``inputs`` on the cones, or
    the check's one input on the full image, are over ``fd_budget``.  Gradient graphs are built
    one at a time (the whole graph's freed before the cones'), so the check adds no memory peak."""
    from .erf_parallel import check_fd_cost

    if not sampler.cones:
        return sampler, [], None
    coned: UnitsEngine | ConeEngine | str | None = None
    if sampler.method is Method.FD:  # light engines: the run's cost is refused before any gradient
        coned = _cone_engine(sampler, region)
        if not isinstance(coned, str):
            check_fd_cost(coned, inputs, fd_budget)
    full = replace(sampler, cones=()).engine(0)
    check_fd_cost(full, 1, fd_budget)
    x = sampler.first_input(full.dtype)
    g_full = full(x)
    del full
    runtime.release_free_memory()
    return _checked(sampler, region, x, g_full, coned, fd_budget, inputs)


def _checked(sampler: Sampler, region: Region, x: np.ndarray, g_full: list[np.ndarray],
             coned: UnitsEngine | ConeEngine | str | None, fd_budget: float, inputs: int
             ) -> tuple[Sampler, list[str], UnitsEngine | ConeEngine | None]:
    """``_guard``'s comparison of the cones' gradients of ``x`` with the full image's ``g_full``
    (``coned``: their engine when ``_guard`` built and costed it, else built and costed here)."""
    from .erf_parallel import check_fd_cost

    if coned is None:
        coned = _cone_engine(sampler, region)
        if not isinstance(coned, str):
            check_fd_cost(coned, inputs, fd_budget)
    if isinstance(coned, str):
        return replace(sampler, cones=()), [coned], None
    g_cone = coned(x)
    kept, kept_notes, notes, instead = [], [], [], []
    for c in sampler.cones:
        which = _which([sampler.targets[k] for k in c.units], len(sampler.targets))
        worst = [cone_mod.mismatch(g_cone[k], g_full[k]) for k in c.units]
        if all(w is not None and w <= cone_mod.GUARD_TOLERANCE for w in worst):
            kept.append(c)
            kept_notes.append(f"computed on the unit's cone{which}: input crop {c.crop.text(sampler.full_shape)}; "
                              f"exact: equal to the full-image gradient on the first input (<= "
                              f"{cone_mod.GUARD_TOLERANCE:g} of max |g|)")
            continue
        largest = max((w for w in worst if w is not None), default=0.0)
        diff = ("differ in which entries are finite" if None in worst
                else f"differ by {largest:.2g} of max |g|")
        rounding = None not in worst and largest < cone_mod.ROUNDING_LEVEL
        if rounding and c.crop.fallback is not None and len(c.units) == 1:
            notes.append(f"not {c.crop.trim_text}{which}: its gradient and the full image's {diff} (float32 "
                         f"rounding at the cropped sizes), over the {cone_mod.GUARD_TOLERANCE:g} allowed")
            instead.append((c.units[0], c.crop.fallback()))
            continue
        cause = ("float32 rounding differs at the crop's size" if rounding
                 else "the model's values depend on the input size")
        why = (f"computed on the full image{which}: the gradient of the first input on the crop and the "
               f"full image's {diff}, over the {cone_mod.GUARD_TOLERANCE:g} allowed ({cause}); the crop: "
               f"{c.crop.text(sampler.full_shape)}")
        if region is Region.CONE:
            raise RFGraphError(f"--region cone: {why}")
        notes.append(why)
    if instead:
        return _without_rewrite(sampler, region, x, g_full, kept, notes, instead, fd_budget, inputs)
    return replace(sampler, cones=tuple(kept)), kept_notes + notes, coned if len(kept) == len(sampler.cones) else None


def _without_rewrite(sampler: Sampler, region: Region, x: np.ndarray, g_full: list[np.ndarray],
                     kept: list[cone_mod.Cone], notes: list[str], instead: list[tuple[int, Any]],
                     fd_budget: float, inputs: int) -> tuple[Sampler, list[str], UnitsEngine | ConeEngine | None]:
    """The cones kept and, for the units whose rewrite was refused, their plans without it (the
    cuts, the input crop alone, or the full image), checked against the same gradient."""
    plans: list[Any] = ["kept"] * len(sampler.targets)
    for k, plan in instead:
        plans[k] = plan
    for k, plan in instead:
        if isinstance(plan, str):
            why = f"computed on the full image{_which([sampler.targets[k]], len(sampler.targets))}: {plan}"
            if region is Region.CONE and not plan.startswith(cone_mod.COVERS):
                raise RFGraphError(f"--region cone: {why}")
            notes.append(why)
    again = replace(sampler, cones=tuple(kept) + cone_mod.group(plans))
    again, more, engine = _checked(again, region, x, g_full, None, fd_budget, inputs)
    return again, notes + more, engine


def _cone_engine(sampler: Sampler, region: Region) -> UnitsEngine | ConeEngine | str:
    """Weight draw 0's engine with the cones, or why the full image is used when it cannot be
    built (``Region.CONE``: an error)."""
    try:
        return sampler.engine(0)
    except Exception as exc:  # noqa: BLE001 - the gradient graph at a crop's size: the full image
        why = f"computed on the full image: the gradient graph at the crop's size failed ({exc})".splitlines()[0]
        if region is Region.CONE:
            raise RFGraphError(f"--region cone: {why}") from None
        return why


def _result(total: np.ndarray, kept: int, drawn: int, target: Target, sampler: Sampler,
            weight_runs: int, batch: int, seconds: float, notes: list[str], silent: bool = False) -> ERFResult:
    """One unit's ERF: the mean of its kept maps, with its metrics and notes (``silent``: some
    nodes with all-zero weights pass no gradient)."""
    conv, runs = sampler.conv, sampler.conv.runs
    notes = notes + _skipped_notes(drawn, kept, runs * weight_runs)
    erf = total / kept
    metrics = compute_metrics(erf, target.centre, target.trf_size)
    if metrics.centre_value == 0 and erf.max() > 0:
        notes.append(_zero_centre_note(target, silent, metrics))
    elif 0 < metrics.centre_value < FAINT_CENTRE * (top := float(np.abs(erf).max())):
        notes.append(_faint_centre_note(target, metrics, top))
    elif not erf.any():
        notes.append(_empty_map_note(sampler.method))
    if metrics.gaussian is not None and metrics.gaussian.r2 < POOR_FIT_R2:
        notes.append(f"the Gaussian fit explains little of the map (R^2 {metrics.gaussian.r2:.2g}): its "
                     f"sigma and radius do not describe this ERF (the table leaves them out; JSON keeps "
                     f"them); read erf_size, erf_extent and the map")
    return ERFResult(erf, metrics, target, sampler.input_name, sampler.full_shape, sampler.spatial,
                     sampler.method.value, runs, weight_runs, conv.aggregation is ec.Aggregation.ABS,
                     batch, seconds, tuple(notes), conv, kept, displayed_area_ratios(erf, conv))


FAINT_CENTRE = 0.01  # a centre value below this share of the map's maximum makes Luo's size count noise


def _faint_centre_note(target: Target, metrics: ERFMetrics, top: float) -> str:
    """Why Luo's size means little when the centre pixel is faint: its threshold is relative to
    the centre value, so nearly every pixel the gradient reaches counts."""
    where = "the unit's centre pixel" if target.centre is not None else "the map's centre pixel"
    return (f"the ERF at {where} is {metrics.centre_value / top:.2g} of its maximum, so Luo's size "
            f"(the pixels above {1 - LUO_FRACTION:.2%} of the centre value) counts most of what the gradient reaches; "
            f"read erf_extent and the map (the ERF's centre of mass is {_mass_text(metrics)})")


def _zero_centre_note(target: Target, silent: bool, metrics: ERFMetrics) -> str:
    """Why Luo's size is 0: nothing reaches the centre pixel, and what that centre is."""
    where = ("the unit's centre pixel" if target.centre is not None else
             "the map's centre pixel (the unit has no TRF centre: its field is global, or the analysis did "
             "not reach its tensor; the map's centre stands for it)")
    if silent:
        why = "the paths that carry signal do not reach it (see the note on all-zero weights)"
    elif target.centre is None:
        why = "no run's gradient reaches it"
    else:
        return (f"the ERF is 0 at {where} (every run had a dead path there), so Luo's size is 0; "
                "average more runs (--runs)")
    return f"the ERF is 0 at {where}: {why}, so Luo's size is 0; the ERF's centre of mass is {_mass_text(metrics)}"


def _mass_text(metrics: ERFMetrics) -> str:
    """The ERF's centre of mass, per axis, as the notes print it."""
    return " x ".join(f"{c:.4g}" for c in metrics.centre_of_mass)


@dataclass(frozen=True)
class Sampler:
    """What a process needs to draw samples (weight draw w, input i) of an ERF and sum their
    maps; picklable, so worker processes and a cluster compute exactly the samples one would."""

    model: onnx.ModelProto
    reinit: WeightInit
    method: Method
    targets: tuple[Target, ...]  # seeded (the seed plan's tensor and channel)
    input_name: str
    full_shape: tuple[int, ...]
    spatial: tuple[int, ...]
    batch: int
    kind: InputKind
    folder: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    conv: ec.ERFConventions
    scale: float
    seed: int
    fd_step: float | None = None
    providers: Sequence[str] | None = None
    threads: int = 0
    cones: tuple[cone_mod.Cone, ...] = ()  # units computed on their crops (the others: full image)
    config: dict[str, str] | None = None  # onnxruntime session config entries (benchmarks)

    def draws(self, runs: int) -> int:
        """Inputs a weight run may draw: ``runs``, and replacements for non-finite ones."""
        return runs * (1 + NONFINITE_REDRAWS) if self.conv.skip_nonfinite else runs

    def engine(self, w: int) -> UnitsEngine | ConeEngine:
        """The gradient engine of weight draw ``w`` (its weights from their own Generator); with
        cones, their units run on their crops (the crop models given the same weights)."""
        kept = self.reinit.kind is Reinit.NONE  # the model's own weights: no copy of it (or of a crop model)
        weights = self.model if kept else reinitialise(self.model, self.reinit, keyed_rng(self.seed, WEIGHT_KEY, w))
        if not self.cones:
            return self._units_engine(weights, self.targets, self.full_shape)
        parts: list[tuple[tuple[int, ...], cone_mod.Crop | None, UnitsEngine]] = [
            (c.units, c.crop, self._units_engine(c.model if kept else cone_mod.with_weights(c.model, weights),
                                                 c.targets, c.crop.shape(self.full_shape)))
            for c in self.cones]
        coned = {k for c in self.cones for k in c.units}
        rest = tuple(k for k in range(len(self.targets)) if k not in coned)
        if rest:
            parts.append((rest, None, self._units_engine(weights, [self.targets[k] for k in rest],
                                                         self.full_shape)))
        return ConeEngine(parts, self.full_shape, len(self.targets))

    def _units_engine(self, model: onnx.ModelProto, targets: Sequence[Target],
                      shape: tuple[int, ...]) -> UnitsEngine:
        return UnitsEngine(self.method, model, targets, self.input_name, shape, self.spatial,
                           self.batch, self.fd_step, self.providers, self.threads, self.config)

    def first_input(self, dtype: np.dtype) -> np.ndarray:
        """Input 0 of weight draw 0, as the sums draw it."""
        return next(input_batches(self.kind, (1,) + tuple(self.full_shape[1:]), 0, 1, self.seed, 0, dtype,
                                  self.folder, self.mean, self.std, self.conv.order, self.spatial))

    def add(self, totals: np.ndarray, engine: UnitsEngine | ConeEngine, w: int, start: int, stop: int,
            want: Sequence[int], bar: Callable[..., None]) -> tuple[np.ndarray, np.ndarray]:
        """Add the maps of inputs ``start``.. of weight draw ``w`` to ``totals`` (one per unit)
        until unit k has ``want[k]`` kept or input ``stop`` is reached: (kept, drawn) per unit."""
        shape = (engine.batch,) + tuple(self.full_shape[1:])
        batches = input_batches(self.kind, shape, start, stop, self.seed, w, engine.dtype,
                                self.folder, self.mean, self.std, self.conv.order, self.spatial)
        return _accumulate(totals, engine, batches, self.scale, self.spatial, self.conv, want, bar)


def resolve_providers(provider: str, providers: Sequence[str] | None = None
                      ) -> tuple[list[str] | None, list[str]]:
    """onnxruntime execution providers for ``provider`` (cpu, cuda, auto: CUDA when onnxruntime
    has it), unless ``providers`` are given; 'cuda' without CUDA is refused."""
    if providers is not None:
        return list(providers), []
    available = runtime.available_providers()
    cuda = runtime.CUDA in available
    if provider == "cpu" or (provider == "auto" and not cuda):
        return [runtime.CPU], []
    if provider not in ("cuda", "auto"):
        raise RFGraphError(f"--provider {provider}: expected cpu, cuda or auto")
    if not cuda:
        raise RFGraphError(f"--provider cuda: this onnxruntime has no CUDA execution provider "
                           f"(it has {', '.join(available)}); install onnxruntime-gpu, or use "
                           f"--provider cpu")
    return [runtime.CUDA, runtime.CPU], []


def displayed_area_ratios(erf: np.ndarray, conv: ec.ERFConventions) -> tuple[AreaRatio, ...]:
    """RepLKNet's area ratios (analyze_erf.get_rectangle) of the map as ``conv`` displays it, at
    metrics.AREA_THRESHOLDS; none unless the map is 2-D and its display scaled or normalised."""
    if erf.ndim != 2 or (conv.scaling is ec.Scaling.LINEAR and not conv.normalise):
        return ()
    shown = ec.displayed(erf, conv)
    return tuple(AreaRatio(t, *(ec.replknet_area_ratio(shown, t) or (None, None)))
                 for t in AREA_THRESHOLDS)


def effective_conventions(conventions: ec.ERFConventions | None, channel: int | None,
                          absolute: bool) -> ec.ERFConventions:
    """``conventions`` (default: Luo's) with ``channel`` (scalar 'channel') and ``absolute=False``
    (aggregation 'signed', allowed only over the default |.|) folded in."""
    conv = ec.DEFAULT if conventions is None else conventions
    if not absolute:
        if conv.aggregation not in (ec.Aggregation.ABS, ec.Aggregation.SIGNED):
            raise RFGraphError(f"signed gradients (--signed, absolute=False) contradict the "
                               f"'{conv.aggregation.value}' aggregation; give one of them")
        conv = replace(conv, aggregation=ec.Aggregation.SIGNED)
    if channel is not None:
        conv = replace(conv, scalar=ec.Scalar.CHANNEL, channel=channel)
    return conv


def _inputs(inputs: str | None, conv: ec.ERFConventions) -> tuple[str, list[str]]:
    """The inputs drawn: ``inputs``, else the conventions'; 'images' without a folder falls back
    to Gaussian inputs, with a note."""
    if inputs is not None:
        return inputs, []
    if conv.inputs == InputKind.IMAGES.value:
        note = ("these conventions average over images (RepLKNet: 50 ImageNet validation "
                "images), but no folder was given, so Gaussian inputs were used; give one with "
                "--inputs DIR")
        return InputKind.GAUSSIAN.value, [note]
    return conv.inputs, []


def _unit_channels(target: Target) -> int:
    """Elements of the unit's channel vector: the product of the non-batch axes that index no
    input spatial axis (1 when there are none)."""
    return int(np.prod([n for a, n in enumerate(target.shape)
                        if a > 0 and a not in target.tensor_axes], dtype=np.int64))


NONFINITE_REDRAWS = 1  # with skip_nonfinite, up to this many x runs extra inputs replace dropped ones


def _accumulate(totals: np.ndarray, engine: Callable[[np.ndarray], list[np.ndarray]],
                batches: Iterator[np.ndarray], scale: float, spatial: Sequence[int],
                conv: ec.ERFConventions, want: Sequence[int], bar: Callable[..., None]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Add per-sample maps to ``totals[k]`` (one per unit, float64) until unit k has ``want[k]``
    kept (RepLKNet draws the next image in place of a NaN one): (maps kept, inputs drawn)."""
    kept, drawn = np.zeros(len(want), np.int64), np.zeros(len(want), np.int64)
    for xb in batches:
        if (kept >= want).all():
            break
        for k, grads in enumerate(engine(xb)):
            if kept[k] >= want[k]:
                continue
            maps, keep = sample_maps(grads, scale, spatial, conv)
            used = _samples_used(keep, int(want[k] - kept[k]))
            totals[k] += maps[:used][keep[:used]].astype(np.float64).sum(axis=0)
            kept[k], drawn[k] = kept[k] + int(keep[:used].sum()), drawn[k] + used
        bar(len(xb))
    return kept, drawn


def _samples_used(keep: np.ndarray, need: int) -> int:
    """How many leading samples of a batch give ``need`` kept ones (all, when there are fewer)."""
    kept_at = np.flatnonzero(keep)
    return len(keep) if len(kept_at) <= need else int(kept_at[need - 1]) + 1


def _skipped_notes(drawn: int, kept: int, wanted: int) -> list[str]:
    """Raise when every sample was non-finite; notes when some were skipped or too few kept."""
    if kept == 0:
        raise RFGraphError(f"all {drawn} samples gave a non-finite gradient; nothing to average")
    notes = []
    if kept < drawn:
        notes.append(f"{drawn - kept} of {drawn} inputs gave a non-finite gradient and were "
                     "skipped")
    if kept < wanted:
        notes.append(f"only {kept} of the {wanted} samples asked for are finite; the ERF averages "
                     "those")
    return notes


AUTO_BATCH_ELEMENTS = 1 << 13  # CPU: batches only where ``most`` inputs fit in this many elements


def auto_batch(input_shape: Sequence[int], providers: Sequence[str] | None = None,
               most: int = 8) -> int:
    """Inputs per onnxruntime run: on CPU one, but ``most`` for tiny inputs whose run is mostly
    per-run overhead (measured, benchmarks/README.md: batch 8 is up to 1.5x slower per input at
    32x32 and ~25% at 224x224; faster only at 29x29x1).  On CUDA: ``most``."""
    if runtime.CUDA in (runtime.available_providers() if providers is None else providers):
        return most
    per_input = int(np.prod(input_shape[1:]))
    return most if per_input * most <= AUTO_BATCH_ELEMENTS else 1


def _empty_map_note(method: Method) -> str:
    """Why an ERF can be zero everywhere, and what to try."""
    if method is Method.FD:
        return ("the ERF is 0 everywhere: no perturbation changed the unit in float32 (a gradient "
                "below its resolution, e.g. through many saturated layers, or a dead unit); try "
                "--method grad, which is exact")
    return ("the ERF is 0 everywhere: the unit's gradient vanished for every input drawn (dead "
            "ReLUs, or a constant unit); average more runs (--runs), re-initialise the weights "
            "(--reinit he) or pick another unit")


def _engine(method: Method, weights: onnx.ModelProto, target: Target, input_name: str,
            full_shape: tuple[int, ...], spatial: Sequence[int], batch: int,
            fd_step: float | None, providers: Sequence[str] | None,
            threads: int, config: dict[str, str] | None = None) -> GradientEngine | FDEngine:
    """The gradient engine for ``method`` (an op without a VJP rule raises UnsupportedOpError
    naming the finite-difference engine as the way out)."""
    if method is Method.FD:
        return FDEngine(weights, target, input_name, full_shape, spatial, batch, fd_step)
    return GradientEngine(weights, target, input_name, full_shape, batch, providers, threads, config)


def _producer(proto: onnx.ModelProto, name: str) -> str | None:
    """The op type of the node computing tensor ``name`` (None for a graph input)."""
    return next((n.op_type for n in proto.graph.node if name in n.output), None)


def _constant_sum(proto: onnx.ModelProto, target: Target, norm: tuple[onnx.NodeProto, set[int]] | None) -> str:
    """Why the channel sum (or mean) of ``target``'s tensor is constant in exact arithmetic, so
    that its gradient is rounding noise, not an ERF: a Softmax over the summed axes (it sums to
    1), a LayerNormalization over them with one scale for all (the normalised values sum to 0);
    "" when it is not.  ``norm``: the normalisation computing the tensor (``_normalisation``)."""
    if norm is None:
        return ""
    node, normalised = norm
    if node.op_type == "LogSoftmax" or 0 in normalised or normalised & set(target.tensor_axes):
        return ""  # no constant sum, the sum runs over other axes too, or a position axis is normalised
    if node.op_type == "LayerNormalization" and not _uniform(vjp_mod.constant_reader(proto)(node.input[1])):
        return ""
    if node.op_type == "Softmax":
        return "sums to 1"
    return "has the same scale for every channel (its normalised values sum to 0)"


def _normalisation(proto: onnx.ModelProto, output: str, rank: int) -> tuple[onnx.NodeProto, set[int]] | None:
    """The normalisation (``NORMALISING_OPS``) computing ``output`` (of rank ``rank``; through
    Transposes: an NHWC norm put back in NCHW; and Identity / Dropout: a Paddle export's last
    node) and the axes of ``output`` it normalises over."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    node, perms = producer.get(output), []
    while node is not None and node.op_type in ("Transpose", "Identity", "Dropout"):
        if node.op_type == "Transpose":
            perms.append(list(next((a.ints for a in node.attribute if a.name == "perm"), ())))
        node = producer.get(node.input[0])
    if node is None or node.op_type not in NORMALISING_OPS or any(not p for p in perms):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1) % rank
    normalised = set(range(axis, rank)) if node.op_type == "LayerNormalization" else {axis}
    for perm in reversed(perms):  # where the normalised axes end up in ``output``
        normalised = {perm.index(a) for a in normalised}
    return node, normalised


def _uniform(value: np.ndarray | None) -> bool:
    """A known constant whose entries are all equal."""
    return value is not None and value.size > 0 and bool((value == value.flat[0]).all())


def _seed_notes(target: Target, conv: ec.ERFConventions,
                norm: tuple[onnx.NodeProto, set[int]] | None) -> list[str]:
    """Warn when the channel sum (or mean) of the seeded tensor is (nearly) constant, e.g. after
    LayerNorm with unit gamma: its gradient is then zero, up to rounding (``norm``: the
    normalisation computing the summed tensor, if any)."""
    notes = []
    if not target.tensor_axes and int(np.prod(target.shape[1:], dtype=np.int64)) > 1:
        notes.append(f"'{target.output}' has no axis of positions: its unit is the whole tensor "
                     f"(the union of its positions' fields), every element of {list(target.shape)} "
                     f"{'summed' if conv.channel is None else 'of channel ' + str(conv.channel)}")
    if norm is not None:
        notes.append(f"'{target.output}' comes from {norm[0].op_type}: summed over channels it is nearly "
                     "constant, so its gradient may be ~0; pick one channel (--channel C)")
    return notes


def _gate_notes(analysis: Analysis | None, output: str) -> list[str]:
    """After gates the TRF is the local field (gates held constant) but the ERF is the exact
    gradient, which also flows through each gate's pooling: say so."""
    ep = _endpoint(analysis, output)
    if ep is None or not ep.gates:
        return []
    note = (f"'{output}' is gated ({len(ep.gates)} gate(s): {', '.join(ep.gates[:3])}"
            f"{', ...' if len(ep.gates) > 3 else ''}): its TRF is the local field with the gates held "
            f"constant, while this ERF is the exact gradient, which also flows through each gate's "
            f"global pooling or normalisation statistics: its support is the whole input (small "
            f"outside the local field), and ERF/TRF compares it with the local field")
    return [note]


def _bound_notes(analysis: Analysis | None, output: str) -> list[str]:
    """Where the TRF is an upper bound (positions folded away and put back), ERF/TRF compares
    the ERF with that bound: say so."""
    ep = _endpoint(analysis, output)
    if ep is None or ep.bound_at is None or all(f.is_global for f in ep.fields):
        return []
    note = (f"the TRF of '{output}' is an upper bound from {ep.bound_at} (positions folded into "
            f"features and put back: each element is given its whole fold's field); ERF/TRF compares with it")
    return [note]


def _repeat_notes(analysis: Analysis | None, output: str, targets: Sequence[Target]) -> list[str]:
    """Where the unit axis repeats its grid (a YOLOv5 head's anchors), which repeat is seeded."""
    ep = _endpoint(analysis, output)
    if ep is None or not ep.repeats or ep.is_global:
        return []
    notes = []
    for k, ((t, axes), n) in enumerate(zip(ep.unit_axes, ep.repeats)):
        if n > 1:
            cells = math.prod(ep.units[a] or 1 for a in axes)
            seeded = sorted({int(target.unit[k]) // cells for target in targets})
            notes.append(f"'{output}' repeats its grid of {cells} cells {n} times along axis {t} (features "
                         f"outside the positions, e.g. anchors: index = repeat * {cells} + cell); the unit is "
                         f"in repeat {', '.join(map(str, seeded))} (--unit K for another), each repeat of a "
                         f"cell with the cell's field")
    return notes


def _input_kind(inputs: str) -> tuple[InputKind, str | None]:
    if inputs in (InputKind.GAUSSIAN.value, InputKind.UNIFORM.value):
        return InputKind(inputs), None
    return InputKind.IMAGES, inputs


def _load(model: ModelSource, opts: ModelOptions) -> tuple[onnx.ModelProto, Analysis | None, list[str]]:
    """Load with the core loader (``fill`` inputs become constants, If nodes they decide are
    inlined), fix the input at batch 1, and run the TRF pass if it can."""
    from . import analysis as analysis_mod
    from .onnx_import import contradiction_notes, copy_model, data_inputs, load_model
    from .space_to_batch import space_to_batch_notes
    from .unknown_size import require_size

    notes: list[str] = []
    input_name, input_shape = opts.erf_input()
    raw = load_model(model, fill=opts.fill or None)
    inputs = data_inputs(raw)
    if input_name is not None and input_name not in inputs:
        raise RFGraphError(f"no input named '{input_name}' (inputs: {', '.join(inputs)})")
    name = input_name or inputs[0]
    shapes = {name: tuple(input_shape)} if input_shape else None
    if shapes is None:
        dims = next(i for i in raw.graph.input if i.name == name).type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):  # dynamic batch: analyse at batch 1
            rest = [d.dim_value for d in dims[1:] if d.HasField("dim_value")]
            if len(rest) == len(dims) - 1:  # every other dim is known
                shapes = {name: (1, *rest)}
    proto = load_model(raw, shapes) if shapes else raw
    try:  # the checks of ``analyze`` come first: a model it refuses is refused here too
        a = analysis_mod.analyze(proto, options=_analysis_options(opts, name))
        require_size(a, "the ERF")
    except (DynamicShapeError, UnsupportedOpError) as exc:
        if isinstance(exc, DynamicShapeError) and (_static_rank(proto, name) or 3) < 3:
            raise  # no spatial axes to measure a field along (a rank-2 input without --layout)
        notes.append(f"no TRF pass ({exc}); metrics use the map centre")
        a = None
    if a is not None and a.pieces:  # outputs cut into the grids a Concat joined: the model analysed
        proto = copy_model(a.graph.model)
    _sort_nodes(proto.graph)
    _check_declared_shapes(proto)
    notes += contradiction_notes(proto) + space_to_batch_notes(proto)
    if a is not None and not a.spatial_axes:
        raise RFGraphError(f"input '{name}' {list(a.input_shape)} has no spatial axis (layout {a.layout}) "
                           f"to measure a field along; give the layout, e.g. --layout NL")
    if a is not None and not a.layout_reason.startswith(("given", "the input")):
        notes.append(f"input layout {a.layout} {a.layout_reason}")
    return proto, a, notes


def _analysis_options(opts: ModelOptions, input_name: str) -> ModelOptions:
    """``opts`` for the TRF pass on the loaded model (its shapes and fills already applied)."""
    return replace(opts, input_shapes={}, input_name=input_name, fill={})


def _check_declared_shapes(proto: onnx.ModelProto) -> None:
    """Refuse a tensor whose declared shape contradicts ONNX's shape inference: the gradient is
    seeded by the declared output shape, and onnxruntime computes the inferred one."""
    try:  # without the weights' data (only their shapes count): the file's bytes are not copied
        onnx.shape_inference.infer_shapes(shapes_only(proto), strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        text = " ".join(str(exc).split())
        if "existing shape differ" in text:
            raise RFGraphError(f"a declared shape contradicts ONNX shape inference: "
                               f"{text.split('Inference error(s): ')[-1][:300]}") from None


def _static_rank(proto: onnx.ModelProto, name: str) -> int | None:
    """The rank of input ``name`` when every dimension is known, else None."""
    dims = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    return len(dims) if all(d.HasField("dim_value") for d in dims) else None


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes in topological order (ONNX requires it, ``analyze`` accepts any order, and
    the gradient graph is built in file order); a sorted file is left as it is."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    needs = [sorted({producer[t] for t in node.input if t in producer}) for node in graph.node]
    if all(p < i for i, deps in enumerate(needs) for p in deps):
        return
    users: list[list[int]] = [[] for _ in needs]
    for i, deps in enumerate(needs):
        for p in deps:
            users[p].append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(needs):
        raise GraphStructureError("the graph has a cycle: its nodes cannot be put in order")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _refuse_other_inputs(proto: onnx.ModelProto, input_name: str) -> None:
    """The engines feed one input; any other (an RNN state, a sample rate...) would need a value
    the user chooses, so say so instead of guessing one."""
    from .onnx_import import data_inputs

    others = [n for n in data_inputs(proto) if n != input_name]
    if others:
        raise RFGraphError(f"the model has inputs besides '{input_name}' ({', '.join(others)}); the ERF "
                           f"engines feed only the input they differentiate: give each a value "
                           f"(--fill NAME=VALUE, e.g. --fill {others[0]}=0)")


def _input_facts(proto: onnx.ModelProto, analysis: Analysis | None, input_name: str | None = None
                 ) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Input name, full shape (batch 1) and spatial axes: from the analysis, else NC+spatial."""
    from .onnx_import import data_inputs

    if analysis is not None:
        shape = tuple(int(d) for d in analysis.input_shape)
        return analysis.input_name, (1,) + shape[1:], tuple(analysis.spatial_axes)
    name = input_name or data_inputs(proto)[0]
    dims = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims[1:]):
        example = "x".join(str(d.dim_value) if d.HasField("dim_value") else "64" for d in dims)
        raise RFGraphError(f"input '{name}' has dynamic dims; fix them, e.g. --input-shape "
                           f"{name}:{example} (API: input_shape=(...))")
    shape = (1,) + tuple(d.dim_value for d in dims[1:])
    return name, shape, tuple(range(2, len(shape)))


def _output_shape(proto: onnx.ModelProto, output: str, input_name: str,
                  full_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Static shape of ``output`` at batch 1."""
    fixed = prepare(proto, full_shape, input_name)
    shapes, _ = vjp_mod.tensor_shapes(fixed, input_name)
    if output not in shapes:
        outs = ", ".join(o.name for o in proto.graph.output)
        raise RFGraphError(f"no tensor named '{output}' in the model (graph outputs: {outs})")
    return shapes[output]


def _progress(total: int, enabled: bool, unit: str = "input") -> Callable[..., None]:
    """A tqdm bar over input samples, or forward passes (a no-op when disabled)."""
    if not enabled:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc="ERF", leave=False)

    def update(n: int, close: bool = False) -> None:
        if n:
            bar.update(n)
        if close:
            bar.close()

    return update


def erf_per_axis(erf: np.ndarray) -> list[np.ndarray]:
    """1-D marginals of the map (sum over the other axes), one per spatial axis."""
    return [erf.sum(axis=tuple(a for a in range(erf.ndim) if a != ax)) if erf.ndim > 1 else erf
            for ax in range(erf.ndim)]


__all__ = [
    "ERFResult",
    "FDEngine",
    "GradientEngine",
    "Method",
    "Region",
    "Target",
    "compute_erf",
    "compute_erfs",
    "displayed_area_ratios",
    "effective_conventions",
    "erf_per_axis",
    "keyed_rng",
    "make_seed",
]
