"""The table of today's networks (``model_zoo.modern``, ``rfgraph table --models modern``) against
torchvision's own definitions of the same nets.

Oracle: torch float64 autograd on torchvision's model at random init, made positive (every weight
``uniform(0.5, 1.5) / fan_in``, biases and norm shifts ``uniform(0, 0.1)``, layer scales O(1),
BatchNorm in eval with its initial statistics) so that no path cancels and no ReLU is dead, and
every max pool made an average pool of the same window (a max's gradient reaches only its argmax);
every
squeeze-excitation gate is detached (a forward hook returns its ``scale_activation`` output
detached: the local field is the field with the gates held constant).  The support of the input
gradient of a unit (channels weighted by random positive numbers, so a LayerNorm's zero-sum output
cannot cancel) is the unit's region.  On a strip input (long along the measured axis, 32 along the
other) two neighbouring units whose supports lie strictly inside the input give r (support length),
S (shift between them) and P (``i * S - first``), compared with the zoo build's numbers at 224.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import pytest

import model_zoo
import rfgraph

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

CROSS = 32  # the strip's size across the measured axis (one unit at stride 32)


@pytest.fixture(scope="module")
def models():
    """torchvision.models (its compiled ops need not load: benchmarks/census/tv_shim.py)."""
    from benchmarks.census.tv_shim import import_torchvision

    try:
        return import_torchvision().models
    except Exception as exc:  # noqa: BLE001 - a torchvision that cannot import at all
        pytest.skip(f"torchvision unusable here: {str(exc).splitlines()[0]}")


def make_positive(net: nn.Module) -> nn.Module:
    """Positive weights (mean 1 per output), small positive biases; eval mode (BatchNorm, dropout)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                p.uniform_(0.5, 1.5).div_(p[0].numel())
            elif name.endswith("bias"):
                p.uniform_(0.0, 0.1)
            else:
                p.uniform_(0.5, 1.5)
    return avg_for_max(net).eval().double()


def avg_for_max(net: nn.Module) -> nn.Module:
    """Every MaxPool2d made an AvgPool2d of the same window: a max's gradient reaches its argmax
    only, while its field (what r counts) is the whole window."""
    for parent in list(net.modules()):
        for key, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, key, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                  ceil_mode=child.ceil_mode))
    return net


def detach_gates(net: nn.Module, models) -> int:
    """Hold every squeeze-excitation gate constant (its output detached); the number of gates."""
    se = __import__("torchvision.ops", fromlist=["SqueezeExcitation"]).SqueezeExcitation
    gates = [m for m in net.modules() if isinstance(m, se)]
    for m in gates:
        m.scale_activation.register_forward_hook(lambda _m, _i, out: out.detach())
    return len(gates)


