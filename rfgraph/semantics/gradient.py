"""The gradient (VJP) vocabulary every op rule speaks: ``Builder`` (emits ONNX nodes into the backward graph),
``NodeView`` (one forward node: its inputs, outputs, attributes), the ``Rule`` type and the helpers several families
share.

A VJP rule gets (builder, node, output gradients) and returns the gradient of each input (None where the input is
inactive or receives nothing).  Only the input gradient is built; weights are constants of the backward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from ..budgets import BIG_WEIGHT
from ..errors import InvalidAttributeError, RFGraphError, UnsupportedOpError
from . import geometry

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

# Ops whose outputs are finite when their inputs are (short of float overflow, where torch's
# result is not finite either): a Softmax fed only through them never sees a row of -inf, so its
# rule needs no guard for one (``vjp.finite_tensors``, which also admits Div by a constant without
# zeros, natural powers or powers of a positive constant, BatchNormalization only with var +
# epsilon > 0, and any constant the loader folds to finite values); Log, Exp, Reciprocal, Sqrt of
# the input and every op not listed do not count.
FINITE_PRESERVING = frozenset({
    "Add", "Sub", "Mul", "Neg", "Abs", "Sum", "Mean", "Max", "Min", "MatMul", "Gemm", "Conv",
    "ConvTranspose", "Einsum", "Relu", "LeakyRelu", "PRelu", "Gelu", "Erf", "Tanh", "Sigmoid",
    "HardSigmoid", "HardSwish", "Clip", "Softmax", "LogSoftmax", "Sin", "Cos", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Split", "Slice", "Gather",
    "GatherElements", "Concat", "Expand", "Tile", "Pad", "Resize", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "Where", "Cast", "Dropout", "DepthToSpace", "SpaceToDepth", "LayerNormalization",
    "BatchNormalization",
})


class IllTypedGradient(RFGraphError):
    """An emitted backward node fails ONNX's type and shape check (mixed float types in the model,
    for instance): the graph would not load, so the rule's op is refused (``vjp`` names it)."""


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
    finite: set[str] = field(default_factory=set)  # tensors finite for every finite input (Softmax's rule reads it)
    fold: Callable[[str], np.ndarray | None] | None = None  # the loader's folder (no session)
    opset: int = 17  # of the default domain: the version each emitted node's shape rule follows
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)  # forward tensor -> its node
    readers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)  # forward tensor -> its readers
    grads: dict[str, str] = field(default_factory=dict)  # forward tensor -> its total gradient, once known
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0
    _underived: dict[str, str] = field(default_factory=dict)  # output -> why inference failed

    def fresh(self, hint: str) -> str:
        """A new unique tensor name for the backward graph."""
        self._count += 1
        return f"rfgraph_vjp/{hint}_{self._count}"

    def emit(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        """Append a backward node and return its output names, whose shapes and types the builder
        derives (``derive``); ``attrs``: ONNX attribute values, typed ``Any`` as in
        ``helper.make_node``, which encodes them."""
        outs = [self.fresh(op) for _ in range(n_out)]
        node = helper.make_node(op, list(inputs), outs, name=outs[0], **attrs)
        self.nodes.append(node)
        self.derive(node)
        return outs

    def derive(self, node: onnx.NodeProto) -> None:
        """Record the shape and element type of each output of a node (emitted, or a forward node
        whose optional outputs a rule names): ONNX's own shape inference of that one node (the
        spec's shape rule of every op, written once by ONNX), given its inputs' known shapes and
        the values of its small integer inputs (Reshape targets, pads, axes).  An output it cannot
        tell stays unknown (reading it is an error: ``shape``); a node it finds ill-typed raises
        ``IllTypedGradient``."""
        types, data = {}, {}
        for name in node.input:
            if not name or name not in self.dtypes:
                continue
            types[name] = _tensor_type(self.dtypes[name], self.shapes.get(name))
            value = self.consts.get(name)
            if value is not None and value.dtype.kind in "iu" and value.size <= BIG_WEIGHT:
                data[name] = numpy_helper.from_array(value, name)
        untyped = [name for name in node.input if name and name not in types]
        if untyped:  # a forward tensor whose type the model's inference left unknown
            self._underived.update(dict.fromkeys(node.output, f"no type for input '{untyped[0]}'"))
            return
        try:
            schema = _schema(node.op_type, self.opset, node.domain)
            inferred = onnx.shape_inference.infer_node_outputs(
                schema, node, types, data, opset_imports=[helper.make_opsetid(node.domain, self.opset)])
        except Exception as exc:  # noqa: BLE001 - onnx's inference errors have no common base
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise IllTypedGradient(f"{node.op_type}: {why}") from None
        for out, tp in inferred.items():
            tt = tp.tensor_type
            if tt.elem_type:
                self.dtypes[out] = tt.elem_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes.setdefault(out, tuple(d.dim_value for d in tt.shape.dim))  # forward: kept

    def optional_output(self, node: onnx.NodeProto, index: int, hint: str) -> str:
        """Output ``index`` of a forward node (MaxPool's Indices, LayerNormalization's Mean...),
        named when the model leaves it out, so that a rule reads it instead of recomputing it."""
        while len(node.output) <= index:
            node.output.append("")
        if not node.output[index]:
            node.output[index] = self.fresh(hint)
            self.derive(node)
        return node.output[index]

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
        tensor = numpy_helper.from_array(arr, name)
        self.inits.append(tensor)
        self.shapes[name], self.dtypes[name] = arr.shape, tensor.data_type
        if arr.size <= BIG_WEIGHT:  # big ones (flipped kernels) are never read back
            self.consts[name] = arr
        return name

    def ints(self, values: Sequence[int]) -> str:
        """An int64 1-D constant (axes, shapes, pads, splits)."""
        return self.const(np.asarray(list(values), dtype=np.int64), dtype=np.int64)

    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of a tensor: a forward one (known for every tensor; see ``tensor_shapes``)
        or one the builder emitted (derived by ``derive``)."""
        shape = self.shapes.get(name)
        if shape is None:  # a rule reading what inference could not tell: a bug of the rule
            raise AssertionError(f"no shape for '{name}'" + (f": {self._underived[name]}"
                                                              if name in self._underived else ""))
        return shape

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

    def constant_or_folded(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node, else what ``fold`` computes without a
        session (None when the tensor is not constant): ``value`` without running the model, nor
        keeping an initializer's array (a pass over every weight reads them all)."""
        if name in self.consts:
            return self.consts[name]
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        return self.fold(name) if self.fold is not None and name not in self.active else None

    def is_scalar_constant(self, name: str) -> bool:
        """True when ``name`` is a constant holding one element (a scale, an offset)."""
        value = None if self.is_active(name) else self.constant_or_folded(name)
        return value is not None and value.size == 1

    def scalar_scaling(self, node: onnx.NodeProto) -> tuple[str, float] | None:
        """(x, s) when forward ``node`` computes x s, s a scalar constant: Mul (either side) or Div
        by 1 / s, x active and of the output's shape (the folds read scalings this way)."""
        if node.op_type not in ("Mul", "Div") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return None
        x, k = node.input
        if node.op_type == "Mul" and self.is_scalar_constant(x):
            x, k = k, x
        if not self.is_scalar_constant(k) or not self.is_active(x) or self.shape(x) != self.shape(node.output[0]):
            return None
        value = self.constant_or_folded(k)
        assert value is not None
        v = float(np.ravel(value)[0])
        if value.dtype.kind != "f" or (node.op_type == "Div" and v == 0.0):
            return None
        return x, (1.0 / v if node.op_type == "Div" else v)

    def is_active(self, name: str) -> bool:
        """True when the tensor depends differentiably on the graph input."""
        return bool(name) and name in self.active

    def zeros(self, shape: Sequence[int]) -> str:
        """A zero tensor of the gradient dtype (a broadcast scalar when ``shape`` is empty)."""
        return self.op("ConstantOfShape", self.ints(shape), value=numpy_helper.from_array(
            np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(self.dtype))))

    def reduce_to(self, g: str, shape: Sequence[int]) -> str:
        """Sum a broadcast gradient back to an operand's ``shape`` (numpy broadcasting rules)."""
        gshape = self.shape(g)
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
        return self.op("Reshape", g, self.ints(shape), **zero)

    def scalar(self, value: float) -> str:
        """A scalar constant of the gradient dtype."""
        return self.const(value)

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
        return out

    def scatter_along_axis(self, g: str, src: np.ndarray, n_in: int, axis: int) -> str:
        """Add each position j of axis ``axis`` of ``g`` onto position ``src[j]`` of a tensor with
        ``n_in`` positions there: the transpose of a copy, in O(size) where the 0/1 matrix that
        ``along_axis`` would take has n_in x len(src) entries (7.7 GB for a 44k-sample Pad)."""
        shape = list(self.shape(g))
        pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
        g3 = self.reshape(g, (pre, shape[axis], post))
        where = self.op("Expand", self.const(np.asarray(src, np.int64).reshape(1, -1, 1), dtype=np.int64),
                        self.ints((pre, shape[axis], post)))
        out = self.op("ScatterElements", self.zeros((pre, n_in, post)), where, g3, axis=1, reduction="add")
        shape[axis] = n_in
        return self.reshape(out, shape)

    def along_axis(self, g: str, matrix: np.ndarray, axis: int) -> str:
        """Contract axis ``axis`` of ``g`` (length m) with ``matrix`` (n x m): a linear map per axis."""
        shape = list(self.shape(g))
        pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
        g3 = self.reshape(g, (pre, shape[axis], post))
        out = self.op("Einsum", g3, self.const(matrix), equation="pmq,nm->pnq")
        shape[axis] = matrix.shape[0]
        return self.reshape(out, shape)


