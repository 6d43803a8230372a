"""The TF-slim networks of the ``receptive_field`` library's rf_benchmark, as tf2onnx would write them.

The nineteen configurations of rf_benchmark (``GRF_BENCHMARK``): the twelve of Araujo et al.'s
table (``SLIM_BUILDERS``) plus vgg_a, resnet_v2_50/101/152/200, inception_v2 without separable
convolution and inception_resnet_v2 with ``align_feature_maps=True`` (named as rf_benchmark names
them: ``inception_v2-no-separable-conv``, ``inception_resnet_v2-same``).

Each builder follows the TF-slim definition (``nets/alexnet.py``, ``vgg.py``, ``mobilenet_v1.py``,
``resnet_v1.py``, ``resnet_v2.py`` + ``resnet_utils.py``, ``inception_v2/v3/v4.py``,
``inception_resnet_v2.py``):
kernel, stride, padding mode and branch structure of every layer, up to the *final end point*
the ``receptive_field`` library's ``rf_benchmark.py`` analyses (the ``*_base`` functions, or the
classifier with ``num_classes=None, global_pool=False``).  Intermediate end points are tensors
named as the slim end points (``Mixed_5b``, ``resnet_v1_50/block2``...); they are listed in the
model's ``model_zoo.endpoints`` metadata.

Conventions that decide r, S, P and are therefore kept exactly:

* slim ``padding='SAME'`` is TF 'SAME' (``total = max((ceil(n/s)-1)*s + k - n, 0)``, more padding at
  the end), written as explicit ``pads`` from the static input size, as tf2onnx does.  For a
  stride-2 layer with an odd kernel the begin pad depends on the input size: 0 when the input
  is even, ``(k-1)//2`` when odd.  This is why ``size`` matters.
* ``resnet_utils.conv2d_same`` (ResNet strided 3x3 and the 7x7 root) pads explicitly
  (total ``k_eff - 1``, begin ``total // 2``) with a ``Pad`` node, then a 'VALID' conv.
* Batch norm is folded into the conv bias (tf2onnx on a frozen inference graph); activations are
  ReLU (ReLU6 = ``Clip(0, 6)`` in MobileNet); Inception-ResNet residual scales are a ``Mul``.
* Channel counts are ``max(int(d * width), 1)``: the field does not depend on them, and a small
  ``width`` keeps graphs small and fast.  ``width=1`` gives the real depths.

Layout is NCHW by default, as tf2onnx writes with ``--inputs-as-nchw``; ``layout="NHWC"`` keeps
TF's NHWC input followed by the Transpose tf2onnx inserts otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .builder import GraphBuilder, IntOrTuple, Padding, conv2d_same_pads


class Slim:
    """slim.conv2d / max_pool2d / avg_pool2d look-alikes over a GraphBuilder."""

    def __init__(self, b: GraphBuilder, width: float, x0: str, act: str = "relu") -> None:
        self.b, self.width, self.x0, self.act = b, width, x0, act  # x0: the NCHW input image

    def depth(self, d: int) -> int:
        """Channel count after the width multiplier (at least 1)."""
        return max(int(d * self.width), 1)

    def conv(self, x: str, d: int, k: IntOrTuple, stride: IntOrTuple = 1,
             padding: Padding = "SAME", rate: int = 1, act: bool = True,
             name: str | None = None) -> str:
        """slim.conv2d: Conv (+ folded BN bias) + ReLU unless ``act`` is False."""
        y = self.b.conv(x, self.depth(d), k, stride, padding, dilation=rate,
                        name=None if act else name)
        return self.b.activation(y, self.act, name=name) if act else y

    def conv2d_same(self, x: str, d: int, k: int, stride: int, rate: int = 1, act: bool = True,
                    name: str | None = None) -> str:
        """resnet_utils.conv2d_same: SAME conv if stride 1, else explicit Pad + VALID conv."""
        if stride == 1:
            return self.conv(x, d, k, 1, "SAME", rate=rate, act=act, name=name)
        p = conv2d_same_pads(k, rate)
        x = self.b.pad(x, [p, p])
        return self.conv(x, d, k, stride, "VALID", rate=rate, act=act, name=name)

    def max_pool(self, x: str, k: int, stride: int = 2, padding: Padding = "VALID",
                 name: str | None = None) -> str:
        return self.b.max_pool(x, k, stride, padding, name=name)

    def avg_pool(self, x: str, k: int, stride: int = 1, padding: Padding = "SAME",
                 name: str | None = None) -> str:
        return self.b.avg_pool(x, k, stride, padding, name=name)

    def separable(self, x: str, d: int, k: int, stride: int, multiplier: int,
                  name: str | None = None) -> str:
        """slim.separable_conv2d: depthwise kxk (SAME, stride) then pointwise 1x1 + ReLU."""
        y = self.b.depthwise_conv(x, k, stride, "SAME", multiplier=multiplier)
        return self.conv(y, d, 1, name=name)


Endpoints = list[str]


def _start(name: str, size: int, width: float, same_mode: str, seed: int,
           layout: str = "NCHW") -> tuple[GraphBuilder, Slim]:
    """Builder with input 'input_image'; NHWC input (TF's layout) is transposed to NCHW first,
    as tf2onnx writes it without ``--inputs-as-nchw``."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError("layout must be NCHW or NHWC")
    shape = (1, 3, size, size) if layout == "NCHW" else (1, size, size, 3)
    b = GraphBuilder(name, shape, input_name="input_image", seed=seed, same_mode=same_mode)
    x0 = b.input if layout == "NCHW" else b.transpose(b.input, (0, 3, 1, 2))
    return b, Slim(b, width, x0)


def _finish(b: GraphBuilder, endpoints: Endpoints, size: int) -> GraphBuilder:
    b.output(endpoints[-1])
    b.metadata["model_zoo.endpoints"] = ",".join(endpoints)
    b.metadata["model_zoo.input_size"] = str(size)
    return b


# ------------------------------------------------------------------------------------ AlexNet, VGG
def alexnet_v2(size: int = 224, width: float = 0.125, same_mode: str = "explicit",
               seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """alexnet_v2 to pool5: conv1 11x11/4 VALID, 3x3/2 VALID pools, SAME convs."""
    b, s = _start("alexnet_v2", size, width, same_mode, seed, layout)
    ep = lambda n: f"alexnet_v2/{n}"
    x = s.conv(s.x0, 64, 11, 4, "VALID", name=ep("conv1"))
    x = s.max_pool(x, 3, 2, name=ep("pool1"))
    x = s.conv(x, 192, 5, name=ep("conv2"))
    x = s.max_pool(x, 3, 2, name=ep("pool2"))
    x = s.conv(x, 384, 3, name=ep("conv3"))
    x = s.conv(x, 384, 3, name=ep("conv4"))
    x = s.conv(x, 256, 3, name=ep("conv5"))
    s.max_pool(x, 3, 2, name=ep("pool5"))
    names = ["conv1", "pool1", "conv2", "conv3", "conv4", "conv5", "pool5"]
    return _finish(b, [ep(n) for n in names], size)


VGG_GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "vgg_a": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),            # configuration A
    "vgg_16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),           # configuration D
}
"""(convs, depth) of each group of 3x3 'SAME' convs, each group followed by a 2x2/2 max pool."""

