"""benchmarks/support.py, the gradient-support oracle run on real models on demand: exact on a
zoo net, and able to fail (a box one pixel short of the gradient's support is UNSOUND)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import rfgraph

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "support.py"
SPEC = importlib.util.spec_from_file_location("rfgraph_support", SCRIPT)
assert SPEC is not None and SPEC.loader is not None
support = importlib.util.module_from_spec(SPEC)
sys.modules["rfgraph_support"] = support
SPEC.loader.exec_module(support)


def _model():
    model_zoo = pytest.importorskip("model_zoo")
    return model_zoo.build("resnet_v1_50:size=64,width=0.25")


def test_zoo_resnet_fields_equal_the_gradient_support() -> None:
    """Every sampled unit (centre and corner of 7 end points) of a ResNet-50 at 64 px: the
    gradient's support reaches exactly the reported box."""
    checks = support.check_model(_model())
    assert len(checks) >= 10 and {c.verdict for c in checks} == {"exact"}


def test_a_box_short_of_the_support_is_unsound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: boxes shrunk by one pixel on each side are caught."""
    clipped = rfgraph.EndPoint.clipped_region

    def shrunk(self, index, clip_to):
        return tuple((lo + 1, hi - 1) for lo, hi in clipped(self, index, clip_to))

    monkeypatch.setattr(rfgraph.EndPoint, "clipped_region", shrunk)
    assert "UNSOUND" in {c.verdict for c in support.check_model(_model(), count=2)}


def test_perturbed_weights_keep_the_graph() -> None:
    """--perturb moves every float weight and keeps BatchNorm's variances positive, nothing else:
    not a Resize's scales (an upsampling by 8 would become one by 8.0165)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = _model()
    moved = support.perturbed(model)
    assert [n.op_type for n in moved.graph.node] == [n.op_type for n in model.graph.node]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in moved.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.size > 1:
            assert not np.array_equal(w, before[t.name])
    weights = {"w": np.ones((8, 1, 3, 3)), "scales": np.array([1, 1, 8, 8]), "var": np.full(8, 1e-4),
               **{name: np.ones(8) for name in ("gamma", "beta", "mean")}}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
             helper.make_node("Resize", ["b", "", "scales"], ["y"], mode="linear")]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    kept = {t.name: numpy_helper.to_array(t) for t in support.perturbed(helper.make_model(graph)).graph.initializer}
    assert kept["scales"].tolist() == [1, 1, 8, 8] and (kept["var"] >= 0).all()
    assert not (kept["w"] == 1).all() and not (kept["var"] == weights["var"].astype(np.float32)).all()


def test_gated_end_points_are_checked_with_their_gates_held() -> None:
    """EfficientNet-B0's squeeze-excitation gates: the sampled end points behind gates are checked
    with each gate's operand held at its value (the local field's definition), all exact; the
    plain gradient of the first gated unit reaches outside its local box (through the gate's global
    pooling), so holding them is what the check measures."""
    import numpy as np

    from rfgraph import vjp
    from rfgraph.erf import Target, make_seed

    model_zoo = pytest.importorskip("model_zoo")
    model = model_zoo.build("efficientnet_b0:size=64")
    a = rfgraph.analyze(model)
    gated = [n for n in support.sampled_end_points(a) if a[n].gates]
    assert len(gated) >= 3
    assert {c.verdict for c in support.check_model(model)} == {"exact"}
    ep = a[gated[0]]
    unit = tuple(n // 2 for n in ep.units)
    target = Target(gated[0], tuple(ep.shape), tuple(t for t, _ in ep.unit_axes), ep.tensor_index(unit))
    graph = vjp.build_vjp(model, gated[0])
    x = np.random.default_rng(0).standard_normal(a.input_shape).astype(np.float32)
    plain = (vjp.input_gradient(graph, vjp.session(graph), x, make_seed(target, 1)) != 0).any(axis=(0, 1))
    (lo, hi), _ = ep.clipped_region(unit, plain.shape)
    rows = np.flatnonzero(plain.any(axis=1))
    assert rows[0] < lo or rows[-1] > hi


def test_every_resampling_end_point_is_sampled() -> None:
    """Besides the spread sample and the last, every end point a Resize (or another resampling
    op) makes is checked: the NHWC Resize the analysis got wrong lay between two sampled ones."""
    from tests.graphs import G

    g = G((16, 16), batch=1)
    x = g.conv("x", 3, pads=[1] * 4)
    for _ in range(4):
        x = g.conv(x, 3, pads=[1] * 4)
    up = g.resize(x, 2)
    for _ in range(4):
        up = g.conv(up, 3, pads=[1] * 4)
    a = rfgraph.analyze(g.model(up))
    picks = support.sampled_end_points(a, count=1)
    assert up in picks and [n for n in picks if a[n].op == "Resize"] == [n for n in a.endpoints if a[n].op == "Resize"]
    assert {c.verdict for c in support.check_model(g.model(up), count=1)} == {"exact"}
