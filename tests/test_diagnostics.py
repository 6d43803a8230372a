"""Diagnostics on graphs whose answers are known by construction or by brute force.

Cases: border layer of conv stacks (closed form r_l > n, eq. 2); full-coverage layer, covered
inputs and unproductive-layer shares of chains against a pixel-set simulation (independent of the
span arithmetic, padding handled by skipping padded positions); inner (narrowest-path) fields of
a residual block against explicit path enumeration; the input-size range against the same
simulation at every size; object containment against the closed form o <= r - S + 1 and brute
force; a misaligned U-Net skip whose fix (1 unit) is computed, applied as a Pad node and then
aligned; ERF growth of a linear all-ones stack (plateau at the last 3x3 conv, Luo size from the
trinomial coefficients); the CLI (table and JSON).
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from model_zoo.builder import GraphBuilder
from rfgraph import analyze
from rfgraph import diagnostics as D
from rfgraph.cli import main
from rfgraph.fields import closed_form_P, closed_form_r

Layer = tuple[int, int, int, int]  # kernel, stride, pad begin, pad end


def chain_model(n: int, layers: list[Layer]) -> onnx.ModelProto:
    """Single-channel conv chain c1..cL on an n x n input."""
    b = GraphBuilder("chain", input_shape=(1, 1, n, n), weights="ones")
    x = b.input
    for i, (k, s, pb, pe) in enumerate(layers):
        x = b.conv(x, 1, k, stride=s, padding=((pb, pe), (pb, pe)), bias=False, name=f"c{i + 1}")
    b.output(x)
    return b.build()


def simulate(n: int, layers: list[Layer]) -> list[list[frozenset[int]]]:
    """Pixels seen by every unit of every layer, by the definition of a padded convolution."""
    fields = [[frozenset({i}) for i in range(n)]]
    for k, s, pb, pe in layers:
        prev = fields[-1]
        m = len(prev)
        cur = []
        for u in range((m + pb + pe - k) // s + 1):
            seen: set[int] = set()
            for j in range(k):
                v = u * s - pb + j
                if 0 <= v < m:
                    seen |= prev[v]
            cur.append(frozenset(seen))
        fields.append(cur)
    return fields


def spans_all(seen: frozenset[int], n: int) -> bool:
    """The unit's region (first to last pixel seen) is the whole axis; a field with holes (stride
    larger than kernel) spans them, as regions do in Araujo et al."""
    return bool(seen) and min(seen) == 0 and max(seen) == n - 1


def sim_unproductive_share(fields: list[list[frozenset[int]]], layers: list[Layer], n: int,
                           idx: int) -> float:
    """Share of layer idx's units whose every non-empty read unit already sees all n pixels."""
    k, s, pb, _ = layers[idx]
    if k == 1 and s == 1:  # a 1x1 layer adds no pixel to any field: none of it lies outside
        return 0.0
    prev, cur = fields[idx], fields[idx + 1]
    bad = 0
    for u in range(len(cur)):
        reads = [prev[v] for v in (u * s - pb + j for j in range(k)) if 0 <= v < len(prev)]
        bad += all(spans_all(f, n) for f in reads if f)
    return bad / len(cur)