VGG_CONV_ENDPOINTS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1",
                      "conv5_2")
"""The conv end points rf_benchmark lists for both VGGs (every conv of vgg_a; not vgg_16's last ones)."""


def vgg(name: str = "vgg_16", size: int = 224, width: float = 0.125, same_mode: str = "explicit",
        seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """vgg_a / vgg_16 to pool5: 3x3 SAME convs, 2x2/2 VALID max pools (``VGG_GROUPS``)."""
    b, s = _start(name, size, width, same_mode, seed, layout)
    x, eps = s.x0, []
    for i, (n, d) in enumerate(VGG_GROUPS[name], start=1):
        for j in range(1, n + 1):
            x = s.conv(x, d, 3, name=f"{name}/conv{i}/conv{i}_{j}")
            if f"conv{i}_{j}" in VGG_CONV_ENDPOINTS:
                eps.append(x)
        x = s.max_pool(x, 2, 2, name=f"{name}/pool{i}")
        eps.append(x)
    return _finish(b, eps, size)


def vgg_16(**kw: Any) -> GraphBuilder:
    """vgg_16 (configuration D) to pool5."""
    return vgg("vgg_16", **kw)


def vgg_a(**kw: Any) -> GraphBuilder:
    """vgg_a (configuration A, 8 convs) to pool5."""
    return vgg("vgg_a", **kw)


# ------------------------------------------------------------------------------------ MobileNet v1
MOBILENET_V1_DEFS: list[tuple[str, int, int]] = (
    [("conv", 2, 32), ("sep", 1, 64), ("sep", 2, 128), ("sep", 1, 128), ("sep", 2, 256),
     ("sep", 1, 256), ("sep", 2, 512)] + [("sep", 1, 512)] * 5 + [("sep", 2, 1024), ("sep", 1, 1024)])


def mobilenet_v1(size: int = 224, width: float = 0.125, depth_multiplier: float = 1.0,
                 same_mode: str = "explicit", seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """mobilenet_v1_base: 3x3/2 conv, then 13 depthwise-3x3 (SAME) + pointwise-1x1 pairs, ReLU6."""
    name = "mobilenet_v1" if depth_multiplier == 1.0 else f"mobilenet_v1_{int(depth_multiplier * 100):03d}"
    b, s = _start(name, size, width * depth_multiplier, same_mode, seed, layout)
    s.act = "relu6"
    x, eps = s.x0, []
    for i, (kind, stride, d) in enumerate(MOBILENET_V1_DEFS):
        if kind == "conv":
            x = s.conv(x, d, 3, stride, name=f"Conv2d_{i}")
        else:
            x = b.relu6(b.depthwise_conv(x, 3, stride, "SAME"), name=f"Conv2d_{i}_depthwise")
            x = s.conv(x, d, 1, name=f"Conv2d_{i}_pointwise")
        eps.append(x)
    return _finish(b, eps, size)


# ------------------------------------------------------------------------------------ ResNet v1, v2
RESNET_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
"""Bottleneck units per block of resnet_v1_N and resnet_v2_N (the same for both versions)."""

Unit = Callable[[GraphBuilder, Slim, str, int, int, int], str]


def _shortcut(b: GraphBuilder, s: Slim, x: str, conv_input: str, depth: int, stride: int) -> str:
    """Bottleneck shortcut: ``x`` subsampled (1x1/stride max pool, resnet_utils.subsample) when
    the depth is kept, else a 1x1/stride conv (no activation) of ``conv_input``."""
    if s.depth(depth) == b.channels(x):
        return x if stride == 1 else s.max_pool(x, 1, stride, "SAME")
    return s.conv(conv_input, depth, 1, stride, act=False)


def _bottleneck_v1(b: GraphBuilder, s: Slim, x: str, depth: int, bottleneck: int,
                   stride: int) -> str:
    """resnet_v1.bottleneck: shortcut + 1x1, 3x3 conv2d_same (stride), 1x1; ReLU of the sum."""
    shortcut = _shortcut(b, s, x, x, depth, stride)
    r = s.conv(x, bottleneck, 1)
    r = s.conv2d_same(r, bottleneck, 3, stride)
    r = s.conv(r, depth, 1, act=False)
    return b.relu(b.add(shortcut, r))


def _bottleneck_v2(b: GraphBuilder, s: Slim, x: str, depth: int, bottleneck: int,
                   stride: int) -> str:
    """resnet_v2.bottleneck (pre-activation): BN+ReLU 'preact' feeds the convs and a projection
    shortcut; 1x1, 3x3 conv2d_same (stride), 1x1; the sum is not activated."""
    preact = b.relu(b.batchnorm(x))
    shortcut = _shortcut(b, s, x, preact, depth, stride)
    r = s.conv(preact, bottleneck, 1)
    r = s.conv2d_same(r, bottleneck, 3, stride)
    r = s.conv(r, depth, 1, act=False)
    return b.add(shortcut, r)


def _resnet(name: str, depth: int, unit: Unit, root_act: bool, size: int, width: float,
            same_mode: str, seed: int, layout: str) -> GraphBuilder:
    """resnet_vX_N (num_classes=None, global_pool=False, resnet_arg_scope) to block4.

    Root: conv2d_same 7x7/2 (not activated in v2), max_pool 3x3/2 'SAME'.  Blocks 1-3 stride 2
    *in their last unit* (slim's convention, see resnet_utils), block4 stride 1; each block's end
    point is its last unit's output (resnet_v2's 'postnorm' after block4 is no end point).
    """
    b, s = _start(name, size, width, same_mode, seed, layout)
    x = s.conv2d_same(s.x0, 64, 7, 2, act=root_act)
    x = s.max_pool(x, 3, 2, "SAME")
    eps = []
    for i, (units, base, stride) in enumerate(zip(RESNET_UNITS[depth], (64, 128, 256, 512),
                                                   (2, 2, 2, 1)), start=1):
        for u in range(units):
            with b.scope(f"{name}/block{i}/unit_{u + 1}"):
                x = unit(b, s, x, 4 * base, base, stride if u == units - 1 else 1)
        x = b.identity(x, name=f"{name}/block{i}")
        eps.append(x)
    return _finish(b, eps, size)


def resnet_v1(depth: int = 50, size: int = 224, width: float = 0.125, same_mode: str = "explicit",
              seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """resnet_v1_N to block4 (post-activation bottlenecks, see ``_resnet``)."""
    return _resnet(f"resnet_v1_{depth}", depth, _bottleneck_v1, True, size, width, same_mode,
                   seed, layout)


def resnet_v2(depth: int = 50, size: int = 224, width: float = 0.125, same_mode: str = "explicit",
              seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """resnet_v2_N to block4 (pre-activation bottlenecks, see ``_resnet``)."""
    return _resnet(f"resnet_v2_{depth}", depth, _bottleneck_v2, False, size, width, same_mode,
                   seed, layout)


# ------------------------------------------------------------------------------------ Inception
Branch = Callable[[str], str]


def _bind(fn: Callable[[str, int], str], depth: int) -> Branch:
    """``fn`` with its depth bound now (a lambda in a loop would read the loop's last value)."""
    return lambda t: fn(t, depth)


def _mixed(b: GraphBuilder, x: str, name: str, branches: Sequence[Branch]) -> str:
    """An inception module: each branch in scope ``name/Branch_i``, concatenated as ``name``."""
    outs = []
    for i, fn in enumerate(branches):
        with b.scope(f"{name}/Branch_{i}"):
            outs.append(fn(x))
    return b.concat(outs, name=name)


def inception_v2(size: int = 224, width: float = 0.125, same_mode: str = "explicit",
                 seed: int = 0, layout: str = "NCHW", use_separable_conv: bool = True
                 ) -> GraphBuilder:
    """inception_v2_base to Mixed_5c (7x7/2 root, separable unless ``use_separable_conv`` is
    False; all layers 'SAME')."""
    name = "inception_v2" if use_separable_conv else "inception_v2-no-separable-conv"
    b, s = _start(name, size, width, same_mode, seed, layout)
    eps = []
    if use_separable_conv:
        mult = min(int(s.depth(64) / 3), 8) or 1
        x = s.separable(s.x0, 64, 7, 2, mult, name="Conv2d_1a_7x7")
    else:
        x = s.conv(s.x0, 64, 7, 2, name="Conv2d_1a_7x7")
    eps.append(x)
    x = s.max_pool(x, 3, 2, "SAME", name="MaxPool_2a_3x3"); eps.append(x)
    x = s.conv(x, 64, 1, name="Conv2d_2b_1x1"); eps.append(x)
    x = s.conv(x, 192, 3, name="Conv2d_2c_3x3"); eps.append(x)
    x = s.max_pool(x, 3, 2, "SAME", name="MaxPool_3a_3x3"); eps.append(x)

    def module(x: str, name: str, d0: int, d1: tuple[int, int], d2: tuple[int, int, int],
               pool: str, d3: int) -> str:
        pool_fn = s.avg_pool if pool == "avg" else (lambda t, k: s.max_pool(t, k, 1, "SAME"))
        return _mixed(b, x, name, [
            lambda t: s.conv(t, d0, 1),
            lambda t: s.conv(s.conv(t, d1[0], 1), d1[1], 3),
            lambda t: s.conv(s.conv(s.conv(t, d2[0], 1), d2[1], 3), d2[2], 3),
            lambda t: s.conv(pool_fn(t, 3), d3, 1)])

    def reduction(x: str, name: str, d0: tuple[int, int], d1: tuple[int, int, int]) -> str:
        return _mixed(b, x, name, [
            lambda t: s.conv(s.conv(t, d0[0], 1), d0[1], 3, 2),
            lambda t: s.conv(s.conv(s.conv(t, d1[0], 1), d1[1], 3), d1[2], 3, 2),
            lambda t: s.max_pool(t, 3, 2, "SAME")])

    x = module(x, "Mixed_3b", 64, (64, 64), (64, 96, 96), "avg", 32); eps.append(x)
    x = module(x, "Mixed_3c", 64, (64, 96), (64, 96, 96), "avg", 64); eps.append(x)
    x = reduction(x, "Mixed_4a", (128, 160), (64, 96, 96)); eps.append(x)
    x = module(x, "Mixed_4b", 224, (64, 96), (96, 128, 128), "avg", 128); eps.append(x)
    x = module(x, "Mixed_4c", 192, (96, 128), (96, 128, 128), "avg", 128); eps.append(x)
    x = module(x, "Mixed_4d", 160, (128, 160), (128, 160, 160), "avg", 96); eps.append(x)
    x = module(x, "Mixed_4e", 96, (128, 192), (160, 192, 192), "avg", 96); eps.append(x)
    x = reduction(x, "Mixed_5a", (128, 192), (192, 256, 256)); eps.append(x)
    x = module(x, "Mixed_5b", 352, (192, 320), (160, 224, 224), "avg", 128); eps.append(x)
    x = module(x, "Mixed_5c", 352, (192, 320), (192, 224, 224), "max", 128); eps.append(x)
    return _finish(b, eps, size)


def _inception_v3_stem(b: GraphBuilder, s: Slim, eps: Endpoints, padding: str = "VALID") -> str:
    """Stem shared by inception_v3 and inception_resnet_v2; ``padding`` of every layer but
    Conv2d_2b_3x3 ('SAME' in inception_resnet_v2 with align_feature_maps=True)."""
    x = s.conv(s.x0, 32, 3, 2, padding, name="Conv2d_1a_3x3"); eps.append(x)
    x = s.conv(x, 32, 3, 1, padding, name="Conv2d_2a_3x3"); eps.append(x)
    x = s.conv(x, 64, 3, name="Conv2d_2b_3x3"); eps.append(x)
    x = s.max_pool(x, 3, 2, padding, name="MaxPool_3a_3x3"); eps.append(x)
    x = s.conv(x, 80, 1, 1, padding, name="Conv2d_3b_1x1"); eps.append(x)
    x = s.conv(x, 192, 3, 1, padding, name="Conv2d_4a_3x3"); eps.append(x)
    x = s.max_pool(x, 3, 2, padding, name="MaxPool_5a_3x3"); eps.append(x)
    return x


def _chain(s: Slim, t: str, layers: Sequence[tuple]) -> str:
    """Apply conv layers given as (depth, kernel[, stride, padding]) tuples in sequence."""
    for layer in layers:
        t = s.conv(t, *layer)
    return t


def inception_v3(size: int = 299, width: float = 0.125, same_mode: str = "explicit",
                 seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """inception_v3_base to Mixed_7c: VALID stem and VALID stride-2 reductions, SAME elsewhere."""
    b, s = _start("inception_v3", size, width, same_mode, seed, layout)
    eps: Endpoints = []
    x = _inception_v3_stem(b, s, eps)
    avg = lambda t: s.avg_pool(t, 3)
    for name, d3 in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 64, 1),
            lambda t: _chain(s, t, [(48, 1), (64, 5)]),
            lambda t: _chain(s, t, [(64, 1), (96, 3), (96, 3)]),
            _bind(lambda t, d3: s.conv(avg(t), d3, 1), d3)]); eps.append(x)
    x = _mixed(b, x, "Mixed_6a", [
        lambda t: s.conv(t, 384, 3, 2, "VALID"),
        lambda t: _chain(s, t, [(64, 1), (96, 3), (96, 3, 2, "VALID")]),
        lambda t: s.max_pool(t, 3, 2, "VALID")]); eps.append(x)
    for name, d in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 192, 1),
            _bind(lambda t, d: _chain(s, t, [(d, 1), (d, (1, 7)), (192, (7, 1))]), d),
            _bind(lambda t, d: _chain(s, t, [(d, 1), (d, (7, 1)), (d, (1, 7)), (d, (7, 1)),
                                             (192, (1, 7))]), d),
            lambda t: s.conv(avg(t), 192, 1)]); eps.append(x)
    x = _mixed(b, x, "Mixed_7a", [
        lambda t: _chain(s, t, [(192, 1), (320, 3, 2, "VALID")]),
        lambda t: _chain(s, t, [(192, 1), (192, (1, 7)), (192, (7, 1)), (192, 3, 2, "VALID")]),
        lambda t: s.max_pool(t, 3, 2, "VALID")]); eps.append(x)
    for name in ("Mixed_7b", "Mixed_7c"):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 320, 1),
            lambda t: _split_1x3_3x1(b, s, s.conv(t, 384, 1), 384),
            lambda t: _split_1x3_3x1(b, s, _chain(s, t, [(448, 1), (384, 3)]), 384),
            lambda t: s.conv(avg(t), 192, 1)]); eps.append(x)
    return _finish(b, eps, size)


