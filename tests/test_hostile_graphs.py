"""Hostile graphs that cost memory or time out of proportion to their size end in one line,
exit 2, quickly (issue 15 §2).

- Softmax (opset 11) with axis = -10^8: the rule built a list of 10^8 axes (6 GB, then exit 3);
  every axis attribute is now checked against the tensor's rank, naming the node.
"""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper
from test_bad_input import refused, workdir  # noqa: F401 - fixture


@pytest.mark.parametrize("op,opset,attrs", [
    ("Softmax", 11, {"axis": -100_000_000}), ("Softmax", 13, {"axis": 4}),
    ("LogSoftmax", 11, {"axis": 7}), ("Concat", 17, {"axis": -(2**31)}), ("Split", 17, {"axis": 9}),
])
def test_axis_out_of_range_is_one_line_naming_the_node(op: str, opset: int, attrs: dict, workdir,  # noqa: F811
                                                       capsys) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs = ["x", "x"] if op == "Concat" else ["x"]
    node = helper.make_node(op, inputs, ["y"], name="hostile", **attrs)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    path = workdir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    line = refused(["analyze", path], capsys, "hostile")
    assert "axis" in line and ("out of range" in line or "must be in" in line), line


def declared_model(opset: int = 17, dims: tuple[int, ...] = (1, 1, 8, 8), shadow: bool = False):
    """A 3x3 Conv on input x, with the given opset and input dims, x shadowed by an initializer."""
    import numpy as np
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")]
    if shadow:
        inits.append(numpy_helper.from_array(np.zeros(dims, np.float32), "x"))
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("kwargs,words", [
    ({"opset": 99}, ("opset 99", "newer")),
    ({"dims": (1, 1, 0, 8)}, ("input 'x'", "size 0")),
    ({"shadow": True}, ("initializer of the same name", "'x'")),
])
def test_declarations_accepted_silently_before_are_one_line(kwargs: dict, words: tuple, workdir, capsys) -> None:  # noqa: F811
    """Opset 99 was analysed with today's semantics; a 0-sized input ended in 'tensor y has
    dimension -2'; an input shadowed by an initializer in 'no input with spatial axes among []'."""
    path = workdir / "m.onnx"
    path.write_bytes(declared_model(**kwargs).SerializeToString())
    refused(["analyze", path], capsys, *words)
