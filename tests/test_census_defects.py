"""Defects of issue 12 found by running every command on real exports, each on a small model
built here that has the same structure.

Cases: a detector whose three heads meet in a stopping Concat keeps every head as a default end
point (by construction: the Concat's inputs) in analyze, diagnose and report (class 5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rfgraph import analyze
from rfgraph.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from graphs import G  # noqa: E402


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
