"""The ERF on the unit's cone (``rfgraph.cone``, ``compute_erfs(region=...)``, ``erf --region``).

Cases: the cone's map equals the full image's (signed, <= 1e-6 of its max) for a centre unit, a
corner unit and a unit touching one border, on a plain conv chain, strided + dilated convs, a
residual Add, a U-Net (max pools, nearest and linear Resize, ConvTranspose, Concat) and ceil_mode
pools; a SAME auto_pad model is exact or left on the full image with a note; a global model
(GlobalAveragePool) and a gated one (squeeze-excitation) use the full image and say why; a model
whose values depend on the input size (a Shape-derived offset before a Relu) passes the TRF check
and is caught by the exactness guard (map still equal, note; ``region="cone"`` refuses); a
Reshape with constant spatial dims is left on the full image.  Oracles: the full-image gradient
(checked against torch autograd in test_erf.py), onnxruntime forward values and impulse
responses for the crop geometry, and brute force over the crop arithmetic.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from rfgraph import analyze, cone
from rfgraph.cli import main
from rfgraph.erf import compute_erfs
from rfgraph.errors import RFGraphError
from rfgraph.onnx_import import load_model
from tests.graphs import G

TOL = 1e-6


def plain() -> tuple[onnx.ModelProto, str]:
    g = G((40, 40), seed=1)
    x = g.relu(g.conv("x", 3, pads=[1] * 4))
    x = g.relu(g.conv(x, 3, pads=[1] * 4))
    return g.model(g.conv(x, 3, pads=[1] * 4)), ""


def strided_dilated() -> tuple[onnx.ModelProto, str]:
    g = G((45, 41), seed=2)
    x = g.relu(g.conv("x", 3, 2, pads=[1] * 4))
    x = g.relu(g.conv(x, 3, 1, pads=[2] * 4, d=2))
    return g.model(g.conv(x, 3, 2, pads=[1] * 4)), ""


def residual() -> tuple[onnx.ModelProto, str]:
    g = G((36, 36), seed=3)
    a = g.relu(g.conv("x", 3, 2, pads=[1] * 4))
    b = g.conv(g.relu(g.conv(a, 3, pads=[1] * 4)), 3, pads=[1] * 4)
    return g.model(g.conv(g.relu(g.add(a, b)), 3, 2, pads=[1] * 4)), ""


def unet() -> tuple[onnx.ModelProto, str]:
    """Two max-pool levels down, nearest Resize and ConvTranspose up, linear Resize, skips."""
    g = G((48, 48), seed=4)
    d0 = g.relu(g.conv("x", 3, pads=[1] * 4))
    d1 = g.relu(g.conv(g.pool("MaxPool", d0, 2, 2), 3, pads=[1] * 4))
    bottom = g.relu(g.conv(g.pool("MaxPool", d1, 2, 2), 3, pads=[1] * 4))
    u1 = g.relu(g.conv(g.concat([g.resize(bottom, 2), d1]), 3, pads=[1] * 4))
    u0 = g.relu(g.conv(g.concat([g.conv_t(u1, 2, 2), d0]), 3, pads=[1] * 4))
    lin = g.resize(g.pool("AveragePool", u0, 2, 2), 2, mode="linear", coord="half_pixel")
    return g.model(g.conv(g.add(lin, u0), 3, pads=[1] * 4)), ""


def ceil_pools() -> tuple[onnx.ModelProto, str]:
    g = G((43, 39), seed=5)
    x = g.pool("MaxPool", g.relu(g.conv("x", 3, pads=[1] * 4)), 3, 2, ceil_mode=1)
    x = g.relu(g.conv(x, 3, pads=[1] * 4))
    return g.model(g.pool("AveragePool", x, 3, 2, pads=[1] * 4, ceil_mode=1, count_include_pad=0)), ""


MODELS = {"plain": plain, "strided_dilated": strided_dilated, "residual": residual, "unet": unet,
          "ceil_pools": ceil_pools}


def _units(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Centre, corner and one-border units of the model's output."""
    h, w = (d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[2:])
    return {"centre": ((h - 1) // 2, (w - 1) // 2), "corner": (0, 0), "border": (h - 1, (w - 1) // 2)}


def _both(model: onnx.ModelProto, units: list[tuple[int, int]], **kw: object) -> tuple[list, list]:
    kw = {"runs": 2, "absolute": False, "seed": 3, **kw}
    return (compute_erfs(model, units=units, region="auto", **kw),  # type: ignore[arg-type]
            compute_erfs(model, units=units, region="full", **kw))  # type: ignore[arg-type]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(b).max() > 0
    assert np.abs(a - b).max() <= TOL * np.abs(b).max()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cone_equals_full_image(name: str) -> None:
    """Each unit's signed ERF on its cone equals the full image's; each unit's crop is smaller
    than the image and the note says so."""
    model, _ = MODELS[name]()
    units = _units(model)
    coned, full = _both(model, list(units.values()))
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    notes = " ".join(coned[0].notes)
    for unit in units.values():
        assert f"computed on the unit's cone for unit {unit}" in notes, notes
    assert not any("cone" in n for n in full[0].notes)


def test_crop_geometry_against_onnxruntime() -> None:
    """On a 1-D chain (stride 2, dilation 2, stride 2), for every unit at several input sizes:
    the crop starts at a multiple of the period with the size's residue, holds every input the
    unit responds to (impulses through onnxruntime), and the crop model's unit has the full
    model's value (onnxruntime forwards)."""
    for n in range(21, 29):
        g = G((n,), seed=n)
        x = g.conv(g.conv(g.conv("x", 3, 2, pads=[1, 1]), 3, 1, pads=[2, 2], d=2), 3, 2, pads=[1, 1])
        model = load_model(g.model(x), {"x": (1, 1, n)})
        a = analyze(model)
        ep = a[x]
        period = cone.alignment_period(a, model, x)
        assert period == (4,)
        xs = np.random.default_rng(n).standard_normal((1, 1, n)).astype(np.float32)
        y_full = _run(model, xs)
        impulses = _run(model, np.eye(n, dtype=np.float32)[:, None, :]) - _run(model, np.zeros((1, 1, n), np.float32))
        for j in range(ep.units[0] or 1):
            crop = cone.crop_for(ep.region((j,)), (1, 1, n), (2,), period)
            (start,), (stop,) = crop.start, crop.stop
            assert start % 4 == 0 and (stop - start) % 4 == n % 4 and stop <= n
            support = np.flatnonzero(impulses[:, 0, j])
            assert start <= support.min() and support.max() < stop
            if crop.covers((1, 1, n)):
                continue
            small = load_model(model, {"x": crop.shape((1, 1, n))})
            (jc,) = cone.crop_unit(ep, analyze(small)[x], (j,), crop.start)
            assert abs(_run(small, crop.take(xs))[0, 0, jc] - y_full[0, 0, j]) <= 1e-6 * np.abs(y_full).max()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_crop_span_brute_force() -> None:
    """crop_span against brute force: the narrowest [a, b) inside [0, n) with a a multiple of
    the period, b - a = n modulo the period, holding the region clipped to the image."""
    for n, p, u0, v0 in itertools.product(range(1, 19), (1, 2, 3, 4, 8), range(-6, 20), range(0, 26)):
        if v0 < u0 or u0 > n - 1 or v0 < 0:
            continue
        lo, hi = max(0, u0), min(n, v0 + 1)
        fits = [(a, b) for a in range(0, lo + 1, p) for b in range(hi, n + 1) if (b - a) % p == n % p]
        assert cone.crop_span((u0, v0), n, p) == min(fits, key=lambda ab: (ab[1] - ab[0], -ab[0]))


def test_same_autopad_exact_or_full_with_note() -> None:
    """auto_pad SAME_UPPER with stride 2 (pads depend on the size): the cone keeps the size's
    residue, so it is exact; else the full image with a note."""
    g = G((37, 37), seed=6)
    x = g.relu(g.conv("x", 3, 2, auto_pad="SAME_UPPER"))
    model = g.model(g.conv(x, 5, 2, auto_pad="SAME_UPPER"))
    units = list(_units(model).values())
    coned, full = _both(model, units)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert any("cone" in n or "full image" in n for n in coned[0].notes)


def _global_model() -> onnx.ModelProto:
    g = G((24, 24), seed=7)
    x = g.relu(g.conv("x", 3, pads=[1] * 4))
    return g.model(g.conv(g.node("GlobalAveragePool", [x]), 1))


def test_global_field_uses_full_image_and_says_why() -> None:
    """GlobalAveragePool then Conv: every pixel reaches the unit; the full image is used,
    the note names the global field; region='cone' refuses, naming it."""
    model = _global_model()
    coned, full = _both(model, [None])
    np.testing.assert_array_equal(coned[0].erf, full[0].erf)
    assert any("computed on the full image" in n and "GlobalAveragePool" in n for n in coned[0].notes), coned[0].notes
    with pytest.raises(RFGraphError, match="--region cone: computed on the full image"):
        compute_erfs(model, runs=1, region="cone")


def test_gated_unit_uses_full_image() -> None:
    """A squeeze-excitation gate: the TRF is local (gate held constant) but the gradient flows
    through the gate's pooling, so the full image is used, with the reason."""
    g = G((24, 24), seed=8)
    x = g.relu(g.conv("x", 3, pads=[1] * 4))
    gate = g.node("Sigmoid", [g.conv(g.node("GlobalAveragePool", [x]), 1)])
    model = g.model(g.conv(g.node("Mul", [x, gate]), 3, pads=[1] * 4))
    coned, full = _both(model, [(0, 0)])
    np.testing.assert_array_equal(coned[0].erf, full[0].erf)
    assert any("gated" in n and "full image" in n for n in coned[0].notes)


def _size_dependent_model() -> onnx.ModelProto:
    """Relu(conv(x) + (W - 30)): a Shape-derived offset that the TRF pass sees as a constant;
    on a narrower crop it turns the Relu off, so only the exactness guard can tell."""
    g = G((40, 40), seed=9)
    y = g.conv("x", 3, pads=[1] * 4)
    shape = g.node("Shape", ["x"])
    index = g._init(np.array(3, np.int64))
    width = g.node("Cast", [g.node("Gather", [shape, index], axis=0)], to=onnx.TensorProto.FLOAT)
    offset = g.node("Sub", [width, g._init(np.array(30.0))])
    return g.model(g.conv(g.relu(g.add(y, offset)), 3, pads=[1] * 4))


def test_guard_catches_size_dependent_values() -> None:
    """The crop passes the TRF check but computes another function: the guard compares the first
    input both ways, falls back to the full image (same map) with a note; 'cone' refuses."""
    model = _size_dependent_model()
    coned, full = _both(model, [(19, 19)])
    np.testing.assert_array_equal(coned[0].erf, full[0].erf)
    assert any("differ by" in n and "full image" in n for n in coned[0].notes), coned[0].notes
    with pytest.raises(RFGraphError, match="depend on the input size"):
        compute_erfs(model, runs=1, region="cone")


def test_constant_reshape_left_on_full_image() -> None:
    """A Reshape to constant spatial dims cannot run at the crop's size: the full image, and
    the note says the model differs at that size."""
    g = G((32, 32), seed=10)
    y = g.relu(g.conv("x", 3, pads=[1] * 4))
    flat = g.node("Reshape", [y, g._init(np.array([1, 2, 32 * 32]))])
    back = g.node("Reshape", [flat, g._init(np.array([1, 2, 32, 32]))])
    model = g.model(g.conv(back, 3, pads=[1] * 4))
    coned, full = _both(model, [(16, 16)])
    np.testing.assert_array_equal(coned[0].erf, full[0].erf)
    assert any("full image" in n for n in coned[0].notes), coned[0].notes


def test_workers_and_units_share_the_cones() -> None:
    """--units with two workers: each unit on its own crop, pickled to the workers, the same
    maps as one process on the full image."""
    model, _ = residual()
    units = list(_units(model).values())
    coned = compute_erfs(model, units=units, runs=4, region="auto", workers=2)
    full = compute_erfs(model, units=units, runs=4, region="full")
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)


def test_cli_region_notes_in_json(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """``erf --region auto --format json`` carries the cone note; ``--region full`` does not;
    ``--region cone`` on a global model exits 2 with the reason."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    model, _ = plain()
    onnx.save(model, folder / "m.onnx")
    assert main(["erf", str(folder / "m.onnx"), "--runs", "1", "--format", "json", "--region", "auto"]) == 0
    assert any("unit's cone" in n for n in json.loads(capsys.readouterr().out)["notes"])
    assert main(["erf", str(folder / "m.onnx"), "--runs", "1", "--format", "json", "--region", "full"]) == 0
    assert not any("cone" in n for n in json.loads(capsys.readouterr().out)["notes"])
    onnx.save(_global_model(), folder / "g.onnx")
    assert main(["erf", str(folder / "g.onnx"), "--runs", "1", "--region", "cone"]) == 2
    assert "global" in capsys.readouterr().err


def test_weights_redrawn_alike_on_the_crop() -> None:
    """--reinit he with two weight draws: the crop model gets each draw's weights (by name),
    so the map equals the full image's."""
    model, _ = strided_dilated()
    coned, full = _both(model, [_units(model)["centre"]], reinit="he", weight_runs=2)
    _close(coned[0].erf, full[0].erf)


def test_crop_take_place_round_trip() -> None:
    """Crop.take / place round trip: the crop put back is the input inside the box, 0 outside."""
    crop = cone.Crop((2, 4), (6, 9), (2, 3))
    x = np.arange(2 * 3 * 10 * 12, dtype=np.float32).reshape(2, 3, 10, 12)
    back = crop.place(crop.take(x), x.shape)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back[:, :, 2:6, 4:9], x[:, :, 2:6, 4:9])
    assert back.sum() == x[:, :, 2:6, 4:9].sum()


def test_replknet_preset_on_images(tmp_path: object) -> None:
    """RepLKNet's conventions (a Relu head appended to the seeded tensor, relu aggregation) over
    a folder of images: each image is loaded at the full size and cropped, so the cone's map
    equals the full image's; the crop model carries the Relu head."""
    from pathlib import Path

    from PIL import Image

    from rfgraph.erf_conventions import REPLKNET

    folder = Path(str(tmp_path))
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    g = G((40, 40), channels=3, seed=11)
    model = g.model(g.conv(g.relu(g.conv("x", 3, 2, pads=[1] * 4)), 3, pads=[1] * 4))
    kw = {"runs": 3, "conventions": REPLKNET, "inputs": str(folder), "units": [(3, 16)]}
    coned = compute_erfs(model, region="auto", **kw)  # type: ignore[arg-type]
    full = compute_erfs(model, region="full", **kw)  # type: ignore[arg-type]
    _close(coned[0].erf, full[0].erf)
    assert any("unit's cone" in n for n in coned[0].notes), coned[0].notes


def test_later_nodes_do_not_block_the_cone() -> None:
    """A Reshape to the full size *after* the seeded tensor (a detection head's flatten) cannot
    run at the crop's size, but plays no part in the unit: the crop model holds only the
    seeded tensor's ancestors, so the cone is used, and equals the full image."""
    g = G((32, 32), seed=12)
    feat = g.conv(g.relu(g.conv("x", 3, pads=[1] * 4)), 3, pads=[1] * 4)
    head = g.node("Reshape", [feat, g._init(np.array([1, 2 * 32 * 32]))])
    model = g.model([head, feat])
    kw = {"runs": 2, "absolute": False, "units": [(16, 16)]}
    coned = compute_erfs(model, feat, region="cone", **kw)  # type: ignore[arg-type]
    full = compute_erfs(model, feat, region="full", **kw)  # type: ignore[arg-type]
    _close(coned[0].erf, full[0].erf)


def _nhwc_model() -> onnx.ModelProto:
    """An NHWC input (Keras/TF export): Transpose to NCHW, then a strided conv chain."""
    g = G((30, 26), channels=3, seed=13)
    g.input = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 30, 26, 3])
    g.channels["x"] = 3
    nchw = g.node("Transpose", ["x"], 3, perm=[0, 3, 1, 2])
    return g.model(g.conv(g.relu(g.conv(nchw, 3, 2, pads=[1] * 4)), 3, pads=[1] * 4))


