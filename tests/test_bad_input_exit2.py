"""Bad input ends in exit 2 with one line, never exit 3 (issue 15 §4), and ``erf --format json``
is byte-identical for the same seed (§5).

Failed before (each test): a decompression-bomb PNG, a truncated or non-image file in an --inputs
folder, --fill on a string input or with nan/1e400, diagnose --size-step -1 / --size-max -4 /
--erf-layers 0, table --reference photo.png, a rules file nested 5000 deep, erf on pads of length 3
or the onnx backend's test_softmax_lastdim ended in exit 3 (or exit 0 with warnings); erf on a
graph listed in reverse order claimed the output does not depend on the input; two erf JSON runs
differed in 'seconds'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rfgraph.cli import main

MODEL = "zoo:luo_conv_random_5"


def _exit2_one_line(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rfgraph: error:"), err
    for w in words:
        assert w in err[0], err[0]


def _bomb(path: Path) -> Path:
    """A 30000 x 30000 grey PNG of a few hundred KB (what Pillow calls a decompression bomb)."""
    from PIL import Image

    Image.new("L", (30000, 30000)).save(path)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bomb(tmp_path_factory.mktemp("bomb") / "big.png")


def test_decompression_bomb_in_show(bomb: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _exit2_one_line(capsys, ["show", MODEL, "--output", "output", "--no-erf", "--image", str(bomb),
                             "-o", str(tmp_path / "o.png")], "too large")


def test_decompression_bomb_in_report(bomb: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _exit2_one_line(capsys, ["report", MODEL, "--no-erf", "--image", str(bomb),
                             "-o", str(tmp_path / "r.html")], "too large")


def test_decompression_bomb_in_erf_inputs(bomb: Path, capsys: pytest.CaptureFixture) -> None:
    _exit2_one_line(capsys, ["erf", MODEL, "--runs", "1", "--inputs", str(bomb.parent)], "too large")


@pytest.mark.parametrize("content", [b"this is not a picture", "truncated"])
def test_bad_file_in_inputs_folder(tmp_path: Path, content: bytes | str, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    bad = tmp_path / "a.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        bad.write_bytes(content)  # type: ignore[arg-type]
    _exit2_one_line(capsys, ["erf", MODEL, "--runs", "1", "--inputs", str(tmp_path)], "a.png")


def _with_second_input(path: Path, elem_type: int) -> Path:
    """x (1,1,8,8) -> Conv -> y, plus an input 's' of ``elem_type`` the graph reads through Shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    s = helper.make_tensor_value_info("s", elem_type, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    n = helper.make_tensor_value_info("n", TensorProto.INT64, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [0.1] * 9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Shape", ["s"], ["n"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x, s], [y, n], [w])), path)
    return path


@pytest.mark.parametrize("elem_type, value, words", [
    (TensorProto.STRING, "1", ("STRING", "not a number")),
    (TensorProto.FLOAT, "nan", ("finite",)),
    (TensorProto.FLOAT, "1e400", ("finite",)),
    (TensorProto.INT64, "1e30", ("int64",)),
    (TensorProto.INT32, "2.5", ("integer",)),
])
def test_fill_value_must_fit_the_input(tmp_path: Path, elem_type: int, value: str, words: tuple[str, ...],
                                       capsys: pytest.CaptureFixture) -> None:
    model = _with_second_input(tmp_path / "m.onnx", elem_type)
    _exit2_one_line(capsys, ["analyze", str(model), "--input", "x", "--fill", f"s={value}"], "--fill", *words)


@pytest.mark.parametrize("extra", [["--size-step", "-1"], ["--size-max", "-4"], ["--erf", "--erf-layers", "0"],
                                   ["--object-size", "0"]])
def test_diagnose_counts_must_be_positive(extra: list[str], capsys: pytest.CaptureFixture) -> None:
    _exit2_one_line(capsys, ["diagnose", MODEL, *extra], extra[-2], "at least 1")


def test_table_reference_not_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(photo)
    _exit2_one_line(capsys, ["table", "--reference", str(photo)], "photo.png")


def test_rules_nested_5000_deep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    _exit2_one_line(capsys, ["analyze", MODEL, "--rules", str(rules)], "r.toml")


def _conv_model(path: Path, pads: list[int], reverse: bool = False) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Conv", ["a", "w"], ["y"], pads=pads)]
    graph = helper.make_graph(nodes[::-1] if reverse else nodes, "g", [x], [y], [w])
    onnx.save(helper.make_model(graph), path)
    return path


def test_erf_refuses_what_analyze_refuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = str(_conv_model(tmp_path / "p.onnx", [1, 1, 1]))
    assert main(["analyze", model]) == 2
    capsys.readouterr()
    _exit2_one_line(capsys, ["erf", model, "--runs", "1"], "pads")


def test_erf_on_softmax_lastdim_is_refused(capsys: pytest.CaptureFixture) -> None:
    model = Path(onnx.__file__).parent / "backend/test/data/pytorch-converted/test_softmax_lastdim/model.onnx"
    if not model.is_file():
        pytest.skip("this onnx wheel ships no pytorch-converted test data")
    _exit2_one_line(capsys, ["erf", str(model), "--runs", "1"])


def test_erf_on_nodes_in_reverse_order_matches_the_sorted_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Oracle: the same graph with its nodes in order (a 3x3 all-ones conv after a ReLU)."""
    arrays = []
    for reverse in (False, True):
        out = tmp_path / f"e{reverse}.npy"
        assert main(["erf", str(_conv_model(tmp_path / f"r{reverse}.onnx", [1, 1, 1, 1], reverse)),
                     "--runs", "3", "--npy", str(out), "--format", "json"]) == 0
        arrays.append(np.load(out))
    capsys.readouterr()
    np.testing.assert_array_equal(arrays[0], arrays[1])
    assert arrays[1].sum() == arrays[1][2:5, 2:5].sum() > 0  # inside the centre unit's 3x3 field


def test_erf_json_is_byte_identical_for_one_seed(capsys: pytest.CaptureFixture) -> None:
    outs = []
    for _ in range(2):
        assert main(["erf", MODEL, "--runs", "2", "--seed", "7", "--format", "json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert main(["erf", MODEL, "--runs", "2", "--seed", "7", "--format", "json", "--timings"]) == 0
    assert json.loads(capsys.readouterr().out)["seconds"] >= 0


def test_no_write_into_a_missing_npy_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _exit2_one_line(capsys, ["erf", MODEL, "--npy", str(tmp_path / "no" / "x.npy")], "does not exist")
    assert not os.path.exists(tmp_path / "no")


@pytest.mark.parametrize("declared, text", [([1, 1, 5, 5], "[1, 1, 5, 5]"), ([1, 36], "[1, 36]")])
def test_a_declared_shape_that_contradicts_inference_is_ignored(declared: list[int], text: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """A 3x3 valid Conv of an 8x8 input is 6x6 (ONNX's output-size formula, what onnxruntime
    computes, warning); y declared 5x5, or of rank 2 (ddddocr's OCR model declares its output
    [1, seqlen] and computes [32, 1, 8210]), was reported as declared by analyze and refused by erf.
    Now the declaration is dropped with a note: analyze reports 6x6, erf seeds the centre of the
    6x6 map and its ERF lies in that unit's 3x3 field."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [0.1] * 9)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "d.onnx"
    onnx.save(helper.make_model(graph), path)
    assert main(["analyze", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["endpoints"][-1]["shape"] == [1, 1, 6, 6]
    note = (f"'y' is declared {text} in the file, but ONNX shape inference gives [1, 1, 6, 6] (what "
            f"onnxruntime computes): the declaration is ignored")
    assert doc["shape_notes"] == [note]
    npy = tmp_path / "e.npy"
    assert main(["erf", str(path), "--runs", "1", "--npy", str(npy), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["unit"] == [2, 2] and any("declared" in n for n in doc["notes"])
    erf = np.abs(np.load(npy))
    assert erf[2:5, 2:5].min() > 0 and erf.sum() == erf[2:5, 2:5].sum()


@pytest.mark.parametrize("node, words", [
    (onnx.NodeProto(), ("node #1", "no op type")),
    (helper.make_node("Relu", ["x"], [""], name="dangling"), ("node #1 'dangling' (Relu)", "no output")),
])
def test_invalid_nodes_refused_before_any_work(node: onnx.NodeProto, words: tuple[str, ...], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """An empty node (an 8 MB file of 4M of them took 5 GB and 3 min, then was analysed as if they
    were absent) or a node without outputs: one line naming the node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), node], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _exit2_one_line(capsys, ["analyze", str(path)], *words)


def test_erf_of_a_rank_0_output_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ReduceSum with keepdims=0 gives a single number: erf ended in IndexError (exit 3)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "rsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    _exit2_one_line(capsys, ["erf", str(path)], "'y' is a single number", "--output")


def test_gaussian_fit_needs_as_many_pixels_as_parameters() -> None:
    """A 1 x 2 map has 2 pixels for 5 parameters: scipy's 'lm' raised ValueError (erf exit 3 on a
    1x2 input); no fit is reported instead, and a 3 x 3 map still gets one."""
    from rfgraph.metrics import gaussian_fit

    assert gaussian_fit(np.array([[1.0, 0.5]])) is None
    fit = gaussian_fit(np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5]))
    assert fit is not None and np.allclose(fit.mu, (1.0, 1.0))


@pytest.mark.parametrize("command", ["analyze", "erf"])
def test_a_node_missing_a_required_input_is_one_line(command: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """MatMul with one input ended in IndexError (exit 3) in both commands."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["x"], ["y"], name="mm")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _exit2_one_line(capsys, [command, str(path)], "'mm' (MatMul) has 1 input(s)", "at least 2")


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_if_nested_200_deep_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model whose If nests 200 deep (written as raw protobuf: Python's protobuf cannot even build
    it) was reported as 'not an ONNX model or truncated file'; it is an ONNX model past protobuf's
    nesting limit, and the line says so."""
    graph = _field(1, _field(1, b"x") + _field(2, b"o") + _field(4, b"Identity"))  # GraphProto.node
    for _ in range(200):  # NodeProto If with then_branch = the graph so far (AttributeProto type GRAPH)
        attr = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)
        graph = _field(1, _field(1, b"c") + _field(2, b"o") + _field(4, b"If") + _field(5, attr))
    model = _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, _varint(2 << 3) + _varint(17))
    path = tmp_path / "deep.onnx"
    path.write_bytes(model)
    _exit2_one_line(capsys, ["analyze", str(path)], "deeper than protobuf's parsing limit", "If in If")


@pytest.mark.parametrize("op, group, w_shape", [("Conv", 2, [4, 3, 3, 3]), ("Conv", 2 ** 40, [4, 3, 3, 3]),
                                                ("Conv", 0, [4, 3, 3, 3]), ("ConvTranspose", 1, [2, 4, 3, 3]),
                                                ("ConvTranspose", 2, [3, 4, 3, 3])])
@pytest.mark.parametrize("command", ["analyze", "erf"])
def test_groups_that_do_not_fit_the_channels_are_refused(op: str, group: int, w_shape: list[int], command: str,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A group that does not fit the channels (the fuzz's Conv with group 2^40 on 3 channels): one
    line naming the node (erf hit an assertion in the gradient builder, exit 3, once the output's
    declared shape no longer refused the model first)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, w_shape, [0.1] * int(np.prod(w_shape)))
    node = helper.make_node(op, ["x", "w"], ["y"], group=group, name="bad")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _exit2_one_line(capsys, [command, str(path)], "node 'bad'", f"group {group}")
