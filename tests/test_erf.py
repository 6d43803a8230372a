"""ERF estimation: closed forms, the TRF support property, the FD engine, averaging, the CLI.

Covers: Luo sec. 2.1 (all-ones kernels, no nonlinearity: the 1-D ERF is the coefficient list of
(1 + z + ... + z^(k-1))^n, 2-D is its outer product) in 1-D and 2-D and through weight
re-initialisation; positive weights and inputs: the ERF's support spans exactly the TRF region
[u0, v0] (strides, dilation, pooling); the FD engine against torch autograd and as the fallback of
an op without a VJP rule; determinism under the seed; batched runs equal single runs; image
folders; He/Glorot re-initialisation statistics; re-initialisation of weights held in Constant
nodes (Paddle exports) and the error when there is no weight; CLI formats, files and exit codes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import cli, vjp
from rfgraph.erf import compute_erf, make_seed
from rfgraph.errors import RFGraphError, UnsupportedOpError
from rfgraph.inputs import Reinit, reinitialise


def conv_stack(n: int, k: int, size: int, rank: int = 2, weight: float | None = 1.0,
               act: str | None = None, seed: int = 0, channels: int = 1,
               strides: list[int] | None = None, dilations: list[int] | None = None,
               scale: float = 1.0) -> onnx.ModelProto:
    """n valid convolutions (k per spatial axis), optional activation after each."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    for i in range(n):
        cin = 1 if i == 0 else channels
        shape = (channels, cin) + (k,) * rank
        w = np.full(shape, weight, np.float32) if weight is not None else \
            (scale * np.abs(rng.standard_normal(shape))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        attrs = {}
        if strides:
            attrs["strides"] = [strides[i]] * rank
        if dilations:
            attrs["dilations"] = [dilations[i]] * rank
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], **attrs))
        cur = f"c{i}"
        if act:
            nodes.append(helper.make_node(act, [cur], [f"a{i}"]))
            cur = f"a{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1] + [size] * rank)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def poly_coefficients(k: int, n: int) -> np.ndarray:
    """Coefficients of (1 + z + ... + z^(k-1))^n by repeated polynomial multiplication."""
    c = np.array([1], dtype=np.int64)
    for _ in range(n):
        c = np.convolve(c, np.ones(k, dtype=np.int64))
    return c


@pytest.mark.parametrize("k,n", [(2, 6), (3, 5), (5, 3)])
def test_uniform_kernels_1d_equal_polynomial_coefficients(k: int, n: int) -> None:
    """Luo sec. 2.1, 1-D: exact integer coefficients, placed on the TRF region of the unit."""
    size = n * (k - 1) + 1 + 8
    res = compute_erf(conv_stack(n, k, size, rank=1), runs=2, seed=1)
    (u0, v0), = res.target.region
    assert v0 - u0 + 1 == n * (k - 1) + 1
    expected = np.zeros(size)
    expected[u0:v0 + 1] = poly_coefficients(k, n)
    np.testing.assert_array_equal(res.erf, expected)
    assert res.metrics.erf_size == np.count_nonzero(expected > (1 - 0.9545) * expected.max())


@pytest.mark.parametrize("k,n", [(2, 5), (3, 4)])
def test_uniform_kernels_2d_are_outer_products(k: int, n: int) -> None:
    """Luo sec. 2.1, 2-D: the ERF is the outer product of the 1-D coefficients, and each 1-D
    marginal is the coefficient list times its sum."""
    size = n * (k - 1) + 1 + 6
    res = compute_erf(conv_stack(n, k, size), runs=1)
    c = poly_coefficients(k, n)
    (h0, h1), (w0, w1) = res.target.region
    np.testing.assert_array_equal(res.erf[h0:h1 + 1, w0:w1 + 1], np.outer(c, c))
    np.testing.assert_array_equal(res.erf.sum(axis=1)[h0:h1 + 1], c * c.sum())
    assert res.erf.sum() == c.sum() ** 2  # nothing outside the region


def test_reinit_ones_recovers_closed_form_from_random_weights() -> None:
    """--reinit ones on a random-weight stack: the weights are replaced, the closed form holds."""
    k, n = 3, 4
    size = n * (k - 1) + 1 + 4
    res = compute_erf(conv_stack(n, k, size, rank=1, weight=None, seed=3), runs=1,
                      reinit="ones", weight_runs=2)
    (u0, v0), = res.target.region
    np.testing.assert_array_equal(res.erf[u0:v0 + 1], poly_coefficients(k, n))


def test_zoo_uniform_stack_matches_closed_form() -> None:
    """The model_zoo's Luo 'uniform' stack (built by another module) obeys the same closed form."""
    model_zoo = pytest.importorskip("model_zoo")
    model = model_zoo.build("luo_conv_uniform_5")
    res = compute_erf(model, runs=1, reinit="ones")
    ep = rfgraph.analyze(model)[res.target.output]
    k = (ep.r[0] - 1) // 5 + 1  # r = n (k - 1) + 1
    c = poly_coefficients(k, 5)
    (h0, h1), (w0, w1) = res.target.region
    block = res.erf[max(h0, 0):h1 + 1, max(w0, 0):w1 + 1]
    channels = block.max() / (c.max() ** 2)
    np.testing.assert_allclose(block, np.outer(c, c) * channels, rtol=1e-6)