def test_nhwc_input_is_cropped_along_its_spatial_axes() -> None:
    """The crop slices the input's own spatial axes (1 and 2 for NHWC)."""
    model = _nhwc_model()
    units = [(7, 6), (0, 12), (14, 0)]
    coned, full = _both(model, units)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert sum("unit's cone" in n for n in coned[0].notes) == 3, coned[0].notes


def test_one_dimensional_signal() -> None:
    """A 1-D (audio-like) chain: centre and both ends on their cones."""
    g = G((200,), seed=14)
    x = g.relu(g.conv("x", 5, 2, pads=[2, 2]))
    model = g.model(g.conv(g.relu(g.conv(x, 3, 1, pads=[2, 2], d=2)), 3, 2, pads=[1, 1]))
    units = [(25,), (0,), (49,)]
    coned, full = _both(model, units)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert sum("unit's cone" in n for n in coned[0].notes) == 3, coned[0].notes


def test_field_covering_the_input_is_its_own_cone() -> None:
    """A unit whose field covers the input: the full image is its cone, so region='cone' runs
    it (no refusal) and says so: on the whole input, the first conv only where the unit reads it
    (``rfgraph.trim``); region='auto' on a short run: the whole graph, 'covers the input'."""
    g = G((12, 12), seed=15)
    model = g.model(g.conv(g.conv("x", 7, pads=[3] * 4), 7, pads=[3] * 4))
    res = compute_erfs(model, runs=1, region="cone")
    assert any("input crop the whole input 12x12; each layer on the unit's cone (12% of the multiply-accumulates)"
               in n for n in res[0].notes), res[0].notes
    res = compute_erfs(model, runs=1, region="auto")
    assert any("covers the input" in n for n in res[0].notes), res[0].notes


