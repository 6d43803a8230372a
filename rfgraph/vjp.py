"""Vector-Jacobian-product (VJP) graph builder: from a forward ONNX graph, an ONNX graph computing
``d(seed . y)/dx`` for one output ``y`` and the graph input ``x``, run by plain onnxruntime.

Conventions: only the input gradient is built (weights are constants of the backward pass, no
weight gradient is ever computed); the forward nodes that ``y`` depends on are kept in the same
graph, so one session runs forward and backward together and onnxruntime shares and fuses them.
Each op's rule is one small function in ``VJP_RULES`` (op type -> rule), the only place that
knows how an op back-propagates; an op without a rule raises ``UnsupportedOpError`` naming the node
and pointing to the finite-difference engine (``--method fd``), which runs any op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import geometry
from .errors import (
    DynamicShapeError,
    InvalidAttributeError,
    RFGraphError,
    UnsupportedOpError,
)
from .onnx_import import BIG_WEIGHT, FLOAT_TYPES, measure_shapes, session_options

SEED_NAME = "rfgraph_seed"
FD_HINT = "use the finite-difference engine instead (--method fd; method='fd' in Python), which runs any op"
GRAD_NAME = "rfgraph_grad"
MIN_OPSET = 17  # LayerNormalization, ScatterElements(add), Split/ReduceSum with tensor inputs

# Ops whose outputs never carry a gradient (integer or boolean results, shapes, indices): listed,
# not inferred, so a reader sees why a dependency on the input stops there.
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ConstantOfShape", "EyeLike",
    "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign",
    # piecewise constant (a one-hot of the argmax) and integer bit ops: gradient 0, as torch's
    # derivatives.yaml declares for floor/round/sign and argmax
    "Hardmax", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
})
# Outputs of differentiable ops that are indices, not values (no gradient flows through them)
INDEX_OUTPUTS = {"MaxPool": 1, "TopK": 1}


class VJPError(RFGraphError):
    """The gradient graph cannot be built for this model (bad output name, no path to input)."""


# --------------------------------------------------------------------------------------------
# Builder: the context every rule works in.
# --------------------------------------------------------------------------------------------

@dataclass
class Builder:
    """Holds the forward graph facts (shapes, constants, activity) and collects backward nodes."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]
    consts: dict[str, np.ndarray]
    active: set[str]
    dtype: int  # element type of the input and of every gradient
    evaluate: Callable[[str], dict[str, np.ndarray]] | None = None
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        """A new unique tensor name for the backward graph."""
        self._count += 1
        return f"rfgraph_vjp/{hint}_{self._count}"

    def emit(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        """Append a backward node and return its output names (``attrs``: ONNX attribute values,
        typed ``Any`` as in ``helper.make_node``, which encodes them)."""
        outs = [self.fresh(op) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=outs[0], **attrs))
        return outs

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        """Append a single-output backward node and return its output."""
        return self.emit(op, inputs, **attrs)[0]

    def const(self, value: np.ndarray | float | Sequence[int],
              dtype: npt.DTypeLike | None = None) -> str:
        """Add a constant initializer; floats take the gradient dtype unless ``dtype`` says."""
        if dtype is None:
            dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.inits.append(numpy_helper.from_array(arr, name))
        if arr.size <= BIG_WEIGHT:  # big ones (flipped kernels) are never read back
            self.consts[name] = arr
        return name

    def ints(self, values: Sequence[int]) -> str:
        """An int64 1-D constant (axes, shapes, pads, splits)."""
        return self.const(np.asarray(list(values), dtype=np.int64), dtype=np.int64)

    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of a forward tensor (known for every tensor; see ``tensor_shapes``)."""
        return self.shapes[name]

    def value(self, name: str) -> np.ndarray | None:
        """The value of a tensor that does not depend on the input's values (initializer,
        Constant node, or computed from constants and shapes, e.g. torch's Pad amounts), or None.
        Initializers are converted on first use only (a rule asks for few of them)."""
        if not name or name in self.active:
            return None
        if name not in self.consts and name in self.initializers:
            self.consts[name] = numpy_helper.to_array(self.initializers[name])
        if name not in self.consts and self.evaluate is not None:
            self.consts.update(self.evaluate(name))
        return self.consts.get(name)

    def is_active(self, name: str) -> bool:
        """True when the tensor depends differentiably on the graph input."""
        return bool(name) and name in self.active

    def zeros(self, shape: Sequence[int]) -> str:
        """A zero tensor of the gradient dtype (a broadcast scalar when ``shape`` is empty)."""
        return self.op("ConstantOfShape", self.ints(shape), value=numpy_helper.from_array(
            np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(self.dtype))))

    def reduce_to(self, g: str, shape: Sequence[int]) -> str:
        """Sum a broadcast gradient back to an operand's ``shape`` (numpy broadcasting rules)."""
        gshape = self.shapes.get(g)
        if gshape is None:
            raise AssertionError(f"no shape for gradient {g}")
        lead = len(gshape) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape)
                                    if d == 1 and gshape[lead + i] != 1]
        if not axes:
            return g
        out = self.op("ReduceSum", g, self.ints(axes), keepdims=1)
        return self.reshape(out, shape)

    def reshape(self, g: str, shape: Sequence[int]) -> str:
        """Reshape a gradient to a static shape, recording it (a 0 in ``shape`` is an empty axis,
        not "copy the input's size": allowzero)."""
        zero = {"allowzero": 1} if 0 in shape else {}
        out = self.op("Reshape", g, self.ints(shape), **zero)
        self.shapes[out] = tuple(shape)
        return out

    def binary(self, op: str, a: str, b: str, shape: Sequence[int] | None = None) -> str:
        """An elementwise op whose result shape is known (recorded for later ``reduce_to``)."""
        out = self.op(op, a, b)
        sa, sb = self.shapes.get(a, ()), self.shapes.get(b, ())
        self.shapes[out] = tuple(shape) if shape is not None else tuple(np.broadcast_shapes(sa, sb))
        return out

    def scalar(self, value: float) -> str:
        """A scalar constant of the gradient dtype."""
        name = self.const(value)
        self.shapes[name] = ()
        return name

    def where(self, cond: str, g: str, other: str | None = None) -> str:
        """``g`` where ``cond`` holds, else ``other`` (zero by default); shape of ``g``.

        Written as ``g * float(cond)``: onnxruntime's Mul and Cast are vectorised, its Where is
        not (5x slower on a ResNet activation, measured).
        """
        if other is not None:
            out = self.op("Where", cond, g, other)
        else:
            mask = self.op("Cast", cond, to=self.dtype)
            out = self.op("Mul", g, mask)
        self.shapes[out] = self.shapes[g]
        return out

    def along_axis(self, g: str, matrix: np.ndarray, axis: int) -> str:
        """Contract axis ``axis`` of ``g`` (length m) with ``matrix`` (n x m): a linear map per axis."""
        shape = list(self.shapes[g])
        pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
        g3 = self.reshape(g, (pre, shape[axis], post))
        out = self.op("Einsum", g3, self.const(matrix), equation="pmq,nm->pnq")
        shape[axis] = matrix.shape[0]
        return self.reshape(out, shape)


@dataclass
class NodeView:
    """A forward node with its attributes decoded (the view each rule gets)."""

    node: onnx.NodeProto
    attrs: dict[str, object]

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    def attr(self, key: str, default: object = None) -> object:
        return self.attrs.get(key, default)

    def invalid(self, why: str) -> InvalidAttributeError:
        """The error for an attribute of the wrong type or a missing required one."""
        return InvalidAttributeError(f"node '{self.name}' ({self.node.op_type}): {why}")

    def attr_int(self, key: str, default: int | None = None) -> int:
        """An INT attribute; ``default`` when absent (no default: the attribute is required)."""
        value = self.attrs.get(key, default)
        if isinstance(value, int):
            return value
        raise self.invalid(_attr_problem(key, value, "an int"))

    def attr_float(self, key: str, default: float) -> float:
        """A FLOAT attribute (an int stands for its float); ``default`` when absent."""
        value = self.attrs.get(key, default)
        if isinstance(value, (int, float)):
            return float(value)
        raise self.invalid(_attr_problem(key, value, "a float"))

    def attr_ints(self, key: str) -> list[int] | None:
        """An INTS attribute as a fresh list (rules edit it in place), or None when absent."""
        value = self.attrs.get(key)
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return list(value)
        raise self.invalid(_attr_problem(key, value, "a list of ints"))

    def attr_str(self, key: str, default: str) -> str:
        """A STRING attribute, decoded (ONNX stores bytes); ``default`` when absent."""
        value = self.attrs.get(key, default)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, str):
            return value
        raise self.invalid(_attr_problem(key, value, "a string"))


def _attr_problem(key: str, value: object, want: str) -> str:
    """Why an attribute value is refused: missing (required) or of the wrong type."""
    if value is None:
        return f"the required attribute '{key}' is missing"
    return f"attribute '{key}' is {type(value).__name__}, expected {want}"


Grads = list  # per input: gradient tensor name or None
Rule = Callable[[Builder, NodeView, list], Grads]


def _set_shape(b: Builder, name: str, like: str) -> str:
    b.shapes[name] = b.shapes[like]
    return name


# --------------------------------------------------------------------------------------------
# Rules: one small function per op.  Each gets (builder, node, output gradients) and returns the
# gradient of each input (None where the input is inactive or receives nothing).
# --------------------------------------------------------------------------------------------

def _identity(b: Builder, n: NodeView, gys: list) -> Grads:
    """Identity, Dropout (inference), Cast between floats: the gradient passes unchanged."""
    return [gys[0]] + [None] * (len(n.inputs) - 1)


def _reshape(b: Builder, n: NodeView, gys: list) -> Grads:
    """Reshape, Flatten, Squeeze, Unsqueeze: reshape the gradient back to the input's shape."""
    return [b.reshape(gys[0], b.shape(n.inputs[0]))] + [None] * (len(n.inputs) - 1)


def _transpose(b: Builder, n: NodeView, gys: list) -> Grads:
    """Transpose: the inverse permutation."""
    rank = len(b.shape(n.inputs[0]))
    perm = n.attr_ints("perm") or list(reversed(range(rank)))
    inverse = list(np.argsort(perm))
    out = b.op("Transpose", gys[0], perm=inverse)
    b.shapes[out] = b.shape(n.inputs[0])
    return [out]


def _relu(b: Builder, n: NodeView, gys: list) -> Grads:
    """Relu: pass where the output is positive (uses y, so Conv+Relu stays fusable)."""
    return [b.where(b.op("Greater", n.outputs[0], b.scalar(0.0)), gys[0])]


def _leaky_relu(b: Builder, n: NodeView, gys: list) -> Grads:
    """LeakyRelu: 1 for x > 0, alpha otherwise."""
    alpha = n.attr_float("alpha", 0.01)
    scaled = b.binary("Mul", gys[0], b.scalar(alpha))
    return [b.where(b.op("Greater", n.inputs[0], b.scalar(0.0)), gys[0], scaled)]


def _prelu(b: Builder, n: NodeView, gys: list) -> Grads:
    """PRelu: 1 for x > 0, the (broadcast) slope otherwise; the slope gets no gradient."""
    scaled = b.binary("Mul", gys[0], n.inputs[1], b.shape(n.inputs[0]))
    return [b.where(b.op("Greater", n.inputs[0], b.scalar(0.0)), gys[0], scaled), None]


