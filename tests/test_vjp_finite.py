"""Softmax's NaN guard only where a row of -inf can reach it (``vjp.finite_tensors``).

The guard (Where(IsNaN(y), 0, y) before the Softmax rule) makes a fully masked attention row's
gradient 0; where the Softmax input is finite for every finite input it is left out (2% of
ViT-S's gradient graph).  Oracles: the finiteness of each small graph worked out by hand (a -inf
mask, a zero divisor, a Log, another graph input, epsilon 0 keep the guard); torch autograd for
an unmasked ViT-like model (no guard in its graph) and a -inf-masked one (guard kept)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rfgraph import vjp
from tests.test_vjp import ViTTiny, autograd, export, rel_err, vjp_of

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], extra_inputs=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", [X, *extra_inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
                               for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _softmax_input_finite(model: onnx.ModelProto) -> bool:
    """Whether ``finite_tensors`` finds the Softmax's input finite (the graph's last node)."""
    shapes, dtypes = vjp.tensor_shapes(model, "x")
    b = vjp._builder(model, "x", shapes, dtypes, vjp.active_tensors(model, "x", dtypes))
    return model.graph.node[-1].input[0] in vjp.finite_tensors(model, "x", dtypes, b.constant_or_folded)


SOFTMAX = helper.make_node("Softmax", ["s"], ["y"], axis=-1)
W = np.full((4, 4), 0.5)


@pytest.mark.parametrize(("nodes", "inits", "finite"), [
    ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "c"], ["s"])],
     {"w": W, "c": np.array(0.125)}, True),
    ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "mask"], ["s"])],
     {"w": W, "mask": np.triu(np.full((4, 4), -np.inf), 1)}, False),
    ([helper.make_node("Div", ["x", "d"], ["s"])], {"d": np.array([1.0, 2.0, 0.0, 4.0])}, False),
    ([helper.make_node("Div", ["x", "d"], ["s"])], {"d": np.array([1.0, 2.0, 3.0, 4.0])}, True),
    ([helper.make_node("Div", ["x", "x"], ["s"])], {}, False),
    ([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Log", ["a"], ["s"])], {}, False),
    ([helper.make_node("Pow", ["x", "p"], ["s"])], {"p": np.array(2.0)}, True),
    ([helper.make_node("Pow", ["x", "p"], ["s"])], {"p": np.array(-1.0)}, False),
    ([helper.make_node("LayerNormalization", ["x", "g"], ["s"], epsilon=0.0)], {"g": np.ones(4)}, False),
    ([helper.make_node("LayerNormalization", ["x", "g"], ["s"])], {"g": np.ones(4)}, True),
    ([helper.make_node("Greater", ["x", "z"], ["c"]), helper.make_node("Where", ["c", "x", "z"], ["s"])],
     {"z": np.array(0.0)}, True),
    ([helper.make_node("Greater", ["x", "z"], ["c"]), helper.make_node("Where", ["c", "x", "n"], ["s"])],
     {"z": np.array(0.0), "n": np.array(-np.inf)}, False),
    ([helper.make_node("Exp", ["x"], ["s"])], {}, False),
    ([helper.make_node("BatchNormalization", ["x", "o", "z4", "z4", "v"], ["s"], epsilon=1e-5)],
     {"o": np.ones(4), "z4": np.zeros(4), "v": np.array([1.0, 0.0, 2.0, 3.0])}, True),
    ([helper.make_node("BatchNormalization", ["x", "o", "z4", "z4", "v"], ["s"], epsilon=1e-5)],
     {"o": np.ones(4), "z4": np.zeros(4), "v": np.array([1.0, -1e-5, 2.0, 3.0])}, False),
])
def test_finite_tensors(nodes: list, inits: dict, finite: bool) -> None:
    """A Softmax input is finite through finite-preserving ops and finite constants only."""
    assert _softmax_input_finite(_model([*nodes, SOFTMAX], inits)) is finite


def test_another_float_input_is_not_known_finite() -> None:
    """An attention mask fed as a second graph input (filled by the user) may hold -inf."""
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 4, 4])
    model = _model([helper.make_node("Add", ["x", "mask"], ["s"]), SOFTMAX], {}, [mask])
    assert not _softmax_input_finite(model)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in vjp.build_vjp(model).model.graph.node}


class MaskedAttention(torch.nn.Module):
    """One causal attention over the patch tokens (a -inf mask above the diagonal)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.patch = torch.nn.Conv2d(3, 8, 4, 4)
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        n = t.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1)
        return torch.softmax(q @ k.transpose(-2, -1) + mask, dim=-1) @ v


@pytest.mark.parametrize(("net", "guarded"), [(ViTTiny(), False), (MaskedAttention(), True)])
def test_guard_only_where_a_mask_can_reach_the_softmax(net: torch.nn.Module, guarded: bool) -> None:
    """The unmasked ViT's gradient graph has no IsNaN, the -inf-masked attention's has; both
    gradients equal torch autograd's."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = export(net.eval(), x, opset=17)
    assert ("IsNaN" in _ops(model)) is guarded
    with torch.no_grad():
        seed = torch.randn(net(x).shape)
    got = vjp_of(model, x.numpy(), seed.numpy())
    assert rel_err(got, autograd(net, x, seed)) < 1e-4


@pytest.mark.parametrize(("exponent", "finite"), [(0.5, False), (3.0, True), (0.0, True)])
def test_powers_of_the_input(exponent: float, finite: bool) -> None:
    """x^0.5 of a negative x is NaN; natural powers stay finite."""
    model = _model([helper.make_node("Pow", ["x", "p"], ["s"]), SOFTMAX], {"p": np.array(exponent)})
    assert _softmax_input_finite(model) is finite


def test_a_scale_from_the_static_shape_is_folded() -> None:
    """s = x * Pow(Cast(Shape(x)[2]), -0.5), the head-size scale torch traces from ``t.shape``:
    folded from the static shape (4 ** -0.5), so finite; the same scale made 0 (4 * 0) is
    not (0 ** -0.5 is inf)."""
    def model(axis_value: str) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
        return _model([helper.make_node("Shape", ["x"], ["sh"]),
                       helper.make_node("Gather", ["sh", "i"], ["n"], axis=0),
                       helper.make_node(axis_value, ["n", "z"], ["k"]),
                       helper.make_node("Cast", ["k"], ["f"], to=TensorProto.FLOAT),
                       helper.make_node("Pow", ["f", "p"], ["c"]),
                       helper.make_node("Mul", ["x", "c"], ["s"]), SOFTMAX],
                      {"i": np.array(2, np.int64), "z": np.array(0, np.int64), "p": np.array(-0.5)})
    assert _softmax_input_finite(model("Add"))  # 4 + 0
    assert not _softmax_input_finite(model("Mul"))  # 4 * 0


def test_a_folded_square_root_is_finite() -> None:
    """s = x * (1 / Sqrt(Cast(Shape(x)[2]))), torch's scaled_dot_product_attention export: Sqrt
    is not finite-preserving (negative inputs), but its folded value here is 2."""
    model = _model([helper.make_node("Shape", ["x"], ["sh"]),
                    helper.make_node("Gather", ["sh", "i"], ["n"], axis=0),
                    helper.make_node("Cast", ["n"], ["f"], to=TensorProto.FLOAT),
                    helper.make_node("Sqrt", ["f"], ["r"]),
                    helper.make_node("Div", ["one", "r"], ["c"]),
                    helper.make_node("Mul", ["x", "c"], ["s"]), SOFTMAX],
                   {"i": np.array(2, np.int64), "one": np.array(1.0)})
    assert _softmax_input_finite(model)