def test_constant_node_weights_redrawn_alike() -> None:
    """Weights held by Constant nodes (Paddle exports) become initializers when redrawn; the
    crop model gets the same treatment, so --reinit he keeps the cone and its map."""
    model, _ = strided_dilated()
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [helper.make_node("Constant", [], [name], value=inits[name]) for name in inits]
    nodes += list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    coned, full = _both(model, [_units(model)["centre"]], reinit="he", weight_runs=2)
    _close(coned[0].erf, full[0].erf)
    assert any("unit's cone" in n for n in coned[0].notes), coned[0].notes


def test_flattened_token_axis() -> None:
    """A feature map flattened to tokens (Reshape to (N, C, H*W), Transpose: a detector's or
    ViT's layout): the token index maps to the crop model's token of the same region."""
    g = G((24, 20), seed=16)
    y = g.conv(g.relu(g.conv("x", 3, 2, pads=[1] * 4)), 3, pads=[1] * 4)
    tokens = g.node("Transpose", [g.node("Reshape", [y, g._init(np.array([0, 2, -1]))])], perm=[0, 2, 1])
    model = g.model(tokens)
    units = [(5 * 10 + 4,), (0,), (11 * 10 + 9,)]  # centre-ish, first, last of the 12x10 grid
    coned, full = _both(model, units)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert sum("unit's cone" in n for n in coned[0].notes) == 3, coned[0].notes


