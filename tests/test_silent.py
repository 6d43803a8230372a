"""Silent paths: nodes whose weights are all zero pass no gradient (``rfgraph.silent``).

Cases: one graph per op of ``ZEROING_OPERANDS`` with its weight all zero, and the same graph with
one weight non-zero; a weight reached through Identity (how torch's exporter shares equal
initializers); a torch residual network whose branch's last convolution is zeroed (timm's default
initialisation); a chain where every path is silent.

Oracles: (a) onnxruntime: a node is silent exactly when its output does not move when the input
does (two random inputs); (b) torch float64 autograd: the hull of the input gradient's support of
the centre unit is the field the note gives for the paths left, and differs from the TRF.
"""

from __future__ import annotations

import io
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import compute_erf
from rfgraph.options import ModelOptions
from rfgraph.silent import ZEROING_OPERANDS, live_model, silent_nodes, silent_notes


def _model(op: str, weights: dict[str, np.ndarray], inputs: list[str], attrs: dict | None = None,
           identity: bool = False) -> onnx.ModelProto:
    """x [1, 4, 6, 6] -> Relu -> op -> y; ``weights`` are initializers (behind Identity if told)."""
    inits, nodes = [], [helper.make_node("Relu", ["x"], ["h"], name="relu")]
    for name, value in weights.items():
        stored = f"{name}_stored" if identity else name
        inits.append(numpy_helper.from_array(value.astype(np.float32), stored))
        if identity:
            nodes.append(helper.make_node("Identity", [stored], [name], name=f"id_{name}"))
    nodes.append(helper.make_node(op, inputs, ["y"], name="the_op", **(attrs or {})))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _cases(zero: bool) -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        value = rng.standard_normal(shape)
        return np.zeros(shape) if zero else value

    c = 4
    return {
        "Conv": _model("Conv", {"W": w(3, c, 3, 3), "B": rng.standard_normal(3)}, ["h", "W", "B"]),
        "ConvTranspose": _model("ConvTranspose", {"W": w(c, 2, 3, 3)}, ["h", "W"]),
        "MatMul": _model("MatMul", {"W": w(6, 5)}, ["h", "W"]),
        "MatMul, weight first": _model("MatMul", {"W": w(5, 6)}, ["W", "h"]),
        "Mul": _model("Mul", {"W": w(1, c, 1, 1)}, ["h", "W"]),
        "Gemm": _model("Gemm", {"W": w(6, c), "B": rng.standard_normal(c)}, ["h", "W", "B"]),
        "BatchNormalization": _model("BatchNormalization", {"s": w(c), "b": rng.standard_normal(c), "m": np.zeros(c),
                                                            "v": np.ones(c)}, ["h", "s", "b", "m", "v"]),
        "LayerNormalization": _model("LayerNormalization", {"s": w(6), "b": rng.standard_normal(6)}, ["h", "s", "b"]),
        "InstanceNormalization": _model("InstanceNormalization", {"s": w(c), "b": rng.standard_normal(c)},
                                        ["h", "s", "b"]),
        "Conv, weight behind Identity": _model("Conv", {"W": w(3, c, 3, 3)}, ["h", "W"], identity=True),
    }