def _split_1x3_3x1(b: GraphBuilder, s: Slim, t: str, d: int) -> str:
    """Concat of a 1x3 and a 3x1 conv of the same input (Inception v3/v4 'C' modules)."""
    return b.concat([s.conv(t, d, (1, 3)), s.conv(t, d, (3, 1))])


def inception_v4(size: int = 299, width: float = 0.125, same_mode: str = "explicit",
                 seed: int = 0, layout: str = "NCHW") -> GraphBuilder:
    """inception_v4_base to Mixed_7d (4 A, 7 B, 3 C blocks; VALID stem and reductions)."""
    b, s = _start("inception_v4", size, width, same_mode, seed, layout)
    eps: Endpoints = []
    x = s.conv(s.x0, 32, 3, 2, "VALID", name="Conv2d_1a_3x3"); eps.append(x)
    x = s.conv(x, 32, 3, 1, "VALID", name="Conv2d_2a_3x3"); eps.append(x)
    x = s.conv(x, 64, 3, name="Conv2d_2b_3x3"); eps.append(x)
    x = _mixed(b, x, "Mixed_3a", [lambda t: s.max_pool(t, 3, 2, "VALID"),
                                  lambda t: s.conv(t, 96, 3, 2, "VALID")]); eps.append(x)
    x = _mixed(b, x, "Mixed_4a", [
        lambda t: _chain(s, t, [(64, 1), (96, 3, 1, "VALID")]),
        lambda t: _chain(s, t, [(64, 1), (64, (1, 7)), (64, (7, 1)), (96, 3, 1, "VALID")])])
    eps.append(x)
    x = _mixed(b, x, "Mixed_5a", [lambda t: s.conv(t, 192, 3, 2, "VALID"),
                                  lambda t: s.max_pool(t, 3, 2, "VALID")]); eps.append(x)
    avg = lambda t: s.avg_pool(t, 3)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_5e"):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 96, 1),
            lambda t: _chain(s, t, [(64, 1), (96, 3)]),
            lambda t: _chain(s, t, [(64, 1), (96, 3), (96, 3)]),
            lambda t: s.conv(avg(t), 96, 1)]); eps.append(x)
    x = _mixed(b, x, "Mixed_6a", [
        lambda t: s.conv(t, 384, 3, 2, "VALID"),
        lambda t: _chain(s, t, [(192, 1), (224, 3), (256, 3, 2, "VALID")]),
        lambda t: s.max_pool(t, 3, 2, "VALID")]); eps.append(x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_6f", "Mixed_6g",
                 "Mixed_6h"):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 384, 1),
            lambda t: _chain(s, t, [(192, 1), (224, (1, 7)), (256, (7, 1))]),
            lambda t: _chain(s, t, [(192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)),
                                    (256, (1, 7))]),
            lambda t: s.conv(avg(t), 128, 1)]); eps.append(x)
    x = _mixed(b, x, "Mixed_7a", [
        lambda t: _chain(s, t, [(192, 1), (192, 3, 2, "VALID")]),
        lambda t: _chain(s, t, [(256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3, 2, "VALID")]),
        lambda t: s.max_pool(t, 3, 2, "VALID")]); eps.append(x)
    for name in ("Mixed_7b", "Mixed_7c", "Mixed_7d"):
        x = _mixed(b, x, name, [
            lambda t: s.conv(t, 256, 1),
            lambda t: _split_1x3_3x1(b, s, s.conv(t, 384, 1), 256),
            lambda t: _split_1x3_3x1(b, s, _chain(s, t, [(384, 1), (448, (3, 1)),
                                                          (512, (1, 3))]), 256),
            lambda t: s.conv(avg(t), 256, 1)]); eps.append(x)
    return _finish(b, eps, size)


