"""GraphBuilder: a small, shape-tracking layer over ``onnx.helper`` to write test and zoo graphs.

Every method takes tensor names and returns the name of the tensor it creates, so a network reads
like its definition::

    b = GraphBuilder("tiny", input_shape=(1, 3, 32, 32))
    x = b.conv(b.input, 8, 3, stride=2, padding="SAME")      # TF 'SAME' -> explicit pads
    x = b.relu(x)
    b.output(b.max_pool(x, 2, stride=2))
    model = b.build()

Conventions (stated once, here):

* Layout is NCHW (ONNX's); spatial axes are every axis after the channel axis.
* ``padding`` of ``conv``/``max_pool``/``avg_pool``:
  ``"SAME"``  TensorFlow 'SAME': ``total = max((ceil(n/s)-1)*s + k_eff - n, 0)``, ``begin = total//2``,
  ``end = total - begin`` (ONNX ``SAME_UPPER``).  Written as explicit ``pads`` computed from the
  tracked input size (what tf2onnx writes for static shapes), or as ``auto_pad="SAME_UPPER"`` when
  the builder was made with ``same_mode="auto_pad"``;
  ``"VALID"`` no padding; an ``int`` p: symmetric (PyTorch) padding p on every spatial axis;
  a tuple with one entry per spatial axis, each an ``int`` (symmetric) or a ``(begin, end)`` pair.
* Weights are ``"random"`` (seeded, He-scaled normal), ``"ones"`` or a float constant; structure is
  what the zoo is about, weights only have to make the graph runnable.
* Names: ``scope("Mixed_5b/Branch_0")`` prefixes the names made inside it; ``name=`` sets the
  name of a method's output tensor (use it for end points).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Padding = str | int | Sequence[int | Sequence[int]]
IntOrTuple = int | Sequence[int]

OPSET = 17


def tf_same_pads(n: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (begin, end) of one axis of size ``n`` (= ONNX SAME_UPPER)."""
    k_eff = dilation * (kernel - 1) + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + k_eff - n, 0)
    return total // 2, total - total // 2


