"""`rfgraph analyze`: formats, end-point selection, global fields, layouts, partial reports on
unsupported ops, and the dynamic-shape error; numbers checked against closed forms."""

import csv
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph.cli import main
from tests.graphs import G, chain


def _two_convs(tmp_path):
    """3x3 s1 p1 then 3x3 s2 p1: r = 5, S = 2, P = 2 (eqs. 2, 9, 10)."""
    g = G((32, 32))
    y = g.conv(g.relu(g.conv("x", 3, 1, pads=[1] * 4)), 3, 2, pads=[1] * 4)
    path = tmp_path / "m.onnx"
    onnx.save(g.model(y), path)
    return path, y


def test_table_json_csv_markdown(tmp_path, capsys):
    path, y = _two_convs(tmp_path)
    assert main(["analyze", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["endpoints"]
    assert (row["tensor"], row["r"], row["S"], row["P"]) == (y, [5, 5], [2, 2], [2, 2])
    assert doc["aligned"] is True and doc["input"]["axis_names"] == ["H", "W"]
    assert main(["analyze", str(path), "--format", "csv", "--all"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["r"] for r in rows] == ["1", "3", "3", "5"]  # input, conv, relu, conv
    assert main(["analyze", str(path), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| tensor" in out and f"| {y}" in out


def test_output_selection_and_unknown_tensor(tmp_path, capsys):
    path, _ = _two_convs(tmp_path)
    first = rfgraph.analyze(str(path)).graph.nodes[0].output[0]
    assert main(["analyze", str(path), "--output", first, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"][0]["r"] == [3, 3]
    assert main(["analyze", str(path), "--output", "nope"]) == 2
    assert "no tensor named 'nope'" in capsys.readouterr().err


def _classifier(head: str) -> onnx.ModelProto:
    """conv -> (GlobalAveragePool | Flatten+Gemm) classifier."""
    g = G((8, 8))
    feat = g.conv("x", 3, 1, pads=[1] * 4)
    if head == "gap":
        out = g.node("GlobalAveragePool", [feat])
    else:
        flat = g.node("Flatten", [feat], axis=1)
        w = g._init(np.ones((2 * 8 * 8, 4), np.float32))
        out = g.node("Gemm", [flat, w])
    return g.model(out), feat, out


@pytest.mark.parametrize("head", ["gap", "gemm"])
def test_global_ops_are_reported_with_where(head):
    """Ops that read every position make the field global, named with the node; the last local
    feature map is reported by default next to the output."""
    model, feat, out = _classifier(head)
    a = rfgraph.analyze(model)
    assert a[out].is_global and a[out].r == (None, None)
    node = a[out].fields[0].global_at
    assert node in a.global_at and a[feat].r == (3, 3)
    assert a.default_endpoints() == [feat, out]


def test_attention_matmul_is_global_and_tokens_local_before_it():
    """Patch embedding (k=s=4) -> tokens -> Q K^T: tokens see a 4x4 patch, the scores are global."""
    g = G((16, 16), channels=3)
    emb = g.conv("x", 4, 4, cout=8)
    tokens = g.node("Transpose", [g.node("Reshape", [emb, g._init(np.array([1, 8, 16], np.int64), "shape")])],
                    perm=[0, 2, 1])
    wq = g._init(np.ones((8, 8), np.float32))
    q = g.node("MatMul", [tokens, wq])
    kt = g.node("Transpose", [q], perm=[0, 2, 1])
    scores = g.node("MatMul", [q, kt])
    attn = g.node("Softmax", [scores], axis=-1)
    out = g.node("MatMul", [attn, q])
    a = rfgraph.analyze(g.model(out))
    assert a[q].r == (4, 4) and a[q].S == (4, 4)
    assert a[scores].is_global and a[out].is_global


def test_channels_last_input_with_leading_transpose():
    """NHWC input followed by Transpose(0,3,1,2): spatial axes are found at tensor axes 1, 2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 20, 3])
    w = numpy_helper.from_array(np.ones((4, 3, 5, 5), np.float32), "w")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[5, 5], strides=[2, 2])]
    graph = helper.make_graph(nodes, "nhwc", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    a = rfgraph.analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert a.spatial_axes == (1, 2)
    assert (a["y"].r, a["y"].S, a["y"].units) == ((5, 5), (2, 2), (8, 8))


def _with_unknown_op(tmp_path):
    """conv -> MysteryOp -> conv: the part before the unknown op is still analysed."""
    g = G((16, 16))
    c1 = g.conv("x", 3, 1)
    g.nodes.append(helper.make_node("MysteryOp", [c1], ["m"], name="mystery", domain="com.example"))
    g.channels["m"] = 2
    w = g._init(g._weight((2, 2, 3, 3)))
    g.nodes.append(helper.make_node("Conv", ["m", w], ["y"], kernel_shape=[3, 3], name="after"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(g.nodes, "t", [g.input], [y], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "unknown.onnx"
    onnx.save(model, path)
    return path, c1


def test_unknown_op_stops_with_partial_report(tmp_path, capsys):
    path, c1 = _with_unknown_op(tmp_path)
    a = rfgraph.analyze(str(path))
    assert a[c1].r == (3, 3) and "y" not in a
    (stop,) = a.stops
    assert (stop.node, stop.op, stop.lost) == ("mystery", "MysteryOp", 2)
    assert main(["analyze", str(path), "--all"]) == 1
    out = capsys.readouterr().out
    assert c1 in out and "STOPPED at node 'mystery' (MysteryOp)" in out


def test_dynamic_spatial_dims_suggest_input_shape(tmp_path, capsys):
    """Analysed at an unknown size (issue 14 §2: r, S, P do not depend on it here); a command
    that needs a size (boxes) suggests --input-shape."""
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["img", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2])
    graph = helper.make_graph([node], "dyn", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["analyze", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"][0]["P"] == [0, 0]
    assert main(["boxes", str(path), "--output", "y", "--index", "0,0"]) == 2
    err = capsys.readouterr().err
    assert "dynamic spatial dims" in err and "--input-shape img:" in err and "Traceback" not in err
    assert main(["analyze", str(path), "--input-shape", "img:1x3x64x64", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"][0]["r"] == [3, 3]


def test_boxes_of_a_detection_like_map(tmp_path, capsys):
    """Every cell's box equals eqs. (5)-(6): [u*S - P, u*S - P + r - 1] per axis."""
    path, y = _two_convs(tmp_path)
    ep = rfgraph.analyze(str(path))[y]
    boxes = ep.boxes()
    assert boxes.shape == (16, 16, 4)
    i, j = 5, 9
    assert list(boxes[i, j]) == [i * 2 - 2, j * 2 - 2, i * 2 - 2 + 4, j * 2 - 2 + 4]
    assert main(["boxes", str(path), "--output", y, "--index", "5,9", "--format", "json"]) == 0
    unit = json.loads(capsys.readouterr().out)["units"][0]
    assert unit["region"] == [[8, 12], [16, 20]] and unit["centre"] == [10, 18]


def test_analysis_reports_its_stages_in_order():
    """``on_stage`` sees every stage of ``analyze`` once, in order (what the CLI displays)."""
    from rfgraph.analysis import STAGES

    seen: list[str] = []
    model, _ = chain((16, 16), [(3, 1, 1, 1)] * 2)
    rfgraph.analyze(model, on_stage=seen.append)
    assert tuple(seen) == STAGES


def test_stage_display_names_the_running_stage(monkeypatch, capsys):
    """On a terminal, a long analysis shows the running stage and elapsed time on stderr, then
    clears the line; with display off (pipes, --quiet) nothing is written."""
    import time

    from rfgraph.commands import _common

    monkeypatch.setattr(_common, "SHOW_AFTER_S", 0.0)
    with _common.stage_display(True) as on_stage:
        on_stage("loading and inferring shapes")
        time.sleep(0.7)  # one tick of the display thread
        on_stage("receptive-field pass")
    err = capsys.readouterr().err
    assert "rfgraph: loading and inferring shapes (0/4 done)" in err and "receptive-field pass (1/4 done)" in err
    with _common.stage_display(False) as on_stage:
        on_stage("loading and inferring shapes")
    assert capsys.readouterr().err == ""


def test_table_lists_ten_misaligned_merges_and_counts_the_rest(tmp_path, capsys):
    """Twelve merges each adding a branch shifted by one more pixel (pads k/2-j and k/2+j): the
    table names the first ten, in graph order, and says how many more there are; JSON keeps all."""
    g = G((32, 32))
    x = g.conv("x", 3, 1, pads=[1] * 4)
    for j in range(1, 13):
        x = g.add(g.conv(x, 3, 1, pads=[1] * 4), g.conv(x, 3, 1, pads=[1, 1, 1, 1] if j % 2 else [1, 0, 1, 2]))
    path = tmp_path / "m.onnx"
    onnx.save(g.model(x), path)
    analysis = rfgraph.analyze(path)
    found = list(dict.fromkeys((m.node, m.axis) for m in analysis.misaligned))
    assert len(found) == 6  # the even-j merges, along W
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("misaligned merge ") == 6 and "more misaligned merges" not in out
    for _ in range(8):  # eight more, all shifted
        x = g.add(g.conv(x, 3, 1, pads=[1] * 4), g.conv(x, 3, 1, pads=[1, 0, 1, 2]))
    onnx.save(g.model(x), path)
    found = list(dict.fromkeys((m.node, m.axis) for m in rfgraph.analyze(path).misaligned))
    assert len(found) == 14
    assert main(["analyze", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [ln.split()[2] for ln in lines if ln.startswith("misaligned merge ")]
    assert listed == [node for node, _ in found[:10]]
    assert "... and 4 more misaligned merges along an axis (--format json lists them all)" in lines
    assert main(["analyze", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len({(m["node"], m["axis"]) for m in data["misaligned_merges"]}) == 14


@pytest.mark.parametrize("size, covers", [(8, False), (9, True)])
def test_covers_input_means_every_pixel_is_read(size: int, covers: bool) -> None:
    """A VALID stride-2 3-tap conv on 8 pixels never reads pixel 7 (Keras' Xception, NASNet and
    InceptionV3 stems on even inputs), though a wide conv after it makes every unit's unclipped
    region span the input: 'covers input' is no, as the impulse oracle says; on 9 pixels, yes."""
    from rfgraph.report import covers_input
    from tests.bruteforce import impulse_support

    g = G((size,))
    y = g.conv(g.conv("x", 3, 2), 7, pads=[3, 3])
    model = g.model(y)
    a = rfgraph.analyze(model)
    ep = a[y]
    assert all(ep.region((u,))[0][0] <= 0 and ep.region((u,))[0][1] >= size - 1 for u in range(ep.units[0]))
    seen = [impulse_support(model, y, (u,))[0] for u in range(ep.units[0])]
    assert all(lo == 0 and hi == size - 1 for lo, hi in seen) is covers
    assert covers_input(ep, a) is covers


def test_an_op_onnx_does_not_define_is_called_a_broken_export() -> None:
    """tf2onnx can leave a TensorFlow function call (StatefulPartitionedCall) in ONNX's own
    domain: the stop says ONNX has no such operator and to export again, not only --rules; an
    unknown op of another domain keeps the plain message.  tf2onnx --tflite leaves a TFLite op it
    cannot convert as TFL_<name> (mediapipe's Convolution2DTransposeBias): said so, not "export
    again" (its parameters are not in the graph)."""
    for op, domain, said in [("StatefulPartitionedCall", "", "the exporter left a framework call"),
                             ("StatefulPartitionedCall", "com.example", "no receptive-field rule"),
                             ("TFL_Convolution2DTransposeBias", "",
                              "a TensorFlow Lite op (Convolution2DTransposeBias) that tf2onnx could not convert")]:
        node = helper.make_node(op, ["x"], ["y"], name="call", domain=domain)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])])
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        stops = rfgraph.analyze(helper.make_model(graph, opset_imports=opsets)).stops
        assert [s.node for s in stops] == ["call"] and said in stops[0].reason, stops
        assert "--rules FILE" in stops[0].reason
