"""The cone inside the network (``rfgraph.cuts``): the layers after a cut run on its crop.

Cases: the gradient through the narrowed model equals the whole graph's (signed, <= 1e-6 of its
max) for centre, corner and border units on residual stacks (strided, dilated, upsampling after
the cut), inside an input crop, and on 30 random multi-path models (asymmetric pads, misaligned
merges, U-Net and inception blocks, flipped branches), with weights redrawn alike; the narrowed
model's forward value of the unit equals the model's (onnxruntime); the cut candidates are the
tensors whose removal disconnects the input from the unit (brute force); the multiply-accumulate
count matches closed forms and the estimate of the MACs saved is the narrowed model's; Region.AUTO
weighs the set-up against the run; global units and later layers that read the input elsewhere
are not cut, and a planning failure runs whole; an NHWC input with NCHW cut tensors, opset 9,
two worker processes and finite differences.  Oracles: the whole model's gradient graph (checked
against torch autograd in test_erf.py), onnxruntime forward values, networkx connectivity.
The rewrite of every layer (``rfgraph.trim``, which ``rfgraph.erf`` prefers where it saves more)
is turned off here, so that the cuts are what runs; it has its own tests (test_erf_trim.py).
"""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from rfgraph import analyze, cuts
from rfgraph import erf as erf_mod
from rfgraph.cli import main
from rfgraph.erf import compute_erfs
from rfgraph.options import model_options
from tests.dag_gen import random_dag
from tests.graphs import G

TOL = 1e-6
CUT_NOTE = "the layers after"