@pytest.mark.parametrize("spec", [
    {"n": 3, "k": 3, "strides": [1, 2, 1], "dilations": None},
    {"n": 3, "k": 3, "strides": [2, 1, 1], "dilations": [1, 2, 1]},
    {"n": 4, "k": 2, "strides": [1, 2, 2, 1], "dilations": [1, 1, 3, 1]},
])
def test_support_spans_exactly_the_trf_region(spec: dict) -> None:
    """Positive weights, positive inputs, ReLU: every path into the unit carries a positive
    gradient, so the ERF's nonzero set spans exactly [u0, v0] of the TRF pass on each axis."""
    n, k = spec["n"], spec["k"]
    model = conv_stack(n, k, 48, weight=None, act="Relu", channels=2, seed=5,
                       strides=spec["strides"], dilations=spec["dilations"])
    res = compute_erf(model, runs=3, inputs="uniform", seed=2)
    region = res.target.region
    assert all(0 <= u0 and v0 < 48 for u0, v0 in region)  # fully inside: no clipping
    nz = np.nonzero(res.erf)
    for axis, (u0, v0) in enumerate(region):
        assert (nz[axis].min(), nz[axis].max()) == (u0, v0)
    if spec["dilations"] is None:  # no holes: the support is the whole box
        (h0, h1), (w0, w1) = region
        assert np.all(res.erf[h0:h1 + 1, w0:w1 + 1] > 0)


def test_support_with_pooling_and_signed_sum() -> None:
    """AveragePool and a residual Add keep the support equal to the TRF box; the signed ERF of a
    positive network equals the absolute one."""
    rng = np.random.default_rng(7)
    w1 = np.abs(rng.standard_normal((2, 1, 3, 3))).astype(np.float32)
    w2 = np.abs(rng.standard_normal((2, 2, 3, 3))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "p"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 32, 32])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w1, "w1"),
                                             numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    res = compute_erf(model, runs=2, inputs="uniform", unit=(7, 7))
    signed = compute_erf(model, runs=2, inputs="uniform", unit=(7, 7), absolute=False)
    (h0, h1), (w0, w1) = res.target.region
    box = np.zeros_like(res.erf, bool)
    box[h0:h1 + 1, w0:w1 + 1] = True
    assert np.all(res.erf[box] > 0) and np.all(res.erf[~box] == 0)
    np.testing.assert_allclose(signed.erf, res.erf, rtol=1e-6)


# --------------------------------------------------------------------------------- FD engine

def _torch_model(net: torch.nn.Module, shape: tuple) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.randn(*shape),), f, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


