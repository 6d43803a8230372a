"""VJP graph builder against independent oracles.

Covers: torch autograd on torch-exported CNNs (conv groups/dilation/strides/pads, ConvTranspose,
MaxPool incl. ceil mode, AveragePool both pad conventions, global pooling, Pad, Slice, Resize
nearest/linear, Concat, Split, broadcasting arithmetic, every listed activation, Gemm, Flatten) and
a ViT-like model (LayerNorm, attention MatMul/Softmax, GELU exact and tanh, Gather, cls token);
onnx.helper graphs of BatchNormalization / LayerNormalization / Gelu / HardSwish / strided Slice /
negative Pad against a torch re-implementation; reflect/edge/wrap Pad, DepthToSpace (DCR, CRD),
SpaceToDepth, LRN and Col2Im against torch (and a torch super-resolution export end to end); float64
central differences on piecewise-linear networks; the error for an op without a rule.  Error
measure: max|g - ref| / max|ref|.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import vjp
from rfgraph.errors import UnsupportedOpError
from rfgraph.finite_diff import FiniteDifference

TOL = 1e-4  # float32, normalised max error


def export(net: torch.nn.Module, x: torch.Tensor, opset: int | None = None) -> onnx.ModelProto:
    """Export with the TorchScript exporter (dynamo=False), as users of rfgraph do."""
    f = io.BytesIO()
    kwargs = {"opset_version": opset} if opset else {}
    torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], **kwargs)
    return onnx.load_from_string(f.getvalue())


def rel_err(g: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(g - ref).max() / np.abs(ref).max())


def vjp_of(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray, output: str | None = None) -> np.ndarray:
    graph = vjp.build_vjp(model, output)
    return vjp.input_gradient(graph, vjp.session(graph), x, seed)


def autograd(net: torch.nn.Module, x: torch.Tensor, seed: torch.Tensor) -> np.ndarray:
    xg = x.clone().requires_grad_(True)
    (net(xg) * seed).sum().backward()
    return xg.grad.numpy()


def check_torch(net: torch.nn.Module, shape: tuple[int, ...], opset: int | None = None,
                gen: int = 0) -> float:
    """Export ``net``, build its VJP graph and compare with autograd under a random seed tensor."""
    torch.manual_seed(gen)
    net = net.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        y = net(x)
    seed = torch.randn_like(y)
    model = export(net, x, opset)
    got = vjp_of(model, x.numpy(), seed.numpy())
    err = rel_err(got, autograd(net, x, seed))
    assert err < TOL, err
    return err


class ConvZoo(torch.nn.Module):
    """Conv variants, pools, padding, slicing, resize, concat/split and several activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.c3 = torch.nn.Conv2d(8, 8, 3, dilation=2, padding=2)
        self.c4 = torch.nn.Conv2d(8, 8, (3, 1), stride=(1, 2), padding=(1, 0))
        self.dw = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.ct = torch.nn.ConvTranspose2d(16, 6, 3, stride=2, padding=1, output_padding=1)
        self.ct2 = torch.nn.ConvTranspose2d(6, 4, 4, stride=2, padding=0, groups=2)
        self.prelu = torch.nn.PReLU(8)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        y = F.max_pool2d(y, 3, 2, 1)
        y = self.prelu(self.bn(self.c2(y)))
        a, b = torch.split(y, [3, 5], dim=1)
        y = torch.cat([F.leaky_relu(a, 0.2), torch.sigmoid(b)], dim=1)
        y = F.hardswish(self.c3(y)) + F.relu6(y) * torch.tanh(y)
        y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - F.avg_pool2d(y, 2, 1, 1)[:, :, 1:, 1:]
        y = F.hardsigmoid(self.dw(F.pad(y, (1, 0, 2, 1)))[:, :, 1:-2, 1:])
        y = F.interpolate(y, scale_factor=2, mode="nearest") + F.interpolate(
            y, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.max_pool2d(y, 3, 2, 0, ceil_mode=True)
        z = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=True)
        z = F.interpolate(z, size=y.shape[-2:], mode="bilinear", align_corners=True)
        y = torch.cat([y / (1.5 + torch.sigmoid(z)), z * y.mean(dim=(2, 3), keepdim=True)], dim=1)
        return self.ct2(F.gelu(self.ct(y)))


