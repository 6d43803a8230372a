"""Gated networks: a tensor after squeeze-excitation-like gates keeps its local field.

A gate multiplies (or shifts) a feature map by a value constant over positions and pooled from all
of them; the exact field after it is global, and rfgraph reports the local field with every gate
held constant, naming the gates.  Cases, each a hand-written torch module exported with
``torch.onnx.export(dynamo=False)``: conv-SE-conv; two MobileNetV3-like inverted residuals (SE
with hardsigmoid, hardswish, a stride-2 block and a residual one); ECA (a 1-D conv over the
pooled channels); a global-context block (the gate added, not multiplied); CBAM (a channel gate,
then a spatial attention map: local, size > 1 along positions, so no gate); and a global spatial
attention map (softmax over positions, size > 1): no gate, the field stays global.

Oracles: (a) torch float64 autograd with the gates detached (``.detach()``): the hull of the
input gradient's support of every unit equals rfgraph's local region, and without the detach it
is the whole input (the exact field); (b) onnxruntime impulses on the ONNX model with every
gate's operand replaced by a constant initializer (``tests/impulses.py``).  torchvision's
efficientnet_b0 / mobilenet_v3_small when its C ops load.
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from rfgraph import analyze
from rfgraph.cli import main
from tests.impulses import check_tensor, with_constant_gates

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


class SE(nn.Module):
    """Squeeze-excitation: x * act(fc2(relu(fc1(mean over positions)))); ``pool``: the mean
    written as an average pool of the map's size (as tflite writes Keras' global pooling: an
    AveragePool whose one window covers the map, read by the field recursion, not as a global op)."""

    def __init__(self, c: int, act: nn.Module | None = None, pool: int = 0) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 2, 1), 1), nn.Conv2d(max(c // 2, 1), c, 1)
        self.act = act or nn.Sigmoid()
        self.pool = nn.AvgPool2d(pool) if pool else None
        self.detach = False

    def forward(self, x):
        pooled = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        g = self.act(self.fc2(torch.relu(self.fc1(pooled))))
        return x * (g.detach() if self.detach else g)


class ECA(nn.Module):
    """Efficient channel attention: a 3-tap 1-D conv over the pooled channels; ``expand``: the gate
    expanded to the map's shape before the product, as timm's EcaModule does (``expand_as``: an
    Expand(gate, Shape(x)) in the export, which hid the gate: the output read global)."""

    def __init__(self, expand: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.detach = False
        self.expand = expand

    def forward(self, x):
        y = x.mean((2, 3), keepdim=True).squeeze(-1).transpose(-1, -2)
        g = torch.sigmoid(self.conv(y).transpose(-1, -2).unsqueeze(-1))
        g = g.detach() if self.detach else g
        return x * (g.view(x.shape[0], -1, 1, 1).expand_as(x) if self.expand else g)


class CBAM(nn.Module):
    """Channel gate (average and max pooled, shared MLP), then a 7x7 spatial attention map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)
        self.detach = False

    def forward(self, x):
        g = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * (g.detach() if self.detach else g)
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(s))


