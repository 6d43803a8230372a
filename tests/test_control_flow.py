"""If nodes whose condition is known once the model is loaded are replaced by their branch.

Covers: a condition on a filled input (a sample rate, ``--fill sr=16000``), a condition on a
fixed shape (no fill needed), an If nested in a branch, a condition that stays unknown (still a
clear stop), and the fill values themselves (declared shape and type; unknown names refused).
Oracle: onnxruntime impulses on the original model, fed the same values (with positive weights
the support of a unit is exactly the pixels whose impulse reaches it).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph.cli import main
from rfgraph.errors import RFGraphError


def _conv_branch(name: str, k: int, out: str) -> onnx.GraphProto:
    """A branch holding one k x k convolution (pad k//2, positive weights) of the outer ``x``."""
    w = numpy_helper.from_array(np.full((1, 1, k, k), 1.0 / k ** 2, np.float32), f"{name}_w")
    node = helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], pads=[k // 2] * 4, name=f"{name}_conv")
    ident = helper.make_node("Identity", [f"{name}_y"], [out], name=f"{name}_out")
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    return helper.make_graph([node, ident], name, [], outs, [w])


def _model(cond_on: str = "sr", nested: bool = False) -> onnx.ModelProto:
    """y = If(cond, then: 3x3 conv, else: 5x5 conv) -> 3x3 conv; cond = (sr == 16000), or
    (H == 16) from Shape(x); ``nested``: the then branch is itself an If on the same condition."""
    nodes = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])]
    inits = [numpy_helper.from_array(np.full((1, 1, 3, 3), 1 / 9, np.float32), "w_after")]
    if cond_on == "sr":
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
        inits.append(numpy_helper.from_array(np.array(16000, np.int64), "rate"))
        nodes.append(helper.make_node("Equal", ["sr", "rate"], ["cond"], name="is_16k"))
    else:
        inits += [numpy_helper.from_array(np.array([2], np.int64), "axis2"),
                  numpy_helper.from_array(np.array([16], np.int64), "sixteen")]
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Gather", ["shape", "axis2"], ["h"], axis=0),
                  helper.make_node("Equal", ["h", "sixteen"], ["cond1"]),
                  helper.make_node("Squeeze", ["cond1"], ["cond"])]
    then = _conv_branch("small", 3, "then_out")
    if nested:
        inner = helper.make_node("If", ["cond"], ["then_out"], name="inner_if",
                                 then_branch=_conv_branch("tiny", 1, "tiny_out"),
                                 else_branch=_conv_branch("mid", 3, "mid_out"))
        outs = [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)]
        then = helper.make_graph([inner], "then", [], outs)
    nodes.append(helper.make_node("If", ["cond"], ["b"], name="choose",
                                  then_branch=then, else_branch=_conv_branch("large", 5, "else_out")))
    nodes.append(helper.make_node("Conv", ["b", "w_after"], ["y"], pads=[1] * 4, name="after"))
    graph = helper.make_graph(nodes, "if_model", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _impulse_region(model: onnx.ModelProto, unit: tuple[int, int], feeds: dict) -> list[tuple[int, int]]:
    """Pixels of x whose impulse reaches y[0, 0, unit] when onnxruntime runs the original model."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hit = []
    for h, w in np.ndindex(16, 16):
        x = np.zeros((1, 1, 16, 16), np.float32)
        x[0, 0, h, w] = 1.0
        if sess.run(None, {"x": x, **feeds})[0][(0, 0) + unit] > 0:
            hit.append((h, w))
    return [(min(p[a] for p in hit), max(p[a] for p in hit)) for a in range(2)]


@pytest.mark.parametrize("sr,k", [(16000, 3), (8000, 5)])
def test_filled_condition_takes_its_branch(sr: int, k: int) -> None:
    """--fill sr decides the If: the field is the taken branch's conv then the 3x3 (r = k + 2),
    the regions equal onnxruntime's on the original model fed that sr, and the report says
    which branch replaced the If."""
    model = _model()
    a = rfgraph.analyze(model, fill={"sr": sr})
    assert not a.stops and a["y"].r == (k + 2, k + 2)
    which = "then_branch" if sr == 16000 else "else_branch"
    assert a.rule_notes["choose"].startswith(f"If replaced by its {which}")
    for unit in ((0, 0), (7, 9), (15, 15)):
        clipped = [(max(u0, 0), min(v0, 15)) for u0, v0 in a["y"].region(unit)]
        assert _impulse_region(model, unit, {"sr": np.array(sr, np.int64)}) == clipped


def test_unknown_condition_is_still_a_stop(capsys: pytest.CaptureFixture, tmp_path) -> None:
    """Without a value for sr the branch is unknown: the analysis stops at the If, naming it and
    the input its condition comes from, with the --fill that decides it."""
    path = tmp_path / "if.onnx"
    onnx.save(_model(), path)
    assert main(["analyze", str(path)]) == 1
    out = capsys.readouterr().out
    assert "STOPPED at node 'choose' (If)" in out
    assert "its condition comes from input(s) sr: give them values (--fill sr=VALUE)" in out
    assert main(["analyze", str(path), "--fill", "sr=16000", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stops"] == [] and report["endpoints"][-1]["r"] == [5, 5]


def test_condition_on_the_data_is_named() -> None:
    """A condition computed from the analysed input (a score over a threshold, as openWakeWord's
    models have) stays unknown whatever is filled: the stop says so, and offers no --fill."""
    model = _model()
    model.graph.node[0].CopyFrom(helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0, name="peak"))
    model.graph.node.insert(1, helper.make_node("Greater", ["peak", "zero"], ["cond"], name="over"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    del model.graph.input[1]
    (stop,) = rfgraph.analyze(model).stops
    assert stop.node == "choose" and "condition is computed from 'x', the input analysed" in stop.reason
    assert "--fill" not in stop.reason


def test_shape_condition_needs_no_fill() -> None:
    """A condition on a fixed shape (H == 16, from Shape/Gather/Equal) is known at load time."""
    a = rfgraph.analyze(_model(cond_on="shape"))
    assert not a.stops and a["y"].r == (5, 5) and "choose" in a.rule_notes


def test_nested_if_is_inlined_too() -> None:
    """The taken branch holds another If on the same condition: both are replaced (1x1 then 3x3)."""
    a = rfgraph.analyze(_model(nested=True), fill={"sr": 16000})
    assert not a.stops and a["y"].r == (3, 3)
    assert set(a.rule_notes) == {"choose", "inner_if"}


def test_fill_values_and_refusals() -> None:
    """A filled input becomes a constant of its declared type (int64 sr here) and shape; a name
    that is no input is refused in one line."""
    from rfgraph.onnx_import import load_model

    m = load_model(_model(), fill={"sr": 8000})
    (sr,) = [t for t in m.graph.initializer if t.name == "sr"]
    assert numpy_helper.to_array(sr).dtype == np.int64 and numpy_helper.to_array(sr) == 8000
    assert "sr" not in [i.name for i in m.graph.input]
    with pytest.raises(RFGraphError, match="no data input"):
        load_model(_model(), fill={"rate_hz": 1})


def test_erf_through_an_inlined_if() -> None:
    """The ERF engine runs the inlined model: the gradient support is the 5x5 branch's field."""
    result = rfgraph.compute_erf(_model(), runs=1, fill={"sr": 8000}, inputs="uniform")
    nz = np.nonzero(result.erf > 0)
    assert [(int(a.min()), int(a.max())) for a in nz] == [(4, 10), (4, 10)]  # centre 7, r = 7


def test_erf_through_an_undecided_if_is_refused_naming_it() -> None:
    """An If on a run-time value whose branches read the input from the outer scope (not as an
    input of the If): the output depends on it.  The ERF said it did not ("does not depend
    (differentiably) on input 'x'", a Keras LSTM's Loop); now the If is reached and refused by name."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=_conv_branch("small", 3, "t"),
                              else_branch=_conv_branch("large", 5, "e"))]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(RFGraphError, match=r"'choose' \(If\)"):
        rfgraph.compute_erf(model, "y", runs=1)