STACKS = {
    "ten 3x3": (16, [(3, 1, 1, 1)] * 10),
    "strided": (40, [(3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1),
                     (3, 1, 1, 1), (3, 1, 1, 1)]),
    "asymmetric pads": (23, [(5, 2, 0, 4), (3, 1, 2, 0), (4, 2, 1, 2), (3, 1, 1, 1), (3, 1, 1, 1)]),
    "huge padding": (9, [(3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 6, 6), (3, 1, 1, 1), (3, 1, 1, 1)]),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_coverage_and_unproductive_layers_match_simulation(name: str) -> None:
    n, layers = STACKS[name]
    a = analyze(chain_model(n, layers))
    regions = D.exact_regions(a)
    verdicts = {v.node: v for v in D.layer_verdicts(a, regions)}
    fields = simulate(n, layers)
    for i in range(len(layers)):
        r_i = closed_form_r([k for k, *_ in layers[:i + 1]], [s for _, s, *_ in layers[:i + 1]])
        assert a[f"c{i + 1}"].r == (r_i, r_i)
        sim = fields[i + 1]
        got = regions[f"c{i + 1}"][0]
        assert [(int(lo), int(hi)) if lo <= hi else None for lo, hi in zip(got.lo, got.hi)] == \
               [(min(f), max(f)) if f else None for f in sim]
        share = sim_unproductive_share(fields, layers, n, i)
        assert verdicts[f"c{i + 1}"].fraction == pytest.approx((share, share))
    last = f"c{len(layers)}"
    cov = D.coverage(a, last, regions, list(verdicts.values()))
    rs = [closed_form_r([k for k, *_ in layers[:i + 1]], [s for _, s, *_ in layers[:i + 1]])
          for i in range(len(layers))]
    border = next((f"c{i + 1}" for i, r in enumerate(rs) if r > n), None)
    first_full = next((f"c{i + 1}" for i in range(len(layers))
                       if all(spans_all(f, n) for f in fields[i + 1])), None)
    for axis in cov.axes:
        assert axis.border_layer == border and axis.full_layer == first_full
        assert axis.covers == all(spans_all(f, n) for f in fields[-1])
        assert axis.covered_by_some == any(spans_all(f, n) for f in fields[-1])
    expected = {f"c{i + 1}" for i in range(len(layers))
                if sim_unproductive_share(fields, layers, n, i) > 0.5}
    assert {v.node for v in cov.unproductive} == expected


@settings(max_examples=30, deadline=None)
@given(st.integers(6, 30), st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3),
                                             st.integers(0, 4), st.integers(0, 4)),
                                   min_size=1, max_size=5))
def test_exact_regions_and_shares_match_simulation_on_random_chains(n: int, layers: list) -> None:
    """Random kernels, strides and asymmetric pads (some units see only padding)."""
    sizes = _sizes_along(n, layers)
    assume(len(sizes) == len(layers) and all(m + pb + pe - k >= 0 for m, (k, s, pb, pe) in sizes))
    a = analyze(chain_model(n, layers))
    regions = D.exact_regions(a)
    verdicts = {v.node: v for v in D.layer_verdicts(a, regions)}
    fields = simulate(n, layers)
    for i in range(len(layers)):
        got = regions[f"c{i + 1}"][1]
        assert [(int(lo), int(hi)) if lo <= hi else None for lo, hi in zip(got.lo, got.hi)] == \
               [(min(f), max(f)) if f else None for f in fields[i + 1]]
        share = sim_unproductive_share(fields, layers, n, i)
        assert verdicts[f"c{i + 1}"].fraction == pytest.approx((share, share))


def test_border_layer_of_a_stack_is_where_r_passes_the_input() -> None:
    """Ten 3x3 convs on 16 px: r_l = 2l + 1 first exceeds 16 at layer 8 (by construction)."""
    a = analyze(chain_model(16, [(3, 1, 1, 1)] * 10))
    cov = D.coverage(a, "c10", D.exact_regions(a), [])
    assert [x.border_layer for x in cov.axes] == ["c8", "c8"]
    assert [x.r for x in cov.axes] == [21, 21] and not any(x.covers for x in cov.axes)


def test_the_stack_becomes_unproductive_at_a_known_layer() -> None:
    """Twelve 3x3 convs on 9 px: after l layers unit v sees [v-l, v+l] (clipped), so it sees the
    whole image iff 8-l <= v <= l.  Layer 8 reads units 1..7 of that kind for its units 2..6
    (5/9 > 1/2: unproductive); layer 7 only for units 3..5 (3/9); layers 9..12 for every unit."""
    a = analyze(chain_model(9, [(3, 1, 1, 1)] * 12))
    verdicts = {v.node: v for v in D.layer_verdicts(a, D.exact_regions(a))}
    assert [verdicts[f"c{i}"].fraction[0] for i in range(7, 13)] == [3 / 9, 5 / 9] + [1.0] * 4
    assert [v.node for v in verdicts.values() if v.unproductive] == [f"c{i}" for i in range(8, 13)]


