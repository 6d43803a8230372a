"""Geometry of ONNX window ops (Conv, pooling, ConvTranspose) and of resampling (Resize,
Upsample) and Pad's mode, decoded once from the operator spec.

Every user (the TRF rules in ``ops``, the gradient rules in ``vjp``, declared custom rules) reads the
kernel, strides, dilations and begin/end pads of a node from here.  Formulas cite
https://onnx.ai/onnx/operators/ (Conv, MaxPool, AveragePool, LpPool, ConvTranspose).

Where onnxruntime (or ONNX shape inference) departs from the spec we follow the spec; each
difference is checked in ``tests/test_geometry.py``:
- ConvTranspose under auto_pad SAME with a negative total padding (stride > k_eff + output_padding):
  onnxruntime clamps the total to 0 (output s*(in-1) + k_eff + output_padding); the spec's output is
  in * s, with negative pads.
- MaxPool with auto_pad SAME and dilation: onnxruntime's output is shorter than ceil(in / s);
  Conv with SAME and dilation is refused by onnxruntime.
- ONNX shape inference keeps a ceil_mode window that starts in the end padding, and adds
  output_padding to a SAME ConvTranspose's in * s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import DynamicShapeError, InvalidAttributeError, UnsupportedOpError

SAME = ("SAME_UPPER", "SAME_LOWER")


@dataclass(frozen=True)
class AxisWindow:
    """One spatial axis of a window op: output unit u reads inputs u*stride - pad_begin + j*dilation.

    ``pad_end`` is the explicit (or auto_pad) end padding; None when it depends on an unknown size.
    For ConvTranspose the same numbers describe the forward Conv whose transpose the op is.
    """

    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int | None
    output_padding: int = 0

    @property
    def k_eff(self) -> int:
        """Extent of the dilated kernel: (k - 1) * d + 1."""
        return (self.kernel - 1) * self.dilation + 1


@dataclass(frozen=True)
class Window:
    """The geometry of one window node: per-axis numbers plus the attributes that change counting."""

    axes: tuple[AxisWindow, ...]
    auto_pad: str = "NOTSET"
    ceil_mode: bool = False
    count_include_pad: bool = False
    size_dependent: bool = False  # the padding depends on the input size (auto_pad SAME, output_shape)

    @property
    def kernel(self) -> list[int]:
        return [a.kernel for a in self.axes]

    @property
    def strides(self) -> list[int]:
        return [a.stride for a in self.axes]

    @property
    def dilations(self) -> list[int]:
        return [a.dilation for a in self.axes]

    @property
    def pads_begin(self) -> list[int]:
        return [a.pad_begin for a in self.axes]

    @property
    def pads_end(self) -> list[int]:
        """End pads; raises when one depends on an unknown size (callers that need them have sizes)."""
        ends = [a.pad_end for a in self.axes]
        if any(e is None for e in ends):
            raise DynamicShapeError("end padding depends on an input size that is unknown")
        return [int(e) for e in ends if e is not None]

    @property
    def output_padding(self) -> list[int]:
        return [a.output_padding for a in self.axes]


def _str(attrs: Mapping[str, Any], name: str, default: str) -> str:
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _ints(attrs: Mapping[str, Any], name: str, default: list[int], want: int, where: str) -> list[int]:
    """An int-list attribute of length ``want`` (the default when absent)."""
    got = [int(v) for v in attrs.get(name, default)]
    if len(got) != want:
        raise InvalidAttributeError(f"{where}: {name}={got} should have {want} values")
    return got


def _check_positive(kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                    where: str) -> None:
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in strides) or any(d <= 0 for d in dilations):
        raise InvalidAttributeError(f"{where}: kernel {list(kernel)}, strides {list(strides)}, "
                                    f"dilations {list(dilations)} must be positive")


def split_same(total: int, mode: str) -> tuple[int, int]:
    """(begin, end) halves of a total padding: SAME_UPPER puts the larger half at the end (spec)."""
    small = total // 2
    return (small, total - small) if mode == "SAME_UPPER" else (total - small, small)


def same_total(in_size: int, k_eff: int, stride: int) -> int:
    """Total SAME padding of Conv/pool: (ceil(in/s) - 1) * s + k_eff - in, at least 0 (spec)."""
    out = -(-in_size // stride)
    return max((out - 1) * stride + k_eff - in_size, 0)


def _same_axis(k: int, s: int, d: int, size: int | None, mode: str, where: str) -> tuple[int, int | None, bool]:
    """Begin pad, end pad and size dependence of one SAME-padded axis."""
    k_eff = (k - 1) * d + 1
    begins = {split_same(same_total(m, k_eff, s), mode)[0] for m in range(1, s + 1)}
    dependent = len(begins) > 1
    if size is None:
        if dependent:
            raise DynamicShapeError(f"{where}: auto_pad={mode} padding depends on the input size, "
                                    f"which is unknown; set it with --input-shape")
        return begins.pop(), None, False
    begin, end = split_same(same_total(size, k_eff, s), mode)
    return begin, end, dependent


def window(op: str, name: str, attrs: Mapping[str, Any], kernel: Sequence[int],
           in_sizes: Sequence[int | None]) -> Window:
    """Geometry of a Conv / MaxPool / AveragePool / LpPool node from its attributes and input sizes.

    Explicit ``pads`` are [x1_begin, x2_begin, ..., x1_end, x2_end, ...]; auto_pad VALID means no
    padding; SAME_UPPER / SAME_LOWER pad to output ceil(in / s), the odd unit at the end / start.
    """
    where = f"node '{name}' ({op})"
    n = len(kernel)
    strides = _ints(attrs, "strides", [1] * n, n, where)
    dilations = _ints(attrs, "dilations", [1] * n, n, where)
    pads = _ints(attrs, "pads", [0] * (2 * n), 2 * n, where)
    _check_positive(kernel, strides, dilations, where)
    auto_pad = _str(attrs, "auto_pad", "NOTSET")
    if auto_pad not in (*SAME, "VALID", "NOTSET"):
        raise InvalidAttributeError(f"{where}: auto_pad={auto_pad!r} is not NOTSET, SAME_UPPER, "
                                    f"SAME_LOWER or VALID")
    axes, dependent = [], False
    for i, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        if auto_pad in SAME:
            begin, end, dep = _same_axis(k, s, d, in_sizes[i], auto_pad, where)
            dependent = dependent or dep
        elif auto_pad == "VALID":
            begin, end = 0, 0
        else:
            begin, end = pads[i], pads[i + n]
        axes.append(AxisWindow(k, s, d, begin, end))
    return Window(tuple(axes), auto_pad, bool(attrs.get("ceil_mode", 0)),
                  bool(attrs.get("count_include_pad", 0)), dependent)


def output_size(axis: AxisWindow, in_size: int, ceil_mode: bool = False) -> int:
    """Output length of a Conv/pool axis (spec): floor or ceil of (in + pads - k_eff) / s + 1.

    With ceil_mode a window that would start in the end padding is dropped: the last one must start
    inside the input or the begin padding (spec: "windows that would start in the right padded
    region are ignored").
    """
    end = axis.pad_end if axis.pad_end is not None else 0
    span = in_size + axis.pad_begin + end - axis.k_eff  # negative: the window is larger than the map
    out = (-(-span // axis.stride) if ceil_mode else span // axis.stride) + 1  # ceil mode: one window
    if ceil_mode and (out - 1) * axis.stride >= in_size + axis.pad_begin:
        out -= 1
    return max(out, 0)


def conv_transpose(name: str, attrs: Mapping[str, Any], kernel: Sequence[int],
                   in_sizes: Sequence[int | None]) -> Window:
    """Geometry of a ConvTranspose node: the pads of the Conv it is the transpose of (spec).

    Without ``output_shape`` and auto_pad SAME the pads are explicit; otherwise the output size is
    ``output_shape`` (or in * s under SAME) and total_padding = s*(in-1) + output_padding + k_eff - out
    splits as: SAME_UPPER begin = total // 2, end = total - begin; any other auto_pad the opposite.
    """
    where = f"node '{name}' (ConvTranspose)"
    n = len(kernel)
    strides = _ints(attrs, "strides", [1] * n, n, where)
    dilations = _ints(attrs, "dilations", [1] * n, n, where)
    out_pad = _ints(attrs, "output_padding", [0] * n, n, where)
    _check_positive(kernel, strides, dilations, where)
    auto_pad = _str(attrs, "auto_pad", "NOTSET")
    requested = [int(v) for v in attrs.get("output_shape", [])]
    if requested and len(requested) != n:
        raise InvalidAttributeError(f"{where}: output_shape={requested} should hold the {n} spatial "
                                    f"output sizes")
    if not requested and auto_pad not in SAME:
        pads = [0] * (2 * n) if auto_pad == "VALID" else _ints(attrs, "pads", [0] * (2 * n), 2 * n, where)
        axes = tuple(AxisWindow(k, s, d, pads[i], pads[i + n], op)
                     for i, (k, s, d, op) in enumerate(zip(kernel, strides, dilations, out_pad)))
        return Window(axes, auto_pad)
    axes_list = []
    for i, (k, s, d, op) in enumerate(zip(kernel, strides, dilations, out_pad)):
        size = in_sizes[i]
        if requested and size is None:
            raise DynamicShapeError(f"{where}: padding depends on the input size, which is unknown; "
                                    f"set it with --input-shape")
        # under SAME out = in * s, so the total is op + k_eff - s whatever the input size
        excess = s * (size - 1) - requested[i] if requested and size is not None else -s
        total = excess + op + (k - 1) * d + 1
        begin, end = split_same(total, "SAME_UPPER" if auto_pad == "SAME_UPPER" else "SAME_LOWER")
        axes_list.append(AxisWindow(k, s, d, begin, end, op))
    return Window(tuple(axes_list), auto_pad, size_dependent=bool(requested))


def conv_transpose_output_size(axis: AxisWindow, in_size: int) -> int:
    """ConvTranspose output length (spec): s*(in-1) + output_padding + k_eff - pad_begin - pad_end."""
    end = axis.pad_end if axis.pad_end is not None else 0
    return axis.stride * (in_size - 1) + axis.output_padding + axis.k_eff - axis.pad_begin - end


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def pad_mode(attrs: Mapping[str, Any], name: str) -> str:
    """Pad's ``mode`` (spec): constant (default), reflect, edge, or wrap (opset 19)."""
    mode = _str(attrs, "mode", "constant")
    if mode not in PAD_MODES:
        raise InvalidAttributeError(f"node '{name}' (Pad): mode={mode!r} is not one of {', '.join(PAD_MODES)}")
    return mode


def pad_source(n_in: int, begin: int, end: int, mode: str) -> np.ndarray:
    """The input position each output position of a reflect / edge / wrap Pad copies, along one
    axis of ``n_in`` positions padded by ``begin`` and ``end`` (negative: cropped): numpy's pad
    of the index range, whose modes are ONNX's (the reference implementation uses it)."""
    src = np.pad(np.arange(n_in), (max(begin, 0), max(end, 0)), mode=mode)  # type: ignore[call-overload]
    return src[max(-begin, 0): len(src) - max(-end, 0)]


WINDOW_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def output_sizes(op: str, name: str, attrs: Mapping[str, Any], kernel: Sequence[int],
                 in_sizes: Sequence[int]) -> list[int]:
    """Spatial output sizes of a window node by the spec's formulas (ONNX shape inference departs
    from them for ceil_mode windows starting in the end padding and ConvTranspose SAME with
    output_padding)."""
    if op == "ConvTranspose":
        geo = conv_transpose(name, attrs, kernel, in_sizes)
        return [conv_transpose_output_size(a, s) for a, s in zip(geo.axes, in_sizes)]
    geo = window(op, name, attrs, kernel, in_sizes)
    return [output_size(a, s, geo.ceil_mode) for a, s in zip(geo.axes, in_sizes)]


# ---------------------------------------------------------------- Resize / Upsample
# https://onnx.ai/onnx/operators/onnx__Resize.html; the weights follow the reference implementation
# (onnx.reference.ops.op_resize): the taps nearest x_original, indices clamped to the input (edge),
# except that pytorch_half_pixel to length 1 uses x_original = 0 as the spec says (the reference: -0.5).

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@dataclass(frozen=True)
class Resampling:
    """How a Resize / Upsample node interpolates: its attributes with the defaults of its op and
    opset (Upsample and Resize before opset 11: asymmetric coordinates, nearest = floor)."""

    mode: str  # nearest, linear, cubic
    coord: str
    nearest: str
    cubic_a: float = -0.75
    exclude_outside: bool = False
    extrapolation: float = 0.0
    antialias: bool = False


def resampling(op: str, opset: int, attrs: Mapping[str, Any], name: str) -> Resampling:
    """Decode a Resize / Upsample node's interpolation attributes (unsupported values refused)."""
    modern = op == "Resize" and opset >= 11
    mode = _str(attrs, "mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)  # Upsample-7's names
    coord = _str(attrs, "coordinate_transformation_mode", "half_pixel" if modern else "asymmetric")
    nearest = _str(attrs, "nearest_mode", "round_prefer_floor") if modern else "floor"
    for value, allowed, what in ((mode, ("nearest", "linear", "cubic"), "interpolation mode"),
                                 (coord, COORDINATE_MODES, "coordinate_transformation_mode"),
                                 (nearest, NEAREST_MODES, "nearest_mode")):
        if value not in allowed:
            raise UnsupportedOpError(name, op, f"{what} '{value}'")
    return Resampling(mode, coord, nearest, float(attrs.get("cubic_coeff_a", -0.75)),
                      bool(attrs.get("exclude_outside", 0)), float(attrs.get("extrapolation_value", 0.0)),
                      bool(attrs.get("antialias", 0)))


def clamps_indices(op: str, opset: int, attrs: Mapping[str, Any], name: str) -> bool:
    """Whether a Resize / Upsample reads its input's border unit where its taps fall past the
    input (the spec clamps the indices; tf_crop_and_resize extrapolates a constant instead)."""
    return op in ("Resize", "Upsample") and resampling(op, opset, attrs, name).coord != "tf_crop_and_resize"


WHOLE_AXIS = (Fraction(0), Fraction(1))  # the roi of an axis tf_crop_and_resize does not crop


def resize_roi(attrs: Mapping[str, Any], roi: Any, rank: int, axis: int, name: str) -> tuple[Fraction, Fraction]:
    """tf_crop_and_resize's (start, end) along tensor ``axis`` from the constant roi input: the
    starts then the ends of the resized axes (``axes``, opset 18, else every axis); (0, 1), the
    whole axis, on an axis it does not resize."""
    axes = [int(a) % rank for a in attrs.get("axes", [])] or list(range(rank))
    flat = np.asarray(roi, dtype=np.float64).reshape(-1)
    if flat.size != 2 * len(axes):
        raise InvalidAttributeError(f"node '{name}' (Resize): roi has {flat.size} values, tf_crop_and_resize "
                                    f"needs {2 * len(axes)} (a start and an end per resized axis)")
    if axis not in axes:
        return WHOLE_AXIS
    at = axes.index(axis)
    return _fraction(flat[at]), _fraction(flat[len(axes) + at])


def _fraction(value: float) -> Fraction:
    return Fraction(float(value)).limit_denominator(10_000)


def resize_scales(op: str, opset: int, attrs: Mapping[str, Any], scales: Any, sizes: Any,
                  in_shape: Sequence[int | None] | None, out_shape: Sequence[int | None] | None,
                  name: str) -> list[Fraction]:
    """Scale per tensor axis (spec): the constant ``scales`` (over ``axes`` when given), else from
    ``sizes``: output / input per axis, or with keep_aspect_ratio_policy not_larger / not_smaller
    the smallest / largest of those ratios over the resized axes."""
    shape = in_shape if in_shape is not None else out_shape
    axes_attr = [int(a) for a in attrs.get("axes", [])] if op == "Resize" else []  # opset 18
    values = [float(v) for v in np.asarray(scales).reshape(-1)] if scales is not None else []
    if values and shape is not None and (axes_attr or len(values) == len(shape)):
        full = [Fraction(1)] * len(shape)
        for a, v in zip([x % len(shape) for x in axes_attr] or range(len(shape)), values):
            full[a] = _fraction(v)
        return full
    if in_shape is None or out_shape is None or None in in_shape[2:] or None in out_shape[2:]:
        raise DynamicShapeError(f"node '{name}' ({op}): scale unknown (sizes not inferred); "
                                f"set the input size with --input-shape")
    ratios = [Fraction(int(o), int(i)) if i and o else Fraction(1) for i, o in zip(in_shape, out_shape)]
    policy = _str(attrs, "keep_aspect_ratio_policy", "stretch")
    if sizes is not None and np.asarray(sizes).size and policy in ("not_larger", "not_smaller"):
        resized = [x % len(ratios) for x in axes_attr] or list(range(len(ratios)))
        wanted = [a for a in resized if in_shape[a]]
        asked = dict(zip(resized, (int(s) for s in np.asarray(sizes).reshape(-1))))
        pick = min if policy == "not_larger" else max
        common = pick(Fraction(asked[a], int(in_shape[a] or 1)) for a in wanted)
        return [common if a in resized else r for a, r in enumerate(ratios)]
    return ratios


@dataclass(frozen=True)
class ResizeAxis:
    """One axis of a Resize: output unit u reads input coordinate x_original(u) (spec) and the
    taps around it."""

    how: Resampling
    scale: Fraction
    in_size: int | None
    out_size: int | None
    roi: tuple[Fraction, Fraction] = WHOLE_AXIS  # tf_crop_and_resize: start, end

    def source(self, u: int) -> Fraction:
        """x_original of output unit ``u`` (the spec's coordinate transformation)."""
        c, s, n_in, n_out = self.how.coord, self.scale, self.in_size or 0, self.out_size or 0
        if c in ("align_corners", "tf_crop_and_resize", "half_pixel_symmetric") and (not n_in or not n_out):
            raise DynamicShapeError(f"Resize with {c} needs known sizes; set them with --input-shape")
        if c == "asymmetric":
            return u / s
        if c == "align_corners":
            return Fraction(u * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        if c == "tf_crop_and_resize":
            start, end = self.roi
            if n_out == 1:
                return (end - start) * (n_in - 1) / 2 + start * (n_in - 1)
            return u * (end - start) * (n_in - 1) / (n_out - 1) + start * (n_in - 1)
        if c == "pytorch_half_pixel" and n_out == 1:
            return Fraction(0)
        x = (u + Fraction(1, 2)) / s - Fraction(1, 2)
        if c == "half_pixel_symmetric":
            x += Fraction(n_in, 2) * (1 - Fraction(n_out) / (s * n_in))
        return x

    def period(self) -> tuple[int, int]:
        """(p, q): output unit u + p reads q input units further than unit u (x_original affine)."""
        if self.how.coord in ("align_corners", "tf_crop_and_resize"):
            step = self.source(1) - self.source(0) if (self.out_size or 0) > 1 else Fraction(0)
            return (step.denominator, step.numerator) if step else (1, 0)
        return self.scale.numerator, self.scale.denominator

    def coefficients(self, u: int) -> tuple[int, list[float]] | None:
        """First input index (unclamped) and the interpolation coefficients of unit ``u``; None
        where tf_crop_and_resize extrapolates (the unit is the constant extrapolation_value)."""
        x = self.source(u)
        if self.how.coord == "tf_crop_and_resize" and not 0 <= x <= (self.in_size or 1) - 1:
            return None
        floor = math.floor(x)
        ratio = x - floor
        if ratio == 0:  # an exact tap: the reference takes ratio 1 from the unit before
            floor, ratio = floor - 1, Fraction(1)
        r, a, how = float(ratio), self.how.cubic_a, self.how
        if how.mode == "nearest":
            up = {"round_prefer_floor": ratio > Fraction(1, 2), "round_prefer_ceil": ratio >= Fraction(1, 2),
                  "floor": ratio == 1, "ceil": True}[how.nearest]
            return floor, [0.0, 1.0] if up else [1.0, 0.0]
        if how.mode == "linear":
            return floor, [1 - r, r]
        s = 1 - r
        return floor - 1, [((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                           ((a + 2) * r - (a + 3)) * r * r + 1,
                           ((a + 2) * s - (a + 3)) * s * s + 1,
                           ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a]

    def extrapolates(self) -> bool:
        """Whether some unit lies outside tf_crop_and_resize's input (x_original is monotone in
        the unit, so the first or the last one does)."""
        return self.how.coord == "tf_crop_and_resize" and bool(self.out_size) and any(
            self.coefficients(u) is None for u in (0, (self.out_size or 1) - 1))

    def taps(self, u: int) -> tuple[int, int]:
        """First and last input index (unclamped) with a nonzero coefficient at unit ``u``; a unit
        tf_crop_and_resize extrapolates reads nothing of the input: the position just outside it
        on its side (-1 or in_size), as a zero-padded unit does, which clipping leaves empty."""
        got = self.coefficients(u)
        if got is None:
            outside = -1 if self.source(u) < 0 else self.in_size or 0
            return outside, outside
        first, coeffs = got
        nonzero = [first + k for k, c in enumerate(coeffs) if c != 0]
        return nonzero[0], nonzero[-1]

    def matrix(self) -> np.ndarray:
        """(out, in) matrix: y = M x along this axis (indices clamped to the input; with
        exclude_outside the taps outside get 0 and the rest are renormalised)."""
        if not self.in_size or not self.out_size:
            raise DynamicShapeError("Resize weights need known sizes; set them with --input-shape")
        m = np.zeros((self.out_size, self.in_size))
        for u in range(self.out_size):
            got = self.coefficients(u)
            if got is None:
                continue
            first, coeffs = got
            idx = np.arange(first, first + len(coeffs))
            w = np.array(coeffs)
            if self.how.exclude_outside:
                w = np.where((idx >= 0) & (idx < self.in_size), w, 0.0)
                w = w / w.sum()
            np.add.at(m[u], np.clip(idx, 0, self.in_size - 1), w)
        return m
