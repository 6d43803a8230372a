"""onnxruntime's contrib ops (``rfgraph/semantics/contrib.py``), each written as standard ops.

Oracles, none of them rfgraph's: onnxruntime's own kernel of each contrib op (the expansion must
compute what it computes); the impulse oracle run by onnxruntime on the contrib model itself (the
fields through FusedConv); central differences of onnxruntime's contrib kernels (the gradient graph
through the expansions); and a model as onnxruntime saves it optimised or quantized, which must
report the fields of the model it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import vjp
from rfgraph.onnx_import import read_model
from rfgraph.semantics.contrib import EXPANSIONS, expand_contrib_ops, expandable
from tests.impulses import check_tensor

MS = "com.microsoft"
RNG = np.random.default_rng(7)


def ms_node(op: str, inputs: list[str], outputs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, domain=MS, name=f"the_{op}_{outputs[0]}", **attrs)


def model(nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray],
          outputs: list[str], opset: int = 17) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in feeds.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "contrib", inputs, [helper.make_empty_tensor_value_info(o) for o in outputs],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape).astype(np.uint8)


def i8(*shape: int) -> np.ndarray:
    return RNG.integers(-100, 100, shape).astype(np.int8)


def scalar(v: float, dtype: type = np.float32) -> np.ndarray:
    return np.array(v, dtype=dtype)


# -------------------------------------------------------------------------- the cases: (id, model, feeds)


def fused_conv(activation: str | None, params: list[float], with_z: bool) -> tuple:
    attrs: dict[str, object] = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2]}
    if activation:
        attrs.update(activation=activation, **({"activation_params": params} if params else {}))
    feeds = {"x": f32(1, 3, 9, 9), **({"z": f32(1, 4, 5, 5)} if with_z else {})}
    node = ms_node("FusedConv", ["x", "w", "b", *(["z"] if with_z else [])], ["y"], **attrs)
    return model([node], feeds, {"w": f32(4, 3, 3, 3), "b": f32(4)}, ["y"]), feeds


def fused_gemm(activation: str, **act: float) -> tuple:
    feeds = {"a": f32(2, 5)}
    node = ms_node("FusedGemm", ["a", "bw", "c"], ["y"], alpha=0.5, beta=2.0, transB=1, activation=activation,
                   **{f"activation_{k}": v for k, v in act.items()})
    return model([node], feeds, {"bw": f32(3, 5), "c": f32(3)}, ["y"]), feeds


def fused_mat_mul(trans_a: int, trans_b: int) -> tuple:
    feeds = {"a": f32(2, 3, 5, 4) if trans_a else f32(2, 3, 4, 5), "b": f32(2, 3, 6, 5) if trans_b else f32(2, 3, 5, 6)}
    node = ms_node("FusedMatMul", ["a", "b"], ["y"], alpha=0.125, transA=trans_a, transB=trans_b)
    return model([node], feeds, {}, ["y"]), feeds


def elementwise(op: str, extra: dict[str, np.ndarray], **attrs: object) -> tuple:
    feeds = {"x": f32(2, 4, 8)}
    return model([ms_node(op, ["x", *extra], ["y"], **attrs)], feeds, extra, ["y"]), feeds


def skip_norm(op: str, opset: int, names: list[str], outputs: list[str]) -> tuple:
    feeds = {"x": f32(2, 4, 8), "skip": f32(2, 4, 8)}
    consts = {n: f32(8) for n in names if n not in feeds}
    node = ms_node(op, names, outputs, epsilon=1e-5)
    return model([node], feeds, consts, [o for o in outputs if o], opset), feeds


def simplified_norm() -> tuple:
    feeds = {"x": f32(2, 4, 8)}
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-5)
    return model([node], feeds, {"s": f32(8)}, ["y"]), feeds


def q_params(prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}_s": scalar(RNG.uniform(0.01, 0.05)), f"{prefix}_z": scalar(RNG.integers(100, 150), np.uint8)}


def qlinear_binary(op: str) -> tuple:
    feeds = {"a": u8(1, 4, 5, 5), "b": u8(1, 4, 5, 5)}
    consts = {**q_params("a"), **q_params("b"), **q_params("c")}
    node = ms_node(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"], ["y"])
    return model([node], feeds, consts, ["y"]), feeds


def qlinear_unary(op: str, **attrs: object) -> tuple:
    feeds = {"x": u8(1, 4, 5, 5)}
    node = ms_node(op, ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], **attrs)
    return model([node], feeds, {**q_params("x"), **q_params("y")}, ["y"]), feeds


def qlinear_pool(op: str, channels_last: int, **attrs: object) -> tuple:
    feeds = {"x": u8(1, 5, 6, 4) if channels_last else u8(1, 4, 5, 6)}
    node = ms_node(op, ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], channels_last=channels_last, **attrs)
    return model([node], feeds, {**q_params("x"), **q_params("y")}, ["y"]), feeds


def qlinear_concat() -> tuple:
    feeds = {"a": u8(1, 2, 5, 5), "b": u8(1, 3, 5, 5)}
    node = ms_node("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z"], ["y"], axis=1)
    return model([node], feeds, {**q_params("y"), **q_params("a"), **q_params("b")}, ["y"]), feeds


def qlinear_softmax() -> tuple:
    feeds = {"x": u8(2, 4, 8)}
    consts = {**q_params("x"), "y_s": scalar(1 / 256), "y_z": scalar(0, np.uint8)}
    node = ms_node("QLinearSoftmax", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], axis=-1, opset=13)
    return model([node], feeds, consts, ["y"]), feeds


def qlinear_conv(channels_last: bool) -> tuple:
    """onnxruntime's QLinearConv, channels first or last (its ORT_ENABLE_ALL form)."""
    feeds = {"x": u8(1, 6, 7, 5) if channels_last else u8(1, 5, 6, 7)}
    consts = {**q_params("x"), "w": i8(4, 5, 3, 3), "w_s": scalar(0.01), "w_z": scalar(0, np.int8), **q_params("y")}
    names = ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"]
    node = ms_node("QLinearConv", names, ["y"], kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 1],
                   channels_last=int(channels_last))
    return model([node], feeds, consts, ["y"]), feeds


