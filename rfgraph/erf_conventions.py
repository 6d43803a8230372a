"""ERF conventions as options: what is differentiated, how gradients are aggregated, which inputs
are drawn in which order, and how the map is displayed; with the presets of two papers.

Every ERF is ``E[agg(d s(y_u) / d x)]`` summed over input channels, where ``y_u`` is the output
unit's channel vector and ``s`` a scalar of it:

* ``Scalar`` (s): ``sum`` over channels (Luo et al. 2016: gradient 1 on every channel of the
  centre unit), one ``channel``, ``relu-sum`` = sum_c ReLU(y_c) (RepLKNet, Ding et al. 2022:
  ``relu(outputs[:, :, h//2, w//2]).sum()``), or the channel ``mean``.  ``seed_weights`` gives
  ds/dy_c, the seed of the backward pass at the unit (ReLU'(0) taken as 0, as torch does).
* ``Aggregation`` (agg), applied to each input gradient element before the channel sum: ``abs``
  (Luo), ``square`` (the variance Luo's analysis tracks), ``relu`` (RepLKNet: positive part),
  ``signed`` (none).
* ``Order``: images drawn ``sequential`` (sorted file order, RepLKNet's SequentialSampler) or at
  ``random`` (a seeded permutation, cycled).
* ``Scaling`` for display: ``linear``, ``log`` = log10(x + 1) (RepLKNet), ``power`` = x**gamma;
  ``normalise`` then divides by the maximum (RepLKNet rescales to [0, 1]).
* ``CentreRule``: the centre unit of n units is ``(n-1)//2`` (``floor``; rfgraph's default) or
  ``n//2`` (``half``; RepLKNet's ``out_size // 2``); they differ for even n.

Presets reproduce the papers: ``luo`` (sec. 3: centre unit, all channels, |grad| summed over
channels, 20 random Gaussian inputs, linear display) and ``replknet`` (erf/visualize_erf.py and
analyze_erf.py of RepLKNet-pytorch: ReLU-sum of the centre unit at n//2, ReLU of the gradient
summed over batch and channels, 50 images in order, non-finite maps skipped, log10(x+1) then /max,
area ratios from ``replknet_area_ratio``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from .errors import RFGraphError


class Scalar(str, Enum):
    """Which scalar of the output unit is differentiated."""

    SUM = "sum"
    CHANNEL = "channel"
    RELU_SUM = "relu-sum"
    MEAN = "mean"


class Aggregation(str, Enum):
    """What is done to each input-gradient element before summing over channels and runs."""

    ABS = "abs"
    SQUARE = "square"
    RELU = "relu"
    SIGNED = "signed"


class Order(str, Enum):
    """Order in which images of a folder are drawn."""

    SEQUENTIAL = "sequential"
    RANDOM = "random"


class Scaling(str, Enum):
    """Display scaling of the averaged map."""

    LINEAR = "linear"
    LOG = "log"
    POWER = "power"


class CentreRule(str, Enum):
    """Index of the centre unit among n units."""

    FLOOR = "floor"  # (n - 1) // 2
    HALF = "half"  # n // 2


@dataclass(frozen=True)
class ERFConventions:
    """One complete set of ERF conventions (see the module docstring for each field)."""

    scalar: Scalar = Scalar.SUM
    channel: int | None = None  # for Scalar.CHANNEL
    aggregation: Aggregation = Aggregation.ABS
    order: Order = Order.RANDOM
    scaling: Scaling = Scaling.LINEAR
    gamma: float = 0.5  # exponent of Scaling.POWER
    normalise: bool = False  # divide the displayed map by its maximum
    centre: CentreRule = CentreRule.FLOOR
    inputs: str = "gaussian"  # "gaussian", "uniform" or "images" (a folder given at run time)
    runs: int = 20
    skip_nonfinite: bool = False  # drop samples whose map has a NaN/inf (RepLKNet)

    def __post_init__(self) -> None:
        if self.scalar is Scalar.CHANNEL and self.channel is None:
            raise RFGraphError("scalar 'channel' needs a channel index (--channel)")
        if self.scalar is not Scalar.CHANNEL and self.channel is not None:
            raise RFGraphError(f"--channel is only used with scalar 'channel', not '{self.scalar.value}'")
        if self.scaling is Scaling.POWER and not self.gamma > 0:
            raise RFGraphError(f"power scaling needs a positive gamma, not {self.gamma}")
        if self.runs < 1:
            raise RFGraphError("runs must be at least 1")


DEFAULT = ERFConventions()
LUO = ERFConventions(Scalar.SUM, None, Aggregation.ABS, Order.RANDOM, Scaling.LINEAR, 0.5, False,
                     CentreRule.FLOOR, "gaussian", 20, False)
REPLKNET = ERFConventions(Scalar.RELU_SUM, None, Aggregation.RELU, Order.SEQUENTIAL, Scaling.LOG,
                          0.5, True, CentreRule.HALF, "images", 50, True)
PRESETS = {"luo": LUO, "replknet": REPLKNET}


def preset(name: str) -> ERFConventions:
    """The conventions of a paper by name ('luo', 'replknet')."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise RFGraphError(f"unknown ERF preset '{name}' (presets: {', '.join(PRESETS)})") from None


