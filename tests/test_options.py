"""One options value (``ModelOptions``) for how a model is read, accepted by ``analyze``,
``compute_erf``, ``diagnose`` and the commands (issue 13 section 4).

Covers: the older keywords and the value give the same analysis, ERF and diagnosis (fill,
input shape, rules, assume-pointwise, input name); a keyword given overrides the value's field;
the commands build the value once from their arguments; the value is immutable.  The fields'
meaning itself is proven by the tests of each option (test_control_flow, test_custom_ops...).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import rfgraph
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
