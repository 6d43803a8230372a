"""Exporters in the wild: plain-torch ResNet-50, VGG-16, MobileNetV2 and U-Net, exported with
``torch.onnx.export(dynamo=False)``, analysed, and checked against model_zoo builds of the same
architectures (torchvision definitions, written here without torchvision).

Oracles: the model_zoo graph of the same architecture with PyTorch's symmetric padding (must give
identical r, S, P and alignment); Araujo's closed forms along ResNet-50's longest path; and the
TF-slim / TF-'SAME' builds, which must *differ* where the conventions differ:
* VGG-16: 3x3 stride-1 convs and 2x2 VALID pools pad the same in both conventions: identical;
* ResNet-50: torchvision strides in the first unit of a stage (r = 427, slim's resnet_v1_50 483);
  with TF 'SAME' instead of symmetric pads, P drops by 1+2+4+8+16 and the stride-2 merges misalign;
* MobileNetV2: 'SAME' changes only P (5 stride-2 layers of odd kernel on even inputs).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import model_zoo  # noqa: E402
import rfgraph  # noqa: E402
from rfgraph.fields import closed_form_P, closed_form_r  # noqa: E402

WIDTH = 0.125  # channel multiplier: structure is what matters, small nets export in a second


def w(c: int, width: float = WIDTH) -> int:
    return max(int(c * width), 1)


def conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5): the stride sits on the 3x3 conv."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, planes, 1), conv_bn(planes, planes, 3, stride),
                                  conv_bn(planes, 4 * planes, 1, relu=False))
        self.down = (nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                   nn.BatchNorm2d(4 * planes))
                     if stride != 1 or cin != 4 * planes else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, w(64), 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], w(64)
        for i, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for j in range(n):
                blocks.append(Bottleneck(cin, w(planes), 2 if i and not j else 1))
                cin = 4 * w(planes)
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        f = self.layers(self.stem(x))
        return f, self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))


class VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers, cin = [], 3
        for v in model_zoo.torchstyle.VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, w(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = w(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        f = self.features(x)
        return f, self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [conv_bn(cin, hidden, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, relu=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 0.25) -> None:
        super().__init__()
        layers, cin = [conv_bn(3, w(32, width), 3, 2)], w(32, width)
        for t, c, n, s in model_zoo.torchstyle.MOBILENET_V2_CFG:
            for j in range(n):
                layers.append(InvertedResidual(cin, w(c, width), s if j == 0 else 1, t))
                cin = w(c, width)
        layers.append(conv_bn(cin, w(1280, width), 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(w(1280, width), 10)

    def forward(self, x):
        f = self.features(x)
        return f, self.fc(f.mean((2, 3)))


class UNet(nn.Module):
    def __init__(self, base: int = 8, depth: int = 3) -> None:
        super().__init__()
        double = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(),
                                            nn.Conv2d(b, b, 3, padding=1), nn.ReLU())
        chans = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([double(3 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)])
        self.bottom = double(chans[depth - 1], chans[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, 2) for i in range(depth)])
        self.dec = nn.ModuleList([double(2 * chans[i], chans[i]) for i in range(depth)])
        self.head = nn.Conv2d(base, 2, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.head(x)


def export(model: nn.Module, size: int, path: Path, outputs: list[str]) -> Path:
    """torch.onnx.export with the TorchScript exporter (dynamo=False), as most exports in the wild."""
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=outputs, opset_version=17)
    return path


def rsp(analysis: rfgraph.Analysis, tensor: str) -> tuple:
    ep = analysis[tensor]
    return ep.r, ep.S, ep.P


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, rfgraph.Analysis]:
    """The four torch nets, exported once and analysed."""
    d = tmp_path_factory.mktemp("torch_onnx")
    torch.manual_seed(0)
    nets = {"resnet50": (ResNet50(), 224, ["features", "logits"]),
            "vgg16": (VGG16(), 224, ["features", "logits"]),
            "mobilenet_v2": (MobileNetV2(), 224, ["features", "logits"]),
            "unet": (UNet(), 64, ["output"])}
    return {k: rfgraph.analyze(export(m, s, d / f"{k}.onnx", outs)) for k, (m, s, outs) in nets.items()}


ZOO_FINAL = {"resnet50": "layer4", "vgg16": "pool5", "mobilenet_v2": "features", "unet": "output"}
EXPORT_FINAL = {"resnet50": "features", "vgg16": "features", "mobilenet_v2": "features", "unet": "output"}


@pytest.mark.parametrize("net", list(ZOO_FINAL))
def test_export_matches_zoo_build_of_same_architecture(exported, net):
    """Same architecture, same (PyTorch) padding: identical r, S, P per axis and alignment."""
    zoo = rfgraph.analyze(model_zoo.build(f"torch_{net}"))
    ours, theirs = zoo[ZOO_FINAL[net]], exported[net][EXPORT_FINAL[net]]
    assert rsp(exported[net], EXPORT_FINAL[net]) == rsp(zoo, ZOO_FINAL[net])
    assert theirs.aligned == ours.aligned
    assert all(r is not None for r in theirs.r)


def test_resnet50_export_closed_form_along_longest_path(exported):
    """Longest path of torchvision ResNet-50 (conv1, max pool, 1x1-3x3-1x1 per unit) gives r, S, P
    by Araujo eqs. (2), (9), (10): 427, 32, 213."""
    layers = [(7, 2, 3), (3, 2, 1)]
    for i, n in enumerate((3, 4, 6, 3)):
        for j in range(n):
            layers += [(1, 1, 0), (3, 2 if i and not j else 1, 1), (1, 1, 0)]
    k, s, p = zip(*layers)
    expected = closed_form_r(list(k), list(s)), 32, closed_form_P(list(p), list(s))
    assert expected == (427, 32, 213)
    r, S, P = rsp(exported["resnet50"], "features")
    assert (r[0], S[0], P[0]) == (r[1], S[1], P[1]) == expected
    assert exported["resnet50"]["logits"].is_global


def test_vgg16_pytorch_and_tf_slim_conventions_agree(exported):
    """VGG-16 pads 3x3 stride-1 convs by 1 on both sides in either convention: same as vgg_16."""
    slim = rfgraph.analyze(model_zoo.build("vgg_16:width=0.05"))
    assert rsp(exported["vgg16"], "features") == rsp(slim, "vgg_16/pool5")


def test_resnet50_conventions_differ_and_why(exported):
    """torchvision vs TF-slim ResNet-50: stride placement changes r (427 vs slim's 483); TF 'SAME'
    on the torchvision layout keeps r and S but lowers P by sum of S_in over the 5 stride-2
    odd-kernel layers (begin pad one less each) and misaligns the strided merges."""
    slim = rfgraph.analyze(model_zoo.build("resnet_v1_50:width=0.05"))
    same = rfgraph.analyze(model_zoo.build("torch_resnet50:padding=SAME,width=0.05"))
    r, S, P = rsp(exported["resnet50"], "features")
    assert rsp(slim, "resnet_v1_50/block4")[0] != r
    r2, S2, P2 = rsp(same, "layer4")
    assert (r2, S2) == (r, S)
    assert [a - b for a, b in zip(P, P2)] == [1 + 2 + 4 + 8 + 16] * 2
    assert exported["resnet50"]["features"].aligned and not same["layer4"].aligned


def test_mobilenet_v2_same_padding_changes_only_P(exported):
    """MobileNetV2 with TF 'SAME': r and S unchanged, P lower (5 stride-2 3x3 layers, even inputs)."""
    same = rfgraph.analyze(model_zoo.build("torch_mobilenet_v2:padding=SAME"))
    r, S, P = rsp(exported["mobilenet_v2"], "features")
    r2, S2, P2 = rsp(same, "features")
    assert (r2, S2) == (r, S)
    assert [a - b for a, b in zip(P, P2)] == [1 + 2 + 4 + 8 + 16] * 2