# ---------------------------------------------------------------- what is differentiated


def centre_unit(sizes: Sequence[int], rule: CentreRule = CentreRule.FLOOR) -> tuple[int, ...]:
    """Index of the centre unit along each axis of a map of ``sizes``."""
    return tuple((n - 1) // 2 if rule is CentreRule.FLOOR else n // 2 for n in sizes)


def seed_weights(conv: ERFConventions, channels: int,
                 unit_values: np.ndarray | None = None) -> np.ndarray:
    """ds/dy_c at the unit, shape (batch, channels) (batch 1 unless ``unit_values`` is given).

    ``unit_values``: the forward values y of the unit, shape (batch, channels); needed (and
    only used) for ``relu-sum``, whose derivative is 1[y_c > 0].
    """
    if conv.scalar is Scalar.RELU_SUM:
        if unit_values is None:
            raise RFGraphError("scalar 'relu-sum' needs the forward values of the unit")
        y = np.asarray(unit_values, dtype=np.float64).reshape(-1, channels)
        return (y > 0).astype(np.float64)
    batch = 1 if unit_values is None else np.asarray(unit_values).reshape(-1, channels).shape[0]
    if conv.scalar is Scalar.SUM:
        w = np.ones(channels)
    elif conv.scalar is Scalar.MEAN:
        w = np.full(channels, 1.0 / channels)
    else:
        channel = _channel(conv)
        if not 0 <= channel < channels:
            raise RFGraphError(f"channel {conv.channel} is outside the unit's {channels} channels")
        w = np.zeros(channels)
        w[channel] = 1.0
    return np.tile(w, (batch, 1))


def scalar_value(conv: ERFConventions, unit_values: np.ndarray) -> np.ndarray:
    """The scalar s(y_u) per sample (its gradient w.r.t. y is ``seed_weights``)."""
    y = np.asarray(unit_values, dtype=np.float64)
    if conv.scalar is Scalar.SUM:
        return y.sum(axis=-1)
    if conv.scalar is Scalar.MEAN:
        return y.mean(axis=-1)
    if conv.scalar is Scalar.RELU_SUM:
        return np.maximum(y, 0).sum(axis=-1)
    return y[..., _channel(conv)]


def _channel(conv: ERFConventions) -> int:
    """The channel index of a ``channel`` scalar (``__post_init__`` makes sure it is set)."""
    if conv.channel is None:
        raise RFGraphError("scalar 'channel' needs a channel index (--channel)")
    return int(conv.channel)


@dataclass(frozen=True)
class SeedPlan:
    """How an engine that seeds ``scale`` at one unit (one channel or all) realises a scalar:
    differentiate ``output`` of ``model``; for ``relu-sum`` a Relu is appended to the model, so
    the seed needs no forward values (the Relu's backward is 1[y > 0], torch's convention)."""

    model: object  # onnx.ModelProto
    output: str
    channel: int | None
    scale: float


def seed_plan(model: object, output: str, conv: ERFConventions, channels: int) -> SeedPlan:
    """The SeedPlan of ``conv`` for ``output`` (with ``channels`` channels) of ``model``."""
    if conv.scalar is Scalar.RELU_SUM:
        relu_model, relu_out = relu_head(model, output)
        return SeedPlan(relu_model, relu_out, None, 1.0)
    if conv.scalar is Scalar.MEAN:
        return SeedPlan(model, output, None, 1.0 / channels)
    if conv.scalar is Scalar.CHANNEL:
        seed_weights(conv, channels)  # validates the channel index
        return SeedPlan(model, output, conv.channel, 1.0)
    return SeedPlan(model, output, None, 1.0)


def relu_head(model: object, output: str) -> tuple[object, str]:
    """A copy of ``model`` with ``Relu(output)`` appended as a graph output; returns its name."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = {t for n in g.node for t in n.output} | {i.name for i in g.input}
    name, i = f"{output}_relu", 1
    while name in taken:
        name, i = f"{output}_relu{i}", i + 1
    g.node.append(helper.make_node("Relu", [output], [name], name=name))
    like = next((v for v in list(g.output) + list(g.value_info) if v.name == output), None)
    vi = onnx.ValueInfoProto()
    if like is not None:
        vi.CopyFrom(like)
        vi.name = name
    else:
        vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    g.output.append(vi)
    return out, name


# ---------------------------------------------------------------- aggregation


def aggregate(grads: np.ndarray, spatial_axes: Sequence[int], how: Aggregation) -> np.ndarray:
    """Per sample, ``how`` applied elementwise then summed over the non-spatial axes:
    (batch, *spatial) from input gradients (batch, ...)."""
    g = np.asarray(grads, dtype=np.float64)
    if how is Aggregation.ABS:
        g = np.abs(g)
    elif how is Aggregation.SQUARE:
        g = g * g
    elif how is Aggregation.RELU:
        g = np.maximum(g, 0.0)
    other = tuple(a for a in range(1, g.ndim) if a not in spatial_axes)
    return g.sum(axis=other) if other else g


def finite_samples(maps: np.ndarray) -> np.ndarray:
    """Mask (batch,) of per-sample maps without NaN/inf (RepLKNet skips the others)."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    return np.isfinite(flat).all(axis=1)


def average(maps: Sequence[np.ndarray] | np.ndarray, conv: ERFConventions) -> tuple[np.ndarray, int]:
    """Mean of per-sample maps (batch, *spatial), skipping non-finite ones if the conventions
    say so; returns the mean and the number of samples kept."""
    arr = np.asarray(maps, dtype=np.float64)
    if conv.skip_nonfinite:
        arr = arr[finite_samples(arr)]
    if len(arr) == 0:
        raise RFGraphError("every sample gave a non-finite gradient; nothing to average")
    return arr.mean(axis=0), len(arr)


# ---------------------------------------------------------------- inputs


def image_order(n_files: int, count: int, order: Order,
                rng: np.random.Generator | None = None) -> list[int]:
    """Indices (into the sorted file list) of the ``count`` images drawn, cycling when needed."""
    if n_files < 1:
        raise RFGraphError("no images to draw from")
    if order is Order.SEQUENTIAL:
        return [i % n_files for i in range(count)]
    perm = (rng or np.random.default_rng(0)).permutation(n_files)
    return [int(perm[i % n_files]) for i in range(count)]


# ---------------------------------------------------------------- display


def display(erf: np.ndarray, scaling: Scaling = Scaling.LINEAR, gamma: float = 0.5,
            normalise: bool = False) -> np.ndarray:
    """The map as displayed: linear, log10(x + 1) or x**gamma (on |x| with its sign kept), then
    divided by its maximum when ``normalise`` (an all-zero map stays zero)."""
    x = np.asarray(erf, dtype=np.float64)
    if scaling is Scaling.LOG:
        if (x <= -1).any():
            raise RFGraphError("log10(x + 1) scaling needs values above -1 (use an abs or relu "
                               "aggregation)")
        x = np.log10(x + 1.0)
    elif scaling is Scaling.POWER:
        x = np.sign(x) * np.abs(x) ** gamma
    if normalise:
        top = float(np.max(x)) if x.size else 0.0
        x = x / top if top > 0 else x
    return x


def displayed(erf: np.ndarray, conv: ERFConventions) -> np.ndarray:
    """``display`` with the conventions' scaling."""
    return display(erf, conv.scaling, conv.gamma, conv.normalise)


def replknet_area_ratio(data: np.ndarray, thresh: float) -> tuple[int, float] | None:
    """RepLKNet's high-contribution area (analyze_erf.get_rectangle): the smallest square of side
    2i+1, i = 1 .. h//2 - 1, centred at (h//2, w//2), whose sum exceeds ``thresh`` of the total;
    returns (side, side/h * side/w), or None when none does.  Apply to the displayed map."""
    h, w = data.shape
    total = float(np.sum(data))
    for i in range(1, h // 2):
        part = float(np.sum(data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]))
        if total != 0 and part / total > thresh:
            side = 2 * i + 1
            return side, side / h * side / w
    return None


# ---------------------------------------------------------------- CLI options


def add_convention_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --scalar, --aggregate, --order, --scale, --gamma, --normalise, --centre."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a paper's conventions: luo (default values) or replknet")
    parser.add_argument("--scalar", choices=[s.value for s in Scalar],
                        help="differentiated scalar of the unit (default: sum over channels)")
    parser.add_argument("--aggregate", choices=[a.value for a in Aggregation],
                        help="per input-gradient element before the channel sum (default: abs)")
    parser.add_argument("--order", choices=[o.value for o in Order],
                        help="order images are drawn in (default: random)")
    parser.add_argument("--scale", choices=[s.value for s in Scaling],
                        help="display scaling (default: linear)")
    parser.add_argument("--gamma", type=float, help="exponent of --scale power (default: 0.5)")
    parser.add_argument("--normalise", action="store_true", default=None,
                        help="divide the displayed map by its maximum")
    parser.add_argument("--centre", choices=[c.value for c in CentreRule],
                        help="centre unit: floor = (n-1)//2 (default), half = n//2")


