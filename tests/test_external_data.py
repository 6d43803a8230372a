"""No tensor of a model is ever read from outside the model's folder, nor at all when the model
came as bytes or a ModelProto (it has no folder), whatever route the tensor takes.

Routes covered (each failed before, except where noted): a Constant whose ``value`` attribute is
declared UNDEFINED or FLOAT but carries an external tensor; a sparse-tensor attribute; a model-local
function's Constant; bytes input with a correctly typed Constant (read from the current directory
before, by the analysis and by the gradient graph); the initializer route (covered before too).
The secret's numbers are pads: had they been read, they would show up as the Pad's P.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from test_bad_input import model, opened_files, refused, workdir  # noqa: F401 - fixtures

from rfgraph import analyze, compute_erf

SECRET_PADS = np.array([0, 0, 7, 7, 0, 0, 7, 7], np.int64)  # P would be 7 if the file were read


def external_tensor(location: str, dtype: int = TensorProto.INT64, dims: tuple[int, ...] = (8,)) -> onnx.TensorProto:
    """A tensor whose data lives in the side file ``location``."""
    t = TensorProto(name="pads_value", data_type=dtype, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(8 * int(np.prod(dims))))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def pad_model(location: str, declared_type: int = AttributeProto.TENSOR) -> onnx.ModelProto:
    """Conv 3x3 then a Pad whose pads come from a Constant holding an external tensor; the
    Constant's attribute declares ``declared_type`` (a lie, for hostile files)."""
    attr = AttributeProto(name="value", type=declared_type)
    attr.t.CopyFrom(external_tensor(location))
    const = helper.make_node("Constant", [], ["pads"], name="pads_const")
    const.attribute.append(attr)
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"), const,
             helper.make_node("Pad", ["c", "pads"], ["y"], name="pad1")]
    return model(nodes, ["y"], [w])


def write_secret(folder) -> None:
    (folder / "secret.bin").write_bytes(SECRET_PADS.tobytes())


@pytest.mark.parametrize("declared", [AttributeProto.UNDEFINED, AttributeProto.FLOAT, AttributeProto.TENSOR])
def test_constant_attribute_outside_folder_refused_whatever_its_declared_type(
        declared: int, workdir, capsys, opened_files) -> None:  # noqa: F811
    write_secret(workdir)
    folder = workdir / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    path.write_bytes(pad_model("../secret.bin", declared).SerializeToString())
    opened_files.clear()
    refused(["analyze", path], capsys, "outside the model's folder", "refused")
    assert not any(p.endswith("secret.bin") for p in opened_files)


def test_sparse_attribute_outside_folder_refused(workdir, capsys, opened_files) -> None:  # noqa: F811
    write_secret(workdir)
    folder = workdir / "model"
    folder.mkdir()
    m = pad_model("pads.bin")  # the dense one is legitimate; the sparse one escapes
    sparse = onnx.SparseTensorProto(dims=[8])
    sparse.values.CopyFrom(external_tensor("../secret.bin", dims=(1,)))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([2], np.int64)))
    extra = helper.make_node("Constant", [], ["unused"], name="sparse_const")
    extra.attribute.append(AttributeProto(name="sparse_value", type=AttributeProto.SPARSE_TENSOR,
                                          sparse_tensor=sparse))
    m.graph.node.insert(0, extra)
    assert_refused_unread(m, folder, capsys, opened_files)


def assert_refused_unread(m: onnx.ModelProto, folder, capsys, opened_files) -> None:  # noqa: F811
    """Saved next to a legitimate zero pads file, the model is refused and the secret never opened."""
    (folder / "pads.bin").write_bytes(np.zeros(8, np.int64).tobytes())
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    opened_files.clear()
    refused(["analyze", path], capsys, "outside the model's folder")
    assert not any(p.endswith("secret.bin") for p in opened_files)


def test_function_constant_outside_folder_refused(workdir, capsys, opened_files) -> None:  # noqa: F811
    write_secret(workdir)
    folder = workdir / "model"
    folder.mkdir()
    m = pad_model("pads.bin")
    const = helper.make_node("Constant", [], ["k"])
    const.attribute.append(AttributeProto(name="value", type=AttributeProto.TENSOR,
                                          t=external_tensor("../secret.bin")))
    m.functions.append(helper.make_function("local", "Leak", [], ["k"], [const],
                                            [helper.make_opsetid("", 17)]))
    assert_refused_unread(m, folder, capsys, opened_files)


