"""The gradient of a reflect / edge / wrap Pad along a long axis is built in O(size) (census: the
exact ERF of basic-pitch's 43844-sample front end died of memory, the rule built a 44k x 44k 0/1
matrix, 7.7 GB).  Oracle: the transpose of the copy, summed with numpy's ``add.at`` over numpy's
own pad of the index range (the same modes as ONNX)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import vjp
from rfgraph.semantics import layout


def _pad_model(length: int, before: int, after: int, mode: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, length])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    pads = numpy_helper.from_array(np.array([0, 0, before, 0, 0, after], np.int64), "pads")
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], "g", [x], [y], [pads])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _transpose_of_copy(length: int, before: int, after: int, mode: str, seed: np.ndarray) -> np.ndarray:
    src = np.pad(np.arange(length), (before, after), mode=mode)
    out = np.zeros(length)
    np.add.at(out, src, seed.ravel())
    return out


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_long_axis_gradient_is_the_transpose_of_the_copy(mode: str) -> None:
    length, before, after = 3000, 700, 45
    assert length * (length + before + after) > layout.DENSE_COPY_LIMIT  # the scatter path
    model = _pad_model(length, before, after, mode)
    graph = vjp.build_vjp(model, "y")
    biggest = max(int(np.prod(t.dims)) for t in graph.model.graph.initializer)
    assert biggest < 10 * (length + before + after), biggest  # no dense matrix
    rng = np.random.default_rng(0)
    seed = rng.standard_normal((1, 1, length + before + after)).astype(np.float32)
    x = rng.standard_normal((1, 1, length)).astype(np.float32)
    got = vjp.input_gradient(graph, vjp.session(graph), x, seed).ravel()
    np.testing.assert_allclose(got, _transpose_of_copy(length, before, after, mode, seed), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_short_and_long_paths_agree(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense matrix (short axes) and the scatter-add give the same gradient on one model."""
    model = _pad_model(40, 13, 7, mode)
    rng = np.random.default_rng(1)
    seed = rng.standard_normal((1, 1, 60)).astype(np.float32)
    x = np.zeros((1, 1, 40), np.float32)
    dense = vjp.build_vjp(model, "y")
    monkeypatch.setattr(layout, "DENSE_COPY_LIMIT", 0)
    scatter = vjp.build_vjp(model, "y")
    assert any(n.op_type == "ScatterElements" for n in scatter.model.graph.node)
    assert not any(n.op_type == "ScatterElements" for n in dense.model.graph.node)
    a = vjp.input_gradient(dense, vjp.session(dense), x, seed)
    b = vjp.input_gradient(scatter, vjp.session(scatter), x, seed)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.ravel(), _transpose_of_copy(40, 13, 7, mode, seed), rtol=1e-5, atol=1e-5)