def test_finite_differences_on_the_cone() -> None:
    """--method fd perturbs the unit's field on the crop (each forward costs the crop): the
    same map as the full image's finite differences, the guard run with them."""
    model, _ = strided_dilated()
    units = list(_units(model).values())
    coned, full = _both(model, units, method="fd")
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert sum("unit's cone" in n for n in coned[0].notes) == 3, coned[0].notes


def test_finite_differences_guard_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's finite differences on the full image are estimated first: over the budget
    they are refused before any gradient is computed, saying so."""
    from rfgraph.finite_diff import FiniteDifference

    computed = []
    gradient = FiniteDifference.gradient
    monkeypatch.setattr(FiniteDifference, "gradient",
                        lambda self, *a, **k: computed.append(1) or gradient(self, *a, **k))
    model, _ = strided_dilated()
    with pytest.raises(RFGraphError, match="over the budget"):
        compute_erfs(model, runs=1, method="fd", region="auto", fd_budget=1e-6)
    assert not computed


def test_crop_engine_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the gradient graph fail at the crop's size only, the full image is used with a
    note (region='cone': an error), never an internal error."""
    from rfgraph import erf as erf_mod

    model, _ = plain()
    build = erf_mod.GradientEngine.__init__

    def fail_on_crops(self, model, target, input_name, input_shape, *a, **k):  # type: ignore[no-untyped-def]
        if input_shape[2:] != (40, 40):
            raise ValueError("no kernel at this size")
        build(self, model, target, input_name, input_shape, *a, **k)

    monkeypatch.setattr(erf_mod.GradientEngine, "__init__", fail_on_crops)
    coned = compute_erfs(model, runs=1, region="auto")
    assert any("at the crop's size failed (no kernel at this size)" in n for n in coned[0].notes)
    with pytest.raises(RFGraphError, match=r"--region cone: .*failed"):
        compute_erfs(model, runs=1, region="cone")