@pytest.fixture(autouse=True)
def _cuts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cuts alone: no rewrite of every layer (``erf._trimmed``)."""
    monkeypatch.setattr(erf_mod, "_trimmed", lambda *args, **kwargs: None)


def _block(g: G, x: str, d: int = 1) -> str:
    y = g.conv(g.relu(g.conv(x, 3, pads=[d] * 4, d=d, cout=g.channels[x])), 3, pads=[1] * 4, cout=g.channels[x])
    return g.relu(g.add(x, y))


def stack() -> onnx.ModelProto:
    """A stem, three residual blocks at stride 2: cuts at the block outputs."""
    g = G((24, 24), seed=21)
    x = g.relu(g.conv("x", 3, 2, pads=[1] * 4, cout=3))
    for _ in range(3):
        x = _block(g, x)
    return g.model(g.conv(x, 3, pads=[1] * 4))


def strided_dilated() -> onnx.ModelProto:
    """Blocks with dilation 2, a strided conv between them, asymmetric pads at the end."""
    g = G((30, 26), seed=22)
    x = _block(g, g.relu(g.conv("x", 3, pads=[1] * 4, cout=3)), d=2)
    x = _block(g, g.relu(g.conv(x, 3, 2, pads=[1, 1, 0, 0], cout=3)))
    x = _block(g, x, d=2)
    return g.model(g.conv(x, 3, pads=[0, 1, 2, 1]))


def upsampling() -> onnx.ModelProto:
    """Down by 2, blocks, then a nearest Resize and a ConvTranspose after the cuts."""
    g = G((20, 20), seed=23)
    x = _block(g, g.relu(g.conv("x", 3, 2, pads=[1] * 4, cout=2)))
    x = _block(g, x)
    x = g.relu(g.conv(g.resize(x, 2), 3, pads=[1] * 4))
    return g.model(g.conv(g.conv_t(x, 2, 2), 3, pads=[1] * 4))


MODELS = {"stack": stack, "strided_dilated": strided_dilated, "upsampling": upsampling}


def _units(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Centre, corner and one-border units of the model's output."""
    h, w = (d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[2:])
    return [((h - 1) // 2, (w - 1) // 2), (0, 0), (h - 1, (w - 1) // 2)]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(b).max() > 0
    assert np.abs(a - b).max() <= TOL * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(autouse=True)
def _cut_short_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Region.AUTO cuts runs of any length here (its threshold is tested on its own)."""
    monkeypatch.setattr(erf_mod, "INNER_CUT_SETUP_MACS", 0)


def _both(model: onnx.ModelProto, units: list, **kw: object) -> tuple[list, list]:
    kw = {"runs": 2, "absolute": False, "seed": 5, **kw}
    return (compute_erfs(model, units=units, region="auto", **kw),  # type: ignore[arg-type]
            compute_erfs(model, units=units, region="full", **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cut_gradient_equals_whole_graph(name: str) -> None:
    """Each unit's signed ERF through the narrowed model equals the whole graph's, and the
    centre unit's note names the cut."""
    model = MODELS[name]()
    coned, full = _both(model, _units(model))
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    notes = " ".join(coned[0].notes)
    assert CUT_NOTE in notes, notes


def test_weights_redrawn_alike_through_the_cut() -> None:
    """--reinit he with two weight draws: the layers after the cut get the same weights."""
    model = stack()
    coned, full = _both(model, [_units(model)[0]], reinit="he", weight_runs=2)
    _close(coned[0].erf, full[0].erf)
    assert CUT_NOTE in " ".join(coned[0].notes)


def test_cut_inside_an_input_crop() -> None:
    """A unit whose field is smaller than the input: its input crop, then a cut inside the
    crop model; the map is the whole graph's."""
    g = G((64, 64), seed=24)
    x = g.relu(g.conv("x", 3, 2, pads=[1] * 4, cout=3))
    for _ in range(3):
        x = _block(g, x)
    model = g.model(g.conv(x, 3, pads=[1] * 4))
    coned, full = _both(model, [(16, 16), (0, 5)])
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    notes = " ".join(coned[0].notes)
    assert "of 64x64" in notes and CUT_NOTE in notes, notes


def _narrowed(model: onnx.ModelProto, unit: tuple[int, int] | None = None) -> tuple:
    opts = model_options(None)
    proto, a, _ = erf_mod._load(model, opts)
    out = proto.graph.output[0].name
    shape = erf_mod._output_shape(proto, out, a.input_name, (1,) + tuple(a.input_shape[1:]))
    target = erf_mod.resolve_target(a, proto, out, unit, None, len(shape), a.spatial_axes, shape)
    return proto, target, cuts.narrow(proto, a, out, target, target, opts)


def test_narrowed_model_computes_the_unit() -> None:
    """The narrowed model's output at the seeded unit is the model's output at the unit
    (onnxruntime forward, every channel), for centre and corner units."""
    model = stack()
    x = np.random.default_rng(0).standard_normal((1, 1, 24, 24)).astype(np.float32)
    for unit in _units(model)[:2]:
        proto, target, made = _narrowed(model, unit)
        assert made is not None
        narrow, seeded, made_cuts = made
        assert made_cuts and all(c.tensor for c in made_cuts)
        full = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
        cut = ort.InferenceSession(narrow.SerializeToString()).run([seeded.output], {"x": x})[0]
        assert cut.shape[2:] != full.shape[2:]  # the unit's tensor was computed on a crop
        np.testing.assert_allclose(cut[0, :, seeded.unit[0], seeded.unit[1]],
                                   full[0, :, target.unit[0], target.unit[1]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(30))
def test_random_multipath_models(seed: int) -> None:
    """Random DAGs (residual, inception, U-Net, strided and flipped blocks, asymmetric pads):
    the narrowed gradient equals the whole graph's wherever a cut is made."""
    model, _ = random_dag(seed, size=24, n_blocks=5, flips=seed % 3 == 0)
    units = [(11, 12), (0, 0)] if model.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 24 else [None]
    coned, full = _both(model, units, runs=1)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)


def test_random_models_are_cut() -> None:
    """The random models above are not all left whole: most centre units get a cut (the
    equality test is not vacuous)."""
    made = sum(_narrowed(random_dag(seed, size=24, n_blocks=5, flips=seed % 3 == 0)[0])[2] is not None
               for seed in range(10))
    assert made >= 5, made


def _graph(model: onnx.ModelProto) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in model.graph.node:
        g.add_edges_from((i, o) for i in n.input for o in n.output if i and o)
    return g


@pytest.mark.parametrize("seed", range(12))
def test_candidates_disconnect_the_input(seed: int) -> None:
    """A tensor is a candidate iff removing it leaves no path from the input to the output
    (brute force over every tensor on a path)."""
    model, out = random_dag(seed, size=16, n_blocks=4, flips=seed % 2 == 1)
    g = _graph(model)
    on_path = (nx.descendants(g, "x") & nx.ancestors(g, out)) - {"x", out}
    want = set()
    for t in on_path:
        h = g.copy()
        h.remove_node(t)
        if not nx.has_path(h, "x", out):
            want.add(t)
    got = cuts.candidates(model, "x", out)
    assert set(got) == want
    order = [o for n in model.graph.node for o in n.output]
    assert got == sorted(got, key=order.index)  # graph order, input side first


def test_macs_closed_forms() -> None:
    """Conv (groups, dilation), ConvTranspose, MatMul and Gemm (transA) against their
    multiply-accumulate counts written out."""
    shapes = {"x": (1, 8, 10, 12), "w": (6, 4, 3, 3), "y": (1, 6, 5, 6), "wt": (8, 3, 2, 2),
              "yt": (1, 6, 20, 24), "a": (2, 7, 5), "b": (5, 9), "m": (2, 7, 9), "ga": (5, 7),
              "gb": (5, 3), "gy": (7, 3)}
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=2, dilations=[2, 2])
    assert cuts.macs(conv, shapes) == 1 * 6 * 5 * 6 * (4 * 3 * 3)
    convt = helper.make_node("ConvTranspose", ["x", "wt"], ["yt"], group=2)
    assert cuts.macs(convt, shapes) == 1 * 8 * 10 * 12 * (3 * 2 * 2)
    assert cuts.macs(helper.make_node("MatMul", ["a", "b"], ["m"]), shapes) == 2 * 7 * 9 * 5
    assert cuts.macs(helper.make_node("Gemm", ["ga", "gb"], ["gy"], transA=1), shapes) == 7 * 3 * 5
    assert cuts.macs(helper.make_node("Relu", ["x"], ["r"]), shapes) == 0


def test_auto_weighs_the_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Region.AUTO cuts only where the MACs saved over the run repay the set-up
    (INNER_CUT_SETUP_MACS): with the set-up worth more than 2 inputs' saving, a 2-input run
    says the field covers the input; with it worth less, the run is cut, with the same map."""
    model = stack()
    proto, a, _ = erf_mod._load(model, model_options(None))
    out = proto.graph.output[0].name
    target = _narrowed(model)[1]
    saved = cuts.choose(proto, a, out, out, target.region)[1]
    assert saved > 0
    monkeypatch.setattr(erf_mod, "INNER_CUT_SETUP_MACS", 2 * saved * 2 + 1)
    short = compute_erfs(model, runs=2, region="auto", absolute=False)
    assert not any(CUT_NOTE in n for n in short[0].notes)
    assert any("covers the input" in n and "too little over 2 inputs" in n for n in short[0].notes), short[0].notes
    monkeypatch.setattr(erf_mod, "INNER_CUT_SETUP_MACS", 2 * saved * 2)
    long = compute_erfs(model, runs=2, region="auto", absolute=False)
    assert any(CUT_NOTE in n for n in long[0].notes), long[0].notes
    _close(long[0].erf, short[0].erf)


def test_saved_macs_estimate_is_the_layers_on_their_crops() -> None:
    """choose()'s saving, plus the fees it charges per cut, equals the MACs of the layers after
    the cuts at full size less their MACs in the narrowed model (the shapes ONNX infers there):
    the estimate is the work the narrowed model actually skips, when the crops are the TRF's."""
    model = stack()
    proto, a, _ = erf_mod._load(model, model_options(None))
    out = proto.graph.output[0].name
    _, target, made = _narrowed(model)
    chain, saved = cuts.choose(proto, a, out, out, target.region)
    narrow, seeded, made_cuts = made
    assert [c.tensor for c in made_cuts] == chain
    from rfgraph.onnx_import import known_shapes, load_model
    from rfgraph.vjp import ancestors

    full = sum(cuts.macs(n, known_shapes(proto)) for n in ancestors(proto, out))
    shaped = load_model(narrow)
    now = sum(cuts.macs(n, known_shapes(shaped)) for n in ancestors(shaped, seeded.output))
    fees = len(chain) * cuts.MIN_GAIN / 3 * full
    assert abs((full - now) - (saved + fees)) < 1  # saved is rounded down to a whole MAC


def test_global_unit_is_not_cut() -> None:
    """A unit after a global pooling has no cone: no cut."""
    g = G((16, 16), seed=25)
    x = _block(g, g.relu(g.conv("x", 3, pads=[1] * 4, cout=2)))
    model = g.model(g.node("GlobalAveragePool", [x]))
    assert _narrowed(model)[2] is None


def test_later_layers_reading_the_input_are_not_cut() -> None:
    """A layer after the cut that reads a tensor computed from the input on another route
    (here the input's shape, through Shape) cannot run on the cut alone: no sub-model."""
    g = G((16, 16), seed=26)
    a = g.relu(g.conv("x", 3, pads=[1] * 4, cout=2))
    b = g.relu(g.conv(a, 3, pads=[1] * 4))
    shape = g.node("Mul", [g.node("Shape", ["x"]), g._init(np.array([1, 2, 1, 1]))])  # (1, 2, 16, 16)
    model = g.model(g.node("Reshape", [b, shape]))
    proto = erf_mod._load(model, model_options(None))[0]
    assert cuts.later_layers(proto, "x", a, proto.graph.output[0].name) is None


def test_cli_region_cone_names_the_cut(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """`rfgraph erf --region cone --format json` reports the cut among its notes."""
    path = f"{tmp_path}/stack.onnx"
    onnx.save(stack(), path)
    assert main(["erf", path, "--runs", "2", "--region", "cone", "--format", "json"]) == 0
    notes = " ".join(json.loads(capsys.readouterr().out)["notes"])
    assert CUT_NOTE in notes and "exact" in notes, notes


def test_analysis_of_the_narrowed_model_keeps_the_field() -> None:
    """The narrowed model's TRF of the seeded tensor: the unit's region is the model's (the
    crop shifts only the tensor's indexing)."""
    model = stack()
    _, target, made = _narrowed(model)
    narrow, seeded, _ = made
    a = analyze(narrow, options=model_options(None, input_name="x"))
    ep = a[seeded.output]
    assert tuple(tuple(r) for r in ep.region(ep.spatial_index(seeded.unit))) == target.region


def test_workers_run_the_narrowed_model() -> None:
    """Two worker processes get the narrowed model with the sampler (pickled) and give the
    whole graph's maps for three units."""
    model = stack()
    units = _units(model)
    coned = compute_erfs(model, units=units, runs=4, region="auto", workers=2, absolute=False)
    full = compute_erfs(model, units=units, runs=4, region="full", absolute=False)
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert CUT_NOTE in " ".join(coned[0].notes)


def _nhwc_stack(opset: int = 17) -> onnx.ModelProto:
    """An NHWC input (a TensorFlow export) transposed to NCHW, then stack()'s blocks: the cut
    tensors hold their positions on axes 2, 3 where the input holds them on 1, 2."""
    g = G((24, 24), channels=1, seed=27, opset=opset)
    g.input = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 24, 24, 1])
    x = g.relu(g.conv(g.node("Transpose", ["x"], 1, perm=[0, 3, 1, 2]), 3, 2, pads=[1] * 4, cout=3))
    for _ in range(3):
        x = _block(g, x)
    return g.model(g.conv(x, 3, pads=[1] * 4))