@functools.lru_cache(maxsize=4096)
def _tensor_type(dtype: int, shape: tuple[int, ...] | None) -> onnx.TypeProto:
    """The TypeProto of a tensor (shared: a backward graph has few distinct shapes)."""
    return helper.make_tensor_type_proto(dtype, shape)


@functools.lru_cache(maxsize=512)
def _schema(op: str, opset: int, domain: str) -> onnx.defs.OpSchema:
    return onnx.defs.get_schema(op, opset, domain)


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


Grads = list  # gradient tensor name (or None) of the leading inputs, in order; the rest get none


Rule = Callable[[Builder, NodeView, list], Grads]


def _window(n: NodeView, b: Builder) -> geometry.Window:
    """Geometry of a Conv/pool node (``geometry.window``, auto_pad resolved on the known sizes)."""
    xs = b.shape(n.inputs[0])[2:]
    kernel = n.attr_ints("kernel_shape")
    if n.node.op_type == "Conv":
        kernel = kernel or list(b.shape(n.inputs[1])[2:])
    elif kernel is None:  # required by the pooling ops
        raise n.invalid(_attr_problem("kernel_shape", None, "a list of ints"))
    return geometry.window(n.node.op_type, n.name, n.attrs, kernel, xs)


def _scatter_window(b: Builder, g: str, w: str, group: int, n: NodeView,
                    taps: Sequence[int] | None = None) -> str:
    """Transpose of a sliding window: ConvTranspose of ``g`` with ``w``, cropped/padded to x;
    ``taps``: the kernel size of ``w`` where it is cut shorter than the node's (``_reachable_taps``)."""
    geo = _window(n, b)
    strides, dil, pb, pe = geo.strides, geo.dilations, geo.pads_begin, geo.pads_end
    xs, ys = b.shape(n.inputs[0])[2:], b.shape(n.outputs[0])[2:]
    k_eff = [a.k_eff for a in geo.axes] if taps is None else [(k - 1) * d + 1 for k, d in zip(taps, dil)]
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
    return _kept_blocked(b, out)


