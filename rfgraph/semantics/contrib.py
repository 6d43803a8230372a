"""onnxruntime's contrib ops, written as the standard ONNX ops they compute.

onnxruntime writes ops of its own domain (``com.microsoft``) when it saves an optimised graph
(FusedConv, FusedGemm, FusedMatMul, SkipLayerNormalization, BiasGelu...) and when it quantizes a
model (QLinearAdd, QGemm, QLinearGlobalAveragePool, DynamicQuantizeLSTM...).  Each op is decoded
here once, from onnxruntime's schema, as the standard ops it fuses (``expand_contrib_ops``, run when
a model is read); the TRF pass and the gradient graph then follow those ops' rules, so neither
needs a rule of its own.  An op with attributes an expansion does not cover stays as it is, and
the analysis stops at it naming the node and op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .gradient import Rule as VJPRule
from .transfer import Rule

MS = "com.microsoft"
NCHWC = "com.microsoft.nchwc"  # onnxruntime's blocked-channel kernels (ORT_ENABLE_ALL on CPU)
EXPANDED = "rfgraph: expanded "  # doc_string mark of the nodes that replace a contrib op
INNER = " (inner)"  # ... and of those among them that write a tensor of their own (not the op's output)
NOT_EXPANDED = "rfgraph: not expanded: "  # doc_string mark of a contrib node left as it is, and why


# ---------------------------------------------------------------- what an expansion writes with


@dataclass
class Expansion:
    """The standard nodes replacing one contrib node: new tensors are named after its first output,
    the node writing its last output keeps its name (reports name tensors and nodes as before)."""

    node: onnx.NodeProto
    opset: int
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int | None, ...]]
    dtypes: dict[str, int] = field(default_factory=dict)  # element types where known
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    made: int = 0

    def input(self, i: int) -> str:
        """The node's input ``i``, "" when absent (optional inputs)."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def output(self, i: int) -> str:
        return self.node.output[i] if i < len(self.node.output) else ""

    def attrs(self, *dropped: str) -> dict[str, Any]:
        """The node's attributes as plain values, but those named (the expansion handles them)."""
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in dropped}

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def tmp(self, what: str) -> str:
        """A new tensor name, after the node's first output."""
        self.made += 1
        return f"{self.node.output[0]}/{what}{self.made}"

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        """Emit one standard node; its output (a new tensor unless ``out`` is given)."""
        out = out or self.tmp(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value: object, dtype: type | None = None) -> str:
        """A constant tensor (an initializer named after the node), by default of the float type
        the node computes in (its first input's: float16 models keep float16 constants)."""
        name = self.tmp("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.float_type()), name))
        return name

    def float_type(self) -> Any:
        """The node's float type: its first input's when that is a float, else float32 (what
        DequantizeLinear gives the quantized ops)."""
        elem = self.dtypes.get(self.input(0))
        kind = helper.tensor_dtype_to_np_dtype(elem) if elem else np.dtype(np.float32)
        return kind if kind.kind == "f" else np.dtype(np.float32)

    def rank(self, tensor: str) -> int | None:
        """The tensor's rank where known (shape inference skips contrib ops)."""
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def last_dim(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return shape[-1] if shape else None

    def constant(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is a constant (an initializer or a Constant node)."""
        return self.consts.get(self.input(i))

    def finish(self) -> list[onnx.NodeProto]:
        """Name the emitted nodes after the contrib node and mark where they came from."""
        name = self.node.name or self.node.output[0]
        for k, n in enumerate(self.nodes):
            inner = not set(n.output) & set(self.node.output)  # (else it writes one of the op's outputs)
            step = n.output[0].rsplit("/", 1)[-1] if inner else n.output[0]  # named after its tensor
            n.name = name if k == len(self.nodes) - 1 else f"{name}/{step}"
            n.doc_string = f"{EXPANDED}{MS}::{self.node.op_type}{INNER if inner else ''}"
        return self.nodes


class NotCovered(Exception):
    """The node uses what its expansion does not cover: it stays as it is (the pass names it)."""


# ---------------------------------------------------------------- activations, as onnxruntime fuses them


def _activation(e: Expansion, x: str, out: str, name: str | None, params: Sequence[float]) -> str:
    """Apply the activation a fused op names (FusedConv's ``activation_params`` or FusedGemm's
    alpha/beta/gamma) to ``x``, writing ``out``."""
    if not name:
        return e.op("Identity", [x], out)
    one_param = {"LeakyRelu": "alpha", "Elu": "alpha", "ThresholdedRelu": "alpha"}
    if name in ("Relu", "Tanh", "Sigmoid", "Softsign", "Softplus"):
        return e.op(name, [x], out)
    if name in one_param:
        return e.op(name, [x], out, **{one_param[name]: float(params[0])})
    if name == "HardSigmoid":
        return e.op(name, [x], out, alpha=float(params[0]), beta=float(params[1]))
    if name == "Selu":
        return e.op(name, [x], out, alpha=float(params[0]), gamma=float(params[1]))
    if name == "Clip":
        if e.opset < 11:
            return e.op("Clip", [x], out, min=float(params[0]), max=float(params[1]))
        return e.op("Clip", [x, e.const(params[0]), e.const(params[1])], out)
    raise NotCovered(f"activation {name}")


def _fused_conv(e: Expansion) -> None:
    """FusedConv(X, W, B, Z): activation(Conv(X, W, B) + Z), Conv's attributes."""
    attrs = e.attrs("activation", "activation_params")
    y = e.op("Conv", [e.input(0), e.input(1), *([e.input(2)] if e.input(2) else [])], **attrs)
    if e.input(3):
        y = e.op("Add", [y, e.input(3)])
    _activation(e, y, e.output(0), str(e.attr("activation", "")), list(e.attr("activation_params", [])))


def _fused_gemm(e: Expansion) -> None:
    """FusedGemm(A, B, C): activation(Gemm(A, B, C)), the activation's alpha, beta, gamma."""
    attrs = {k: e.attr(k) for k in ("alpha", "beta", "transA", "transB") if e.attr(k) is not None}
    y = e.op("Gemm", [i for i in e.node.input if i], **attrs)
    name = str(e.attr("activation", ""))
    alpha, beta, gamma = (e.attr(f"activation_{k}", 0.0) for k in ("alpha", "beta", "gamma"))
    params = [alpha, gamma] if name == "Selu" else [alpha, beta]
    _activation(e, y, e.output(0), name, params)


def _swap_last(e: Expansion, x: str) -> str:
    """``x`` with its last two axes swapped (its rank must be known)."""
    rank = e.rank(x)
    if rank is None or rank < 2:
        raise NotCovered("a transposed operand of unknown rank")
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return e.op("Transpose", [x], perm=perm)


def _fused_mat_mul(e: Expansion) -> None:
    """FusedMatMul(A, B): alpha * op(A) @ op(B), op transposing the last two axes where asked."""
    if e.attr("transBatchA", 0) or e.attr("transBatchB", 0):
        raise NotCovered("transBatchA/transBatchB")
    a = _swap_last(e, e.input(0)) if e.attr("transA", 0) else e.input(0)
    b = _swap_last(e, e.input(1)) if e.attr("transB", 0) else e.input(1)
    alpha = float(e.attr("alpha", 1.0))
    if alpha == 1.0:
        e.op("MatMul", [a, b], e.output(0))
    else:
        e.op("Mul", [e.op("MatMul", [a, b]), e.const(alpha)], e.output(0))


# ---------------------------------------------------------------- GELUs and sums


def _erf_gelu(e: Expansion, x: str, out: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt 2)), in the order torch exports it (its gradient rule's form)."""
    t = e.op("Erf", [e.op("Div", [x, e.const(math.sqrt(2.0))])])
    return e.op("Mul", [e.op("Mul", [x, e.op("Add", [t, e.const(1.0)])]), e.const(0.5)], out)


def _gelu(e: Expansion) -> None:
    """Gelu (onnxruntime's, before ONNX had one): GELU by erf."""
    _erf_gelu(e, e.input(0), e.output(0))


def _bias_gelu(e: Expansion) -> None:
    """BiasGelu(A, B): Gelu(A + B), Gelu by erf."""
    _erf_gelu(e, e.op("Add", [e.input(0), e.input(1)]), e.output(0))


def _fast_gelu(e: Expansion) -> None:
    """FastGelu(X, bias): GELU's tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = e.op("Add", [e.input(0), e.input(1)]) if e.input(1) else e.input(0)
    cube = e.op("Mul", [e.op("Mul", [x, x]), x])
    inner = e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715)])])
    t = e.op("Tanh", [e.op("Mul", [inner, e.const(math.sqrt(2.0 / math.pi))])])
    e.op("Mul", [e.op("Mul", [x, e.op("Add", [t, e.const(1.0)])]), e.const(0.5)], e.output(0))


def _quick_gelu(e: Expansion) -> None:
    """QuickGelu(X): x * sigmoid(alpha x)."""
    alpha = float(e.attr("alpha", 1.702))
    e.op("Mul", [e.input(0), e.op("Sigmoid", [e.op("Mul", [e.input(0), e.const(alpha)])])], e.output(0))


def _bias_add(e: Expansion) -> None:
    """BiasAdd(X, bias, skip): X + bias + skip."""
    e.op("Add", [e.op("Add", [e.input(0), e.input(1)]), e.input(2)], e.output(0))


# ---------------------------------------------------------------- normalisations over the last axis


def _skip_sum(e: Expansion, bias_slot: int) -> str:
    """input + skip (+ bias): the sum the skip normalisations normalise (their output 3)."""
    last = not e.input(bias_slot)
    s = e.op("Add", [e.input(0), e.input(1)], e.output(3) if last and e.output(3) else None)
    if not last:
        s = e.op("Add", [s, e.input(bias_slot)], e.output(3) or None)
    return s


def _reduce_mean_last(e: Expansion, x: str) -> str:
    """Mean over the last axis, kept (ReduceMean's axes: an attribute before opset 18, then an input)."""
    if e.opset >= 18:
        return e.op("ReduceMean", [x, e.const([-1], np.int64)], keepdims=1)
    return e.op("ReduceMean", [x], axes=[-1], keepdims=1)


def _layer_norm(e: Expansion, x: str, gamma: str, beta: str, eps: float) -> None:
    """LayerNormalization over the last axis, writing output 0 (and the mean and inverse standard
    deviation where read: the standard op's outputs 1, 2, from opset 17)."""
    if e.opset >= 17:
        outs = [e.output(0), e.output(1), e.output(2)]
        while outs and not outs[-1]:
            outs.pop()
        e.nodes.append(helper.make_node("LayerNormalization", [x, gamma, *([beta] if beta else [])], outs,
                                        axis=-1, epsilon=eps))
        return
    if e.output(1) or e.output(2):
        raise NotCovered("mean / inv_std_var outputs before opset 17")
    centred = e.op("Sub", [x, _reduce_mean_last(e, x)])
    var = _reduce_mean_last(e, e.op("Mul", [centred, centred]))
    std = e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])
    y = e.op("Mul", [e.op("Div", [centred, std]), gamma], None if beta else e.output(0))
    if beta:
        e.op("Add", [y, beta], e.output(0))


def _rms_norm(e: Expansion, x: str, gamma: str, eps: float) -> None:
    """x / sqrt(mean(x^2) + eps) * gamma over the last axis (a "simplified" layer norm)."""
    if e.output(1) or e.output(2):
        raise NotCovered("mean / inv_std_var outputs")
    ms = _reduce_mean_last(e, e.op("Mul", [x, x]))
    rms = e.op("Sqrt", [e.op("Add", [ms, e.const(eps)])])
    e.op("Mul", [e.op("Div", [x, rms]), gamma], e.output(0))


def _skip_layer_norm(e: Expansion) -> None:
    """SkipLayerNormalization(input, skip, gamma, beta, bias): LayerNorm(input + skip + bias)."""
    eps = float(e.attr("epsilon", 1e-12))
    _layer_norm(e, _skip_sum(e, 4), e.input(2), e.input(3), eps)


def _skip_simplified_layer_norm(e: Expansion) -> None:
    """SkipSimplifiedLayerNormalization(input, skip, gamma, bias): RMS norm of input + skip + bias."""
    eps = float(e.attr("epsilon", 1e-12))
    _rms_norm(e, _skip_sum(e, 3), e.input(2), eps)


def _simplified_layer_norm(e: Expansion) -> None:
    """SimplifiedLayerNormalization(X, scale): RMS norm over the last axis (axis -1 only)."""
    axis = int(e.attr("axis", -1))
    if axis != -1 and e.rank(e.input(0)) != axis + 1:
        raise NotCovered(f"axis {axis}")
    _rms_norm(e, e.input(0), e.input(1), float(e.attr("epsilon", 1e-5)))


# ---------------------------------------------------------------- quantized ops: dequantize, the float op, quantize


def _dq(e: Expansion, x: int, scale: int, zero: int) -> str:
    """DequantizeLinear of input ``x`` with the scale and zero point at those input slots."""
    return e.op("DequantizeLinear", [e.input(x), e.input(scale), *([e.input(zero)] if e.input(zero) else [])])


def _q(e: Expansion, y: str, scale: int, zero: int) -> None:
    """QuantizeLinear of ``y`` into the node's output with the scale and zero point at those slots."""
    e.op("QuantizeLinear", [y, e.input(scale), *([e.input(zero)] if e.input(zero) else [])], e.output(0))


def _qlinear_binary(op: str) -> Callable[[Expansion], None]:
    """QLinearAdd/QLinearMul(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)."""
    def expand(e: Expansion) -> None:
        _q(e, e.op(op, [_dq(e, 0, 1, 2), _dq(e, 3, 4, 5)]), 6, 7)
    expand.__doc__ = f"QLinear{op}: quantize(dequantize(A) {op} dequantize(B))."
    return expand


def _qlinear_unary(op: str, **attrs: Any) -> Callable[[Expansion], None]:
    """QLinearSigmoid/QLinearLeakyRelu(X, X_scale, X_zp, Y_scale, Y_zp)."""
    def expand(e: Expansion) -> None:
        extra = {k: e.attr(k, v) for k, v in attrs.items()}
        _q(e, e.op(op, [_dq(e, 0, 1, 2)], **extra), 3, 4)
    expand.__doc__ = f"QLinear{op}: quantize({op}(dequantize(X)))."
    return expand


def _data_rank(e: Expansion, weight_slot: int | None = None) -> int:
    """The data input's rank: from the shapes, else its weight's (a conv), else its kernel's plus 2
    (0: unknown; shape inference skips contrib ops)."""
    known = e.rank(e.input(0)) or (e.rank(e.input(weight_slot)) if weight_slot is not None else None)
    kernel = e.attr("kernel_shape")
    return known or (len(kernel) + 2 if kernel else 0)


def _from_channels_last(e: Expansion, x: str, rank: int) -> tuple[str, list[int]]:
    """``x`` (N, spatial..., C) as (N, C, spatial...), and the perm that puts it back."""
    if rank < 3:
        raise NotCovered("channels-last data of unknown rank")
    return e.op("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)]), [0, *range(2, rank), 1]


def _channels_first(e: Expansion, x: str, weight_slot: int | None = None) -> tuple[str, list[int] | None]:
    """``x`` moved to channels-first where the node says ``channels_last`` (and the inverse perm;
    None where it is channels first already)."""
    if not e.attr("channels_last", 0):
        return x, None
    return _from_channels_last(e, x, _data_rank(e, weight_slot))


def _qlinear_pool(op: str) -> Callable[[Expansion], None]:
    """QLinearGlobalAveragePool/QLinearAveragePool(X, x_scale, x_zp, y_scale, y_zp), channels first or last."""
    def expand(e: Expansion) -> None:
        x, back = _channels_first(e, _dq(e, 0, 1, 2))
        attrs = e.attrs("channels_last")
        y = e.op(op, [x], **attrs)
        _q(e, e.op("Transpose", [y], perm=back) if back else y, 3, 4)
    expand.__doc__ = f"QLinear{op}: quantize({op}(dequantize(X)))."
    return expand


def _qlinear_concat(e: Expansion) -> None:
    """QLinearConcat(Y_scale, Y_zp, (X, X_scale, X_zp)...): quantize(Concat(dequantize(X)...))."""
    pieces = [_dq(e, i, i + 1, i + 2) for i in range(2, len(e.node.input), 3)]
    y = e.op("Concat", pieces, axis=int(e.attr("axis")))
    e.op("QuantizeLinear", [y, e.input(0), e.input(1)], e.output(0))


def _qlinear_softmax(e: Expansion) -> None:
    """QLinearSoftmax(X, X_scale, X_zp, y_scale, y_zp): quantize(Softmax(dequantize(X))), its axis
    read as the opset it names reads it (the model's own Softmax must read it the same way)."""
    named = int(e.attr("opset", e.opset))
    if (named >= 13) != (e.opset >= 13):
        raise NotCovered(f"Softmax of opset {named} in an opset-{e.opset} model")
    _q(e, e.op("Softmax", [_dq(e, 0, 1, 2)], axis=int(e.attr("axis", -1))), 3, 4)


def _qlinear_conv(e: Expansion) -> None:
    """onnxruntime's QLinearConv: ONNX's, on channels-last data where ``channels_last`` says so
    (the form its ORT_ENABLE_ALL optimisation writes): transposed to channels first and back."""
    attrs = e.attrs("channels_last")
    x, back = _channels_first(e, e.input(0), weight_slot=3)
    y = e.op("QLinearConv", [x, *e.node.input[1:]], None if back else e.output(0), **attrs)
    if back:
        e.op("Transpose", [y], e.output(0), perm=back)


def _nhwc_max_pool(e: Expansion) -> None:
    """NhwcMaxPool (onnxruntime, 8-bit channels-last data): MaxPool on the channels-first map."""
    x, back = _from_channels_last(e, e.input(0), _data_rank(e))
    attrs = e.attrs()
    e.op("Transpose", [e.op("MaxPool", [x], **attrs)], e.output(0), perm=back)


def _dequantized_weight(e: Expansion, x: int, scale: int, zero: int, axis: int = -1) -> str:
    """A constant quantized weight, dequantized here (per tensor, or per channel along ``axis``)."""
    w, s = e.constant(x), e.constant(scale)
    z = e.constant(zero) if e.input(zero) else np.zeros((), dtype=np.int32)
    if w is None or s is None or z is None:
        raise NotCovered("a quantized weight computed at run time")
    shape = [1] * w.ndim
    if s.size > 1:
        shape[axis] = s.size
    value = (w.astype(np.float32) - z.astype(np.float32).reshape(shape if z.size > 1 else ())) * \
        s.astype(np.float32).reshape(shape if s.size > 1 else ())
    return e.const(value)


def _qgemm(e: Expansion) -> None:
    """QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): alpha op(A) op(B) + C with A and B
    dequantized, C an int32 bias at scale alpha a_scale b_scale; quantized when y_scale is given."""
    trans_b = int(e.attr("transB", 0))
    b = _dequantized_weight(e, 3, 4, 5, axis=0 if trans_b else -1)
    inputs = [_dq(e, 0, 1, 2), b]
    if e.input(6):
        c, sa, sb = e.constant(6), e.constant(1), e.constant(4)
        if c is None or sa is None or sb is None:
            raise NotCovered("a bias computed at run time")
        alpha = float(e.attr("alpha", 1.0))
        inputs.append(e.const(c.astype(np.float32) * alpha * sa.astype(np.float32) * sb.astype(np.float32)))
    attrs: dict[str, Any] = {"alpha": float(e.attr("alpha", 1.0)), "transA": int(e.attr("transA", 0)),
                             "transB": trans_b}
    if e.input(7):
        _q(e, e.op("Gemm", inputs, **attrs), 7, 8)
    else:
        e.op("Gemm", inputs, e.output(0), **attrs)


def _matmul_then_bias(e: Expansion, a: str, b: str, bias_slot: int) -> None:
    """a @ b (+ the bias at that slot), into the node's output."""
    if e.input(bias_slot):
        e.op("Add", [e.op("MatMul", [a, b]), e.input(bias_slot)], e.output(0))
    else:
        e.op("MatMul", [a, b], e.output(0))


def _dynamic_quantize_mat_mul(e: Expansion) -> None:
    """DynamicQuantizeMatMul(A, B, b_scale, b_zp, bias): A quantized at run time (scale from its own
    min and max), times B dequantized, plus bias."""
    q = [e.tmp("q"), e.tmp("scale"), e.tmp("zero")]
    e.nodes.append(helper.make_node("DynamicQuantizeLinear", [e.input(0)], q))
    a = e.op("DequantizeLinear", q)
    _matmul_then_bias(e, a, _dequantized_weight(e, 1, 2, 3), 4)


def _mat_mul_integer_to_float(e: Expansion) -> None:
    """MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp, b_zp, bias): dequantize(A) @ dequantize(B) + bias."""
    _matmul_then_bias(e, _dq(e, 0, 2, 4), _dequantized_weight(e, 1, 3, 5), 6)


def _dynamic_quantize_lstm(e: Expansion) -> None:
    """DynamicQuantizeLSTM: an LSTM on X quantized at run time, with the weights W [D, I, 4H] and
    R [D, H, 4H] dequantized (per direction, or per gate column) and put in the LSTM's [D, 4H, I].
    onnxruntime also quantizes the hidden state at each step, which this keeps in float: the values
    differ by that rounding, the dependencies not (the input's dynamic scale mixes every position)."""
    q = [e.tmp("q"), e.tmp("scale"), e.tmp("zero")]
    e.nodes.append(helper.make_node("DynamicQuantizeLinear", [e.input(0)], q))
    x = e.op("DequantizeLinear", q)
    weights = []
    for slot, scale, zero in ((1, 8, 9), (2, 10, 11)):
        w, s, z = e.constant(slot), e.constant(scale), e.constant(zero)
        if w is None or s is None or z is None:
            raise NotCovered("quantized weights computed at run time")
        per = (s.shape[0], 1, -1) if s.ndim == 2 else (-1, 1, 1)
        value = (w.astype(np.float32) - z.astype(np.float32).reshape(per)) * s.astype(np.float32).reshape(per)
        weights.append(e.const(value.transpose(0, 2, 1)))
    rest = [e.input(i) for i in range(3, 8)]
    while rest and not rest[-1]:
        rest.pop()
    attrs = e.attrs()
    outs = [e.output(i) for i in range(3)]
    while outs and not outs[-1]:
        outs.pop()
    e.nodes.append(helper.make_node("LSTM", [x, *weights, *rest], outs, **attrs))


# ---------------------------------------------------------------- attention


def _heads(e: Expansion, x: str, heads: int) -> str:
    """[B, S, heads * d] -> [B, heads, S, d]."""
    split = e.op("Reshape", [x, e.const([0, 0, heads, -1], np.int64)])
    return e.op("Transpose", [split], perm=[0, 2, 1, 3])


def _attend(e: Expansion, q: str, k: str, v: str, heads: int, head_size: int, bias_slot: int) -> None:
    """softmax(q k^T * scale + attention_bias) v over heads, back to [B, S, heads * dv]."""
    scale = float(e.attr("scale", 0.0)) or 1.0 / math.sqrt(head_size)
    kt = e.op("Transpose", [_heads(e, k, heads)], perm=[0, 1, 3, 2])
    scores = e.op("Mul", [e.op("MatMul", [_heads(e, q, heads), kt]), e.const(scale)])
    if e.input(bias_slot):
        scores = e.op("Add", [scores, e.input(bias_slot)])
    out = e.op("MatMul", [e.op("Softmax", [scores], axis=-1), _heads(e, v, heads)])
    joined = e.op("Transpose", [out], perm=[0, 2, 1, 3])
    e.op("Reshape", [joined, e.const([0, 0, -1], np.int64)], e.output(0))


def _plain_attention(e: Expansion, unsupported: Sequence[int], outputs: Sequence[int]) -> int:
    """The head count, after refusing masks, caches, rotary embeddings and causal attention (what
    these expansions do not write out)."""
    if any(e.input(i) for i in unsupported) or any(e.output(i) for i in outputs):
        raise NotCovered("a mask, a cache or extra outputs")
    if e.attr("unidirectional", 0) or e.attr("do_rotary", 0):
        raise NotCovered("causal or rotary attention")
    return int(e.attr("num_heads"))


def _attention(e: Expansion) -> None:
    """Attention(input, weights, bias, ..., attention_bias): the fused q, k, v projection of the
    input (sizes ``qkv_hidden_sizes``, else three equal parts), then multi-head attention."""
    heads = _plain_attention(e, (3, 4, 6), (1,))
    w = e.constant(1)
    if w is None:
        raise NotCovered("projection weights computed at run time")
    sizes = list(e.attr("qkv_hidden_sizes", None) or [w.shape[1] // 3] * 3)
    qkv = e.op("MatMul", [e.input(0), e.input(1)])
    if e.input(2):
        qkv = e.op("Add", [qkv, e.input(2)])
    q, k, v = e.tmp("q"), e.tmp("k"), e.tmp("v")
    e.nodes.append(helper.make_node("Split", [qkv, e.const(sizes, np.int64)], [q, k, v], axis=-1))
    _attend(e, q, k, v, heads, sizes[0] // heads, 5)


def _multi_head_attention(e: Expansion) -> None:
    """MultiHeadAttention(query, key, value, bias, ..., attention_bias): separate [B, S, D] query,
    key and value (the packed forms are not written out), each plus its part of ``bias``."""
    heads = _plain_attention(e, (4, 6, 7, 8, 9), (1, 2, 3))
    width = e.last_dim(e.input(0))
    if not (e.input(1) and e.input(2)) or any(e.rank(e.input(i)) != 3 for i in range(3)) or width is None:
        raise NotCovered("packed query, key and value, or a query of unknown width")
    q, k, v = e.input(0), e.input(1), e.input(2)
    if e.input(3):
        b = e.constant(3)
        if b is None:
            raise NotCovered("a bias computed at run time")
        q = e.op("Add", [q, e.const(b[:width])])
        k = e.op("Add", [k, e.const(b[width:2 * width])])
        v = e.op("Add", [v, e.const(b[2 * width:])])
    _attend(e, q, k, v, heads, width // heads, 5)


EXPANSIONS: dict[str, Callable[[Expansion], None]] = {
    "FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "FusedMatMul": _fused_mat_mul,
    "Gelu": _gelu, "BiasGelu": _bias_gelu, "FastGelu": _fast_gelu, "QuickGelu": _quick_gelu, "BiasAdd": _bias_add,
    "SkipLayerNormalization": _skip_layer_norm, "SkipSimplifiedLayerNormalization": _skip_simplified_layer_norm,
    "SimplifiedLayerNormalization": _simplified_layer_norm,
    "QLinearAdd": _qlinear_binary("Add"), "QLinearMul": _qlinear_binary("Mul"),
    "QLinearSigmoid": _qlinear_unary("Sigmoid"), "QLinearLeakyRelu": _qlinear_unary("LeakyRelu", alpha=0.01),
    "QLinearGlobalAveragePool": _qlinear_pool("GlobalAveragePool"), "QLinearAveragePool": _qlinear_pool("AveragePool"),
    "QLinearConcat": _qlinear_concat, "QLinearSoftmax": _qlinear_softmax, "QGemm": _qgemm,
    "DynamicQuantizeMatMul": _dynamic_quantize_mat_mul, "MatMulIntegerToFloat": _mat_mul_integer_to_float,
    "DynamicQuantizeLSTM": _dynamic_quantize_lstm,
    "Attention": _attention, "MultiHeadAttention": _multi_head_attention,
    "QLinearConv": _qlinear_conv, "NhwcMaxPool": _nhwc_max_pool,
}
# onnxruntime registers SimplifiedLayerNormalization in ONNX's own domain (ONNX does not define it).
DOMAINS = {MS: set(EXPANSIONS), "": {"SimplifiedLayerNormalization"}, "ai.onnx": {"SimplifiedLayerNormalization"}}


# ---------------------------------------------------------------- the rewrite


def expandable(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a contrib op this module writes as standard ops."""
    return node.op_type in DOMAINS.get(node.domain, set())


def contrib_stop_reason(node: onnx.NodeProto) -> str | None:
    """Why the analysis stops at an onnxruntime op it does not read (a contrib op with what its
    expansion does not cover; onnxruntime's NCHWc layout); None for other ops."""
    if node.doc_string.startswith(NOT_EXPANDED):
        return (f"onnxruntime's {node.op_type} with {node.doc_string[len(NOT_EXPANDED):]}: rfgraph reads this "
                f"op as standard ops only without it")
    if node.domain == NCHWC:
        return ("onnxruntime's NCHWc blocked layout (a file saved at ORT_ENABLE_ALL, tied to the CPU that "
                "saved it): save the model at ORT_ENABLE_EXTENDED (or from the original export) instead")
    return None


def writes_inner_tensor(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is one of an expansion's own steps, writing none of the contrib op's
    outputs (its tensors are rfgraph's, not the model's: never a default end point)."""
    return node.doc_string.startswith(EXPANDED) and node.doc_string.endswith(INNER)


def expanded_from(node: onnx.NodeProto) -> str | None:
    """The contrib op whose output ``node`` writes (its last step), for reports; None otherwise."""
    if not node.doc_string.startswith(EXPANDED) or node.doc_string.endswith(INNER):
        return None
    return node.doc_string.rsplit("::", 1)[-1]


def expand_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each contrib op of ``EXPANSIONS`` replaced by the standard ops it computes
    (a copy; the model itself when it has none).  Ops an expansion does not cover stay.  In rounds:
    shape inference skips contrib ops, so a rank an expansion needs may be known only once the ops
    before it are standard (a chain of channels-last quantized ops)."""
    if not any(expandable(n) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((i.version for i in out.opset_import if i.domain in ("", "ai.onnx")), 1)
    consts = _constants(out.graph)
    for _ in range(MAX_ROUNDS):
        if not _expand_round(out, opset, consts):
            break
    return out


MAX_ROUNDS = 8  # rounds of expansion (each after shape inference of the last)


def _expand_round(model: onnx.ModelProto, opset: int, consts: dict[str, np.ndarray]) -> bool:
    """Expand every contrib op that can be at the shapes known now; whether any was, while some
    remain that could not (another round may know their shapes)."""
    shapes, dtypes = _shapes(model)
    nodes: list[onnx.NodeProto] = []
    expanded = left = 0
    for node in model.graph.node:
        if not expandable(node) or node.doc_string.startswith(EXPANDED):
            nodes.append(node)
            continue
        e = Expansion(node, opset, consts, shapes, dtypes)
        try:
            EXPANSIONS[node.op_type](e)
        except NotCovered as exc:  # kept as it is, with the reason the analysis's stop will give
            node.doc_string = f"{NOT_EXPANDED}{exc}"
            nodes.append(node)
            left += 1
            continue
        nodes.extend(e.finish())
        model.graph.initializer.extend(e.inits)
        expanded += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return bool(expanded and left)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values (quantized weights, scales, zero points)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[int | None, ...]], dict[str, int]]:
    """Each tensor's shape and element type where ONNX's shape inference (which skips contrib
    ops) or the file tells."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help here: the shapes the file declares remain
        inferred = model
    g = inferred.graph
    shapes: dict[str, tuple[int | None, ...]] = {i.name: tuple(i.dims) for i in g.initializer}
    dtypes = {i.name: i.data_type for i in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
            if vi.type.tensor_type.HasField("shape"):
                dims = vi.type.tensor_type.shape.dim
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes, dtypes


# ---------------------------------------------------------------- the family's tables (none: each op is expanded)

TRF: dict[str, Rule] = {}
VJP: dict[str, VJPRule] = {}
