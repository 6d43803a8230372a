"""Networks deployed today, structure only: ConvNeXt-T, EfficientNet-B0 / V2-S, MobileNetV3-L,
RegNetY-400MF, YOLOv8n, Swin-T and ViT-B/16 (ResNet-50 v1.5 is ``torchstyle.resnet50``).

Each builder follows the torchvision definition (``models/convnext.py``, ``efficientnet.py``,
``mobilenetv3.py``, ``regnet.py``, ``swin_transformer.py``, ``vision_transformer.py``; YOLOv8n: ultralytics'
``yolov8.yaml`` and ``nn/modules/block.py``) layer by layer: kernel, stride,
symmetric padding ``(k - 1) // 2``, groups, residual and squeeze-excitation structure.  What does
not change the field is simplified: BatchNorm is folded into the conv (an inference export), the
classifier head is left out (the end points are the stages' feature maps, the last one is the
output), channel counts are scaled by ``width`` (the group count then follows the scaled channels)
and weights are random.  ``size`` is ``n`` (n x n input) or ``h/w``.

Squeeze-excitation gates (EfficientNet, MobileNetV3, RegNetY) are written as torch exports them:
GlobalAveragePool, 1x1 convs, a sigmoid (hard-sigmoid in MobileNetV3), then a Mul with the
feature map; rfgraph reports the local field with those gates held constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from . import vit
from .builder import GraphBuilder, IntOrTuple, image_shape


def _w(c: int, width: float) -> int:
    return max(int(c * width), 1)


def _finish(b: GraphBuilder, endpoints: Sequence[str]) -> GraphBuilder:
    """The last end point is the graph output; all are listed in the metadata."""
    b.output(endpoints[-1])
    b.metadata["model_zoo.endpoints"] = ",".join(endpoints)
    return b


def conv_act(b: GraphBuilder, x: str, c: int, k: int, stride: int = 1, groups: int = 1,
             act: str | None = None, name: str | None = None) -> str:
    """torchvision Conv2dNormActivation (BN folded): kxk conv, padding (k-1)//2, activation."""
    y = b.conv(x, c, k, stride, (k - 1) // 2, groups=groups, name=None if act else name)
    return b.activation(y, act, name=name) if act else y


def squeeze_excitation(b: GraphBuilder, x: str, squeeze: int, act: str, gate: str) -> str:
    """torchvision SqueezeExcitation: x * gate(fc2(act(fc1(avgpool(x))))), fc = 1x1 conv."""
    s = b.activation(b.conv(b.global_avg_pool(x), squeeze, 1, 1, 0), act)
    g = b.activation(b.conv(s, b.channels(x), 1, 1, 0), gate)
    return b.mul(x, g)


# ------------------------------------------------------------------------------------ ConvNeXt
CONVNEXT_TINY = ((96, 3), (192, 3), (384, 9), (768, 3))  # (channels, blocks) per stage


def _channel_layernorm(b: GraphBuilder, x: str) -> str:
    """torchvision LayerNorm2d: permute to NHWC, LayerNorm over channels, permute back."""
    return b.transpose(b.layernorm(b.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))


def convnext_tiny(size: IntOrTuple = 224, width: float = 0.125, seed: int = 0) -> GraphBuilder:
    """ConvNeXt-T: 4x4/4 patchify stem + LN; blocks of 7x7 depthwise conv (padding 3), LN,
    MLP x4 with GELU, layer scale, residual; LN + 2x2/2 conv between stages."""
    b = GraphBuilder("convnext_tiny", image_shape(size), seed=seed)
    x = _channel_layernorm(b, b.conv(b.input, _w(96, width), 4, 4, 0))
    eps = []
    for i, (dim, depth) in enumerate(CONVNEXT_TINY):
        if i:
            x = b.conv(_channel_layernorm(b, x), _w(dim, width), 2, 2, 0)
        for j in range(depth):
            with b.scope(f"stages.{i}.{j}"):
                y = b.transpose(b.depthwise_conv(x, 7, 1, 3), (0, 2, 3, 1))
                c = b.shape(y)[-1]
                y = b.linear(b.gelu(b.linear(b.layernorm(y), 4 * c)), c)
                y = b.transpose(b.scale(y, 1e-6), (0, 3, 1, 2))  # layer scale
            x = b.add(x, y, name=f"stage{i + 1}" if j == depth - 1 else None)
        eps.append(x)
    return _finish(b, eps)


# ------------------------------------------------------------------------------------ EfficientNet
# (kind, expand ratio, kernel, stride, out channels, blocks): torchvision's MBConvConfig and
# FusedMBConvConfig lists.
EFFICIENTNET_B0 = (("mb", 1, 3, 1, 16, 1), ("mb", 6, 3, 2, 24, 2), ("mb", 6, 5, 2, 40, 2),
                   ("mb", 6, 3, 2, 80, 3), ("mb", 6, 5, 1, 112, 3), ("mb", 6, 5, 2, 192, 4),
                   ("mb", 6, 3, 1, 320, 1))
EFFICIENTNET_V2_S = (("fused", 1, 3, 1, 24, 2), ("fused", 4, 3, 2, 48, 4),
                     ("fused", 4, 3, 2, 64, 4), ("mb", 4, 3, 2, 128, 6), ("mb", 6, 3, 1, 160, 9),
                     ("mb", 6, 3, 2, 256, 15))


def mbconv(b: GraphBuilder, x: str, expand: int, k: int, stride: int, out: int) -> str:
    """EfficientNet MBConv: 1x1 expand (SiLU), kxk depthwise (SiLU), SE on input//4 channels
    (SiLU, sigmoid gate), 1x1 project; residual when the shape is kept."""
    cin = b.channels(x)
    y = x if expand == 1 else conv_act(b, x, cin * expand, 1, act="silu")
    y = conv_act(b, y, b.channels(y), k, stride, groups=b.channels(y), act="silu")
    y = squeeze_excitation(b, y, max(1, cin // 4), "silu", "sigmoid")
    y = conv_act(b, y, out, 1)
    return b.add(x, y) if stride == 1 and cin == out else y


def fused_mbconv(b: GraphBuilder, x: str, expand: int, k: int, stride: int, out: int) -> str:
    """EfficientNetV2 FusedMBConv: kxk conv (expanding, SiLU) then 1x1 project, or one kxk conv
    (SiLU) when not expanding; no SE; residual when the shape is kept."""
    cin = b.channels(x)
    if expand == 1:
        y = conv_act(b, x, out, k, stride, act="silu")
    else:
        y = conv_act(b, conv_act(b, x, cin * expand, k, stride, act="silu"), out, 1)
    return b.add(x, y) if stride == 1 and cin == out else y


def _efficientnet(name: str, cfg: Sequence[tuple], stem: int, size: IntOrTuple, width: float,
                  seed: int) -> GraphBuilder:
    """Stem 3x3/2 (SiLU), the stages of ``cfg`` (end points ``stage1``...), 1x1 conv to 1280."""
    b = GraphBuilder(name, image_shape(size), seed=seed)
    x = conv_act(b, b.input, _w(stem, width), 3, 2, act="silu", name="stem")
    eps = [x]
    for i, (kind, expand, k, stride, out, n) in enumerate(cfg, start=1):
        block = fused_mbconv if kind == "fused" else mbconv
        for j in range(n):
            with b.scope(f"features.{i}.{j}"):
                x = block(b, x, expand, k, stride if j == 0 else 1, _w(out, width))
        x = b.identity(x, name=f"stage{i}")
        eps.append(x)
    eps.append(conv_act(b, x, _w(1280, width), 1, act="silu", name="features"))
    return _finish(b, eps)


def efficientnet_b0(size: IntOrTuple = 224, width: float = 0.25, seed: int = 0) -> GraphBuilder:
    """EfficientNet-B0 (torchvision efficientnet_b0 features)."""
    return _efficientnet("efficientnet_b0", EFFICIENTNET_B0, 32, size, width, seed)


def efficientnet_v2_s(size: IntOrTuple = 224, width: float = 0.125, seed: int = 0) -> GraphBuilder:
    """EfficientNetV2-S (torchvision efficientnet_v2_s features)."""
    return _efficientnet("efficientnet_v2_s", EFFICIENTNET_V2_S, 24, size, width, seed)


# ------------------------------------------------------------------------------------ MobileNetV3
# torchvision mobilenet_v3_large: (kernel, expanded, out, SE, activation, stride)
MOBILENET_V3_LARGE = ((3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
                      (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
                      (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
                      (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
                      (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
                      (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
                      (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
                      (5, 960, 160, True, "hardswish", 1))


def mobilenet_v3_large(size: IntOrTuple = 224, width: float = 0.25, seed: int = 0) -> GraphBuilder:
    """MobileNetV3-Large: 3x3/2 stem (hardswish), inverted residuals (1x1 expand unless the
    expansion is the input width, kxk depthwise, SE with hard-sigmoid gate, 1x1 project), 1x1
    conv to 960.  End points: the last block at each stride, then the final conv."""
    b = GraphBuilder("mobilenet_v3_large", image_shape(size), seed=seed)
    x = conv_act(b, b.input, _w(16, width), 3, 2, act="hardswish", name="stem")
    eps = []
    for i, (k, exp, out, se, act, stride) in enumerate(MOBILENET_V3_LARGE, start=1):
        cin, mid, cout = b.channels(x), _w(exp, width), _w(out, width)
        with b.scope(f"features.{i}"):
            y = x if mid == cin else conv_act(b, x, mid, 1, act=act)
            y = conv_act(b, y, mid, k, stride, groups=mid, act=act)
            if se:
                y = squeeze_excitation(b, y, max(1, mid // 4), "relu", "hardsigmoid")
            y = conv_act(b, y, cout, 1)
            y = b.add(x, y) if stride == 1 and cin == cout else y
        x = b.identity(y, name=f"block{i}")
        last_at_stride = i == len(MOBILENET_V3_LARGE) or MOBILENET_V3_LARGE[i][5] == 2
        if last_at_stride:
            eps.append(x)
    eps.append(conv_act(b, x, _w(960, width), 1, act="hardswish", name="features"))
    return _finish(b, eps)


# ------------------------------------------------------------------------------------ RegNetY
REGNET_Y_400MF = ((1, 48), (3, 104), (6, 208), (6, 440))  # (blocks, width) per stage
REGNET_GROUP_WIDTH = 8


def _groups(c: int, group_width: int) -> int:
    """Group count of a width-scaled grouped conv: channels / group width when it divides, else
    the largest divisor's complement (the field does not depend on it)."""
    return c // math.gcd(c, group_width)


def regnet_bottleneck(b: GraphBuilder, x: str, out: int, stride: int, se_ratio: float) -> str:
    """torchvision ResBottleneckBlock: 1x1 (ReLU), 3x3 grouped conv with the stride (ReLU), SE on
    se_ratio * input channels (ReLU, sigmoid), 1x1; projection shortcut; ReLU after the add."""
    cin = b.channels(x)
    y = conv_act(b, x, out, 1, act="relu")
    y = conv_act(b, y, out, 3, stride, groups=_groups(out, REGNET_GROUP_WIDTH), act="relu")
    y = squeeze_excitation(b, y, max(1, int(round(se_ratio * cin))), "relu", "sigmoid")
    y = conv_act(b, y, out, 1)
    short = x if cin == out and stride == 1 else b.conv(x, out, 1, stride, 0)
    return b.relu(b.add(short, y))


def regnet_y_400mf(size: IntOrTuple = 224, width: float = 0.25, seed: int = 0) -> GraphBuilder:
    """RegNetY-400MF (torchvision regnet_y_400mf trunk): 3x3/2 stem (ReLU), four stages whose
    first block strides 2, SE ratio 0.25.  End points: block1..block4."""
    b = GraphBuilder("regnet_y_400mf", image_shape(size), seed=seed)
    x = conv_act(b, b.input, _w(32, width), 3, 2, act="relu", name="stem")
    eps = []
    for i, (n, c) in enumerate(REGNET_Y_400MF, start=1):
        for j in range(n):
            with b.scope(f"block{i}.{j}"):
                x = regnet_bottleneck(b, x, _w(c, width), 2 if j == 0 else 1, 0.25)
        x = b.identity(x, name=f"block{i}")
        eps.append(x)
    return _finish(b, eps)


# ------------------------------------------------------------------------------------ ViT
def vit_b_16(size: int = 224, width: float = 0.125, depth: int = 12, seed: int = 0) -> GraphBuilder:
    """ViT-B/16's geometry: 16x16/16 patch embedding, 12 blocks of global self-attention (12
    heads, MLP x4).  Built by ``vit.vit`` (mean-pooled, no class token: the fields are the
    same, the patch embedding local, every block global)."""
    b = vit.vit(size=size, patch=16, dim=_w(768, width), depth=depth, heads=12, mlp_ratio=4,
                seed=seed)
    b.name = "vit_b_16"
    eps = b.metadata["model_zoo.endpoints"].split(",")
    b.metadata["model_zoo.endpoints"] = ",".join([eps[0], eps[1], eps[-1]])  # local, then global
    return b


# ------------------------------------------------------------------------------------ YOLOv8n
def c2f(b: GraphBuilder, x: str, out: int, n: int, shortcut: bool) -> str:
    """ultralytics C2f: 1x1 conv to 2c, split in two halves, ``n`` bottlenecks (two 3x3 convs,
    residual when ``shortcut``) chained on the second half, every part concatenated, 1x1 conv."""
    c = out // 2
    parts = b.split(conv_act(b, x, 2 * c, 1, act="silu"), [c, c])
    for _ in range(n):
        y = conv_act(b, conv_act(b, parts[-1], c, 3, act="silu"), c, 3, act="silu")
        parts.append(b.add(parts[-1], y) if shortcut else y)
    return conv_act(b, b.concat(parts), out, 1, act="silu")


def sppf(b: GraphBuilder, x: str, k: int = 5) -> str:
    """ultralytics SPPF: 1x1 conv, three chained kxk/1 max pools, concat of the four, 1x1 conv."""
    parts = [conv_act(b, x, b.channels(x) // 2, 1, act="silu")]
    for _ in range(3):
        parts.append(b.max_pool(parts[-1], k, 1, k // 2))
    return conv_act(b, b.concat(parts), b.channels(x), 1, act="silu")


def yolov8n(size: IntOrTuple = 640, seed: int = 0, classes: int = 80) -> GraphBuilder:
    """YOLOv8n (ultralytics yolov8.yaml, scale n: depth 0.33, width 0.25): CSP backbone of 3x3/2
    convs and C2f, SPPF, PAN neck (nearest x2 upsampling, concat, C2f; 3x3/2 convs back down),
    and the Detect head's two branches of two 3x3 convs and a 1x1 per level (strides 8, 16, 32).
    End points: backbone P3, P4, P5 (after SPPF), neck outputs, head outputs."""
    b, eps = _yolov8n_parts(size, seed, classes)
    for t in eps[-3:-1]:
        b.output(t)
    return _finish(b, eps)


def yolov8n_export(size: IntOrTuple = 640, seed: int = 0, classes: int = 80) -> GraphBuilder:
    """YOLOv8n as ultralytics exports it (Detect in export mode, ``nn/modules/head.py``): each
    level's box (4 x 16 bins) and class maps flattened to anchors and joined along them (80x80 +
    40x40 + 20x20 = 8400 at 640); the bins decoded by the DFL (softmax over 16 bins, a 1x1 conv of
    weights 0..15) into distances to the anchor point, made into centre and size times the
    level's stride; classes through a sigmoid: output0 (1, 4 + classes, anchors)."""
    b, eps = _yolov8n_parts(size, seed, classes)
    heads = eps[-3:]
    cells = [b.shape(h)[2] * b.shape(h)[3] for h in heads]
    joined = b.concat([b.reshape(h, [1, b.channels(h), n]) for h, n in zip(heads, cells)], axis=2)
    anchors, (points, strides) = sum(cells), _anchor_points(b, heads)
    box, cls = b.split(joined, [64, classes], axis=1)
    bins = b.softmax(b.transpose(b.reshape(box, [1, 4, 16, anchors]), [0, 2, 1, 3]), axis=1)
    dfl = b._node("Conv", [bins, b.const(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "dfl")],
                  (1, 1, 4, anchors), "Conv", kernel_shape=[1, 1])
    left_top, right_bottom = b.split(b.reshape(dfl, [1, 4, anchors]), [2, 2], axis=1)
    x1y1, x2y2 = b.add(points, b.scale(left_top, -1.0)), b.add(points, right_bottom)
    centre_size = b.concat([b.scale(b.add(x1y1, x2y2), 0.5), b.add(x2y2, b.scale(x1y1, -1.0))], axis=1)
    out = b.concat([b.mul(centre_size, strides), b.sigmoid(cls)], axis=1, name="output0")
    b.output(out)
    b.metadata["model_zoo.endpoints"] = ",".join([*eps, out])
    return b


def _anchor_points(b: GraphBuilder, heads: Sequence[str]) -> tuple[str, str]:
    """ultralytics make_anchors: each cell's centre (x + 0.5, y + 0.5) in its level's cells, row
    after row, level after level, as (1, 2, anchors); and each anchor's stride, (1, 1, anchors)."""
    size = b.shape(b.input)[2]
    points, strides = [], []
    for h in heads:
        rows, cols = b.shape(h)[2:]
        y, x = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()]))
        strides.append(np.full(rows * cols, size / rows))
    return (b.const(np.concatenate(points, axis=1)[None].astype(np.float32), "anchors"),
            b.const(np.concatenate(strides)[None, None].astype(np.float32), "strides"))


def _yolov8n_parts(size: IntOrTuple, seed: int, classes: int) -> tuple[GraphBuilder, list[str]]:
    """YOLOv8n's graph and its end points (``yolov8n``), the three heads last."""
    b = GraphBuilder("yolov8n", image_shape(size), seed=seed)
    up = lambda t: b.resize(t, 2, "nearest", coordinate_transformation_mode="asymmetric",
                            nearest_mode="floor")
    conv = lambda t, c, k=3, s=1: conv_act(b, t, c, k, s, act="silu")
    x = conv(conv(b.input, 16, 3, 2), 32, 3, 2)
    x = c2f(b, x, 32, 1, True)
    p3 = c2f(b, conv(x, 64, 3, 2), 64, 2, True)
    p4 = c2f(b, conv(p3, 128, 3, 2), 128, 2, True)
    p5 = sppf(b, c2f(b, conv(p4, 256, 3, 2), 256, 1, True))
    eps = [b.identity(t, name=nm) for t, nm in ((p3, "backbone_p3"), (p4, "backbone_p4"),
                                                (p5, "backbone_p5"))]
    n4 = c2f(b, b.concat([up(p5), p4]), 128, 1, False)
    n3 = c2f(b, b.concat([up(n4), p3]), 64, 1, False)
    m4 = c2f(b, b.concat([conv(n3, 64, 3, 2), n4]), 128, 1, False)
    m5 = c2f(b, b.concat([conv(m4, 128, 3, 2), p5]), 256, 1, False)
    necks = [b.identity(t, name=f"neck_p{i}") for i, t in ((3, n3), (4, m4), (5, m5))]
    eps += necks
    c_box, c_cls = max(16, 64 // 4, 64), max(64, min(classes, 100))
    for i, t in zip((3, 4, 5), necks):
        box = b.conv(conv(conv(t, c_box), c_box), 64, 1, 1, 0)
        cls = b.conv(conv(conv(t, c_cls), c_cls), classes, 1, 1, 0)
        eps.append(b.concat([box, cls], name=f"head_p{i}"))
    return b, eps


# ------------------------------------------------------------------------------------ Swin-T
SWIN_TINY = ((2, 3), (2, 6), (6, 12), (2, 24))  # (blocks, heads) per stage; window 7, dim 96


def roll(b: GraphBuilder, x: str, shift: int, axis: int) -> str:
    """torch.roll along one axis as exported: two Slices and a Concat (out[i] = x[(i - shift) % n])."""
    n = b.shape(x)[axis]
    s = shift % n
    if s == 0:
        return x
    return b.concat([b.slice(x, [n - s], [n], [axis]), b.slice(x, [0], [n - s], [axis])], axis=axis)


def window_attention(b: GraphBuilder, x: str, window: int, heads: int, shift: int) -> str:
    """torchvision shifted_window_attention on NHWC ``x``: roll by -shift, partition into
    window x window tokens, self-attention inside each window, reverse, roll back.  The attention
    mask and relative position bias are constant additions to the scores, left out."""
    _, h, w, c = b.shape(x)
    if h % window or w % window:
        raise ValueError(f"swin: feature map {h}x{w} is not a multiple of the window {window}")
    nh, nw = h // window, w // window
    x = roll(b, roll(b, x, -shift, 1), -shift, 2)
    t = b.transpose(b.reshape(x, (1, nh, window, nw, window, c)), (0, 1, 3, 2, 4, 5))
    t = vit._attention(b, b.reshape(t, (nh * nw, window * window, c)), heads)
    t = b.transpose(b.reshape(t, (1, nh, nw, window, window, c)), (0, 1, 3, 2, 4, 5))
    t = b.reshape(t, (1, h, w, c))
    return roll(b, roll(b, t, shift, 1), shift, 2)


def swin_block(b: GraphBuilder, x: str, window: int, heads: int, shift: int,
               name: str | None = None) -> str:
    """x + attention(LN(x)), then + MLP x4 (GELU) of LN; no shift when the window covers the map."""
    shift = 0 if window >= min(b.shape(x)[1:3]) else shift
    x = b.add(x, window_attention(b, b.layernorm(x), window, heads, shift))
    c = b.shape(x)[-1]
    return b.add(x, b.linear(b.gelu(b.linear(b.layernorm(x), 4 * c)), c), name=name)


def patch_merging(b: GraphBuilder, x: str) -> str:
    """torchvision PatchMerging: the four 2x2 phases (strided Slices) concatenated, LN, linear 2C."""
    _, h, w, c = b.shape(x)
    parts = [b.slice(x, [i, j], [h, w], [1, 2], [2, 2]) for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    return b.linear(b.layernorm(b.concat(parts, axis=-1)), 2 * c, bias=False)


def swin_t(size: IntOrTuple = 224, width: float = 0.125, seed: int = 0) -> GraphBuilder:
    """Swin-T (torchvision swin_t features): 4x4/4 patch embedding + LN (NHWC from there), stages
    of (shifted) window attention blocks, window 7, shift 3 in every second block, patch merging
    between stages.  End points: the patch embedding, stage 1's first block (windows: local),
    then each stage (the cyclic shift wraps windows around the borders: global)."""
    b = GraphBuilder("swin_t", image_shape(size), seed=seed)
    x = b.conv(b.input, _w(96, width), 4, 4, 0)
    x = b.layernorm(b.transpose(x, (0, 2, 3, 1)), name="patch_embed")
    eps = [x]
    for i, (depth, heads) in enumerate(SWIN_TINY, start=1):
        if i > 1:
            x = patch_merging(b, x)
        for j in range(depth):
            nm = f"stage{i}" if j == depth - 1 else ("stage1.0" if i == 1 and j == 0 else None)
            with b.scope(f"stage{i}.{j}"):
                x = swin_block(b, x, 7, heads, 3 if j % 2 else 0)
            if nm:
                x = b.identity(x, name=nm)
                eps.append(x)
    return _finish(b, eps)


MODERN_BUILDERS: dict[str, Callable[..., GraphBuilder]] = {
    "convnext_tiny": convnext_tiny, "efficientnet_b0": efficientnet_b0,
    "efficientnet_v2_s": efficientnet_v2_s, "mobilenet_v3_large": mobilenet_v3_large,
    "regnet_y_400mf": regnet_y_400mf, "yolov8n": yolov8n, "swin_t": swin_t, "vit_b_16": vit_b_16}