class GlobalContext(nn.Module):
    """A global-context block's fusion by addition: x + transform(mean over positions)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1))
        self.detach = False

    def forward(self, x):
        g = self.transform(x.mean((2, 3), keepdim=True))
        return x + (g.detach() if self.detach else g)


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, hardswish, 3x3 depthwise, hardswish, SE, 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = 2 * cin
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), nn.BatchNorm2d(mid),
                                nn.Hardswish())
        self.se = SE(mid, nn.Hardsigmoid())
        self.project = nn.Conv2d(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class Normalised(nn.Module):
    """A normalisation layer (torch's own module, exported as torch exports it); ``detach``: the
    same formula with the statistics (mean, variance over each group) detached, for the oracle."""

    def __init__(self, norm: nn.Module, groups: int) -> None:
        super().__init__()
        self.norm, self.groups = norm, groups
        self.detach = False

    def forward(self, x):
        if not self.detach:
            return self.norm(x)
        grouped = x.reshape(x.shape[0], self.groups, -1)
        mean = grouped.mean(-1, keepdim=True).detach()
        var = grouped.var(-1, unbiased=False, keepdim=True).detach()
        y = ((grouped - mean) / torch.sqrt(var + self.norm.eps)).reshape(x.shape)
        weight = self.norm.weight if self.norm.weight.dim() > 1 else self.norm.weight.view(-1, 1, 1)
        bias = self.norm.bias if self.norm.bias.dim() > 1 else self.norm.bias.view(-1, 1, 1)
        return y * weight + bias


class WrittenOutNorm(nn.Module):
    """An instance normalisation written op by op: (x - mean) / sqrt(var + eps), both statistics
    pooled over positions (exported as ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div)."""

    def __init__(self) -> None:
        super().__init__()
        self.detach = False

    def forward(self, x):
        mean = x.mean((2, 3), keepdim=True)
        centred = x - (mean.detach() if self.detach else mean)
        var = (centred * centred).mean((2, 3), keepdim=True)
        return centred / torch.sqrt((var.detach() if self.detach else var) + 1e-5)


class EvoNormS0(nn.Module):
    """timm's EvoNorm-S0: x * sigmoid(v * x) / group_std(x), the group deviation expanded to
    (N, G, C/G, H, W) and reshaped to (N, C, H, W) (its shape hides that it is constant over
    positions; the variance's ``x - mean`` only feeds the statistics: no gate of its own)."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.v, self.groups = nn.Parameter(torch.ones(1, c, 1, 1)), groups
        self.detach = False

    def forward(self, x):
        b, c, h, w = x.shape
        grouped = x.reshape(b, self.groups, c // self.groups, h, w)
        std = grouped.var(dim=(2, 3, 4), unbiased=False, keepdim=True).add(1e-5).sqrt()
        std = std.expand(grouped.shape).reshape(b, c, h, w)
        return x * torch.sigmoid(self.v * x) / (std.detach() if self.detach else std)


def evonorm_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), EvoNormS0(4, 2), nn.Conv2d(4, 4, 3, 2, 1))


def conv_norm_conv(norm: Callable[[], nn.Module], groups: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Normalised(norm(), groups), nn.Conv2d(4, 4, 3, 2, 1),
                         Normalised(norm(), groups))


def group_norm_net() -> nn.Module:
    return conv_norm_conv(lambda: nn.GroupNorm(2, 4), 2)


def instance_norm_net() -> nn.Module:
    return conv_norm_conv(lambda: nn.InstanceNorm2d(4, affine=True), 4)


def layer_norm_chw_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Normalised(nn.LayerNorm([4, SIZE, SIZE]), 1),
                         nn.Conv2d(4, 4, 3, 2, 1))


def written_out_norm_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), WrittenOutNorm(), nn.Conv2d(4, 4, 3, 2, 1))


def conv_se_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), SE(4), nn.Conv2d(4, 4, 3, 2, 1))


def conv_se_pooled_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), SE(4, pool=SIZE // 2), nn.Conv2d(4, 4, 3, 2, 1))


def mobilenet_v3_like() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Hardswish(), InvertedResidual(4, 6, 2),
                         InvertedResidual(6, 6, 1))


def eca_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ECA(), nn.Conv2d(4, 4, 5, 2, 2))


def eca_expanded_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ECA(expand=True), nn.Conv2d(4, 4, 5, 2, 2))


def gc_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), GlobalContext(4), nn.Conv2d(4, 4, 3, 2, 1))


def cbam_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), CBAM(4), nn.Conv2d(4, 4, 3, padding=1))


NETS = {"conv_se_conv": (conv_se_conv, 1, {"Mul"}), "conv_se_pooled_conv": (conv_se_pooled_conv, 1, {"Mul"}),
        "mobilenet_v3_like": (mobilenet_v3_like, 2, {"Mul"}),
        "eca": (eca_net, 1, {"Mul"}), "eca_expanded": (eca_expanded_net, 1, {"Mul"}),
        "cbam": (cbam_net, 1, {"Mul"}), "global_context": (gc_net, 1, {"Add"}),
        # a normalisation's statistics over positions: torch exports GroupNorm as an
        # InstanceNormalization of the (N, groups, -1) reshape, LayerNorm over (C, H, W) fused
        "group_norm": (group_norm_net, 2, {"InstanceNormalization"}),
        "instance_norm": (instance_norm_net, 2, {"InstanceNormalization"}),
        "layer_norm_chw": (layer_norm_chw_net, 1, {"LayerNormalization"}),
        "written_out_norm": (written_out_norm_net, 2, {"Sub", "Div"}),
        "evonorm_s0": (evonorm_net, 1, {"Div"})}  # builder, gates, their ops
