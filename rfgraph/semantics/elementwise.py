"""Elementwise ops: activations, arithmetic, comparisons, Where, Clip, Cast, Identity, Dropout, quantization."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..errors import UnsupportedOpError
from .gradient import Builder, Derivative, Grads, NodeView, _one_plus, _quantized, _square
from .gradient import Rule as VJPRule
from .transfer import (
    Edge,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    broadcast,
    mixed_maps,
    pointwise,
    with_scalar_edges,
    with_sizes,
)

# ---------------------------------------------------------------- receptive-field (TRF) rules


def cast_like_rule(ctx: NodeContext) -> Transfer:
    """CastLike(x, like): x in like's type; ``like`` gives only the type, so the output reads
    input 0 alone, and is a constant when input 0 is (the opset-18 function bodies of Relu, Elu,
    Gelu... cast their constants this way)."""
    if ctx.layouts[0] is None:
        return Transfer((None,))
    return Transfer((OutTransfer(with_sizes(ctx.data_layout(0), ctx.out_shapes[0]), (Edge(0),)),))


def quantize_rule(ctx: NodeContext) -> Transfer:
    """QuantizeLinear/DequantizeLinear: pointwise in x; a scale or zero point computed at run time
    (DynamicQuantizeLinear's) is read by every unit."""
    if ctx.layouts[0] is None:
        raise ctx.unsupported("quantized data is constant but its scale depends on the input")
    return with_scalar_edges(ctx, pointwise(ctx, 1), (1, 2))


def dynamic_quantize_rule(ctx: NodeContext) -> Transfer:
    """DynamicQuantizeLinear: y = round(x / scale) + zero point, where scale and zero point come
    from the min and max over all of x: every output reads every position (y keeps its layout)."""
    lay = ctx.data_layout(0)
    maps = mixed_maps(lay, range(len(lay)))
    y = OutTransfer(with_sizes(lay, ctx.out_shapes[0]), (Edge(0, maps),))
    scalar = OutTransfer((), (Edge(0, maps),))
    why = "DynamicQuantizeLinear: its scale and zero point are the min and max over the whole tensor"
    return Transfer((y, scalar, scalar)[: len(ctx.node.output)], mix_reason=why if maps else "")


POINTWISE_OPS = {
    # activations and elementwise math: output (…, u) reads input (…, u)
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Softplus", "Softsign", "Mish", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Asinh", "Acosh", "Atanh", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Swish",
    # no-ops at inference
    "Identity", "Cast", "Dropout",
}


BROADCAST_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift",
    "Clip", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}


# ---------------------------------------------------------------- gradient (VJP) rules


def _identity(b: Builder, n: NodeView, gys: list) -> Grads:
    """Identity, Dropout (inference), Cast between floats: the gradient passes unchanged."""
    return [gys[0]]


def _relu(b: Builder, n: NodeView, gys: list) -> Grads:
    """Relu: pass where the output is positive (uses y, so Conv+Relu stays fusable)."""
    if b.dtype != TensorProto.FLOAT:  # onnxruntime's HardSigmoid is float32 only
        return [b.where(b.op("Greater", n.outputs[0], b.scalar(0.0)), gys[0])]
    return [b.op("Mul", gys[0], _positive(b, n.outputs[0]))]


STEP_GAIN = 3e38  # HardSigmoid slope: 1 for y >= 1 / STEP_GAIN; twice, for every positive float


def _positive(b: Builder, y: str) -> str:
    """1.0 where ``y`` (>= 0: a Relu's output) is positive, else 0.0: HardSigmoid(min(1, a*y))
    applied twice with a = 3e38 (once leaves a*y < 1 for y below 3.3e-39, the denormals; the
    second maps those up to 1).  Not Greater+Cast: onnxruntime keeps HardSigmoid in its blocked
    NCHWc layout, so a CNN's masks need no layout reorders (ResNet-50 ERF 4 ms less, measured)."""
    once = b.op("HardSigmoid", y, alpha=STEP_GAIN, beta=0.0)
    return b.op("HardSigmoid", once, alpha=STEP_GAIN, beta=0.0)


