"""Input sizes a model can and cannot run (issue 12, classes 1, 3 and 4), on small torch exports.

Covers: a size at which a map shrinks to nothing (refused, naming the node and the smallest valid
size per axis); Reshape and Add constants fixed at export time that another size no longer fits
(refused, naming the node); shapes built by Shape -> Gather -> ... -> Reshape chains that shape
inference cannot follow (completed by one onnxruntime run).  The oracle is onnxruntime itself,
run on the exported file with its input made dynamic: every refused size fails there too, every
accepted size gives the shapes onnxruntime computes.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rfgraph
from rfgraph.analysis import validate_input_size
from rfgraph.cli import main
from rfgraph.errors import InputSizeError

torch = pytest.importorskip("torch")
nn = torch.nn


class Vanishing(nn.Module):
    """Four unpadded stride-2 convs, kernel 3x5: the smallest input is 31 rows by 61 columns."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, (3, 5), 2) for i in range(4)])

    def forward(self, x):
        return self.convs(x)


class RollByZero(nn.Module):
    """Video Swin's shift where the time axis is no longer than its window: torch.roll by 0 along
    H (exported as the whole map and an empty Slice, concatenated) and by 2 along W."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), shifts=(0, 2), dims=(2, 3)))


class FixedView(nn.Module):
    """A Reshape to a constant spatial size (x.view(1, 8, 16, 16)), right at 64x64 only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)

    def forward(self, x):
        return self.conv(x).view(1, 8, 16, 16) + 1


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle, traced at 64x64: the Reshape constants hold the spatial size."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        return self.b(y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w))