SIZE = 16


def build(name: str) -> nn.Module:
    """The net, with positive weights and biases (no path cancels, no unit is dead)."""
    torch.manual_seed(0)
    net = NETS[name][0]().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                m.weight.uniform_(0.5, 1.5).div_(m.weight[0].numel())
                if m.bias is not None:
                    m.bias.uniform_(0.0, 0.1)
    return net


def export(net: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.rand(1, 3, SIZE, SIZE), buf, dynamo=False, input_names=["x"])
    return onnx.load_from_string(buf.getvalue())


def set_detach(net: nn.Module, on: bool) -> None:
    for m in net.modules():
        if hasattr(m, "detach") and isinstance(m.detach, bool):
            m.detach = on


def gradient_hulls(net: nn.Module, unit: tuple[int, int], detach: bool) -> list[tuple[int, int]]:
    """Per axis, first and last input position where d(sum over channels of y[unit]) / dx != 0
    (float64 autograd, positive input)."""
    set_detach(net, detach)
    x = (torch.rand(1, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
         + 0.1).requires_grad_()
    y = net.double()(x)
    y[0, :, unit[0], unit[1]].sum().backward()
    hit = (x.grad[0] != 0).any(0).numpy()
    set_detach(net, False)
    return [(int(w[0]), int(w[-1])) for w in (np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0)))]


def clipped(region: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    return [(max(u0, 0), min(v0, SIZE - 1)) for u0, v0 in region]


@pytest.fixture(scope="module", params=sorted(NETS))
def case(request: pytest.FixtureRequest):
    """(name, torch module, ONNX export, analysis, output tensor)."""
    net = build(request.param)
    proto = export(net)
    a = analyze(proto)
    return request.param, net, proto, a, proto.graph.output[0].name


def test_gated_output_reports_its_local_field_and_names_the_gates(case) -> None:
    """Before: every tensor after the first gate was global with no number.  Now the output is
    local (r, S, P numbers) and names one gate node (a Mul, an Add for the global-context block,
    the normalisation node or its written-out Sub and Div) per gate of the net; a gate's pooling
    is no default end point (the output is)."""
    name, _, proto, a, out = case
    ep = a[out]
    assert not ep.is_global and all(r is not None for r in ep.r)
    assert len(ep.gates) == NETS[name][1] == len(a.gates) - (name == "evonorm_s0")  # and its x - mean
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert {ops[g] for g in ep.gates} == NETS[name][2]
    assert a.default_endpoints() == [out]
    back = a.fields_toward(out)["x"]  # the reverse pass holds the same gates constant
    assert back == ep.fields


def test_local_region_is_the_gradient_support_with_the_gates_detached(case) -> None:
    """Oracle (a): every unit of the output, torch float64 autograd with ``.detach()`` on each
    gate: the support's hull is rfgraph's local region; without the detach it is the whole input."""
    _, net, _, a, out = case
    ep = a[out]
    for unit in itertools.product(*(range(n) for n in ep.units)):
        assert gradient_hulls(net, unit, detach=True) == clipped(ep.region(unit)), unit
    centre = tuple(n // 2 for n in ep.units)
    assert gradient_hulls(net, centre, detach=False) == [(0, SIZE - 1)] * 2


def test_local_region_is_the_impulse_response_with_constant_gates(case) -> None:
    """Oracle (b): onnxruntime impulses on the export with every gate's operand a constant: every
    unit of every gated tensor moves exactly over its local region."""
    _, _, proto, a, _ = case
    fixed = with_constant_gates(proto, a)
    gated = [n for n, ep in a.endpoints.items() if ep.gates]
    assert gated
    for name in gated:
        assert check_tensor(a, fixed, name) > 0


def global_attention_net() -> nn.Module:
    """x * softmax over positions of a 1x1 conv: a map of size > 1 along positions, global."""

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 1, 1)

        def forward(self, x):
            w = torch.softmax(self.conv(x).flatten(2), -1).view(1, 1, SIZE, SIZE)
            return x * w

    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Attend(), nn.Conv2d(4, 4, 3, padding=1))


