"""Bad and hostile input: every case ends in one clear line on stderr, exit code 2, no traceback,
and nothing written anywhere.

Cases: empty file, random bytes, truncated protobuf, a directory, a missing file, a graph with a
cycle, duplicate tensor names, a node reading a tensor nobody produces, an output never produced,
zero/negative strides, kernels and dilations, absurd dims (2^40) in the file, in an initializer
and on the command line, bad --input-shape/--index/--layout, external data pointing outside the
model's folder (relative ``..``, absolute, through a symlink, inside an If subgraph; refused and
never opened), a 100k-node graph (no recursion-limit crash); and graphs no rule covers (a constant
first input beside a data input, Pad axes computed at run time): a partial report, exit 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import analyze
from rfgraph.cli import main
from rfgraph.errors import RFGraphError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import graphs

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])


def out(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def model(nodes: list, outputs: list[str], inits: list | None = None, inputs: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs or [X], [out(o) for o in outputs], initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(**attrs) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)], ["y"], [w])


def snapshot(*folders: Path) -> dict[str, float]:
    """Every file under the folders, with its modification time."""
    return {str(p): p.stat().st_mtime for f in folders for p in f.rglob("*")}


def refused(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> str:
    """Run the CLI: exit 2, stdout empty, exactly one stderr line containing ``words``."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("rfgraph: error: "), captured.err
    assert "Traceback" not in captured.err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory; the test checks nothing appears in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


# ---------------------------------------------------------------- unreadable files

