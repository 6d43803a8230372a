"""Gradient rules written for onnxruntime's fast kernels are exact (issue 16 §1).

- MaxPool's gradient is built from the input under each window tap (no Indices output): on random
  windows (1-D, 2-D, 3-D; kernel, stride, dilation, asymmetric pads, ceil_mode, storage_order;
  inputs with many ties) it equals the oracle that scatter-adds the seed to onnxruntime's own
  Indices, which name the first maximum of each window, and torch's autograd where torch has the
  pooling.  Failed before: the rule read the Indices (the oracle here), 6.6 ms of ResNet-50's
  7.9 ms MaxPool gradient; storage_order=1 was refused.  Windows of more than 32 cells still
  scatter to the Indices (faster there), storage_order=1 excepted.
- Relu's mask is HardSigmoid applied twice: 1 for every positive float32, denormals included,
  and 0 at 0, also inside onnxruntime's blocked (NCHWc) layout.
- A MaxPool of a ReLU's output (read by nothing else) runs before the ReLU: the same values and
  gradient, the ReLU's mask on the pooled map (ResNet-50's stem, VGG's stages).
- A ConvTranspose's output goes through a 1x1 AveragePool (an identity onnxruntime keeps in that
  layout): the gradient of a strided residual net equals torch's.
- A GELU as exporters write it (x * (erf(x/k) + c), in either operand order, scaled before or
  after) gets one rule for the whole product: equal to torch's autograd and to the closed form
  s (c + erf(x/k)) + s x erf'(x/k) / k, with 7 backward nodes where the op-by-op rules took 9.
"""

from __future__ import annotations

import io
import itertools
from math import erf

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from rfgraph import vjp