class ResNetTiny(torch.nn.Module):
    """Residual basic blocks with BatchNorm (folded by the exporter), global pooling, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, 2, 3), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
        self.b1 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 1, 1), torch.nn.BatchNorm2d(8),
                                      torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 1, 1))
        self.b2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),
                                      torch.nn.Conv2d(16, 16, 3, 1, 1))
        self.down = torch.nn.Conv2d(8, 16, 1, 2)
        self.fc = torch.nn.Linear(16, 5)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = F.relu(y + self.b1(y))
        y = F.relu(self.down(y) + self.b2(y))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return F.log_softmax(self.fc(self.drop(y)), dim=1)


class ViTTiny(torch.nn.Module):
    """A ViT-S-like model: patch embedding, cls token, pos embedding, pre-norm blocks."""

    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2, approx: str = "none") -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, dim, 4, 4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, dim))
        self.blocks = torch.nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(torch.nn.ModuleDict({
                "n1": torch.nn.LayerNorm(dim), "qkv": torch.nn.Linear(dim, 3 * dim),
                "proj": torch.nn.Linear(dim, dim), "n2": torch.nn.LayerNorm(dim),
                "fc1": torch.nn.Linear(dim, 2 * dim), "fc2": torch.nn.Linear(2 * dim, dim)}))
        self.heads, self.approx = heads, approx
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        b, n, d = t.shape
        for blk in self.blocks:
            qkv = blk["qkv"](blk["n1"](t)).reshape(b, n, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            t = t + blk["proj"]((att @ v).transpose(1, 2).reshape(b, n, d))
            t = t + blk["fc2"](F.gelu(blk["fc1"](blk["n2"](t)), approximate=self.approx))
        return self.norm(t)


def test_conv_zoo_matches_autograd() -> None:
    """Every CNN op of the issue in one graph: one wrong rule anywhere breaks the match."""
    check_torch(ConvZoo(), (1, 3, 32, 32))


def test_conv_zoo_opset_17_matches_autograd() -> None:
    """Same network at opset 17 (GELU decomposed into Erf, Resize attributes of opset 13)."""
    check_torch(ConvZoo(), (1, 3, 32, 32), opset=17, gen=1)


def test_resnet_tiny_matches_autograd() -> None:
    """Residual fan-out (gradients summed), folded BN, Dropout, GlobalAveragePool, Gemm."""
    check_torch(ResNetTiny(), (2, 3, 64, 64))


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_vit_tiny_matches_autograd(approx: str) -> None:
    """Attention: both MatMul operands active, Softmax, LayerNorm, Gather/Split of qkv, GELU."""
    check_torch(ViTTiny(approx=approx), (1, 3, 16, 16), opset=20)


def test_vit_opset_17_matches_autograd() -> None:
    """ViT at opset 17: GELU decomposed (Erf, Div, Mul), LayerNormalization op."""
    check_torch(ViTTiny(), (1, 3, 16, 16), opset=17, gen=2)


def test_conv1d_matches_autograd() -> None:
    """1-D inputs: Conv1d with stride/dilation, MaxPool1d, Upsample on one axis."""
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 5, 2, 2), torch.nn.ReLU(),
                              torch.nn.MaxPool1d(2), torch.nn.Conv1d(4, 4, 3, dilation=3),
                              torch.nn.Upsample(scale_factor=3, mode="linear"), torch.nn.Tanh())
    check_torch(net, (1, 2, 64))


def test_transposed_and_dilated_windows_match_autograd() -> None:
    """ConvTranspose whose output_padding exceeds its end pad (rows the Conv never reads),
    dilated ConvTranspose, dilated MaxPool, strided AveragePool without padding."""
    net = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(2, 4, 3, stride=2, padding=0, output_padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2, dilation=2), torch.nn.Tanh(),
        torch.nn.ConvTranspose2d(4, 3, 2, stride=3, dilation=2, padding=1, output_padding=2),
        torch.nn.AvgPool2d(3, stride=2))
    check_torch(net, (1, 2, 11, 13))


def test_intermediate_tensor_as_output() -> None:
    """The seed may sit on any tensor, not only graph outputs (only its ancestors are kept)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    x = torch.randn(1, 3, 12, 12)
    model = export(net, x)
    mid = model.graph.node[1].output[0]  # the Relu output
    seed = torch.randn(1, 4, 10, 10)
    got = vjp_of(model, x.numpy(), seed.numpy(), mid)
    assert rel_err(got, autograd(net[:2], x, seed)) < TOL


# ----------------------------------------------------------------------- onnx.helper graphs