def _leaky_relu(b: Builder, n: NodeView, gys: list) -> Grads:
    """LeakyRelu: 1 for x > 0, alpha otherwise."""
    alpha = n.attr_float("alpha", 0.01)
    scaled = b.op("Mul", gys[0], b.scalar(alpha))
    return [b.where(b.op("Greater", n.inputs[0], b.scalar(0.0)), gys[0], scaled)]


def _prelu(b: Builder, n: NodeView, gys: list) -> Grads:
    """PRelu: 1 for x > 0, the (broadcast) slope otherwise; the slope gets no gradient."""
    scaled = b.op("Mul", gys[0], n.inputs[1])
    return [b.where(b.op("Greater", n.inputs[0], b.scalar(0.0)), gys[0], scaled)]


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
        return [g]
    mask = masks[0] if len(masks) == 1 else b.op("And", *masks)
    return [b.where(mask, g)]


def _sigmoid(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sigmoid: g * y * (1 - y)."""
    y = n.outputs[0]
    one_minus = b.op("Sub", b.scalar(1.0), y)
    return [b.op("Mul", gys[0], b.op("Mul", y, one_minus))]


def _tanh(b: Builder, n: NodeView, gys: list) -> Grads:
    """Tanh: g * (1 - y^2)."""
    y = n.outputs[0]
    d = b.op("Sub", b.scalar(1.0), b.op("Mul", y, y))
    return [b.op("Mul", gys[0], d)]


def _hard_sigmoid(b: Builder, n: NodeView, gys: list) -> Grads:
    """HardSigmoid: alpha where 0 < alpha*x + beta < 1, else 0."""
    alpha, beta = n.attr_float("alpha", 0.2), n.attr_float("beta", 0.5)
    t = b.op("Add", b.op("Mul", n.inputs[0], b.scalar(alpha)), b.scalar(beta))
    mask = b.op("And", b.op("Greater", t, b.scalar(0.0)), b.op("Less", t, b.scalar(1.0)))
    return [b.where(mask, b.op("Mul", gys[0], b.scalar(alpha)))]


def _hard_swish(b: Builder, n: NodeView, gys: list) -> Grads:
    """HardSwish x*relu6(x+3)/6: 0 below -3, 1 above 3, (2x+3)/6 between (torch's convention)."""
    x, g = n.inputs[0], gys[0]
    mid = b.op("Add", b.op("Mul", x, b.scalar(1 / 3)), b.scalar(0.5))
    d = b.op("Where", b.op("Greater", x, b.scalar(3.0)), b.scalar(1.0), mid)
    d = b.where(b.op("GreaterOrEqual", x, b.scalar(-3.0)), d)
    return [b.op("Mul", g, d)]


def _erf(b: Builder, n: NodeView, gys: list) -> Grads:
    """Erf: g * 2/sqrt(pi) * exp(-x^2)."""
    return [b.op("Mul", gys[0], _erf_slope(b, n.inputs[0]))]


def _erf_slope(b: Builder, x: str) -> str:
    """erf'(x) = 2/sqrt(pi) exp(-x^2), as exp(ln(2/sqrt(pi)) - x^2): one pass fewer over a GELU's
    wide tensor than Neg, Exp and a scaling (ViT-S: 11 x 0.15 ms)."""
    return b.op("Exp", b.op("Sub", b.scalar(math.log(2 / math.sqrt(math.pi))), b.op("Mul", x, x)))


def _scaled_input(b: Builder, t: str) -> str | None:
    """x when the forward tensor ``t`` is x * k, k * x or x / k with k a scalar constant."""
    node = b.producers.get(t)
    if node is None or node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    x, k = node.input
    if node.op_type == "Mul" and b.is_scalar_constant(x):
        x, k = k, x
    return x if b.is_scalar_constant(k) and b.is_active(x) else None


def _gelu_slope(b: Builder, factor: str, other: str) -> str | None:
    """d(other * factor)/d(other) when the product is a GELU as exported (torch: x * (erf(x/k) + 1),
    Keras: 0.5x * (1 + erf(x*k))): factor = Erf(u) + c, u and other both x times a scalar.  Then
    x dfactor/dx = u erf'(u) whatever k, so the gradient to ``other`` (any scaling of x: its own
    rule applies it) is g (factor + u erf'(u)): the whole GELU in 6 passes instead of 8, none back
    through Add, Erf and the scaling.  None for any other product."""
    add = b.producers.get(factor)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    erf_out = add.input[1] if b.is_scalar_constant(add.input[0]) else add.input[0]
    offset = add.input[0] if erf_out == add.input[1] else add.input[1]
    erf = b.producers.get(erf_out)
    if erf is None or erf.op_type != "Erf" or not b.is_scalar_constant(offset):
        return None
    u = erf.input[0]
    x = u if other == u else _scaled_input(b, u)  # u itself: the scaling folded into x's layer (vjp)
    if x is None or (other != x and _scaled_input(b, other) != x):
        return None
    if not b.shape(other) == b.shape(factor) == b.shape(u):  # no broadcasting in the product
        return None
    return b.op("Add", factor, b.op("Mul", u, _erf_slope(b, u)))


def _gelu(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gelu (opset 20): exact Phi(x) + x phi(x), or the derivative of the tanh approximation."""
    x, g = n.inputs[0], gys[0]
    if n.attr_str("approximate", "none") == "tanh":
        c = math.sqrt(2 / math.pi)
        x2 = b.op("Mul", x, x)
        inner = b.op("Mul", b.op("Mul", x, b.scalar(c)),
                     b.op("Add", b.scalar(1.0), b.op("Mul", x2, b.scalar(0.044715))))
        t = b.op("Tanh", inner)
        sech2 = b.op("Sub", b.scalar(1.0), b.op("Mul", t, t))
        dinner = b.op("Mul", b.scalar(c), b.op("Add", b.scalar(1.0), b.op("Mul", x2, b.scalar(3 * 0.044715))))
        d = b.op("Add", b.op("Mul", b.scalar(0.5), b.op("Add", b.scalar(1.0), t)),
                 b.op("Mul", b.op("Mul", b.op("Mul", x, b.scalar(0.5)), sech2), dinner))
        return [b.op("Mul", g, d)]
    cdf = b.op("Mul", b.scalar(0.5),
               b.op("Add", b.scalar(1.0), b.op("Erf", b.op("Mul", x, b.scalar(1 / math.sqrt(2))))))
    pdf = b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.scalar(-0.5))),
               b.scalar(1 / math.sqrt(2 * math.pi)))
    return [b.op("Mul", g, b.op("Add", cdf, b.op("Mul", x, pdf)))]


def _exp(b: Builder, n: NodeView, gys: list) -> Grads:
    """Exp: g * y."""
    return [b.op("Mul", gys[0], n.outputs[0])]


def _neg(b: Builder, n: NodeView, gys: list) -> Grads:
    """Neg: -g."""
    return [b.op("Neg", gys[0])]


def _sqrt(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sqrt: g / (2 y)."""
    return [b.op("Div", gys[0], b.op("Mul", n.outputs[0], b.scalar(2.0)))]


def _pow(b: Builder, n: NodeView, gys: list) -> Grads:
    """Pow with a constant exponent p: g * p * x^(p-1); a variable exponent is not supported."""
    p_value = b.value(n.inputs[1])
    if p_value is None or p_value.size != 1 or b.is_active(n.inputs[1]):
        raise UnsupportedOpError(n.name, "Pow", "only a constant scalar exponent has a VJP rule")
    p = float(p_value.reshape(()))
    xp = b.op("Pow", n.inputs[0], b.scalar(p - 1.0))
    return [b.op("Mul", gys[0], b.op("Mul", xp, b.scalar(p)))]


def _add(b: Builder, n: NodeView, gys: list) -> Grads:
    """Add / Sum: each operand gets the gradient summed over its broadcast axes."""
    return [b.reduce_to(gys[0], b.shape(x)) if b.is_active(x) else None for x in n.inputs]


def _mean(b: Builder, n: NodeView, gys: list) -> Grads:
    """Mean (variadic): each operand gets g / count, reduced to its shape."""
    g = b.op("Mul", gys[0], b.scalar(1.0 / len(n.inputs)))
    return [b.reduce_to(g, b.shape(x)) if b.is_active(x) else None for x in n.inputs]


def _sub(b: Builder, n: NodeView, gys: list) -> Grads:
    """Sub: g for A, -g for B, each reduced to its shape."""
    a, c = n.inputs
    ga = b.reduce_to(gys[0], b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        gb = b.reduce_to(b.op("Neg", gys[0]), b.shape(c))
    return [ga, gb]


def _mul(b: Builder, n: NodeView, gys: list) -> Grads:
    """Mul: g * B for A and g * A for B, each reduced to its shape (a GELU's product: one rule
    for the whole GELU, ``_gelu_slope``)."""
    a, c = n.inputs
    for side, (other, factor) in enumerate(((a, c), (c, a))):
        slope = _gelu_slope(b, factor, other) if b.is_active(other) else None
        if slope is not None:
            grads: list[str | None] = [None, None]
            grads[side] = b.op("Mul", gys[0], slope)
            return grads
    ga = b.reduce_to(b.op("Mul", gys[0], c), b.shape(a)) if b.is_active(a) else None
    gb = b.reduce_to(b.op("Mul", gys[0], a), b.shape(c)) if b.is_active(c) else None
    return [ga, gb]


def _div(b: Builder, n: NodeView, gys: list) -> Grads:
    """Div: g / B for A and -g * y / B for B, each reduced to its shape."""
    a, c = n.inputs
    ga = b.reduce_to(b.op("Div", gys[0], c), b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        q = b.op("Div", b.op("Mul", gys[0], n.outputs[0]), c)
        gb = b.reduce_to(b.op("Neg", q), b.shape(c))
    return [ga, gb]


def _where(b: Builder, n: NodeView, gys: list) -> Grads:
    """Where(cond, A, B): the gradient goes to A where cond holds, to B elsewhere."""
    cond, a, c = n.inputs
    g = gys[0]
    ga = b.reduce_to(b.where(cond, g), b.shape(a)) if b.is_active(a) else None
    gb = None
    if b.is_active(c):
        gb_full = b.op("Where", cond, b.scalar(0.0), g)
        gb = b.reduce_to(gb_full, b.shape(c))
    return [None, ga, gb]


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
    return [b.op("Mul", gys[0], d)]


def _extreme(b: Builder, n: NodeView, gys: list) -> Grads:
    """Max / Min (variadic, broadcasting): the operands equal to the result share the gradient
    evenly (torch.maximum / minimum split a tie in halves), each reduced to its shape."""
    y, g = n.outputs[0], gys[0]
    masks = [b.op("Cast", b.op("Equal", x, y), to=b.dtype) for x in n.inputs]
    count = b.op("Sum", *masks) if len(masks) > 1 else masks[0]
    share = b.op("Div", g, count)
    return [b.reduce_to(b.op("Mul", share, m), b.shape(x)) if b.is_active(x) else None
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
        gb = b.reduce_to(b.op("Mul", g, b.op("Neg", q)), b.shape(c))
    return [ga, gb]


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    **dict.fromkeys(POINTWISE_OPS, pointwise),
    **dict.fromkeys(BROADCAST_OPS, broadcast),
    "CastLike": cast_like_rule,
    "QuantizeLinear": quantize_rule, "DequantizeLinear": quantize_rule,
    "DynamicQuantizeLinear": dynamic_quantize_rule,
}

VJP: dict[str, VJPRule] = {
    "Identity": _identity, "Dropout": _identity, "Cast": _identity, "CastLike": _identity,
    "Relu": _relu, "LeakyRelu": _leaky_relu, "PRelu": _prelu, "Clip": _clip,
    "Sigmoid": _sigmoid, "Tanh": _tanh, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish,
    "Erf": _erf, "Gelu": _gelu, "Exp": _exp, "Neg": _neg, "Sqrt": _sqrt, "Pow": _pow,
    "Add": _add, "Sum": _add, "Mean": _mean, "Sub": _sub, "Mul": _mul, "Div": _div, "Where": _where,
    **dict.fromkeys(DERIVATIVES, _elementwise),
    "Max": _extreme, "Min": _extreme, "Mod": _mod,
    # quantizers: refused (step functions), see ``gradient._quantized``
    "QuantizeLinear": _quantized, "DequantizeLinear": _quantized, "DynamicQuantizeLinear": _quantized,
}