def _max_pool_model(x_shape: list[int], with_indices: bool, **attrs: object) -> onnx.ModelProto:
    outs = ["y", "idx"] if with_indices else ["y"]
    node = helper.make_node("MaxPool", ["x"], outs, **attrs)
    values = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if with_indices:
        values.append(helper.make_tensor_value_info("idx", TensorProto.INT64, None))
    graph = helper.make_graph([node], "maxpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              values)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _indices_oracle(x: np.ndarray, seed_fn, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(seed, gradient): the seed scatter-added to onnxruntime's Indices, in float64."""
    model = _max_pool_model(list(x.shape), True, **attrs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, idx = sess.run(None, {"x": x})
    if attrs.get("storage_order", 0):  # 2-D, each map's cells numbered column-major: h + w * H
        height, width = x.shape[2:]
        maps, cell = np.divmod(idx, height * width)
        w, h = np.divmod(cell, height)
        idx = maps * height * width + h * width + w
    seed = seed_fn(y.shape)
    grad = np.zeros(x.size)
    np.add.at(grad, idx.ravel(), seed.ravel().astype(np.float64))
    return seed, grad.reshape(x.shape)


def _tied(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    """Inputs with many equal values (a ReLU's zeros, half-integers): windows with tied maxima."""
    return np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(np.float32)


def _random_windows(rng: np.random.Generator, rank: int, count: int) -> list[dict]:
    cases: list[dict] = []
    while len(cases) < count:
        k = [int(rng.integers(1, 5)) for _ in range(rank)]
        s = [int(rng.integers(1, 4)) for _ in range(rank)]
        if rank == 2 and len(cases) % 3 == 0:  # one stride on both axes: the SpaceToDepth split
            s = [s[0], s[0]]
        d = [int(rng.integers(1, 3)) for _ in range(rank)]
        half = [(kk - 1) * dd // 2 for kk, dd in zip(k, d)]
        pads = [int(rng.integers(0, h + 1)) for h in half] + [int(rng.integers(0, h + 1)) for h in half]
        size = [int(rng.integers(6, 12)) for _ in range(rank)]
        attrs = {"kernel_shape": k, "strides": s, "dilations": d, "pads": pads,
                 "ceil_mode": int(rng.integers(0, 2)), "storage_order": int(rng.integers(0, 2)) if rank == 2 else 0}
        if all(n + pads[i] + pads[i + rank] >= (kk - 1) * dd + 1 for i, (n, kk, dd) in enumerate(zip(size, k, d))):
            cases.append({"attrs": attrs, "shape": [int(rng.integers(1, 3)), int(rng.integers(1, 5)), *size]})
    return cases


CASES = [(rank, case) for rank, count in ((1, 16), (2, 40), (3, 10))
         for case in _random_windows(np.random.default_rng(rank), rank, count)]


@pytest.mark.parametrize("rank,case", CASES, ids=[f"{r}d-{i}" for i, (r, _) in enumerate(CASES)])
def test_max_pool_gradient_equals_the_indices_scatter(rank: int, case: dict) -> None:
    rng = np.random.default_rng(len(str(case)))
    x = _tied(rng, case["shape"])
    seed, want = _indices_oracle(x, lambda shape: rng.standard_normal(shape).astype(np.float32), case["attrs"])
    graph = vjp.build_vjp(_max_pool_model(case["shape"], False, **case["attrs"]))
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    assert got.shape == x.shape
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("storage_order", [0, 1])
def test_large_windows(storage_order: int) -> None:
    """A 7x7 window (49 taps, over ``MAX_TAPS``: the Indices scatter, unless storage_order=1
    numbers them column-major: the taps then) equals the oracle too."""
    from rfgraph.semantics.pooling import MAX_TAPS

    assert 49 > MAX_TAPS
    attrs = {"kernel_shape": [7, 7], "strides": [1, 1], "pads": [3, 3, 3, 3], "storage_order": storage_order}
    rng = np.random.default_rng(7)
    x = _tied(rng, [1, 3, 12, 10])
    seed, want = _indices_oracle(x, lambda shape: rng.standard_normal(shape).astype(np.float32), attrs)
    graph = vjp.build_vjp(_max_pool_model(list(x.shape), False, **attrs))
    by_taps = any(node.op_type == "Equal" for node in graph.model.graph.node)
    assert by_taps == bool(storage_order)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil", [
    (3, 2, 1, 1, False), (2, 2, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 2, True), (5, 3, 2, 1, True)])
def test_max_pool_gradient_equals_torch(kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> None:
    """Against torch's autograd (its own argmax, first maximum of each window), on tied inputs."""
    rng = np.random.default_rng(kernel * 10 + stride)
    x = _tied(rng, [2, 16, 15, 13])
    xt = torch.tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode=ceil)
    seed = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    (y * torch.tensor(seed)).sum().backward()
    model = _max_pool_model(list(x.shape), False, kernel_shape=[kernel] * 2, strides=[stride] * 2,
                            pads=[padding] * 4, dilations=[dilation] * 2, ceil_mode=int(ceil))
    graph = vjp.build_vjp(model)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    assert np.abs(got - xt.grad.numpy()).max() <= 1e-6 * np.abs(xt.grad.numpy()).max()


def _conv_relu_model(w: np.ndarray, x_shape: list[int]) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_relu_mask_is_one_for_positive_denormals() -> None:
    """16 channels (onnxruntime's blocked layout) and activations scaled into the denormals: the
    mask is 1 wherever the Relu's output is positive, as torch's (y > 0)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    x = (rng.standard_normal((1, 16, 12, 12)) * 1e-41).astype(np.float32)  # conv outputs ~1e-40
    xt = torch.tensor(x, requires_grad=True)
    r = F.relu(F.conv2d(xt, torch.tensor(w), padding=1))
    tiny = (r > 0) & (r < 1.18e-38)
    assert int(tiny.sum()) > 100  # the case is the one meant: many positive denormal outputs
    y = F.conv2d(r, torch.tensor(w), padding=1)
    seed = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    (y * torch.tensor(seed)).sum().backward()
    graph = vjp.build_vjp(_conv_relu_model(w, list(x.shape)))
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    want = xt.grad.numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_relu_step_values() -> None:
    """The two HardSigmoids on edge values, scalar and vectorised lengths: exactly (y > 0)."""
    from rfgraph.semantics.elementwise import STEP_GAIN

    values = np.array([0.0, -0.0, 1e-45, 1e-44, 1e-40, 3.3e-39, 3.4e-39, 1.17e-38, 1e-30, 1.0, 3.4e38, np.inf],
                      np.float32)
    for n in (len(values), 4099):
        v = np.resize(values, n)
        nodes = [helper.make_node("HardSigmoid", ["y"], ["a"], alpha=STEP_GAIN, beta=0.0),
                 helper.make_node("HardSigmoid", ["a"], ["m"], alpha=STEP_GAIN, beta=0.0)]
        graph = helper.make_graph(nodes, "step", [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                                  [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"y": v})[0]
        assert np.array_equal(m, (v > 0).astype(np.float32))


def test_strided_residual_net_equals_torch() -> None:
    """Strided 3x3 and 1x1 convolutions (ConvTranspose in the gradient, then the 1x1 AveragePool)
    meeting a residual sum and ReLU masks, 32 channels: the gradient equals torch's."""
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(cin, cout, 3, 2, 1)
            self.b = torch.nn.Conv2d(cout, cout, 3, 1, 1)
            self.down = torch.nn.Conv2d(cin, cout, 1, 2)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return F.relu(self.b(F.relu(self.a(x))) + self.down(x))

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(), Block(16, 32), Block(32, 32)).eval()
    graph = _equals_autograd(net, torch.randn(1, 3, 32, 32), 1e-5)
    assert sum(n.op_type == "AveragePool" for n in graph.model.graph.node) == 4


def _equals_autograd(net: torch.nn.Module, x: torch.Tensor, tol: float) -> vjp.VJPGraph:
    """The gradient graph of ``net`` exported by torch (opset 17); its input gradient for a random
    seed equals torch autograd's within ``tol`` of the largest, and the output it computes on the
    way (what the folds into the weights must leave unchanged) torch's forward."""
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    graph = vjp.build_vjp(onnx.load_from_string(f.getvalue()), emit_output=True)
    xt = x.clone().requires_grad_(True)
    y = net(xt)
    seed = torch.randn(y.shape)
    (y * seed).sum().backward()
    got, y_got = vjp.session(graph).run([graph.grad_name, graph.output_name],  # type: ignore[attr-defined]
                                        {graph.input_name: x.numpy(), graph.seed_name: seed.numpy()})
    assert np.abs(got - xt.grad.numpy()).max() <= tol * np.abs(xt.grad.numpy()).max()
    assert np.abs(y_got - y.detach().numpy()).max() <= 1e-5 * np.abs(y.detach().numpy()).max()
    return graph


def test_tap_order_is_row_major() -> None:
    """A window whose every cell is tied: the gradient goes to its first cell (row-major), for
    each tap order a 3-D window can have."""
    for kernel in itertools.permutations([1, 2, 3]):
        x = np.zeros([1, 1, 4, 4, 4], np.float32)
        model = _max_pool_model(list(x.shape), False, kernel_shape=list(kernel), strides=list(kernel))
        graph = vjp.build_vjp(model)
        y_shape = [1, 1] + [4 // k for k in kernel]
        got = vjp.input_gradient(graph, vjp.session(graph), x, np.ones(y_shape, np.float32))
        want = np.zeros_like(x)
        for u in itertools.product(*(range(n) for n in y_shape[2:])):
            want[(0, 0, *(a * k for a, k in zip(u, kernel)))] = 1.0
        assert np.array_equal(got, want)



class _ReluPool(torch.nn.Module):
    """Conv, ReLU, MaxPool, Conv with small integer weights: exact sums, so tied maxima (zeros
    and equal positives) come out the same in torch and onnxruntime; ``shared``: the ReLU's
    output also goes on to the sum."""

    def __init__(self, kernel: int, stride: int, pad: int, ceil: bool, shared: bool) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(kernel * 100 + stride * 10 + pad)
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.Conv2d(16, 16, 1)
        for conv in (self.a, self.b):
            conv.weight.data = torch.randint(-2, 3, conv.weight.shape, generator=gen).float()
            conv.bias.data = torch.randint(-2, 3, conv.bias.shape, generator=gen).float()
        self.pool = torch.nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil)
        self.shared = shared

    def forward(self, x):  # type: ignore[no-untyped-def]
        r = F.relu(self.a(x))
        y = self.b(self.pool(r))
        return y + r.mean(dim=(2, 3), keepdim=True) if self.shared else y


@pytest.mark.parametrize(("kernel", "stride", "pad", "ceil", "shared", "moved"), [
    (3, 2, 1, False, False, True), (2, 2, 0, False, False, True), (3, 1, 1, False, False, True),
    (3, 2, 1, True, False, False), (3, 2, 1, False, True, False)])
def test_max_pool_of_a_relu_runs_before_it(kernel: int, stride: int, pad: int, ceil: bool, shared: bool,
                                            moved: bool) -> None:
    """MaxPool(Relu(z)) is run as Relu(MaxPool(z)) where the pool alone reads the ReLU and has no
    ceil_mode windows: output and gradient equal torch's on inputs with many tied maxima, and the
    pool reads the convolution exactly where moved."""
    net = _ReluPool(kernel, stride, pad, ceil, shared).eval()
    x = torch.randint(-2, 3, (2, 3, 15, 13), generator=torch.Generator().manual_seed(1)).float()
    graph = _equals_autograd(net, x, 1e-6)
    forward = [n for n in graph.model.graph.node if not n.name.startswith("rfgraph_vjp/")]
    producers = {o: n.op_type for n in forward for o in n.output}
    pool = next(n for n in forward if n.op_type == "MaxPool")
    assert producers[pool.input[0]] == ("Conv" if moved else "Relu")
    assert any(n.op_type == "Relu" and n.input[0] == pool.output[0] for n in forward) == moved


def _backward_nodes(graph: vjp.VJPGraph) -> list[str]:
    return [n.op_type for n in graph.model.graph.node if n.name.startswith("rfgraph_vjp/")]


def test_torch_gelu_equals_autograd() -> None:
    """nn.GELU as torch exports it (Div, Erf, Add, Mul, Mul) between two linear layers."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()
    graph = _equals_autograd(net, torch.randn(5, 16) * 2, 1e-6)
    forward = [n.op_type for n in graph.model.graph.node if not n.name.startswith("rfgraph_vjp/")]
    assert "Erf" in forward and "Div" not in forward  # x / sqrt(2) folded into the first layer
    assert "Mul" in forward and forward.count("Mul") == 1  # x * (erf + 1); its 0.5 in the second layer
    assert _backward_nodes(graph).count("Exp") == 1  # erf' once, no pass back through Erf and Div


def _x_to_y(nodes: list[onnx.NodeProto], x_shape: list[int], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """An opset-17 model of ``nodes`` from float input x (of ``x_shape``) to output y."""
    graph = helper.make_graph(nodes, "x_to_y", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gelu_model(variant: str) -> onnx.ModelProto:
    """s x (c + erf(x/k)) written the ways exporters do: ``torch`` Div then x * (erf + c) then *s;
    ``keras`` (s x) * (c + erf(x * 1/k)) with the operands swapped; ``shared`` also adds erf's
    output to the result (a second consumer of Erf); ``broadcast`` multiplies by a per-row x."""
    k, c, s = 1.7, 0.8, 0.5
    consts = {"k": k, "ik": 1 / k, "c": c, "s": s}
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items()]
    if variant == "keras":
        nodes = [helper.make_node("Mul", ["x", "s"], ["h"]), helper.make_node("Mul", ["x", "ik"], ["u"]),
                 helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["c", "e"], ["a"]),
                 helper.make_node("Mul", ["a", "h"], ["y"])]
    else:
        nodes = [helper.make_node("Div", ["x", "k"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
                 helper.make_node("Add", ["e", "c"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                 helper.make_node("Mul", ["m", "s"], ["y" if variant == "torch" else "z"])]
        if variant == "shared":
            nodes.append(helper.make_node("Add", ["z", "e"], ["y"]))
    return _x_to_y(nodes, [3, 40], inits)


@pytest.mark.parametrize("variant", ["torch", "keras", "shared"])
def test_gelu_product_closed_form(variant: str) -> None:
    """The gradient of s x (c + erf(x/k)) (plus erf(x/k) for ``shared``) equals the closed form
    in float64; torch's and Keras' orders take 7 backward nodes (9 op by op)."""
    k, c, s = 1.7, 0.8, 0.5
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 40)) * 3).astype(np.float32)
    seed = rng.standard_normal((3, 40)).astype(np.float32)
    graph = vjp.build_vjp(_gelu_model(variant))
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    xd = x.astype(np.float64)
    slope = 2 / np.sqrt(np.pi) * np.exp(-(xd / k) ** 2) / k
    want = s * (c + np.vectorize(erf)(xd / k)) + s * xd * slope
    if variant == "shared":
        want = want + slope
    want = want * seed
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
    if variant != "shared":
        assert len(_backward_nodes(graph)) == 7


def _scaled_product_model(op: str, readers: int) -> onnx.ModelProto:
    """y = (x * 0.37) @ W (MatMul, 3-D x) or Gemm(x * 0.37, W, alpha=1.5); ``readers`` 2 also adds
    the scaled tensor to the output (a second reader: not folded)."""
    rng = np.random.default_rng(1)
    shape = [2, 5, 6] if op == "MatMul" else [5, 6]
    w = rng.standard_normal((6, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.37, np.float32), "s"), numpy_helper.from_array(w, "w")]
    attrs = {"alpha": 1.5} if op == "Gemm" else {}
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node(op, ["m", "w"], ["p" if readers == 2 else "y"], **attrs)]
    if readers == 2:
        nodes.append(helper.make_node("Add", ["p", "m"], ["y"]))
    return _x_to_y(nodes, shape, inits)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("readers", [1, 2])
def test_scaling_folded_into_the_next_product(op: str, readers: int) -> None:
    """A Mul by a scalar constant read only by a MatMul/Gemm with a constant weight is folded into
    it (no Mul left forward nor backward); the gradient equals the closed form either way."""
    model = _scaled_product_model(op, readers)
    w = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    alpha = 1.5 if op == "Gemm" else 1.0
    rng = np.random.default_rng(2)
    x = rng.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    seed = rng.standard_normal(x.shape[:-1] + (6,)).astype(np.float32)
    graph = vjp.build_vjp(model)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    want = 0.37 * alpha * seed.astype(np.float64) @ w.T + (0.37 * seed if readers == 2 else 0.0)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    muls = sum(n.op_type == "Mul" for n in graph.model.graph.node)
    assert (muls == 0) == (readers == 1)


def test_attention_key_gradient_without_transposes() -> None:
    """softmax(Q K^T) V with K^T a Transpose of the last two axes: dK comes as (dS^T Q) with the
    transposes left to cancel, and the gradient equals torch's autograd."""
    torch.manual_seed(4)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))

        def forward(self, x):  # type: ignore[no-untyped-def]
            scores = self.q(x) @ self.k(x).transpose(-2, -1) / 8 ** 0.5
            return torch.softmax(scores, -1) @ self.v(x)

    graph = _equals_autograd(Attention().eval(), torch.randn(2, 7, 8), 1e-6)
    backward = [n for n in graph.model.graph.node if n.name.startswith("rfgraph_vjp/")]
    produced = {o: n for n in backward for o in n.output}
    pairs = [n for n in backward if n.op_type == "Transpose" and n.input[0] in produced
             and produced[n.input[0]].op_type == "Transpose"]
    assert pairs  # the key's gradient transposed twice: a pair onnxruntime drops