def _model(nodes: list, x_shape: list, inits: dict, dtype: int = TensorProto.FLOAT,
           opset: int = 20) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", dtype, x_shape)],
        [helper.make_tensor_value_info("y", dtype, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _compare(model: onnx.ModelProto, fn, x_shape: tuple, gen: int = 0) -> None:
    rng = np.random.default_rng(gen)
    x = rng.standard_normal(x_shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = fn(xt)
    seed = torch.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32))
    (y * seed).sum().backward()
    got = vjp_of(model, x, seed.numpy())
    assert rel_err(got, xt.grad.numpy()) < TOL


def test_batchnorm_inference_helper_graph() -> None:
    """BatchNormalization (not folded, as torch export would): per-channel scale / sqrt(var+eps)."""
    rng = np.random.default_rng(1)
    p = {k: rng.standard_normal(4).astype(np.float32) for k in ("s", "b", "m")}
    p["v"] = rng.random(4).astype(np.float32) + 0.5
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"], epsilon=1e-3)
    model = _model([node, helper.make_node("Tanh", ["t"], ["y"])], [2, 4, 6, 6], p)
    t = {k: torch.tensor(v) for k, v in p.items()}
    _compare(model, lambda x: torch.tanh(F.batch_norm(x, t["m"], t["v"], t["s"], t["b"],
                                                      False, 0.0, 1e-3)), (2, 4, 6, 6))


def test_layernorm_helper_graph() -> None:
    """LayerNormalization over the last two axes (axis=-2), with affine parameters."""
    rng = np.random.default_rng(2)
    gamma, beta = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((5, 6)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["t"], axis=-2, epsilon=1e-5)
    model = _model([node, helper.make_node("Sigmoid", ["t"], ["y"])], [3, 5, 6],
                   {"g": gamma, "b": beta})
    _compare(model, lambda x: torch.sigmoid(F.layer_norm(x, (5, 6), torch.tensor(gamma),
                                                         torch.tensor(beta), 1e-5)), (3, 5, 6))


def test_gelu_hardswish_hardsigmoid_ops() -> None:
    """Opset-20 Gelu (tanh), HardSwish, HardSigmoid (non-default alpha/beta), Softmax axis 1."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"]),
             helper.make_node("Gelu", ["x2"], ["a"], approximate="tanh"),
             helper.make_node("Div", ["a", "two"], ["a2"]),
             helper.make_node("HardSwish", ["a2"], ["b"]),
             helper.make_node("HardSigmoid", ["b"], ["c"], alpha=0.3, beta=0.4),
             helper.make_node("Mul", ["c", "x"], ["d"]),
             helper.make_node("Softmax", ["d"], ["y"], axis=1)]
    model = _model(nodes, [2, 5, 7], {"two": np.float32(2.0)})

    def fn(x):
        c = torch.clamp(0.3 * F.hardswish(F.gelu(x * 2, approximate="tanh") / 2) + 0.4, 0, 1)
        return torch.softmax(c * x, dim=1)

    _compare(model, fn, (2, 5, 7))


def test_slice_pad_gather_split_broadcast() -> None:
    """Strided and negative-step Slice, cropping Pad, Gather, Split, Sub/Div with both operands
    active and broadcasting, Where, ReduceMean, Expand, Transpose."""
    ints = lambda v: np.array(v, np.int64)
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Pad", ["s", "pads"], ["p"]),
        helper.make_node("Gather", ["p", "gi"], ["g"], axis=1),
        helper.make_node("Split", ["g", "sizes"], ["g1", "g2"], axis=1),
        helper.make_node("ReduceMean", ["g2", "rax"], ["m"], keepdims=1),
        helper.make_node("Sub", ["g1", "m"], ["d"]),
        helper.make_node("Mul", ["m", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "one"], ["den"]),
        helper.make_node("Div", ["d", "den"], ["q"]),
        helper.make_node("Greater", ["q", "zero"], ["c"]),
        helper.make_node("Where", ["c", "q", "g1"], ["w"]),
        helper.make_node("Transpose", ["w"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Expand", ["t", "eshape"], ["y"]),
    ]
    inits = {"st": ints([1, 7]), "en": ints([12, 0]), "ax": ints([2, 3]), "sp": ints([2, -2]),
             "pads": ints([0, 1, -1, 2, 0, 0, 0, -1]), "gi": ints([0, 2, 2, 1, 3]),
             "sizes": ints([3, 2]), "rax": ints([1]), "one": np.float32(1.0),
             "zero": np.float32(0.0), "eshape": ints([2, 1, 1, 1])}
    model = _model(nodes, [1, 3, 12, 9], inits)

    def fn(x):
        s = x[:, :, 1:12:2, :][:, :, :, [7, 5, 3, 1]]
        p = F.pad(s, (2, -1, -1, 0, 1, 0))
        g = p[:, [0, 2, 2, 1, 3]]
        g1, g2 = g[:, :3], g[:, 3:]
        m = g2.mean(dim=1, keepdim=True)
        q = (g1 - m) / (m * m + 1)
        w = torch.where(q > 0, q, g1)
        return w.transpose(1, 2).expand(2, -1, -1, -1)

    _compare(model, fn, (1, 3, 12, 9))


REVERSALS = {  # (start, end, step) along W (9 wide) -> the same selection written in torch
    (-1, -(2**62), -1): lambda x: x.flip(3),  # torch.flip as exported
    (2**62, -(2**62), -2): lambda x: x.flip(3)[..., ::2],  # clamped start, every other column
    (-2, -9, -1): lambda x: x[..., 1:8].flip(3),  # columns 7 down to 1
}


@pytest.mark.parametrize("start,end,step", list(REVERSALS))
def test_reversals_as_exporters_write_them(start: int, end: int, step: int) -> None:
    """torch.flip-style Slice (start -1, end -2^62, step -1) and clamped variants: the gradient
    flows back through the reversal (a backward slice bound of -1 once made it empty)."""
    ints = lambda v: np.array(v, np.int64)
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
    model = _model(nodes, [1, 2, 6, 9], {"st": ints([start]), "en": ints([end]), "ax": ints([3]),
                                         "sp": ints([step])})
    _compare(model, REVERSALS[(start, end, step)], (1, 2, 6, 9))


def test_unsupported_op_names_node_and_suggests_fd() -> None:
    """An op without a rule raises UnsupportedOpError with node, op and the FD alternative."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Trilu", ["r"], ["y"], name="wobble")]
    with pytest.raises(UnsupportedOpError) as info:
        vjp.build_vjp(_model(nodes, [1, 2, 4, 4], {}))
    msg = str(info.value)
    assert "wobble" in msg and "Trilu" in msg and "fd" in msg