def _residual(b: GraphBuilder, s: Slim, x: str, name: str, branches: Sequence[Branch],
              scale: float, act: bool = True) -> str:
    """Inception-ResNet block: concat branches, 1x1 'up' conv (no act), x + scale*up, ReLU."""
    with b.scope(name):
        mixed = b.concat([_in_scope(b, f"Branch_{i}", fn, x) for i, fn in enumerate(branches)])
        up = b.conv(mixed, b.channels(x), 1, padding="SAME")
        y = b.add(x, b.scale(up, scale))
        return b.relu(y) if act else y


def _in_scope(b: GraphBuilder, scope: str, fn: Branch, x: str) -> str:
    with b.scope(scope):
        return fn(x)


def inception_resnet_v2(size: int = 299, width: float = 0.125, same_mode: str = "explicit",
                        seed: int = 0, layout: str = "NCHW", align_feature_maps: bool = False
                        ) -> GraphBuilder:
    """inception_resnet_v2_base (output_stride=16) to Conv2d_7b_1x1.  The stem and the stride-2
    reductions are 'VALID', or 'SAME' with ``align_feature_maps`` (rf_benchmark's '-same')."""
    name = "inception_resnet_v2-same" if align_feature_maps else "inception_resnet_v2"
    b, s = _start(name, size, width, same_mode, seed, layout)
    pad = "SAME" if align_feature_maps else "VALID"
    eps: Endpoints = []
    x = _inception_v3_stem(b, s, eps, pad)
    x = _mixed(b, x, "Mixed_5b", [
        lambda t: s.conv(t, 96, 1),
        lambda t: _chain(s, t, [(48, 1), (64, 5)]),
        lambda t: _chain(s, t, [(64, 1), (96, 3), (96, 3)]),
        lambda t: s.conv(s.avg_pool(t, 3), 64, 1)]); eps.append(x)
    for i in range(10):
        x = _residual(b, s, x, f"Repeat/block35_{i + 1}", [
            lambda t: s.conv(t, 32, 1),
            lambda t: _chain(s, t, [(32, 1), (32, 3)]),
            lambda t: _chain(s, t, [(32, 1), (48, 3), (64, 3)])], 0.17)
    x = _mixed(b, x, "Mixed_6a", [
        lambda t: s.conv(t, 384, 3, 2, pad),
        lambda t: _chain(s, t, [(256, 1), (256, 3), (384, 3, 2, pad)]),
        lambda t: s.max_pool(t, 3, 2, pad)]); eps.append(x)
    for i in range(20):
        x = _residual(b, s, x, f"Repeat_1/block17_{i + 1}", [
            lambda t: s.conv(t, 192, 1),
            lambda t: _chain(s, t, [(128, 1), (160, (1, 7)), (192, (7, 1))])], 0.10)
    x = b.identity(x, name="PreAuxLogits"); eps.append(x)
    x = _mixed(b, x, "Mixed_7a", [
        lambda t: _chain(s, t, [(256, 1), (384, 3, 2, pad)]),
        lambda t: _chain(s, t, [(256, 1), (288, 3, 2, pad)]),
        lambda t: _chain(s, t, [(256, 1), (288, 3), (320, 3, 2, pad)]),
        lambda t: s.max_pool(t, 3, 2, pad)]); eps.append(x)
    for i in range(10):
        x = _residual(b, s, x, f"Repeat_2/block8_{i + 1}" if i < 9 else "Block8", [
            lambda t: s.conv(t, 192, 1),
            lambda t: _chain(s, t, [(192, 1), (224, (1, 3)), (256, (3, 1))])], 0.20, act=i < 9)
    x = s.conv(x, 1536, 1, name="Conv2d_7b_1x1"); eps.append(x)
    return _finish(b, eps, size)


