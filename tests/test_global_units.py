"""A global field keeps its units where an operand of the mixing product copies positions:
attention's output rows are its queries.  Each query reads its own pixels and what the keys
mix, so its units see different pixels: with keys from a strided map that misses the last rows
(spatial-reduction attention, Segformer / PVT at a size its stride does not divide), no unit
of the top rows sees the bottom ones.  Before, the product folded the rows into one unit, whose
union covered the input: 'covers input: yes' for every unit.  Oracle: onnxruntime impulses,
every unit of every tensor after the mixing (``tests.impulses.check_tensor``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from rfgraph import analyze
from rfgraph.cli import main
from rfgraph.report import covers_input
from tests.graphs import G
from tests.impulses import check_tensor

SIZE, CH, REDUCE = 10, 4, 4  # keys from a 4x4/4 conv at 10: rows 0-7, never 8-9


def _tokens(g: G, x: str, n: int) -> str:
    """(1, C, h, w) -> (1, h*w, C): the flatten(2).transpose(1, 2) of every exported ViT."""
    flat = g.node("Reshape", [x, g._init(np.array([1, CH, n]))])
    return g.node("Transpose", [flat], perm=[0, 2, 1])


def reduced_attention(product: str) -> tuple[onnx.ModelProto, list[str]]:
    """Queries from every pixel, keys and values from a strided map, a residual around it;
    the products as MatMul or as Einsum (``product``)."""
    g = G((SIZE, SIZE), channels=2, batch=1)
    f = g.conv("x", 1, cout=CH)
    q = _tokens(g, f, SIZE * SIZE)
    kv = _tokens(g, g.conv(f, REDUCE, REDUCE, cout=CH), (SIZE // REDUCE) ** 2)
    if product == "MatMul":
        scores = g.node("MatMul", [q, g.node("Transpose", [kv], perm=[0, 2, 1])])
        mixed = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), kv])
    else:
        scores = g.node("Einsum", [q, kv], equation="bqd,bkd->bqk")
        mixed = g.node("Einsum", [g.node("Softmax", [scores], axis=-1), kv], equation="bqk,bkd->bqd")
    grid = g.node("Reshape", [g.node("Transpose", [mixed], perm=[0, 2, 1]), g._init(np.array([1, CH, SIZE, SIZE]))])
    out = g.add(grid, f)
    return g.model([grid, out]), [mixed, grid, out]


@pytest.mark.parametrize("product", ["MatMul", "Einsum"])
def test_each_query_sees_its_own_pixels_and_what_the_keys_mix(product: str) -> None:
    model, names = reduced_attention(product)
    a = analyze(model)
    for name in names:
        ep = a[name]
        assert ep.is_global and ep.units == (SIZE, SIZE), (name, ep.units)
        assert check_tensor(a, model, name) == SIZE * SIZE  # every unit equals the impulses
        assert covers_input(ep, a) is False  # no unit of the first rows reads rows 8-9
        assert a.global_reach(name) == ((0, SIZE - 1), (0, SIZE - 1))  # all units together do
        assert ep.clipped_region((0, 0), (SIZE, SIZE)) == ((0, 7), (0, 7))
        assert ep.clipped_region((SIZE - 1, 0), (SIZE, SIZE)) == ((0, SIZE - 1), (0, 7))


def test_the_cli_says_no_unit_covers_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, names = reduced_attention("MatMul")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["analyze", str(path), "--format", "json"]) == 0
    rows = {e["tensor"]: e for e in json.loads(capsys.readouterr().out)["endpoints"]}
    assert rows[names[-1]]["covers_input"] is False and rows[names[-1]]["global"] == [rows[names[-1]]["global"][0]] * 2
    assert main(["analyze", str(path)]) == 0
    assert "not every unit seeing the whole input (each: boxes --clip)" in capsys.readouterr().out
    assert main(["diagnose", str(path), "--no-size-range", "--format", "json"]) == 0
    cov = next(c for c in json.loads(capsys.readouterr().out)["coverage"] if c["endpoint"] == names[-1])
    assert [(x["covers_input"], x["some_unit_sees_all"]) for x in cov["axes"]] == [(False, True)] * 2  # unit 9,9
    assert main(["boxes", str(path), "--output", names[-1], "--index", "0,0", "--clip", "--format", "json"]) == 0
    unit = json.loads(capsys.readouterr().out)["units"][0]
    assert unit["region"] == [[0, 7], [0, 7]] and unit["field_centre"] == [None, None]
    assert main(["boxes", str(path), "--output", names[-1], "--index", "0,0"]) == 2  # no field box
    assert "--clip prints the input pixels each unit reads" in capsys.readouterr().err


def test_show_draws_the_pixels_a_query_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A global tensor has no field box; one whose units keep their queries is drawn with the
    pixels the unit reads (exact: the impulses above), and says so; the JSON validates."""
    import jsonschema

    from tests.test_cli_consistency import schema

    model, names = reduced_attention("MatMul")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = ["-o", str(tmp_path / "s.png"), "--runs", "1", "--scale", "2"]
    assert main(["show", str(path), "--output", names[-1], "--index", "0,0", *out, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, schema("show"))
    assert doc["region"] == [None, None] and doc["centre"] == [None, None]
    assert doc["pixels_read"] == [[0, 7], [0, 7]] and doc["picture"]["box"] == [0, 0, 15, 15]
    assert main(["show", str(path), "--output", names[-1], "--index", "9,9", *out]) == 0
    assert "box of the pixels read" in (text := capsys.readouterr().out) and "H global (reads [0, 9])" in text


def test_show_refuses_a_global_tensor_without_units_naming_where_it_mixes(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Flatten then Gemm: one vector, no unit to draw: refused (exit 2) naming the mixing node,
    without the claim that every unit sees the whole input."""
    g = G((6, 6), channels=1, batch=1)
    flat = g.node("Flatten", [g.conv("x", 3, pads=[1] * 4, cout=2)], axis=1)
    dense = g.node("Gemm", [flat, g._init(np.full((72, 3), 0.1))], cout=3)
    model = g.model(dense)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["show", str(path), "--output", dense, "-o", str(tmp_path / "s.png"), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    gemm = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    assert f"its units mix positions at node '{gemm}'" in err and "whole input" not in err