FILES = {
    "empty": (b"", ("empty file",)),
    "random": (np.random.default_rng(0).bytes(4096), ("not an ONNX model",)),
    "text": (b"this is not a model\n" * 10, ("not an ONNX model",)),
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_unreadable_file(kind: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Empty, random and text files: refused with the file named, nothing written."""
    data, words = FILES[kind]
    path = workdir / f"{kind}.onnx"
    path.write_bytes(data)
    before = snapshot(workdir)
    refused(["analyze", path], capsys, str(path), *words)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_protobuf(fraction: float, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A real model cut short (download interrupted) is refused, never half-analysed."""
    data = conv_model(kernel_shape=[3, 3]).SerializeToString()
    path = workdir / "cut.onnx"
    path.write_bytes(data[: max(int(len(data) * fraction), 1)])
    refused(["analyze", path], capsys, "cut.onnx")


def test_missing_file_and_directory(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    refused(["analyze", workdir / "nope.onnx"], capsys, "no such file")
    refused(["analyze", workdir], capsys, "is a directory")


# ---------------------------------------------------------------- invalid graphs


def test_cycle(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """a = x + b; b = relu(a): a cycle, named node by node."""
    m = model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
               helper.make_node("Relu", ["a"], ["b"], name="n2")], ["b"])
    refused(["analyze", save(m, workdir / "cycle.onnx")], capsys, "cycle", "n1", "n2")


def test_duplicate_tensor_names(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    m = model([helper.make_node("Relu", ["x"], ["a"], name="n1"),
               helper.make_node("Sigmoid", ["x"], ["a"], name="n2")], ["a"])
    refused(["analyze", save(m, workdir / "dup.onnx")], capsys, "duplicate tensor name 'a'", "n2")


def test_node_output_shadows_input(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    m = model([helper.make_node("Relu", ["x"], ["x"], name="n1")], ["x"])
    refused(["analyze", save(m, workdir / "shadow.onnx")], capsys, "duplicate tensor name 'x'")


def test_input_never_produced(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    m = model([helper.make_node("Add", ["x", "ghost"], ["a"], name="n1")], ["a"])
    refused(["analyze", save(m, workdir / "dangling.onnx")], capsys, "'n1' (Add)", "'ghost'")


def test_output_never_produced(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    m = model([helper.make_node("Relu", ["x"], ["a"], name="n1")], ["zzz"])
    refused(["analyze", save(m, workdir / "noout.onnx")], capsys, "'zzz'", "never produced")


ATTRS = {
    "zero stride": {"kernel_shape": [3, 3], "strides": [0, 1]},
    "negative stride": {"kernel_shape": [3, 3], "strides": [-2, 1]},
    "zero kernel": {"kernel_shape": [0, 3]},
    "negative kernel": {"kernel_shape": [-3, 3]},
    "zero dilation": {"kernel_shape": [3, 3], "dilations": [1, 0]},
}


@pytest.mark.parametrize("case", sorted(ATTRS))
def test_nonpositive_window(case: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Zero or negative strides/kernels/dilations: the node and op are named."""
    line = refused(["analyze", save(conv_model(**ATTRS[case]), workdir / "w.onnx")], capsys, "'conv1' (Conv)")
    assert "positive" in line


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_nonpositive_pool(op: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    m = model([helper.make_node(op, ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[0, 2])], ["y"])
    refused(["analyze", save(m, workdir / "p.onnx")], capsys, f"'pool' ({op})", "positive")


# ---------------------------------------------------------------- absurd sizes


def test_absurd_input_dim(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    big = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2**40, 16])
    m = model([helper.make_node("Relu", ["x"], ["a"])], ["a"], inputs=[big])
    refused(["analyze", save(m, workdir / "big.onnx")], capsys, str(2**40))


def test_absurd_initializer_dim_is_never_allocated(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A weight declared 2^40 x 1 x 3 x 3 with no data: refused, no attempt to allocate it."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40, 1, 3, 3])
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")], ["y"], [w])
    refused(["analyze", save(m, workdir / "bigw.onnx")], capsys, str(2**40))


def test_absurd_constant_of_shape_is_not_folded(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """ConstantOfShape([2^40]) feeding a Reshape: folding it would allocate 4 TiB; refused instead."""
    shape = numpy_helper.from_array(np.array([2**40], np.int64), "s")
    m = model([helper.make_node("ConstantOfShape", ["s"], ["big"], name="cos"),
               helper.make_node("Add", ["x", "big"], ["y"], name="add")], ["y"], [shape])
    rc = main(["analyze", str(save(m, workdir / "cos.onnx"))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and str(2**40) in err


@pytest.mark.parametrize("spec,words", [
    ("x:1x1x1099511627776x16", ("between 1 and",)),
    ("x:1x1x0x16", ("between 1 and",)),
    ("x:1x1x-4x16", ("between 1 and",)),
    ("x:1x1xAx16", ("expected NAME:1x3x224x224",)),
    ("nope:1x1x16x16", ("no input 'nope'",)),
    ("x:1x16x16", ("rank 3 given",)),
])
def test_bad_input_shape(spec: str, words: tuple, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    path = save(conv_model(kernel_shape=[3, 3]), workdir / "ok.onnx")
    refused(["analyze", path, "--input-shape", spec], capsys, *words)


def test_bad_index_and_layout(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    path = save(conv_model(kernel_shape=[3, 3]), workdir / "ok.onnx")
    refused(["boxes", path, "--output", "y", "--index", "a,b"], capsys, "--index")
    refused(["boxes", path, "--output", "y", "--index", "99,0"], capsys, "outside")
    refused(["boxes", path, "--output", "nothere", "--index", "0,0"], capsys, "nothere")
    refused(["analyze", path, "--layout", "NCW"], capsys, "layout")


# ---------------------------------------------------------------- external data


def external_model(folder: Path, location: str, in_subgraph: bool = False) -> Path:
    """A Conv whose weight lives in a side file at ``location`` (relative to ``folder``)."""
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "36")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    if in_subgraph:
        cond = numpy_helper.from_array(np.array(True), "cond")
        body = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["yb"])], "then", [], [out("yb")], [w])
        node = helper.make_node("If", ["cond"], ["y"], name="if1", then_branch=body, else_branch=body)
        m = model([node], ["y"], [cond])
    else:
        m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")], ["y"], [w])
    return save(m, folder / "model.onnx")


@pytest.fixture
def opened_files() -> list[str]:
    """Paths opened by this process while the test runs (an audit hook; it outlives the test but
    records only while the list is active)."""
    record: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            record.append(os.fsdecode(args[0]))
    sys.addaudithook(hook)
    yield record
    active[0] = False


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "subgraph"])
def test_external_data_outside_folder_is_refused_unread(how: str, workdir: Path, capsys: pytest.CaptureFixture,
                                                         opened_files: list[str]) -> None:
    """The weight file sits next to the model's folder; every way of pointing at it is refused
    and the secret file is never opened."""
    secret = workdir / "secret.bin"
    secret.write_bytes(np.ones(9, np.float32).tobytes())
    folder = workdir / "model"
    folder.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin",
                "subgraph": "../secret.bin"}[how]
    if how == "symlink":
        (folder / "link.bin").symlink_to(secret)
    path = external_model(folder, location, in_subgraph=how == "subgraph")
    before = snapshot(workdir)
    opened_files.clear()  # the test itself wrote the secret: record from here on
    refused(["analyze", path], capsys, "outside the model's folder", "refused")
    assert str(secret) not in opened_files and not any(p.endswith("secret.bin") for p in opened_files)
    assert snapshot(workdir) == before


def test_external_data_missing_file(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = workdir / "model"
    folder.mkdir()
    refused(["analyze", external_model(folder, "weights.bin")], capsys, "weights.bin", "not found")


def test_external_data_inside_folder_is_read(workdir: Path) -> None:
    """The legitimate case: weights in a side file next to the model are loaded and analysed."""
    folder = workdir / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(np.ones(9, np.float32).tobytes())
    a = analyze(external_model(folder, "weights.bin"))
    assert a["y"].r == (3, 3)
    assert a.graph.constant("w") is not None and float(a.graph.constant("w").sum()) == 9.0


def test_external_data_of_in_memory_model_is_never_read_from_cwd(workdir: Path) -> None:
    """A ModelProto/bytes with external references has no folder: nothing is read (not from cwd)."""
    secret = workdir / "cwd" / "secret.bin"
    secret.write_bytes(np.ones(9, np.float32).tobytes())
    folder = workdir / "model"
    folder.mkdir()
    proto = onnx.load(str(external_model(folder, "secret.bin")), load_external_data=False)
    a = analyze(proto.SerializeToString())
    assert a["y"].r == (3, 3)
    assert a.graph.constant("w") is None


# ---------------------------------------------------------------- size


def test_100k_node_graph_no_recursion_limit(workdir: Path) -> None:
    """A 100k-node chain goes through load, inference, the pass, the reverse pass, the path
    histogram and the report with the default recursion limit; r is the closed form of its
    25k 3x3 convs (eq. 2): 2*25000 + 1."""
    from rfgraph import path_histogram
    from rfgraph.report import render
    path = save(graphs.chain(100_000, size=8), workdir / "chain.onnx")
    assert sys.getrecursionlimit() <= 10_000
    a = analyze(path)
    last = a.outputs[0]
    assert a[last].r == (2 * 25_000 + 1,) * 2
    assert a.fields_toward(last)["x"][0].size() == 2 * 25_000 + 1
    assert path_histogram(a, last)[0] == {2 * 25_000 + 1: 1}
    assert last in render(a, [last], "csv")


def test_errors_are_rfgraph_errors_in_the_api() -> None:
    """The library raises RFGraphError (what the CLI turns into exit 2), never a bare exception."""
    for data in (b"", b"\x00" * 10, conv_model(kernel_shape=[3, 3], strides=[0, 1]).SerializeToString()):
        with pytest.raises(RFGraphError):
            analyze(data)


def _stop_of(m: onnx.ModelProto, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Analyse through the CLI: a partial report (exit 1) whose one stop line names the node."""
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert main(["analyze", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    (stop,) = analyze(str(path)).stops
    return f"{stop.node} {stop.op}: {stop.reason}"


def test_constant_first_input_with_data_later_input_is_a_clear_stop(tmp_path, capsys):
    """BatchNormalization whose X is a constant but whose scale comes from the model input:
    no rule covers it; it used to escape as a TypeError (found by type-checking the op rules)."""
    xc = numpy_helper.from_array(np.ones((1, 1, 16, 16), np.float32), "xc")
    stat = [numpy_helper.from_array(np.zeros(1, np.float32), n) for n in ("b", "mean")]
    var = numpy_helper.from_array(np.ones(1, np.float32), "var")
    nodes = [helper.make_node("ReduceMean", ["x"], ["s"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("BatchNormalization", ["xc", "s", "b", "mean", "var"], ["y"], name="bn")]
    reason = _stop_of(model(nodes, ["y"], [xc, *stat, var]), tmp_path, capsys)
    assert reason.startswith("bn BatchNormalization") and "does not depend on the model input" in reason


def test_pad_with_run_time_axes_is_a_clear_stop(tmp_path, capsys):
    """Pad (opset 18) whose axes input is computed from the data: refused by name, no traceback."""
    pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
    shape1 = numpy_helper.from_array(np.array([1], np.int64), "shape1")
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),  # a value of the data
             helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["mi", "shape1"], ["axes"]),
             helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="pad")]
    consts = [shape1]
    m = model(nodes, ["y"], [pads, *consts])
    m.opset_import[0].version = 18
    reason = _stop_of(m, tmp_path, capsys)
    assert reason.startswith("pad Pad") and "axes computed at run time" in reason