SLIM_BUILDERS: dict[str, Callable[..., GraphBuilder]] = {
    "alexnet_v2": alexnet_v2,
    "vgg_16": vgg_16,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v1_075": lambda **kw: mobilenet_v1(depth_multiplier=0.75, **kw),
    "resnet_v1_50": lambda **kw: resnet_v1(50, **kw),
    "resnet_v1_101": lambda **kw: resnet_v1(101, **kw),
    "resnet_v1_152": lambda **kw: resnet_v1(152, **kw),
    "resnet_v1_200": lambda **kw: resnet_v1(200, **kw),
    "inception_v2": inception_v2,
    "inception_v3": inception_v3,
    "inception_v4": inception_v4,
    "inception_resnet_v2": inception_resnet_v2,
}
"""The twelve networks of Araujo et al.'s table, in the table's order of rows by family."""


GRF_EXTRA_BUILDERS: dict[str, Callable[..., GraphBuilder]] = {
    "vgg_a": vgg_a,
    "resnet_v2_50": lambda **kw: resnet_v2(50, **kw),
    "resnet_v2_101": lambda **kw: resnet_v2(101, **kw),
    "resnet_v2_152": lambda **kw: resnet_v2(152, **kw),
    "resnet_v2_200": lambda **kw: resnet_v2(200, **kw),
    "inception_v2-no-separable-conv": lambda **kw: inception_v2(use_separable_conv=False, **kw),
    "inception_resnet_v2-same": lambda **kw: inception_resnet_v2(align_feature_maps=True, **kw),
}
"""The seven other configurations of the receptive_field library's rf_benchmark, named as it
names them."""

GRF_BENCHMARK: tuple[str, ...] = (
    "alexnet_v2", "vgg_a", "vgg_16", "inception_v2", "inception_v2-no-separable-conv",
    "inception_v3", "inception_v4", "inception_resnet_v2", "inception_resnet_v2-same",
    "mobilenet_v1", "mobilenet_v1_075", "resnet_v1_50", "resnet_v1_101", "resnet_v1_152",
    "resnet_v1_200", "resnet_v2_50", "resnet_v2_101", "resnet_v2_152", "resnet_v2_200")
"""The nineteen rf_benchmark configurations, in the order of its table (RECEPTIVE_FIELD_TABLE.md)."""