def gradient_hulls(net: nn.Module, taps: dict[str, nn.Module], shape: tuple[int, int],
                   units: dict[str, list[int]], axis: int, channels_last: bool = False
                   ) -> dict[str, list[tuple[int, int]]]:
    """Per end point, per unit index along ``axis`` (0 on the other axis): first and last input
    position along ``axis`` where the float64 input gradient of the unit is nonzero (the end
    points' tensors NCHW, or NHWC when ``channels_last``)."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: outs.__setitem__(k, o))
             for k, m in taps.items()]
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((1, 3) + shape, dtype=torch.float64, generator=gen) + 0.1).requires_grad_()
    net(x)
    for h in hooks:
        h.remove()
    hulls: dict[str, list[tuple[int, int]]] = {}
    for ep, us in units.items():
        y = outs[ep].movedim(-1, 1) if channels_last else outs[ep]
        v = torch.rand(y.shape[1], dtype=torch.float64, generator=gen) + 0.5
        hulls[ep] = []
        for u in us:
            index: list[int | slice] = [0, slice(None), 0, 0]
            index[2 + axis] = u
            (g,) = torch.autograd.grad((y[tuple(index)] * v).sum(), x, retain_graph=True)
            hit = torch.nonzero((g[0] != 0).any(0).any(1 - axis)).flatten().tolist()
            hulls[ep].append((hit[0], hit[-1]))
    return hulls


def strip_length(analysis: rfgraph.Analysis, periods: dict[str, int]) -> int:
    """An input length (multiple of 32) in which, for every end point, the ``period + 1`` units
    from ``inside_unit`` on have their whole region strictly inside (checked by the test)."""
    need = 0
    for ep, period in periods.items():
        for r, S, P in zip(analysis[ep].r, analysis[ep].S, analysis[ep].P):
            need = max(need, (inside_unit(S, P, period) + 2 * period) * S - P + r)
    return 32 * math.ceil(need / 32)


def inside_unit(S: int, P: int, period: int = 1) -> int:
    """The first unit, a multiple of ``period``, whose region starts after input position 0
    (a region never starts before ``u * S - P``)."""
    return period * -(-(P + 1) // (S * period))


# zoo name -> (torchvision builder, the module computing the features, {end point: module})
Taps = Callable[[nn.Module], tuple[nn.Module, dict[str, nn.Module]]]


def _resnet(net: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                          net.layer3, net.layer4)
    return trunk, {f"layer{i}": getattr(net, f"layer{i}") for i in range(1, 5)}


def _convnext(net: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    return net.features, {f"stage{i + 1}": net.features[2 * i + 1] for i in range(4)}


def _efficientnet(net: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    f = net.features
    taps = {"stem": f[0], "features": f[len(f) - 1]}
    taps.update({f"stage{i}": f[i] for i in range(1, len(f) - 1)})
    return f, taps


def _mobilenet_v3(net: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    f = net.features
    taps = {f"block{i}": f[i] for i in (1, 3, 6, 12, 15)}
    taps["features"] = f[16]
    return f, taps


def _regnet(net: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    t = net.trunk_output
    return nn.Sequential(net.stem, t), {f"block{i}": getattr(t, f"block{i}") for i in range(1, 5)}


THIN = 8  # channel divisor of the oracle's ConvNeXt and EfficientNets (their fields do not
# depend on channels; the test checks that every layer's geometry is the real net's)


def geometry(net: nn.Module) -> list[tuple]:
    """Every conv and pool in module order: type, kernel, stride, padding, dilation, ceil mode
    (what the field depends on; channels and groups left out)."""
    keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    return [(type(m).__name__,) + tuple(getattr(m, k, None) for k in keys) for m in net.modules()
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]


def thin_twin(tv_name: str, real: nn.Module) -> nn.Module:
    """torchvision's ConvNeXt-T / EfficientNet built by its own classes from its own configuration
    with channels divided by THIN (other nets: ``real``), to keep the float64 oracle fast."""
    if tv_name == "convnext_tiny":
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        stages = [m for m in real.features if isinstance(m, nn.Sequential) and
                  type(m[0]).__name__ == "CNBlock"]
        widths = [st[0].block[0].in_channels // THIN for st in stages]
        return ConvNeXt([CNBlockConfig(w, nxt, len(st)) for w, nxt, st in
                         zip(widths, widths[1:] + [None], stages)])
    if tv_name.startswith("efficientnet"):
        import copy

        from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

        kw = {"width_mult": 1.0, "depth_mult": 1.0} if tv_name == "efficientnet_b0" else {}
        setting, last = _efficientnet_conf(tv_name, **kw)
        setting = copy.deepcopy(setting)
        eight = lambda c: 8 * max(1, c // (8 * THIN))  # multiples of 8 as torchvision rounds to
        for cnf in setting:
            cnf.input_channels, cnf.out_channels = eight(cnf.input_channels), eight(cnf.out_channels)
        return EfficientNet(setting, 0.2, last_channel=last // THIN if last else None)
    return real


CASES: dict[str, tuple[str, Taps, int]] = {  # zoo name: torchvision name, taps, SE gates
    "torch_resnet50": ("resnet50", _resnet, 0),
    "convnext_tiny": ("convnext_tiny", _convnext, 0),
    "efficientnet_b0": ("efficientnet_b0", _efficientnet, 16),
    "efficientnet_v2_s": ("efficientnet_v2_s", _efficientnet, 30),
    "mobilenet_v3_large": ("mobilenet_v3_large", _mobilenet_v3, 8),
    "regnet_y_400mf": ("regnet_y_400mf", _regnet, 16),
}
SLOW = {"convnext_tiny", "torch_resnet50"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_modern_net_matches_torchvision_gradient_support(models, name: str) -> None:
    """Every end point of the zoo net at 224: r, S, P per axis equal the gradient support of two
    neighbouring units of torchvision's net (gates detached), on a strip along each axis; the
    strip's zoo build gives those units the measured regions; the gated end points name one gate
    per SE block before them (the last: every SE block of the net)."""
    tv_name, taps_of, n_gates = CASES[name]
    table = rfgraph.analyze(model_zoo.build(name))
    eps = model_zoo.endpoints(model_zoo.build(name))
    real = getattr(models, tv_name)()
    assert set(eps) == set(taps_of(real)[1])
    net = thin_twin(tv_name, real)
    assert geometry(net) == geometry(real)
    net = make_positive(net)
    assert detach_gates(net, models) == n_gates == len(table[eps[-1]].gates)
    trunk, taps = taps_of(net)
    check_against_gradient_support(name, table, trunk, taps, dict.fromkeys(eps, 1))


def check_against_gradient_support(name: str, table: rfgraph.Analysis, trunk: nn.Module,
                                   taps: dict[str, nn.Module], periods: dict[str, int]) -> None:
    """Along each axis, on a strip: ``period + 1`` consecutive units from a multiple of the end
    point's ``period`` (its regions repeat shifted by ``period * S``: 1 for one stride, 4 after
    two x2 upsamplings) have the zoo strip build's regions, none clipped; then r is the largest
    extent over a period, ``period * S`` the shift over a period and P = ``i * S - first`` (``i``
    a multiple of the period), as the 224 build's table says."""
    length = strip_length(table, periods)
    for axis in (0, 1):
        shape = (length, CROSS) if axis == 0 else (CROSS, length)
        strip = rfgraph.analyze(model_zoo.build(f"{name}:size={shape[0]}/{shape[1]}"))
        units = {ep: [inside_unit(table[ep].S[axis], table[ep].P[axis], p) + d
                      for d in range(p + 1)] for ep, p in periods.items()}
        measured = gradient_hulls(trunk, taps, shape, units, axis)
        for ep, p in periods.items():
            got = measured[ep]
            assert all(0 < lo and hi < length - 1 for lo, hi in got), (ep, axis, got)  # exact r
            assert [strip[ep].region((u, 0) if axis == 0 else (0, u))[axis]
                    for u in units[ep]] == got, (ep, axis)
            i, S = units[ep][0], Fraction(got[p][0] - got[0][0], p)
            r = max(hi - lo + 1 for lo, hi in got[:p])
            ours = table[ep].r[axis], table[ep].S[axis], table[ep].P[axis]
            assert ours == (r, S, i * S - got[0][0]), (ep, axis)


