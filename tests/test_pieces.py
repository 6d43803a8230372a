"""A detection head's Concat of flattened grids (YOLO: 80x80, 40x40 and 20x20 cells in one axis of
8400) is analysed piece by piece: each output is replaced by its pieces, ``output#0``...,
copies of the nodes after the Concat on each piece.  Oracles: onnxruntime (the pieces equal the
original output's elements, and every unit's region is the hull of the positions whose impulse
moves it, ``tests.impulses.check_tensor``) and each scale's own head conv (the same r, S, P)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rfgraph import analyze
from rfgraph.cli import main
from rfgraph.erf import gradient_engine
from rfgraph.semantics.layout import GRIDS_JOINED, MIXED_BOUND
from tests.graphs import G
from tests.impulses import check_tensor, dependencies, measured_hulls
from tests.test_cli_consistency import schema

SIZE, BOX, CLS = 16, 4, 2  # three scales: 8x8, 4x4 and 2x2 cells, 84 in all


def yolo_like(tail: str = "decode", act: str = "Relu") -> tuple[onnx.ModelProto, list[str]]:
    """Three strided stages, a 3x3 head conv on each, each flattened to (1, C, h*w) and joined
    along the positions; then ``tail``: "decode" (box channels through a per-position softmax
    over bins and anchor offsets, classes through a sigmoid, joined on channels: ultralytics'
    decode), "none" (the Concat is the output) or "softmax" (a softmax over positions: no piece
    is computed from its own positions only)."""
    g = G((SIZE, SIZE), channels=2, batch=1)
    x, heads, grids = "x", [], []
    for _ in range(3):
        x = g.node(act, [g.conv(x, 3, 2, pads=[1, 1, 1, 1], cout=4)])
        head = g.conv(x, 3, pads=[1, 1, 1, 1], cout=BOX * 2 + CLS)
        n = (SIZE // 2 ** (len(heads) + 1)) ** 2
        heads.append(head)
        grids.append(g.node("Reshape", [head, g._init(np.array([1, BOX * 2 + CLS, n]))]))
    joined = g.node("Concat", grids, axis=2)
    total = sum((SIZE // 2 ** k) ** 2 for k in (1, 2, 3))
    if tail == "none":
        return g.model(joined), heads
    if tail == "softmax":
        return g.model(g.node("Softmax", [joined], axis=2)), heads
    box, cls = g.node("Split", [joined, g._init(np.array([BOX * 2, CLS]))], axis=1, n_out=2)
    bins = g.node("Reshape", [box, g._init(np.array([1, BOX, 2, total]))])
    soft = g.node("Softmax", [g.node("Transpose", [bins], perm=[0, 2, 1, 3])], axis=1)
    dist = g.node("Reshape", [g.node("ReduceSum", [g.node("Mul", [soft, g._init(np.arange(2.0).reshape(1, 2, 1, 1))]),
                                                   g._init(np.array([1]))], keepdims=0),
                              g._init(np.array([1, BOX, total]))])
    anchors = g._init(np.random.default_rng(1).uniform(0, SIZE, (1, BOX, total)))
    boxes = g.node("Add", [dist, anchors])
    out = g.node("Concat", [boxes, g.node("Sigmoid", [cls])], axis=1)
    return g.model(out), heads


def test_each_piece_has_its_scales_field_and_the_impulses_agree() -> None:
    model, heads = yolo_like()
    a = analyze(model)
    out = model.graph.output[0].name
    pieces = a.pieces[out]
    assert [(p.start, p.stop, p.axis) for p in pieces] == [(0, 64, 2), (64, 80, 2), (80, 84, 2)]
    assert not a.stops
    for piece, head in zip(pieces, heads):
        ep, own = a[piece.name], a[head]
        assert (ep.r, ep.S, ep.P) == (own.r, own.S, own.P), piece.name
        assert ep.units == own.units
        assert check_tensor(a, a.graph.model, piece.name) == piece.stop - piece.start


def test_the_pieces_are_the_outputs_elements() -> None:
    model, _ = yolo_like()
    a = analyze(model)
    out = model.graph.output[0].name
    x = np.random.default_rng(3).standard_normal((1, 2, SIZE, SIZE)).astype(np.float32)
    whole = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    names = [p.name for p in a.pieces[out]]
    got = ort.InferenceSession(a.graph.model.SerializeToString()).run(names, {"x": x})
    for piece, value in zip(a.pieces[out], got):
        np.testing.assert_array_equal(value, whole[:, :, piece.start:piece.stop])


def test_a_concat_that_is_the_output_is_cut_too() -> None:
    model, heads = yolo_like("none")
    a = analyze(model)
    pieces = a.pieces[model.graph.output[0].name]
    assert len(pieces) == 3 and not a.stops
    assert (a[pieces[2].name].r, a[pieces[2].name].S) == (a[heads[2]].r, a[heads[2]].S)


def test_positions_mixed_after_the_concat_read_the_whole_input_an_upper_bound() -> None:
    """A softmax over the positions after the Concat: no piece is computed from its own positions,
    so nothing is cut; the analysis goes on (a multi-scale encoder's attention, RT-DETR's), every
    unit after the Concat reading the whole input, said to be an upper bound."""
    model, heads = yolo_like("softmax")
    a = analyze(model)
    out = model.graph.output[0].name
    assert a.pieces == {} and not a.stops
    concat = a.graph.names[a.graph.producer[a.graph.nodes[a.graph.producer[out]].input[0]]]
    assert a[out].is_global and a.global_at == {concat: GRIDS_JOINED + MIXED_BOUND}
    assert a.default_endpoints() == [*heads, out]


def test_the_erf_of_an_outputs_element_is_its_gradient_in_the_original_model() -> None:
    """``erf --output OUT --unit K``: the unit is element K of the positions (in piece 2 here);
    its gradient equals central differences of the original model (smooth activations)."""
    model, _ = yolo_like(act="Tanh")
    out, k = model.graph.output[0].name, 70
    engine, notes = gradient_engine(model, out, unit=(k,), region="full")
    assert any("concat" in n and "#1' (elements 64:80)" in n for n in notes), notes
    x = np.random.default_rng(5).standard_normal((1, 2, SIZE, SIZE))
    grad = engine(x.astype(np.float32))[0][0]
    session = ort.InferenceSession(model.SerializeToString())
    h = 0.05
    def value(at: np.ndarray) -> float:
        return float(session.run(None, {"x": at.astype(np.float32)})[0][0, :, k].astype(np.float64).sum())

    steps = np.eye(x.size).reshape(x.size, *x.shape) * h
    fd = np.array([(value(x + e) - value(x - e)) / (2 * h) for e in steps])
    assert np.count_nonzero(grad) > 0
    np.testing.assert_allclose(grad.reshape(-1), fd, atol=2e-2 * np.abs(fd).max())
    assert np.array_equal(grad.reshape(-1) != 0, fd != 0)  # the same support: unit 70's field


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_reports_the_pieces(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """analyze: one row per piece, a note naming them with their elements, exit 0; JSON: the
    documented ``pieces``; erf --unit K and boxes --index K on the output: the piece holding
    anchor K (its unit there); boxes --all on the whole output: an error naming the pieces."""
    jsonschema = pytest.importorskip("jsonschema")
    model, _ = yolo_like()
    path = tmp_path / "head.onnx"
    onnx.save(model, path)
    out = model.graph.output[0].name
    code, table, _ = _run(capsys, "analyze", str(path))
    assert code == 0 and all(f"{out}#{i}" in table for i in range(3))
    assert f"analysed as its pieces {out}#0 (0:64), {out}#1 (64:80), {out}#2 (80:84) along axis 2" in table
    code, doc, _ = _run(capsys, "analyze", str(path), "--format", "json")
    report = json.loads(doc)
    jsonschema.validate(report, schema("analyze"))
    assert report["pieces"][out][1] == {"tensor": f"{out}#1", "axis": 2, "start": 64, "stop": 80}
    code, doc, err = _run(capsys, "erf", str(path), "--output", out, "--unit", "81", "--runs", "2",
                          "--no-progress", "--format", "json")
    assert code == 0 and json.loads(doc)["output"] == f"{out}#2" and json.loads(doc)["unit"] == [1], err
    code, _, err = _run(capsys, "boxes", str(path), "--output", out, "--all")
    assert code == 2 and f"{out}#0 (0:64)" in err and err.count("\n") == 1
    code, doc, _ = _run(capsys, "boxes", str(path), "--output", out, "--index", "70", "--format", "json")
    box = json.loads(doc)  # anchor 70: cell 6 of the 4x4 grid of piece 1, (1, 2)
    assert code == 0 and box["tensor"] == f"{out}#1" and box["units"][0]["index"] == [1, 2]
    code, doc, _ = _run(capsys, "boxes", str(path), "--output", f"{out}#1", "--index", "1,2", "--format", "json")
    assert json.loads(doc)["units"] == box["units"]
    code, _, err = _run(capsys, "boxes", str(path), "--output", out, "--index", "84")
    assert code == 2 and "index 84 is outside 0..83" in err
    code, _, err = _run(capsys, "erf", str(path), "--output", out, "--units", "1", "70", "--runs", "1")
    assert code == 2 and "lie in different pieces" in err
    html = tmp_path / "r.html"
    assert _run(capsys, "report", str(path), "-o", str(html), "--erf-runs", "1")[0] == 0
    assert f"<code>{out}#1</code> (64:80)" in html.read_text()  # the report says how the output was cut


def anchor_major_head() -> tuple[onnx.ModelProto, list[str]]:
    """YOLOv5's layout: each scale's 1x1 conv gives A anchors x K values a cell, reshaped to
    (1, A, K, h, w), transposed to (1, A, h, w, K) and flattened to (1, A*h*w, K): along the anchors
    axis, index = anchor * h * w + cell; the three joined along it."""
    g = G((SIZE, SIZE), channels=2, batch=1)
    x, flat, grids = "x", [], []
    for k in range(3):
        x = g.conv(x, 3, 2, pads=[1, 1, 1, 1], cout=4)  # linear stages: every pixel of a field moves it
        n = SIZE // 2 ** (k + 1)
        cells = g.node("Transpose", [g.node("Reshape", [g.conv(x, 1, cout=3 * 5), g._init(np.array([1, 3, 5, n, n]))])],
                       perm=[0, 1, 3, 4, 2])
        grids.append(cells)
        flat.append(g.node("Reshape", [g.node("Sigmoid", [cells]), g._init(np.array([1, 3 * n * n, 5]))]))
    return g.model(g.node("Concat", flat, axis=1)), grids


def test_anchors_outside_the_cells_repeat_the_grid() -> None:
    """Each element of a YOLOv5 piece is an anchor of one cell: the piece has the cells as units
    (the grid repeated once per anchor), each with its cell's field, not their union; every
    element's region against the impulses, anchors 1 and 2 included."""
    model, grids = anchor_major_head()
    a = analyze(model)
    (pieces,) = a.pieces.values()
    for piece, grid in zip(pieces, grids):
        ep, own = a[piece.name], a[grid]
        assert (ep.r, ep.S, ep.P, ep.units) == (own.r, own.S, own.P, own.units[:2]) and ep.repeats == (3,)
        deps, _ = dependencies(a.graph.model, "x", piece.name, [2, 3])
        cells = (piece.stop - piece.start) // 3
        for element in range(0, piece.stop - piece.start, 7):  # every 7th: all anchors, many cells
            unit = ep.spatial_index((element,))
            assert unit == tuple(np.unravel_index(element % cells, ep.units))
            hulls = measured_hulls(deps, 2, (0, element))
            assert hulls == [tuple(r) for r in ep.clipped_region(unit, (SIZE, SIZE))], (piece.name, element)