def _layer_norm_net(readers: str) -> torch.nn.Module:
    """Linear, LayerNorm (random scale and shift), then ``readers``: ``one`` Linear, ``three``
    Linears (a transformer's q, k, v), ``other`` a Linear and the norm's output itself (not folded),
    ``no_bias`` a Linear without bias."""
    torch.manual_seed(5)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.norm = torch.nn.Linear(6, 12), torch.nn.LayerNorm(12)
            self.heads = torch.nn.ModuleList(torch.nn.Linear(12, 5, bias=readers != "no_bias")
                                             for _ in range(3 if readers == "three" else 1))
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 2.0)
                self.norm.bias.uniform_(-1.0, 1.0)

        def forward(self, x):  # type: ignore[no-untyped-def]
            h = self.norm(self.first(x))
            y = sum(head(h) for head in self.heads)
            return y + h[..., :5] if readers == "other" else y

    return Net().eval()


def _norm_nodes(graph: vjp.VJPGraph) -> list[onnx.NodeProto]:
    return [n for n in graph.model.graph.node if n.op_type == "LayerNormalization"]


@pytest.mark.parametrize("readers", ["one", "three", "no_bias", "other"])
@pytest.mark.parametrize("rows", [(4,), (2, 4)])
def test_layer_norm_affine_folded_into_the_next_products(readers: str, rows: tuple[int, ...]) -> None:
    """A LayerNorm read only by linear layers has its scale and shift folded into their weights
    and biases (Gemm on a 2-D input, MatMul and Add on 3-D; a MatMul without an Add has nowhere to
    put the shift): the norm then outputs xhat, which its gradient reads (no mean, no scaling by
    gamma); output and gradient equal torch's either way."""
    graph = _equals_autograd(_layer_norm_net(readers), torch.randn(*rows, 6) * 3, 1e-6)
    norm = _norm_nodes(graph)[0]
    scale = next(i for i in graph.model.graph.initializer if i.name == norm.input[1])
    folded = bool(np.all(numpy_helper.to_array(scale) == 1))
    gemm = any(n.op_type == "Gemm" and norm.output[0] in n.input for n in graph.model.graph.node)
    assert folded == (readers in ("one", "three") or (readers == "no_bias" and gemm))  # a shift needs a bias
    assert (len(norm.input) < 3 or not norm.input[2]) == folded
    assert (len(norm.output) < 2 or not norm.output[1]) == folded  # xhat recomputed from the mean only unfolded