# ------------------------------------------------------------------- central differences

def test_piecewise_linear_cnn_matches_float64_central_differences() -> None:
    """ReLU/MaxPool/Conv network: the VJP gradient equals float64 central differences of the
    same torch network (weights shared), for every input element of the centre unit's TRF."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 3, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 3, stride=2)).eval()
    x = torch.randn(1, 2, 20, 20)
    model = export(net, x)
    seed = torch.zeros(1, 2, 4, 4)
    seed[0, :, 2, 2] = 1.0
    got = vjp_of(model, x.numpy(), seed.numpy())
    net64, x64, s64 = net.double(), x.double(), seed.double()
    h = 1e-6
    n = x.numel()
    steps = h * torch.eye(n, dtype=torch.float64).reshape(n, *x.shape[1:])  # one input each
    with torch.no_grad():
        diff = (net64(x64 + steps) - net64(x64 - steps)) * s64
    ref = (diff.reshape(n, -1).sum(dim=1) / (2 * h)).numpy().reshape(x.shape)
    assert rel_err(got, ref) < TOL
    (h0, h1), (w0, w1) = rfgraph.analyze(model)["y"].region((2, 2))
    assert (h0, h1) == (5, 16)  # eqs. (2), (9): r = 12, S = 4, P = 3: u0 = -3 + 2 * 4
    outside = np.ones(x.shape[2:], bool)
    outside[h0:h1 + 1, w0:w1 + 1] = False
    assert np.all(got[..., outside] == 0) and np.all(ref[..., outside] == 0)


def test_float64_graph_matches_fd_engine() -> None:
    """A float64 graph (ops onnxruntime runs in double): VJP equals the FD engine to 1e-7."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((3, 6))
    w2 = rng.standard_normal((6, 2))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Transpose", ["r"], ["u"], perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["u"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Transpose", ["p"], ["v"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["v", "w2"], ["y"])]
    model = _model(nodes, [1, 3, 8, 8], {"w1": w1, "w2": w2}, TensorProto.DOUBLE)
    x = rng.standard_normal((1, 3, 8, 8))
    seed = rng.standard_normal((1, 4, 4, 2))
    got = vjp_of(model, x, seed)
    fd = FiniteDifference(model, "y", "x", (1, 3, 8, 8), (2, 3), None, 1e-6, 8)
    ref = fd.gradient(x, seed)
    assert got.dtype == np.float64
    assert rel_err(got, ref) < 1e-7


# ------------------------------------------------------------------------------ zoo networks

