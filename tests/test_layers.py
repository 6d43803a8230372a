"""`rfgraph analyze --layers`: one row per layer that changes the field.

Covers: per-layer r, S, P equal the per-tensor values of `analyze --all` (zoo nets: TF-slim
ResNet-50, a ViT, a torch U-Net); on a chain, each layer's growth of r equals the closed form
(k_eff - 1) * prod(previous strides) (Araujo et al. eq. 2) and the growths sum to r - 1; folded
ops (GELU's Erf/Div, LayerNorm, Reshape, Transpose, ReLU, Add) never get a row, and every analysed
node is a row or folded exactly once; kernel/stride/pad/dilation equal the node attributes read
here with onnx.helper (independently of rfgraph's geometry decoder); Pad, Resize and a stepped
Slice get rows with the window their rule gives; the marks (first layer covering the input, last
growth) against the per-tensor columns; table/markdown/csv/json agree; the JSON schema.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import model_zoo
from rfgraph.cli import main
from tests.graphs import G, chain
from tests.test_cli_consistency import schema

DOCS = Path(__file__).resolve().parents[1] / "docs" / "json_schema.md"
FOLDED_OPS = {"Erf", "Div", "Mul", "Add", "Sub", "Relu", "Reshape", "Transpose", "LayerNormalization",
              "BatchNormalization", "Identity", "Concat", "Softmax", "Sqrt", "Pow"}


def _json(capsys: pytest.CaptureFixture, *argv: str, code: int = 0) -> Any:
    assert main(["analyze", *argv, "--format", "json"]) == code
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def zoo_docs() -> dict[str, tuple[dict, dict]]:
    """(layers document, --all document) of three zoo nets, computed once."""
    from rfgraph.analysis import analyze
    from rfgraph.layers import layer_view
    from rfgraph.report import analysis_dict, render_layers

    out = {}
    for name in ("resnet_v1_50", "vit_small", "torch_unet"):
        a = analyze(model_zoo.build(name))
        out[name] = (json.loads(render_layers(a, layer_view(a), "json")), analysis_dict(a, list(a.endpoints)))
    return out


@pytest.mark.parametrize("name", ["resnet_v1_50", "vit_small", "torch_unet"])
def test_layer_fields_equal_the_per_tensor_fields(name: str, zoo_docs: dict) -> None:
    """Each row's r, S, P and shape are those `analyze --all` prints for its output tensor."""
    layers, every = zoo_docs[name][0]["layers"], {r["tensor"]: r for r in zoo_docs[name][1]["endpoints"]}
    assert layers
    for lay in layers:
        ep = every[lay["tensor"]]
        assert (lay["r"], lay["S"], lay["P"], lay["shape"]) == (ep["r"], ep["S"], ep["P"], ep["shape"])
        assert lay["op"] == ep["op"] and lay["node"] == ep["node"]