def residual_model(n: int) -> onnx.ModelProto:
    """c1 -> [c2 -> c3 -> c4] + c1 -> c5 -> c6: the skip keeps a narrow path into the sum."""
    b = GraphBuilder("res", input_shape=(1, 1, n, n), weights="ones")
    c1 = b.conv(b.input, 1, 3, padding=1, bias=False, name="c1")
    x = c1
    for name in ("c2", "c3", "c4"):
        x = b.conv(x, 1, 3, padding=1, bias=False, name=name)
    s = b.add(x, c1, name="sum")
    c5 = b.conv(s, 1, 3, padding=1, bias=False, name="c5")
    b.output(b.conv(c5, 1, 3, padding=1, bias=False, name="c6"))
    return b.build()


def test_inner_fields_of_a_residual_block_match_path_enumeration() -> None:
    """Per unit, the narrowest path's [first, last] pixel, by enumerating the two paths."""
    n = 8
    a = analyze(residual_model(n))
    regions = D.exact_regions(a)

    def conv_paths(paths: list[list[frozenset[int]]]) -> list[list[frozenset[int]]]:
        return [[frozenset().union(*(p[v] for v in (u - 1, u, u + 1) if 0 <= v < n))
                 for u in range(n)] for p in paths]

    ident = [[frozenset({i}) for i in range(n)]]
    c1 = conv_paths(ident)
    branch = conv_paths(conv_paths(conv_paths(c1)))
    paths = {"c1": c1, "sum": branch + c1}
    paths["c5"] = conv_paths(paths["sum"])
    paths["c6"] = conv_paths(paths["c5"])
    for t, ps in paths.items():
        got = regions[t][0]
        assert list(got.inner_lo) == [max(min(p[u]) for p in ps) for u in range(n)], t
        assert list(got.inner_hi) == [min(max(p[u]) for p in ps) for u in range(n)], t
        assert list(got.lo) == [min(min(p[u]) for p in ps) for u in range(n)], t
    verdicts = {v.node: v for v in D.layer_verdicts(a, regions)}
    for name, src in (("c5", "sum"), ("c6", "c5")):
        share = np.mean([all(all(spans_all(p[v], n) for p in paths[src])
                             for v in (u - 1, u, u + 1) if 0 <= v < n) for u in range(n)])
        assert verdicts[name].fraction[0] == pytest.approx(share)


@pytest.mark.parametrize("name", ["strided", "asymmetric pads"])
def test_input_size_range_matches_simulation(name: str) -> None:
    """Re-analysis at every grid size agrees with the simulation's verdicts at that size."""
    n0, layers = STACKS[name]
    d = D.diagnose(chain_model(n0, layers), endpoints=[f"c{len(layers)}"], size_step=1,
                   size_max=60)
    assert d.sizes is not None and d.sizes.step == 1
    for p in d.sizes.points:
        n = p.size
        if any((m + pb + pe - k) < 0 for m, (k, s, pb, pe) in _sizes_along(n, layers)):
            assert p.covers is None  # the model cannot run at this size
            continue
        fields = simulate(n, layers)
        covers = any(spans_all(f, n) for f in fields[-1])
        unprod = sum(sim_unproductive_share(fields, layers, n, i) > 0.5 for i in range(len(layers)))
        assert p.covers == (covers, covers) and p.unproductive == (unprod, unprod), n
    good = [p.size for p in d.sizes.points if p.good]
    assert d.sizes.intervals and [s for lo, hi in d.sizes.intervals for s in range(lo, hi + 1)] == good


def _sizes_along(n: int, layers: list[Layer]) -> list[tuple[int, Layer]]:
    out, m = [], n
    for layer in layers:
        k, s, pb, pe = layer
        out.append((m, layer))
        if m + pb + pe - k < 0:
            break
        m = (m + pb + pe - k) // s + 1
    return out


@pytest.mark.parametrize("size", [1, 5, 9, 10, 11, 14, 15, 16, 22, 23, 40])
def test_object_containment(size: int) -> None:
    """Fraction of placements inside a unit's region: brute force; all iff o <= r - S + 1."""
    n, layers = 40, [(3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 2)]
    a = analyze(chain_model(n, layers))
    r = closed_form_r([k for k, *_ in layers], [s for _, s, *_ in layers])
    S = math.prod(s for _, s, *_ in layers)
    P = closed_form_P([pb for *_, pb, _ in layers], [s for _, s, *_ in layers])
    units = len(simulate(n, layers)[-1])
    boxes = [(u * S - P, u * S - P + r - 1) for u in range(units)]
    inside = [any(lo <= x and x + size - 1 <= hi for lo, hi in boxes) for x in range(n - size + 1)]
    fit = D.object_fit(a, f"c{len(layers)}", size)
    assert fit.trf_fraction == pytest.approx((np.mean(inside),) * 2)
    assert (fit.trf_fraction[0] == 1.0) == (size <= r - S + 1)
    assert ("every position" in fit.trf_verdict) == (size <= r - S + 1)


