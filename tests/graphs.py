"""Tiny ONNX graph builder for tests: real, runnable models with positive random weights.

Kept independent of model_zoo so the core's tests do not depend on the code they help check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class G:
    """Builds an NC(spatial) graph one node at a time; ``model()`` returns a checked ModelProto."""

    def __init__(self, spatial: tuple[int, ...], channels: int = 1, seed: int = 0, batch: int | str = "N",
                 opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.channels: dict[str, int] = {"x": channels}
        self.ndim = len(spatial)
        self.opset = opset
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, *spatial])
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def _init(self, array: np.ndarray, prefix: str = "w") -> str:
        """A constant: int64 arrays stay int64 (shapes, axes), everything else float32."""
        name = self._name(prefix)
        dtype = np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32
        self.inits.append(numpy_helper.from_array(array.astype(dtype), name))
        return name

    def _weight(self, shape: tuple[int, ...]) -> np.ndarray:
        """Positive weights, so no two paths can cancel (what the empirical oracle needs)."""
        return self.rng.uniform(0.5, 1.5, size=shape) / np.prod(shape[1:])

    def node(self, op: str, inputs: list[str], cout: int | None = None, n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self._name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self._name(f"{op}_"), **attrs))
        for o in outs:
            self.channels[o] = cout if cout is not None else self.channels[inputs[0]]
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, k: int | tuple, s: int = 1, pads: list[int] | None = None, d: int = 1,
             cout: int = 2, group: int = 1, auto_pad: str | None = None) -> str:
        ks = (k,) * self.ndim if isinstance(k, int) else tuple(k)
        w = self._init(self._weight((cout, self.channels[x] // group, *ks)))
        attrs = {"kernel_shape": list(ks), "strides": [s] * self.ndim, "dilations": [d] * self.ndim,
                 "group": group}
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = pads if pads is not None else [0] * (2 * self.ndim)
        return self.node("Conv", [x, w], cout, **attrs)

    def conv_t(self, x: str, k: int, s: int, pads: list[int] | None = None, cout: int = 2) -> str:
        w = self._init(self._weight((self.channels[x], cout) + (k,) * self.ndim))
        return self.node("ConvTranspose", [x, w], cout, kernel_shape=[k] * self.ndim, strides=[s] * self.ndim,
                         pads=pads or [0] * (2 * self.ndim))

    def pool(self, op: str, x: str, k: int, s: int, pads: list[int] | None = None, **attrs) -> str:
        return self.node(op, [x], kernel_shape=[k] * self.ndim, strides=[s] * self.ndim,
                         pads=pads or [0] * (2 * self.ndim), **attrs)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def concat(self, xs: list[str]) -> str:
        return self.node("Concat", xs, sum(self.channels[x] for x in xs), axis=1)

    def resize(self, x: str, scale: int, mode: str = "nearest", coord: str = "asymmetric",
               nearest_mode: str = "floor") -> str:
        scales = self._init(np.array([1, 1] + [scale] * self.ndim, dtype=np.float32), "scales")
        return self.node("Resize", [x, "", scales], mode=mode, coordinate_transformation_mode=coord,
                         nearest_mode=nearest_mode)

    def pad(self, x: str, begin: int, end: int, mode: str = "constant") -> str:
        pads = np.array([0, 0] + [begin] * self.ndim + [0, 0] + [end] * self.ndim, dtype=np.int64)
        name = self._name("pads")
        self.inits.append(numpy_helper.from_array(pads, name))
        return self.node("Pad", [x, name], mode=mode)

    def flip(self, x: str, axis: int, step: int = -1, start: int = -1) -> str:
        """Slice with a negative step along spatial ``axis``: reversed (every |step|-th unit)."""
        consts = [self._init(np.array([v])) for v in (start, -(2**62), 2 + axis, step)]
        return self.node("Slice", [x, *consts])

    def model(self, outputs: list[str] | str) -> onnx.ModelProto:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        graph = helper.make_graph(self.nodes, "test", [self.input], [], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {v.name: v for v in inferred.graph.value_info}
        model.graph.output.extend(known[o] for o in outputs)
        onnx.checker.check_model(model)
        return model


def chain(spatial: tuple[int, ...], layers: list[tuple[int, int, int, int]]) -> tuple[onnx.ModelProto, str]:
    """A single-path conv chain from (kernel, stride, pad_begin, dilation) tuples (symmetric pads)."""
    g = G(spatial)
    x = "x"
    for k, s, p, d in layers:
        x = g.conv(x, k, s, pads=[p] * (2 * g.ndim), d=d)
    return g.model(x), x