def test_cli_layers_rows_match_cli_all(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same through the command line (csv of --layers vs csv of --all)."""
    assert main(["analyze", "zoo:torch_unet", "--layers", "--format", "csv"]) == 0
    layers = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert main(["analyze", "zoo:torch_unet", "--all", "--format", "csv"]) == 0
    tensors = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_op_shape = {(t["op"], t["shape"], t["r"], t["S"], t["P"]) for t in tensors}
    assert layers and all((lay["op"], lay["shape"], lay["r"], lay["S"], lay["P"]) in by_op_shape for lay in layers)


@pytest.mark.parametrize("name", ["resnet_v1_50", "vit_small", "torch_unet"])
def test_every_analysed_node_is_a_row_or_folded_once(name: str, zoo_docs: dict) -> None:
    """Rows + folded ops = the analysed nodes; no elementwise or shape-only op gets a row."""
    doc, every = zoo_docs[name]
    nodes = {r["node"] for r in every["endpoints"] if r["op"] != "Input"}
    folded = sum(len(lay["folded"]) for lay in doc["layers"]) + len(doc["folded_before_first_layer"])
    assert len(doc["layers"]) + folded == len(nodes)
    assert not {lay["op"] for lay in doc["layers"]} & FOLDED_OPS


def test_vit_gelu_and_layernorm_are_folded(zoo_docs: dict) -> None:
    """The issue's example: a ViT's GELU (Div, Erf) and LayerNorm ops only in the folded lists."""
    doc, _ = zoo_docs["vit_small"]
    folded = {op for lay in doc["layers"] for op in lay["folded"]}
    assert {"Erf", "Div", "LayerNormalization", "Reshape"} <= folded
    assert doc["layers"][0]["op"] == "Conv"


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def test_geometry_equals_the_onnx_attributes(zoo_docs: dict) -> None:
    """kernel, stride, pads, dilation of window rows = the attributes read with onnx.helper."""
    model = model_zoo.build("resnet_v1_50")
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    checked = 0
    for lay in zoo_docs["resnet_v1_50"][0]["layers"]:
        node = nodes.get(lay["node"])
        if node is None or node.op_type not in ("Conv", "MaxPool"):
            continue
        kernel = list(_attr(node, "kernel_shape", None) or inits[node.input[1]][2:])
        n = len(kernel)
        assert _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        pads = list(_attr(node, "pads", [0] * 2 * n))
        assert lay["kernel"] == kernel
        assert lay["stride"] == list(_attr(node, "strides", [1] * n))
        assert lay["dilation"] == list(_attr(node, "dilations", [1] * n))
        assert lay["pads"] == [[pads[i], pads[i + n]] for i in range(n)]
        checked += 1
    assert checked > 50


CHAINS = [
    [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 2), (2, 2, 0, 1), (3, 1, 1, 3)],
    [(7, 2, 3, 1), (1, 1, 0, 1), (3, 2, 1, 1), (3, 1, 0, 1)],
]


@pytest.mark.parametrize("layers", CHAINS)
def test_growth_on_a_chain_is_the_closed_form(layers: list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Layer l grows r by (k_eff - 1) * prod(strides before it) (eq. 2); the sum is r - 1; the
    last growing layer is marked; a 1x1 conv is a row growing by 0."""
    model, _ = chain((64, 64), layers)
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    doc = _json(capsys, str(path), "--layers")
    rows = doc["layers"]
    expected, prod = [], 1
    for k, s, _, d in layers:
        expected.append((k - 1) * d * prod)
        prod *= s
    assert [row["delta_r"] for row in rows] == [[e, e] for e in expected]
    assert rows[-1]["r"] == [1 + sum(expected)] * 2
    last = max(i for i, e in enumerate(expected) if e > 0)
    assert [i for i, row in enumerate(rows) if "last growth" in row["marks"]] == [last]
    assert [row["kernel"] for row in rows] == [[k, k] for k, *_ in layers]


def test_first_cover_mark_is_the_first_row_covering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """'first covers input' sits on the first row whose --all 'covers input' is true: after l
    3x3 'same' convs unit u sees [u - l, u + l], so on 9 pixels units 0 and 8 see all from l = 8."""
    model, _ = chain((9, 9), [(3, 1, 1, 1)] * 10)
    path = tmp_path / "c.onnx"
    onnx.save(model, path)
    rows = _json(capsys, str(path), "--layers")["layers"]
    every = {r["tensor"]: r for r in _json(capsys, str(path), "--all")["endpoints"]}
    covering = [i for i, row in enumerate(rows) if every[row["tensor"]]["covers_input"]]
    marked = [i for i, row in enumerate(rows) if "first covers input" in row["marks"]]
    assert marked == covering[:1] == [7]


def test_pad_resize_and_stepped_slice_are_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Pad (offset -begin), Resize x2 (stride 1/2), a step-2 Slice (stride 2): rows with the
    window their rule gives; the ReLU between them is folded."""
    g = G((16, 16))
    x = g.pad("x", 2, 1)
    x = g.relu(g.conv(x, 3, 1))
    x = g.resize(x, 2)
    consts = [g._init(np.array([v])) for v in (0, 2**62, 2, 2)]  # every 2nd row
    x = g.node("Slice", [x, *consts])
    path = tmp_path / "m.onnx"
    onnx.save(g.model(x), path)
    rows = _json(capsys, str(path), "--layers")["layers"]
    assert [r["op"] for r in rows] == ["Pad", "Conv", "Resize", "Slice"]
    pad, conv, resize, step = rows
    assert pad["pads"][0][0] == 2 and pad["geometry_from"] == "rule" and pad["delta_r"] == [0, 0]
    assert conv["folded"] == ["Relu"] and conv["geometry_from"] == "attributes"
    assert resize["stride"] == ["1/2", "1/2"] and step["stride"] == [2, 1]


def test_a_product_by_a_global_broadcast_reads_every_position(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A lambda layer's q @ lambda: a 1-D map (1, C, 8) times a value pooled over every position
    and broadcast to each (its span: every unit reads one unit, stride 0).  The row's window is
    global, as its field is (was kernel 1, stride 0); oracle: the field itself, measured with
    onnxruntime impulses (every output unit moves with every input position)."""
    from rfgraph import analyze
    from tests.impulses import dependencies

    g = G((8,), channels=2, batch=1)
    c = g.conv("x", 3, 1, pads=[1, 1], cout=2)
    pooled = g.node("ReduceMean", [c], axes=[2])  # (1, 2, 1): every position
    q = g.node("Transpose", [c], perm=[0, 2, 1])  # (1, 8, 2): positions as rows
    out = g.node("MatMul", [q, g.node("Mul", [pooled, pooled])])  # (1, 8, 2) @ (1, 2, 1)
    model = g.model(out)
    a = analyze(model)
    deps, _ = dependencies(model, a.input_name, out, list(a.spatial_axes))
    assert deps.all() and a[out].is_global
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rows = _json(capsys, str(path), "--layers")["layers"]
    matmul = next(r for r in rows if r["op"] == "MatMul")
    assert matmul["kernel"] == [None] and matmul["stride"] == [None]


def test_formats_agree_and_summary_names_the_top_growers(capsys: pytest.CaptureFixture) -> None:
    """table, markdown and csv show the same rows as json; the summary line names the layers with
    the largest delta r, largest first."""
    doc = _json(capsys, "zoo:torch_unet", "--layers")
    nodes = [lay["node"] for lay in doc["layers"]]
    growth = {lay["node"]: max(lay["delta_r"]) for lay in doc["layers"]}
    top = sorted(nodes, key=lambda n: -growth[n])[:3]
    assert doc["largest_growth"] == top
    for fmt in ("table", "markdown", "csv"):
        assert main(["analyze", "zoo:torch_unet", "--layers", "--format", fmt]) == 0
        out = capsys.readouterr().out
        found = [n for n in nodes if re.search(rf"(^|[|,\s]){re.escape(n)}[|,\s]", out, re.MULTILINE)]
        assert found == nodes, fmt
        if fmt != "csv":
            assert f"grow the field most: {top[0]} (+{growth[top[0]]})" in out


def test_layers_refuses_all_and_output(capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", "zoo:cnn_small", "--layers", "--all"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_layers_json_follows_the_documented_schema(capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = _json(capsys, "zoo:vit_small", "--layers")
    block = re.search(r"<!-- schema: analyze-layers -->\s*```json\n(.*?)```", DOCS.read_text(encoding="utf-8"),
                      re.DOTALL)
    assert block
    jsonschema.validate(doc, json.loads(block.group(1)))
    rest = {k: v for k, v in doc.items() if k not in ("layers", "folded_before_first_layer", "largest_growth")}
    jsonschema.validate(rest, schema("analyze"))  # the rest is the analyze document


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["inception_v2", "squeezenet"])
def test_real_caffe2_models(name: str) -> None:
    """Caffe2 exports shipped with the onnx package (ConstantOfShape nodes the pass does not
    analyse: the view once raised KeyError on them): rows equal the per-tensor fields, every
    analysed node is a row or folded once, no elementwise op is a row."""
    from rfgraph.analysis import analyze
    from rfgraph.layers import layer_view

    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"this onnx package does not ship {path.name}")
    a = analyze(str(path))
    view = layer_view(a)
    analysed = {ep.node for ep in a.endpoints.values() if ep.op != "Input"}
    assert len(view.layers) + view.folded_count == len(analysed)
    for lay in view.layers:
        ep = a[lay.output]
        assert (lay.r, lay.S, lay.P, lay.op) == (ep.r, ep.S, ep.P, ep.op)
    assert not {lay.op for lay in view.layers} & FOLDED_OPS


def test_same_pads_at_an_unknown_and_a_given_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two 3x3 stride-2 SAME_UPPER convs: with the size unknown their pads depend on it (null,
    '?' in the table; they were one sample size's before); at 33x33 they are the spec's
    total = (ceil(n/s) - 1) * s + k - n split begin = total // 2."""
    g = G((33, 33), batch=1)
    x = g.conv(g.conv("x", 3, 2, auto_pad="SAME_UPPER"), 3, 2, auto_pad="SAME_UPPER")
    model = g.model(x)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    rows = _json(capsys, str(path), "--layers")["layers"]
    assert [row["pads"] for row in rows] == [[[None, None]] * 2] * 2
    assert main(["analyze", str(path), "--layers"]) == 0
    assert re.search(r"^\S+\s+Conv\s+3\s+2\s+\?\s", capsys.readouterr().out, re.MULTILINE)
    expected, n = [], 33
    for _ in range(2):
        out = -(-n // 2)
        total = max((out - 1) * 2 + 3 - n, 0)
        expected.append([[total // 2, total - total // 2]] * 2)
        n = out
    rows = _json(capsys, f"{path}@1x1x33x33", "--layers")["layers"]
    assert [row["pads"] for row in rows] == expected