def _gemm_fix(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm takes a matrix: flatten the input first."""
    if name != "Gemm":
        return model
    nodes = list(model.graph.node)
    flat = helper.make_node("Flatten", ["h"], ["hf"], name="flat", axis=3)
    nodes[-1].input[0] = "hf"
    del model.graph.node[:]
    model.graph.node.extend([nodes[0], flat, *nodes[1:]])
    return model


def _moves(model: onnx.ModelProto) -> bool:
    """Oracle (a): whether the output changes with the input (onnxruntime, two random inputs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a, b = (sess.run(None, {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)})[0] for _ in range(2))
    return not np.array_equal(a, b)


def test_the_cases_cover_every_zeroing_op() -> None:
    """A new entry in ZEROING_OPERANDS without a case here stands out."""
    covered = {name.split(",")[0] for name in _cases(True)}
    assert set(ZEROING_OPERANDS) - covered == {"GroupNormalization"}  # opset 18's GroupNorm: not in ORT 1.32 CPU


@pytest.mark.parametrize("zero", [True, False], ids=["zero", "nonzero"])
@pytest.mark.parametrize("name", list(_cases(True)))
def test_silent_exactly_when_the_output_ignores_the_input(name: str, zero: bool) -> None:
    model = _gemm_fix(name, _cases(zero)[name])
    found = silent_nodes(model, "x")
    assert _moves(model) is not zero
    assert [(s.name, s.op_type) for s in found] == ([("the_op", name.split(",")[0])] if zero else [])


def test_live_model_holds_the_silent_inputs_constant() -> None:
    """The live model's silent node reads zeros of the input's shape, not the input."""
    model = _cases(True)["Conv"]
    live = live_model(model, "x", silent_nodes(model, "x"))
    conv = next(n for n in live.graph.node if n.name == "the_op")
    held = next(i for i in live.graph.initializer if i.name == conv.input[0])
    assert list(held.dims) == [1, 4, 6, 6] and not numpy_helper.to_array(held).any()
    assert next(n for n in model.graph.node if n.name == "the_op").input[0] == "h"  # the original is untouched


torch = pytest.importorskip("torch")
nn = torch.nn


class _Residual(nn.Module):
    """conv 5x5 -> relu -> [conv 3x3 -> relu -> conv 3x3 (zeroed)] + shortcut, twice."""

    def __init__(self, zero_last: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(2, 4, 5, padding=2)
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                                    nn.Conv2d(4, 4, 3, padding=1)) for _ in range(2))
        if zero_last:
            for branch in self.branches:
                nn.init.zeros_(branch[2].weight)

    def forward(self, x):  # type: ignore[no-untyped-def]
        h = torch.relu(self.stem(x))
        for branch in self.branches:
            h = torch.relu(h + branch(h))
        return h


def _export(module: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.randn(1, 2, 21, 21),), buf, dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def _support_hull(module: nn.Module) -> tuple[int, int]:
    """Oracle (b): the extent of the input gradient's support of the centre unit, float64."""
    m = module.double()
    x = torch.randn(1, 2, 21, 21, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, 10, 10].sum().backward()
    rows, cols = np.nonzero(np.abs(x.grad.numpy()).sum(axis=(0, 1)))
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _live_size(note: str) -> tuple[int, ...]:
    found = re.search(r"paths left, (\d+) x (\d+) \(the whole model's TRF: (\d+) x (\d+)\)", note)
    assert found, note
    return tuple(int(v) for v in found.groups())


def test_zeroed_residual_branches_are_named_with_the_field_left() -> None:
    module = _Residual(zero_last=True)
    result = compute_erf(_export(module), runs=2, inputs="gaussian")
    note = next(n for n in result.notes if "all-zero weights" in n)
    assert note.startswith("2 node(s)") and note.count("(Conv)") == 2
    live_r, live_c, trf_r, trf_c = _live_size(note)
    assert (live_r, live_c) == _support_hull(module) == (5, 5)  # the stem alone
    assert (trf_r, trf_c) == (13, 13)  # 5 + 4 convolutions of 3
    assert result.metrics.erf_extent[0] <= live_r


def test_the_same_network_with_live_branches_has_no_note() -> None:
    module = _Residual(zero_last=False)
    result = compute_erf(_export(module), runs=2, inputs="gaussian")
    assert not [n for n in result.notes if "all-zero weights" in n]
    assert _support_hull(module) == (13, 13)


def test_redrawn_weights_have_no_note() -> None:
    result = compute_erf(_export(_Residual(zero_last=True)), runs=2, inputs="gaussian", reinit="he")
    assert not [n for n in result.notes if "all-zero weights" in n]


def test_every_path_silent() -> None:
    """conv -> conv (zero): no path is left, and the ERF is zero everywhere."""
    module = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3))
    nn.init.zeros_(module[2].weight)
    model = _export(module)
    notes = silent_notes(model, "x", "y", ModelOptions(), (5, 5))
    assert len(notes) == 1 and "no path from 'x' to 'y' is left, so the gradient is zero everywhere" in notes[0]


