"""Generators of large ONNX graphs for the scale benchmark and the stress tests.

Chains (conv, activation, conv...) and residual DAGs (every block adds its input back), built
directly as protobuf with ``onnx.helper`` so that a million nodes takes seconds, not minutes.
Weights are declared with their shapes but hold no data: receptive fields need shapes only.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

CHANNELS = 4


def _weight(name: str, kernel: int) -> onnx.TensorProto:
    """A conv weight declared with shape (C, C, k, k) and no data (rfgraph reads only the shape)."""
    return onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[CHANNELS, CHANNELS, kernel, kernel])


def _model(nodes: list, inits: list, size: int, out: str, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, size, size])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "generated", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def chain(n_nodes: int, size: int = 64, conv_every: int = 4) -> onnx.ModelProto:
    """``n_nodes`` nodes in a line: a 3x3 conv (pad 1) every ``conv_every`` nodes, Relu between."""
    nodes, inits, prev = [], [], "x"
    for i in range(n_nodes):
        out = f"t{i}"
        if i % conv_every == 0:
            inits.append(_weight(f"w{i}", 3))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        else:
            nodes.append(helper.make_node("Relu", [prev], [out]))
        prev = out
    return _model(nodes, inits, size, prev)


def residual(n_nodes: int, size: int = 64) -> onnx.ModelProto:
    """Residual DAG: blocks of Conv -> Relu -> Conv -> Add(block input), 4 nodes each, so the
    number of input-to-output paths doubles with every block (2^(n/4) paths)."""
    nodes, inits, prev = [], [], "x"
    for b in range(max(n_nodes // 4, 1)):
        p = f"b{b}_"
        inits += [_weight(p + "w1", 3), _weight(p + "w2", 3)]
        nodes += [
            helper.make_node("Conv", [prev, p + "w1"], [p + "c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [p + "c1"], [p + "r"]),
            helper.make_node("Conv", [p + "r", p + "w2"], [p + "c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Add", [p + "c2", prev], [p + "out"]),
        ]
        prev = p + "out"
    return _model(nodes, inits, size, prev)


GENERATORS = {"chain": chain, "residual": residual}
