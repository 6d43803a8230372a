"""Fused projections split by their weight's columns (``rfgraph.projections``, issue 16 §1-2).

x W + b reshaped into (parts, heads, width), transposed and split (a transformer's q, k, v; also
uneven parts, a split along a later factor, whose columns are strided, and no bias): found, and
split into one product per part whose outputs equal the fused graph's (onnxruntime); an
intermediate read elsewhere leaves it fused.  ``tests/test_erf_trim.py`` runs the split under the
per-layer rewrite (ViT's query projection on the unit's token) against the whole model's gradient.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import projections, vjp

TOKENS, WIDTH = 5, 8
VARIANTS = {  # factors of W's columns, Transpose perm (None: none), Split axis, sizes
    "qkv": ((3, 2, 4), (2, 0, 3, 1, 4), 0, (1, 1, 1)),
    "uneven": ((4, 2, 3), (2, 0, 3, 1, 4), 0, (2, 1, 1)),
    "strided": ((2, 3, 4), None, 3, (1, 2)),
    "no_bias": ((3, 2, 4), (2, 0, 3, 1, 4), 0, (1, 1, 1)),
}


def _fused_model(variant: str, leak: bool = False) -> onnx.ModelProto:
    """The projection of ``variant``; ``leak``: the Reshape's output is also a graph output."""
    factors, perm, axis, sizes = VARIANTS[variant]
    n = int(np.prod(factors))
    rng = np.random.default_rng(len(variant))
    inits = [numpy_helper.from_array(rng.standard_normal((WIDTH, n)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, TOKENS, *factors], np.int64), "shape"),
             numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"])]
    flat = "p"
    if variant != "no_bias":
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["p", "b"], ["t"]))
        flat = "t"
    nodes.append(helper.make_node("Reshape", [flat, "shape"], ["r"]))
    if perm is not None:
        nodes.append(helper.make_node("Transpose", ["r"], ["tr"], perm=list(perm)))
    outs = [f"part{k}" for k in range(len(sizes))]
    nodes.append(helper.make_node("Split", ["tr" if perm is not None else "r", "sizes"], outs, axis=axis))
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs + (["r"] if leak else [])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, WIDTH])
    graph = helper.make_graph(nodes, "fused", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _found(model: onnx.ModelProto) -> tuple[list[projections.FusedProjection], dict[str, tuple[int, ...]]]:
    shapes = vjp.tensor_shapes(model, "x")[0]
    return projections.fused_projections(list(model.graph.node), shapes, 17, vjp.constant_folder(model, shapes),
                                         [o.name for o in model.graph.output]), shapes


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_split_products_equal_the_fused_one(variant: str) -> None:
    """Each part computed by its own columns of W (and entries of b) equals the fused product's
    part; the Split is gone and each product has its part's share of the columns."""
    model = _fused_model(variant)
    found, shapes = _found(model)
    assert len(found) == 1
    split, new_shapes = projections.split_products(model, found, shapes)
    ops = [n.op_type for n in split.graph.node]
    assert "Split" not in ops and ops.count("MatMul") == len(VARIANTS[variant][3])
    x = np.random.default_rng(1).standard_normal((1, TOKENS, WIDTH)).astype(np.float32)
    for got, want in zip(_run(split, x), _run(model, x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    factors, _, _, sizes = VARIANTS[variant]
    widths = sorted(new_shapes[n.output[0]][-1] for n in split.graph.node if n.op_type == "MatMul")
    assert widths == sorted(int(np.prod(factors)) * s // sum(sizes) for s in sizes)


def test_an_intermediate_read_elsewhere_stays_fused() -> None:
    """The reshaped product also given out by the model: not a fused projection."""
    assert _found(_fused_model("qkv", leak=True))[0] == []