def _pads2d(pads: list[int]) -> tuple[int, ...]:
    """ONNX (b_h, b_w, e_h, e_w) pads as torch F.pad's (b_w, e_w, b_h, e_h)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return tuple(out)


def _torch_op(node: onnx.NodeProto, v: list, a: dict) -> list:
    """One ONNX node evaluated with torch (the autograd oracle for graphs built without torch)."""
    op, x = node.op_type, v[0]
    nd = x.dim() - 2 if x is not None else 0
    pads = list(a.get("pads", [0] * (2 * max(nd, 1))))
    if op == "Conv":
        xp = F.pad(x, _pads2d(pads))
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return [conv(xp, v[1], v[2] if len(v) > 2 else None, a.get("strides", 1),
                     0, a.get("dilations", 1), a.get("group", 1))]
    if op == "ConvTranspose":
        return [F.conv_transpose2d(x, v[1], v[2] if len(v) > 2 else None, a.get("strides", 1),
                                   pads[0], 0, a.get("group", 1))]
    if op == "MaxPool":
        xp = F.pad(x, _pads2d(pads), value=-float("inf"))
        return [F.max_pool2d(xp, a["kernel_shape"], a.get("strides", 1))]
    if op == "AveragePool":
        assert pads[:nd] == pads[nd:]
        return [F.avg_pool2d(x, a["kernel_shape"], a.get("strides", 1), pads[:nd],
                             count_include_pad=bool(a.get("count_include_pad", 0)))]
    if op == "Pad":
        return [F.pad(x, _pads2d([int(p) for p in v[1]]))]
    simple = {
        "Relu": lambda: F.relu(x), "Identity": lambda: x, "Add": lambda: x + v[1],
        "Clip": lambda: torch.clamp(x, *(v[1:3] + [None] * (3 - len(v)))),
        "Mul": lambda: x * v[1], "Div": lambda: x / v[1], "Erf": lambda: torch.erf(x),
        "MatMul": lambda: x @ v[1], "Concat": lambda: torch.cat(v, a["axis"]),
        "Softmax": lambda: torch.softmax(x, a.get("axis", -1)),
        "Reshape": lambda: x.reshape([int(s) for s in v[1]]),
        "Transpose": lambda: x.permute(*a["perm"]),
        "GlobalAveragePool": lambda: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "ReduceMean": lambda: x.mean(dim=tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1))),
        "LayerNormalization": lambda: F.layer_norm(x, v[1].shape, v[1], v[2], a["epsilon"]),
    }
    return [simple[op]()]


def torch_run(model: onnx.ModelProto, x: torch.Tensor) -> torch.Tensor:
    """Evaluate an ONNX graph node by node with torch ops (differentiable in x)."""
    env: dict = {i.name: torch.tensor(numpy_helper.to_array(i)) for i in model.graph.initializer}
    env[model.graph.input[0].name] = x
    for node in model.graph.node:
        attrs = {k.name: helper.get_attribute_value(k) for k in node.attribute}
        outs = _torch_op(node, [env.get(i) for i in node.input], attrs)
        env.update(zip(node.output, outs))
    return env[model.graph.output[0].name]


@pytest.mark.parametrize("name", ["resnet_v1_50:size=64,width=0.25", "inception_v3:size=96,width=0.25",
                                  "vit_small", "torch_unet", "cnn_small", "highresnet:size=48",
                                  "mobilenet_v1:size=64,width=0.25", "torch_mobilenet_v2:size=64"])
def test_zoo_network_matches_torch_autograd(name: str) -> None:
    """Zoo graphs (built without torch): VJP equals autograd through a torch re-evaluation of the
    same graph with the same weights."""
    model_zoo = pytest.importorskip("model_zoo")
    model = model_zoo.build(name)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
    y = torch_run(model, x)
    seed = torch.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32))
    (y * seed).sum().backward()
    got = vjp_of(model, x.detach().numpy(), seed.numpy())
    assert rel_err(got, x.grad.numpy()) < TOL


@pytest.mark.parametrize("size", [5, 3])
def test_lrn_matches_torch_local_response_norm(size: int) -> None:
    """LRN (AlexNet, ZFNet, GoogLeNet) across 7 channels, non-default alpha/beta/bias, then Tanh:
    equals torch's F.local_response_norm (the same window for odd sizes) under autograd."""
    node = helper.make_node("LRN", ["x"], ["t"], size=size, alpha=0.3, beta=0.75, bias=2.0)
    model = _model([node, helper.make_node("Tanh", ["t"], ["y"])], [2, 7, 5, 6], {})
    _compare(model, lambda x: torch.tanh(F.local_response_norm(x, size, alpha=0.3, beta=0.75, k=2.0)),
             (2, 7, 5, 6))


def test_lrn_matches_fd_engine_on_onnxruntimes_kernel() -> None:
    """The same rule against central differences of onnxruntime's own LRN kernel (its semantics,
    not torch's; onnxruntime accepts odd sizes only)."""
    node = helper.make_node("LRN", ["x"], ["y"], size=5, alpha=0.5, beta=0.6, bias=1.5)
    model = _model([node], [1, 6, 5, 5], {})
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 6, 5, 5)).astype(np.float32)
    seed = rng.standard_normal((1, 6, 5, 5)).astype(np.float32)
    fd = FiniteDifference(model, "y", "x", (1, 6, 5, 5), (2, 3), None, 1e-2, 8)
    ref = fd.gradient(x.astype(np.float64), seed)
    assert rel_err(vjp_of(model, x, seed), ref) < 1e-4  # float32 central differences, step 1e-2: 5e-6