def test_unit_scale_norm_reads_its_output() -> None:
    """A LayerNorm whose scale is ones and shift zero (torch's initial values) read by another op:
    not folded (nothing to fold), its gradient still reads the output as xhat."""
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.LayerNorm(12), torch.nn.Tanh()).eval()
    graph = _equals_autograd(net, torch.randn(3, 6), 1e-6)
    norm = _norm_nodes(graph)[0]
    assert len(norm.output) < 2 or not norm.output[1]  # no mean: xhat is the output


class _Attention(torch.nn.Module):
    """softmax(q k^T / 2) v over 7 tokens, 2 heads of 4; ``shared`` also adds the attention
    weights' row sums to the output (a second reader), ``broadcast`` one weight matrix for every
    head (y @ v with y broadcast over v's heads)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):  # type: ignore[no-untyped-def]
        q, k, v = self.qkv(x).reshape(x.shape[0], 7, 3, 2, 4).permute(2, 0, 3, 1, 4)
        if self.variant == "broadcast":
            q, k = q[:, :1], k[:, :1]
        weights = torch.softmax(q @ k.transpose(-2, -1) / 2, -1)
        out = weights @ v
        return out + weights.sum(-1, keepdim=True) * 0.3 if self.variant == "shared" else out


@pytest.mark.parametrize("variant", ["plain", "shared", "broadcast"])
def test_softmax_row_sum_from_the_attention_product(variant: str) -> None:
    """Softmax's gradient sum(g y) over a row, for attention weights y read only by o = y @ v, is
    taken as sum(go o) over the head width (4 here, not the 7 tokens); a second reader of y or y
    broadcast over v's heads keeps the row sum over y.  Equal to torch's autograd each way."""
    torch.manual_seed(7)
    graph = _equals_autograd(_Attention(variant).eval(), torch.randn(2, 7, 8), 1e-6)
    shapes = vjp.tensor_shapes(graph.model, graph.input_name)[0]
    sums = [n for n in graph.model.graph.node if n.op_type == "ReduceSum" and n.name.startswith("rfgraph_vjp/")]
    widths = {shapes[n.input[0]][-1] for n in sums if n.input[0] in shapes}
    assert (4 in widths and 7 not in widths) == (variant == "plain")


def _prescaled_model(variant: str) -> onnx.ModelProto:
    """t = x W + c, then a GELU of t as Keras writes it, (0.5 t) * (1 + erf(t * k)) (``keras``),
    or torch's t * (erf(t / k) + 1) * 0.5 (``torch``); ``other`` also adds tanh(t) (a reader
    that does not scale t: not folded); then a second product by V."""
    rng = np.random.default_rng(8)
    consts = {"w": rng.standard_normal((6, 10)), "c": rng.standard_normal(10), "v": rng.standard_normal((10, 3)),
              "half": 0.5, "k": 0.7071067811865476, "ik": 1.4142135623730951, "one": 1.0}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "c"], ["t"])]
    if variant == "keras":
        nodes += [helper.make_node("Mul", ["half", "t"], ["h"]), helper.make_node("Mul", ["t", "k"], ["u"]),
                  helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["one", "e"], ["a"]),
                  helper.make_node("Mul", ["h", "a"], ["g"])]
    else:
        nodes += [helper.make_node("Div", ["t", "ik"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["t", "a"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["g0" if variant == "other" else "g"])]
        if variant == "other":
            nodes += [helper.make_node("Tanh", ["t"], ["th"]), helper.make_node("Add", ["g0", "th"], ["g"])]
    nodes.append(helper.make_node("MatMul", ["g", "v"], ["y"]))
    return _x_to_y(nodes, [4, 6], inits)


@pytest.mark.parametrize("variant", ["torch", "keras", "other"])
def test_gelu_scaling_folded_into_its_layer(variant: str) -> None:
    """The GELU's scaling of a linear layer's output t (t / k or t * k) is folded into that layer
    when every other reader of t scales it (directly, or through the GELU's product): output and
    gradient equal the closed form in float64; with a reader that does not scale t, kept."""
    model = _prescaled_model(variant)
    c = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    seed = rng.standard_normal((4, 3)).astype(np.float32)
    t = x.astype(np.float64) @ c["w"] + c["c"]
    phi = 0.5 * (1 + np.vectorize(erf)(t / np.sqrt(2)))
    slope = phi + t * np.exp(-t * t / 2) / np.sqrt(2 * np.pi) + (1 - np.tanh(t) ** 2 if variant == "other" else 0)
    y_want = (t * phi + (np.tanh(t) if variant == "other" else 0)) @ c["v"]
    g_want = ((seed.astype(np.float64) @ c["v"].T) * slope) @ c["w"].T
    graph = vjp.build_vjp(model, emit_output=True)
    got, y_got = vjp.session(graph).run([graph.grad_name, graph.output_name],  # type: ignore[attr-defined]
                                        {"x": x, graph.seed_name: seed})
    assert np.abs(y_got - y_want).max() <= 1e-6 * np.abs(y_want).max()
    assert np.abs(got - g_want).max() <= 1e-6 * np.abs(g_want).max()
    scalings = [n for n in graph.model.graph.node if n.op_type in ("Mul", "Div")
                and not n.name.startswith("rfgraph_vjp/") and any(i in ("u", "h") for i in n.output)]
    assert len(scalings) == {"torch": 0, "keras": 1, "other": 1}[variant]  # keras: 0.5 folded, k kept


class _FewQueries(torch.nn.Module):
    """Attention of ``rows`` query tokens over 9 tokens (2 heads of 4) with separate key and value
    projections laid out per head by reshape and permute, as a transformer's last block on its
    unit's token; ``bias`` on the projections or not; ``softmax`` off: linear attention (where
    q bk, constant along a row, is not cancelled); ``"sdpa"``: torch's fused attention (k^T scaled
    on its way)."""

    def __init__(self, rows: int, bias: bool, softmax: bool | str = True) -> None:
        super().__init__()
        self.rows, self.softmax = rows, softmax
        self.q, self.k, self.v = (torch.nn.Linear(8, 8, bias=bias) for _ in range(3))

    def forward(self, x):  # type: ignore[no-untyped-def]
        b, n, _ = x.shape
        q = self.q(x[:, :self.rows]).reshape(b, self.rows, 2, 4).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, 2, 4).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, 2, 4).permute(0, 2, 1, 3)
        if self.softmax == "sdpa":  # torch exports its scale as sqrt(scale) on q and on k^T
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) * 0.5
            out = (torch.softmax(scores, -1) if self.softmax else scores) @ v  # linear attention: q bk counts
        return out.permute(0, 2, 1, 3).reshape(b, self.rows, 8)


@pytest.mark.parametrize("rows", [1, 2, 9])
@pytest.mark.parametrize(("bias", "softmax"), [(True, True), (False, True), (True, False), (True, "sdpa")])
def test_few_query_rows_regroup_the_key_and_value_products(rows: int, bias: bool, softmax: bool | str) -> None:
    """With few query rows, q k^T and a v are regrouped through the projections ((q Wk^T) x^T,
    (a x) Wv, the biases apart): neither projection runs; output and gradient equal torch's. With
    every token a query (9 rows), no cheaper: left as it is."""
    torch.manual_seed(10)
    graph = _equals_autograd(_FewQueries(rows, bias, softmax).eval(), torch.randn(1, 9, 8), 1e-6)
    regrouped = [n for n in graph.model.graph.node if n.name.startswith("rfgraph_regroup/")]
    products = [n for n in graph.model.graph.node if n.op_type == "MatMul" and any(p in n.name for p in ("/k/", "/v/"))]
    assert bool(regrouped) == (rows < 9)
    assert bool(products) == (rows == 9)  # the key and value projections are gone where regrouped