def test_the_zoo_export_style_yolov8n_has_its_heads_fields_and_anchors_on_their_cone() -> None:
    """zoo:yolov8n_export (the heads joined along the anchors and decoded as ultralytics exports
    them): each piece has its head's r, S, P and cells (zoo:yolov8n's head_p3..p5, checked against
    a torch re-implementation in tests/test_modern_table.py), and a corner anchor's ERF runs on
    its cone inside the network (no input crop runs: the decode's constants are the full grid's)
    with the full image's gradient."""
    from model_zoo import modern
    from rfgraph.erf import gradient_engine

    size = 128
    export, heads = modern.yolov8n_export(size).build(), analyze(modern.yolov8n(size).build())
    a = analyze(export)
    pieces = a.pieces["output0"]
    assert [p.stop - p.start for p in pieces] == [256, 64, 16] and not a.stops
    for piece, head in zip(pieces, ("head_p3", "head_p4", "head_p5")):
        ep, own = a[piece.name], heads[head]
        assert (ep.r, ep.S, ep.P, ep.units) == (own.r, own.S, own.P, own.units)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    cone, notes = gradient_engine(export, "output0", unit=(0,), region="cone")
    full, _ = gradient_engine(export, "output0", unit=(0,), region="full")
    assert any("each layer on the unit's cone" in n for n in notes), notes
    g_cone, g_full = cone(x)[0], full(x)[0]
    assert np.count_nonzero(g_full) and float(np.abs(g_cone - g_full).max()) <= 1e-5 * float(np.abs(g_full).max())
