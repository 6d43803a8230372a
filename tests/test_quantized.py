"""Quantized and function-expanded graphs: scalars computed at run time broadcast, quantization ops
are pointwise, DynamicQuantizeLinear's scale and zero point read the whole tensor.

Each case failed before with an IndexError inside broadcasting (an internal error) or stopped;
every unit's region is checked against onnxruntime impulses (tests/impulses.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from tests.impulses import check_tensor

pytest.importorskip("onnxruntime")


def model(nodes: list, inits: list, shape: list[int], opset: int = 19) -> onnx.ModelProto:
    """A graph from input 'x' (float, ``shape``) to output 'y'."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 9
    return onnx.shape_inference.infer_shapes(proto)


def test_castlike_of_a_constant_is_a_constant() -> None:
    """Relu's opset-18 function body: Max(x, CastLike(0, x)) is pointwise (crashed: IndexError)."""
    proto = model([helper.make_node("CastLike", ["zero", "x"], ["z"]),
                   helper.make_node("Max", ["x", "z"], ["r"]),
                   helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1])],
                  [("zero", np.array(0.0, np.float32)), ("w", np.ones((2, 2, 3, 3), np.float32))], [1, 2, 6, 6])
    a = rfgraph.analyze(proto)
    assert a["y"].r == (3, 3) and not a.stops
    assert check_tensor(a, proto, "y") == 36


def test_castlike_of_the_data_is_pointwise() -> None:
    """CastLike(x, c) reads x at the same position."""
    proto = model([helper.make_node("CastLike", ["x", "c"], ["y"])], [("c", np.array(1.0, np.float32))], [1, 1, 5, 5])
    a = rfgraph.analyze(proto)
    assert check_tensor(a, proto, "y") == 25


def test_qlinear_conv_and_matmul_keep_the_conv_field() -> None:
    """QuantizeLinear -> QLinearConv (3x3, stride 2) -> DequantizeLinear, constant scales: the
    conv's field, exactly; then QLinearMatMul over channels keeps it."""
    u8 = lambda v: np.array(v, np.uint8)
    f32 = lambda v: np.array(v, np.float32)
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s", "zp", "w", "s", "zp", "s", "zp"], ["cq"],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["cq"], ["tq"], perm=[0, 2, 3, 1]),
             helper.make_node("QLinearMatMul", ["tq", "s", "zp", "m", "s", "zp", "s", "zp"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "zp"], ["y"])]
    inits = [("s", f32(0.05)), ("zp", u8(128)), ("w", rng.integers(100, 156, (3, 2, 3, 3)).astype(np.uint8)),
             ("m", rng.integers(100, 156, (3, 4)).astype(np.uint8))]
    proto = model(nodes, inits, [1, 2, 9, 9])
    a = rfgraph.analyze(proto)
    assert a["y"].r == (3, 3) and a["y"].S == (2, 2) and not a.stops
    assert check_tensor(a, proto, "cq") == 25
    assert check_tensor(a, proto, "y") == 25


def test_dynamic_quantize_linear_reads_the_whole_tensor() -> None:
    """y, scale and zero point of DynamicQuantizeLinear all depend on every position (min/max)."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "sc", "zp"]),
             helper.make_node("ConvInteger", ["q", "w", "zp"], ["ci"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cf", "sc"], ["y"])]
    proto = model(nodes, [("w", np.full((2, 1, 3, 3), 3, np.uint8))], [1, 1, 6, 6])
    a = rfgraph.analyze(proto)
    assert a["y"].is_global and a["sc"].is_global and a["q"].is_global
    for name in ("q", "ci", "y"):
        check_tensor(a, proto, name)


def test_quantize_dynamic_conv_net(tmp_path) -> None:
    """onnxruntime.quantization.quantize_dynamic of a small torch conv net analyses to its output
    (crashed: IndexError); every tensor's field matches the impulses: global from the first
    DynamicQuantizeLinear, whose scale is read by every later unit."""
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(3, 3, 3, stride=2, padding=1)).eval()
    src, dst = tmp_path / "net.onnx", tmp_path / "net_q.onnx"
    torch.onnx.export(net, torch.randn(1, 2, 8, 8), str(src), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(dst)))
    assert "ConvInteger" in {n.op_type for n in proto.graph.node}
    a = rfgraph.analyze(proto)
    assert not a.stops and a["y"].is_global
    check_tensor(a, proto, "y")