def test_vit_b_16_patch_embedding_local_then_global(models) -> None:
    """ViT-B/16: the tokens' field is the 16x16/16 patch (r 16, S 16, P 0: the supports of
    torchvision's conv_proj units 1 and 2 along each axis) and the first encoder block's (and the
    output's) field is global: a token's input gradient covers the whole image.  (64x64 input.)"""
    table = rfgraph.analyze(model_zoo.build("vit_b_16"))
    net = make_positive(models.vit_b_16(image_size=64))
    measured = {}
    for axis in (0, 1):
        measured[axis] = gradient_hulls(net, {"tokens": net.conv_proj}, (64, 64),
                                        {"tokens": [1, 2]}, axis)["tokens"]
    for axis, ((lo, hi), (lo2, _)) in measured.items():
        ep = table["tokens"]
        assert (ep.r[axis], ep.S[axis], ep.P[axis]) == (hi - lo + 1, lo2 - lo, lo2 - lo - lo)
    outs: dict[str, torch.Tensor] = {}
    net.encoder.layers[0].register_forward_hook(lambda _m, _i, o: outs.__setitem__("block1", o))
    x = (torch.rand(1, 3, 64, 64, dtype=torch.float64) + 0.1).requires_grad_()
    net(x)
    (g,) = torch.autograd.grad(outs["block1"][0, 5].sum(), x)  # one patch token
    assert bool((g[0] != 0).any(0).all())
    assert table["block1"].is_global and table[model_zoo.endpoints(model_zoo.build("vit_b_16"))[-1]].is_global


