"""torchvision-style networks (ResNet-50 v1.5, VGG-16, MobileNetV2) and a small U-Net.

They mirror what ``torch.onnx.export`` writes for the usual PyTorch definitions, so an export
from the wild can be checked against them (tests/test_torch_exports.py).  ``padding="torch"``
(default) pads symmetrically, ``k_eff // 2`` on both sides, as ``nn.Conv2d(padding=k//2)`` does;
``padding="SAME"`` builds the same layers with TF 'SAME' padding instead, so the table can show
what the convention alone changes (only P, and the alignment of stride-2 merges: with an even input
'SAME' pads a stride-2 3x3 conv by (0, 1), which moves its centre half a step off the 1x1 shortcut).

Architectural differences from TF-slim that change r itself: torchvision ResNet strides in the
*first* unit of a stage, on the 3x3 conv ("v1.5"); TF-slim resnet_v1 strides in the *last* unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from .builder import GraphBuilder, IntOrTuple, Padding, image_shape


def _pad(padding: str, k: int, dilation: int = 1) -> Padding:
    if padding == "SAME":
        return "SAME"
    if padding != "torch":
        raise ValueError("padding must be 'torch' or 'SAME'")
    return dilation * (k - 1) // 2


def _head(b: GraphBuilder, x: str, classes: int) -> str:
    """Global average pool + flatten + linear: the classifier every torchvision net ends with."""
    g = b.reshape(b.global_avg_pool(x), (1, b.channels(x)))
    return b.output(b.linear(g, classes, name="logits"))


def _w(c: int, width: float) -> int:
    return max(int(c * width), 1)


def resnet50(size: IntOrTuple = 224, width: float = 0.125, padding: str = "torch",
             layers: Sequence[int] = (3, 4, 6, 3), seed: int = 0) -> GraphBuilder:
    """torchvision resnet50: 7x7/2 conv, 3x3/2 max pool, bottlenecks striding in their 3x3 conv."""
    b = GraphBuilder("torch_resnet50", image_shape(size), seed=seed)
    x = b.relu(b.conv(b.input, _w(64, width), 7, 2, _pad(padding, 7)))
    x = b.max_pool(x, 3, 2, _pad(padding, 3))
    eps = []
    for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for j in range(n):
            stride = 2 if (i > 1 and j == 0) else 1
            with b.scope(f"layer{i}.{j}"):
                p, out = _w(planes, width), _w(planes * 4, width)
                y = b.relu(b.conv(x, p, 1, 1, 0))
                y = b.relu(b.conv(y, p, 3, stride, _pad(padding, 3)))
                y = b.conv(y, out, 1, 1, 0)
                short = x if stride == 1 and b.channels(x) == out else b.conv(x, out, 1, stride, 0)
                x = b.relu(b.add(y, short))
        x = b.identity(x, name=f"layer{i}")
        eps.append(x)
    b.output(x)
    _head(b, x, 10)
    b.metadata["model_zoo.endpoints"] = ",".join(eps)
    return b


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(size: int = 224, width: float = 0.125, padding: str = "torch", seed: int = 0) -> GraphBuilder:
    """torchvision vgg16 features: 3x3 convs (padding 1) and 2x2/2 max pools."""
    b = GraphBuilder("torch_vgg16", (1, 3, size, size), seed=seed)
    x, eps, stage = b.input, [], 1
    for v in VGG16_CFG:
        if v == "M":
            x = b.max_pool(x, 2, 2, "VALID", name=f"pool{stage}")
            eps.append(x)
            stage += 1
        else:
            x = b.relu(b.conv(x, _w(int(v), width), 3, 1, _pad(padding, 3)))
    b.output(x)
    _head(b, x, 10)
    b.metadata["model_zoo.endpoints"] = ",".join(eps)
    return b


MOBILENET_V2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))  # (expansion t, channels c, repeats n, stride s)


def mobilenet_v2(size: int = 224, width: float = 0.25, padding: str = "torch",
                 seed: int = 0) -> GraphBuilder:
    """torchvision mobilenet_v2: 3x3/2 stem, inverted residuals (depthwise 3x3), 1x1 to 1280."""
    b = GraphBuilder("torch_mobilenet_v2", (1, 3, size, size), seed=seed)
    x = b.relu(b.conv(b.input, _w(32, width), 3, 2, _pad(padding, 3)))
    eps, k = [], 0
    for t, c, n, s in MOBILENET_V2_CFG:
        for j in range(n):
            stride = s if j == 0 else 1
            cin, cout = b.channels(x), _w(c, width)
            with b.scope(f"features.{k + 1}"):
                y = x if t == 1 else b.relu(b.conv(x, cin * t, 1, 1, 0))
                y = b.relu(b.depthwise_conv(y, 3, stride, _pad(padding, 3)))
                y = b.conv(y, cout, 1, 1, 0)
                x = b.add(x, y) if stride == 1 and cin == cout else y
            k += 1
            x = b.identity(x, name=f"block{k}")
            eps.append(x)
    x = b.relu(b.conv(x, _w(1280, width), 1, 1, 0), name="features")
    eps.append(x)
    b.output(x)
    _head(b, x, 10)
    b.metadata["model_zoo.endpoints"] = ",".join(eps)
    return b


def unet(size: int = 64, base: int = 8, depth: int = 3, padding: str = "torch",
         seed: int = 0) -> GraphBuilder:
    """Small U-Net: double 3x3 convs, 2x2 max pools down, 2x2/2 ConvTranspose up, skip concats."""
    b = GraphBuilder("torch_unet", (1, 3, size, size), seed=seed)

    def double(t: str, c: int) -> str:
        t = b.relu(b.conv(t, c, 3, 1, _pad(padding, 3)))
        return b.relu(b.conv(t, c, 3, 1, _pad(padding, 3)))

    x, skips, eps = b.input, [], []
    for i in range(depth):
        with b.scope(f"down{i}"):
            x = double(x, base * 2 ** i)
        skips.append(x)
        x = b.max_pool(x, 2, 2, "VALID")
    with b.scope("bottom"):
        x = double(x, base * 2 ** depth)
    x = b.identity(x, name="bottom")
    eps.append(x)
    for i in reversed(range(depth)):
        with b.scope(f"up{i}"):
            x = b.conv_transpose(x, base * 2 ** i, 2, 2)
            x = double(b.concat([skips[i], x]), base * 2 ** i)
        x = b.identity(x, name=f"up{i}")
        eps.append(x)
    out = b.conv(x, 2, 1, 1, 0, name="output")
    b.output(out)
    b.metadata["model_zoo.endpoints"] = ",".join(eps + [out])
    return b
