"""Defects of issue 12 found by running every command on real exports, each on a small model
built here that has the same structure.

Cases: a detector whose three heads meet in a stopping Concat keeps every head as a default end
point (by construction: the Concat's inputs) in analyze, diagnose and report (class 5); erf on
a tensor without units (the detector's concatenated [anchors, 6] output, a Flatten of a map) is
refused naming the tensors that have units, and on a tensor after an SE gate (global, positions
kept) seeds one position: its gradient against onnxruntime central differences (class 6);
show and report read a 1-D model with the --layout given (the TRF against onnxruntime impulses),
and a report whose heatmap failed neither counts it as drawn nor exits 0 (class 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rfgraph import analyze
from rfgraph.cli import main
from tests.graphs import G


def three_head_detector() -> tuple[onnx.ModelProto, list[str]]:
    """A stem and three heads at strides 2, 4, 8, each flattened to [1, anchors, 6] (Transpose +
    Reshape) and concatenated along the anchors (where the analysis stops); returns the model
    and the heads (the Concat's inputs)."""
    g = G((16, 16), channels=3)
    x = g.conv("x", 3, 2, pads=[1] * 4, cout=4)
    heads = []
    for s in (1, 2, 4):
        h = g.conv(x, 3, s, pads=[1] * 4, cout=6)
        t = g.node("Transpose", [h], perm=[0, 2, 3, 1])
        heads.append(g.node("Reshape", [t, g._init(np.array([1, -1, 6]))]))
    cat = g.node("Concat", heads, axis=1)
    out = helper.make_tensor_value_info(cat, TensorProto.FLOAT, None)
    graph = helper.make_graph(g.nodes, "detector", [g.input], [out], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, heads


def test_a_stopping_concat_keeps_every_head_as_an_end_point(tmp_path: Path, capsys) -> None:
    """The analysis stops at the Concat; the default end points are its three inputs (before: none,
    so analyze showed one tensor, diagnose one head and the report 0 heatmaps)."""
    model, heads = three_head_detector()
    a = analyze(model, {"x": (1, 3, 16, 16)})
    assert [s.op for s in a.stops] == ["Concat"]
    assert a.default_endpoints() == heads
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    assert main(["diagnose", str(path), "--input-shape", "x:1x3x16x16", "--no-size-range",
                 "--format", "json"]) == 1
    assert [c["endpoint"] for c in json.loads(capsys.readouterr().out)["coverage"]] == heads
    assert main(["report", str(path), "--input-shape", "x:1x3x16x16", "--erf-runs", "1",
                 "-o", str(tmp_path / "r.html"), "--format", "json"]) == 1
    cards = json.loads(capsys.readouterr().out)["erf"]
    assert [c["tensor"] for c in cards] == heads and not any(c["error"] for c in cards)


def ort_gradient(model: onnx.ModelProto, x: np.ndarray, objective, h: float = 1e-3) -> np.ndarray:
    """d objective(y) / dx by central differences through onnxruntime, in float64 sums."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        yp = sess.run(None, {name: xp})[0].astype(np.float64)
        ym = sess.run(None, {name: xm})[0].astype(np.float64)
        grad[idx] = (objective(yp) - objective(ym)) / (float(xp[idx]) - float(xm[idx]))
    return grad


@pytest.mark.parametrize("which", ["concat", "flatten"])
def test_erf_refuses_a_tensor_without_units(tmp_path: Path, capsys, which: str) -> None:
    """The detector's concatenated output (after the stop) and a Flatten of a head (positions
    folded into features) have no unit; before, erf summed every element and exited 0."""
    model, heads = three_head_detector()
    if which == "flatten":
        flat = helper.make_node("Flatten", [heads[0]], ["flat"], axis=1)
        model.graph.node.append(flat)
        model.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, None))
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    output = "flat" if which == "flatten" else model.graph.output[0].name
    assert main(["erf", str(path), "--output", output, "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no" in err and "axis of positions" in err and all(h in err for h in heads)


def se_gated() -> onnx.ModelProto:
    """conv -> x * sigmoid(GlobalAveragePool(x)): every position of the product sees the whole
    input (global), but the product keeps its grid of positions."""
    g = G((6, 6), channels=1, batch=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    gate = g.node("Sigmoid", [g.node("GlobalAveragePool", [c])])
    return g.model(g.node("Mul", [c, gate]))


def test_erf_after_an_se_gate_seeds_one_position() -> None:
    """The seed is one position (default: the centre, (2, 2) of 6 x 6), all channels: the engine's
    gradient equals onnxruntime central differences of y[0, :, 2, 2].sum() (before: the sum of
    every position)."""
    from rfgraph.erf import GradientEngine, _load, resolve_target

    model = se_gated()
    proto, a, _ = _load(model, (1, 1, 6, 6))
    out = model.graph.output[0].name
    assert a is not None and a[out].is_global
    target = resolve_target(a, proto, out, None, None, 4, (2, 3), (1, 2, 6, 6))
    assert target.tensor_axes == (2, 3) and target.unit == (2, 2)
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    got = GradientEngine(proto, target, "x", (1, 1, 6, 6), 1)(x)
    want = ort_gradient(proto, x, lambda y: y[0, :, 2, 2].sum())
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-4)


def test_erf_of_a_global_vector_says_its_unit_is_the_whole_tensor() -> None:
    """A classifier's logits [1, 2] have no positions: the ERF of their sum is kept (Luo's ERF of
    a class score) but said, not silent."""
    from rfgraph.erf import compute_erf

    g = G((6, 6), channels=1, batch=1)
    logits = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("x", 3, 1, cout=2)])], axis=1)
    result = compute_erf(g.model(logits), runs=1)
    assert any("no axis of positions" in n and "summed" in n for n in result.notes)


def one_d_signal() -> onnx.ModelProto:
    """A batch of 1-D signals [1, 64] (layout NL): Unsqueeze, a 5-tap conv, ReLU."""
    from onnx import numpy_helper

    w = np.random.default_rng(0).uniform(0.5, 1.5, (2, 1, 5)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["c"], kernel_shape=[5], pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "oned", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.array([1], np.int64), "ax")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_show_and_report_use_the_layout_for_the_erf_of_a_1d_model(tmp_path: Path, capsys) -> None:
    """--layout NL reached the TRF but not the ERF engine ("0 axes of positions"): show failed and
    the report's card held the error.  The unit's region is the impulse support (onnxruntime)."""
    import onnxruntime as ort

    path = tmp_path / "oned.onnx"
    onnx.save(one_d_signal(), path)
    assert main(["show", str(path), "--layout", "NL", "--output", "y", "--runs", "2",
                 "-o", str(tmp_path / "s.png"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sess = ort.InferenceSession(one_d_signal().SerializeToString(), providers=["CPUExecutionProvider"])
    reached = [i for i in range(64) if sess.run(None, {"x": np.eye(64, dtype=np.float32)[i:i + 1]})[0]
               [0, :, doc["index"][0]].sum() > 0]  # positive weights, no bias: > 0 iff connected
    assert doc["index"] == [31] and doc["region"] == [[reached[0], reached[-1]]]
    assert doc["erf"]["metrics"]["erf_extent"][0] <= 5
    assert main(["report", str(path), "--layout", "NL", "--erf-runs", "2",
                 "-o", str(tmp_path / "r.html"), "--format", "json"]) == 0
    cards = json.loads(capsys.readouterr().out)["erf"]
    assert [c["tensor"] for c in cards] == ["y"] and cards[0]["error"] is None


def test_a_report_whose_heatmap_failed_says_so_and_exits_1(tmp_path: Path, capsys) -> None:
    """A heatmap asked for a global tensor cannot be drawn: before, "1 ERF heatmap(s)", exit 0."""
    path = tmp_path / "se.onnx"
    model = se_gated()
    onnx.save(model, path)
    out = model.graph.output[0].name
    assert main(["report", str(path), "--erf-output", out, "--erf-runs", "1",
                 "-o", str(tmp_path / "r.html")]) == 1
    text = capsys.readouterr().out
    assert "0 ERF heatmap(s) (1 failed" in text