def unet(shift_decoder: bool) -> onnx.ModelProto:
    """Encoder conv (centre u), stride-2 conv, ConvTranspose k3 s2 back to full size, Concat.

    With decoder pads (1, 1) the upsampled unit o is centred on pixel o (aligned); with pads
    (0, 2) it is centred on o - 1: the skip is misaligned by one unit, fixed by shifting one branch
    by one unit."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 32, 32])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    pads = [0, 0, 2, 2] if shift_decoder else [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["enc"], name="enc", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["enc", "w"], ["down"], name="down", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["down", "w"], ["up"], name="up", kernel_shape=[3, 3],
                         strides=[2, 2], pads=pads, output_padding=[1, 1]),
        helper.make_node("Concat", ["enc", "up"], ["y"], name="skip", axis=1),
    ]
    g = helper.make_graph(nodes, "unet", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_misaligned_unet_skip_gets_a_one_unit_fix_that_aligns_it() -> None:
    assert analyze(unet(False)).aligned  # the construction's aligned twin
    model = unet(True)
    a = analyze(model)
    assert not a.aligned and a["up"].S == (1, 1)
    fixes = D.alignment_fixes(a)
    assert {f.axis for f in fixes} == {"H", "W"}
    for f in fixes:
        assert f.fixable and f.offset == 1
        assert sum(abs(b) for b, _ in f.pads.values()) == 1  # the smallest fix: one unit
        (tensor, (begin, end)), = f.pads.items()
        assert begin == -end  # a shift keeps the branch's size
        centre = {br.tensor: br.centre for br in a.misaligned[0].branches}
        other = next(t for t in centre if t != tensor)
        assert centre[tensor] - begin * 1 == centre[other]  # pad b units moves the centre by -b*S
    fixed = analyze(D.apply_fixes(model, fixes, a.spatial_axes))
    assert fixed.aligned and fixed["y"].shape == a["y"].shape
    d = D.diagnose(model, scan_sizes=False)
    assert [f.verified for f in d.fixes] == [True, True]


@pytest.mark.parametrize("up_stride", [1, 2])
def test_unfixable_merges_are_reported(up_stride: int) -> None:
    """Add of two branches no pad or crop can align: a stride-1 conv and a stride-2 conv
    upsampled by ConvTranspose k2 s2 (unit o reads floor(o/2): centres 0, 0, 2, 2... against
    0, 1, 2, 3); or a 3x3 and a 4x4 stride-2 conv (centres 2u and 2u + 1/2: half a pixel)."""
    b = GraphBuilder("mix", input_shape=(1, 1, 16, 16), weights="ones")
    if up_stride == 2:
        full = b.conv(b.input, 1, 3, padding=1, bias=False, name="full")
        half = b.conv(b.input, 1, 3, stride=2, padding=1, bias=False, name="half")
        other = b.conv_transpose(half, 1, 2, 2, name="up")
        reason = "upsampling phases"
    else:
        full = b.conv(b.input, 1, 3, stride=2, padding=1, bias=False, name="full")
        other = b.conv(b.input, 1, 4, stride=2, padding=((1, 1), (1, 1)), bias=False, name="even")
        reason = "not a multiple of the stride"
    b.output(b.add(full, other, name="sum"))
    model = b.build()
    a = analyze(model)
    assert not a.aligned
    fixes = D.alignment_fixes(a)
    assert fixes and all(not f.fixable and reason in f.reason for f in fixes)
    # the largest gap over the units: 0 at unit 0 but 1 px at unit 1 after the upsampling (it read
    # "centres 0 px apart: the branch centres differ from unit to unit"), half a pixel otherwise
    assert all(f.offset == (1 if up_stride == 2 else Fraction(1, 2)) for f in fixes)
    assert all(f.verified is None for f in D.diagnose(model, scan_sizes=False).fixes)


def test_erf_growth_plateau_and_ratio_on_a_linear_ones_stack() -> None:
    """3 all-ones 3x3 convs then 3 1x1 convs, no nonlinearity: the ERF is the outer product of
    the coefficients of (1 + z + z^2)^l, whatever the input; it stops growing at c3."""
    b = GraphBuilder("luo", input_shape=(1, 1, 24, 24), weights="ones")
    x = b.input
    for i in range(3):
        x = b.conv(x, 1, 3, padding=1, bias=False, name=f"c{i + 1}")
    for i in range(3):
        x = b.conv(x, 1, 1, padding=0, bias=False, name=f"p{i + 1}")
    b.output(x)
    model = b.build()
    g = D.erf_growth(model, analyze(model), "p3", max_layers=8, runs=2)
    assert not g.error and g.plateau == "c3"
    for p in g.points:
        depth = min(int(p.tensor[1]), 3) if p.tensor[0] == "c" else 3
        coeff = np.array([1.0])
        for _ in range(depth):
            coeff = np.convolve(coeff, np.ones(3))
        erf2 = np.outer(coeff, coeff)
        count = int((erf2 > (1 - 0.9545) * erf2.max()).sum())
        assert p.erf_size == pytest.approx(math.sqrt(count))
        assert p.ratio == pytest.approx(math.sqrt(count) / (2 * depth + 1))


def test_plateau_definition() -> None:
    assert D.plateau_index([3, 5, 7, 7.2, 7.3]) == 2  # 7.3 <= 1.05 x 7
    assert D.plateau_index([3, 5, 7, 8]) == 3
    assert D.plateau_index([4]) == 0 and D.plateau_index([]) is None


def test_cli_diagnose_table_and_json(tmp_path, capsys) -> None:
    path = tmp_path / "unet.onnx"
    onnx.save(unet(True), path)
    assert main(["diagnose", str(path), "--object-size", "8", "--object-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "alignment fixes" in out and "verified: aligned" in out
    assert main(["diagnose", str(path), "--object-size", "8", "--format", "json",
                 "--size-max", "40"]) == 0
    data = json.loads(capsys.readouterr().out)
    cov = data["coverage"][0]["axes"][0]
    assert cov["input_size"] == 32 and cov["r"] == analyze(unet(True))["y"].r[0]
    assert data["objects"][0]["size"] == 8 and data["alignment_fixes"][0]["fixable"]
    assert data["size_range"]["points"][-1]["size"] <= 40


def test_cli_erf_ratio_plateau_and_object_sizes(tmp_path, capsys) -> None:
    """--erf on the all-ones stack: ERF extent 7 (trinomial coefficients above Luo's threshold
    span 7 pixels), so a 7 px object is within the ERF and an 8 px one is not."""
    b = GraphBuilder("luo", input_shape=(1, 1, 20, 20), weights="ones")
    x = b.input
    for i in range(3):
        x = b.conv(x, 1, 3, padding=1, bias=False, name=f"c{i + 1}")
    b.output(b.conv(x, 1, 1, padding=0, bias=False, name="p1"))
    path = tmp_path / "luo.onnx"
    onnx.save(b.build(), path)
    args = ["diagnose", str(path), "--erf", "--erf-runs", "2", "--no-size-range",
            "--object-size", "7", "--object-size", "8", "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    (erf,) = data["erf"]
    assert erf["plateau_layer"] == "c3" and erf["layers"][-1]["erf_extent"] == [7, 7]
    coeff = np.convolve(np.convolve([1.0, 1, 1], [1.0, 1, 1]), [1.0, 1, 1])
    count = int((np.outer(coeff, coeff) > (1 - 0.9545) * coeff.max() ** 2).sum())
    assert erf["layers"][-1]["erf_trf_ratio"] == pytest.approx(math.sqrt(count) / 7)
    assert [o["erf"] for o in data["objects"]] == ["within the ERF", "larger than the ERF"]
    assert main(args[:-2]) == 0
    assert "ERF stops growing at" in capsys.readouterr().out


def test_fix_for_a_misaligned_merge_of_two_reversed_branches() -> None:
    """Both branches reversed along W (S = -1), one padded 0/2 instead of 1/1: the fix is a
    one-unit shift, and applying it aligns the merge (diagnose re-analyses: verified)."""
    from tests.graphs import G

    g = G((16, 16))
    f = g.flip(g.conv("x", 3, 1, pads=[1] * 4), 1)
    y = g.add(g.conv(f, 3, 1, pads=[1, 1, 1, 1]), g.conv(f, 3, 1, pads=[1, 0, 1, 2]))
    model = g.model(y)
    a = analyze(model)
    assert not a.aligned and a[y].S == (1, -1)
    (fix,) = D.alignment_fixes(a)
    assert fix.axis == "W" and fix.fixable and fix.offset == 1
    assert sum(abs(b) for b, _ in fix.pads.values()) == 1
    assert analyze(D.apply_fixes(model, [fix], a.spatial_axes)).aligned
    assert [f.verified for f in D.diagnose(model, scan_sizes=False).fixes] == [True]


def test_merge_of_fixed_positions_is_reported_unfixable() -> None:
    """Two time steps picked by Gather along W (fields of stride 0) added together: misaligned,
    and no pad or crop can move a fixed position (this used to divide by S = 0)."""
    from tests.graphs import G

    g = G((8, 12))
    c = g.conv("x", 3, 1, pads=[1] * 4)
    picks = [g.node("Gather", [c, g._init(np.array(i))], axis=3) for i in (2, 7)]
    y = g.add(*picks)
    a = analyze(g.model(y))
    assert not a.aligned
    (fix,) = [f for f in D.alignment_fixes(a) if f.axis == "W"]
    assert not fix.fixable and "S = 0" in fix.reason and fix.offset == 5


def test_a_window_attention_merge_is_unfixable_and_says_why() -> None:
    """Swin's residual sum joins a token's own field with its window's (units of a window share
    one field: the centres differ with a period of 7 units).  The fixes read the branches' fields
    from the tensors, where the window partition folds the positions, and called two such merges
    "already aligned" with no pad (SAM's encoder: "already aligned [re-analysis: still
    misaligned]"), the other two "upsampling phases".  Now each is unfixable, naming the windows."""
    import model_zoo

    a = analyze(model_zoo.build("swin_t"))
    fixes = D.alignment_fixes(a)
    assert len(fixes) == len(a.misaligned) == 4
    assert all(not f.fixable and "a period of 7 units" in f.reason and "window" in f.reason for f in fixes)


