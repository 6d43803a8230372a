"""The experiment networks of Luo et al. 2016 and of the receptive-field blog (HighResNet).

* ``conv_stack``: n conv layers kxk stride 1 (Luo sec. 2-3, fig. 1-2), weights all ones
  ("uniform") or random, with no nonlinearity or ReLU / Tanh / Sigmoid after each layer.
  TRF r = n(k-1)+1 (eq. 2 with s=1).
* ``conv15``: the 15-layer baseline of sec. 3.1 and its two variants, 'subsample' (3 of the 15 layers
  with stride 2) and 'dilation' (3 of them dilated by 2, 4, 8).  Which 3 layers is not stated; we
  take layers 5, 10, 15 (evenly spread), documented in ``CONV15_SPECIAL``.
* ``cifar_resnet``: 17 residual blocks (two 3x3 convs each), no pooling or downsampling (sec. 3.2).
* ``camvid_frontend``: 16 residual blocks interleaved with 4 subsamplings by 2 (sec. 3.2).
* ``dilated_stack``: Yu & Koltun's 3x3 convs dilated 1, 2, 4 (blog): r = 3, 7, 15.
* ``highresnet``: HighResNet (Li et al. 2017, 2-D): 3x3 conv, then 3 residual blocks at each of
  dilations 1, 2, 4 (two 3x3 convs per block), 1x1 head; 2^9 paths, max path RF 87 (blog).

The paper gives block counts but not the stem, the subsampling op or where the subsamplings sit;
those choices are parameters here, and their defaults are discussed in ``tests/test_model_zoo.py``
(where the reported TRFs, 74 and 505, are checked against what the architectures can give).
"""

from __future__ import annotations

from collections.abc import Sequence

from .builder import GraphBuilder

CONV15_SPECIAL = (4, 9, 14)  # 0-based indices of the 3 layers made strided / dilated in conv15


def _finish(b: GraphBuilder, out: str, endpoints: Sequence[str] = ()) -> GraphBuilder:
    b.output(out)
    b.metadata["model_zoo.endpoints"] = ",".join(list(endpoints) + [out])
    return b


