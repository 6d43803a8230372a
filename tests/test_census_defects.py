"""Defects of issue 12 found by running every command on real exports, each on a small model
built here that has the same structure.

Cases: a detector whose three heads meet in a stopping Concat keeps every head as a default end
point (by construction: the Concat's inputs) in analyze, diagnose and report (class 5); erf on
a tensor without units (the detector's concatenated [anchors, 6] output, a Flatten of a map) is
refused naming the tensors that have units, and on a tensor after an SE gate (global, positions
kept) seeds one position: its gradient against onnxruntime central differences (class 6);
show and report read a 1-D model with the --layout given (the TRF against onnxruntime impulses),
and a report whose heatmap failed neither counts it as drawn nor exits 0 (class 7).
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import analyze
from rfgraph.cli import main
from rfgraph.report import render
from tests.graphs import G


def three_head_detector(tail: str = "mixed") -> tuple[onnx.ModelProto, list[str]]:
    """A stem and three heads at strides 2, 4, 8, each flattened to [1, anchors, 6] (Transpose +
    Reshape) and concatenated along the anchors, then ``tail``: "mixed", each value divided by its
    mean over the anchors (no piece of the output is computed from its own anchors only: the
    output reads the whole input, an upper bound from the Concat); "unknown", a Compress of
    every other anchor (no rule: the analysis stops there); "none" (the output is analysed as its pieces:
    ``tests/test_pieces.py``). Returns the model and the heads (the Concat's inputs)."""
    g = G((16, 16), channels=3)
    x = g.conv("x", 3, 2, pads=[1] * 4, cout=4)
    heads = []
    for s in (1, 2, 4):
        h = g.conv(x, 3, s, pads=[1] * 4, cout=6)
        t = g.node("Transpose", [h], perm=[0, 2, 3, 1])
        heads.append(g.node("Reshape", [t, g._init(np.array([1, -1, 6]))]))
    cat = g.node("Concat", heads, axis=1)
    if tail == "mixed":
        cat = g.node("Div", [cat, g.node("ReduceMean", [cat], axes=[1])])
    elif tail == "unknown":  # no receptive-field rule, onnxruntime runs it: a pick of anchors
        keep = numpy_helper.from_array(np.arange(84) % 2 == 0, "keep")
        g.inits.append(keep)
        cat = g.node("Compress", [cat, "keep"], axis=1)
    out = helper.make_tensor_value_info(cat, TensorProto.FLOAT, None)
    graph = helper.make_graph(g.nodes, "detector", [g.input], [out], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, heads


def _grids(model: onnx.ModelProto, heads: list[str]) -> list[str]:
    """Each head's conv output: the grid its Transpose and Reshape relabel into tokens."""
    made = {o: n for n in model.graph.node for o in n.output}
    return [made[made[h].input[0]].input[0] for h in heads]


def test_a_stop_after_the_heads_keeps_every_head_as_an_end_point(tmp_path: Path, capsys) -> None:
    """The analysis stops after the heads' Concat; the default end points are its three inputs
    (before: none, so analyze showed one tensor, diagnose one head and the report 0 heatmaps),
    each as the conv output its Transpose and Reshape relabel (the same field, with a grid)."""
    model, heads = three_head_detector("unknown")
    a = analyze(model, {"x": (1, 3, 16, 16)})
    assert [s.op for s in a.stops] == ["Compress"]
    grids = _grids(model, heads)
    assert a.default_endpoints() == grids
    assert [a[g].fields for g in grids] == [a[h].fields for h in heads] and all(all(a[g].units) for g in grids)
    _diagnose_and_report_cover(model, grids, 1, tmp_path, capsys)


def _diagnose_and_report_cover(model: onnx.ModelProto, names: list[str], code: int, tmp_path: Path,
                               capsys) -> None:
    """diagnose covers exactly ``names`` and the report draws each one's ERF, both exiting ``code``."""
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    assert main(["diagnose", str(path), "--input-shape", "x:1x3x16x16", "--no-size-range",
                 "--format", "json"]) == code
    assert [c["endpoint"] for c in json.loads(capsys.readouterr().out)["coverage"]] == names
    assert main(["report", str(path), "--input-shape", "x:1x3x16x16", "--erf-runs", "1",
                 "-o", str(tmp_path / "r.html"), "--format", "json"]) == code
    cards = json.loads(capsys.readouterr().out)["erf"]
    assert [c["tensor"] for c in cards] == names and not any(c["error"] for c in cards)


def test_heads_joined_as_the_output_are_its_pieces(tmp_path: Path, capsys) -> None:
    """Without a tail the Concat is the output: it is cut into the three heads' pieces, the
    default end points, each with its head's field; diagnose and report cover all three, exit 0."""
    model, heads = three_head_detector("none")
    a = analyze(model, {"x": (1, 3, 16, 16)})
    out = model.graph.output[0].name
    names = [p.name for p in a.pieces[out]]
    assert not a.stops and a.default_endpoints() == names
    assert [a[n].fields for n in names] == [a[h].fields for h in heads]
    _diagnose_and_report_cover(model, names, 0, tmp_path, capsys)


def ort_gradient(model: onnx.ModelProto, x: np.ndarray, objective, h: float = 1e-3) -> np.ndarray:
    """d objective(y) / dx by central differences through onnxruntime, in float64 sums."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        yp = sess.run(None, {name: xp})[0].astype(np.float64)
        ym = sess.run(None, {name: xm})[0].astype(np.float64)
        grad[idx] = (objective(yp) - objective(ym)) / (float(xp[idx]) - float(xm[idx]))
    return grad


def test_erf_refuses_a_tensor_without_units(tmp_path: Path, capsys) -> None:
    """The detector's output (after the stop) has no known unit; before, erf summed every
    element and exited 0.  Refused naming the stop and the heads (the tensors with units)."""
    model, heads = three_head_detector("unknown")
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    assert main(["erf", str(path), "--output", model.graph.output[0].name, "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "axis of positions" in err and "stopped at" in err and all(h in err for h in _grids(model, heads))


def test_erf_of_a_flattened_map_says_its_unit_is_the_whole_tensor() -> None:
    """A Flatten of a head folds its positions into features: the analysis' one unit holds them all
    (its field is their union), and the ERF's note says the whole tensor is summed."""
    from rfgraph.erf import compute_erf

    model, heads = three_head_detector()
    model.graph.node.append(helper.make_node("Flatten", [heads[0]], ["flat"], axis=1))
    result = compute_erf(model, "flat", runs=1)
    assert any("no axis of positions" in n for n in result.notes)


def se_gated() -> onnx.ModelProto:
    """conv -> x * sigmoid(GlobalAveragePool(x)): every position of the product sees the whole
    input (global), but the product keeps its grid of positions."""
    g = G((6, 6), channels=1, batch=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    gate = g.node("Sigmoid", [g.node("GlobalAveragePool", [c])])
    return g.model(g.node("Mul", [c, gate]))


def test_erf_after_an_se_gate_seeds_one_position() -> None:
    """The seed is one position (default: the centre, (2, 2) of 6 x 6), all channels: the engine's
    gradient equals onnxruntime central differences of y[0, :, 2, 2].sum() (before: the sum of
    every position)."""
    from rfgraph.erf import GradientEngine, _load, resolve_target
    from rfgraph.options import ModelOptions

    model = se_gated()
    proto, a, _ = _load(model, ModelOptions({"": (1, 1, 6, 6)}))
    out = model.graph.output[0].name
    assert a is not None and a[out].gates == ("Mul_9",)  # global through the gate (local when held)
    target = resolve_target(a, proto, out, None, None, 4, (2, 3), (1, 2, 6, 6))
    assert target.tensor_axes == (2, 3) and target.unit == (2, 2)
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    got = GradientEngine(proto, target, "x", (1, 1, 6, 6), 1)(x)
    want = ort_gradient(proto, x, lambda y: y[0, :, 2, 2].sum())
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-4)


def test_erf_of_a_global_vector_says_its_unit_is_the_whole_tensor() -> None:
    """A classifier's logits [1, 2] have no positions: the ERF of their sum is kept (Luo's ERF of
    a class score) but said, not silent."""
    from rfgraph.erf import compute_erf

    g = G((6, 6), channels=1, batch=1)
    logits = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("x", 3, 1, cout=2)])], axis=1)
    result = compute_erf(g.model(logits), runs=1)
    assert any("no axis of positions" in n and "summed" in n for n in result.notes)