def test_bytes_model_reads_no_side_file_from_cwd(workdir, opened_files) -> None:  # noqa: F811
    """The current directory holds 'secret.bin', which the in-memory model names: neither the
    analysis nor the gradient graph opens it, and the pads stay unknown (no P of 7 anywhere)."""
    write_secret(workdir / "cwd")
    data = pad_model("secret.bin").SerializeToString()
    opened_files.clear()
    a = analyze(data)
    assert a["c"].r == (3, 3)
    assert "y" not in a or a["y"].P != (7, 7)
    with pytest.raises(Exception) as info:  # onnxruntime cannot run an unknown Pad: any clear error
        compute_erf(data, output="y", runs=1)
    assert "secret" not in str(info.value) or "refused" in str(info.value)
    assert not any(p.endswith("secret.bin") for p in opened_files)


def test_same_pads_inside_folder_are_read(workdir) -> None:  # noqa: F811
    """The legitimate route still works: the pads file next to the model gives P = 0 + 7."""
    folder = workdir / "model"
    folder.mkdir()
    write_secret(folder)
    path = folder / "m.onnx"
    path.write_bytes(pad_model("secret.bin").SerializeToString())
    a = analyze(path)
    assert a["y"].P == (7, 7) and a["y"].r == (3, 3)


# ---------------------------------------------------------------- files that are no ONNX file


def test_device_and_fifo_are_refused_unread(workdir, capsys) -> None:  # noqa: F811
    """/dev/zero was read until memory ran out (7.5 GB); a FIFO blocked forever."""
    import os
    refused(["analyze", "/dev/zero"], capsys, "not a regular file")
    fifo = workdir / "pipe.onnx"
    os.mkfifo(fifo)
    refused(["analyze", fifo], capsys, "not a regular file")


def conv_with_external_weight(folder, *, offset: str = "0", length: str = "36", n: int = 1,
                              file_bytes: int = 36):
    """``n`` Conv weights (3x3 float: 36 bytes) all pointing at one side file."""
    (folder / "w.bin").write_bytes(np.ones(file_bytes // 4, np.float32).tobytes())
    inits, nodes, x = [], [], "x"
    for i in range(n):
        w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), f"w{i}")
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", offset), ("length", length)):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        x = f"y{i}"
    path = folder / "m.onnx"
    path.write_bytes(model(nodes, [x], inits).SerializeToString())
    return path


@pytest.mark.parametrize("offset,length,words", [
    ("-5", "36", "non-negative"), ("abc", "36", "bad external data field"), ("0", "1000", "outside"),
    ("0", "8", "needs 36"),
])
def test_bad_external_fields_are_one_line(offset: str, length: str, words: str, workdir, capsys) -> None:  # noqa: F811
    folder = workdir / "model"
    folder.mkdir()
    refused(["analyze", conv_with_external_weight(folder, offset=offset, length=length)], capsys, words)


def test_side_file_budget_refuses_aliased_weights(workdir, capsys, monkeypatch) -> None:  # noqa: F811
    """200 initializers reading one side file (a 10 GB load from an 11 KB model in the issue):
    the total is checked against the budget before reading, and the message names the variable."""
    folder = workdir / "model"
    folder.mkdir()
    path = conv_with_external_weight(folder, n=200)
    monkeypatch.setenv("RFGRAPH_MAX_WEIGHT_BYTES", str(36 * 100))
    refused(["analyze", path], capsys, "7200 bytes", "RFGRAPH_MAX_WEIGHT_BYTES")
    monkeypatch.setenv("RFGRAPH_MAX_WEIGHT_BYTES", str(36 * 200))
    assert analyze(path)["y199"].r == (401, 401)


@pytest.mark.parametrize("value,words", [("0", "must be a positive number"), ("-5", "must be a positive number"),
                                         ("lots", "is not a number")])
def test_side_file_budget_reads_its_variable_as_every_limit(value: str, words: str, workdir, capsys,  # noqa: F811
                                                            monkeypatch) -> None:
    """The weight budget is one of ``budgets.py``'s limits (it was a second parser of its own):
    0 and negative values are refused as every other limit's (before, 0 or -5 were taken as a
    budget, and the model refused as "over the budget of 0"), and a float such as 1e4 is read as
    the others read it (before: "not a number of bytes")."""
    folder = workdir / "model"
    folder.mkdir()
    path = conv_with_external_weight(folder, n=2)
    monkeypatch.setenv("RFGRAPH_MAX_WEIGHT_BYTES", value)
    refused(["analyze", path], capsys, "RFGRAPH_MAX_WEIGHT_BYTES", words)
    monkeypatch.setenv("RFGRAPH_MAX_WEIGHT_BYTES", "1e4")
    assert analyze(path)["y1"].r == (5, 5)