def test_coverage_of_an_axis_folded_into_the_features() -> None:
    """H folded into the channels (a CRNN's feature sequence): a unit holds all 8 rows, whose
    union (r = 19 on a 16-px input) covers H, so every unit sees the whole axis; W is a unit axis
    of 8 units with r = 5: none does.  (The rows were judged one by one before: 'no unit'.)"""
    from tests.test_unit_axes import _folded

    model, tensor = _folded()
    (cov,) = D.diagnose(model, endpoints=[tensor], scan_sizes=False).coverage
    h, w = cov.axes
    assert (h.r, h.covers, h.covered_by_some) == (19, True, True)
    assert (w.r, w.covers, w.covered_by_some) == (5, False, False)


def test_table_lists_ten_alignment_fixes_and_counts_the_rest(tmp_path, capsys) -> None:
    """Fourteen misaligned merges (each a branch padded 0/2 instead of 1/1): ten fixes printed,
    then how many more; JSON keeps all (a CRNN printed 78 lines)."""
    from tests.graphs import G

    g = G((32, 32))
    x = g.conv("x", 3, 1, pads=[1] * 4)
    for _ in range(14):
        x = g.add(g.conv(x, 3, 1, pads=[1] * 4), g.conv(x, 3, 1, pads=[1, 0, 1, 2]))
    path = tmp_path / "m.onnx"
    onnx.save(g.model(x), path)
    assert main(["diagnose", str(path), "--no-size-range"]) in (0, 1)
    out = capsys.readouterr().out
    fixes = out.split("alignment fixes:\n")[1].splitlines()
    assert len([ln for ln in fixes if "along W, centres" in ln]) == 10
    assert "  ... and 4 more (--format json lists them all)" in fixes
    assert main(["diagnose", str(path), "--no-size-range", "--format", "json"]) in (0, 1)
    assert len(json.loads(capsys.readouterr().out)["alignment_fixes"]) == 14