def test_spatial_attention_map_is_no_gate() -> None:
    """A global attention map with a value per position (size > 1 along positions) is not a
    gate: the output stays global (its gradient support is the whole input, torch float64) and
    names no gate.  CBAM's local spatial map is no gate either (its 7x7 conv is in the local
    field: checked by the oracles above, which cover 'cbam')."""
    net = global_attention_net().eval()
    a = analyze(export(net))
    ep = a[a.outputs[0]]
    assert ep.is_global and not ep.gates and not a.gates
    assert gradient_hulls(net, (0, 0), detach=True) == [(0, SIZE - 1)] * 2
    cbam = analyze(export(build("cbam")))
    assert len(cbam.gates) == 1  # the channel gate only, not the spatial map


def test_every_format_and_command_works_per_unit_after_gates(tmp_path: Path, capsys) -> None:
    """analyze (table, csv, markdown, json), boxes, erf --unit, show, report and diagnose on the
    MobileNetV3-like export: exit 0, the local numbers, the gates named; the ERF says it is the
    exact gradient (global support)."""
    net = build("mobilenet_v3_like")
    path = tmp_path / "mbv3.onnx"
    onnx.save(export(net), path)
    a = analyze(path)
    out = a.outputs[0]
    ep = a[out]
    for fmt in ("table", "csv", "markdown"):
        assert main(["analyze", str(path), "--format", fmt]) == 0
        text = capsys.readouterr().out
        assert "global via 2 gates" in text and ep.gates[0] in text
    assert main(["analyze", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    row = next(r for r in doc["endpoints"] if r["tensor"] == out)
    assert row["gates"] == list(ep.gates) and row["r"] == list(ep.r) and set(doc["gates"]) == set(ep.gates)
    unit = (1, 2)
    assert main(["boxes", str(path), "--output", out, "--index", "1,2", "--format", "json"]) == 0
    box = json.loads(capsys.readouterr().out)["units"][0]["region"]
    assert [tuple(b) for b in box] == list(ep.region(unit))
    assert clipped(ep.region(unit)) == gradient_hulls(net, unit, detach=True)
    assert main(["erf", str(path), "--output", out, "--unit", "1,2", "--runs", "1"]) == 0
    assert "exact gradient" in capsys.readouterr().err
    assert main(["show", str(path), "--output", out, "--index", "1,2", "--runs", "1",
                 "-o", str(tmp_path / "s.png")]) == 0
    assert main(["report", str(path), "--erf-runs", "1", "-o", str(tmp_path / "r.html")]) == 0
    assert "1 ERF heatmap(s)" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    end_points = page.split('id="endpoint-table"')[1].split("</table>")[0]
    assert "global via 2 gates" in end_points  # the summary's rows say so too (had no note column)
    assert main(["diagnose", str(path), "--no-size-range", "--format", "json"]) == 0
    cov = json.loads(capsys.readouterr().out)["coverage"]
    assert cov  # the output's local coverage, not 'every unit sees the whole input'
    assert next(c for c in cov if c["endpoint"] == out)["gates"] == list(ep.gates)  # said, not silent
    assert main(["diagnose", str(path), "--no-size-range"]) == 0
    assert f"{out}: local field, gates held constant; global via 2 gates" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenet_v3_small"])
def test_torchvision_random_init_exports(arch: str) -> None:
    """torchvision's own gated nets (random init): the last feature map is local with one gate
    per SE block, and its centre unit's region is the gradient support with the gates detached."""
    try:
        models = __import__("torchvision.models", fromlist=["models"])
    except Exception as exc:  # noqa: BLE001 - its C ops fail to load against some torch builds
        pytest.skip(f"torchvision unusable here: {str(exc).splitlines()[0]}")
    net = getattr(models, arch)().features.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.rand(1, 3, 64, 64), buf, dynamo=False, input_names=["x"])
    a = analyze(onnx.load_from_string(buf.getvalue()))
    ep = a[a.outputs[0]]
    assert not ep.is_global and ep.gates


def test_instance_norm_written_out_gates_its_statistics() -> None:
    """InstanceNorm as exported op by op: (x - mean) * 1/sqrt(var), both statistics pooled over
    positions, each a gate (the Sub's mean, the Mul's 1/sqrt(var)): the local field is the conv's
    3x3 (was global: the Sub mixed positions, so nothing was gated).  Oracles: onnxruntime
    impulses with the statistics constant (the 3x3 regions), and without (every unit moves with
    every input position: the exact field is global)."""
    from tests.graphs import G
    from tests.impulses import dependencies

    g = G((6, 6), channels=1, batch=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    centred = g.node("Sub", [c, g.node("ReduceMean", [c], axes=[2, 3])])
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred])], axes=[2, 3])
    y = g.node("Mul", [centred, g.node("Reciprocal", [g.node("Sqrt", [var])])])
    model = g.model(y)
    a = analyze(model)
    ep = a[y]
    assert not ep.is_global and ep.r == (3, 3) and len(ep.gates) == 2 == len(a.gates)
    assert check_tensor(a, with_constant_gates(model, a), y) == 36
    deps, _ = dependencies(model, a.input_name, y, list(a.spatial_axes))
    assert deps.all()