class Wobbly(torch.nn.Module):
    """A network with a bicubic GridSample (no VJP rule; a fixed smooth warp) after reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.c1 = torch.nn.Conv2d(2, 3, 3)
        self.c2 = torch.nn.Conv2d(3, 2, 3, stride=2)
        base = torch.linspace(-0.9, 0.9, 16)
        grid = torch.stack(torch.meshgrid(base, base, indexing="xy"), dim=-1)[None]
        self.register_buffer("grid", grid + 0.05 * torch.sin(3 * grid.flip(-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.grid_sample(self.c1(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")),
                                            self.grid, mode="bicubic", align_corners=False)
        return self.c2(y)


def test_fd_engine_is_the_fallback_and_matches_autograd() -> None:
    """--method grad names the node and op and offers fd; --method fd matches torch autograd."""
    net = Wobbly().eval()
    model = _torch_model(net, (1, 2, 16, 16))
    with pytest.raises(UnsupportedOpError) as info:
        compute_erf(model, runs=1)
    assert "--method fd" in str(info.value)
    res = compute_erf(model, runs=3, method="fd", seed=4, absolute=False)
    # oracle: the same inputs (same seed and draw order), torch autograd, the same seed tensor
    rng = np.random.default_rng(4)
    ref = np.zeros(res.erf.shape)
    seed = torch.tensor(make_seed(res.target, 1))
    for _ in range(3):
        x = torch.tensor(rng.standard_normal((1, 2, 16, 16)).astype(np.float32), requires_grad=True)
        (net(x) * seed).sum().backward()
        ref += x.grad.numpy()[0].sum(axis=0) / 3
    assert np.abs(res.erf - ref).max() / np.abs(ref).max() < 2e-3


def test_fd_and_grad_agree_on_a_smooth_network() -> None:
    """Tanh network: the two engines give the same averaged ERF (FD in float32: 1e-3)."""
    model = conv_stack(3, 3, 20, weight=None, act="Tanh", channels=3, seed=9, scale=0.15)
    a = compute_erf(model, runs=2, method="grad", seed=5)
    b = compute_erf(model, runs=2, method="fd", seed=5)
    assert np.abs(a.erf - b.erf).max() / a.erf.max() < 1e-3
    assert np.all(b.erf[~(a.erf > 0)] == 0)  # FD perturbs only the TRF


# --------------------------------------------------------------------------------- averaging

def test_deterministic_under_seed_and_batch_independent() -> None:
    """Same seed: identical maps; another seed: a different map; batch 1 == batch 8."""
    model = _torch_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                             torch.nn.Conv2d(4, 4, 3, padding=1, stride=2)),
                         (1, 3, 16, 16))
    a = compute_erf(model, runs=8, seed=11, batch=8)
    b = compute_erf(model, runs=8, seed=11, batch=8)
    c = compute_erf(model, runs=8, seed=12, batch=8)
    d = compute_erf(model, runs=8, seed=11, batch=1)
    assert a.batch == 8 and d.batch == 1
    np.testing.assert_array_equal(a.erf, b.erf)
    assert not np.allclose(a.erf, c.erf)
    np.testing.assert_allclose(a.erf, d.erf, rtol=1e-5, atol=1e-7)


def test_batch_baked_into_reshape_falls_back_or_rebatches_correctly() -> None:
    """A model exported with a fixed batch (Reshape constants with 1): batched runs still equal
    single runs (the engine rewrites the batch or falls back to batch 1)."""
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.c = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(x)
            return torch.tanh(y.reshape(1, 4, -1)).reshape(1, 4, 8, 8)

    f = io.BytesIO()
    torch.onnx.export(Flat().eval(), (torch.randn(1, 3, 8, 8),), f, dynamo=False,
                      input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(f.getvalue())
    a = compute_erf(model, runs=4, seed=3, batch=4)
    b = compute_erf(model, runs=4, seed=3, batch=1)
    np.testing.assert_allclose(a.erf, b.erf, rtol=1e-5, atol=1e-7)


def test_time_major_output_with_batch_not_first() -> None:
    """A CRNN-style output (W, N, C, H) has its batch on axis 1: the seed takes the output's own
    shape (it used to be built as (1, ...) and onnxruntime refused it), grad = finite differences,
    and the gradient's support is the centre unit's TRF."""
    w = numpy_helper.from_array(np.full((2, 1, 3, 3), 0.1, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["y"], perm=[3, 0, 1, 2])]
    graph = helper.make_graph(nodes, "tm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 1, 2, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grad = compute_erf(model, runs=3, seed=0)
    fd = compute_erf(model, runs=3, seed=0, method="fd")
    np.testing.assert_allclose(grad.erf, fd.erf, rtol=1e-3, atol=1e-6)
    support = np.argwhere(grad.erf > 0)
    (h0, h1), (w0, w1) = grad.target.region
    assert support.min(0).tolist() == [h0, w0] and support.max(0).tolist() == [h1, w1]


def test_image_folder_inputs(tmp_path: Path) -> None:
    """PNG/JPEG images are resized, scaled to [0, 1], normalised, and averaged like random inputs."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for i, suffix in enumerate([".png", ".jpg", ".png"]):
        arr = (rng.random((20 + i, 30, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}{suffix}")
    model = _torch_model(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Tanh()),
                         (1, 3, 16, 16))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    res = compute_erf(model, runs=3, inputs=str(tmp_path), mean=mean, std=std, seed=0)
    net_out = rfgraph.vjp.build_vjp(model, "y", (1, 3, 16, 16))
    sess = rfgraph.vjp.session(net_out)
    ref = np.zeros((16, 16))
    for path in sorted(tmp_path.iterdir()):
        img = Image.open(path).convert("RGB").resize((16, 16), Image.BILINEAR)
        x = (np.asarray(img, np.float32) / 255.0).transpose(2, 0, 1)
        x = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
        g = rfgraph.vjp.input_gradient(net_out, sess, x[None], make_seed(res.target, 1))
        ref += np.abs(g[0]).sum(axis=0) / 3
    np.testing.assert_allclose(res.erf, ref, rtol=1e-5)


@pytest.mark.parametrize("how,expected_var", [("he", lambda fi, fo: 2 / fi),
                                              ("glorot", lambda fi, fo: 2 / (fi + fo))])
def test_reinitialisation_variances(how: str, expected_var) -> None:
    """He / Glorot draws have the right variance; the graph is unchanged; biases are zeroed."""
    net = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 1))
    model = _torch_model(net, (1, 32, 8, 8))
    new = reinitialise(model, Reinit(how), np.random.default_rng(0))
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in model.graph.node]
    weights = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    conv = new.graph.node[0]
    w, b = weights[conv.input[1]], weights[conv.input[2]]
    fan_in, fan_out = 32 * 9, 64 * 9
    assert abs(w.var() / expected_var(fan_in, fan_out) - 1) < 0.05
    assert np.all(b == 0)


