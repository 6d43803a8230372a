"""Test-only oracle: enumerate every input->output path and map unit indices through each op.

Written from the ONNX operator definitions, one explicit index set per step, with no spans,
no Fractions and no code shared with rfgraph: what the O(|E|+|L|) pass must agree with.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

POINTWISE = {"Relu", "Sigmoid", "Tanh", "BatchNormalization", "Identity", "LeakyRelu"}
MERGES = {"Add", "Sum", "Mul", "Concat", "Sub", "Max"}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Oracle:
    """Paths and per-path index maps of a small test model."""

    def __init__(self, model: onnx.ModelProto, input_name: str = "x") -> None:
        m = shape_inference.infer_shapes(model)
        self.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
        self.consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        self.producer = {o: n for n in m.graph.node for o in n.output}
        self.input = input_name

    def paths(self, tensor: str) -> list[list[tuple[onnx.NodeProto, int]]]:
        """Every path from the input to ``tensor`` as a list of (node, output index) steps."""
        if tensor == self.input:
            return [[]]
        node = self.producer[tensor]
        out_idx = list(node.output).index(tensor)
        result = []
        for slot, t in enumerate(node.input):
            if t == self.input or t in self.producer:
                for p in self.paths(t):
                    result.append(p + [(node, out_idx, slot)])
        return result

    def path_region(self, path, units: list[int]) -> list[tuple[int, int]]:
        """Input index range per spatial axis reached from output ``units`` along one path."""
        sets = [{u} for u in units]
        for node, out_idx, slot in reversed(path):
            sets = [self._back(node, out_idx, slot, axis, s) for axis, s in enumerate(sets)]
        return [(min(s), max(s)) for s in sets]

    def region(self, tensor: str, units: list[int]) -> list[tuple[int, int]]:
        """Extent of the union over all paths (what rfgraph reports)."""
        regions = [self.path_region(p, units) for p in self.paths(tensor)]
        return [(min(r[a][0] for r in regions), max(r[a][1] for r in regions)) for a in range(len(units))]

    def _back(self, node, out_idx: int, slot: int, axis: int, units: set[int]) -> set[int]:
        op, at = node.op_type, _attrs(node)
        n = len(self.shapes[node.input[0]]) - 2
        if op in POINTWISE or op in MERGES:
            return set(units)
        if op in ("Conv", "MaxPool", "AveragePool", "LpPool"):
            k = at.get("kernel_shape", [None] * n)[axis] or self.consts[node.input[1]].shape[2 + axis]
            s = at.get("strides", [1] * n)[axis]
            d = at.get("dilations", [1] * n)[axis]
            p = self._pad_begin(node, at, axis, k, s, d)
            return {u * s - p + j * d for u in units for j in range(k)}
        if op == "ConvTranspose":
            k = self.consts[node.input[1]].shape[2 + axis]
            s = at.get("strides", [1] * n)[axis]
            p = at.get("pads", [0] * 2 * n)[axis]
            out = set()
            for o in units:  # every input i with i*s + j - p == o for some tap j
                for j in range(k):
                    if (o + p - j) % s == 0:
                        out.add((o + p - j) // s)
            return out
        if op == "Resize":
            return {i for u in units for i in self._resize_taps(node, at, axis, u)}
        if op == "Pad":
            pads = self.consts[node.input[1]]
            return {u - int(pads[2 + axis]) for u in units}
        if op == "Slice":  # starts, ends, axes, steps as constant inputs
            starts, axes = self.consts[node.input[1]], self.consts[node.input[3]]
            steps = self.consts[node.input[4]] if len(node.input) > 4 else [1] * len(axes)
            for st, ax, sp in zip(starts, axes, steps):
                if ax == 2 + axis:  # ONNX: negative starts count from the end, then clamp
                    dim, st, sp = self.shapes[node.input[0]][ax], int(st), int(sp)
                    st = st + dim if st < 0 else st
                    st = max(0, min(st, dim - 1 if sp < 0 else dim))
                    return {st + u * sp for u in units}
            return set(units)
        raise NotImplementedError(op)

    def _pad_begin(self, node, at, axis, k, s, d) -> int:
        n = len(self.shapes[node.input[0]]) - 2
        mode = at.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            size = self.shapes[node.input[0]][2 + axis]
            out = self.shapes[node.output[0]][2 + axis]
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            return total // 2 if mode == "SAME_UPPER" else (total + 1) // 2
        if mode == "VALID":
            return 0
        return at.get("pads", [0] * 2 * n)[axis]

    def _resize_taps(self, node, at, axis, u) -> list[int]:
        scale = Fraction(float(self.consts[node.input[2]][2 + axis])).limit_denominator(1000)
        coord = at.get("coordinate_transformation_mode", b"half_pixel").decode()
        x = u / scale if coord == "asymmetric" else (u + Fraction(1, 2)) / scale - Fraction(1, 2)
        mode = at.get("mode", b"nearest").decode()
        if mode == "nearest":
            nm = at.get("nearest_mode", b"round_prefer_floor").decode()
            if nm == "floor":
                return [math.floor(x)]
            if nm == "round_prefer_floor":
                return [math.ceil(x - Fraction(1, 2))]
            raise NotImplementedError(nm)
        lo = math.floor(x)
        return [lo] if x == lo else [lo, lo + 1]


def path_sizes(oracle: Oracle, tensor: str, units: list[int], axis: int = 0) -> list[int]:
    """Receptive-field size of every path (for the histogram test)."""
    return [r[axis][1] - r[axis][0] + 1 for r in (oracle.path_region(p, units) for p in oracle.paths(tensor))]


def impulse_support(model: onnx.ModelProto, output: str, unit: tuple[int, ...]) -> list[tuple[int, int]]:
    """Empirical field: input pixels whose unit impulse (on a zero image) reaches output unit
    ``unit`` through onnxruntime.

    With positive weights and no biases every activation is a sum of positive path products, so
    the output is > 0 exactly when some path connects the pixel to the unit (no float32 loss:
    nothing else is added to the impulse's contribution).
    """
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    spatial = dims[2:]
    pixels = list(np.ndindex(*spatial))
    batch = np.zeros([len(pixels)] + dims[1:], dtype=np.float32)
    for i, px in enumerate(pixels):
        batch[(i, slice(None)) + px] = 1.0
    out = sess.run(None, {model.graph.input[0].name: batch})[0]
    values = out[(slice(None), slice(None)) + tuple(unit)].sum(axis=1)
    hit = [px for px, v in zip(pixels, values) if v > 0]
    return [(min(p[a] for p in hit), max(p[a] for p in hit)) for a in range(len(spatial))]