def conv2d_same_pads(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """TF-slim ``resnet_utils.conv2d_same`` explicit padding: total k_eff-1, begin total//2."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def out_size(n: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """Output size of a sliding window along one axis (ONNX Conv/Pool formula)."""
    k_eff = dilation * (kernel - 1) + 1
    span = n + pads[0] + pads[1] - k_eff
    if span < 0:
        raise ValueError(f"window {k_eff} larger than padded input {n + pads[0] + pads[1]}")
    return (-(-span // stride) if ceil_mode else span // stride) + 1


def image_shape(size: IntOrTuple, channels: int = 3) -> tuple[int, ...]:
    """NCHW shape of one image of ``size`` (``n`` for n x n, or ``(h, w)``: a strip for oracles)."""
    h, w = _tuple(size, 2)
    return (1, channels, h, w)


def _tuple(v: IntOrTuple, rank: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * rank
    v = tuple(int(a) for a in v)
    if len(v) != rank:
        raise ValueError(f"expected {rank} values, got {v}")
    return v


class GraphBuilder:
    """Accumulates nodes, initializers and tensor shapes; ``build()`` returns a checked model."""

    def __init__(self, name: str, input_shape: Sequence[int] = (1, 3, 224, 224),
                 input_name: str = "input", weights: str | float = "random", seed: int = 0,
                 same_mode: str = "explicit", opset: int = OPSET) -> None:
        if same_mode not in ("explicit", "auto_pad"):
            raise ValueError("same_mode must be 'explicit' or 'auto_pad'")
        self.name, self.opset, self.same_mode, self.weights = name, opset, same_mode, weights
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.outputs: list[str] = []
        self.metadata: dict[str, str] = {}
        self._scope: list[str] = []
        self._counter: dict[str, int] = {}
        self.input = input_name
        self.shapes[input_name] = tuple(int(d) for d in input_shape)

    # ---------------------------------------------------------------- naming and bookkeeping
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix names created inside the block with ``name/``."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _name(self, base: str, name: str | None = None) -> str:
        if name is not None:
            full = "/".join(self._scope + [name])
        else:
            stem = "/".join(self._scope + [base])
            i = self._counter.get(stem, 0)
            self._counter[stem] = i + 1
            full = stem if i == 0 else f"{stem}_{i}"
        if full in self.shapes:
            raise ValueError(f"tensor name '{full}' used twice")
        return full

    def shape(self, x: str) -> tuple[int, ...]:
        """Tracked shape of tensor ``x``."""
        return self.shapes[x]

    def spatial(self, x: str) -> tuple[int, ...]:
        """Spatial sizes (axes after N, C) of a feature map."""
        return self.shapes[x][2:]

    def channels(self, x: str) -> int:
        return self.shapes[x][1]

    def _node(self, op: str, inputs: Sequence[str], out_shape: Sequence[int], base: str,
              name: str | None = None, **attrs: Any) -> str:
        out = self._name(base, name)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        self.shapes[out] = tuple(int(d) for d in out_shape)
        return out

    def const(self, value: np.ndarray, base: str = "const") -> str:
        """Add an initializer and return its name."""
        nm = self._name(base)
        arr = np.asarray(value)
        self.inits.append(numpy_helper.from_array(arr, nm))
        self.shapes[nm] = tuple(arr.shape)
        return nm

    def _weight(self, shape: Sequence[int], fan_in: int, base: str) -> str:
        if self.weights == "random":
            w = self.rng.standard_normal(shape).astype(np.float32) * np.float32(
                math.sqrt(2.0 / max(fan_in, 1)))
        elif self.weights == "ones":
            w = np.ones(shape, np.float32)
        else:
            w = np.full(shape, float(self.weights), np.float32)
        return self.const(w, base)

    # ---------------------------------------------------------------- padding resolution
    def _pads(self, x: str, padding: Padding, kernel: tuple[int, ...], stride: tuple[int, ...],
              dilation: tuple[int, ...]) -> tuple[list[tuple[int, int]], dict]:
        """Per-axis (begin, end) pads (always resolved), plus ``auto_pad`` attributes when SAME
        is left to the runtime."""
        spatial = self.spatial(x)
        rank = len(spatial)
        if isinstance(padding, str):
            mode = padding.upper()
            if mode == "VALID":
                return [(0, 0)] * rank, {}
            if mode != "SAME":
                raise ValueError(f"padding must be 'SAME', 'VALID', an int or a tuple, not {padding!r}")
            pads = [tf_same_pads(n, k, s, d) for n, k, s, d in zip(spatial, kernel, stride, dilation)]
            if self.same_mode == "auto_pad":
                return pads, {"auto_pad": "SAME_UPPER"}
            return pads, {}
        if isinstance(padding, int):
            return [(padding, padding)] * rank, {}
        pads = []
        for p in padding:
            pads.append((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])))
        if len(pads) != rank:
            raise ValueError(f"padding needs one entry per spatial axis ({rank})")
        return pads, {}

    @staticmethod
    def _onnx_pads(pads: list[tuple[int, int]]) -> list[int]:
        return [p[0] for p in pads] + [p[1] for p in pads]

    def _window(self, x: str, kernel: IntOrTuple, stride: IntOrTuple, padding: Padding,
                dilation: IntOrTuple, ceil_mode: bool = False
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], dict, tuple[int, ...]]:
        rank = len(self.spatial(x))
        k, s, d = _tuple(kernel, rank), _tuple(stride, rank), _tuple(dilation, rank)
        pads, extra = self._pads(x, padding, k, s, d)
        out = tuple(out_size(n, kk, ss, p, dd, ceil_mode)
                    for n, kk, ss, p, dd in zip(self.spatial(x), k, s, pads, d))
        attrs: dict = {"kernel_shape": list(k), "strides": list(s)}
        attrs.update(extra if extra else {"pads": self._onnx_pads(pads)})
        return k, s, d, attrs, out

    # ---------------------------------------------------------------- layers
    def conv(self, x: str, out_channels: int, kernel: IntOrTuple, stride: IntOrTuple = 1,
             padding: Padding = "SAME", dilation: IntOrTuple = 1, groups: int = 1,
             bias: bool = True, name: str | None = None) -> str:
        """Conv (NCHW); see the module docstring for ``padding``."""
        k, _, d, attrs, out = self._window(x, kernel, stride, padding, dilation)
        cin = self.channels(x)
        if cin % groups or out_channels % groups:
            raise ValueError(f"channels {cin}->{out_channels} not divisible by groups={groups}")
        w = self._weight((out_channels, cin // groups) + k, cin // groups * math.prod(k), "W")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(np.zeros(out_channels, np.float32), "B"))
        if any(dd != 1 for dd in d):
            attrs["dilations"] = list(d)
        if groups != 1:
            attrs["group"] = groups
        return self._node("Conv", inputs, (self.shape(x)[0], out_channels) + out, "Conv", name,
                          **attrs)

    def depthwise_conv(self, x: str, kernel: IntOrTuple, stride: IntOrTuple = 1,
                       padding: Padding = "SAME", multiplier: int = 1, dilation: IntOrTuple = 1,
                       name: str | None = None) -> str:
        """Depthwise conv: ``group = channels``, ``multiplier`` outputs per input channel."""
        c = self.channels(x)
        return self.conv(x, c * multiplier, kernel, stride, padding, dilation, groups=c, name=name)

    def conv_transpose(self, x: str, out_channels: int, kernel: IntOrTuple, stride: IntOrTuple,
                       pads: IntOrTuple = 0, name: str | None = None) -> str:
        """ConvTranspose with symmetric ``pads``; out = (n-1)*s - 2p + k."""
        rank = len(self.spatial(x))
        k, s, p = _tuple(kernel, rank), _tuple(stride, rank), _tuple(pads, rank)
        cin = self.channels(x)
        w = self._weight((cin, out_channels) + k, cin * math.prod(k), "W")
        out = tuple((n - 1) * ss - 2 * pp + kk for n, kk, ss, pp in zip(self.spatial(x), k, s, p))
        return self._node("ConvTranspose", [x, w], (self.shape(x)[0], out_channels) + out,
                          "ConvTranspose", name, kernel_shape=list(k), strides=list(s),
                          pads=list(p) + list(p))

    def max_pool(self, x: str, kernel: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: Padding = "VALID", ceil_mode: bool = False, name: str | None = None) -> str:
        """MaxPool; ``stride`` defaults to ``kernel``."""
        _, _, _, attrs, out = self._window(x, kernel, kernel if stride is None else stride,
                                           padding, 1, ceil_mode)
        if ceil_mode:
            attrs["ceil_mode"] = 1
        return self._node("MaxPool", [x], self.shape(x)[:2] + out, "MaxPool", name, **attrs)

    def avg_pool(self, x: str, kernel: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: Padding = "VALID", count_include_pad: bool = False,
                 name: str | None = None) -> str:
        """AveragePool; TF excludes padded cells from the mean (``count_include_pad=False``)."""
        _, _, _, attrs, out = self._window(x, kernel, kernel if stride is None else stride,
                                           padding, 1)
        attrs["count_include_pad"] = int(count_include_pad)
        return self._node("AveragePool", [x], self.shape(x)[:2] + out, "AvgPool", name, **attrs)

    def global_avg_pool(self, x: str, name: str | None = None) -> str:
        """GlobalAveragePool: every spatial axis to size 1."""
        shp = self.shape(x)
        return self._node("GlobalAveragePool", [x], shp[:2] + (1,) * (len(shp) - 2), "GAP", name)

    def pad(self, x: str, pads: Sequence[Sequence[int]], mode: str = "constant",
            name: str | None = None) -> str:
        """Explicit Pad of the spatial axes, ``pads`` = ((begin, end), ...) one pair per axis."""
        shp = self.shape(x)
        rank = len(shp)
        full = [(0, 0), (0, 0)] + [tuple(p) for p in pads]
        if len(full) != rank:
            raise ValueError("pad needs one (begin, end) pair per spatial axis")
        p = self.const(np.array([a for a, _ in full] + [b for _, b in full], np.int64), "pads")
        out = tuple(n + a + b for n, (a, b) in zip(shp, full))
        return self._node("Pad", [x, p], out, "Pad", name, mode=mode)

    def _unary(self, op: str, x: str, name: str | None) -> str:
        return self._node(op, [x], self.shape(x), op, name)

    def relu(self, x: str, name: str | None = None) -> str:
        return self._unary("Relu", x, name)

    def relu6(self, x: str, name: str | None = None) -> str:
        """ReLU6 as tf2onnx writes tf.nn.relu6: Clip(x, 0, 6)."""
        lo = self.const(np.array(0.0, np.float32), "min")
        hi = self.const(np.array(6.0, np.float32), "max")
        return self._node("Clip", [x, lo, hi], self.shape(x), "Relu6", name)

    def tanh(self, x: str, name: str | None = None) -> str:
        return self._unary("Tanh", x, name)

    def sigmoid(self, x: str, name: str | None = None) -> str:
        return self._unary("Sigmoid", x, name)

    def identity(self, x: str, name: str | None = None) -> str:
        return self._unary("Identity", x, name)

    def activation(self, x: str, kind: str | None, name: str | None = None) -> str:
        """Apply ``kind`` in {None/'linear', 'relu', 'relu6', 'tanh', 'sigmoid', 'gelu', 'silu',
        'hardswish', 'hardsigmoid'}."""
        if kind in (None, "linear", "none"):
            return self.identity(x, name) if name else x
        fn = {"relu": self.relu, "relu6": self.relu6, "tanh": self.tanh, "sigmoid": self.sigmoid,
              "gelu": self.gelu, "silu": self.silu, "hardswish": self.hardswish,
              "hardsigmoid": self.hardsigmoid}
        if kind not in fn:
            raise ValueError(f"unknown activation {kind!r}")
        return fn[kind](x, name=name)

    def silu(self, x: str, name: str | None = None) -> str:
        """SiLU (swish) as torch exports it: x * Sigmoid(x)."""
        return self.mul(x, self.sigmoid(x), name)

    def hardswish(self, x: str, name: str | None = None) -> str:
        return self._unary("HardSwish", x, name)

    def hardsigmoid(self, x: str, name: str | None = None) -> str:
        """torch's hardsigmoid: HardSigmoid with alpha 1/6, beta 1/2."""
        return self._node("HardSigmoid", [x], self.shape(x), "HardSigmoid", name,
                          alpha=1.0 / 6.0, beta=0.5)

    def gelu(self, x: str, name: str | None = None) -> str:
        """Exact GELU decomposed as torch exports it below opset 20: x*0.5*(1+erf(x/sqrt 2))."""
        t = self._node("Div", [x, self.const(np.array(math.sqrt(2.0), np.float32))],
                       self.shape(x), "Div")
        t = self._node("Erf", [t], self.shape(x), "Erf")
        t = self._node("Add", [t, self.const(np.array(1.0, np.float32))], self.shape(x), "Add")
        t = self._node("Mul", [x, t], self.shape(x), "Mul")
        return self._node("Mul", [t, self.const(np.array(0.5, np.float32))], self.shape(x),
                          "Mul", name)

    def _broadcast(self, a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))

    def add(self, a: str, b: str, name: str | None = None) -> str:
        return self._node("Add", [a, b], self._broadcast(self.shape(a), self.shape(b)), "Add", name)

    def mul(self, a: str, b: str, name: str | None = None) -> str:
        return self._node("Mul", [a, b], self._broadcast(self.shape(a), self.shape(b)), "Mul", name)

    def scale(self, x: str, factor: float, name: str | None = None) -> str:
        """Multiply by a scalar constant (e.g. Inception-ResNet residual scaling)."""
        return self.mul(x, self.const(np.array(factor, np.float32), "scale"), name)

    def concat(self, xs: Sequence[str], axis: int = 1, name: str | None = None) -> str:
        shp = list(self.shape(xs[0]))
        ax = axis % len(shp)
        shp[ax] = sum(self.shape(x)[ax] for x in xs)
        return self._node("Concat", list(xs), shp, "Concat", name, axis=axis)

    def resize(self, x: str, scale: IntOrTuple, mode: str = "nearest",
               name: str | None = None, **attrs: Any) -> str:
        """Resize the spatial axes by integer ``scale`` (nearest or linear); ``attrs`` are more
        Resize attributes (``coordinate_transformation_mode``, ``nearest_mode``)."""
        shp = self.shape(x)
        sc = _tuple(scale, len(shp) - 2)
        scales = self.const(np.array([1.0, 1.0] + [float(s) for s in sc], np.float32), "scales")
        out = shp[:2] + tuple(n * s for n, s in zip(shp[2:], sc))
        return self._node("Resize", [x, "", scales], out, "Resize", name, mode=mode, **attrs)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, name: str | None = None) -> str:
        """Slice ``[start, end)`` with ``steps`` along ``axes`` (non-negative, in range)."""
        shp = list(self.shape(x))
        steps = list(steps) if steps is not None else [1] * len(axes)
        for a, s0, e0, st in zip(axes, starts, ends, steps):
            shp[a % len(shp)] = len(range(s0, min(e0, shp[a % len(shp)]), st))
        ins = [x] + [self.const(np.array(v, np.int64), nm) for v, nm in
                     ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))]
        return self._node("Slice", ins, shp, "Slice", name)

    def split(self, x: str, sizes: Sequence[int], axis: int = 1) -> list[str]:
        """Split (opset 13+: sizes as an input) into parts of ``sizes`` along ``axis``."""
        shp = self.shape(x)
        ax = axis % len(shp)
        if sum(sizes) != shp[ax]:
            raise ValueError(f"split sizes {tuple(sizes)} do not add up to {shp[ax]}")
        outs = [self._name("Split") for _ in sizes]
        sizes_t = self.const(np.array(sizes, np.int64), "split")
        self.nodes.append(helper.make_node("Split", [x, sizes_t], outs, name=outs[0], axis=axis))
        for o, n in zip(outs, sizes):
            self.shapes[o] = shp[:ax] + (int(n),) + shp[ax + 1:]
        return outs

    def batchnorm(self, x: str, eps: float = 1e-3, name: str | None = None) -> str:
        """BatchNormalization (inference) with identity statistics."""
        c = self.channels(x)
        ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
        ins = [x] + [self.const(v, nm) for v, nm in
                     ((ones, "gamma"), (zeros, "beta"), (zeros, "mean"), (ones, "var"))]
        return self._node("BatchNormalization", ins, self.shape(x), "BatchNorm", name, epsilon=eps)

    def linear(self, x: str, out_features: int, bias: bool = True, name: str | None = None) -> str:
        """``x @ W (+ b)`` over the last axis: MatMul with an initializer (plus Add)."""
        d = self.shape(x)[-1]
        w = self._weight((d, out_features), d, "W")
        shp = self.shape(x)[:-1] + (out_features,)
        y = self._node("MatMul", [x, w], shp, "MatMul", None if bias else name)
        if bias:
            y = self._node("Add", [y, self.const(np.zeros(out_features, np.float32), "b")], shp,
                           "Add", name)
        return y

    def matmul(self, a: str, b: str, name: str | None = None) -> str:
        """MatMul of two tensors (batched over leading axes)."""
        sa, sb = self.shape(a), self.shape(b)
        lead = self._broadcast(sa[:-2], sb[:-2])
        return self._node("MatMul", [a, b], lead + (sa[-2], sb[-1]), "MatMul", name)

    def layernorm(self, x: str, eps: float = 1e-6, name: str | None = None) -> str:
        """LayerNormalization over the last axis (opset 17)."""
        d = self.shape(x)[-1]
        g = self.const(np.ones(d, np.float32), "gamma")
        bta = self.const(np.zeros(d, np.float32), "beta")
        return self._node("LayerNormalization", [x, g, bta], self.shape(x), "LayerNorm", name,
                          axis=-1, epsilon=eps)

    def softmax(self, x: str, axis: int = -1, name: str | None = None) -> str:
        return self._node("Softmax", [x], self.shape(x), "Softmax", name, axis=axis)

    def reshape(self, x: str, shape: Sequence[int], name: str | None = None) -> str:
        """Reshape to a fully specified ``shape`` (no -1/0 placeholders)."""
        if math.prod(shape) != math.prod(self.shape(x)):
            raise ValueError(f"cannot reshape {self.shape(x)} to {tuple(shape)}")
        s = self.const(np.array(shape, np.int64), "shape")
        return self._node("Reshape", [x, s], shape, "Reshape", name)

    def transpose(self, x: str, perm: Sequence[int], name: str | None = None) -> str:
        shp = self.shape(x)
        return self._node("Transpose", [x], [shp[p] for p in perm], "Transpose", name,
                          perm=list(perm))

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = False,
                    name: str | None = None) -> str:
        """ReduceMean (opset 17: axes as attribute)."""
        shp = self.shape(x)
        ax = {a % len(shp) for a in axes}
        out = [1 if i in ax else n for i, n in enumerate(shp)] if keepdims else \
            [n for i, n in enumerate(shp) if i not in ax]
        return self._node("ReduceMean", [x], out, "ReduceMean", name, axes=list(axes),
                          keepdims=int(keepdims))

    # ---------------------------------------------------------------- finishing
    def output(self, x: str) -> str:
        """Mark ``x`` as a graph output."""
        self.outputs.append(x)
        return x

    def build(self, check: bool = True) -> onnx.ModelProto:
        """Assemble the model (float32 input and outputs with static shapes) and check it."""
        if not self.outputs:
            raise ValueError("no graph output: call output(x) first")
        vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(self.shapes[n]))
        graph = helper.make_graph(self.nodes, self.name, [vi(self.input)],
                                  [vi(o) for o in self.outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="rfgraph.model_zoo")
        model.ir_version = 8
        for k, v in self.metadata.items():
            model.metadata_props.add(key=k, value=v)
        if check:
            onnx.checker.check_model(model)
        return model