class PositionAdd(nn.Module):
    """A learned position map of the 32x32 feature size added to the features (fixed at export)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 32, 32))

    def forward(self, x):
        return self.conv(x) + self.pos


class TokenGrid(nn.Module):
    """Six blocks that flatten the map to tokens and rebuild the grid from sqrt(#tokens): Shape ->
    Slice -> Cast -> Sqrt -> Cast -> Concat -> Reshape chains, one per block."""

    def __init__(self, blocks: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.convs = nn.ModuleList([nn.Conv2d(8, 8, 3, 1, 1) for _ in range(blocks)])

    def forward(self, x):
        x = self.stem(x)
        for conv in self.convs:
            tokens = x.flatten(2)
            shape = torch._shape_as_tensor(tokens)
            side = torch.sqrt(shape[2].float()).long()
            x = conv(tokens.reshape(shape[0], shape[1], side, side))
        return x


def export(module: nn.Module, path: Path, dynamic: bool, size: int = 64) -> Path:
    """TorchScript export at size x size, the spatial axes dynamic or fixed."""
    torch.manual_seed(0)
    module.eval()
    axes = {"dynamic_axes": {"x": {2: "h", 3: "w"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17, **axes)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sizes")
    return {
        "vanishing": export(Vanishing(), d / "vanishing.onnx", dynamic=True),
        "view": export(FixedView(), d / "view.onnx", dynamic=False),
        "view_dynamic": export(FixedView(), d / "view_dynamic.onnx", dynamic=True),
        "shuffle": export(ChannelShuffle(), d / "shuffle.onnx", dynamic=False),
        "position": export(PositionAdd(), d / "position.onnx", dynamic=True),
        "tokens": export(TokenGrid(), d / "tokens.onnx", dynamic=True),
        "roll": export(RollByZero(), d / "roll.onnx", dynamic=False, size=8),
    }


def ort_shapes(path: Path, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]] | str:
    """The oracle: onnxruntime runs the file (input made dynamic, stored shapes dropped) on zeros;
    the shape of every node output, or the error text when it cannot run."""
    m = onnx.load(str(path))
    for d in m.graph.input[0].type.tensor_type.shape.dim:
        d.Clear()
        d.dim_param = "free"
    del m.graph.value_info[:]
    del m.graph.output[:]
    names = [t for n in m.graph.node if n.op_type != "Constant" for t in n.output if t]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names)
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        values = sess.run(names, {"x": np.zeros(shape, np.float32)})
    except Exception as exc:  # noqa: BLE001  every failure is an answer of the oracle
        return str(exc)
    return {t: tuple(v.shape) for t, v in zip(names, values)}


def runs(path: Path, shape: tuple[int, ...]) -> bool:
    """onnxruntime runs the model at this size and no tensor is empty."""
    got = ort_shapes(path, shape)
    return isinstance(got, dict) and all(min(s, default=1) > 0 for s in got.values())


def refused(path: Path, shape: tuple[int, ...]) -> InputSizeError:
    with pytest.raises(InputSizeError) as info:
        rfgraph.analyze(str(path), {"x": shape})
    return info.value


# ---------------------------------------------------------------- class 1: maps with no units


@pytest.mark.parametrize("side", [4, 20, 30, 60])
def test_size_that_leaves_a_map_without_units_is_refused(models, side):
    """Before: 1x4x0x0 (or a 1x1 map onnxruntime refuses to compute) analysed, "covers input yes"."""
    path = models["vanishing"]
    assert not runs(path, (1, 3, side, side))  # the refusal is true
    exc = refused(path, (1, 3, side, side))
    names = {n.name for n in onnx.load(str(path)).graph.node}
    assert exc.vanished and exc.node in names and exc.op == "Conv"


def test_an_empty_piece_of_a_roll_by_zero_is_no_vanished_map(models):
    """The empty Slice of a roll by 0 (swin3d_t at 8 frames: its time axis) was refused as "input
    size too small" although onnxruntime runs the model; the Concat adds nothing from it, so along
    H the field is the two 3x3 convs' (r 5, each unit's rows measured by impulses), while the roll
    by 2 along W stays the whole input, an upper bound."""
    from tests.impulses import dependencies, measured_hulls
    path = models["roll"]
    proto = onnx.load(str(path))
    assert isinstance(ort_shapes(path, (1, 3, 8, 8)), dict)  # onnxruntime runs it: no refusal is due
    a = rfgraph.analyze(proto)
    ep = a["y"]
    assert ep.r[0] == 5 and ep.fields[1].is_global
    deps, _ = dependencies(proto, "x", "y", [2, 3])
    for h in range(8):
        rows = measured_hulls(deps, 2, (slice(None), slice(None), h))[0]
        lo, hi = ep.regions(0)[h]
        assert rows == (max(int(lo), 0), min(int(hi), 7))


def test_smallest_valid_size_is_the_true_minimum_per_axis(models):
    """The size the refusal names runs in onnxruntime; one less along either axis does not."""
    path = models["vanishing"]
    found = re.search(r"smallest input size that leaves every map a unit is x:1x3x(\d+)x(\d+)",
                      str(refused(path, (1, 3, 8, 8))))
    assert found, "no smallest size named"
    h, w = int(found[1]), int(found[2])
    assert runs(path, (1, 3, h, w))
    assert not runs(path, (1, 3, h - 1, w)) and not runs(path, (1, 3, h, w - 1))
    a = rfgraph.analyze(str(path), {"x": (1, 3, h, w)})
    assert a["y"].shape == ort_shapes(path, (1, 3, h, w))["y"]  # type: ignore[index]


def test_cli_refuses_in_one_line_with_exit_2(models, capsys):
    rc = main(["analyze", str(models["vanishing"]), "--input-shape", "x:1x3x20x20"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "too small" in err and "/convs/convs.2/Conv" in err  # 20 -> 8 -> 2 columns < 5


# ---------------------------------------------------------------- class 3: sizes fixed at export


@pytest.mark.parametrize("model,node", [("view", "/Reshape"), ("view_dynamic", "/Reshape"),
                                        ("shuffle", "/Reshape"), ("position", "/Add")])
def test_size_the_export_fixed_otherwise_is_refused(models, model, node):
    """Before: analysed anyway (None shapes, or a stop blaming a 'split spatial axis')."""
    path = models[model]
    oracle = ort_shapes(path, (1, 3, 32, 32))
    assert isinstance(oracle, str) and node in oracle  # onnxruntime fails there too
    exc = refused(path, (1, 3, 32, 32))
    assert exc.node == node and not exc.vanished
    if model in ("view", "shuffle"):  # the file fixes its size: the message says which
        assert "exported at x:1x3x64x64" in str(exc)


@pytest.mark.parametrize("model", ["view", "view_dynamic", "shuffle", "position"])
def test_export_size_is_accepted_with_onnxruntime_shapes(models, model):
    path = models[model]
    a = rfgraph.analyze(str(path), {"x": (1, 3, 64, 64)})
    oracle = ort_shapes(path, (1, 3, 64, 64))
    assert isinstance(oracle, dict)
    for name, ep in a.endpoints.items():
        if name in oracle:
            assert ep.shape == oracle[name], name


# ---------------------------------------------------------------- class 4: shapes from chains


@pytest.mark.parametrize("side", [32, 48])
def test_shape_chains_are_followed_to_the_output(models, side):
    """Before: stopped at the fifth Reshape, 'output shape unknown ... set --input-shape'."""
    path = models["tokens"]
    a = rfgraph.analyze(str(path), {"x": (1, 3, side, side)})
    assert not a.stops and "y" in a.endpoints
    oracle = ort_shapes(path, (1, 3, side, side))
    assert isinstance(oracle, dict)
    checked = [n for n in a.endpoints if n in oracle]
    assert len(checked) > 12
    for name in checked:
        assert a[name].shape == oracle[name], name


def test_non_square_token_grid_is_refused(models):
    """sqrt(#tokens) of a 16x24 map is no grid: the Reshape cannot hold the tokens."""
    path = models["tokens"]
    assert not runs(path, (1, 3, 32, 48))
    assert refused(path, (1, 3, 32, 48)).op == "Reshape"


# ---------------------------------------------------------------- the size scan's question


def test_validate_input_size_answers_with_the_reason(models):
    assert validate_input_size(str(models["view_dynamic"]), {"x": (1, 3, 64, 64)}) is None
    assert "/Reshape" in (validate_input_size(str(models["view_dynamic"]), {"x": (1, 3, 32, 32)}) or "")
    why = validate_input_size(str(models["vanishing"]), {"x": (1, 3, 16, 16)}) or ""
    assert "too small" in why and "x:1x3x31x61" in why


class ChannelsLast(nn.Module):
    """An NHWC input permuted to NCHW, then two unpadded 5x5 stride-2 convs: smallest input 13x13."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 4, 5, 2), nn.Conv2d(4, 4, 5, 2))

    def forward(self, x):
        return self.convs(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_channels_last_input_names_its_spatial_axes(tmp_path):
    """The smallest size is searched along the axes the leading Transpose makes spatial (H, W of
    NHWC), not along the channels."""
    torch.manual_seed(0)
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ChannelsLast().eval(), (torch.randn(1, 32, 32, 3),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {1: "h", 2: "w"}})
    assert not runs(path, (1, 8, 8, 3))
    found = re.search(r"is x:1x(\d+)x(\d+)x3", str(refused(path, (1, 8, 8, 3))))
    assert found, "no smallest size named"
    h, w = int(found[1]), int(found[2])
    assert runs(path, (1, h, w, 3)) and not runs(path, (1, h - 1, w, 3)) and not runs(path, (1, h, w - 1, 3))


def test_probe_respects_its_input_budget(models, monkeypatch):
    """Past PROBE_MAX_ELEMENTS no onnxruntime run completes the shapes: the analysis stops at the
    first Reshape it cannot follow, as it did before the probe (and says why).  Folding constant
    shape arithmetic is switched off, so that the probe is the only way left to those shapes."""
    import rfgraph.onnx_import as onnx_import

    monkeypatch.setattr(onnx_import, "PROBE_MAX_ELEMENTS", 100)
    monkeypatch.setattr(onnx_import, "MAX_FOLD_ROUNDS", 0)
    a = rfgraph.analyze(str(models["tokens"]), {"x": (1, 3, 32, 32)})
    assert a.stops and a.stops[0].op == "Reshape" and "y" not in a.endpoints


@pytest.mark.parametrize("merge", ["Add", "Concat"])
def test_branches_of_unequal_sizes_are_refused(merge: str) -> None:
    """A stride-2 branch merged with a stride-1 one has no size that fits (a NASNet exported at a
    dynamic size adds a 27x27 map to a 55x55 one).  Shape inference leaves the merge's output
    unknown and the fields after it were reported (global, 'laid out differently'); now the size
    is refused at the merge, as onnxruntime refuses it."""
    from tests.graphs import G

    g = G((16, 16))
    a, b = g.conv("x", 3, 2, pads=[1] * 4), g.conv("x", 1, 1, pads=[0] * 4)
    y = g.add(a, b) if merge == "Add" else g.node("Concat", [a, b], axis=1)
    graph = onnx.helper.make_graph(g.nodes, "unequal", [g.input], [onnx.helper.make_empty_tensor_value_info(y)],
                                   g.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", g.opset)])
    with pytest.raises(Exception, match=r"Attempting to broadcast|Incompatible|dimension|Concat|[Ss]hape"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.zeros((1, 1, 16, 16), np.float32)})
    with pytest.raises(InputSizeError, match=r"cannot (broadcast|concatenate) its inputs 1x\dx8x8 and 1x\dx16x16"):
        rfgraph.analyze(model)


def test_broadcast_of_a_unit_axis_is_no_clash() -> None:
    """A per-channel scale (1x1 spatially) broadcasts against the map: analysed as before."""
    from tests.graphs import G

    g = G((16, 16))
    a = g.conv("x", 3, 1, pads=[1] * 4)
    pooled = g.node("GlobalAveragePool", [a])
    y = g.node("Mul", [a, pooled])
    assert rfgraph.analyze(g.model(y))[y].r == (3, 3)