def constant_weight_model(weights: bool = True) -> onnx.ModelProto:
    """Paddle-style: conv weights and bias in Constant nodes, no initializer; no nonlinearity, so
    the |gradient| does not depend on the input.  A float Constant also feeds a Mul (not a
    weight slot).  ``weights=False``: AveragePool and that Mul only."""
    rng = np.random.default_rng(4)

    def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))

    scale = const("s", np.array(2.0, np.float32))
    if weights:
        nodes = [const("w1", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
                 const("b1", np.ones(3, np.float32)),
                 const("w2", rng.standard_normal((2, 3, 3, 3)).astype(np.float32)), scale,
                 helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
                 helper.make_node("Conv", ["c1", "w2"], ["c2"]),
                 helper.make_node("Mul", ["c2", "s"], ["y"])]
    else:
        nodes = [scale, helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[3, 3]),
                 helper.make_node("Mul", ["p", "s"], ["y"])]
    graph = helper.make_graph(nodes, "paddle_like", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 12, 12])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reinit_redraws_weights_held_in_constant_nodes() -> None:
    """He re-init turns the weight Constants into redrawn initializers (bias zeroed; the Mul's
    Constant stays a node) and changes the ERF; input-independent, so only the weights can."""
    model = constant_weight_model()
    assert not model.graph.initializer
    new = reinitialise(model, Reinit.HE, np.random.default_rng(0))
    weights = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    assert set(weights) == {"w1", "b1", "w2"}
    assert [n.output[0] for n in new.graph.node if n.op_type == "Constant"] == ["s"]
    old = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
           if n.op_type == "Constant"}
    assert not np.allclose(weights["w1"], old["w1"]) and not np.allclose(weights["w2"], old["w2"])
    assert np.all(weights["b1"] == 0)
    kept = compute_erf(model, runs=2, seed=1)
    again = compute_erf(model, runs=2, seed=2)
    redrawn = compute_erf(model, runs=2, seed=1, reinit="he")
    np.testing.assert_allclose(again.erf, kept.erf, rtol=1e-5)  # the inputs do not matter
    assert not np.allclose(redrawn.erf, kept.erf, rtol=1e-2)


def test_reinit_without_any_weight_raises() -> None:
    """Nothing to redraw: a clear error instead of silently keeping the model."""
    from rfgraph.errors import RFGraphError

    with pytest.raises(RFGraphError, match="nothing would be re-initialised"):
        reinitialise(constant_weight_model(weights=False), Reinit.HE, np.random.default_rng(0))
    with pytest.raises(RFGraphError, match="--reinit ones"):
        compute_erf(constant_weight_model(weights=False), runs=1, reinit="ones")


# ----------------------------------------------------------------------------------- 1-D, CLI

def test_one_dimensional_input_metrics_per_axis() -> None:
    """A 1-D input: the map is 1-D and every per-axis metric has one entry."""
    model = _torch_model(torch.nn.Sequential(torch.nn.Conv1d(2, 3, 5, padding=2), torch.nn.ReLU(),
                                             torch.nn.Conv1d(3, 3, 3, dilation=2, padding=2)),
                         (1, 2, 40))
    res = compute_erf(model, runs=4)
    m = res.metrics
    assert res.erf.shape == (40,)
    assert len(m.centre_of_mass) == len(m.marginal_std) == len(m.trf_size) == 1
    assert m.trf_size == (9,)  # eq. (2): 1 + 4 + 2 * 2
    assert m.luo_count == m.erf_size


def test_cli_formats_and_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """table/markdown/csv/json print the metrics; --npy equals the API; --png writes a PNG."""
    model = conv_stack(3, 3, 24, weight=None, act="Relu", channels=2, seed=4)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    npy, png = tmp_path / "e.npy", tmp_path / "e.png"
    assert cli.main(["erf", str(path), "--runs", "4", "--seed", "3", "--format", "json",
                     "--npy", str(npy), "--png", str(png), "--log", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    api = compute_erf(model, runs=4, seed=3)
    np.testing.assert_array_equal(np.load(npy), api.erf)
    assert data["metrics"]["erf_size"] == pytest.approx(api.metrics.erf_size)
    assert data["trf_region"] == [list(r) for r in api.target.region]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fmt, marker in (("table", "erf_size"), ("markdown", "| erf_size"), ("csv", "metric,value")):
        assert cli.main(["erf", str(path), "--runs", "2", "--format", fmt, "--no-progress"]) == 0
        assert marker in capsys.readouterr().out


def test_cli_unsupported_op_exits_2_with_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """An op without a VJP rule: exit code 2, one line naming node and op and suggesting fd."""
    path = tmp_path / "w.onnx"
    onnx.save(_torch_model(Wobbly(), (1, 2, 16, 16)), path)
    capsys.readouterr()  # drop the exporter's warnings
    assert cli.main(["erf", str(path), "--runs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GridSample" in err[0] and "--method fd" in err[0]


def _nhwc_model(extra_input: bool = False) -> onnx.ModelProto:
    """x (1, 16, 16, 1) channels-last -> Transpose -> 3x3 conv (pad 1) [+ a second input]."""
    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.2, np.float32), "w")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y" if not extra_input else "c"], pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 1])]
    if extra_input:
        nodes.append(helper.make_node("Add", ["c", "bias"], ["y"]))
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "nhwc", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cli_layout_input_and_shape_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``rfgraph erf`` takes the model options of every command: --layout NHWC puts the map on
    H, W (its support is the 3x3 TRF of the centre unit); --input-shape naming an input other
    than the one differentiated, and a model with a second data input, are refused in one line."""
    path = tmp_path / "nhwc.onnx"
    onnx.save(_nhwc_model(), path)
    assert cli.main(["erf", str(path), "--layout", "NHWC", "--runs", "1", "--format", "json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trf_region"] == [[6, 8], [6, 8]]  # centre unit (7, 7) of 16 x 16
    assert cli.main(["erf", str(path), "--input", "x", "--input-shape", "y:1x16x16x1", "--runs", "1"]) == 2
    assert "--input-shape names 'y'" in capsys.readouterr().err
    two = tmp_path / "two.onnx"
    onnx.save(_nhwc_model(extra_input=True), two)
    assert cli.main(["erf", str(two), "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inputs besides 'x' (bias)" in err[0]


def _normalised(op: str, scale: np.ndarray | None = None, nhwc: bool = False,
                identity: bool = False) -> onnx.ModelProto:
    """x [1, 1, 8, 8] -> 3x3 conv to 4 channels -> ``op`` over the channels (LayerNormalization
    with ``scale``; ``nhwc``: on the channels-last map, transposed back; ``identity``: then an
    Identity, as Paddle exports end)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]))
    src, dst = ("ct", "n") if nhwc else ("c", "y")
    if op == "Softmax":
        nodes.append(helper.make_node("Softmax", [src], [dst], axis=-1 if nhwc else 1))
    else:
        inits.append(numpy_helper.from_array(scale.astype(np.float32), "s"))
        nodes.append(helper.make_node("LayerNormalization", [src, "s"], [dst], axis=-1 if nhwc else 1))
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2]))
    if identity:
        nodes[-1].output[0] = "before_identity"
        nodes.append(helper.make_node("Identity", ["before_identity"], ["y"]))
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, scale, nhwc, identity", [
    ("Softmax", None, False, False), ("Softmax", None, True, False),
    ("LayerNormalization", np.full(4, 0.5), True, False), ("Softmax", None, False, True)],
    ids=["softmax", "softmax-nhwc", "layernorm-nhwc", "softmax-identity"])