def test_size_scan_records_sizes_where_an_end_point_has_no_units() -> None:
    """Two 3x3 stride-2 convs: at n = 4 the first gives 1 unit and the second (1 - 3) // 2 + 1 = 0
    (the simulation's unit count), so that size fails with the reason instead of a KeyError."""
    layers = [(3, 2, 0, 0), (3, 2, 0, 0)]
    d = D.diagnose(chain_model(12, layers), size_step=4, size_max=12)
    assert d.sizes is not None
    by_size = {p.size: p for p in d.sizes.points}
    assert len(simulate(4, layers)[-1]) == 0
    # the size validation (or the end point check behind it) names the vanishing map
    assert by_size[4].covers is None and re.search("no (output )?units?", by_size[4].error or "")
    assert all(p.covers is not None for n, p in by_size.items() if len(simulate(n, layers)[-1]) > 0)
    text = render_diagnosis(d)
    assert "4: " in text and re.search("no (output )?units?", text)


def render_diagnosis(d: D.Diagnosis) -> str:
    from rfgraph.commands.diagnose import render

    return render(d)


def test_a_1x1_head_is_never_unproductive() -> None:
    """A 1x1 stride-1 conv adds no pixel to any field (the simulation: each unit sees what its
    input unit sees), so it cannot add pixels outside the image: the size scan of a chain with a
    1x1 head equals that of the chain without it, and its design size stays valid."""
    layers = [(3, 2, 1, 1), (3, 2, 1, 1), (5, 1, 2, 2)]
    head = layers + [(1, 1, 0, 0)]
    fields = simulate(12, head)
    assert fields[-1] == fields[-2]
    with_head = D.diagnose(chain_model(12, head), size_step=4, size_max=24)
    without = D.diagnose(chain_model(12, layers), size_step=4, size_max=24)
    assert with_head.sizes is not None and without.sizes is not None
    assert with_head.sizes.intervals == without.sizes.intervals
    assert any(lo <= 12 <= hi for lo, hi in without.sizes.intervals)
    verdict = {v.node: v for v in with_head.verdicts}["c4"]
    assert verdict.fraction == (0.0, 0.0) and not verdict.unproductive