def test_layer_norm_with_a_scale_per_position_gates_its_statistics() -> None:
    """Keras' LayerNormalization over (H, W, C) as tf2onnx writes it: mul = 1/std * gamma, gamma
    one value per position (a constant), then x * mul + (-mean) * mul.  The operand mul varies
    over positions only through the constant gamma: held constant with the statistics it is a
    gate, and the local field is the conv's 3x3 (was global: found by the tf2onnx sweep).
    Oracles: onnxruntime impulses with the gate operands constant (the 3x3 regions), and without
    (every unit moves with every input position)."""
    from tests.graphs import G
    from tests.impulses import dependencies

    g = G((6, 6), channels=1, batch=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    mean = g.node("ReduceMean", [c], axes=[1, 2, 3])
    centred = g.node("Sub", [c, mean])
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred])], axes=[1, 2, 3])
    inv_std = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [var, g._init(np.full((1, 1, 1, 1), 1e-3))])])])
    gamma = g._init(np.random.default_rng(0).uniform(0.5, 1.5, (1, 2, 6, 6)))
    mul = g.node("Mul", [inv_std, gamma])
    y = g.node("Add", [g.node("Mul", [c, mul]), g.node("Mul", [g.node("Neg", [mean]), mul])])
    model = g.model(y)
    a = analyze(model)
    ep = a[y]
    assert not ep.is_global and ep.r == (3, 3) and ep.gates
    assert check_tensor(a, with_constant_gates(model, a), y) == 36
    deps, _ = dependencies(model, a.input_name, y, list(a.spatial_axes))
    assert deps.all()


def test_merge_on_an_axis_of_one_unit_compares_that_units_centres() -> None:
    """Along an axis where a merge's output has one unit, strides cannot misalign anything (no
    second unit): a 5x5 conv (S=1) plus a 5x5/5 pool (S=5) on a 5x5 input both see [0, 4] and are
    aligned; a 3x3 conv on the top-left 3x3 crop sees [0, 2] (another centre): misaligned.  Local
    fields after gates exposed this (PP-OCRv4 rec's neck merges along its one row were reported
    misaligned).  Oracle: the unit's measured impulse hulls per branch (onnxruntime)."""
    from tests.graphs import G
    from tests.impulses import dependencies, measured_hulls

    g = G((5, 5), channels=1, batch=1)
    conv = g.conv("x", 5, 1, cout=1)
    pool = g.pool("AveragePool", "x", 5, 5)
    crop = g.node("Slice", ["x", g._init(np.array([0, 0])), g._init(np.array([3, 3])),
                            g._init(np.array([2, 3]))])
    small = g.conv(crop, 3, 1, cout=1)
    same, other = g.add(conv, pool), g.add(conv, small)
    model = g.model([same, other])
    a = analyze(model)
    hulls = {t: measured_hulls(dependencies(model, "x", t, [2, 3])[0], 2, (0, 0, 0, 0))
             for t in (conv, pool, small)}
    assert hulls[conv] == hulls[pool] != hulls[small]
    verdicts = {m.output: m.aligned for m in a.merges}
    assert verdicts == {same: True, other: False}