def test_channel_sum_of_a_constant_sum_is_refused(op: str, scale: np.ndarray | None, nhwc: bool,
                                                  identity: bool) -> None:
    """The channel sum of a Softmax over channels is 1, of a LayerNorm with one scale for all
    channels is constant (the normalised values sum to 0): its gradient is rounding noise
    (oracle: the gradient graph itself, < 1e-5 of one channel's), so the ERF of that tensor is
    refused, naming the node and --channel; one channel is computed without a note.  Where rfgraph
    chose the tensor (no output given) it takes the normalisation's input instead, with a note:
    the same map as that tensor's own ERF (the same positions; NHWC or not).  Through an Identity
    too (a Paddle classifier's output: it gave rounding noise, 1e-11 at the centre, without a note)."""
    model = _normalised(op, scale, nhwc, identity)
    with pytest.raises(RFGraphError, match=rf"comes from {op} .* rounding noise.*--channel"):
        compute_erf(model, "y", runs=2)
    stepped = compute_erf(model, runs=2)
    before = "ct" if nhwc else "c"
    assert stepped.target.output == before and any(f"that of its input '{before}'" in n for n in stepped.notes)
    np.testing.assert_array_equal(stepped.erf, compute_erf(model, before, runs=2).erf)
    one = compute_erf(model, runs=2, channel=1)
    assert not one.notes
    graph = vjp.build_vjp(model)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    seed = np.zeros((1, 4, 8, 8), np.float32)
    seed[0, :, 4, 4] = 1.0
    summed = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    seed[0, [0, 2, 3], 4, 4] = 0.0
    assert np.abs(summed).max() < 1e-5 * np.abs(vjp.input_gradient(graph, vjp.session(graph), x, seed)).max()


def test_rfgraphs_choice_steps_back_past_a_chain_of_constant_sums() -> None:
    """Two LayerNorms in a row with one scale each (wav2vec2-conformer's encoder ends so): where
    rfgraph chose the tensor it steps back past both to the convolution (was refused: one step
    landed on the first LayerNorm's output, whose sum is constant too), a note per step."""
    model = _normalised("LayerNormalization", np.full(4, 0.5), nhwc=True)
    tail = model.graph.node[-1]  # Transpose n -> y
    tail.input[0] = "n2"
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("LayerNormalization", ["n", "s"], ["n2"],
                                                                        axis=-1))
    stepped = compute_erf(model, runs=2)
    assert stepped.target.output == "ct"
    assert sum("channel sum is constant" in n for n in stepped.notes) == 2
    np.testing.assert_array_equal(stepped.erf, compute_erf(model, "ct", runs=2).erf)


@pytest.mark.parametrize("scale, nhwc", [(np.array([0.5, 1.0, 1.5, 2.0]), True), (np.ones(4), False)],
                         ids=["own-scales", "over-positions-too"])
def test_channel_sum_of_a_layernorm_that_is_no_constant_is_kept(scale: np.ndarray, nhwc: bool) -> None:
    """A trained LayerNorm's scales differ per channel, and one over axis 1 of an NCHW map
    normalises the positions too: the channel sum is no constant; computed (a note says it
    may be small)."""
    result = compute_erf(_normalised("LayerNormalization", scale.reshape(4, 1, 1) if not nhwc else scale, nhwc),
                         runs=2)
    assert result.erf.max() > 0 and any("--channel" in n for n in result.notes)