def test_zero_at_the_centre_is_explained_by_the_silent_paths() -> None:
    """y = conv(x) + unflatten(flatten(conv(x)) W) with W = 0: the field is global (a product over
    positions), so the metrics centre on the map's centre; unit (0, 0)'s live paths reach only
    its corner, and the note says why the centre is 0 instead of asking for more runs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("k", rng.random((1, 1, 3, 3), np.float32) + 0.1), ("W", np.zeros((144, 144), np.float32)),
        ("flat", np.array([1, 1, 144], np.int64)), ("grid", np.array([1, 1, 12, 12], np.int64))]]
    nodes = [helper.make_node("Conv", ["x", "k"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["h", "flat"], ["hf"], name="flatten"),
             helper.make_node("MatMul", ["hf", "W"], ["mixed"], name="mix"),
             helper.make_node("Reshape", ["mixed", "grid"], ["back"], name="unflatten"),
             helper.make_node("Add", ["h", "back"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = compute_erf(model, unit=(0, 0), runs=2, inputs="uniform")
    assert result.target.centre is None and result.metrics.centre_value == 0
    assert np.nonzero(result.erf)[0].max() == 1  # the 3x3 conv from the corner: rows 0-1
    note = next(n for n in result.notes if "Luo's size is 0" in n)
    assert "map's centre pixel" in note and "all-zero weights" in note and "--runs" not in note
    assert any("1 node(s)" in n and "mix (MatMul)" in n and "3 x 3" in n for n in result.notes)


def test_silent_nodes_that_leave_the_field_whole_get_no_note() -> None:
    """A zeroed branch beside a live one of the same field (an LSTM's first step times its zero
    initial state is the real case: captcha_crnn): nothing the unit sees is lost, no note."""
    torch.manual_seed(0)

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 3)
            nn.init.zeros_(self.b.weight)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.a(x) + self.b(x)

    model = _export(TwoBranches())
    assert [s.op_type for s in silent_nodes(model, "x")] == ["Conv"]
    assert silent_notes(model, "x", "y", ModelOptions(), (3, 3)) == []


def test_a_float16_model_is_held_in_its_own_type() -> None:
    """x (float16) -> conv 3x3 -> [conv 3x3 with zero weights] + itself: the held input is a
    float16 zero tensor, and the paths left have the first conv's field, 3 x 3 (TRF 5 x 5)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((2, 1, 3, 3)).astype(np.float16), "a"),
             numpy_helper.from_array(np.zeros((2, 2, 3, 3), np.float16), "b")]
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="first", pads=[1] * 4),
             helper.make_node("Conv", ["h", "b"], ["z"], name="zeroed", pads=[1] * 4),
             helper.make_node("Add", ["h", "z"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, 8, 8])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    live = live_model(model, "x", silent_nodes(model, "x"))
    held = next(i for i in live.graph.initializer if i.name.endswith("__held_by_zeroed"))
    assert held.data_type == TensorProto.FLOAT16
    (note,) = silent_notes(model, "x", "y", ModelOptions(), (5, 5))
    assert "zeroed (Conv)" in note and "paths left, 3 x 3 (the whole model's TRF: 5 x 5)" in note


def _layer_scaled(scale: float) -> onnx.ModelProto:
    """x -> conv 3x3 (h) -> h + layer_scale * conv 3x3 (h): a residual branch behind a layer scale
    (timm's ConvNeXt and RDNet start it at 1e-6)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((2, 1, 3, 3), np.float32) + 0.1, "a"),
             numpy_helper.from_array(rng.random((2, 2, 3, 3), np.float32) + 0.1, "b"),
             numpy_helper.from_array(np.full((2, 1, 1), scale, np.float32), "gamma")]
    nodes = [helper.make_node("Conv", ["x", "a"], ["h"], name="first", pads=[1] * 4),
             helper.make_node("Conv", ["h", "b"], ["z"], name="branch", pads=[1] * 4),
             helper.make_node("Mul", ["z", "gamma"], ["zs"], name="layer_scale"),
             helper.make_node("Add", ["h", "zs"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 9, 9])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_faint_layer_scale_is_named_with_the_field_the_erf_shows() -> None:
    """A layer scale of 1e-6: the ERF is the skip path's 3x3 (its size by Luo's threshold is 3,
    the 5x5 TRF's ring below 1e-5 of the map's maximum, measured on the gradient), and the note
    says so with both fields; a scale of 0.1 is no layer scale at its initial value: no note."""
    result = compute_erf(_layer_scaled(1e-6), unit=(4, 4), runs=2, inputs="uniform")
    ring = result.erf.copy()
    ring[3:6, 3:6] = 0
    assert result.erf[2:7, 2:7].min() > 0 and ring.max() < 1e-5 * result.erf.max()  # the branch's ring: faint
    note = next(n for n in result.notes if "layer scale" in n)
    assert "layer_scale (Mul)" in note and "mostly within the field of the paths left, 3 x 3" in note
    assert "TRF: 5 x 5" in note
    assert not any("layer scale" in n for n in compute_erf(_layer_scaled(0.1), unit=(4, 4), runs=1).notes)