@pytest.mark.parametrize("opset", [17, 9])
def test_cut_tensor_with_its_own_layout(opset: int) -> None:
    """NHWC input, NCHW cut tensors: each cut is read along its own spatial axes; at opset 9
    the crop's Slice is written with attributes (the version converter reads it so)."""
    model = _nhwc_stack(opset)
    coned, full = _both(model, [(5, 6), (0, 0)], layout="NHWC")
    for c, f in zip(coned, full):
        _close(c.erf, f.erf)
    assert CUT_NOTE in " ".join(coned[0].notes), coned[0].notes
    narrow = _narrowed_nhwc(model)
    slices = [n for n in narrow.graph.node if n.op_type == "Slice"]
    assert slices and all((len(n.input) == 1) == (opset < 10) for n in slices)
    assert all(list(helper.get_attribute_value(a)) == [2, 3] for n in slices for a in n.attribute if a.name == "axes")


def _narrowed_nhwc(model: onnx.ModelProto) -> onnx.ModelProto:
    opts = model_options(None, layout="NHWC")
    proto, a, _ = erf_mod._load(model, opts)
    out = proto.graph.output[0].name
    shape = erf_mod._output_shape(proto, out, a.input_name, (1,) + tuple(a.input_shape[1:]))
    target = erf_mod.resolve_target(a, proto, out, None, None, len(shape), a.spatial_axes, shape)
    made = cuts.narrow(proto, a, out, target, target, opts)
    assert made is not None
    return made[0]


def test_planning_failure_runs_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should planning the cuts fail on some model, the unit runs on the whole graph (the same
    map, the 'covers the input' note), not with an internal error; RFGRAPH_DEBUG=1 raises it."""
    model = stack()

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a tensor the planner did not expect")

    monkeypatch.setattr(cuts, "narrow", broken)
    res = compute_erfs(model, runs=1, region="auto", absolute=False)
    assert any("covers the input" in n for n in res[0].notes), res[0].notes
    monkeypatch.setenv("RFGRAPH_DEBUG", "1")
    with pytest.raises(KeyError):
        compute_erfs(model, runs=1, region="auto", absolute=False)


def test_finite_differences_through_the_cut() -> None:
    """--method fd on the narrowed model: every perturbed forward runs the layers after the
    cuts on their crops; the map equals the whole graph's finite differences."""
    model = stack()
    unit = _units(model)[:1]
    coned, full = _both(model, unit, runs=1, method="fd")
    _close(coned[0].erf, full[0].erf)
    assert CUT_NOTE in " ".join(coned[0].notes), coned[0].notes