def nhwc_max_pool() -> tuple:
    feeds = {"x": u8(1, 6, 7, 5)}
    node = ms_node("NhwcMaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return model([node], feeds, {}, ["y"]), feeds


def qgemm(trans_b: int, quantized_out: bool) -> tuple:
    feeds = {"a": u8(8, 5)}
    consts = {**q_params("a"), "bw": i8(3, 5) if trans_b else i8(5, 3),
              "b_s": RNG.uniform(0.01, 0.05, 3).astype(np.float32), "b_z": np.zeros(3, np.int8),
              "c": RNG.integers(-500, 500, 3).astype(np.int32),
              **(q_params("y") if quantized_out else {})}
    names = ["a", "a_s", "a_z", "bw", "b_s", "b_z", "c", *(["y_s", "y_z"] if quantized_out else [])]
    return model([ms_node("QGemm", names, ["y"], alpha=0.7, transB=trans_b)], feeds, consts, ["y"]), feeds


def dynamic_quantize_mat_mul() -> tuple:
    feeds = {"a": f32(2, 4, 5)}
    consts = {"bw": i8(5, 3), "b_s": RNG.uniform(0.01, 0.05, 3).astype(np.float32), "b_z": np.zeros(3, np.int8),
              "bias": f32(3)}
    return model([ms_node("DynamicQuantizeMatMul", ["a", "bw", "b_s", "b_z", "bias"], ["y"])], feeds, consts,
                 ["y"]), feeds


def mat_mul_integer_to_float() -> tuple:
    feeds = {"a": u8(2, 4, 5)}
    consts = {"bw": i8(5, 3), "a_s": scalar(0.02), "b_s": scalar(0.03), "a_z": scalar(128, np.uint8),
              "b_z": scalar(0, np.int8), "bias": f32(3)}
    node = ms_node("MatMulIntegerToFloat", ["a", "bw", "a_s", "b_s", "a_z", "b_z", "bias"], ["y"])
    return model([node], feeds, consts, ["y"]), feeds


def dynamic_quantize_lstm(per_column: bool) -> tuple:
    hidden, size = 3, 4
    feeds = {"x": f32(5, 2, size)}
    scale_shape = (1, 4 * hidden) if per_column else (1,)
    consts = {"w": i8(1, size, 4 * hidden), "r": i8(1, hidden, 4 * hidden), "bias": f32(1, 8 * hidden),
              "w_s": RNG.uniform(0.005, 0.02, scale_shape).astype(np.float32), "w_z": np.zeros(scale_shape, np.int8),
              "r_s": RNG.uniform(0.005, 0.02, scale_shape).astype(np.float32), "r_z": np.zeros(scale_shape, np.int8)}
    names = ["x", "w", "r", "bias", "", "", "", "", "w_s", "w_z", "r_s", "r_z"]
    node = ms_node("DynamicQuantizeLSTM", names, ["y", "y_h"], hidden_size=hidden)
    return model([node], feeds, consts, ["y", "y_h"]), feeds


def attention(sizes: list[int] | None, with_bias: bool) -> tuple:
    feeds = {"x": f32(2, 5, 12)}
    width = sum(sizes) if sizes else 36
    consts = {"w": f32(12, width), "b": f32(width), **({"rel": f32(1, 3, 5, 5)} if with_bias else {})}
    attrs = {"num_heads": 3, **({"qkv_hidden_sizes": sizes} if sizes else {})}
    names = ["x", "w", "b", "", "", *(["rel"] if with_bias else [])]
    return model([ms_node("Attention", names, ["y"], **attrs)], feeds, consts, ["y"]), feeds


def multi_head_attention(scale: float | None) -> tuple:
    feeds = {"q": f32(2, 5, 12), "k": f32(2, 7, 12), "v": f32(2, 7, 8)}
    attrs = {"num_heads": 4, **({"scale": scale} if scale else {})}
    node = ms_node("MultiHeadAttention", ["q", "k", "v", "b"], ["y"], **attrs)
    return model([node], feeds, {"b": f32(32)}, ["y"]), feeds


FLOAT_CASES = {
    "FusedConv-relu-z": fused_conv("Relu", [], True),
    "FusedConv-leaky": fused_conv("LeakyRelu", [0.1], False),
    "FusedConv-clip-z": fused_conv("Clip", [-0.5, 0.5], True),
    "FusedConv-hardsigmoid": fused_conv("HardSigmoid", [0.2, 0.5], False),
    "FusedConv-sigmoid": fused_conv("Sigmoid", [], False),
    "FusedConv-none": fused_conv(None, [], True),
    "FusedGemm-leaky": fused_gemm("LeakyRelu", alpha=0.2),
    "FusedGemm-tanh": fused_gemm("Tanh"),
    "FusedMatMul": fused_mat_mul(0, 0),
    "FusedMatMul-transB": fused_mat_mul(0, 1),
    "FusedMatMul-transA": fused_mat_mul(1, 0),
    "Gelu": elementwise("Gelu", {}),
    "BiasGelu": elementwise("BiasGelu", {"bias": f32(8)}),
    "FastGelu": elementwise("FastGelu", {"bias": f32(8)}),
    "FastGelu-nobias": elementwise("FastGelu", {}),
    "QuickGelu": elementwise("QuickGelu", {}, alpha=1.3),
    "SkipLayerNorm-sum": skip_norm("SkipLayerNormalization", 17, ["x", "skip", "g", "beta", "bias"],
                                   ["y", "", "", "s"]),
    "SkipLayerNorm-opset13": skip_norm("SkipLayerNormalization", 13, ["x", "skip", "g", "beta"], ["y"]),
    "SkipLayerNorm-mean": skip_norm("SkipLayerNormalization", 17, ["x", "skip", "g"], ["y", "m", "inv"]),
    "SkipSimplifiedLayerNorm": skip_norm("SkipSimplifiedLayerNormalization", 17, ["x", "skip", "g", "bias"], ["y"]),
    "SimplifiedLayerNorm": simplified_norm(),
    "DynamicQuantizeMatMul": dynamic_quantize_mat_mul(),
    "MatMulIntegerToFloat": mat_mul_integer_to_float(),
    "QGemm-float-out": qgemm(0, False),
    "Attention": attention(None, False),
    "Attention-sizes-bias": attention([12, 12, 6], True),
    "MultiHeadAttention": multi_head_attention(None),
    "MultiHeadAttention-scale": multi_head_attention(0.3),
    "DynamicQuantizeLSTM": dynamic_quantize_lstm(False),
    "DynamicQuantizeLSTM-per-column": dynamic_quantize_lstm(True),
}
QUANTIZED_CASES = {
    "QLinearAdd": qlinear_binary("QLinearAdd"),
    "QLinearMul": qlinear_binary("QLinearMul"),
    "QLinearSigmoid": qlinear_unary("QLinearSigmoid"),
    "QLinearLeakyRelu": qlinear_unary("QLinearLeakyRelu", alpha=0.2),
    "QLinearGlobalAveragePool": qlinear_pool("QLinearGlobalAveragePool", 0),
    "QLinearGlobalAveragePool-nhwc": qlinear_pool("QLinearGlobalAveragePool", 1),
    "QLinearAveragePool": qlinear_pool("QLinearAveragePool", 0, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "QLinearAveragePool-nhwc": qlinear_pool("QLinearAveragePool", 1, kernel_shape=[3, 3], strides=[2, 1],
                                            pads=[1, 0, 1, 0], count_include_pad=1),
    "QLinearConcat": qlinear_concat(),
    "QLinearSoftmax": qlinear_softmax(),
    "QGemm": qgemm(1, True),
    "QLinearConv": qlinear_conv(False),
    "QLinearConv-nhwc": qlinear_conv(True),
    "NhwcMaxPool": nhwc_max_pool(),
}


def test_every_expansion_has_a_case() -> None:
    covered = {n.op_type for m, _ in [*FLOAT_CASES.values(), *QUANTIZED_CASES.values()] for n in m.graph.node}
    assert set(EXPANSIONS) <= covered | {"BiasAdd"}  # BiasAdd: its own test (no CPU kernel)


# onnxruntime quantizes the LSTM's hidden state at each step as well (the expansion keeps it in
# float): the values differ by that rounding, the fields not (the input's dynamic scale already
# makes every step read every position).  One 8-bit step is 1/255 of the state's range, carried
# through 5 steps by kernels that differ per CPU (per-column: 7e-3 of the largest value on an AVX2
# AMD EPYC, under 2e-3 with AVX-512 VNNI); a wrong expansion (a gate or a scale misplaced) is off
# by the values themselves
TOLERANCE = {"DynamicQuantizeLSTM": 1.5e-2, "DynamicQuantizeLSTM-per-column": 1.5e-2}


@pytest.mark.parametrize("case", FLOAT_CASES, ids=str)
def test_expansion_computes_what_onnxruntime_computes(case: str) -> None:
    """Every output of the standard ops equals onnxruntime's contrib kernel (float32 rounding);
    no contrib op is left."""
    proto, feeds = FLOAT_CASES[case]
    expanded = expand_contrib_ops(proto)
    assert not any(expandable(n) for n in expanded.graph.node)
    tol = TOLERANCE.get(case, 2e-5)
    for want, got in zip(run(proto, feeds), run(expanded, feeds), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def test_bias_add_is_the_sum_of_its_three_inputs() -> None:
    """BiasAdd has no CPU kernel in onnxruntime: its schema's sum is the oracle."""
    x, bias, skip = f32(2, 4, 8), f32(8), f32(2, 4, 8)
    proto = model([ms_node("BiasAdd", ["x", "bias", "skip"], ["y"])], {"x": x}, {"bias": bias, "skip": skip}, ["y"])
    (got,) = run(expand_contrib_ops(proto), {"x": x})
    np.testing.assert_allclose(got, x + bias + skip, rtol=1e-6)


@pytest.mark.parametrize("case", QUANTIZED_CASES, ids=str)
def test_quantized_expansion_matches_onnxruntime_within_one_step(case: str) -> None:
    """Quantized outputs: equal to onnxruntime's integer kernel within one quantization step (its
    kernels round in fixed point or by lookup tables), and equal on most elements."""
    proto, feeds = QUANTIZED_CASES[case]
    expanded = expand_contrib_ops(proto)
    assert not any(expandable(n) for n in expanded.graph.node)
    (want,), (got,) = run(proto, feeds), run(expanded, feeds)
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.8, (diff.max(), (diff == 0).mean())


def test_what_an_expansion_does_not_cover_stays_and_is_named() -> None:
    """FusedGemm's ScaledTanh has no expansion: the node stays, and the analysis stops at it by name."""
    feeds = {"x": f32(1, 2, 6, 6)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             ms_node("FusedGemm", ["f", "m"], ["y"], activation="ScaledTanh", activation_alpha=1.0,
                     activation_beta=1.0)]
    proto = model(nodes, feeds, {"w": f32(2, 2, 3, 3), "m": f32(72, 4)}, ["y"])
    assert [n.op_type for n in expand_contrib_ops(proto).graph.node] == ["Conv", "Flatten", "FusedGemm"]
    analysis = rfgraph.analyze(proto)
    assert [s.node for s in analysis.stops] == ["the_FusedGemm_y"]
    assert "FusedGemm with activation ScaledTanh" in analysis.stops[0].reason  # the expansion's reason


# -------------------------------------------------------------------------- fields and gradients through them


def fused_net() -> onnx.ModelProto:
    """Conv net with onnxruntime's fused ops: a dilated FusedConv, a strided one, one adding a
    residual (Z), a QuickGelu, a BiasGelu (activations that never clamp: the impulse oracle sees
    every path)."""
    leaky = {"activation": "LeakyRelu", "activation_params": [0.1]}
    nodes = [
        ms_node("FusedConv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], dilations=[2, 2], **leaky),
        ms_node("FusedConv", ["c1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                **leaky),
        ms_node("FusedConv", ["c2", "w2", "b2", "c2"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], **leaky),
        ms_node("QuickGelu", ["c3"], ["g"]),
        helper.make_node("Conv", ["g", "w4"], ["c4"], kernel_shape=[3, 1], pads=[0, 0, 2, 0]),
        ms_node("BiasGelu", ["c4", "bias"], ["y"]),
    ]
    consts = {"w1": f32(4, 2, 3, 3), "b1": f32(4), "w2": f32(4, 4, 3, 3), "b2": f32(4), "w4": f32(4, 4, 3, 1),
              "bias": f32(4)}
    return model(nodes, {"x": f32(1, 2, 13, 11)}, consts, ["y"])


def test_fields_through_fused_ops_equal_impulses_on_the_contrib_model() -> None:
    """Every unit of each tensor: its TRF region is the hull onnxruntime measures on the model
    with the contrib ops themselves."""
    proto = fused_net()
    analysis = rfgraph.analyze(proto)
    assert not analysis.stops
    for name in ("c1", "c2", "c3", "g", "y"):
        assert check_tensor(analysis, proto, name) > 0
    assert [(f.size(), f.stride) for f in analysis["y"].fields] == [(15, 2), (11, 2)]


def central_differences(proto: onnx.ModelProto, x: np.ndarray, seed: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """d(seed . y)/dx of the contrib model itself, by onnxruntime in float32 (central differences)."""
    grad = np.zeros(x.size)
    flat = x.astype(np.float64).ravel()
    for i in range(flat.size):
        values = []
        for sign in (1, -1):
            moved = flat.copy()
            moved[i] += sign * step
            values.append(float((run(proto, {"x": moved.reshape(x.shape).astype(np.float32)})[0] * seed).sum()))
        grad[i] = (values[0] - values[1]) / (2 * step)
    return grad.reshape(x.shape)


def torch_twin(proto: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """d(seed . y)/dx of ``fused_net`` written in torch (float64 autograd), from its weights."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = {i.name: torch.tensor(numpy_helper.to_array(i), dtype=torch.float64) for i in proto.graph.initializer}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    c1 = F.leaky_relu(F.conv2d(xt, w["w1"], w["b1"], dilation=2), 0.1)
    c2 = F.leaky_relu(F.conv2d(c1, w["w2"], w["b2"], stride=2, padding=1), 0.1)
    c3 = F.leaky_relu(F.conv2d(c2, w["w2"], w["b2"], padding=1) + c2, 0.1)
    g = c3 * torch.sigmoid(1.702 * c3)
    c4 = F.conv2d(F.pad(g, (0, 0, 0, 2)), w["w4"])
    (F.gelu(c4 + w["bias"]) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    return xt.grad.numpy()


def test_gradient_through_expansions_equals_torch_and_central_differences_of_the_contrib_kernels() -> None:
    """The gradient graph of the model with onnxruntime's fused ops, against torch autograd on the
    same network in float64 (tight), and central differences of onnxruntime's contrib kernels
    themselves (float32: loose, a step may cross a LeakyReLU kink)."""
    proto = fused_net()
    x = f32(1, 2, 13, 11)
    seed = np.zeros_like(run(proto, {"x": x})[0])
    seed[0, :, 3, 2] = 1.0  # one unit, all channels
    graph = vjp.build_vjp(read_model(proto))
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    twin = torch_twin(proto, x, seed)
    assert np.abs(got - twin).max() < 1e-5 * np.abs(twin).max()
    want = central_differences(proto, x, seed)
    assert np.abs(got - want).max() < 5e-2 * np.abs(want).max()
    assert np.abs(want[got == 0]).max() < 1e-3 * np.abs(want).max()  # nothing outside the field
    assert (got != 0).sum() > 50


def test_erf_of_a_quantized_contrib_model_is_refused_as_a_step_function() -> None:
    proto, _ = QUANTIZED_CASES["QLinearAveragePool"]
    q = helper.make_node("QuantizeLinear", ["f", "x_s", "x_z"], ["x"])
    graph = proto.graph
    graph.node.insert(0, q)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 4, 5, 6]))
    with pytest.raises(rfgraph.RFGraphError, match="quantized"):
        rfgraph.compute_erf(proto, runs=1)


# -------------------------------------------------------------------------- files as onnxruntime writes them


def small_resnet(path: Path) -> Path:
    """A torch network with what onnxruntime fuses and quantizes: Conv+BN+ReLU, a residual sum, a
    strided block, global pooling and a linear head; exported with its weights as initializers."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 5, 1, 2), nn.ReLU())
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(y + self.body(y))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(y), 1), 1))

    torch.onnx.export(Net().eval(), torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                      input_names=["x"])
    return path


def test_files_onnxruntime_writes_report_the_fields_of_the_model_they_came_from(tmp_path: Path) -> None:
    """The same network as exported, as onnxruntime saves it optimised (FusedConv) and as its
    quantizer writes it (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm): the analysis
    runs to the end on each, and every activation keeps its field."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source = small_resnet(tmp_path / "net.onnx")
    optimised = tmp_path / "net_opt.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(optimised)
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": f32(1, 3, 32, 32)} for _ in range(3)])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    blocked = tmp_path / "net_all.onnx"  # onnxruntime's default level: NCHWc kernels where the CPU has them
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(blocked)
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    if any(n.domain == "com.microsoft.nchwc" for n in onnx.load(str(blocked)).graph.node):
        stops = rfgraph.analyze(str(blocked)).stops
        assert stops and "ORT_ENABLE_EXTENDED" in stops[0].reason, stops  # says how to save a readable file

    quantized = tmp_path / "net_q.onnx"
    quantization.quantize_static(str(source), str(quantized), Reader(), quant_format=quantization.QuantFormat.QOperator)
    ops = {p: {n.op_type for n in onnx.load(str(p)).graph.node if n.domain == MS} for p in (optimised, quantized)}
    assert "FusedConv" in ops[optimised] and {"QLinearAdd", "QLinearGlobalAveragePool", "QGemm"} <= ops[quantized]

    base = rfgraph.analyze(str(source))
    activations = [n.output[0] for n in onnx.load(str(source)).graph.node if n.op_type in ("Conv", "Relu", "Add")]
    for path, suffix in ((optimised, ""), (quantized, "_quantized")):
        other = rfgraph.analyze(str(path))
        assert not other.stops and other.global_at
        tensors = {o for n in onnx.load(str(path)).graph.node for o in n.output}
        compared = [name for name in activations if name + suffix in tensors]
        assert len(compared) >= 4, (path.name, compared)
        for name in compared:
            want, got = base[name].fields, other[name + suffix].fields
            assert [(f.spans, f.is_global) for f in got] == [(f.spans, f.is_global) for f in want], (path.name, name)
        # the default end points are the file's own tensors, labelled with the file's ops
        ends = other.default_endpoints()
        assert ends and set(ends) <= tensors, ends
        file_ops = {o: n.op_type for n in onnx.load(str(path)).graph.node for o in n.output}
        assert [other[t].op for t in ends] == [file_ops[t] for t in ends]


def test_window_attention_by_onnxruntimes_attention_op_is_local() -> None:
    """Windows of 4x4 positions moved into the batch, com.microsoft.Attention over each window's 16
    tokens, the windows put back: every position sees its window (impulses on the contrib model)."""
    nodes = [helper.make_node("Conv", ["x", "pw"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["c", "split"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 4, 3, 5, 1]),
             helper.make_node("Reshape", ["t", "windows"], ["tokens"]),
             ms_node("Attention", ["tokens", "w", "b"], ["a"], num_heads=3),
             helper.make_node("Reshape", ["a", "parts"], ["p"]),
             helper.make_node("Transpose", ["p"], ["q"], perm=[0, 5, 1, 3, 2, 4]),
             helper.make_node("Reshape", ["q", "image"], ["y"])]
    consts = {"pw": f32(12, 2, 1, 1), "split": np.array([1, 12, 2, 4, 2, 4]), "windows": np.array([4, 16, 12]),
              "w": f32(12, 36), "b": f32(36), "parts": np.array([1, 2, 2, 4, 4, 12]),
              "image": np.array([1, 12, 8, 8])}
    proto = model(nodes, {"x": f32(1, 2, 8, 8)}, consts, ["y"])
    analysis = rfgraph.analyze(proto)
    assert not analysis.stops and not analysis.global_at
    assert check_tensor(analysis, proto, "y") == 64
    assert [f.size() for f in analysis["y"].fields] == [4, 4]


@pytest.mark.parametrize("op", ["FastGelu", "QuickGelu", "Gelu"])
def test_float16_models_keep_float16_constants(op: str) -> None:
    """An expansion's constants take the node's float type: a float16 model's expansion loads and
    computes what onnxruntime's float16 kernel does (float32 constants would not type-check)."""
    x = RNG.random((2, 8)).astype(np.float16)
    proto = model([ms_node(op, ["x"], ["y"])], {"x": x}, {}, ["y"])
    (want,), (got,) = run(proto, {"x": x}), run(expand_contrib_ops(proto), {"x": x})
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - want.astype(np.float32)).max() <= 1e-3


def test_a_channels_last_qlinearconv_is_read_on_its_channels_last_data() -> None:
    """onnxruntime's QLinearConv with channels_last=1 (what it writes at ORT_ENABLE_ALL) was read by
    ONNX's channels-first rule: a 3x3 conv reported r = 1 along H (where the channel check passed,
    H == C), elsewhere a misleading channel-count error.  Oracle: impulses on the contrib model."""
    c = 6
    rng = np.random.default_rng(12)
    consts = {"s": scalar(0.05), "z": scalar(128, np.uint8), "w": rng.integers(-60, 60, (c, c, 3, 3)).astype(np.int8),
              "ws": scalar(0.01), "wz": scalar(0, np.int8), "ys": scalar(0.2)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("Transpose", ["xq"], ["xt"], perm=[0, 2, 3, 1]),
             ms_node("QLinearConv", ["xt", "s", "z", "w", "ws", "wz", "ys", "z"], ["yt"], kernel_shape=[3, 3],
                     pads=[1, 1, 1, 1], channels_last=1),
             helper.make_node("Transpose", ["yt"], ["yq"], perm=[0, 3, 1, 2]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "z"], ["y"])]
    proto = model(nodes, {"x": f32(1, c, c, c)}, consts, ["y"])
    a = rfgraph.analyze(proto, layout="NCHW")
    assert a["y"].r == (3, 3) and not a.stops
    assert check_tensor(a, proto, "y") == c * c


def test_a_chain_of_channels_last_ops_expands_in_rounds() -> None:
    """A channels-last QLinearGlobalAveragePool after a channels-last QLinearConv (onnxruntime's
    ORT_ENABLE_ALL form of a quantized ResNet's head): ONNX's shape inference skips contrib ops, so
    the pool's input rank is known only once the conv is standard ops; the pool stopped the
    analysis.  It computes what onnxruntime computes (within one step)."""
    c = 4
    rng = np.random.default_rng(13)
    consts = {"s": scalar(0.05), "z": scalar(128, np.uint8), "w": rng.integers(-60, 60, (c, c, 3, 3)).astype(np.int8),
              "ws": scalar(0.01), "wz": scalar(0, np.int8), "ys": scalar(0.2), "ps": scalar(0.1)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("Transpose", ["xq"], ["xt"], perm=[0, 2, 3, 1]),
             ms_node("QLinearConv", ["xt", "s", "z", "w", "ws", "wz", "ys", "z"], ["yt"], kernel_shape=[3, 3],
                     pads=[1, 1, 1, 1], channels_last=1),
             ms_node("QLinearGlobalAveragePool", ["yt", "ys", "z", "ps", "z"], ["y"], channels_last=1)]
    feeds = {"x": f32(1, c, 6, 6)}
    proto = model(nodes, feeds, consts, ["y"])
    expanded = expand_contrib_ops(proto)
    assert not any(expandable(n) for n in expanded.graph.node)
    (want,), (got,) = run(proto, feeds), run(expanded, feeds)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert not rfgraph.analyze(proto, layout="NCHW").stops