@pytest.mark.parametrize("method", ["grad", "fd"])
def test_onnxruntime_warnings_stay_off_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                     method: str) -> None:
    """Exporters leave unused initializers (the onnx package's Caffe2 models do); onnxruntime
    warned about each on every session load, straight to the user's stderr.  Now only rfgraph
    speaks there (captured at the file-descriptor level, where onnxruntime writes)."""
    model = _nhwc_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused_blob"))
    path = tmp_path / "unused.onnx"
    onnx.save(model, path)
    assert cli.main(["erf", str(path), "--layout", "NHWC", "--runs", "1", "--method", method, "-q"]) == 0
    err = capfd.readouterr().err
    assert "unused_blob" not in err and "onnxruntime" not in err, err


def _scaled_model(tmp_path: Path) -> Path:
    """y = conv(x) * s: a second data input s, as an RNN state or a sample rate is."""
    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.2, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["y"])]
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 12, 12]),
                                                helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "scaled.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fill_gives_other_inputs_a_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A second input s is refused without a value and measured with --fill s=V; the gradient
    is linear in s, so the map at s=3 is exactly 3x the map at s=1 (float32).  A name that is
    no input, or no number, is refused."""
    path = _scaled_model(tmp_path)
    assert cli.main(["erf", str(path), "--runs", "1", "-q"]) == 2
    assert "--fill NAME=VALUE, e.g. --fill s=0" in capsys.readouterr().err
    one = compute_erf(str(path), runs=2, fill={"s": 1.0}).erf
    three = compute_erf(str(path), runs=2, fill={"s": 3.0}).erf
    assert one.max() > 0 and np.allclose(three, 3 * one, rtol=1e-6, atol=0)
    assert cli.main(["erf", str(path), "--fill", "s=3", "--runs", "2", "--format", "json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["trf_region"] == [[4, 6], [4, 6]]
    for bad, why in (("t=1", "no data input"), ("s=abc", "expected NAME=NUMBER")):
        assert cli.main(["erf", str(path), "--fill", bad, "--runs", "1"]) == 2
        assert why in capsys.readouterr().err


def test_every_erf_command_takes_fill(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """show, report and diagnose --erf compute ERFs too: each takes --fill (the refusal names it,
    so it must exist there) and then draws or measures the map."""
    path = _scaled_model(tmp_path)
    show = ["show", str(path), "--output", "y", "-o", str(tmp_path / "s.png"), "--runs", "1", "-q"]
    assert cli.main(show) == 2 and "--fill" in capsys.readouterr().err
    assert cli.main(show + ["--fill", "s=2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["erf"] is not None
    report = ["report", str(path), "-o", str(tmp_path / "r.html"), "--erf-runs", "1", "--format", "json", "-q"]
    assert cli.main(report + ["--fill", "s=2"]) == 0
    cards = json.loads(capsys.readouterr().out)["erf"]
    assert cards and all(c["error"] is None for c in cards)
    diagnose = ["diagnose", str(path), "--erf", "--erf-runs", "1", "--no-size-range", "--format", "json"]
    assert cli.main(diagnose + ["--fill", "s=2"]) in (0, 1)
    growth = json.loads(capsys.readouterr().out)["erf"]
    assert growth and all(not g["error"] and [p["erf_extent"] for p in g["layers"]] == [[3, 3], [3, 3]]
                          for g in growth)
    assert cli.main(diagnose) in (0, 1)
    assert "inputs besides 'x' (s)" in json.loads(capsys.readouterr().out)["erf"][0]["error"]


def test_diagnose_erfs_read_the_model_as_the_analysis_does(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A batch of 1-D signals (layout NL, as silero-vad takes): diagnose --layout NL --erf passes
    the layout to its ERFs, which then know each layer's TRF (they analysed the model without
    it before, and had no TRF to compare with)."""
    w = numpy_helper.from_array(np.full((2, 1, 5), 0.2, np.float32), "w")
    w2 = numpy_helper.from_array(np.full((2, 2, 3), 0.2, np.float32), "w2")
    nodes = [helper.make_node("Unsqueeze", ["x", "one"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["c"], pads=[2, 2]),
             helper.make_node("Conv", ["c", "w2"], ["y"], pads=[1, 1])]
    graph = helper.make_graph(nodes, "signal", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w, w2, numpy_helper.from_array(np.array([1], np.int64), "one")])
    path = tmp_path / "signal.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    args = ["diagnose", str(path), "--layout", "NL", "--erf", "--erf-runs", "1", "--no-size-range",
            "--format", "json"]
    assert cli.main(args) in (0, 1)
    (growth,) = json.loads(capsys.readouterr().out)["erf"]
    assert not growth["error"] and [p["trf"] for p in growth["layers"]] == [[5], [7]]


def _dead_model(tmp_path: Path) -> Path:
    """conv (3x3, weights 0.2) -> add -100 -> Relu: the unit is 0 for any input in [-1, 1]."""
    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.2, np.float32), "w")
    shift = numpy_helper.from_array(np.array([-100.0], np.float32), "shift")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "shift"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "dead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shift])
    path = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("method", ["grad", "fd"])