@pytest.mark.parametrize("node,what", [
    (helper.make_node("Trilu", ["x"], ["y"], name="wobble"), "no VJP (gradient) rule for this op"),
    (helper.make_node("Pow", ["x", "x"], ["y"], name="tower"), "only a constant scalar exponent has a VJP rule"),
])
def test_refusals_name_the_way_out_once(node: onnx.NodeProto, what: str) -> None:
    """An op without a rule and a rule refusing its inputs end the same way: node, op, why,
    and the finite-difference engine named once (erf.py used to append a second hint)."""
    model = _model([node], [1, 2, 6, 6], {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    with pytest.raises(UnsupportedOpError) as info:
        rfgraph.compute_erf(model, runs=1)
    msg = str(info.value)
    assert msg == f"node '{node.name}' ({node.op_type}): {what}; {vjp.FD_HINT}"


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("edge", "replicate"), ("wrap", "circular")])
def test_copying_pads_match_torch(mode: str, torch_mode: str) -> None:
    """Pad reflect/edge/wrap with asymmetric pads on H and W, then Tanh: the border copies send
    their gradient back to the positions they copy (torch's reflect/replicate/circular)."""
    pads = np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)  # N, C, H, W begins, then ends
    nodes = [helper.make_node("Pad", ["x", "p"], ["t"], mode=mode), helper.make_node("Tanh", ["t"], ["y"])]
    model = _model(nodes, [1, 2, 5, 6], {"p": pads})
    _compare(model, lambda x: torch.tanh(F.pad(x, (1, 3, 2, 1), mode=torch_mode)), (1, 2, 5, 6))