def test_guard_names_rounding_level_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cone whose first gradient differs from the full image's by float32 rounding only
    (above GUARD_TOLERANCE, below ROUNDING_LEVEL) is still left for the full image, and the
    note says rounding, not a size-dependent model; a large difference says the latter."""
    model, _ = plain()
    for level, cause in ((3e-6, "float32 rounding differs"), (0.5, "depend on the input size")):
        monkeypatch.setattr(cone, "mismatch", lambda a, b, level=level: level)
        res = compute_erfs(model, units=[(19, 19)], runs=1, region="auto")
        assert any(cause in n and "over the 1e-06 allowed" in n for n in res[0].notes), res[0].notes
        assert cone.ROUNDING_LEVEL > 3e-6


def test_a_pinned_position_is_never_cropped() -> None:
    """A constant Gather of one row (silero-vad's last frame) pins the output's H: its stride is
    0.  The crop period took the lcm with 0 (a division by zero: an internal error of ``erf``);
    now a pinned axis keeps the whole input (a crop would move the row the Gather picks) while W
    is still cropped, and the map equals the full image's."""
    g = G((32, 40), batch=1, seed=9)
    x = g.relu(g.conv(g.relu(g.conv("x", 3, pads=[1] * 4)), 3, pads=[1] * 4))
    row = g.node("Gather", [x, g._init(np.array(20))], axis=2)
    model = g.model(row)
    a = analyze(model)
    assert a[row].S == (0, 1) and cone.alignment_period(a, model, row) == (0, 1)
    assert cone.crop_span((18, 22), 32, 0) == (0, 32)
    coned, full = _both(model, [(20,)])
    _close(coned[0].erf, full[0].erf)
    assert "computed on the unit's cone" in " ".join(coned[0].notes)