def conventions_from_args(args: argparse.Namespace) -> ERFConventions:
    """The preset (default: Luo's) with every option given on the command line applied."""
    base = preset(args.preset) if getattr(args, "preset", None) else DEFAULT
    changes: dict[str, Any] = {}  # field name -> value of that field's type
    for name, enum, field_name in (("scalar", Scalar, "scalar"), ("aggregate", Aggregation, "aggregation"),
                                   ("order", Order, "order"), ("scale", Scaling, "scaling"),
                                   ("centre", CentreRule, "centre")):
        value = getattr(args, name, None)
        if value is not None:
            changes[field_name] = enum(value)
    if getattr(args, "gamma", None) is not None:
        changes["gamma"] = args.gamma
    if getattr(args, "normalise", None):
        changes["normalise"] = True
    channel = getattr(args, "channel", None)
    if channel is not None:
        changes["channel"] = channel
        changes.setdefault("scalar", Scalar.CHANNEL)
    return replace(base, **changes)


def describe(conv: ERFConventions) -> list[tuple[str, str]]:
    """(option, value) rows stating every convention of an ERF, for reports."""
    scalar = conv.scalar.value + (f" (channel {conv.channel})" if conv.channel is not None else "")
    scale = {Scaling.LINEAR: "linear", Scaling.LOG: "log10(x+1)",
             Scaling.POWER: f"x^{conv.gamma:g}"}[conv.scaling]
    return [("scalar", scalar), ("aggregation", conv.aggregation.value),
            ("centre unit", "(n-1)//2" if conv.centre is CentreRule.FLOOR else "n//2"),
            ("inputs", f"{conv.runs} x {conv.inputs}, {conv.order.value} order"),
            ("display", scale + (", / max" if conv.normalise else "")),
            ("non-finite samples", "skipped" if conv.skip_nonfinite else "kept")]


__all__ = [
    "DEFAULT",
    "LUO",
    "PRESETS",
    "REPLKNET",
    "Aggregation",
    "CentreRule",
    "ERFConventions",
    "Order",
    "Scalar",
    "Scaling",
    "add_convention_args",
    "aggregate",
    "average",
    "centre_unit",
    "conventions_from_args",
    "describe",
    "display",
    "displayed",
    "finite_samples",
    "image_order",
    "preset",
    "replknet_area_ratio",
    "scalar_value",
    "seed_weights",
]