def _depth_to_space_spec(x: torch.Tensor, bs: int, mode: str) -> torch.Tensor:
    """DepthToSpace as the ONNX spec writes it (reshape, transpose, reshape), in torch."""
    n, c, h, w = x.shape
    if mode == "DCR":
        t = x.reshape(n, bs, bs, c // bs ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // bs ** 2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // bs ** 2, h * bs, w * bs)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_matches_torch(mode: str) -> None:
    """Pixel shuffle (both channel orders; CRD is torch's F.pixel_shuffle) after a Sigmoid."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("DepthToSpace", ["s"], ["y"], blocksize=2, mode=mode)]
    model = _model(nodes, [2, 8, 3, 4], {})
    _compare(model, lambda x: _depth_to_space_spec(torch.sigmoid(x), 2, mode), (2, 8, 3, 4))
    if mode == "CRD":
        _compare(model, lambda x: F.pixel_shuffle(torch.sigmoid(x), 2), (2, 8, 3, 4))


def test_space_to_depth_matches_torch() -> None:
    """SpaceToDepth (the ONNX spec's permutation, blocksize 3) then Tanh."""
    nodes = [helper.make_node("SpaceToDepth", ["x"], ["t"], blocksize=3), helper.make_node("Tanh", ["t"], ["y"])]
    model = _model(nodes, [1, 2, 6, 9], {})

    def reference(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = x.reshape(n, c, h // 3, 3, w // 3, 3).permute(0, 3, 5, 1, 2, 4)
        return torch.tanh(t.reshape(n, c * 9, h // 3, w // 3))
    _compare(model, reference, (1, 2, 6, 9))


class SuperResolution(torch.nn.Module):
    """What super-resolution and style-transfer nets export: reflect and replicate padding around
    convolutions, and a pixel shuffle (DepthToSpace) upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 12, 3)
        self.c2 = torch.nn.Conv2d(3, 4, 3)
        self.c3 = torch.nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(F.relu(self.c1(F.pad(x, (1, 1, 1, 1), mode="reflect"))), 2)
        y = torch.tanh(self.c2(F.pad(y, (2, 0, 1, 1), mode="replicate")))
        return self.c3(F.pad(y, (1, 1, 1, 1), mode="reflect"))


def test_torch_super_resolution_export_matches_autograd() -> None:
    """The torch export of reflect/replicate Pad and PixelShuffle, end to end vs autograd."""
    check_torch(SuperResolution(), (1, 3, 10, 12))


class ConvRecurrent(torch.nn.Module):
    """A 1-D conv front end, then a recurrence along its positions (a CRNN or an audio model)."""

    def __init__(self, kind: str, bidirectional: bool, batch_first: bool, layers: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv1d(2, 4, 3, padding=1)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        self.rnn = cls(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, C, L)
        y = y.permute(0, 2, 1) if self.batch_first else y.permute(2, 0, 1)
        out, _ = self.rnn(y)
        return out


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional,batch_first,layers", [(False, False, 1), (True, False, 2), (True, True, 1)])
def test_recurrences_match_autograd(kind: str, bidirectional: bool, batch_first: bool, layers: int) -> None:
    """torch's LSTM/GRU/RNN export as single ONNX nodes; unrolled (rfgraph.unroll) their gradient
    equals autograd: one and two directions, stacked layers, batch-first layout, torch's GRU
    convention (linear_before_reset=1).  These had no gradient rule before (fd only)."""
    check_torch(ConvRecurrent(kind, bidirectional, batch_first, layers), (1, 2, 9))


@pytest.mark.parametrize("op,extra", [("GRU", {"linear_before_reset": 0}), ("LSTM", {"peepholes": True}),
                                      ("LSTM", {"direction": "reverse"}), ("RNN", {"direction": "bidirectional"})])
def test_unrolled_recurrences_match_onnxruntime_kernels(op: str, extra: dict) -> None:
    """Variants torch does not export (GRU with linear_before_reset=0, LSTM peepholes, reverse),
    with initial states and biases: the unrolled gradient equals central differences of
    onnxruntime's own recurrent kernel (its semantics, not ours)."""
    rng = np.random.default_rng(11)
    dirs = 2 if extra.get("direction") == "bidirectional" else 1
    gates, hidden, feat, steps = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 3, 2, 5
    inits = {"W": rng.standard_normal((dirs, gates * hidden, feat)).astype(np.float32),
             "R": rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5,
             "B": rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32),
             "h0": rng.standard_normal((dirs, 1, hidden)).astype(np.float32)}
    ins = ["t", "W", "R", "B", "", "h0"]
    if op == "LSTM":
        inits["c0"] = rng.standard_normal((dirs, 1, hidden)).astype(np.float32)
        ins.append("c0")
        if extra.get("peepholes"):
            inits["P"] = rng.standard_normal((dirs, 3 * hidden)).astype(np.float32)
            ins.append("P")
    attrs = {k: v for k, v in extra.items() if k != "peepholes"}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),  # (1, C, L) -> (L, 1, C)
             helper.make_node(op, ins, ["y"], hidden_size=hidden, **attrs)]
    model = _model(nodes, [1, feat, steps], inits)
    x = rng.standard_normal((1, feat, steps)).astype(np.float32)
    seed = rng.standard_normal((steps, dirs, 1, hidden)).astype(np.float32)
    coarse, fine = (FiniteDifference(model, "y", "x", (1, feat, steps), (2,), None, h, 8).gradient(
        x.astype(np.float64), seed) for h in (2e-2, 1e-2))
    ref = (4 * fine - coarse) / 3  # Richardson: the h^2 error of central differences cancels
    assert rel_err(vjp_of(model, x, seed), ref) < 1e-4  # measured 1.7-2.8e-5: float32 round-off


def test_recurrence_variants_without_unrolling_are_refused_with_the_way_out() -> None:
    """An LSTM with ``clip`` (not unrolled): node, op, reason and the finite-difference hint."""
    rng = np.random.default_rng(2)
    inits = {"W": rng.standard_normal((1, 12, 2)).astype(np.float32),
             "R": rng.standard_normal((1, 12, 3)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),
             helper.make_node("LSTM", ["t", "W", "R"], ["y"], hidden_size=3, clip=1.0, name="clipped")]
    with pytest.raises(UnsupportedOpError) as info:
        vjp.build_vjp(_model(nodes, [1, 2, 5], inits))
    assert str(info.value) == f"node 'clipped' (LSTM): attribute 'clip' is not unrolled; {vjp.FD_HINT}"


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_batch_first_layout_unrolls_like_the_sequence_first_one(op: str) -> None:
    """layout=1 (batch first; onnxruntime's kernels refuse it, so no forward oracle runs it): the
    same weights with layout=0 and the output transposed back give the same gradient, for the
    same seed, initial state included."""
    rng = np.random.default_rng(5)
    gates, hidden, feat, steps, batch = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 3, 2, 4, 2
    inits = {"W": rng.standard_normal((2, gates * hidden, feat)).astype(np.float32),
             "R": rng.standard_normal((2, gates * hidden, hidden)).astype(np.float32) * 0.5,
             "B": rng.standard_normal((2, 2 * gates * hidden)).astype(np.float32)}
    h0 = rng.standard_normal((2, batch, hidden)).astype(np.float32)  # (D, B, H)

    def model(layout: int) -> onnx.ModelProto:
        init = {**inits, "h0": h0 if layout == 0 else h0.transpose(1, 0, 2)}
        perm = [2, 0, 1] if layout == 0 else [0, 2, 1]  # (B, C, L) -> (L, B, C) or (B, L, C)
        back = [2, 0, 1, 3] if layout == 0 else [0, 1, 2, 3]  # Y -> (B, T, D, H)
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
                 helper.make_node(op, ["t", "W", "R", "B", "", "h0"], ["yr"], hidden_size=hidden,
                                  direction="bidirectional", layout=layout),
                 helper.make_node("Transpose", ["yr"], ["y"], perm=back)]
        return _model(nodes, [batch, feat, steps], init)

    x = rng.standard_normal((batch, feat, steps)).astype(np.float32)
    seed = rng.standard_normal((batch, steps, 2, hidden)).astype(np.float32)
    first, seq = vjp_of(model(1), x, seed), vjp_of(model(0), x, seed)
    assert np.abs(seq).max() > 0 and rel_err(first, seq) < 1e-6


class EinsumAttention(torch.nn.Module):
    """Einsum everywhere an exporter may keep it: a 1x1 conv, token attention, a projection."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.mix = torch.nn.Parameter(torch.randn(4, 6) * 0.3)
        self.proj = torch.nn.Parameter(torch.randn(4, 5) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("nchw,dc->ndhw", torch.tanh(self.conv(x)), self.mix)
        t = y.flatten(2)  # (n, d, tokens)
        att = torch.softmax(torch.einsum("ndq,ndk->nqk", t, t), dim=-1)
        return torch.einsum("nqk,ndk,de->nqe", att, t, self.proj)


def test_einsum_matches_autograd() -> None:
    """Einsum's gradient (one einsum per operand, three-operand terms included) vs autograd."""
    check_torch(EinsumAttention(), (1, 3, 6, 5))


class DeformableSampling(torch.nn.Module):
    """Features sampled where offsets computed from them point (deformable attention's and
    DCN's sampling, a spatial transformer's): F.grid_sample of the features at a base grid plus
    tanh offsets from a conv, so the gradient reaches the input through the image and the grid."""

    def __init__(self, padding: str, align: bool) -> None:
        super().__init__()
        self.feat = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.offset = torch.nn.Conv2d(4, 2, 3, padding=1)
        self.padding, self.align = padding, align

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.feat(x))
        h, w = x.shape[2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys], -1)[None] + 0.3 * torch.tanh(self.offset(f)).permute(0, 2, 3, 1)
        return F.grid_sample(f, grid, mode="bilinear", padding_mode=self.padding, align_corners=self.align)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_gradient_reaches_a_grid_computed_from_the_input(padding: str, align: bool) -> None:
    """The gradient to a sampling grid computed from the input (refused before: RT-DETR's
    deformable attention could not have an ERF) against torch autograd, every padding and
    corner convention (GridSample is exported at opset 16 and above)."""
    check_torch(DeformableSampling(padding, align), (1, 3, 12, 14), opset=17)