def one_d_signal() -> onnx.ModelProto:
    """A batch of 1-D signals [1, 64] (layout NL): Unsqueeze, a 5-tap conv, ReLU."""
    from onnx import numpy_helper

    w = np.random.default_rng(0).uniform(0.5, 1.5, (2, 1, 5)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["c"], kernel_shape=[5], pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "oned", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.array([1], np.int64), "ax")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_show_and_report_use_the_layout_for_the_erf_of_a_1d_model(tmp_path: Path, capsys) -> None:
    """--layout NL reached the TRF but not the ERF engine ("0 axes of positions"): show failed and
    the report's card held the error.  The unit's region is the impulse support (onnxruntime)."""
    import onnxruntime as ort

    path = tmp_path / "oned.onnx"
    onnx.save(one_d_signal(), path)
    assert main(["show", str(path), "--layout", "NL", "--output", "y", "--runs", "2",
                 "-o", str(tmp_path / "s.png"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sess = ort.InferenceSession(one_d_signal().SerializeToString(), providers=["CPUExecutionProvider"])
    reached = [i for i in range(64) if sess.run(None, {"x": np.eye(64, dtype=np.float32)[i:i + 1]})[0]
               [0, :, doc["index"][0]].sum() > 0]  # positive weights, no bias: > 0 iff connected
    assert doc["index"] == [31] and doc["region"] == [[reached[0], reached[-1]]]
    assert doc["erf"]["metrics"]["erf_extent"][0] <= 5
    assert main(["report", str(path), "--layout", "NL", "--erf-runs", "2",
                 "-o", str(tmp_path / "r.html"), "--format", "json"]) == 0
    cards = json.loads(capsys.readouterr().out)["erf"]
    assert [c["tensor"] for c in cards] == ["y"] and cards[0]["error"] is None


def position_softmaxed() -> onnx.ModelProto:
    """conv -> Softmax over H, then over W: global along both axes, grid kept.  (An
    InstanceNormalization was used here: its statistics are now held constant, a gate, so its
    output has a local field.)"""
    g = G((6, 6), channels=1, batch=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    return g.model(g.node("Softmax", [g.node("Softmax", [c], axis=2)], axis=3))


def test_a_report_whose_heatmap_failed_says_so_and_exits_1(tmp_path: Path, capsys) -> None:
    """A heatmap asked for a global tensor cannot be drawn: before, "1 ERF heatmap(s)", exit 0.
    (A global tensor: an SE gate's product, or a norm's output, now has a local field.)"""
    path = tmp_path / "global.onnx"
    model = position_softmaxed()
    onnx.save(model, path)
    out = model.graph.output[0].name
    assert main(["report", str(path), "--erf-output", out, "--erf-runs", "1",
                 "-o", str(tmp_path / "r.html")]) == 1
    text = capsys.readouterr().out
    assert "0 ERF heatmap(s) (1 failed" in text


def audio_embedding(shape: tuple[int, ...] = (1, 76, 32, 1)) -> onnx.ModelProto:
    """A channels-last spectrogram [1, time, mel, 1] squeezed and unsqueezed to [1, 1, time, mel]
    before a 3x5 stride-(2, 1) conv (no Transpose, no Conv reads the input itself)."""
    from onnx import numpy_helper

    w = np.random.default_rng(0).uniform(0.5, 1.5, (2, 1, 3, 5)).astype(np.float32)
    nodes = [helper.make_node("Squeeze", ["x", "a3"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "a1"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["y"], kernel_shape=[3, 5], strides=[2, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([3], np.int64), "a3"),
             numpy_helper.from_array(np.array([1], np.int64), "a1")]
    graph = helper.make_graph(nodes, "audio", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_channels_last_spectrogram_is_read_as_nhwc_and_says_so(tmp_path: Path, capsys) -> None:
    """[1, 76, 32, 1]: the last axis (1 entry) is the channel; before, NCHW was assumed silently and
    the 76 time steps were a channel axis.  Unit (5, 7)'s region is the impulse support measured
    with onnxruntime (positive weights, no bias: > 0 iff connected).  The graph tells it too (the
    channel squeezed, a channel axis unsqueezed at 1, a Conv): the reason names that path."""
    import onnxruntime as ort

    model = audio_embedding()
    a = analyze(model)
    assert a.spatial_axes == (1, 2) and a.layout == "NHWC" and "then Conv" in a.layout_reason
    batched = onnx.ModelProto()
    batched.CopyFrom(model)
    batched.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    sess = ort.InferenceSession(batched.SerializeToString(), providers=["CPUExecutionProvider"])
    impulses = np.eye(76 * 32, dtype=np.float32).reshape(76 * 32, 76, 32, 1)
    hit = sess.run(None, {"x": impulses})[0][:, :, 5, 7].sum(axis=1) > 0
    ts, fs = np.unravel_index(np.flatnonzero(hit), (76, 32))
    assert a["y"].region((5, 7)) == ((ts.min(), ts.max()), (fs.min(), fs.max()))
    path = tmp_path / "audio.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path)]) == 0
    assert "layout NHWC: the input reaches Squeeze" in capsys.readouterr().out
    assert main(["analyze", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["layout"] == "NHWC"
    assert main(["diagnose", str(path), "--no-size-range", "--format", "json"]) == 0
    assert "then Conv" in json.loads(capsys.readouterr().out)["input"]["layout_reason"]


def test_a_coin_toss_layout_is_refused_naming_layout(tmp_path: Path, capsys) -> None:
    """[1, 40, 32, 36]: neither axis 1 nor the last looks like channels and nothing reads the
    input with a known layout: refused (exit 2) naming --layout; with it, analysed."""
    model = audio_embedding((1, 40, 32, 36))
    del model.graph.node[:]  # Unsqueeze then Squeeze: nothing tells where the channels are
    model.graph.node.extend([helper.make_node("Unsqueeze", ["x", "a1"], ["u5"]),
                             helper.make_node("Squeeze", ["u5", "a1"], ["y"])])
    path = tmp_path / "toss.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path)]) == 2
    assert "--layout" in capsys.readouterr().err
    assert main(["analyze", str(path), "--layout", "NHWC"]) == 0


def test_erf_over_images_feeds_an_nhwc_model(tmp_path: Path) -> None:
    """An NHWC input [1, 8, 8, 3] (a leading Transpose tells its layout) takes images from a
    folder (before: "images need a 1- or 3-channel NCHW input").  The model is one linear 3x3
    conv, so the ERF of unit (3, 3) is the closed form sum_c |sum_o w[o, c]| on its 3x3 window,
    whatever the images."""
    from onnx import numpy_helper
    from PIL import Image

    from rfgraph.erf import compute_erf

    w = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[3, 3])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    result = compute_erf(model, unit=(3, 3), runs=2, inputs=str(folder))
    want = np.zeros((8, 8))
    want[3:6, 3:6] = np.abs(w.sum(axis=0)).sum(axis=0)
    np.testing.assert_allclose(result.erf, want, rtol=1e-5, atol=1e-6)


def test_fd_is_refused_past_its_budget_with_the_estimate(tmp_path: Path, capsys) -> None:
    """A 5x5 conv on 3 x 16 x 16, centre unit: 3 x 5 x 5 elements in its field, 2 forwards each,
    4 runs = 600 forward passes (closed form).  Over a tiny budget erf refuses (exit 2) with that
    count, --method grad and --fd-budget; before, fd ran whatever its cost."""
    g = G((16, 16), channels=3, batch=1)
    path = tmp_path / "conv.onnx"
    onnx.save(g.model(g.conv("x", 5, 1, pads=[2] * 4)), path)
    assert main(["erf", str(path), "--method", "fd", "--runs", "4", "--fd-budget", "1e-9"]) == 2
    err = capsys.readouterr().err
    assert "about 600 forward passes" in err and "--method grad" in err and "--fd-budget" in err


def test_fd_progress_counts_forward_passes(monkeypatch) -> None:
    """The bar's total is the forward passes (600, as above) and it advances per batch of them to
    that total (before: a bar over inputs, at 0 through the whole of each input)."""
    from rfgraph import erf as erf_mod

    ticks: list[tuple[str, int]] = []

    def fake_progress(total: int, enabled: bool, unit: str = "input"):
        ticks.append((unit, total))
        return lambda n, close=False: ticks.append((unit, -n))

    monkeypatch.setattr(erf_mod, "_progress", fake_progress)
    g = G((16, 16), channels=3, batch=1)
    erf_mod.compute_erf(g.model(g.conv("x", 5, 1, pads=[2] * 4)), method="fd", runs=4, progress=True)
    forward = [n for unit, n in ticks if unit == "forward"]
    assert forward[0] == 600 and -sum(forward[1:]) == 600 and len(forward) > 2


def test_boxes_clip_centre_lies_in_the_clipped_box_and_centres_are_numbers(tmp_path: Path, capsys) -> None:
    """A 5x5 conv with padding 4 on 8 x 8: unit (0, 0) sees pixels [0, 0] per axis (impulses through
    onnxruntime), its field [-4, 0] centred at -2, outside the image.  --clip prints the clipped
    box's centre (0) and the field's (-2) apart (before: -2 beside the box [0, 0]).  A 2x2 conv's
    centre 1/2 is the number 0.5 with "1/2" beside it (before: the string "1/2" only)."""
    from tests.bruteforce import impulse_support

    g = G((8, 8), channels=1)
    model = g.model(g.conv("x", 5, 1, pads=[4] * 4, cout=1))
    out = model.graph.output[0].name
    support = impulse_support(model, out, (0, 0))
    assert support == [(0, 0), (0, 0)]  # clipped to the image: the pixels the unit sees
    path = tmp_path / "pad.onnx"
    onnx.save(model, path)
    assert main(["boxes", str(path), "--output", out, "--index", "0,0", "--clip", "--format", "json"]) == 0
    unit = json.loads(capsys.readouterr().out)["units"][0]
    assert unit["region"] == [[0, 0], [0, 0]]
    assert unit["centre"] == [(a + b) / 2 for a, b in support] and unit["field_centre"] == [-2, -2]
    g2 = G((8, 8), channels=1)
    model2 = g2.model(g2.conv("x", 2, 1, cout=1))
    onnx.save(model2, path)
    out2 = model2.graph.output[0].name
    assert main(["boxes", str(path), "--output", out2, "--index", "0,0", "--format", "json"]) == 0
    unit = json.loads(capsys.readouterr().out)["units"][0]
    lo, hi = impulse_support(model2, out2, (0, 0))[0]
    assert unit["centre"] == [(lo + hi) / 2] * 2 == [0.5, 0.5] and unit["centre_exact"] == ["1/2", "1/2"]


def test_erf_png_draws_a_visible_trf_edge_when_the_field_exceeds_the_image(tmp_path: Path) -> None:
    """A TRF [-10, 25] x [-10, 25] on a 16 x 16 map: its box was drawn off the picture while the
    legend said "TRF".  Now the clipped edge is drawn (red pixels on the map's border, read back
    from the PNG: 2658 against 128, the legend swatch, before) and the legend says so."""
    from PIL import Image

    from rfgraph.heatmap import render_png, trf_in_image

    region = ((-10, 25), (-10, 25))
    assert trf_in_image(region, (16, 16)) == (((0, 15), (0, 15)), "TRF exceeds the image (clipped edge)")
    erf = np.exp(-((np.arange(16) - 7.5) ** 2) / 20)[:, None] * np.ones((1, 16))
    with_box, without = tmp_path / "box.png", tmp_path / "none.png"
    render_png(erf, with_box, region)
    render_png(erf, without, None)
    a = np.asarray(Image.open(with_box).convert("RGB")).astype(int)
    b = np.asarray(Image.open(without).convert("RGB")).astype(int)
    red = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)
    assert red.sum() > 1000 and not ((b[..., 0] > 180) & (b[..., 1] < 80) & (b[..., 2] < 80)).any()


def test_erf_title_of_a_global_unit_names_no_region(tmp_path: Path, capsys) -> None:
    """The table's title said Python's 'TRF None' for a unit whose field is global (timm's Swin):
    it says there is no local TRF region; a local unit keeps its [u0, v0] boxes."""
    from rfgraph import cli

    g = G((6, 6), channels=1, batch=1)
    path = tmp_path / "global.onnx"
    onnx.save(g.model(g.node("GlobalAveragePool", [g.conv("x", 3, 1, cout=2)])), path)
    assert cli.main(["erf", str(path), "--runs", "1", "--no-progress"]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    assert title.endswith("no local TRF region (see the notes)") and "None" not in title
    local = tmp_path / "local.onnx"
    g = G((6, 6), channels=1, batch=1)
    onnx.save(g.model(g.conv("x", 3, 1, cout=2)), local)
    assert cli.main(["erf", str(local), "--runs", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("TRF [[1, 3], [1, 3]]")


def test_a_pad_before_the_first_conv_still_shows_the_layout() -> None:
    """TF 'SAME' exports (timm's tf_* models, NFNets) pad the input before the first Conv: the
    Conv still tells the layout through the Pad, where a [1, 40, 32, 36] input's shape cannot
    (before, such an input was refused as a coin toss, and a [1, 3, H, W] one only guessed)."""
    from onnx import numpy_helper

    w = np.ones((2, 40, 3, 3), np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    pads = np.array([0, 0, 0, 1, 0, 0, 1, 1], np.int64)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(pads, "pads")]
    graph = helper.make_graph(nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 32, 36])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    a = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert a.layout == "NCHW" and a.spatial_axes == (2, 3) and "read by Conv" in a.layout_reason
    assert a["y"].r == (3, 3) and a["y"].P == (0, 1)  # the Pad's begin: 0 rows, 1 column


def test_a_global_pool_after_a_stem_that_drops_the_last_row_sees_what_it_mixed(tmp_path: Path, capsys) -> None:
    """A 3x3/2 VALID conv at 64 reads rows 0-62 only (torchvision's SqueezeNet at 64 or 224): the
    global pool after it is global, every unit the same pixels, but not the whole input.  Before,
    'covers input: yes' and the census oracle's xfail.  Oracle: onnxruntime impulses (each input
    position perturbed in turn): the pooled output moves with rows and columns 0-62, never 63."""
    from tests.impulses import dependencies

    g = G((64, 64), channels=1, batch=1)
    pooled = g.node("GlobalAveragePool", [g.conv("x", 3, 2, pads=[0] * 4, cout=2)])
    model = g.model(pooled)
    a = analyze(model)
    deps, _ = dependencies(model, a.input_name, pooled, list(a.spatial_axes))
    moved = deps.reshape(64, 64, -1).any(-1)
    rows, cols = np.flatnonzero(moved.any(1)), np.flatnonzero(moved.any(0))
    measured = ((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])))
    assert a[pooled].is_global and a.global_reach(pooled) == measured == ((0, 62), (0, 62))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path), "--format", "json"]) == 0
    row = next(e for e in json.loads(capsys.readouterr().out)["endpoints"] if e["tensor"] == pooled)
    assert row["global_reach"] == [[0, 62], [0, 62]] and row["covers_input"] is False
    assert main(["analyze", str(path)]) == 0
    assert "seeing only H 0-62, W 0-62 of the input" in capsys.readouterr().out
    assert main(["diagnose", str(path), "--no-size-range", "--format", "json"]) == 0
    cov = next(c for c in json.loads(capsys.readouterr().out)["coverage"] if c["endpoint"] == pooled)
    assert [x["covers_input"] for x in cov["axes"]] == [False, False]


def test_an_unknown_size_model_whose_end_points_are_global_is_analysed(tmp_path: Path, capsys) -> None:
    """The same conv and global pool with dynamic H and W: analyze printed an internal error (the
    exact regions need sizes); now every row, 'depends on size' where whether the last pixel is
    seen does (at 64 it is not, at 65 it is: measured with onnxruntime impulses)."""
    from tests.impulses import dependencies

    g = G((64, 64), channels=1, batch=1)
    pooled = g.node("GlobalAveragePool", [g.conv("x", 3, 2, pads=[0] * 4, cout=2)])
    model = g.model(pooled)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    model.graph.output[0].type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path), "--all", "--format", "json"]) == 0
    rows = {e["tensor"]: e for e in json.loads(capsys.readouterr().out)["endpoints"]}
    assert rows[pooled]["r"] == [None, None] and rows[pooled]["covers_input"] is None
    seen = {}
    for n in (64, 65):
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        for d in fixed.graph.input[0].type.tensor_type.shape.dim[2:]:
            d.dim_value = n
        deps, _ = dependencies(fixed, "x", pooled, [2, 3])
        seen[n] = bool(deps[n - 1].any())
    assert seen == {64: False, 65: True}


def test_an_input_given_its_channel_axis_by_unsqueeze_is_all_positions() -> None:
    """A spectrogram (N, T, F) = [1, 12, 10] unsqueezed at axis 1 and read by a Conv2d (AST, audio
    CNNs): T and F are positions (layout NHW); before, the shape guess made T the channels (N, C, L).
    Oracle: impulses."""
    from onnx import numpy_helper

    from tests.impulses import check_tensor

    w = np.random.default_rng(1).standard_normal((3, 1, 3, 2)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
             helper.make_node("Conv", ["u", "w"], ["y"], kernel_shape=[3, 2], strides=[2, 1])]
    graph = helper.make_graph(nodes, "spec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "ax")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyze(proto)
    assert a.spatial_axes == (1, 2) and a.layout == "NHW" and "Unsqueeze" in a.layout_reason, a.layout_reason
    assert a["y"].r == (3, 2) and a["y"].S == (2, 1)
    assert check_tensor(a, proto, "y") == 5 * 9


@pytest.mark.parametrize("time_major", [False, True])
def test_a_sequence_input_read_over_its_last_axis_is_positions_then_features(time_major: bool) -> None:
    """(N, T, D) frames or tokens whose last axis a LayerNormalization (or a MatMul with a
    constant weight) reads as features, directly or after a Transpose to time-major (torchaudio's
    Conformer): T is the positions (NLC).  Before, the shape guess made T the channels (N, C, L), so
    the features were analysed as 16 positions mixed by the MatMul.  Oracle: impulses."""
    from onnx import numpy_helper

    from tests.impulses import check_tensor

    rng = np.random.default_rng(2)
    first = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2])] if time_major else \
        [helper.make_node("Identity", ["x"], ["t"])]
    nodes = [*first, helper.make_node("LayerNormalization", ["t", "g"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["m"]),
             helper.make_node("Transpose", ["m"], ["c"], perm=[1, 2, 0] if time_major else [0, 2, 1]),
             helper.make_node("Conv", ["c", "k"], ["y"], kernel_shape=[3], pads=[1, 1])]
    inits = {"g": rng.uniform(0.5, 1.5, 6), "w": rng.standard_normal((6, 4)), "k": rng.standard_normal((2, 4, 3))}
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyze(proto)
    assert a.spatial_axes == (1,) and a.layout == "NLC" and "LayerNormalization" in a.layout_reason, a.layout_reason
    assert not a.global_at and a["y"].r == (3,)
    assert check_tensor(a, proto, "y") == 10


def test_a_two_axis_input_asks_for_nl_in_every_command(tmp_path: Path, capsys) -> None:
    """A batch of 1-D signals (N, L) and no --layout: erf asked for '--layout NC ... or --layout NC'
    (the two hints one string, neither the NL that works); every command now names NL.  One that
    an Unsqueeze at axis 1 feeds to a Conv1d needs no --layout in any command (was: analyze and
    diagnose refused it, erf read it)."""
    wave = one_d_signal()
    onnx.save(wave, tmp_path / "conv.onnx")
    mlp = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                            [onnx.numpy_helper.from_array(np.ones((64, 3), np.float32), "w")])
    onnx.save(helper.make_model(mlp, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mlp.onnx")
    for command in (["analyze"], ["erf", "--runs", "1"], ["diagnose"]):
        assert main([*command, str(tmp_path / "mlp.onnx")]) == 2
        assert "--layout NL" in capsys.readouterr().err, command
        assert main([*command, str(tmp_path / "conv.onnx")]) == 0, command
        capsys.readouterr()
    a = analyze(wave)
    assert a.layout == "NL" and a["y"].r == (5,) and "Unsqueeze" in a.layout_reason


def _sequence_graph(nodes: list, shape: list[int], inits: dict) -> onnx.ModelProto:
    from onnx import numpy_helper
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _keras_conv1d() -> tuple[onnx.ModelProto, str, tuple[int, ...]]:
    """tf2onnx's Conv1D on (N, T=12, C=5): Unsqueeze at 1, Transpose [0, 3, 1, 2], a (1, 3) Conv."""
    w = np.random.default_rng(4).standard_normal((2, 5, 1, 3)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
             helper.make_node("Transpose", ["u"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[1, 3], pads=[0, 1, 0, 1])]
    return _sequence_graph(nodes, [1, 12, 5], {"ax": np.array([1]), "w": w}), "NLC", (3,)


def _expanded_spectrogram() -> tuple[onnx.ModelProto, str, tuple[int, ...]]:
    """(N, T=10, F=4) given a channel by Unsqueeze at -1, then a Reshape moving it to axis 1, a 3x3
    Conv (Keras' ExpandDims before a Conv2D): every axis but N is a position (the shape guess read F=4 as channels)."""
    w = np.random.default_rng(5).standard_normal((2, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
             helper.make_node("Reshape", ["u", "shape"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = {"ax": np.array([3]), "shape": np.array([1, 1, 10, 4]), "w": w}
    return _sequence_graph(nodes, [1, 10, 4], inits), "NHW", (3, 3)


def _keras_dense_then_conv() -> tuple[onnx.ModelProto, str, tuple[int, ...]]:
    """tf2onnx's Dense on (N, T=9, D=6): Reshape to (N*T, D), MatMul, Reshape back; then a
    Transpose and a Conv1d over T; a GlobalAveragePool of the input (a LayerNorm's mean, as tf2onnx
    writes it) is no evidence of channels first."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
             helper.make_node("Sub", ["x", "mean"], ["c"]),
             helper.make_node("Reshape", ["c", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Reshape", ["m", "back"], ["b"]),
             helper.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["t", "k"], ["y"], kernel_shape=[3], pads=[1, 1])]
    inits = {"flat": np.array([9, 6]), "w": rng.standard_normal((6, 4)).astype(np.float32),
             "back": np.array([1, 9, 4]), "k": rng.standard_normal((2, 4, 3)).astype(np.float32)}
    return _sequence_graph(nodes, [1, 9, 6], inits), "NLC", (3,)


@pytest.mark.parametrize("build", [_keras_conv1d, _expanded_spectrogram, _keras_dense_then_conv],
                         ids=lambda b: b.__name__.strip("_"))
def test_layouts_the_graph_tells_through_moved_axes(build) -> None:
    """The input's axes followed to the op that reads them (found by a helper on tf2onnx exports:
    Keras Conv1D, spectrogram and Dense models were read as N, C, L, their features as positions).
    Oracle: impulses on every unit of the output."""
    from tests.impulses import check_tensor

    proto, layout, r = build()
    a = analyze(proto)
    assert a.layout == layout, a.layout_reason
    assert a["y"].r == r and not a.global_at
    assert check_tensor(a, proto, "y") > 1


@pytest.mark.parametrize("group", [1, 5])
def test_a_conv_over_a_channel_axis_holding_positions_reads_them_all(group: int) -> None:
    """Under a layout that makes the features positions (--layout NCL on a Keras Conv1D export:
    the Transpose moves them onto the Conv's channel axis), the Conv mixes every channel: global
    along them, named (was r = 1, the output channels taken for positions).  A grouped one is refused
    by name.  Oracle: impulses."""
    from tests.impulses import check_tensor

    proto, _, _ = _keras_conv1d()
    if group != 1:
        proto.graph.node[-1].attribute.append(helper.make_attribute("group", group))
        proto.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(
            np.ones((5, 1, 1, 3), np.float32), "w"))
    a = analyze(proto, layout="NCL")
    if group == 1:
        assert a["y"].is_global and "channel axis that holds positions" in a.global_at["Conv#2"]
        assert check_tensor(a, proto, "y") == 1
    else:
        assert [s.node for s in a.stops] == ["Conv#2"] and "grouped" in a.stops[0].reason


def test_the_input_a_convolution_reads_is_the_one_analysed() -> None:
    """silero-vad's sequence model lists its LSTM states h, c [1, 1, 128] before its audio
    'input' [N, 576]; rfgraph took the first input of rank 3, the state, and stopped at the
    LSTM.  Now an input a convolution reads (here the signal, through Unsqueeze) comes first,
    and the table's first line names the inputs left out and --input."""
    model = one_d_signal()
    model.graph.input.insert(0, helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 8]))
    model.graph.node.append(helper.make_node("Mul", ["h", "h"], ["h2"]))
    model.graph.output.append(helper.make_tensor_value_info("h2", TensorProto.FLOAT, [1, 1, 8]))
    a = analyze(model)
    assert a.input_name == "x" and a.layout == "NL" and a["y"].r == (5,)
    assert analyze(model, input_name="h").input_name == "h"
    assert "(other inputs: h [1, 1, 8]; --input picks one)" in render(a, ["y"])
    assert "other inputs" not in render(analyze(one_d_signal()), ["y"])


def test_a_resize_of_a_channels_last_map_scales_both_spatial_axes() -> None:
    """jax2onnx (and tf2onnx) resize NHWC maps: a Resize with sizes [1, H', W', C] scales axes 1
    and 2.  The rule resized axes 2.. only, as for NCHW: H kept its stride, W took C's scale of 1,
    and the boxes after it missed pixels the units read (a Flax net: UNSOUND against the gradient's
    support).  Oracle: onnxruntime impulse responses (positive weights and bilinear taps: a unit
    responds to exactly the pixels it reads)."""
    import onnxruntime as ort

    g = G((12, 12), batch=1, seed=5)
    a = g.conv("x", 3, pads=[1] * 4, cout=3)
    nhwc = g.node("Transpose", [a], perm=[0, 2, 3, 1])
    sizes = g._init(np.array([1, 7, 9, 3]))
    small = g.node("Resize", [nhwc, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    model = g.model(g.conv(g.node("Transpose", [small], perm=[0, 3, 1, 2]), 3, pads=[1] * 4))
    out = model.graph.output[0].name
    ep = analyze(model)[out]
    assert ep.S == (Fraction(12, 7), Fraction(4, 3))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    impulses = np.eye(144, dtype=np.float32).reshape(144, 1, 12, 12)
    response = np.concatenate([sess.run(None, {"x": impulses[k:k + 1]})[0] for k in range(144)])
    for unit in itertools.product(range(7), range(9)):
        hit = np.flatnonzero(response[(slice(None), 0) + unit] > 0)
        rows, cols = hit // 12, hit % 12
        assert ep.clipped_region(unit, (12, 12)) == ((rows.min(), rows.max()), (cols.min(), cols.max())), unit


def test_a_video_whose_frames_fold_into_the_batch_has_its_frames_as_positions() -> None:
    """TimeSformer reshapes its (1, T, C, H, W) clip to (T, C, H, W) and convolves each frame: its
    channel axis is axis 2.  The layout was guessed from the shape, axis 1 (T = 4) taken for the
    channels and C for a depth: every field after the patch embedding global.  Now the frames axis,
    which takes the batch's place at the Conv, is a position (field 1 along it) and C the channels.
    Oracle: impulses on every unit of the output."""
    from tests.impulses import check_tensor

    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Reshape", ["x", "frames"], ["f"]),
             helper.make_node("Conv", ["f", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(np.array([4, 3, 6, 6]), "frames"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyze(proto)
    assert a.layout == "NDCHW", a.layout_reason
    assert a["y"].r == (1, 3, 3) and not a.global_at
    assert check_tensor(a, proto, "y") > 1


def test_a_fold_split_in_two_parts_adds_to_the_same_fold_in_one() -> None:
    """torch's dynamo exporter writes Hiera's unrolled tokens with the offsets inside each mask
    unit as several folded parts (16 x 2 x 2) where the attention's output has one (64): the same
    elements in the same order.  Their Add was taken for two layouts that differ, the whole input
    (its dynamo export global from the first block; the TorchScript one local to stage 3).  Here
    2 x 2 offsets folded in two parts, or merged first, and added.  Oracle: impulses."""
    from tests.impulses import check_tensor

    shapes = {"sa": [1, 4, 2, 4, 2], "flat": [1, 64], "sb": [1, 4, 16], "grid": [1, 4, 4, 4]}
    nodes = [helper.make_node("Reshape", ["x", "sa"], ["a1"]),
             helper.make_node("Transpose", ["a1"], ["a2"], perm=[0, 2, 4, 1, 3]),  # (1, 2, 2, 4, 4)
             helper.make_node("Reshape", ["a2", "flat"], ["a"]),  # offsets in two parts, then the cells
             helper.make_node("Reshape", ["a2", "sb"], ["b1"]),
             helper.make_node("Reshape", ["b1", "flat"], ["b"]),  # the offsets merged first: one part
             helper.make_node("Add", ["a", "b"], ["y"]),
             helper.make_node("Reshape", ["y", "grid"], ["z"])]  # offsets, H, W: a unit is z[0, :, h, w]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in shapes.items()]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyze(proto, layout="NHW")
    assert not a.global_at and a["z"].r == (2, 2) and a["z"].S == (2, 2)
    assert check_tensor(a, proto, "z") == 16


def test_another_inputs_dim_named_as_the_batch_is_the_batch() -> None:
    """A diffusion net's noise level sigma ['batch'] scales its image ['batch', 1, H, W] (the
    adaptive-terrain-diffusion wheel's U-Net): rfgraph set the image's batch to 1 but left sigma's,
    and the analysis stopped at the Reshape built from its shape ("output shape unknown"; here
    the product's batch stays unknown).  A dim named like the batch is the batch in every input."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["sigma"], ["n"]),
             helper.make_node("Concat", ["n", "ones"], ["target"], axis=0),
             helper.make_node("Reshape", ["sigma", "target"], ["s4"]),
             helper.make_node("Mul", ["c", "s4"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(3, np.int64), "ones")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8]),
              helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch"])]
    graph = helper.make_graph(nodes, "scaled", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    a = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert not a.stops and a["y"].r == (3, 3) and a["y"].shape == (1, 2, 8, 8)


def test_a_symbol_every_dim_shares_is_no_batch_name() -> None:
    """paddle2onnx-style inputs name every unknown dim alike ('?'): only the leading dim is set to
    a batch of 1, never the spatial dims that share its name (the batch-name rule above set them
    all to 1 once: an OCR classifier analysed at 1x1 and refused as too small)."""
    from rfgraph.onnx_import import set_input_shapes

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["s"], ["t"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "?", "?"]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, ["?", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_input_shapes(model, {})
    dims = [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [[1, 3, "?", "?"], ["?", 4]]


def test_a_circular_concat_and_a_plain_one_of_the_same_shapes_keep_their_own_fields() -> None:
    """The pass caches a transfer by op, attributes, layouts and shapes; a circular padding's
    transfer also depends on which tensors its pieces slice, which no key holds.  A one-sided
    circular Concat [c[6:], c] and a plain [d[:2], d] of the same shapes shared one entry (only
    Concats of three inputs were kept out), so the second was read as a wrap pad: its first units
    were given padding where they read d[0:2] (boxes missing what they read).  Oracle: impulses
    on every unit of the circular one, and the plain one's whole-input bound."""
    from tests.impulses import check_tensor

    rng = np.random.default_rng(9)
    ints = {"s6": [6], "e8": [8], "s0": [0], "e2": [2], "ax": [2]}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["d"], pads=[1, 1]),
             helper.make_node("Slice", ["c", "s6", "e8", "ax"], ["c_tail"]),
             helper.make_node("Concat", ["c_tail", "c"], ["wrapped"], axis=2),  # circular, one side
             helper.make_node("Slice", ["d", "s0", "e2", "ax"], ["d_head"]),
             helper.make_node("Concat", ["d_head", "d"], ["plain"], axis=2)]  # not circular
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    inits += [numpy_helper.from_array(rng.standard_normal((2, 1, 3)).astype(np.float32), w) for w in ("w", "w2")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("wrapped", "plain")],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = analyze(proto, layout="NCL")
    assert not a["wrapped"].is_global and a["plain"].is_global  # two pieces along positions: a bound
    assert check_tensor(a, proto, "wrapped") == 10 and check_tensor(a, proto, "plain") >= 1
