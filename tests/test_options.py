"""One options value (``ModelOptions``) for how a model is read, accepted by ``analyze``,
``compute_erf``, ``diagnose`` and the commands (issue 13 section 4).

Covers: the older keywords and the value give the same analysis, ERF and diagnosis (fill,
input shape, rules, assume-pointwise, input name); a keyword given overrides the value's field;
the commands build the value once from their arguments; the value is immutable.  The fields'
meaning itself is proven by the tests of each option (test_control_flow, test_custom_ops...);
here also: show/report's unit ERF reads the model with the analysis's options.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import overlay
from rfgraph.commands._common import add_model_args, options_from_args
from rfgraph.diagnostics import diagnose
from rfgraph.options import ModelOptions
from tests.test_control_flow import _model as if_model
from tests.test_custom_ops import custom_model

SHAPES = {"x": (1, 1, 20, 20)}
FILL = {"sr": 8000.0}


def _fields(a: rfgraph.Analysis) -> dict:
    """What an analysis says about every tensor, and its notes and stops."""
    eps = {n: (ep.r, ep.S, ep.P) for n, ep in a.endpoints.items()}
    return {"input": (a.input_name, a.input_shape, a.layout), "endpoints": eps,
            "notes": dict(a.rule_notes), "stops": [s.reason for s in a.stops]}


def test_analyze_keywords_and_options_agree() -> None:
    """input shape + fill (an If decided by sr): same fields either way, at the given size."""
    by_keywords = rfgraph.analyze(if_model(), SHAPES, "x", "NCHW", fill=FILL)
    by_value = rfgraph.analyze(if_model(), options=ModelOptions(SHAPES, "x", "NCHW", fill=FILL))
    assert _fields(by_keywords) == _fields(by_value)
    assert by_value.input_shape == SHAPES["x"] and by_value["y"].r == (7, 7)  # 5x5 branch then 3x3


def test_rules_and_assume_pointwise_through_options(tmp_path: Path) -> None:
    """A rules file and the assume-pointwise fallback reach the pass from the value too."""
    path = tmp_path / "rules.toml"
    path.write_text('[[op]]\nname = "MyPool"\ndomain = "com.example"\nkernel = 3\nstride = 2\npad = 1\n')
    assert _fields(rfgraph.analyze(custom_model(), rules=path)) == \
        _fields(rfgraph.analyze(custom_model(), options=ModelOptions(rules=path)))
    same = custom_model("Blur", out_shape=[1, 3, 32, 32])
    by_value = rfgraph.analyze(same, options=ModelOptions(assume_pointwise=True))
    assert _fields(rfgraph.analyze(same, assume_pointwise=True)) == _fields(by_value)
    assert not by_value.stops


def test_keyword_overrides_the_options_field() -> None:
    """analyze(model, input_shape=..., options=...) analyses at the keyword's shape."""
    opts = ModelOptions(SHAPES, fill=FILL)
    a = rfgraph.analyze(if_model(), {"x": (1, 1, 24, 24)}, options=opts)
    assert a.input_shape == (1, 1, 24, 24)
    assert opts.input_shapes == SHAPES  # the value itself is unchanged


def test_compute_erf_keywords_and_options_agree() -> None:
    """The same seeded ERF map from input_shape/fill keywords and from the value."""
    kw = rfgraph.compute_erf(if_model(), runs=1, inputs="uniform", input_shape=SHAPES["x"], fill=FILL)
    val = rfgraph.compute_erf(if_model(), runs=1, inputs="uniform", options=ModelOptions(SHAPES, fill=FILL))
    assert kw.erf.shape == (20, 20) and np.array_equal(kw.erf, val.erf)


def test_diagnose_keywords_and_options_agree() -> None:
    """diagnose: same coverage and layer verdicts either way."""
    kw = diagnose(if_model(), SHAPES, fill=FILL, scan_sizes=False)
    val = diagnose(if_model(), options=ModelOptions(SHAPES, fill=FILL), scan_sizes=False)
    assert kw.coverage == val.coverage and kw.verdicts == val.verdicts
    assert _fields(kw.analysis) == _fields(val.analysis)


def test_commands_build_the_value_from_their_arguments() -> None:
    """--input-shape, --input, --layout, --rules, --assume-pointwise, --fill -> one ModelOptions."""
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["m.onnx", "--input-shape", "x:1x1x20x20", "--input", "x", "--layout", "NCHW",
                              "--rules", "r.toml", "--assume-pointwise", "--fill", "sr=8000"])
    assert options_from_args(args) == ModelOptions(SHAPES, "x", "NCHW", ["r.toml"], True, FILL)
    assert options_from_args(parser.parse_args(["m.onnx"])) == ModelOptions()


def test_options_are_immutable() -> None:
    """A frozen value: fields cannot be reassigned, and the caller's dicts are copied."""
    shapes = {"x": [1, 1, 20, 20]}
    opts = ModelOptions(shapes)
    shapes["x"] = [1, 1, 8, 8]
    assert opts.input_shapes == SHAPES
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.layout = "NHWC"  # type: ignore[misc]


def _masked_conv() -> onnx.ModelProto:
    """x(1,1,8,8) -> Trilu (no TRF rule: --assume-pointwise) -> 3x3 conv of ones, pad 1 -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Trilu", ["x"], ["t"], upper=1, name="tri"),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1] * 4, name="conv")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unit_erf_reads_the_model_with_the_analysis_options() -> None:
    """show/report's ERF of unit (2, 6) keeps the analysis's --assume-pointwise: its TRF is the
    3x3 window at rows 1-3, columns 5-7 (closed form), and the ERF lies inside it.  Before, the
    ERF engine re-analysed without the option, stopped at Trilu and measured Luo's size around
    the map centre (4, 4), where this unit's ERF is 0."""
    a = rfgraph.analyze(_masked_conv(), options=ModelOptions(assume_pointwise=True))
    result = overlay.unit_erf(a, "y", (2, 6), runs=1, method="fd")
    assert result.metrics.trf_size == (3, 3)
    rows, cols = np.nonzero(result.erf)
    assert rows.size and rows.min() >= 1 and rows.max() <= 3 and cols.min() >= 5 and cols.max() <= 7
