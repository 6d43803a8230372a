"""What one *unit* of a tensor is when spatial axes are reshaped, and that every command agrees.

Covers: an axis folded into the features (a CRNN's H merged into the channels: every unit holds
all of its positions, so its region is their union), a flattened grid (ViT tokens: one unit per
token, the token index addresses it), an axis collapsed to one position (only unit 0 exists).
Oracles: onnxruntime impulses on positive-weight graphs (the exact support of a unit), and the
ERF engine's gradient support, seeded at the same unit.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rfgraph
from rfgraph.cli import main
from rfgraph.errors import RFGraphError
from tests.bruteforce import impulse_support
from tests.graphs import G


def _folded(size: int = 16):
    """x (1, 1, size, size) -> 3x3 conv (pad 1, 2 channels) -> 3x3 conv stride 2 -> Reshape to
    (N, 2 * size/2, size/2): H folded into the features, W kept (a CRNN's feature sequence)."""
    g = G((size, size))
    c = g.conv(g.conv("x", 3, 1, pads=[1] * 4), 3, 2, pads=[1] * 4)
    r = g.node("Reshape", [c, g._init(np.array([0, -1, size // 2], np.int64), "shape")])
    return g.model(r), r


def _tokens(size: int = 16, patch: int = 4, mix: bool = False):
    """Patch embedding (k = s = patch), then (1, C, h, w) -> (N, C, h*w) -> (N, h*w, C) tokens;
    ``mix``: then an MLP-Mixer token mix with its residual (x + x M, M over the token axis: a
    global field whose token axis keeps its units)."""
    g = G((size, size))
    emb = g.conv(g.conv("x", 3, 1, pads=[1] * 4), patch, patch, cout=3)
    n = (size // patch) ** 2
    flat = g.node("Reshape", [emb, g._init(np.array([0, 3, n], np.int64), "shape")])
    if mix:
        mixed = g.node("MatMul", [flat, g._init(np.random.default_rng(0).random((n, n)), "mix")])
        flat = g.node("Add", [flat, mixed])
    return g.model(g.node("Transpose", [flat], perm=[0, 2, 1])), g.nodes[-1].output[0]


def test_folded_axis_unit_sees_the_union_of_its_positions():
    """Unit w of the folded tensor holds every (c, h) feature: its H region is the union over h
    (here the whole padded height), its W region that of column w; equal to the impulse support."""
    model, r = _folded()
    ep = rfgraph.analyze(model)[r]
    assert ep.units == (None, 8) and ep.unit_axes == ((2, (1,)),)
    # one row: r = 3 + (3 - 1) * 1 = 5, P = 1 + 1 * 1 = 2 (eqs. 2, 9); the union of 8 rows at S = 2
    assert ep.r == (5 + 7 * 2, 5) and ep.S == (2, 2) and ep.P == (2, 2)
    for w in range(8):
        region = ep.region((0, w))
        clipped = [(max(u0, 0), min(v0, 15)) for u0, v0 in region]
        assert impulse_support(model, r, (w,)) == clipped


def test_flattened_grid_has_one_unit_per_token():
    """ViT tokens: the token axis indexes H and W jointly; token t = (t // 4, t % 4) sees its
    own patch (plus the 3x3 conv's border), exactly the impulse support of that token."""
    model, tokens = _tokens()
    ep = rfgraph.analyze(model)[tokens]
    assert ep.units == (4, 4) and ep.unit_axes == ((1, (0, 1)),) and ep.r == (6, 6)
    for t in range(16):
        index = ep.spatial_index((t,))
        assert index == divmod(t, 4) and ep.tensor_index(index) == (t,)
        assert _token_support(model, tokens, t) == [(max(u0, 0), min(v0, 15)) for u0, v0 in ep.region(index)]


def _token_support(model, tokens: str, t: int) -> list[tuple[int, int]]:
    """Impulse support of token ``t`` (all features): pixels whose impulse reaches it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(tokens, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = list(np.ndindex(16, 16))
    batch = np.zeros((len(pixels), 1, 16, 16), np.float32)
    for i, (h, w) in enumerate(pixels):
        batch[i, 0, h, w] = 1.0
    hit = [p for p, v in zip(pixels, sess.run(None, {"x": batch})[0][:, t, :].sum(axis=1)) if v > 0]
    return [(min(p[a] for p in hit), max(p[a] for p in hit)) for a in range(2)]


@pytest.mark.parametrize("build", [_folded, _tokens])
def test_erf_of_a_unit_has_exactly_its_region_as_support(build):
    """The ERF engine seeds the unit the analysis names (a W position of the folded tensor, a
    token): with positive weights the gradient is nonzero exactly on the unit's region.  Before,
    both tensors were seeded everywhere (the sum of all units), whatever unit was asked."""
    model, name = build()
    ep = rfgraph.analyze(model)[name]
    index = (1, 2) if ep.units[0] else (0, 2)
    result = rfgraph.compute_erf(model, name, unit=ep.tensor_index(index), runs=1, inputs="uniform")
    nz = np.nonzero(result.erf > 0)
    got = [(int(ax.min()), int(ax.max())) for ax in nz]
    assert got == [(max(u0, 0), min(v0, 15)) for u0, v0 in ep.region(index)]
    assert result.target.region == ep.region(index)


def test_default_erf_unit_is_the_grid_centre_of_a_token_axis():
    """The default unit of a token tensor is the centre of the 4x4 grid, (1, 1) = token 5, not
    the middle of the flattened axis (token 7 = (1, 3))."""
    model, tokens = _tokens()
    result = rfgraph.compute_erf(model, tokens, runs=1)
    assert result.target.unit == (5,)
    assert result.target.region == rfgraph.analyze(model)[tokens].region((1, 1))


def test_default_erf_unit_of_a_global_token_axis_is_the_grid_centre():
    """Global fields too (a Mixer's tokens): the default unit is the 4x4 grid's centre (1, 1) =
    token 5, not the flattened axis' middle, token 7 = (1, 3) on the grid's edge (a 14x14
    Mixer's token 97 = (6, 13) before)."""
    model, tokens = _tokens(mix=True)
    ep = rfgraph.analyze(model)[tokens]
    assert ep.is_global and ep.units == (4, 4)
    assert rfgraph.compute_erf(model, tokens, runs=1).target.unit == (5,)


def test_collapsed_axis_has_only_unit_zero(tmp_path, capsys):
    """A global-size pool leaves one position per axis: unit (0, 0) has a box, (1, 1) does not
    exist (boxes used to print unit 0's box under the label 1,1)."""
    g = G((8, 8))
    p = g.pool("AveragePool", g.conv("x", 3, 1, pads=[1] * 4), 8, 8)
    flat = g.node("Flatten", [p], axis=1)
    model = g.model(flat)
    ep = rfgraph.analyze(model)[flat]
    assert ep.units == (None, None) and ep.region((0, 0)) == ((-1, 8), (-1, 8))
    with pytest.raises(RFGraphError, match="outside"):
        ep.region((1, 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["boxes", str(path), "--output", flat, "--index", "1,1"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["boxes", str(path), "--output", flat, "--index", "0,0", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["units"][0]["region"] == [[-1, 8], [-1, 8]]


def test_a_folded_axis_covers_the_input_when_its_rows_do_together():
    """H folded into the features: one unit holds all 8 rows, which together read every input
    row; 'covers input' is yes, as the impulse support of each W unit says (each row alone
    does not cover the 16 rows)."""
    from rfgraph.report import covers_input

    g = G((16, 3))
    c = g.conv(g.conv("x", (3, 5), 1, pads=[1, 2, 1, 2]), (3, 5), 2, pads=[1, 2, 1, 2])
    r = g.node("Reshape", [c, g._init(np.array([0, -1, 2], np.int64), "shape")])
    model = g.model(r)
    a = rfgraph.analyze(model)
    assert a[r].units == (None, 2) and not a.exact_regions[r][0].covers(16).all()
    assert all(impulse_support(model, r, (w,)) == [(0, 15), (0, 2)] for w in range(2))
    assert covers_input(a[r], a) is True


def test_a_1x1_conv_over_a_flattened_grid_keeps_each_tokens_field():
    """MobileViTv2 runs 1x1 convolutions on [N, C, patch, tokens] maps (H and W flattened into
    the token axis): pointwise, so each token keeps its field, which is the impulse support of
    that token; the analysis stopped there before ('sliding window over a flattened axis')."""
    g = G((16, 16))
    emb = g.conv(g.conv("x", 3, 1, pads=[1] * 4), 4, 4, cout=3)
    flat = g.node("Reshape", [emb, g._init(np.array([0, 3, 1, 16], np.int64), "shape")])
    y = g.conv(flat, 1, cout=2)
    model = g.model(y)
    a = rfgraph.analyze(model)
    assert not a.stops and a[y].units == (4, 4) and a[y].r == (6, 6)
    for t in range(16):
        index = a[y].spatial_index((t,))
        want = [(max(u0, 0), min(v0, 15)) for u0, v0 in a[y].region(index)]
        assert impulse_support(model, y, (0, t)) == want  # (the axis of 1 before the tokens)


def test_a_blockified_grid_is_one_unit_and_r_is_its_extent():
    """NesT's blockify: (N, C, 4, 4) -> (N, 2x2 blocks, 2x2 tokens, C), then attention within each
    block (q k^T v: each query token keeps its place and reads its whole block).  H and W are split
    over the block and token axes: one unit, holding every position, whose region is the whole
    input (the impulse support); r is that region's extent (8), not the largest extent over a
    period of units the tensor does not have (12 here; NesT-tiny read r=280 on its 224 input), and
    'covers input' says yes (its exact regions took the block count for the positions: 'no')."""
    g = G((8, 8))
    emb = g.conv("x", 2, 2, cout=2)
    blocks = g.node("Reshape", [emb, g._init(np.array([-1, 2, 2, 2, 2, 2], np.int64), "shape")])
    tokens = g.node("Reshape", [g.node("Transpose", [blocks], perm=[0, 2, 4, 3, 5, 1]),
                                g._init(np.array([-1, 4, 4, 2], np.int64), "shape")])
    scores = g.node("MatMul", [tokens, g.node("Transpose", [tokens], perm=[0, 1, 3, 2])])
    attended = g.node("MatMul", [scores, tokens])
    model = g.model(attended)
    a = rfgraph.analyze(model)
    ep = a[attended]
    assert ep.units == (None, None) and ep.region((0, 0)) == ((0, 7), (0, 7))
    assert ep.r == (8, 8)
    from rfgraph.report import covers_input  # the exact regions sweep all 4 positions (it took the 2 blocks)
    assert [x.n for x in a.exact_regions[attended]] == [4, 4] and covers_input(ep, a) is True
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((1, 1, 8, 8)).astype(np.float32) + 0.5
    base = sess.run(None, {"x": x})[0]
    moved = np.zeros((8, 8), bool)
    for px in np.ndindex(8, 8):  # the product is cubic in x: perturb on a positive background
        bumped = x.copy()
        bumped[(0, 0) + px] += 1.0
        moved[px] = bool((sess.run(None, {"x": bumped})[0] != base).any())
    assert moved.all()  # the one unit's region, [0, 7] x [0, 7], measured


def test_a_token_index_given_to_boxes_is_refused_with_its_spatial_form(tmp_path, capsys):
    """``erf --unit`` takes a token axis's flattened index, ``boxes --index`` one index per
    spatial axis: token 9 given to boxes is refused naming the same unit per axis (2,1 on the 4x4
    grid), which boxes then maps to the token's patch."""
    model, tokens = _tokens()
    path = tmp_path / "tokens.onnx"
    onnx.save(model, path)
    assert main(["boxes", str(path), "--output", tokens, "--index", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e.g. 2,1 (unit 9 of its axes of positions)" in err
    assert main(["boxes", str(path), "--output", tokens, "--index", "2,1", "--format", "json"]) == 0
    ep = rfgraph.analyze(model)[tokens]
    region = ep.region(ep.spatial_index((9,)))
    assert json.loads(capsys.readouterr().out)["units"][0]["region"] == [list(r) for r in region]


def test_erf_of_a_token_names_its_grid_unit(tmp_path, capsys):
    """``erf --unit 9`` on a token axis (4x4 grid) says which grid unit that is, (2, 1), the form
    boxes and show take (the helper found 'unit (27,)' beside show's '(3, 3)' with no link), in
    the table's title and the JSON's ``grid_unit``; the region is that grid unit's."""
    model, tokens = _tokens()
    path = tmp_path / "tokens.onnx"
    onnx.save(model, path)
    assert main(["erf", str(path), "--output", tokens, "--unit", "9", "--runs", "1"]) == 0
    assert "unit (9,) (token of grid unit (2, 1)" in capsys.readouterr().out
    assert main(["erf", str(path), "--output", tokens, "--unit", "9", "--runs", "1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ep = rfgraph.analyze(model)[tokens]
    assert doc["grid_unit"] == [2, 1] and list(divmod(9, 4)) == [2, 1]
    assert doc["trf_region"] == [list(r) for r in ep.region((2, 1))]


def test_erf_of_a_pinned_row_names_no_grid_unit(tmp_path, capsys):
    """A constant Gather of one row pins H (silero-vad's last frame): the unit indexes W alone,
    and the title named a "token of grid unit" (0, 20), as if one axis held H x W; only a token
    axis that folds several input axes has a grid unit."""
    from tests.graphs import G

    g = G((32, 40), batch=1, seed=9)
    row = g.node("Gather", [g.conv("x", 3, pads=[1] * 4), g._init(np.array(20))], axis=2)
    path = tmp_path / "row.onnx"
    onnx.save(g.model(row), path)
    assert main(["erf", str(path), "--output", row, "--unit", "7", "--runs", "1"]) == 0
    assert "unit (7,): " in capsys.readouterr().out
    assert main(["erf", str(path), "--output", row, "--unit", "7", "--runs", "1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid_unit"] is None


def test_a_window_split_regrouped_at_other_sizes_keeps_its_positions() -> None:
    """MaxViT's grid partition right after its window departition, as torch's dynamo exporter
    writes it: H held as 3 windows x 4 rows, reshaped to 4 x 3 (the same positions, row-major).
    Before, the Reshape stopped the analysis ("splits a spatial axis ... not row-major": the 3 x 4
    parts were split one by one).  Oracle: onnxruntime impulses on every unit of the regrouped
    tensor and of a conv after the grid is put back."""
    from tests.impulses import check_tensor

    g = G((12, 12), channels=1, batch=1)
    c = g.conv("x", 3, pads=[1] * 4, cout=2)
    windows = g.node("Reshape", [c, g._init(np.array([1, 2, 3, 4, 3, 4]))])
    grid = g.node("Reshape", [windows, g._init(np.array([1, 2, 4, 3, 4, 3]))])
    back = g.node("Reshape", [grid, g._init(np.array([1, 2, 12, 12]))])
    out = g.conv(back, 3, pads=[1] * 4, cout=2)
    model = g.model([grid, out])
    a = rfgraph.analyze(model)
    assert not a.stops and a[out].r == (5, 5) and a[out].units == (12, 12)
    assert check_tensor(a, model, out) == 144
    assert check_tensor(a, model, grid) == 1  # an axis over two dims: one unit holds its positions


def test_a_position_axis_of_size_one_does_not_set_layouts_apart():
    """A conv leaving one row (H = 1), flattened with its columns into one axis by a Reshape on
    one path and squeezed on the other: the two layouts differ only by the row of size 1, so
    their sum keeps each column's field (PP-OCRv5's recogniser read global on both axes from
    such an Add: 'laid out differently'); the impulse support of every column agrees."""
    from tests.impulses import check_tensor

    g = G((4, 8), channels=2, batch=1)
    c = g.conv("x", (4, 3), 1, pads=[0, 1, 0, 1], cout=3)  # (1, 3, 1, 8)
    flat = g.node("Reshape", [c, g._init(np.array([1, 3, 8]))])
    squeezed = g.node("Squeeze", [c, g._init(np.array([2]))])
    out = g.add(flat, squeezed)
    model = g.model(out)
    a = rfgraph.analyze(model)
    assert not a[out].is_global and a[out].r == (4, 3) and a[out].units == (1, 8)
    assert check_tensor(a, model, out) == 8
