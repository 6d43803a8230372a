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
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import (
    DynamicShapeError,
    InvalidAttributeError,
    RFGraphError,
    UnsupportedOpError,
)

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
})
# Outputs of differentiable ops that are indices, not values (no gradient flows through them)
INDEX_OUTPUTS = {"MaxPool": 1, "TopK": 1}
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                         TensorProto.BFLOAT16})


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
        """Reshape a gradient to a static shape, recording it."""
        out = self.op("Reshape", g, self.ints(shape))
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


def _window(n: NodeView, b: Builder) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Kernel, strides, dilations, pads begin, pads end of a Conv/pool node (auto_pad resolved)."""
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    rank = len(xs)
    kernel = n.attr_ints("kernel_shape")
    if n.node.op_type in ("Conv", "ConvTranspose"):
        kernel = kernel or list(b.shape(n.inputs[1])[2:])
    elif kernel is None:  # required by the pooling ops
        raise n.invalid(_attr_problem("kernel_shape", None, "a list of ints"))
    strides = n.attr_ints("strides") or [1] * rank
    dil = n.attr_ints("dilations") or [1] * rank
    pads = n.attr_ints("pads") or [0] * (2 * rank)
    auto = n.attr_str("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and n.node.op_type != "ConvTranspose":
        for i in range(rank):
            total = max((ys[i] - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - xs[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + rank] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * rank)
    return kernel, strides, dil, pads[:rank], pads[rank:]


def _scatter_window(b: Builder, g: str, w: str, group: int, n: NodeView) -> str:
    """Transpose of a sliding window: ConvTranspose of ``g`` with ``w``, cropped/padded to x."""
    kernel, strides, dil, pb, pe = _window(n, b)
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [d * (k - 1) + 1 for d, k in zip(dil, kernel)]
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
    kernel, strides, dil, pb, _ = _window(n, b)
    w = b.value(n.inputs[1])
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [d * (k - 1) + 1 for d, k in zip(dil, kernel)]
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

    Output padding and output_shape only add rows the Conv never reads, so they need no care.
    """
    xs = b.shape(n.inputs[0])[2:]
    rank = len(xs)
    ys = b.shape(n.outputs[0])[2:]
    kernel = n.attr_ints("kernel_shape") or list(b.shape(n.inputs[1])[2:])
    strides = n.attr_ints("strides") or [1] * rank
    dil = n.attr_ints("dilations") or [1] * rank
    pads = n.attr_ints("pads") or [0] * (2 * rank)
    auto = n.attr_str("auto_pad", "NOTSET")
    if n.attr("output_shape") or auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(rank):  # the spec's rule: total padding from the requested output size
            total = strides[i] * (xs[i] - 1) + (n.attr_ints("output_padding") or [0] * rank)[i] \
                + dil[i] * (kernel[i] - 1) + 1 - ys[i]
            small, big = total // 2, total - total // 2
            pads[i], pads[i + rank] = (big, small) if auto == "SAME_UPPER" else (small, big)
    # Conv over g with these pads: pad end so that exactly x output rows come out
    pe = [strides[i] * (xs[i] - 1) + dil[i] * (kernel[i] - 1) + 1 - ys[i] - pads[i]
          for i in range(rank)]
    g = gys[0]
    if any(p < 0 for p in pe):  # output_padding beyond the end pad: those rows are never read
        ends = [ys[i] + min(pe[i], 0) for i in range(rank)]
        g = b.op("Slice", g, b.ints([0] * rank), b.ints(ends), b.ints(list(range(2, 2 + rank))))
        pe = [max(p, 0) for p in pe]
    if any(p < 0 for p in pads[:rank]):
        raise UnsupportedOpError(n.name, "ConvTranspose", "negative pads")
    out = b.op("Conv", g, n.inputs[1], strides=strides, dilations=dil, pads=pads[:rank] + pe,
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


def _pool_divisor(xs: Sequence[int], ys: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dil: Sequence[int], pb: Sequence[int],
                  pe: Sequence[int], include_pad: bool) -> np.ndarray:
    """Per-output-unit divisor of AveragePool: window cells inside the input (or the padded input)."""
    per_axis = []
    for x, y, k, s, d, p0, p1 in zip(xs, ys, kernel, strides, dil, pb, pe):
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
    kernel, strides, dil, pb, pe = _window(n, b)
    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    div = _pool_divisor(xs[2:], ys[2:], kernel, strides, dil, pb, pe,
                        bool(n.attr("count_include_pad", 0)))
    g = b.binary("Mul", gys[0], b.const(1.0 / div), ys)
    channels = xs[1]
    ones = b.const(np.ones((channels, 1, *kernel)))
    return [_scatter_window(b, g, ones, channels, n)]


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
    """SpaceToDepth: the permutation of the ONNX spec (reshape, transpose, reshape), undone."""
    xs = b.shape(n.inputs[0])
    bs = n.attr_int("blocksize")
    N, C, H, W = xs
    split, perm = (N, C, H // bs, bs, W // bs, bs), (0, 3, 5, 1, 2, 4)
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
    """The (out x in) matrix of a Resize along one axis, measured by onnxruntime on basis vectors."""
    import onnxruntime as ort  # local: vjp building needs ORT only for Resize

    xs, ys = b.shape(n.inputs[0]), b.shape(n.outputs[0])
    size_in, size_out = xs[axis], ys[axis]
    # decoded values, re-encoded by make_node (whose attribute kwargs are typed Any)
    attrs: dict[str, Any] = {k: v for k, v in n.attrs.items()
                             if k not in ("axes", "keep_aspect_ratio_policy")}
    scales = b.value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
    inits = []
    roi = b.value(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
    crop = attrs.get("coordinate_transformation_mode") in ("tf_crop_and_resize", b"tf_crop_and_resize")
    if roi is not None and roi.size and crop:  # roi: starts then ends of the resized axes
        axes = [int(a) % len(xs) for a in n.attr_ints("axes") or range(len(xs))]
        at = axes.index(axis) if axis in axes else None
        start, end = (roi[at], roi[roi.size // 2 + at]) if at is not None else (0.0, 1.0)
        inits.append(numpy_helper.from_array(np.array([0.0, start, 1.0, end], np.float32), "roi"))
    if scales is not None and scales.size:
        full = np.ones(len(xs), dtype=np.float32)
        axes = n.attr_ints("axes") or list(range(len(xs)))
        for a, s in zip(axes, scales.tolist()):
            full[int(a) % len(xs)] = s
        inits.append(numpy_helper.from_array(np.array([1.0, full[axis]], np.float32), "scales"))
        ins = ["x", "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([size_in, size_out], np.int64), "sizes"))
        ins = ["x", "", "", "sizes"]
    if len(inits) == 2:  # the crop's region of interest along this axis
        ins[1] = "roi"
    node = helper.make_node("Resize", ins, ["y"], **attrs)
    graph = helper.make_graph([node], "resize_matrix",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size_in, size_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.eye(size_in, dtype=np.float32)})
    (offset,) = sess.run(None, {"x": np.zeros((size_in, size_in), np.float32)})  # extrapolation_value
    y = y - offset
    if y.shape != (size_in, size_out):
        raise UnsupportedOpError(n.name, "Resize", "could not measure the resize along one axis")
    return y.T.astype(np.float64)  # (out, in): y = M x


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
    """Softmax (opset >= 13, one axis): y * (g - sum(g * y, axis))."""
    y, g = n.outputs[0], gys[0]
    ax = n.attr_int("axis", -1) % len(b.shape(y))
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
    count = b.scalar(1.0 / math.prod(xs[ax:]))
    m1 = b.op("Mul", b.op("ReduceSum", gh, b.ints(axes), keepdims=1), count)
    m2 = b.op("Mul", b.op("ReduceSum", b.binary("Mul", gh, xhat, xs), b.ints(axes), keepdims=1),
              count)
    b.shapes[m1] = b.shapes[m2] = stat_shape
    inner = b.binary("Sub", b.binary("Sub", gh, m1, xs), b.binary("Mul", xhat, m2, xs), xs)
    return [b.binary("Mul", inner, inv, xs)] + [None] * (len(n.inputs) - 1)


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
    "MaxPool": _max_pool, "TopK": _top_k, "AveragePool": _average_pool, "GlobalAveragePool": _global_average_pool,
    "ReduceSum": _reduce_sum, "ReduceMean": _reduce_sum,
    "Pad": _pad, "Slice": _slice, "Gather": _gather, "Concat": _concat, "Split": _split,
    "Resize": _resize, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "Softmax": _softmax, "LogSoftmax": _log_softmax,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "LRN": _lrn,
    "MatMul": _matmul, "Gemm": _gemm, "Einsum": _einsum,
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
        model_copy = version_converter.convert_version(model_copy, MIN_OPSET)
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
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_measure_shapes(model, input_name, missing, dtypes))
    return shapes, dtypes


BIG_WEIGHT = 4096  # float initializers with more elements are never shape data


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


def _measure_shapes(model: onnx.ModelProto, input_name: str, names: list[str],
                    dtypes: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one onnxruntime run of the model on a zero input."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            elem = dtypes.get(name, 0) or TensorProto.FLOAT
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), session_options(),
                                    providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            dt = helper.tensor_dtype_to_np_dtype(dtypes.get(i.name, TensorProto.FLOAT))
            feeds[i.name] = np.zeros(i.shape, dtype=dt)
        values = sess.run(names, feeds)
    except Exception as exc:  # onnxruntime's own load/run errors have no common base class
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VJPError(f"onnxruntime could not run the model to measure its tensor shapes: {why}; "
                       f"{FD_HINT}") from exc
    return {n: tuple(v.shape) for n, v in zip(names, values)}


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
            if out and dtypes.get(out, TensorProto.FLOAT) in FLOAT_TYPES:
                active.add(out)
    return active


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


def session_options(optimize: bool = True) -> Any:
    """onnxruntime options for every rfgraph session: graph optimisation ALL (or none), and no
    log of its own (its warnings, e.g. about the unused initializers exporters leave, and the
    errors of trial runs that rfgraph expects and handles, went to the user's terminal; every
    real failure surfaces as an exception, which rfgraph reports in one line)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return opts


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