def test_an_all_zero_erf_says_so_and_stays_valid_json(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      method: str) -> None:
    """A dead unit (ReLU of a sum 100 below zero): the map is 0 everywhere; the result says why
    and what to try (each engine its own reason), and the undefined moments are '-' in the
    table and null in the JSON (it printed NaN, which JSON parsers reject)."""
    path = _dead_model(tmp_path)
    args = ["erf", str(path), "--runs", "2", "--inputs", "uniform", "--method", method]
    assert cli.main(args + ["--format", "json", "-q"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    data = json.loads(out)
    assert data["metrics"]["centre_of_mass"] == [None, None] and data["metrics"]["erf_size"] == 0
    assert any("0 everywhere" in n and ("--method grad" in n) == (method == "fd") for n in data["notes"])
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "centre_of_mass    - x -" in captured.out and "0 everywhere" in captured.err


def test_json_output_never_holds_nan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Global average pooling: the ERF is flat, so the Gaussian fit's R^2 is undefined (0/0).
    Every command writes JSON through report.json_text, which turns such numbers into null."""
    from rfgraph.report import json_text

    assert json.loads(json_text({"a": [float("nan"), 1.5, (float("inf"),)], "b": {"c": -float("inf")}})) == \
        {"a": [None, 1.5, [None]], "b": {"c": None}}
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "gap",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "gap.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    fit = compute_erf(str(path), runs=1).metrics.gaussian
    assert fit is not None and np.isnan(fit.r2)  # a flat map: R^2 = 0/0
    assert cli.main(["erf", str(path), "--runs", "1", "--format", "json", "-q"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out  # it printed "r2": NaN before
    assert json.loads(out)["metrics"]["gaussian"]["r2"] is None


@pytest.mark.parametrize("name,kwargs", [("zoo:luo_conv_tanh_20", {}), ("zoo:vit_small", {"channel": 0})])
def test_fd_default_step_is_accurate_on_smooth_networks(name: str, kwargs: dict) -> None:
    """The finite-difference cross-check at its default step, against the exact gradient on two
    smooth networks (20 tanh layers; a ViT): within 1e-3 of the map's maximum.  The former
    default (1e-3, round-off dominated in float32) was off by 1.6e-3 and 6.3e-3."""
    kw = {"runs": 2, "seed": 1, "absolute": False, **kwargs}
    exact = compute_erf(name, method="grad", **kw).erf
    fd = compute_erf(name, method="fd", **kw).erf
    assert np.abs(fd - exact).max() < 1e-3 * np.abs(exact).max()


def test_global_map_seeds_its_centre_unit() -> None:
    """A feature map whose field is global (positions mixed by a MatMul over the flattened
    grid, as attention does) keeps its shape: the seed goes to its centre unit along the input's
    spatial axes, not to every position (the analysis tracks no unit axes through the global
    op). Oracle: finite differences of that unit over the whole input (no TRF region)."""
    from rfgraph.erf import compute_erfs
    from tests.graphs import G

    g = G((6, 8), seed=31)
    y = g.relu(g.conv("x", 3, pads=[1] * 4))
    flat = g.node("Reshape", [y, g._init(np.array([1, 2, 48]))])
    mixed = g.node("MatMul", [flat, g._init(g.rng.standard_normal((48, 48)).astype(np.float32) / 7)])
    model = g.model(g.node("Reshape", [mixed, g._init(np.array([1, 2, 6, 8]))]))
    grad = compute_erfs(model, runs=2, absolute=False, seed=4)[0]
    fd = compute_erfs(model, runs=2, absolute=False, seed=4, method="fd")[0]
    assert grad.target.tensor_axes == (2, 3) and grad.target.unit == (2, 3), grad.target
    assert np.abs(grad.erf - fd.erf).max() <= 1e-2 * np.abs(grad.erf).max()
    assert np.count_nonzero(grad.erf) > 0.9 * grad.erf.size  # the pixels reach the unit


def test_a_poor_gaussian_fit_is_said() -> None:
    """A 2-tap conv with dilation 20: the ERF is two pixels 20 apart, which no Gaussian fits (R^2
    ~0; Keras' Xception at 128 read 0.017 with sigma 431 px): a note says its sigma and radius
    mean little. Four 3x3 convs: a near-Gaussian ERF (R^2 > 0.99), no note."""
    from tests.graphs import G

    g = G((32, 32))
    two = compute_erf(g.model(g.conv("x", 2, d=20)), runs=4)
    assert two.metrics.gaussian.r2 < 0.5 and any("Gaussian fit explains little" in n for n in two.notes)
    g = G((32, 32))
    x = "x"
    for _ in range(4):
        x = g.conv(x, 3)
    stack = compute_erf(g.model(x), runs=4)
    assert stack.metrics.gaussian.r2 > 0.99 and not any("Gaussian" in n for n in stack.notes)


def test_a_faint_centre_pixel_is_noted() -> None:
    """A linear 3x3 conv whose centre tap is 1e-4 of the others: the ERF (|W|, its closed form)
    is 1e-4 of its maximum at the unit's centre, so Luo's size, relative to the centre value,
    counts all 9 pixels; a note says so and points to erf_extent (none with a strong centre)."""
    def model(centre: float) -> onnx.ModelProto:
        w = np.ones((1, 1, 3, 3), np.float32)
        w[0, 0, 1, 1] = centre
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "faint",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    faint = compute_erf(model(1e-4), runs=2)
    expected = np.zeros((9, 9))
    expected[3:6, 3:6] = 1.0
    expected[4, 4] = 1e-4
    np.testing.assert_allclose(faint.erf, expected, rtol=1e-6)
    assert faint.metrics.erf_size == 3.0
    assert any("0.0001 of its maximum" in n and "erf_extent" in n for n in faint.notes), faint.notes
    assert not any("of its maximum" in n for n in compute_erf(model(0.5), runs=2).notes)


class _TinyViT(torch.nn.Module):
    """Patch embedding (4x4 patches of a 16x16 image), a class token in front of the 16 patch
    tokens, a position embedding and one attention block with its MLP (as timm's ViT)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, dim, 4, 4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)
        t = t + self.proj(torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1) @ v)
        return t + self.mlp(self.norm2(t))


def test_a_token_of_a_class_token_vit_is_seeded_along_the_unit_axis(tmp_path: Path, capsys) -> None:
    """After the class token the tokens fold (no axis of positions: the field is global), so
    --unit alone is refused with the way out; --unit-axis 1 --unit K seeds token K, its gradient
    equal to torch autograd of the token's channel sum (the ViT ERF studies' unit)."""
    from rfgraph.cli import main
    from rfgraph.erf import GradientEngine, _load, resolve_target
    from rfgraph.options import ModelOptions

    torch.manual_seed(0)
    net = _TinyViT().eval()
    x = torch.randn(1, 3, 16, 16)
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    model = onnx.load_from_string(f.getvalue())
    path = tmp_path / "vit.onnx"
    onnx.save(model, path)
    assert main(["erf", str(path), "--unit", "6", "--runs", "1"]) == 2
    assert "--unit-axis" in capsys.readouterr().err
    assert main(["erf", str(path), "--unit-axis", "1", "--unit", "6", "--runs", "2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["unit"] == [6]
    proto, a, _ = _load(model, ModelOptions())
    target = resolve_target(a, proto, "y", (6,), None, 4, (2, 3), (1, 17, 8), unit_axis=1)
    got = GradientEngine(proto, target, "x", (1, 3, 16, 16), 1)(x.numpy())
    xg = x.clone().requires_grad_(True)
    net(xg)[0, 6].sum().backward()
    want = xg.grad.numpy()
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


def test_a_unit_of_logits_points_to_the_channel_not_the_unit_axis(tmp_path: Path, capsys) -> None:
    """--unit on a vector (logits after global pooling) is refused with the way out for a vector:
    drop --unit, or pick a feature with --channel (--unit-axis would index the features)."""
    from onnx import TensorProto, helper, numpy_helper

    from rfgraph.cli import main
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(nodes, "logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "logits.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["erf", str(path), "--unit", "2", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--channel K" in err and "4 features" in err and "--unit-axis" not in err
    assert main(["erf", str(path), "--channel", "2", "--runs", "1", "--format", "json"]) == 0


def _stack_then_unknown_head(extra_input: bool) -> onnx.ModelProto:
    """``conv_stack(3, 3, 12)`` whose output 'y' feeds an op no runtime knows (a TFLite op tf2onnx
    left, ``TFL_Convolution2DTransposeBias``) [and an Add of a second input after it]: the
    model's only output lies after it."""
    model = conv_stack(3, 3, 12)
    graph = model.graph
    graph.node.append(helper.make_node("TFL_Convolution2DTransposeBias", ["y"], ["up"], name="segment"))
    if extra_input:
        graph.node.append(helper.make_node("Add", ["up", "aux"], ["up2"], name="head"))
        graph.input.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, [1, 1, 6, 6]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("up2" if extra_input else "up", TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("extra_input", [False, True], ids=["one input", "an input read after the stop"])
def test_erf_before_a_stop_runs_on_the_part_that_feeds_it(extra_input: bool) -> None:
    """The analysis stops at an op onnxruntime cannot run, and the model's output lies after it:
    the ERF is that of the last feature map before the stop (a note says so), computed on the
    nodes that feed it, so neither the op nor an input read only after it stops the runs (before:
    onnxruntime refused the whole model, or the other input was refused).  Oracle: uniform 3x3
    kernels, the outer product of the polynomial coefficients (Luo sec. 2.1)."""
    model = _stack_then_unknown_head(extra_input)
    res = compute_erf(model, runs=1)
    assert res.target.output == "c2"  # the end point ``analyze`` shows: the map the Identity 'y' copies
    assert any("lies after the analysis stopped at 'segment'" in n for n in res.notes), res.notes
    c = poly_coefficients(3, 3)
    (h0, h1), (w0, w1) = res.target.region
    np.testing.assert_array_equal(res.erf[h0:h1 + 1, w0:w1 + 1], np.outer(c, c))
    assert res.erf.sum() == c.sum() ** 2
    named = compute_erf(model, "y", runs=1)  # named: the same, without the note
    np.testing.assert_array_equal(named.erf, res.erf)
    assert not any("lies after" in n for n in named.notes)
