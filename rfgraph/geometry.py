"""Geometry of ONNX window ops (Conv, pooling, ConvTranspose), decoded once from the operator spec.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DynamicShapeError, InvalidAttributeError

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
    span = in_size + axis.pad_begin + end - axis.k_eff
    if span < 0:
        return 0
    out = (-(-span // axis.stride) if ceil_mode else span // axis.stride) + 1
    if ceil_mode and (out - 1) * axis.stride >= in_size + axis.pad_begin:
        out -= 1
    return out


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