def _clip(b: Builder, n: NodeView, gys: list) -> Grads:
    """Clip / Relu6: pass where min <= x <= max (torch's convention at the bounds)."""
    x, g = n.inputs[0], gys[0]
    lo = n.inputs[1] if len(n.inputs) > 1 and n.inputs[1] else None
    hi = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
    if "min" in n.attrs:  # opset < 11 form
        lo, hi = b.scalar(n.attr_float("min", -np.inf)), b.scalar(n.attr_float("max", np.inf))
    masks = []
    if lo:
        masks.append(b.op("GreaterOrEqual", x, lo))
    if hi:
        masks.append(b.op("LessOrEqual", x, hi))
    if not masks:
        return [g] + [None] * (len(n.inputs) - 1)
    mask = masks[0] if len(masks) == 1 else b.op("And", *masks)
    return [b.where(mask, g)] + [None] * (len(n.inputs) - 1)


def _sigmoid(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sigmoid: g * y * (1 - y)."""
    y = n.outputs[0]
    one_minus = b.binary("Sub", b.scalar(1.0), y, b.shape(y))
    return [b.binary("Mul", gys[0], b.binary("Mul", y, one_minus, b.shape(y)))]


def _tanh(b: Builder, n: NodeView, gys: list) -> Grads:
    """Tanh: g * (1 - y^2)."""
    y = n.outputs[0]
    d = b.binary("Sub", b.scalar(1.0), b.binary("Mul", y, y, b.shape(y)), b.shape(y))
    return [b.binary("Mul", gys[0], d)]


def _hard_sigmoid(b: Builder, n: NodeView, gys: list) -> Grads:
    """HardSigmoid: alpha where 0 < alpha*x + beta < 1, else 0."""
    alpha, beta = n.attr_float("alpha", 0.2), n.attr_float("beta", 0.5)
    t = b.binary("Add", b.binary("Mul", n.inputs[0], b.scalar(alpha)), b.scalar(beta))
    mask = b.op("And", b.op("Greater", t, b.scalar(0.0)), b.op("Less", t, b.scalar(1.0)))
    return [b.where(mask, b.binary("Mul", gys[0], b.scalar(alpha)))]


def _hard_swish(b: Builder, n: NodeView, gys: list) -> Grads:
    """HardSwish x*relu6(x+3)/6: 0 below -3, 1 above 3, (2x+3)/6 between (torch's convention)."""
    x, g = n.inputs[0], gys[0]
    mid = b.binary("Add", b.binary("Mul", x, b.scalar(1 / 3)), b.scalar(0.5))
    d = _set_shape(b, b.op("Where", b.op("Greater", x, b.scalar(3.0)), b.scalar(1.0), mid), x)
    d = b.where(b.op("GreaterOrEqual", x, b.scalar(-3.0)), d)
    return [b.binary("Mul", g, d)]


def _erf(b: Builder, n: NodeView, gys: list) -> Grads:
    """Erf: g * 2/sqrt(pi) * exp(-x^2)."""
    x = n.inputs[0]
    e = b.op("Exp", b.op("Neg", b.binary("Mul", x, x)))
    _set_shape(b, e, x)
    return [b.binary("Mul", gys[0], b.binary("Mul", e, b.scalar(2 / math.sqrt(math.pi))))]


def _gelu(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gelu (opset 20): exact Phi(x) + x phi(x), or the derivative of the tanh approximation."""
    x, g, shape = n.inputs[0], gys[0], b.shape(n.inputs[0])
    if n.attr_str("approximate", "none") == "tanh":
        c = math.sqrt(2 / math.pi)
        x2 = b.binary("Mul", x, x)
        inner = b.binary("Mul", b.binary("Mul", x, b.scalar(c)),
                         b.binary("Add", b.scalar(1.0), b.binary("Mul", x2, b.scalar(0.044715))))
        t = _set_shape(b, b.op("Tanh", inner), x)
        sech2 = b.binary("Sub", b.scalar(1.0), b.binary("Mul", t, t))
        dinner = b.binary("Mul", b.scalar(c),
                          b.binary("Add", b.scalar(1.0), b.binary("Mul", x2, b.scalar(3 * 0.044715))),
                          shape)
        d = b.binary("Add", b.binary("Mul", b.scalar(0.5), b.binary("Add", b.scalar(1.0), t), shape),
                     b.binary("Mul", b.binary("Mul", b.binary("Mul", x, b.scalar(0.5)), sech2),
                              dinner))
        return [b.binary("Mul", g, d)]
    cdf = b.binary("Mul", b.scalar(0.5), b.binary(
        "Add", b.scalar(1.0), _set_shape(b, b.op("Erf", b.binary("Mul", x, b.scalar(1 / math.sqrt(2)))),
                                         x)), shape)
    pdf = b.binary("Mul", _set_shape(b, b.op("Exp", b.binary("Mul", b.binary("Mul", x, x),
                                                               b.scalar(-0.5))), x),
                   b.scalar(1 / math.sqrt(2 * math.pi)))
    return [b.binary("Mul", g, b.binary("Add", cdf, b.binary("Mul", x, pdf)))]


def _exp(b: Builder, n: NodeView, gys: list) -> Grads:
    """Exp: g * y."""
    return [b.binary("Mul", gys[0], n.outputs[0])]


def _neg(b: Builder, n: NodeView, gys: list) -> Grads:
    """Neg: -g."""
    return [_set_shape(b, b.op("Neg", gys[0]), gys[0])]


def _sqrt(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sqrt: g / (2 y)."""
    return [b.binary("Div", gys[0], b.binary("Mul", n.outputs[0], b.scalar(2.0)))]


def _pow(b: Builder, n: NodeView, gys: list) -> Grads:
    """Pow with a constant exponent p: g * p * x^(p-1); a variable exponent is not supported."""
    p_value = b.value(n.inputs[1])
    if p_value is None or p_value.size != 1 or b.is_active(n.inputs[1]):
        raise UnsupportedOpError(n.name, "Pow", "only a constant scalar exponent has a VJP rule")
    p = float(p_value.reshape(()))
    xp = b.binary("Pow", n.inputs[0], b.scalar(p - 1.0), b.shape(n.inputs[0]))
    return [b.binary("Mul", gys[0], b.binary("Mul", xp, b.scalar(p))), None]


def _add(b: Builder, n: NodeView, gys: list) -> Grads:
    """Add / Sum: each operand gets the gradient summed over its broadcast axes."""
    return [b.reduce_to(gys[0], b.shape(x)) if b.is_active(x) else None for x in n.inputs]


def _mean(b: Builder, n: NodeView, gys: list) -> Grads:
    """Mean (variadic): each operand gets g / count, reduced to its shape."""
    g = b.binary("Mul", gys[0], b.scalar(1.0 / len(n.inputs)))
    return [b.reduce_to(g, b.shape(x)) if b.is_active(x) else None for x in n.inputs]


def _sub(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sub: g for A, -g for B, each reduced to its shape."""
    a, c = n.inputs
    ga = b.reduce_to(gys[0], b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        gb = b.reduce_to(_set_shape(b, b.op("Neg", gys[0]), gys[0]), b.shape(c))
    return [ga, gb]


def _mul(b: Builder, n: NodeView, gys: list) -> Grads:
    """Mul: g * B for A and g * A for B, each reduced to its shape."""
    a, c = n.inputs
    ga = b.reduce_to(b.binary("Mul", gys[0], c), b.shape(a)) if b.is_active(a) else None
    gb = b.reduce_to(b.binary("Mul", gys[0], a), b.shape(c)) if b.is_active(c) else None
    return [ga, gb]


def _div(b: Builder, n: NodeView, gys: list) -> Grads:
    """Div: g / B for A and -g * y / B for B, each reduced to its shape."""
    a, c = n.inputs
    ga = b.reduce_to(b.binary("Div", gys[0], c), b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        q = b.binary("Div", b.binary("Mul", gys[0], n.outputs[0]), c)
        gb = b.reduce_to(_set_shape(b, b.op("Neg", q), q), b.shape(c))
    return [ga, gb]


def _expand(b: Builder, n: NodeView, gys: list) -> Grads:
    """Expand: sum over the broadcast axes."""
    return [b.reduce_to(gys[0], b.shape(n.inputs[0])), None]


def _window(n: NodeView, b: Builder) -> geometry.Window:
    """Geometry of a Conv/pool node (``geometry.window``, auto_pad resolved on the known sizes)."""
    xs = b.shape(n.inputs[0])[2:]
    kernel = n.attr_ints("kernel_shape")
    if n.node.op_type == "Conv":
        kernel = kernel or list(b.shape(n.inputs[1])[2:])
    elif kernel is None:  # required by the pooling ops
        raise n.invalid(_attr_problem("kernel_shape", None, "a list of ints"))
    return geometry.window(n.node.op_type, n.name, n.attrs, kernel, xs)


def _scatter_window(b: Builder, g: str, w: str, group: int, n: NodeView) -> str:
    """Transpose of a sliding window: ConvTranspose of ``g`` with ``w``, cropped/padded to x."""
    geo = _window(n, b)
    strides, dil, pb, pe = geo.strides, geo.dilations, geo.pads_begin, geo.pads_end
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [a.k_eff for a in geo.axes]
    extra = [x - (s * (y - 1) + k - p0 - p1)
             for x, s, y, k, p0, p1 in zip(xs, strides, ys, k_eff, pb, pe)]
    if all(0 <= e < max(s, d) for e, s, d in zip(extra, strides, dil)):
        out = b.op("ConvTranspose", g, w, strides=strides, dilations=dil, pads=pb + pe,
                   output_padding=extra, group=group)
    else:  # ceil mode or unusual pads: full transpose, then crop [pb, pb + x) with zero fill
        full = b.op("ConvTranspose", g, w, strides=strides, dilations=dil, group=group)
        fulls = [s * (y - 1) + k for s, y, k in zip(strides, ys, k_eff)]
        crop = []
        for p0, x, f in zip(pb, xs, fulls):
            crop.append((-p0, (p0 + x) - f))  # Pad amounts: negative crops
        pads = [0, 0] + [c[0] for c in crop] + [0, 0] + [c[1] for c in crop]
        out = b.op("Pad", full, b.ints(pads))
    b.shapes[out] = b.shape(n.inputs[0])
    return out


def _flipped_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """Weights of the stride-1 Conv that equals the transpose of Conv(w): swap in/out, flip space."""
    cout, cin_g = w.shape[:2]
    ws = w.reshape(group, cout // group, cin_g, *w.shape[2:])
    ws = np.swapaxes(ws, 1, 2).reshape(group * cin_g, cout // group, *w.shape[2:])
    return np.ascontiguousarray(np.flip(ws, axis=tuple(range(2, w.ndim))))


def _conv(b: Builder, n: NodeView, gys: list) -> Grads:
    """Conv: the transposed convolution with the same weights (groups, dilation, strides, pads).

    Stride 1 with constant weights uses a Conv with flipped weights instead: the same numbers,
    and onnxruntime's Conv kernels are much faster than its ConvTranspose.
    """
    group = n.attr_int("group", 1)
    geo = _window(n, b)
    strides, dil, pb = geo.strides, geo.dilations, geo.pads_begin
    w = b.value(n.inputs[1])
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [a.k_eff for a in geo.axes]
    if w is not None and all(s == 1 for s in strides):
        new_pb = [k - 1 - p for k, p in zip(k_eff, pb)]
        new_pe = [x - y - q + k - 1 for x, y, q, k in zip(xs, ys, new_pb, k_eff)]
        if all(p >= 0 for p in new_pb + new_pe):
            wf = b.const(_flipped_kernel(w.astype(helper.tensor_dtype_to_np_dtype(b.dtype)), group))
            out = b.op("Conv", gys[0], wf, dilations=dil, pads=new_pb + new_pe, group=group)
            b.shapes[out] = b.shape(n.inputs[0])
            return [out] + [None] * (len(n.inputs) - 1)
    return [_scatter_window(b, gys[0], n.inputs[1], group, n)] + [None] * (len(n.inputs) - 1)


def _conv_transpose(b: Builder, n: NodeView, gys: list) -> Grads:
    """ConvTranspose: the forward convolution with the same weights, strides, pads and dilations.

    The pads are the spec's (``geometry.conv_transpose``); the Conv's end pad is chosen so that
    exactly x rows come out (rows added by output_padding are never read). Negative pads (a SAME
    or output_shape total below 0) crop the gradient with a Pad before the Conv.
    """
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    kernel = n.attr_ints("kernel_shape") or list(b.shape(n.inputs[1])[2:])
    if len(ys) != len(xs) or len(kernel) != len(xs):
        raise UnsupportedOpError(n.name, "ConvTranspose", f"output sizes {list(ys)} unknown or not matching "
                                 f"the {len(xs)} spatial input axes (output_shape={n.attr_ints('output_shape')})")
    geo = geometry.conv_transpose(n.name, n.attrs, kernel, xs)
    pb = geo.pads_begin
    pe = [a.stride * (x - 1) + a.k_eff - y - p for a, x, y, p in zip(geo.axes, xs, ys, pb)]
    g, rank = gys[0], len(xs)
    if any(p < 0 for p in pb + pe):  # crop (negative) and pad with one Pad, then an unpadded Conv
        g = b.op("Pad", g, b.ints([0, 0, *pb, 0, 0, *pe]))
        pb, pe = [0] * rank, [0] * rank
    out = b.op("Conv", g, n.inputs[1], strides=geo.strides, dilations=geo.dilations, pads=pb + pe,
               group=n.attr_int("group", 1))
    b.shapes[out] = b.shape(n.inputs[0])
    return [out] + [None] * (len(n.inputs) - 1)


def _max_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """MaxPool: scatter-add the gradient to each window's argmax (the forward node's Indices)."""
    if n.attr("storage_order", 0):
        raise UnsupportedOpError(n.name, "MaxPool", "column-major storage_order")
    if len(n.node.output) < 2 or not n.node.output[1]:
        if len(n.node.output) < 2:
            n.node.output.append("")
        n.node.output[1] = b.fresh("maxpool_indices")
    xs = b.shape(n.inputs[0])
    flat = b.op("ScatterElements", b.zeros([math.prod(xs)]),
                b.op("Reshape", n.node.output[1], b.ints([-1])),
                b.op("Reshape", gys[0], b.ints([-1])), axis=0, reduction="add")
    return [b.reshape(flat, xs)]


def _top_k(b: Builder, n: NodeView, gys: list) -> Grads:
    """TopK values: scatter-add the gradient back to the selected positions (the forward
    node's Indices output) along the TopK axis; k is not differentiable."""
    xs = b.shape(n.inputs[0])
    g = b.op("ScatterElements", b.op("Expand", b.zeros([]), b.ints(xs)), n.node.output[1], gys[0],
             axis=n.attr_int("axis", -1) % len(xs), reduction="add")
    return [_set_shape(b, g, n.inputs[0]), None]


def _pool_divisor(xs: Sequence[int], ys: Sequence[int], geo: geometry.Window) -> np.ndarray:
    """Per-output-unit divisor of AveragePool: window cells inside the input (or the padded input)."""
    per_axis, include_pad = [], geo.count_include_pad
    for x, y, k, s, d, p0, p1 in zip(xs, ys, geo.kernel, geo.strides, geo.dilations, geo.pads_begin,
                                     geo.pads_end):
        start = np.arange(y)[:, None] * s - p0 + np.arange(k)[None, :] * d
        hi = x + p1 if include_pad else x
        lo = -p0 if include_pad else 0
        per_axis.append(((start >= lo) & (start < hi)).sum(axis=1))
    div = per_axis[0]
    for a in per_axis[1:]:
        div = np.multiply.outer(div, a)
    return np.maximum(div, 1).astype(np.float64)


def _average_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """AveragePool: divide by each window's count, then spread over the window (ones kernel)."""
    geo = _window(n, b)
    kernel = geo.kernel
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    div = _pool_divisor(xs[2:], ys[2:], geo)
    g = b.binary("Mul", gys[0], b.const(1.0 / div), ys)
    channels = xs[1]
    ones = b.const(np.ones((channels, 1, *kernel)))
    return [_scatter_window(b, g, ones, channels, n)]


def _lp_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """LpPool, y = (sum |x|^p)^(1/p) per window: dx = |x|^(p-1) sign(x) * scatter(g * y^(1-p))."""
    p = float(n.attr_int("p", 2))
    x, y = n.inputs[0], n.outputs[0]
    xs, ys = b.shape(x), b.shape(y)
    zero = b.scalar(0.0)
    safe = b.op("Where", b.op("Greater", y, zero), b.op("Pow", y, b.scalar(1.0 - p)), zero)  # y = 0: no slope
    g = b.binary("Mul", gys[0], safe, ys)
    spread = _scatter_window(b, g, b.const(np.ones((xs[1], 1, *_window(n, b).kernel))), xs[1], n)
    slope = b.op("Mul", b.op("Pow", b.op("Abs", x), b.scalar(p - 1.0)), b.op("Sign", x))
    return [b.binary("Mul", spread, slope, xs)]


def _global_average_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalAveragePool: the gradient spread evenly over every spatial position."""
    xs = b.shape(n.inputs[0])
    g = b.binary("Mul", gys[0], b.scalar(1.0 / math.prod(xs[2:])))
    out = b.op("Expand", g, b.ints(xs))
    b.shapes[out] = xs
    return [out]


def _reduce_axes(b: Builder, n: NodeView) -> list[int]:
    rank = len(b.shape(n.inputs[0]))
    axes = n.attr_ints("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1]:
        value = b.value(n.inputs[1])
        if value is None:
            raise UnsupportedOpError(n.name, n.node.op_type, "axes are not constant")
        axes = value.tolist()
    if axes is None or len(axes) == 0:
        if n.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _reduce_sum(b: Builder, n: NodeView, gys: list) -> Grads:
    """ReduceSum / ReduceMean: broadcast the gradient back over the reduced axes (/ count)."""
    xs = b.shape(n.inputs[0])
    axes = _reduce_axes(b, n)
    kept = [1 if i in axes else d for i, d in enumerate(xs)]
    g = b.reshape(gys[0], kept)
    if n.node.op_type == "ReduceMean":
        g = b.binary("Mul", g, b.scalar(1.0 / max(math.prod(xs[a] for a in axes), 1)))
    out = b.op("Expand", g, b.ints(xs))
    b.shapes[out] = xs
    return [out] + [None] * (len(n.inputs) - 1)


def _pad(b: Builder, n: NodeView, gys: list) -> Grads:
    """Pad: constant mode crops the gradient back with negated pads (and pads where Pad
    cropped); reflect/edge/wrap also add each border value's gradient onto the input position it
    copies (``_pad_copies``)."""
    mode = n.attr_str("mode", "constant")
    if mode != "constant" and mode not in COPYING_PADS:
        raise UnsupportedOpError(n.name, "Pad", f"mode '{mode}' has no VJP rule")
    xs = b.shape(n.inputs[0])
    rank = len(xs)
    pads = n.attr_ints("pads")
    if pads is None:
        value = b.value(n.inputs[1])
        if value is None:
            raise UnsupportedOpError(n.name, "Pad", "pads are not constant")
        pads = value.tolist()
    pads = list(pads)
    if len(n.inputs) > 3 and n.inputs[3]:  # axes input (opset 18)
        axes_value = b.value(n.inputs[3])
        if axes_value is None:
            raise UnsupportedOpError(n.name, "Pad", "axes are not constant")
        axes = [int(a) % rank for a in axes_value.tolist()]
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = full
    if mode != "constant":
        return [_pad_copies(b, gys[0], xs, pads, COPYING_PADS[mode])] + [None] * (len(n.inputs) - 1)
    out = b.op("Pad", gys[0], b.ints([-p for p in pads]))
    b.shapes[out] = xs
    return [out] + [None] * (len(n.inputs) - 1)


COPYING_PADS: dict[str, Literal["reflect", "edge", "wrap"]] = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad_copies(b: Builder, g: str, xs: Sequence[int], pads: Sequence[int],
                mode: Literal["reflect", "edge", "wrap"]) -> str:
    """Transpose of a reflect/edge/wrap Pad, one padded axis at a time: output position j copies
    input position src[j] (numpy's pad of the index range, the same modes as ONNX), so the
    gradient of position i is the sum over every j with src[j] = i (a 0/1 matrix per axis)."""
    rank = len(xs)
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before == 0 and after == 0:
            continue
        n_in = xs[axis]
        src = np.pad(np.arange(n_in), (max(before, 0), max(after, 0)), mode=mode)
        src = src[max(-before, 0): len(src) - max(-after, 0)]
        matrix = np.zeros((n_in, len(src)), dtype=helper.tensor_dtype_to_np_dtype(b.dtype))
        matrix[src, np.arange(len(src))] = 1
        g = b.along_axis(g, matrix, axis)
    return g


def _blocks_moved(b: Builder, g: str, moved: Sequence[int], perm: Sequence[int], xs: Sequence[int]) -> str:
    """Transpose of reshape(x, split) -> transpose(perm) -> reshape(y): the gradient reshaped to
    the transposed ``moved`` shape, put back by the inverse permutation, reshaped to x."""
    back = b.op("Transpose", b.reshape(g, moved), perm=[int(i) for i in np.argsort(perm)])
    b.shapes[back] = tuple(moved[i] for i in np.argsort(perm))
    return b.reshape(back, xs)


def _depth_to_space(b: Builder, n: NodeView, gys: list) -> Grads:
    """DepthToSpace (pixel shuffle, DCR or CRD order): a fixed permutation, so the gradient is
    permuted back (the forward as the ONNX spec writes it: reshape, transpose, reshape)."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    if n.attr_str("mode", "DCR") == "CRD":
        split, perm = (N, C // (bs * bs), bs, bs, H, W), (0, 1, 4, 2, 5, 3)
    else:
        split, perm = (N, bs, bs, C // (bs * bs), H, W), (0, 3, 4, 1, 5, 2)
    return [_blocks_moved(b, gys[0], [split[i] for i in perm], perm, xs)]


def _space_to_depth(b: Builder, n: NodeView, gys: list) -> Grads:
    """SpaceToDepth: the permutation of the ONNX spec (reshape, transpose, reshape), undone; blocks
    ordered depth-column-row (DCR, default) or, from opset 28, column-row-depth (CRD)."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    split = (N, C, H // bs, bs, W // bs, bs)
    perm = (0, 1, 3, 5, 2, 4) if n.attr_str("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    return [_blocks_moved(b, gys[0], [split[i] for i in perm], perm, xs)]


def _slice_indices(b: Builder, n: NodeView) -> dict[int, np.ndarray]:
    """Per sliced axis, the input positions the Slice keeps, in output order."""
    xs = b.shape(n.inputs[0])
    rank = len(xs)
    vals = [b.value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None for i in range(1, 5)]
    if vals[0] is None or vals[1] is None or (len(n.inputs) > 3 and n.inputs[3] and vals[2] is None) \
            or (len(n.inputs) > 4 and n.inputs[4] and vals[3] is None):
        raise UnsupportedOpError(n.name, "Slice", "starts/ends/axes/steps not constant")
    starts, ends = vals[0].tolist(), vals[1].tolist()
    axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
    steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    out: dict[int, np.ndarray] = {}
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % rank
        # slice.indices clamps as ONNX does; a range, not a re-slice: a backward stop of -1 means
        # "before index 0" there, but "the last index" to a slice
        out[ax] = np.array(range(*slice(int(st), int(en), int(sp)).indices(xs[ax])), dtype=np.int64)
    return out


def _slice(b: Builder, n: NodeView, gys: list) -> Grads:
    """Slice: zero-pad back for unit steps; other steps scatter through a 0/1 matrix per axis."""
    xs = b.shape(n.inputs[0])
    idx = _slice_indices(b, n)
    g = gys[0]
    rank = len(xs)
    if all(len(i) <= 1 or np.all(np.diff(i) == 1) for i in idx.values()):
        pads = [0] * (2 * rank)
        for ax, i in idx.items():
            if len(i) == 0:
                return [b.zeros(xs)] + [None] * (len(n.inputs) - 1)
            pads[ax], pads[ax + rank] = int(i[0]), int(xs[ax] - 1 - i[-1])
        out = b.op("Pad", g, b.ints(pads))
        b.shapes[out] = xs
        return [out] + [None] * (len(n.inputs) - 1)
    for ax, i in idx.items():
        m = np.zeros((xs[ax], len(i)))
        m[i, np.arange(len(i))] = 1.0
        g = b.along_axis(g, m, ax)
    return [g] + [None] * (len(n.inputs) - 1)


def _gather(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gather with constant indices: scatter-add through a 0/1 matrix on the gathered axis."""
    idx = b.value(n.inputs[1])
    if idx is None:
        raise UnsupportedOpError(n.name, "Gather", "indices are not constant")
    xs = b.shape(n.inputs[0])
    ax = n.attr_int("axis", 0) % len(xs)
    flat = idx.reshape(-1).astype(np.int64) % xs[ax]
    g = b.reshape(gys[0], xs[:ax] + (flat.size,) + xs[ax + 1:])
    m = np.zeros((xs[ax], flat.size))
    np.add.at(m, (flat, np.arange(flat.size)), 1.0)
    return [b.along_axis(g, m, ax), None]


def _concat(b: Builder, n: NodeView, gys: list) -> Grads:
    """Concat: split the gradient back into the operands' sizes."""
    shapes = [b.shape(x) for x in n.inputs]
    ax = n.attr_int("axis") % len(shapes[0])
    sizes = [s[ax] for s in shapes]
    parts = b.emit("Split", [gys[0], b.ints(sizes)], n_out=len(sizes), axis=ax)
    for p, s in zip(parts, shapes):
        b.shapes[p] = s
    return [p if b.is_active(x) else None for p, x in zip(parts, n.inputs)]


def _split(b: Builder, n: NodeView, gys: list) -> Grads:
    """Split: concatenate the outputs' gradients (zeros for outputs that receive none)."""
    xs = b.shape(n.inputs[0])
    ax = n.attr_int("axis", 0) % len(xs)
    parts = [g if g is not None else b.zeros(b.shape(y)) for g, y in zip(gys, n.outputs)]
    out = b.op("Concat", *parts, axis=ax)
    b.shapes[out] = xs
    return [out] + [None] * (len(n.inputs) - 1)


def _resize_matrix(n: NodeView, b: Builder, axis: int) -> np.ndarray:
    """The (out x in) matrix of a Resize along one axis, from ``geometry`` (the decoder the TRF
    rule uses): coordinates, nearest modes, clamped taps, the crop's roi."""
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    # ``prepare`` lifted the model to opset >= MIN_OPSET: Resize with roi, scales, sizes inputs
    roi, scales, sizes = (b.value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None for i in range(1, 4))
    scale = geometry.resize_scales("Resize", MIN_OPSET, n.attrs, scales, sizes, xs, ys, n.name)[axis]
    how = geometry.resampling("Resize", MIN_OPSET, n.attrs, n.name)
    window = (Fraction(0), Fraction(1))
    if how.coord == "tf_crop_and_resize":
        if roi is None:
            raise UnsupportedOpError(n.name, "Resize", "tf_crop_and_resize with a roi computed at run time")
        axes = [int(a) % len(xs) for a in n.attr_ints("axes") or range(len(xs))]
        if axis in axes:
            at, flat = axes.index(axis), np.asarray(roi, dtype=np.float64).reshape(-1)
            window = (Fraction(float(flat[at])), Fraction(float(flat[len(axes) + at])))
    return geometry.ResizeAxis(how, scale, xs[axis], ys[axis], window).matrix()


def _resize(b: Builder, n: NodeView, gys: list) -> Grads:
    """Resize (nearest, linear, cubic; separable): apply each resized axis's transposed matrix."""
    if n.attr("antialias", 0):
        raise UnsupportedOpError(n.name, "Resize", "antialias has no VJP rule")
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    g = gys[0]
    for ax in range(len(xs)):
        if xs[ax] != ys[ax] or ax >= 2:
            m = _resize_matrix(n, b, ax)
            if not (xs[ax] == ys[ax] and np.allclose(m, np.eye(xs[ax]))):
                g = b.along_axis(g, m.T, ax)
    if g == gys[0]:
        g = _set_shape(b, b.op("Identity", g), gys[0])
    return [g] + [None] * (len(n.inputs) - 1)


def _softmax(b: Builder, n: NodeView, gys: list) -> Grads:
    """Softmax (opset >= 13, one axis): y * (g - sum(g * y, axis)).  A row of -inf (fully masked
    attention) gives NaN and stays NaN under any finite change of the input: its derivative is 0,
    so NaN outputs count as 0 here (else the NaN spreads to every gradient a Where had masked)."""
    y, g = n.outputs[0], gys[0]
    ax = n.attr_int("axis", -1) % len(b.shape(y))
    y = b.op("Where", b.op("IsNaN", y), b.scalar(0.0), y)
    b.shapes[y] = b.shape(n.outputs[0])
    gy = b.binary("Mul", g, y)
    s = b.op("ReduceSum", gy, b.ints([ax]), keepdims=1)
    b.shapes[s] = tuple(1 if i == ax else d for i, d in enumerate(b.shape(y)))
    return [b.binary("Mul", y, b.binary("Sub", g, s), b.shape(y))]


def _log_softmax(b: Builder, n: NodeView, gys: list) -> Grads:
    """LogSoftmax (opset >= 13): g - exp(y) * sum(g, axis)."""
    y, g = n.outputs[0], gys[0]
    ax = n.attr_int("axis", -1) % len(b.shape(y))
    s = b.op("ReduceSum", g, b.ints([ax]), keepdims=1)
    b.shapes[s] = tuple(1 if i == ax else d for i, d in enumerate(b.shape(y)))
    e = _set_shape(b, b.op("Exp", y), y)
    return [b.binary("Sub", g, b.binary("Mul", e, s), b.shape(y))]


def _batch_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """BatchNormalization (inference): g * scale / sqrt(var + eps) per channel."""
    if n.attr("training_mode", 0):
        raise UnsupportedOpError(n.name, "BatchNormalization", "training_mode=1; export the model "
                                 "in eval mode")
    xs = b.shape(n.inputs[0])
    scale, var = b.value(n.inputs[1]), b.value(n.inputs[4])
    eps = n.attr_float("epsilon", 1e-5)
    bshape = [1, xs[1]] + [1] * (len(xs) - 2)
    if scale is not None and var is not None:
        factor = b.const((scale / np.sqrt(var.astype(np.float64) + eps)).reshape(bshape))
    else:
        factor = b.op("Div", n.inputs[1], b.op("Sqrt", b.op("Add", n.inputs[4], b.scalar(eps))))
        factor = b.op("Reshape", factor, b.ints(bshape))
    b.shapes[factor] = tuple(bshape)
    return [b.binary("Mul", gys[0], factor, xs)] + [None] * 4


def _lrn_window(channels: int, size: int) -> np.ndarray:
    """(C x C) 0/1 matrix of LRN's channel window: row c sums channels max(0, c - floor((size-1)/2))
    to min(C-1, c + ceil((size-1)/2)) (the ONNX spec; an even size reaches one more channel up)."""
    lo, hi = (size - 1) // 2, size // 2
    c = np.arange(channels)
    return ((c[None, :] >= c[:, None] - lo) & (c[None, :] <= c[:, None] + hi)).astype(np.float64)


def _lrn(b: Builder, n: NodeView, gys: list) -> Grads:
    """LRN y = x d^-beta, d = bias + alpha/size * M x^2 (M: channel window):
    gx = g d^-beta - 2 alpha beta / size * x * M^T (g y / d)."""
    x, y = n.inputs[0], n.outputs[0]
    xs = b.shape(x)
    size = n.attr_int("size")
    alpha, beta, bias = n.attr_float("alpha", 1e-4), n.attr_float("beta", 0.75), n.attr_float("bias", 1.0)
    window = _lrn_window(xs[1], size).astype(helper.tensor_dtype_to_np_dtype(b.dtype))
    square_sum = b.along_axis(b.binary("Mul", x, x, xs), window, 1)
    d = b.binary("Add", b.binary("Mul", square_sum, b.scalar(alpha / size), xs), b.scalar(bias), xs)
    direct = b.binary("Mul", gys[0], b.binary("Pow", d, b.scalar(-beta), xs), xs)
    spread = b.along_axis(b.binary("Div", b.binary("Mul", gys[0], y, xs), d, xs), window.T.copy(), 1)
    cross = b.binary("Mul", b.binary("Mul", x, spread, xs), b.scalar(2.0 * alpha * beta / size), xs)
    return [b.binary("Sub", direct, cross, xs)]


def _layer_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """LayerNormalization: (gh - mean(gh) - xhat mean(gh xhat)) * invstd with gh = g * gamma.

    Mean and InvStdDev come from the forward node's optional outputs (no recomputation).
    """
    x = n.inputs[0]
    xs = b.shape(x)
    ax = n.attr_int("axis", -1) % len(xs)
    while len(n.node.output) < 3:
        n.node.output.append("")
    for i, hint in ((1, "ln_mean"), (2, "ln_invstd")):
        if not n.node.output[i]:
            n.node.output[i] = b.fresh(hint)
    mean, inv = n.node.output[1], n.node.output[2]
    axes = list(range(ax, len(xs)))
    stat_shape = tuple(d if i < ax else 1 for i, d in enumerate(xs))
    b.shapes[mean] = b.shapes[inv] = stat_shape
    xhat = b.binary("Mul", b.binary("Sub", x, mean, xs), inv, xs)
    gh = b.binary("Mul", gys[0], n.inputs[1], xs)
    return [_standardised(b, gh, xhat, inv, axes)] + [None] * (len(n.inputs) - 1)


def _transpose_last2(b: Builder, t: str) -> str:
    """A tensor with its last two axes swapped (a constant is transposed at build time)."""
    v = b.value(t)
    if v is not None:
        out = b.const(np.ascontiguousarray(np.swapaxes(v, -1, -2)), dtype=v.dtype)
    else:
        rank = len(b.shape(t))
        out = b.op("Transpose", t, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    s = b.shape(t)
    b.shapes[out] = s[:-2] + (s[-1], s[-2])
    return out


def _matmul(b: Builder, n: NodeView, gys: list) -> Grads:
    """MatMul (numpy semantics): gA = g B^T, gB = A^T g, reduced over broadcast batch axes."""
    a, c = n.inputs
    sa, sc = b.shape(a), b.shape(c)
    g = gys[0]
    a2, c2 = a, c
    gshape = list(b.shape(n.outputs[0]))
    if len(sa) == 1:  # promote 1-D operands as numpy does
        a2 = b.reshape(a, (1, sa[0]))
        gshape.insert(len(gshape) - (0 if len(sc) == 1 else 1), 1)
    if len(sc) == 1:
        c2 = b.reshape(c, (sc[0], 1))
        gshape.append(1)
    g2 = b.reshape(g, gshape) if tuple(gshape) != b.shape(g) else g
    ga = gb = None
    if b.is_active(a):
        ga = b.binary("MatMul", g2, _transpose_last2(b, c2),
                      tuple(gshape[:-1]) + (b.shape(c2)[-2],))
        ga = b.reduce_to(ga, b.shape(a2))
        ga = b.reshape(ga, sa) if len(sa) == 1 else ga
    if b.is_active(c):
        gb = b.binary("MatMul", _transpose_last2(b, a2), g2,
                      tuple(gshape[:-2]) + (b.shape(a2)[-1], gshape[-1]))
        gb = b.reduce_to(gb, b.shape(c2))
        gb = b.reshape(gb, sc) if len(sc) == 1 else gb
    return [ga, gb]


def _gemm(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gemm: alpha g op(B)^T for A, alpha op(A)^T g for B (transposes folded in), beta g for C."""
    alpha, beta = n.attr_float("alpha", 1.0), n.attr_float("beta", 1.0)
    ta, tb = n.attr_int("transA", 0), n.attr_int("transB", 0)
    a, c = n.inputs[0], n.inputs[1]
    g = gys[0]
    out: Grads = [None] * len(n.inputs)
    if b.is_active(a):
        if not ta:
            ga = b.op("Gemm", g, c, alpha=alpha, transB=1 - tb)
        else:
            ga = b.op("Gemm", c, g, alpha=alpha, transA=tb, transB=1)
        b.shapes[ga] = b.shape(a)
        out[0] = ga
    if b.is_active(c):
        if not tb:
            gb = b.op("Gemm", a, g, alpha=alpha, transA=1 - ta)
        else:
            gb = b.op("Gemm", g, a, alpha=alpha, transA=1, transB=ta)
        b.shapes[gb] = b.shape(c)
        out[1] = gb
    if len(n.inputs) > 2 and b.is_active(n.inputs[2]):
        out[2] = b.reduce_to(b.binary("Mul", g, b.scalar(beta)), b.shape(n.inputs[2]))
    return out


def _einsum(b: Builder, n: NodeView, gys: list) -> Grads:
    """Einsum: each operand's gradient is the einsum of the output gradient with the other
    operands, back to the operand's letters (each of them must appear in the output or in
    another operand: a letter summed within one operand alone would need a broadcast)."""
    from .ops import einsum_terms

    parsed = einsum_terms(n.attr_str("equation", ""), [len(b.shape(i)) for i in n.inputs])
    if parsed is None:
        raise UnsupportedOpError(n.name, "Einsum", "an equation with an ellipsis or a repeated letter")
    terms, out = parsed
    grads: list[str | None] = []
    for k, (name, term) in enumerate(zip(n.inputs, terms)):
        if not b.is_active(name):
            grads.append(None)
            continue
        others = [(inp, t) for j, (inp, t) in enumerate(zip(n.inputs, terms)) if j != k]
        if set(term) - set(out) - {c for _, t in others for c in t}:
            raise UnsupportedOpError(n.name, "Einsum", f"operand {k} sums a letter no other term has")
        eq = ",".join([out] + [t for _, t in others]) + "->" + term
        g = b.op("Einsum", gys[0], *[inp for inp, _ in others], equation=eq)
        b.shapes[g] = b.shape(name)
        grads.append(g)
    return grads


def _where(b: Builder, n: NodeView, gys: list) -> Grads:
    """Where(cond, A, B): the gradient goes to A where cond holds, to B elsewhere."""
    cond, a, c = n.inputs
    g = gys[0]
    ga = b.reduce_to(b.where(cond, g), b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        gb_full = b.op("Where", cond, b.scalar(0.0), g)
        b.shapes[gb_full] = b.shape(g)
        gb = b.reduce_to(gb_full, b.shape(c))
    return [None, ga, gb]


# --------------------------------------------------------------------------------------------
# Rules added for coverage (issue 13): elementwise math, Max/Min/Mod, the other reductions,
# global max/Lp pooling, LpPool, GridSample, instance/group/mean-variance/Lp normalisation,
# quantisation.
# Conventions at kinks and ties follow torch's derivatives.yaml (named in each rule).
# --------------------------------------------------------------------------------------------

def _square(b: Builder, t: str) -> str:
    return b.op("Mul", t, t)


def _one_plus(b: Builder, t: str, sign: float = 1.0) -> str:
    """1 + sign * t."""
    return b.op("Add", b.scalar(1.0), b.op("Mul", t, b.scalar(sign)))


def _mish_derivative(b: Builder, x: str) -> str:
    """d/dx x tanh(softplus(x)) = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))."""
    t = b.op("Tanh", b.op("Softplus", x))
    return b.op("Add", t, b.op("Mul", b.op("Mul", x, b.op("Sigmoid", x)), _one_plus(b, _square(b, t), -1.0)))


def _swish_derivative(b: Builder, x: str, alpha: float) -> str:
    """d/dx x sigmoid(alpha x) = s (1 + alpha x (1 - s)), s = sigmoid(alpha x)."""
    s = b.op("Sigmoid", b.op("Mul", x, b.scalar(alpha)))
    return b.op("Mul", s, _one_plus(b, b.op("Mul", b.op("Mul", x, b.scalar(alpha)), _one_plus(b, s, -1.0))))


def _negative_branch(b: Builder, x: str, positive: float, negative: str) -> str:
    """``positive`` for x > 0, ``negative`` for x <= 0 (torch's ELU family takes x = 0 as negative)."""
    return b.op("Where", b.op("Greater", x, b.scalar(0.0)), b.scalar(positive), negative)


def _selu_derivative(b: Builder, n: NodeView, x: str, y: str) -> str:
    """Selu, gamma (x or alpha (e^x - 1)): gamma for x > 0, y + gamma alpha otherwise."""
    gamma, alpha = n.attr_float("gamma", 1.05070102214813232421875), n.attr_float("alpha", 1.67326319217681884765625)
    return _negative_branch(b, x, gamma, b.op("Add", y, b.scalar(gamma * alpha)))


# d f(x) / dx of each unary op, from x, y = f(x) and the node's attributes (ONNX defaults).
Derivative = Callable[[Builder, NodeView, str, str], str]
DERIVATIVES: dict[str, Derivative] = {
    "Abs": lambda b, n, x, y: b.op("Sign", x),  # torch: sgn(x), 0 at 0
    "Log": lambda b, n, x, y: b.op("Reciprocal", x),
    "Reciprocal": lambda b, n, x, y: b.op("Neg", _square(b, y)),
    "Sin": lambda b, n, x, y: b.op("Cos", x),
    "Cos": lambda b, n, x, y: b.op("Neg", b.op("Sin", x)),
    "Tan": lambda b, n, x, y: _one_plus(b, _square(b, y)),
    "Asin": lambda b, n, x, y: b.op("Reciprocal", b.op("Sqrt", _one_plus(b, _square(b, x), -1.0))),
    "Acos": lambda b, n, x, y: b.op("Neg", b.op("Reciprocal", b.op("Sqrt", _one_plus(b, _square(b, x), -1.0)))),
    "Atan": lambda b, n, x, y: b.op("Reciprocal", _one_plus(b, _square(b, x))),
    "Sinh": lambda b, n, x, y: b.op("Cosh", x),
    "Cosh": lambda b, n, x, y: b.op("Sinh", x),
    "Asinh": lambda b, n, x, y: b.op("Reciprocal", b.op("Sqrt", _one_plus(b, _square(b, x)))),
    "Acosh": lambda b, n, x, y: b.op("Reciprocal", b.op("Sqrt", b.op("Sub", _square(b, x), b.scalar(1.0)))),
    "Atanh": lambda b, n, x, y: b.op("Reciprocal", _one_plus(b, _square(b, x), -1.0)),
    "Softplus": lambda b, n, x, y: b.op("Sigmoid", x),
    "Softsign": lambda b, n, x, y: b.op("Reciprocal", _square(b, _one_plus(b, b.op("Abs", x)))),
    "Mish": lambda b, n, x, y: _mish_derivative(b, x),
    "Swish": lambda b, n, x, y: _swish_derivative(b, x, n.attr_float("alpha", 1.0)),
    # ELU family: the negative branch's derivative written with y (alpha e^x = y + alpha)
    "Elu": lambda b, n, x, y: _negative_branch(b, x, 1.0, b.op("Add", y, b.scalar(n.attr_float("alpha", 1.0)))),
    "Selu": _selu_derivative,
    "Celu": lambda b, n, x, y: _negative_branch(
        b, x, 1.0, b.op("Exp", b.op("Mul", x, b.scalar(1.0 / n.attr_float("alpha", 1.0))))),
    # 0/1 derivatives: torch's threshold / hardshrink put the boundary on the zero side
    "ThresholdedRelu": lambda b, n, x, y: b.op("Cast", b.op("Greater", x, b.scalar(n.attr_float("alpha", 1.0))),
                                               to=b.dtype),
    "Shrink": lambda b, n, x, y: b.op("Cast", b.op("Greater", b.op("Abs", x), b.scalar(n.attr_float("lambd", 0.5))),
                                      to=b.dtype),
}


def _elementwise(b: Builder, n: NodeView, gys: list) -> Grads:
    """A unary elementwise op (``DERIVATIVES``): g * f'(x)."""
    x = n.inputs[0]
    d = DERIVATIVES[n.node.op_type](b, n, x, n.outputs[0])
    return [b.binary("Mul", gys[0], d, b.shape(x))]


def _extreme(b: Builder, n: NodeView, gys: list) -> Grads:
    """Max / Min (variadic, broadcasting): the operands equal to the result share the gradient
    evenly (torch.maximum / minimum split a tie in halves), each reduced to its shape."""
    y, g = n.outputs[0], gys[0]
    masks = [b.op("Cast", b.op("Equal", x, y), to=b.dtype) for x in n.inputs]
    count = b.op("Sum", *masks) if len(masks) > 1 else masks[0]
    share = b.binary("Div", g, count, b.shape(y))
    return [b.reduce_to(b.binary("Mul", share, m, b.shape(y)), b.shape(x)) if b.is_active(x) else None
            for x, m in zip(n.inputs, masks)]


def _mod(b: Builder, n: NodeView, gys: list) -> Grads:
    """Mod on floats, y = a - b q with q = trunc(a / b) (fmod=1) or floor: g for A, -g q for B
    (torch.fmod / remainder); q is read back as round((a - y) / b)."""
    a, c = n.inputs
    g = gys[0]
    ga = b.reduce_to(g, b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        q = b.op("Round", b.op("Div", b.op("Sub", a, n.outputs[0]), c))
        gb = b.reduce_to(b.binary("Mul", g, b.op("Neg", q), b.shape(g)), b.shape(c))
    return [ga, gb]


def _sum_kept(b: Builder, n: NodeView, t: str) -> str:
    """ReduceSum of ``t`` over the axes the forward reduction ``n`` reduces, dims kept."""
    return b.op("ReduceSum", t, b.ints(_reduce_axes(b, n)), keepdims=1)


def _again_kept(b: Builder, n: NodeView, t: str) -> str:
    """The forward reduction ``n`` applied to ``t``, dims kept (its axes written as ``n`` writes
    them: an attribute before opset 18, an input after)."""
    attrs: dict[str, Any] = {k: v for k, v in n.attrs.items() if k != "keepdims"}
    return b.emit(n.node.op_type, [t] + n.inputs[1:], keepdims=1, **attrs)[0]


def _max_derivative(b: Builder, n: NodeView, x: str, y: str) -> str:
    """ReduceMax / ReduceMin: 1 / (number of ties) at the extreme, 0 elsewhere (torch.amax/amin)."""
    mask = b.op("Cast", b.op("Equal", x, y), to=b.dtype)
    return b.op("Div", mask, _sum_kept(b, n, mask))


def _prod_derivative(b: Builder, n: NodeView, x: str, y: str) -> str:
    """ReduceProd: the product of the other elements (y / x off zeros; at a zero, the product of
    the non-zeros if it is the only zero, else 0: torch's prod_backward)."""
    zero = b.op("Equal", x, b.scalar(0.0))
    safe = b.op("Where", zero, b.scalar(1.0), x)
    zeros = _sum_kept(b, n, b.op("Cast", zero, to=b.dtype))
    at_zero = b.op("Mul", _again_kept(b, n, safe),
                   b.op("Cast", b.op("Equal", zeros, b.scalar(1.0)), to=b.dtype))
    return b.op("Where", zero, at_zero, b.op("Div", y, safe))


def _lp_derivative(b: Builder, x: str, y: str, p: float) -> str:
    """d/dx of y = (sum |x|^p)^(1/p): |x|^(p-1) sign(x) y^(1-p), 0 where y = 0 (torch's norm)."""
    per_x = b.op("Mul", b.op("Pow", b.op("Abs", x), b.scalar(p - 1.0)), b.op("Sign", x))
    per_y = b.op("Where", b.op("Greater", y, b.scalar(0.0)), b.op("Pow", y, b.scalar(1.0 - p)), b.scalar(0.0))
    return b.op("Mul", per_x, per_y)


REDUCTION_DERIVATIVES: dict[str, Derivative] = {
    "ReduceMax": _max_derivative, "ReduceMin": _max_derivative,
    "ReduceProd": _prod_derivative,
    "ReduceL1": lambda b, n, x, y: b.op("Sign", x),
    "ReduceL2": lambda b, n, x, y: _lp_derivative(b, x, y, 2.0),
    "ReduceSumSquare": lambda b, n, x, y: b.op("Mul", x, b.scalar(2.0)),
    "ReduceLogSumExp": lambda b, n, x, y: b.op("Exp", b.op("Sub", x, y)),
    "ReduceLogSum": lambda b, n, x, y: b.op("Expand", b.op("Exp", b.op("Neg", y)), b.ints(b.shape(x))),
}


def _reduction(b: Builder, n: NodeView, gys: list) -> Grads:
    """The reductions of ``REDUCTION_DERIVATIVES``: g, broadcast back over the reduced axes,
    times dy/dx (y read with its reduced axes kept)."""
    x = n.inputs[0]
    xs = b.shape(x)
    axes = _reduce_axes(b, n)
    if not axes:
        raise UnsupportedOpError(n.name, n.node.op_type, "noop_with_empty_axes with no axes")
    kept = [1 if i in axes else d for i, d in enumerate(xs)]
    d = REDUCTION_DERIVATIVES[n.node.op_type](b, n, x, b.reshape(n.outputs[0], kept))
    return [b.binary("Mul", b.reshape(gys[0], kept), d, xs)] + [None] * (len(n.inputs) - 1)


def _global_max_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalMaxPool: each channel's gradient to its first maximum (MaxPool's indices, torch's
    adaptive_max_pool, which the exporter writes as GlobalMaxPool)."""
    x = n.inputs[0]
    xs = b.shape(x)
    flat = (xs[0], xs[1], math.prod(xs[2:]))
    first = b.op("ArgMax", b.reshape(x, flat), axis=2, keepdims=1)
    out = b.op("ScatterElements", b.zeros(flat), first, b.reshape(gys[0], flat[:2] + (1,)), axis=2)
    b.shapes[out] = flat
    return [b.reshape(out, xs)]


def _global_lp_pool(b: Builder, n: NodeView, gys: list) -> Grads:
    """GlobalLpPool, y = (sum over space |x|^p)^(1/p): g |x|^(p-1) sign(x) y^(1-p)."""
    x = n.inputs[0]
    d = _lp_derivative(b, x, n.outputs[0], float(n.attr_int("p", 2)))
    return [b.binary("Mul", gys[0], d, b.shape(x))]


def _unnormalised(b: Builder, grid: str, coord: int, size: int, align_corners: bool) -> str:
    """GridSample's pixel coordinate along one axis from the grid's ``coord`` component in [-1, 1]:
    (g + 1) / 2 (size - 1) with align_corners, ((g + 1) size - 1) / 2 without."""
    g = b.op("Squeeze", b.op("Gather", grid, b.ints([coord]), axis=-1), b.ints([-1]))
    if align_corners:
        return b.op("Mul", b.op("Add", g, b.scalar(1.0)), b.scalar((size - 1) / 2))
    return b.op("Sub", b.op("Mul", b.op("Add", g, b.scalar(1.0)), b.scalar(size / 2)), b.scalar(0.5))


def _grid_taps(b: Builder, ix: str, iy: str, linear: bool) -> list[tuple[str, str, str | None]]:
    """The (x, y, weight) of the pixels one output reads: the nearest (round half to even, weight
    1) or the four bilinear neighbours."""
    if not linear:
        return [(b.op("Round", ix), b.op("Round", iy), None)]
    x0, y0 = b.op("Floor", ix), b.op("Floor", iy)
    fx, fy = b.op("Sub", ix, x0), b.op("Sub", iy, y0)
    gx, gy = _one_plus(b, fx, -1.0), _one_plus(b, fy, -1.0)
    x1, y1 = b.op("Add", x0, b.scalar(1.0)), b.op("Add", y0, b.scalar(1.0))
    return [(x0, y0, b.op("Mul", gx, gy)), (x1, y0, b.op("Mul", fx, gy)),
            (x0, y1, b.op("Mul", gx, fy)), (x1, y1, b.op("Mul", fx, fy))]


def _grid_sample(b: Builder, n: NodeView, gys: list) -> Grads:
    """GridSample (4-D, linear or nearest, zeros or border padding), gradient to the image: each
    output's gradient scattered onto the pixels it reads, with their bilinear weights (read from
    the grid at run time); a pixel outside the image reads 0 (zeros) or the clamped border pixel."""
    x, grid = n.inputs[0], n.inputs[1]
    xs = b.shape(x)
    mode = n.attr_str("mode", "linear")
    padding = n.attr_str("padding_mode", "zeros")
    if len(xs) != 4 or mode not in ("linear", "bilinear", "nearest") or padding not in ("zeros", "border"):
        raise UnsupportedOpError(n.name, "GridSample", f"{len(xs) - 2}-D, mode '{mode}', padding '{padding}' "
                                 "(rules: 2-D, linear or nearest, zeros or border padding)")
    if b.is_active(grid):
        raise UnsupportedOpError(n.name, "GridSample", "a grid computed from the input (the gradient "
                                 "to the grid is not written)")
    (batch, channels, h, w), outs = xs, math.prod(b.shape(n.outputs[0])[2:])
    align = bool(n.attr_int("align_corners", 0))
    ix, iy = _unnormalised(b, grid, 0, w, align), _unnormalised(b, grid, 1, h, align)
    indices, updates = [], []
    g = b.op("Reshape", gys[0], b.ints([batch, channels, outs]))
    for px, py, weight in _grid_taps(b, ix, iy, mode != "nearest"):
        cx = b.op("Clip", px, b.scalar(0.0), b.scalar(w - 1.0))
        cy = b.op("Clip", py, b.scalar(0.0), b.scalar(h - 1.0))
        if padding == "zeros":  # a tap outside the image reads 0: its weight is 0
            inside = b.op("Cast", b.op("And", b.op("Equal", px, cx), b.op("Equal", py, cy)), to=b.dtype)
            weight = inside if weight is None else b.op("Mul", weight, inside)
        flat = b.op("Cast", b.op("Add", b.op("Mul", cy, b.scalar(float(w))), cx), to=TensorProto.INT64)
        indices.append(b.op("Expand", b.op("Reshape", flat, b.ints([batch, 1, outs])),
                            b.ints([batch, channels, outs])))
        updates.append(g if weight is None else b.op("Mul", g, b.op("Reshape", weight, b.ints([batch, 1, outs]))))
    scattered = b.op("ScatterElements", b.zeros([batch, channels, h * w]), b.op("Concat", *indices, axis=2),
                     b.op("Concat", *updates, axis=2), axis=2, reduction="add")
    b.shapes[scattered] = (batch, channels, h * w)
    return [b.reshape(scattered, xs), None]


def _standardised(b: Builder, gh: str, xhat: str, inv: str, axes: Sequence[int]) -> str:
    """The gradient through xhat = (x - mean) * invstd over ``axes`` (statistics of x itself):
    (gh - mean(gh) - xhat mean(gh xhat)) * invstd, gh the gradient reaching xhat."""
    xs = b.shape(gh)
    count = b.scalar(1.0 / math.prod(xs[a] for a in axes))
    m1 = b.op("Mul", b.op("ReduceSum", gh, b.ints(axes), keepdims=1), count)
    m2 = b.op("Mul", b.op("ReduceSum", b.binary("Mul", gh, xhat, xs), b.ints(axes), keepdims=1), count)
    b.shapes[m1] = b.shapes[m2] = tuple(1 if i in axes else d for i, d in enumerate(xs))
    inner = b.binary("Sub", b.binary("Sub", gh, m1, xs), b.binary("Mul", xhat, m2, xs), xs)
    return b.binary("Mul", inner, inv, xs)


def _moments(b: Builder, x: str, axes: Sequence[int], eps: float, eps_on_std: bool = False) -> tuple[str, str]:
    """(xhat, invstd) of ``x`` over ``axes``: 1 / sqrt(var + eps), or 1 / (sqrt(var) + eps)."""
    xs = b.shape(x)
    count = b.scalar(1.0 / math.prod(xs[a] for a in axes))
    centred = b.op("Sub", x, b.op("Mul", b.op("ReduceSum", x, b.ints(axes), keepdims=1), count))
    var = b.op("Mul", b.op("ReduceSum", _square(b, centred), b.ints(axes), keepdims=1), count)
    if eps_on_std:
        inv = b.op("Reciprocal", b.op("Add", b.op("Sqrt", var), b.scalar(eps)))
    else:
        inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(eps))))
    b.shapes[inv] = tuple(1 if i in axes else d for i, d in enumerate(xs))
    return b.binary("Mul", centred, inv, xs), inv


def _channel_scaled(b: Builder, g: str, scale: str, channels: int) -> str:
    """g times a per-channel (axis 1) scale of length ``channels``."""
    xs = b.shape(g)
    s = b.reshape(scale, [1, channels] + [1] * (len(xs) - 2))
    return b.binary("Mul", g, s, xs)


def _instance_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """InstanceNormalization: per (sample, channel) standardisation over space, then scale."""
    x = n.inputs[0]
    xs = b.shape(x)
    axes = list(range(2, len(xs)))
    xhat, inv = _moments(b, x, axes, n.attr_float("epsilon", 1e-5))
    gh = _channel_scaled(b, gys[0], n.inputs[1], xs[1])
    return [_standardised(b, gh, xhat, inv, axes), None, None]


def _group_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """GroupNormalization: standardisation over each group of channels and space, then a
    per-channel scale (opset 21; opset 18's per-group scale is repeated over its channels)."""
    x = n.inputs[0]
    xs = b.shape(x)
    groups = n.attr_int("num_groups")
    scale = n.inputs[1]
    if b.shape(scale)[0] != xs[1]:  # opset 18: one scale per group
        scale = b.reshape(b.op("Expand", b.reshape(scale, (groups, 1)), b.ints([groups, xs[1] // groups])),
                          (xs[1],))
    gh = _channel_scaled(b, gys[0], scale, xs[1])
    grouped = (xs[0], groups, math.prod(xs[1:]) // groups)
    xhat, inv = _moments(b, b.reshape(x, grouped), [2], n.attr_float("epsilon", 1e-5))
    return [b.reshape(_standardised(b, b.reshape(gh, grouped), xhat, inv, [2]), xs), None, None]


def _mean_variance_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """MeanVarianceNormalization, (x - mean) / (std + 1e-9) over ``axes`` (the spec's function
    body; the 1e-9 is dropped from one term, a relative change of 1e-9 / std)."""
    x = n.inputs[0]
    rank = len(b.shape(x))
    axes = sorted(a % rank for a in (n.attr_ints("axes") or [0, 2, 3]))
    xhat, inv = _moments(b, x, axes, 1e-9, eps_on_std=True)
    return [_standardised(b, gys[0], xhat, inv, axes)]


def _lp_norm(b: Builder, n: NodeView, gys: list) -> Grads:
    """LpNormalization y = x / ||x||_p along ``axis`` (p = 1 or 2): (g - w sum(g y)) / ||x||_p,
    with w = y for p = 2 and sign(x) for p = 1."""
    x, y, g = n.inputs[0], n.outputs[0], gys[0]
    xs = b.shape(x)
    axis = n.attr_int("axis", -1) % len(xs)
    p = n.attr_int("p", 2)
    if p not in (1, 2):
        raise n.invalid(f"p is {p}, expected 1 or 2")
    if p == 2:
        norm, w = b.op("Sqrt", b.op("ReduceSum", _square(b, x), b.ints([axis]), keepdims=1)), y
    else:
        norm, w = b.op("ReduceSum", b.op("Abs", x), b.ints([axis]), keepdims=1), b.op("Sign", x)
    dot = b.op("ReduceSum", b.binary("Mul", g, y, xs), b.ints([axis]), keepdims=1)
    return [b.binary("Div", b.binary("Sub", g, b.op("Mul", w, dot), xs), norm, xs)]


def _quantized(b: Builder, n: NodeView, gys: list) -> Grads:
    """Quantizers and what reads their integers (DequantizeLinear is affine, but its input, when
    it depends on the model input, comes from a quantizer): the output is a step function of the
    input (rounding), whose gradient is 0 almost everywhere, so refused (a zero ERF would mislead)."""
    raise UnsupportedOpError(n.name, n.node.op_type, "quantized: the output is a step function of the "
                             "input (rounding), so its gradient is 0 almost everywhere and a gradient ERF "
                             "would be empty")


# Quantized ops: their integer outputs stay active (``active_tensors``), so that a path from the
# input through a quantizer reaches ``_quantized`` and is refused, instead of silently dropped.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                           "QLinearConv", "QLinearMatMul"})


VJP_RULES: dict[str, Rule] = {
    "Identity": _identity, "Dropout": _identity, "Cast": _identity,
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Transpose": _transpose,
    "Relu": _relu, "LeakyRelu": _leaky_relu, "PRelu": _prelu, "Clip": _clip,
    "Sigmoid": _sigmoid, "Tanh": _tanh, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish,
    "Erf": _erf, "Gelu": _gelu, "Exp": _exp, "Neg": _neg, "Sqrt": _sqrt, "Pow": _pow,
    "Add": _add, "Sum": _add, "Mean": _mean, "Sub": _sub, "Mul": _mul, "Div": _div,
    "Expand": _expand, "Where": _where,
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool, "TopK": _top_k, "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool, "LpPool": _lp_pool,
    "ReduceSum": _reduce_sum, "ReduceMean": _reduce_sum,
    "Pad": _pad, "Slice": _slice, "Gather": _gather, "Concat": _concat, "Split": _split,
    "Resize": _resize, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "Softmax": _softmax, "LogSoftmax": _log_softmax,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "LRN": _lrn,
    "MatMul": _matmul, "Gemm": _gemm, "Einsum": _einsum,
    # coverage (issue 13): the rules of the section above
    **dict.fromkeys(DERIVATIVES, _elementwise), **dict.fromkeys(REDUCTION_DERIVATIVES, _reduction),
    "Max": _extreme, "Min": _extreme, "Mod": _mod, "CastLike": _identity,
    "GlobalMaxPool": _global_max_pool, "GlobalLpPool": _global_lp_pool,
    "InstanceNormalization": _instance_norm, "GroupNormalization": _group_norm,
    "MeanVarianceNormalization": _mean_variance_norm, "LpNormalization": _lp_norm,
    "GridSample": _grid_sample,
    "DequantizeLinear": _quantized, **dict.fromkeys(QUANTIZED_OPS, _quantized),
}


# --------------------------------------------------------------------------------------------
# Graph analysis: static shapes, constants, the active set, the nodes to back-propagate through.
# --------------------------------------------------------------------------------------------

def prepare(model: onnx.ModelProto, input_shape: Sequence[int] | None = None,
            input_name: str | None = None) -> onnx.ModelProto:
    """A copy of ``model`` at opset >= 17 with the input's shape fixed (``input_shape``)."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    opset = next((o.version for o in model_copy.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        from onnx import version_converter
        try:
            model_copy = version_converter.convert_version(model_copy, MIN_OPSET)
        except Exception as exc:  # the converter raises its own untyped errors
            raise RFGraphError(f"the gradient graph needs opset {MIN_OPSET}; onnx's version converter "
                               f"cannot convert this opset-{opset} model: {exc}".splitlines()[0]) from exc
    del model_copy.graph.value_info[:]  # stale shapes (e.g. at another batch) would conflict
    for out in model_copy.graph.output:
        out.type.tensor_type.ClearField("shape")
    inits = {i.name for i in model_copy.graph.initializer}
    inputs = [i for i in model_copy.graph.input if i.name not in inits]
    target = next((i for i in inputs if i.name == input_name), inputs[0]) if input_name else inputs[0]
    dims = target.type.tensor_type.shape.dim
    if input_shape is not None:
        if len(input_shape) != len(dims):
            raise VJPError(f"input shape {tuple(input_shape)} has rank {len(input_shape)}, the "
                           f"model's input '{target.name}' has rank {len(dims)}")
        _rebatch_reshapes(model_copy, target.name, dims, input_shape)
        for d, v in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(v)
    elif any(not d.HasField("dim_value") for d in dims):
        raise DynamicShapeError(f"input '{target.name}' has unknown dimensions; give an input "
                                "shape (e.g. --input-shape 1,3,224,224)")
    return model_copy


def _rebatch_reshapes(model: onnx.ModelProto, input_name: str, dims: object,
                      new_shape: Sequence[int]) -> None:
    """Make Reshape targets that hard-code the traced batch copy the batch instead (``0``).

    torch's tracer bakes the batch into Reshape constants; rewriting a leading 1 to 0 keeps the
    model identical at batch 1 and lets one run carry several inputs.  Callers verify the batched
    result numerically (``erf`` does), since the rewrite assumes axis 0 is the batch.
    """
    old = [d.dim_value if d.HasField("dim_value") else None for d in dims]  # type: ignore[attr-defined]
    if not old or old[0] != 1 or new_shape[0] == 1:
        return
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        arr = numpy_helper.to_array(inits[node.input[1]]).copy()
        if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
            arr[0] = 0
            new_name = node.input[1] + "/rfgraph_batch"
            if new_name not in inits:
                t = numpy_helper.from_array(arr, new_name)
                model.graph.initializer.append(t)
                inits[new_name] = t
            node.input[1] = new_name


def tensor_shapes(model: onnx.ModelProto, input_name: str) -> tuple[dict[str, tuple[int, ...]],
                                                                    dict[str, int]]:
    """Static shape and element type of every tensor: ONNX shape inference, completed by one
    onnxruntime run (zeros input) for tensors inference leaves symbolic."""
    stash = _strip_weights(model)  # inference copies the model: leave the big weights out
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise VJPError(f"shape inference failed at the fixed input shape: {exc}") from exc
    finally:
        _restore_weights(model, stash)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for vi in vis:
        tt = vi.type.tensor_type
        dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    _window_output_shapes(model, shapes)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        try:
            shapes.update(measure_shapes(model, missing, dtypes))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's load/run errors have no common base
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VJPError(f"onnxruntime could not run the model to measure its tensor shapes: {why}; "
                           f"{FD_HINT}") from None
        _window_output_shapes(model, shapes)
    return shapes, dtypes


def _window_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Output shapes of window ops by the spec (``geometry.output_sizes``), where ONNX shape
    inference departs from it or gives up; an invalid node is refused here, naming it."""
    for node in model.graph.node:
        if node.op_type not in geometry.WINDOW_OPS:
            continue
        x, y = node.input[0], node.output[0]
        w = shapes.get(node.input[1], ()) if len(node.input) > 1 and node.op_type != "MaxPool" else ()
        if x not in shapes or ("Conv" in node.op_type and not w):
            continue
        if w and len(w) != len(shapes[x]):
            raise InvalidAttributeError(f"node '{node.name or node.op_type}' ({node.op_type}): weight of rank "
                                        f"{len(w)} for an input of rank {len(shapes[x])}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", w[2:]))
        if len(kernel) != len(shapes[x]) - 2:
            continue
        sizes = geometry.output_sizes(node.op_type, node.name or node.op_type, attrs, kernel, shapes[x][2:])
        channels = {"Conv": w[:1], "ConvTranspose": (w[1] * int(attrs.get("group", 1)),) if w else ()}
        shapes[y] = (shapes[x][0], *channels.get(node.op_type, shapes[x][1:2]), *sizes)


def _strip_weights(model: onnx.ModelProto) -> dict[int, bytes]:
    """Temporarily drop the raw data of big float initializers (dims and type are kept)."""
    stash = {}
    for i, init in enumerate(model.graph.initializer):
        if init.data_type in FLOAT_TYPES and init.HasField("raw_data") \
                and math.prod(init.dims) > BIG_WEIGHT:
            stash[i] = init.raw_data
            init.ClearField("raw_data")
    return stash


def _restore_weights(model: onnx.ModelProto, stash: dict[int, bytes]) -> None:
    for i, raw in stash.items():
        model.graph.initializer[i].raw_data = raw


def _input_independent(model: onnx.ModelProto, name: str, active: set[str],
                       dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """Evaluate ``name`` and every integer tensor not depending on the input's values (shape
    arithmetic) in one onnxruntime run on a zero input; {} if it cannot be evaluated."""
    import onnxruntime as ort

    produced = [o for n in model.graph.node for o in n.output if o]
    wanted = [o for o in produced if o not in active and (
        o == name or dtypes.get(o) in (TensorProto.INT64, TensorProto.INT32))]
    if name not in wanted:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for o in wanted:
        probe.graph.output.append(helper.make_tensor_value_info(o, dtypes.get(o) or
                                                                TensorProto.FLOAT, None))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                  helper.tensor_dtype_to_np_dtype(dtypes.get(i.name, 1)))
                 for i in sess.get_inputs()}
        return dict(zip(wanted, sess.run(wanted, feeds)))
    except Exception:  # noqa: BLE001 - ORT errors: the rule reports the missing constant
        return {}


def constants(model: onnx.ModelProto, with_initializers: bool = True) -> dict[str, np.ndarray]:
    """Values of Constant-node outputs (and of initializers unless told not to)."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer} \
        if with_initializers else {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int") or attr.name in ("value_floats", "value_ints"):
                out[node.output[0]] = np.array(helper.get_attribute_value(attr))
    return out


def active_tensors(model: onnx.ModelProto, input_name: str, dtypes: dict[str, int]) -> set[str]:
    """Tensors that depend differentiably on the input (float-typed, not through index ops)."""
    active = {input_name}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in NON_DIFFERENTIABLE or not any(i in active for i in node.input if i):
            continue
        for i, out in enumerate(node.output):
            if INDEX_OUTPUTS.get(node.op_type) == i:
                continue
            if out and (dtypes.get(out, TensorProto.FLOAT) in FLOAT_TYPES
                        or _on_quantized_path(node, active, dtypes)):
                active.add(out)
    return active


def _on_quantized_path(node: onnx.NodeProto, active: set[str], dtypes: dict[str, int]) -> bool:
    """An integer output that still carries the input: a quantized op's (``QUANTIZED_OPS``) or
    one computed from an active integer tensor (a quantized value moved by Reshape, MaxPool...)."""
    return node.op_type in QUANTIZED_OPS or any(
        i in active and dtypes.get(i, TensorProto.FLOAT) not in FLOAT_TYPES for i in node.input if i)


def ancestors(model: onnx.ModelProto, target: str) -> list[onnx.NodeProto]:
    """The nodes ``target`` depends on, in graph (topological) order."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    needed: set[int] = set()
    stack = [target]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors implicitly
            if attr.type == onnx.AttributeProto.GRAPH:
                stack.extend(i for n in attr.g.node for i in n.input if i)
    return [n for n in model.graph.node if id(n) in needed]


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VJPGraph:
    """A built gradient graph: feed ``input_name`` and ``seed_name``; ``grad_name`` is d(seed.y)/dx;
    ``output_name`` (the forward value of y) is also an output."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    seed_name: str
    grad_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: np.dtype


def build_vjp(model: onnx.ModelProto, output: str | None = None,
              input_shape: Sequence[int] | None = None, input_name: str | None = None,
              emit_output: bool = False) -> VJPGraph:
    """Build the ONNX graph of ``d(seed . y)/dx`` (forward and backward in one graph).

    ``output`` defaults to the first graph output; ``input_shape`` fixes the input (batch included);
    ``emit_output`` also returns y (otherwise onnxruntime prunes what only y needed).
    """
    model = prepare(model, input_shape, input_name)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    x_name = input_name or next(i.name for i in graph.input if i.name not in inits)
    y_name = output or graph.output[0].name
    shapes, dtypes = tensor_shapes(model, x_name)
    if y_name not in shapes:
        raise VJPError(f"'{y_name}' is not a tensor of the model; outputs: "
                       f"{', '.join(o.name for o in graph.output)}")
    active = active_tensors(model, x_name, dtypes)
    if y_name not in active:
        raise VJPError(f"'{y_name}' does not depend (differentiably) on input '{x_name}'")
    model, shapes, dtypes, active = _unrolled(model, x_name, shapes, dtypes, active)
    forward = [_copy(n) for n in ancestors(model, y_name)]
    b = _builder(model, x_name, shapes, dtypes, active)
    grad_x = _backward(b, forward, x_name, y_name)
    return _assemble(model, forward, b, x_name, y_name, grad_x, emit_output)


def _unrolled(model: onnx.ModelProto, x_name: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, int],
              active: set[str]) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]], dict[str, int], set[str]]:
    """The model with the recurrences on the input's path unrolled (``rfgraph.unroll``: they have
    no rule of their own), and its shapes, types and active set again; unchanged without any."""
    from .unroll import RECURRENT_OPS, unroll_recurrences

    recurrent = [n for n in model.graph.node if n.op_type in RECURRENT_OPS and any(o in active for o in n.output)]
    if not recurrent:
        return model, shapes, dtypes, active
    lengths = {}
    for n in recurrent:
        batch_first = any(a.name == "layout" and a.i for a in n.attribute)
        lengths[n.output[0]] = shapes[n.input[0]][1 if batch_first else 0]
    try:
        model = unroll_recurrences(model, lengths, active, _builder(model, x_name, shapes, dtypes, active).value)
    except UnsupportedOpError as exc:
        raise _with_way_out(exc) from None
    shapes, dtypes = tensor_shapes(model, x_name)
    return model, shapes, dtypes, active_tensors(model, x_name, dtypes)


def _builder(model: onnx.ModelProto, x_name: str, shapes: dict[str, tuple[int, ...]],
             dtypes: dict[str, int], active: set[str]) -> Builder:
    """The context the rules work in (its ``value`` reads the tensors that do not depend on the
    input: constants, initializers, else one evaluation)."""
    return Builder(shapes=dict(shapes), dtypes=dtypes, consts=constants(model, with_initializers=False),
                   active=active, dtype=dtypes.get(x_name, TensorProto.FLOAT),
                   evaluate=lambda name: _input_independent(model, name, active, dtypes),
                   initializers={i.name: i for i in model.graph.initializer})


def _with_way_out(exc: UnsupportedOpError) -> UnsupportedOpError:
    """The same refusal, naming the finite-difference engine as the way out."""
    return UnsupportedOpError(exc.node, exc.op, f"{exc.why}; {FD_HINT}")


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _backward(b: Builder, forward: list[onnx.NodeProto], x_name: str, y_name: str) -> str:
    """Walk the forward nodes in reverse, applying each op's rule and summing fan-in gradients."""
    pending: dict[str, list[str]] = {y_name: [SEED_NAME]}
    b.shapes[SEED_NAME] = b.shapes[y_name]
    for node in reversed(forward):
        gys = [_total(b, pending.pop(o, []), o) for o in node.output]
        if all(g is None for g in gys):
            continue
        if not any(b.is_active(i) for i in node.input):
            continue
        rule = VJP_RULES.get(node.op_type)
        if rule is None or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.name or node.output[0], node.op_type,
                                     f"no VJP (gradient) rule for this op; {FD_HINT}")
        view = NodeView(node, {a.name: helper.get_attribute_value(a) for a in node.attribute})
        if gys[0] is None and node.op_type != "Split":
            continue  # auxiliary outputs only (e.g. MaxPool indices): nothing to propagate
        try:
            grads = rule(b, view, gys)
        except UnsupportedOpError as exc:  # a rule refusing these attributes: the same way out
            raise _with_way_out(exc) from None
        for inp, g in zip(node.input, grads):
            if g is not None and b.is_active(inp):
                pending.setdefault(inp, []).append(g)
    total = _total(b, pending.pop(x_name, []), x_name)
    if total is None:
        raise VJPError(f"no gradient reaches input '{x_name}' from '{y_name}'")
    return total


def _total(b: Builder, grads: list[str], like: str) -> str | None:
    """Sum the gradients flowing into one tensor (fan-out in the forward graph)."""
    if not grads:
        return None
    if len(grads) == 1:
        return grads[0]
    out = b.op("Sum", *grads)
    b.shapes[out] = b.shapes[like]
    return out


def _assemble(model: onnx.ModelProto, forward: list[onnx.NodeProto], b: Builder, x_name: str,
              y_name: str, grad_x: str, emit_output: bool) -> VJPGraph:
    """Turn ``model`` (the builder's own copy) into the gradient model, in place: forward and
    backward nodes, inputs x and seed, output dx; weights are moved, never copied (memory)."""
    graph = model.graph
    x_vi = onnx.ValueInfoProto()
    x_vi.CopyFrom(next(i for i in graph.input if i.name == x_name))
    dtype = b.dtype
    seed_vi = helper.make_tensor_value_info(SEED_NAME, dtype, list(b.shapes[y_name]))
    final = helper.make_node("Identity", [grad_x], [GRAD_NAME], name=GRAD_NAME)
    outputs = [helper.make_tensor_value_info(GRAD_NAME, dtype, list(b.shapes[x_name]))]
    if emit_output:
        outputs.append(helper.make_tensor_value_info(y_name, dtype, list(b.shapes[y_name])))
    used = {i for n in forward + b.nodes for i in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    while b.inits:  # one tensor at a time: the builder's copies are freed as they move
        graph.initializer.append(b.inits.pop(0))
    del graph.node[:]
    graph.node.extend(forward + b.nodes + [final])
    del graph.input[:]
    graph.input.extend([x_vi, seed_vi])
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    graph.name = graph.name + "_vjp"
    return VJPGraph(model, x_name, y_name, SEED_NAME, GRAD_NAME, tuple(b.shapes[x_name]),
                    tuple(b.shapes[y_name]), np.dtype(helper.tensor_dtype_to_np_dtype(dtype)))


def session(vjp: VJPGraph, providers: Sequence[str] | None = None, threads: int = 0,
            config: dict[str, str] | None = None) -> object:
    """An onnxruntime session for a VJP graph: graph optimisation ALL, the best provider present;
    ``config``: extra session config entries (e.g. {"session.intra_op.allow_spinning": "0"})."""
    import onnxruntime as ort

    opts = session_options()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(vjp.model.SerializeToString(), opts, providers=list(providers))
    except Exception as exc:
        raise VJPError(f"onnxruntime could not load the gradient graph: {exc}") from exc


def input_gradient(vjp: VJPGraph, sess: object, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Run the gradient graph: d(seed . y)/dx for input ``x``."""
    return sess.run([vjp.grad_name], {vjp.input_name: x.astype(vjp.dtype, copy=False),  # type: ignore[attr-defined]
                                      vjp.seed_name: seed.astype(vjp.dtype, copy=False)})[0]