def _reachable_taps(geo: geometry.Window, xs: Sequence[int]) -> list[int]:
    """Per axis, the leading kernel taps that can land on the input: tap t of any window starts at
    or after t * d - p0, so taps with t * d >= x + p0 read only end padding (a pool window larger
    than its map: transformers' EfficientNet averages a 7x7 map with a 1280x1280 ceil-mode pool)."""
    return [min(k, -(-(x + p0) // d)) for k, x, p0, d in zip(geo.kernel, xs, geo.pads_begin, geo.dilations)]


def _ones_scatter(b: Builder, g: str, n: NodeView) -> str:
    """``g`` spread back over each window of an Average/Lp pool (a ones kernel per channel, cut to
    the taps that reach the input: the gradient is the same, the kernel no larger than the map)."""
    channels = b.shape(n.inputs[0])[1]
    taps = _reachable_taps(_window(n, b), b.shape(n.inputs[0])[2:])
    return _scatter_window(b, g, b.const(np.ones((channels, 1, *taps))), channels, n, taps)


BLOCK = 16  # channels per block of onnxruntime's NCHWc layout (8 with AVX2, 16 with AVX-512)


def _kept_blocked(b: Builder, t: str) -> str:
    """``t`` through a 1x1 AveragePool, an exact identity that onnxruntime runs in its blocked
    NCHWc layout.  ConvTranspose and Pad (a Slice's gradient) have no NCHWc kernel; the residual
    Sum and ReLU mask their output meets would stay in plain layout, with a reorder around every
    backward Conv of the stage, fused no more into them (ResNet-50's gradient: reorders 6.0 -> 1.8
    ms, Sum 1.9 -> 0.4 ms, the 6 pools 0.4 ms), and a model cropped by ``rfgraph.trim`` would
    round its sums otherwise than the whole model.  Only for float32 2-D maps whose channels fill
    whole blocks (NCHWc's terms)."""
    shape = b.shape(t)
    if len(shape) != 4 or shape[1] % BLOCK or b.dtype != onnx.TensorProto.FLOAT:
        return t
    return b.op("AveragePool", t, kernel_shape=[1, 1])


def _square(b: Builder, t: str) -> str:
    return b.op("Mul", t, t)


def _one_plus(b: Builder, t: str, sign: float = 1.0) -> str:
    """1 + sign * t."""
    return b.op("Add", b.scalar(1.0), b.op("Mul", t, b.scalar(sign)))


def _added_back(b: Builder, shape: Sequence[int], indices: str, g: str, axis: int) -> str:
    """``g`` scatter-added into zeros of ``shape`` at ``indices`` along ``axis``: the gradient of an
    op that picked those elements along it (TopK's values, GatherElements)."""
    return b.op("ScatterElements", b.op("Expand", b.zeros([]), b.ints(shape)), indices, g,
                axis=axis % len(shape), reduction="add")


# d f(x) / dx of each unary op, from x, y = f(x) and the node's attributes (ONNX defaults).
Derivative = Callable[[Builder, NodeView, str, str], str]


def _lp_derivative(b: Builder, x: str, y: str, p: float) -> str:
    """d/dx of y = (sum |x|^p)^(1/p): |x|^(p-1) sign(x) y^(1-p), 0 where y = 0 (torch's norm)."""
    per_x = b.op("Mul", b.op("Pow", b.op("Abs", x), b.scalar(p - 1.0)), b.op("Sign", x))
    per_y = b.op("Where", b.op("Greater", y, b.scalar(0.0)), b.op("Pow", y, b.scalar(1.0 - p)), b.scalar(0.0))
    return b.op("Mul", per_x, per_y)


class QuantizedGradient(UnsupportedOpError):
    """A gradient through rounding: 0 almost everywhere (finite differences do no better)."""


def _quantized(b: Builder, n: NodeView, gys: list) -> Grads:
    """Quantizers and what reads their integers (DequantizeLinear is affine, but its input, when
    it depends on the model input, comes from a quantizer): the output is a step function of the
    input (rounding), whose gradient is 0 almost everywhere, so refused (a zero ERF would mislead)."""
    raise QuantizedGradient(n.name, n.node.op_type, "quantized: the output is a step function of the "
                             "input (rounding), so its gradient is 0 almost everywhere and a gradient ERF "
                             "would be empty")


# Quantized ops: their integer outputs stay active (``active_tensors``), so that a path from the
# input through a quantizer reaches ``_quantized`` and is refused, instead of silently dropped.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                           "QLinearConv", "QLinearMatMul"})