def test_diagnose_shows_the_size_scan_progress_on_a_terminal(tmp_path, capsys, monkeypatch) -> None:
    """On a terminal (simulated: stderr claims to be a TTY) the size scan shows a tqdm bar on
    stderr, as the other commands do; -q silences it (it showed nothing before)."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    path = tmp_path / "chain.onnx"
    onnx.save(chain_model(12, [(3, 2, 1, 1), (3, 1, 1, 1)]), path)
    assert main(["diagnose", str(path), "--size-step", "4", "--size-max", "24"]) == 0
    assert "input-size scan" in capsys.readouterr().err
    assert main(["-q", "diagnose", str(path), "--size-step", "4", "--size-max", "24"]) == 0
    assert "input-size scan" not in capsys.readouterr().err


def test_size_scan_stops_at_its_time_limit_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A scan whose re-analyses are slow (Swin-T: over 300 s, the census' timeout) keeps what it has
    and says where it stopped and how to narrow it; the sizes it did scan are the full scan's."""
    import json as _json

    from rfgraph import budgets
    from rfgraph.cli import main as cli

    argv = ["diagnose", "zoo:cnn_small", "--format", "json", "-q"]
    assert cli(argv) == 0
    full = _json.loads(capsys.readouterr().out)["size_range"]
    assert full["stopped"] is None and len(full["points"]) > 1
    import itertools

    from rfgraph.diagnostics import sizes as sizes_mod

    clock = itertools.count(0, 1000)  # every size now takes 1000 s, over the 120 s limit
    monkeypatch.setattr(sizes_mod.time, "monotonic", lambda: float(next(clock)))
    assert cli(argv) == 0
    cut = _json.loads(capsys.readouterr().out)["size_range"]
    assert len(cut["points"]) == 1 and cut["points"][0] == full["points"][0]
    assert budgets.SCAN_SECONDS.env in cut["stopped"] and "--size-max" in cut["stopped"]
    assert cli(argv[:2] + ["-q"]) == 0
    assert "the scan stopped at size" in capsys.readouterr().out


