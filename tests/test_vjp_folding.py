"""Values the gradient rules read come from the loader's folder, not from a run of the model.

A BatchNorm's parameters behind Identity nodes (timm's LeViT export) made the builder run the
whole model on zeros once per parameter (84 sessions, 13.4 s to build its gradient graph; now
0.2 s, the same gradient).  Oracle: torch autograd of the same BatchNorm network; the count of
model runs (none)."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from rfgraph import vjp


def _bn_behind_identities() -> tuple:  # type: ignore[type-arg]
    """x -> Conv -> BatchNormalization whose scale, bias, mean, var pass through Identity nodes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    params = [rng.uniform(0.5, 2.0, 4).astype(np.float32) for _ in range(4)]
    names = ["scale", "bias", "mean", "var"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    nodes += [helper.make_node("Identity", [n], [n + "_id"]) for n in names]
    nodes.append(helper.make_node("BatchNormalization", ["c", *[n + "_id" for n in names]], ["y"], epsilon=1e-5))
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [numpy_helper.from_array(w, "w"),
                               *[numpy_helper.from_array(p, n) for p, n in zip(params, names)]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, params


def test_batch_norm_parameters_behind_identities_are_folded(monkeypatch) -> None:
    """No run of the model while building; the gradient equals torch's (eval-mode BatchNorm)."""
    model, w, (scale, bias, mean, var) = _bn_behind_identities()
    runs: list[str] = []
    real = vjp._input_independent
    monkeypatch.setattr(vjp, "_input_independent", lambda *a: runs.append(sorted(a[1])) or real(*a))
    graph = vjp.build_vjp(model)
    assert runs == []
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    seed = np.random.default_rng(2).standard_normal((1, 4, 6, 6)).astype(np.float32)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(4, eps=1e-5).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w))
        bn.weight.copy_(torch.tensor(scale))
        bn.bias.copy_(torch.tensor(bias))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    xt = torch.tensor(x, requires_grad=True)
    (bn(conv(xt)) * torch.tensor(seed)).sum().backward()
    ref = xt.grad.numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


class _StdConv(torch.nn.Conv2d):
    """A weight-standardised convolution (timm's StdConv2d, NFNets): the weight is normalised by
    a training-mode batch_norm in the graph, which the loader's folder does not evaluate."""

    def forward(self, x):  # type: ignore[no-untyped-def]
        w = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                           training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return torch.nn.functional.conv2d(x, w, self.bias, padding=1)


def test_weights_computed_in_the_graph_take_one_run(monkeypatch) -> None:
    """Three standardised convolutions: their weights come from one run of the model on zeros
    (one run per weight took 100 s on dm_nfnet_f0's 57); the gradient equals torch's."""
    import io
    import warnings

    import onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(_StdConv(2, 4, 3), torch.nn.ReLU(), _StdConv(4, 4, 3), torch.nn.ReLU(),
                              _StdConv(4, 3, 3)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 2, 8, 8),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    runs: list[list[str]] = []
    real = vjp._input_independent
    monkeypatch.setattr(vjp, "_input_independent", lambda *a: runs.append(sorted(a[1])) or real(*a))
    graph = vjp.build_vjp(model)
    assert len(runs) == 1 and len(runs[0]) == 3  # the three weights at once
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    seed = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (net.double()(xt) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    ref = xt.grad.numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