def test_table_models_modern(capsys) -> None:
    """``rfgraph table --models modern --endpoints``: one row per end point of every modern net,
    with the oracle-checked r, S, P (tests above) and, for a gated end point, the note naming its
    number of gates (torchvision's SE blocks before it, at the last end point all of them)."""
    from rfgraph.cli import main

    assert main(["table", "--models", "modern", "--endpoints", "--format", "json",
                 "--no-reference"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["model"] for r in rows if r["end_point"] == "layer4"] == ["torch_resnet50"]
    assert {r["model"] for r in rows} == set(model_zoo.MODERN_MODELS)
    for name in model_zoo.MODERN_MODELS:
        model = model_zoo.build(name)
        a = rfgraph.analyze(model)
        mine = [r for r in rows if r["model"] == name]
        assert [r["end_point"] for r in mine] == model_zoo.endpoints(model)
        for row in mine:
            ep = a[row["end_point"]]
            assert (row["r"], row["S"], row["P"]) == (list(ep.r), list(ep.S), list(ep.P))
            assert (f"global via {len(ep.gates)} gate" in row["note"]) == bool(ep.gates)
    last = {r["model"]: r for r in rows}
    assert {m: int(r["note"].split("via ")[1].split()[0]) for m, r in last.items()
            if "via" in r["note"]} == {
        m: n for m, (_, _, n) in CASES.items() if n}


# ---------------------------------------------------------------- YOLOv8n (ultralytics is not
# installed: a torch re-implementation of its modules, from ultralytics/nn/modules/{conv,block,head}.py)
class Conv(nn.Sequential):
    """ultralytics Conv: Conv2d(k, s, padding k // 2, no bias), BatchNorm2d, SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = Conv(cin, 2 * self.c, 1), Conv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c: int, k: int = 5) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c // 2, 1), Conv(c // 2 * 4, c, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YOLOv8n(nn.Module):
    """yolov8.yaml at scale n, every channel count divided by ``thin`` (the field does not depend
    on channels); ``taps`` are Identity modules on the end points."""

    def __init__(self, classes: int = 80, thin: int = 1) -> None:
        super().__init__()
        c = lambda n: n // thin
        self.stem = nn.Sequential(Conv(3, c(16), 3, 2), Conv(c(16), c(32), 3, 2), C2f(c(32), c(32), 1, True))
        self.p3 = nn.Sequential(Conv(c(32), c(64), 3, 2), C2f(c(64), c(64), 2, True))
        self.p4 = nn.Sequential(Conv(c(64), c(128), 3, 2), C2f(c(128), c(128), 2, True))
        self.p5 = nn.Sequential(Conv(c(128), c(256), 3, 2), C2f(c(256), c(256), 1, True), SPPF(c(256)))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4, self.n3 = C2f(c(384), c(128), 1, False), C2f(c(192), c(64), 1, False)
        self.d3, self.m4 = Conv(c(64), c(64), 3, 2), C2f(c(192), c(128), 1, False)
        self.d4, self.m5 = Conv(c(128), c(128), 3, 2), C2f(c(384), c(256), 1, False)
        c_box, c_cls = c(64), c(max(64, min(classes, 100)))
        self.box = nn.ModuleList(nn.Sequential(Conv(ch, c_box, 3), Conv(c_box, c_box, 3),
                                               nn.Conv2d(c_box, c(64), 1)) for ch in map(c, (64, 128, 256)))
        self.cls = nn.ModuleList(nn.Sequential(Conv(ch, c_cls, 3), Conv(c_cls, c_cls, 3),
                                               nn.Conv2d(c_cls, c(classes), 1))
                                 for ch in map(c, (64, 128, 256)))
        names = [f"{part}_p{i}" for part in ("backbone", "neck", "head") for i in (3, 4, 5)]
        self.taps = nn.ModuleDict({n: nn.Identity() for n in names})

    def forward(self, x):
        t = self.taps
        p3 = t["backbone_p3"](self.p3(self.stem(x)))
        p4 = t["backbone_p4"](self.p4(p3))
        p5 = t["backbone_p5"](self.p5(p4))
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = t["neck_p3"](self.n3(torch.cat([self.up(n4), p3], 1)))
        m4 = t["neck_p4"](self.m4(torch.cat([self.d3(n3), n4], 1)))
        m5 = t["neck_p5"](self.m5(torch.cat([self.d4(m4), p5], 1)))
        return [t[f"head_p{i}"](torch.cat([box(f), cls(f)], 1))
                for i, box, cls, f in zip((3, 4, 5), self.box, self.cls, (n3, m4, m5))]


def test_yolov8n_matches_a_torch_reimplementation() -> None:
    """YOLOv8n's backbone, neck (two nearest x2 upsamplings: regions repeat every 4 units at
    stride 8) and heads: r, S, P per axis and the regions of a period of units equal the float64
    gradient support of a torch re-implementation of ultralytics' modules (ultralytics itself is
    not installed here)."""
    table = rfgraph.analyze(model_zoo.build("yolov8n"))
    eps = model_zoo.endpoints(model_zoo.build("yolov8n"))
    net = YOLOv8n(thin=4)
    assert geometry(net) == geometry(YOLOv8n())
    net = make_positive(net)
    assert set(eps) == set(net.taps)
    periods = {ep: 4 if ep.endswith("p3") and not ep.startswith("backbone") else
               2 if ep.endswith("p4") and not ep.startswith("backbone") else 1 for ep in eps}
    check_against_gradient_support("yolov8n", table, net, dict(net.taps), periods)


def test_swin_t_local_stem_and_windows_then_global(models) -> None:
    """Swin-T at 224: the patch embedding (r 4, S 4, P 0) and stage 1's first block (window
    attention: the 7 tokens of a window share one 28-pixel region, so regions repeat every 7
    units) have the regions, r, S, P of the float64 gradient support of torchvision's swin_t (units
    1, 2 and 7..14 along each axis); after the second block the cyclic shift puts the first and
    last rows in one window (the attention mask adds -100, exp(-100) is no zero): the gradient of
    a unit of row 0 reaches the last row, and the zoo build says global from there on."""
    table = rfgraph.analyze(model_zoo.build("swin_t"))
    net = make_positive(models.swin_t())
    f = net.features
    taps = {"patch_embed": f[0], "stage1.0": f[1][0], "stage1": f[1]}
    units = {"patch_embed": [1, 2], "stage1.0": list(range(7, 15)), "stage1": [0]}
    for axis in (0, 1):
        got = gradient_hulls(f, taps, (224, 224), units, axis, channels_last=True)
        for ep, period in (("patch_embed", 1), ("stage1.0", 7)):
            assert [table[ep].region((u, 0) if axis == 0 else (0, u))[axis]
                    for u in units[ep]] == got[ep], (ep, axis)
            lo, lo2 = got[ep][0][0], got[ep][period][0]
            S = Fraction(lo2 - lo, period)
            measured = (max(b - a + 1 for a, b in got[ep]), S, units[ep][0] * S - lo)
            assert (table[ep].r[axis], table[ep].S[axis], table[ep].P[axis]) == measured, ep
        assert got["stage1"] == [(0, 223)]
    assert all(table[ep].is_global for ep in model_zoo.endpoints(model_zoo.build("swin_t"))[2:])