def test_a_gates_pooling_is_no_unproductive_layer() -> None:
    """EfficientNet at 128 (Keras): its SE squeezes read saturated maps, and diagnose listed them
    as unproductive (and left 128 out of the size range) though no end point's coverage counted
    them. A gate's pooling mixes positions to gate them: judged nowhere."""
    from rfgraph.diagnostics import diagnose

    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.random(s, np.float32), f"w{i}") for i, s in
         enumerate([(2, 1, 5, 5), (2, 2, 5, 5), (2, 2, 1, 1)])]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[2] * 4, strides=[2, 2]),
             helper.make_node("Conv", ["a", "w1"], ["b"], pads=[2] * 4, strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["squeeze"]),
             helper.make_node("Conv", ["squeeze", "w2"], ["excite"]),
             helper.make_node("Sigmoid", ["excite"], ["gate"]),
             helper.make_node("Mul", ["b", "gate"], ["y"])]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], w)
    d = diagnose(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), scan_sizes=False)
    assert d.analysis["y"].gates and "GlobalAveragePool" not in {v.op for v in d.verdicts}
    assert {v.op for v in d.verdicts} == {"Conv"}


def test_size_scan_stops_at_a_reshape_fixed_at_export(tmp_path, capsys) -> None:
    """A Reshape whose target the exporter fixed fits only the exported size: the scan tried every
    other size and failed each the same way (Swin-T: 130 s, tnt: 56 failures); it now stops at the
    first, naming the node.  Oracle: that size's own error, and onnxruntime refusing another size."""
    import onnxruntime as ort

    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.1, np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 1, 256], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Reshape", ["c", "shape"], ["y"], name="flat")], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 256])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    assert main(["diagnose", str(path), "--output", "c", "--size-step", "4", "--size-max", "40",
                 "--format", "json", "-q"]) == 0
    scan = json.loads(capsys.readouterr().out)["size_range"]
    (point,) = scan["points"]
    assert "node 'flat' (Reshape) has a target fixed" in scan["stopped"] and "'flat'" in point["error"]
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "n"  # the input free, the Reshape's target as exported
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = point["size"]
    with pytest.raises(Exception, match="Reshape"):
        session.run(None, {"x": np.zeros((1, 1, size, size), np.float32)})


def _two_merges(skip_first: bool):  # type: ignore[no-untyped-def]
    """Two residual sums in a row, each a 3x3 conv padded at the end only (centre +1) beside a
    1x1 conv of the input (centre 0): misaligned by 1, then by 2."""
    from tests.graphs import G

    g = G((16, 16))
    a1, b1 = g.conv("x", 3, 1, pads=[0, 0, 2, 2]), g.conv("x", 1, 1, pads=[0] * 4)
    s1 = g.add(b1, a1) if skip_first else g.add(a1, b1)
    a2, b2 = g.conv(s1, 3, 1, pads=[0, 0, 2, 2]), g.conv("x", 1, 1, pads=[0] * 4)
    return g.model(g.add(b2, a2) if skip_first else g.add(a2, b2))


def test_fixes_at_two_merges_are_both_applied() -> None:
    """apply_fixes found each merge by its index in the file after inserting the Pads before it:
    the second fix landed on the node before its merge and changed nothing (re-analysis: "still
    misaligned")."""
    model = _two_merges(skip_first=False)
    a = analyze(model)
    fixes = D.alignment_fixes(a)
    assert len({f.node for f in fixes}) == 2 and all(f.fixable for f in fixes)
    fixed = D.apply_fixes(model, fixes, a.spatial_axes, a.graph.names)
    assert sum(n.op_type == "Pad" for n in fixed.graph.node) == 2
    assert analyze(fixed).aligned


def test_fixes_are_computed_with_the_earlier_ones_applied() -> None:
    """Where the first fix shifts the branch the network goes on with (the residual sum's second
    input), every later field moves: the second merge's offset becomes 1, not 2.  Computed alone,
    its fix over-corrected; computed in order, every fix holds when all are applied."""
    model = _two_merges(skip_first=True)
    alone = D.alignment_fixes(analyze(model))
    assert sorted({abs(b) for f in alone for b, _ in f.pads.values()}) == [1, 2]
    d = D.diagnose(model, scan_sizes=False)
    assert [f.verified for f in d.fixes] == [True] * 4
    assert {abs(b) for f in d.fixes for b, _ in f.pads.values()} == {1}
    a = analyze(model)
    assert analyze(D.apply_fixes(model, d.fixes, a.spatial_axes, a.graph.names)).aligned