@pytest.mark.parametrize("kernel,stride,dilation,padding", [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 2, 0), (2, 3, 1, 0)])
def test_col2im_matches_torch_fold(kernel: int, stride: int, dilation: int, padding: int) -> None:
    """Col2Im (VOLO's fold of its outlook attention's blocks): the Im2Col gradient against torch's
    F.fold, for blocks a strided Conv computes and a Reshape flattens (overlapping, strided,
    dilated, and spaced apart)."""
    rng = np.random.default_rng(7)
    k = kernel * kernel
    w = rng.standard_normal((2 * k, 2, 2, 2)).astype(np.float32)
    image = [(g - 1) * stride + dilation * (kernel - 1) + 1 - 2 * padding for g in (4, 3)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
             helper.make_node("Reshape", ["c", "flat"], ["blocks"]),
             helper.make_node("Col2Im", ["blocks", "image", "block"], ["y"], strides=[stride] * 2,
                              dilations=[dilation] * 2, pads=[padding] * 4)]
    model = _model(nodes, [1, 2, 8, 6], {"w": w, "flat": np.array([1, 2 * k, 12], np.int64),
                                         "image": np.array(image, np.int64),
                                         "block": np.array([kernel] * 2, np.int64)}, opset=18)

    def fold(x: torch.Tensor) -> torch.Tensor:
        blocks = F.conv2d(x, torch.tensor(w), stride=2).reshape(1, 2 * k, 12)
        return F.fold(blocks, image, kernel, dilation=dilation, padding=padding, stride=stride)

    _compare(model, fold, (1, 2, 8, 6))