def conv_stack(n: int = 10, k: int = 3, act: str = "linear", weights: str = "random",
               size: int | None = None, channels: int = 1, seed: int = 0) -> GraphBuilder:
    """n conv layers kxk, stride 1, 'same' zero padding, no bias, optional nonlinearity.

    ``size`` defaults to twice the TRF (plus a margin) so the centre unit's field is never clipped.
    """
    size = size or 2 * n * (k - 1) + 9
    b = GraphBuilder(f"luo_conv_{act}_{weights}_{n}", (1, channels, size, size),
                     weights="ones" if weights == "uniform" else "random", seed=seed)
    x = b.input
    for i in range(n):
        x = b.conv(x, channels, k, 1, (k - 1) // 2, bias=False)
        x = b.activation(x, act, name=f"layer{i + 1}" if act not in ("linear", None) else None)
    return _finish(b, b.identity(x, name="output"))


def conv15(variant: str = "baseline", k: int = 3, act: str = "relu", weights: str = "random",
           size: int = 96, channels: int = 1, seed: int = 0) -> GraphBuilder:
    """Luo sec. 3.1: 15 conv layers; 'subsample' or 'dilation' change 3 of them."""
    if variant not in ("baseline", "subsample", "dilation"):
        raise ValueError("variant must be baseline, subsample or dilation")
    b = GraphBuilder(f"luo_conv15_{variant}", (1, channels, size, size),
                     weights="ones" if weights == "uniform" else "random", seed=seed)
    x, dil = b.input, iter((2, 4, 8))
    for i in range(15):
        stride = 2 if variant == "subsample" and i in CONV15_SPECIAL else 1
        d = next(dil) if variant == "dilation" and i in CONV15_SPECIAL else 1
        x = b.conv(x, channels, k, stride, d * (k - 1) // 2, dilation=d, bias=False)
        x = b.activation(x, act)
    return _finish(b, b.identity(x, name="output"))


def _basic_block(b: GraphBuilder, x: str, channels: int, dilation: int = 1, stride: int = 1,
                 name: str | None = None) -> str:
    """Residual block: conv3x3(stride) - ReLU - conv3x3, plus shortcut (1x1/stride conv if needed)."""
    y = b.relu(b.conv(x, channels, 3, stride, dilation, dilation=dilation))
    y = b.conv(y, channels, 3, 1, dilation, dilation=dilation)
    short = x
    if stride != 1 or b.channels(x) != channels:
        short = b.conv(x, channels, 1, stride, 0)
    return b.relu(b.add(short, y), name=name)


def cifar_resnet(blocks: int = 17, channels: int = 16, stem: int = 3, size: int = 32,
                 seed: int = 0) -> GraphBuilder:
    """Luo sec. 3.2 classification net: stem conv, ``blocks`` residual blocks, no downsampling.

    TRF = stem + 4*blocks (eq. 2, all strides 1): 71 with the usual 3x3 stem (He et al.'s CIFAR
    ResNet).  Stride-1 odd kernels only ever give odd r, so the paper's 74 is not reachable by any
    such net (see tests/test_model_zoo.py).
    """
    b = GraphBuilder("luo_cifar_resnet", (1, 3, size, size), seed=seed)
    x = b.relu(b.conv(b.input, channels, stem, 1, (stem - 1) // 2), name="stem")
    eps = []
    for i in range(blocks):
        with b.scope(f"block{i + 1}"):
            x = _basic_block(b, x, channels)
        x = b.identity(x, name=f"block{i + 1}")
        eps.append(x)
    return _finish(b, b.identity(x, name="output"), eps)


CAMVID_LAYOUT = (3, 3, 3, 3, 4)  # blocks before the 1st subsampling, then after each of the 4


def camvid_frontend(layout: Sequence[int] = CAMVID_LAYOUT, channels: int = 16, stem: int = 7,
                    head: int = 3, size: int = 64, seed: int = 0) -> GraphBuilder:
    """Luo sec. 3.2 segmentation front end: 16 residual blocks, 4 subsamplings by 2 (output 1/16).

    Stem kxk conv, then ``layout[0]`` blocks, then 4 times (3x3 stride-2 conv, ``layout[i]``
    blocks), then a 3x3 output conv.  With the defaults the TRF is 505, as the paper reports.
    """
    b = GraphBuilder("luo_camvid_frontend", (1, 3, size, size), seed=seed)
    x = b.relu(b.conv(b.input, channels, stem, 1, (stem - 1) // 2), name="stem")
    eps, n = [], 0
    for stage, count in enumerate(layout):
        if stage:
            x = b.relu(b.conv(x, channels, 3, 2, 1), name=f"subsample{stage}")
            eps.append(x)
        for _ in range(count):
            n += 1
            with b.scope(f"block{n}"):
                x = _basic_block(b, x, channels)
            x = b.identity(x, name=f"block{n}")
            eps.append(x)
    x = b.conv(x, channels, head, 1, (head - 1) // 2, name="output")
    return _finish(b, x, eps)


def dilated_stack(dilations: Sequence[int] = (1, 2, 4), k: int = 3, size: int = 33,
                  seed: int = 0) -> GraphBuilder:
    """Yu & Koltun's dilated 3x3 stack (the blog's example): layers a, b, c with k' = d(k-1)+1."""
    b = GraphBuilder("dilated_stack", (1, 1, size, size), seed=seed)
    x, eps = b.input, []
    for i, d in enumerate(dilations):
        x = b.conv(x, 1, k, 1, d * (k - 1) // 2, dilation=d, bias=False, name=chr(ord("a") + i))
        eps.append(x)
    return _finish(b, b.identity(x, name="output"), eps)


HIGHRESNET_DILATIONS = (1, 1, 1, 2, 2, 2, 4, 4, 4)


def highresnet(channels: int = 16, size: int = 96, seed: int = 0) -> GraphBuilder:
    """HighResNet (2-D): 3x3 conv, 9 residual blocks (dilations 1,1,1,2,2,2,4,4,4), 1x1 convs."""
    b = GraphBuilder("highresnet", (1, 1, size, size), seed=seed)
    x = b.relu(b.conv(b.input, channels, 3, 1, 1), name="conv0")
    eps = []
    for i, d in enumerate(HIGHRESNET_DILATIONS):
        width = channels * d  # 16, 32, 64 features as in the paper
        with b.scope(f"res{i + 1}"):
            x = _basic_block(b, x, width, dilation=d)
        x = b.identity(x, name=f"res{i + 1}")
        eps.append(x)
    x = b.relu(b.conv(x, 80, 1, 1, 0))
    return _finish(b, b.conv(x, 2, 1, 1, 0, name="output"), eps)
