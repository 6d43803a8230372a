"""Generator of random multi-path test models: residual, inception-like and U-Net blocks.

Every block keeps the tensor shape consistent so merges are valid; pads are drawn asymmetric on
purpose so that some merges are misaligned.
"""

from __future__ import annotations

import numpy as np

from tests.graphs import G


def _same_pads(rng: np.random.Generator, k_eff: int, ndim: int, symmetric: bool) -> list[int]:
    """Begin/end pads summing to k_eff - 1 (shape-preserving at stride 1)."""
    total = k_eff - 1
    begin = total // 2 if symmetric else int(rng.integers(0, total + 1))
    return [begin] * ndim + [total - begin] * ndim


def residual(g: G, x: str, rng: np.random.Generator, symmetric: bool) -> str:
    k, d = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
    y = g.relu(g.conv(x, k, 1, pads=_same_pads(rng, d * (k - 1) + 1, g.ndim, symmetric), d=d))
    y = g.conv(y, 3, 1, pads=_same_pads(rng, 3, g.ndim, symmetric), cout=g.channels[x])
    return g.add(x, y)


def inception(g: G, x: str, rng: np.random.Generator, symmetric: bool) -> str:
    branches = [g.conv(x, 1, 1)]
    for k in rng.choice([3, 5, 7], size=int(rng.integers(1, 3)), replace=False):
        branches.append(g.conv(x, int(k), 1, pads=_same_pads(rng, int(k), g.ndim, symmetric)))
    branches.append(g.pool("AveragePool", x, 3, 1, pads=_same_pads(rng, 3, g.ndim, symmetric)))
    return g.concat(branches)


def unet(g: G, x: str, rng: np.random.Generator, symmetric: bool) -> str:
    """Down by 2 (strided conv), a conv, up by 2 (Resize or ConvTranspose), added to the skip."""
    down = g.conv(x, 2, 2) if rng.random() < 0.5 else g.conv(x, 3, 2, pads=[1] * g.ndim + [0] * g.ndim)
    mid = g.relu(g.conv(down, 3, 1, pads=[1] * (2 * g.ndim), cout=g.channels[x]))
    kind = rng.integers(0, 4)
    if kind == 0:
        up = g.resize(mid, 2, "nearest", "asymmetric", "floor")
    elif kind == 1:
        up = g.resize(mid, 2, "linear", "half_pixel")
    elif kind == 2:
        up = g.resize(mid, 2, "nearest", "half_pixel", "round_prefer_floor")
    else:
        up = g.conv_t(mid, 2, 2, cout=g.channels[x])
    return g.add(x, up)


def strided(g: G, x: str, rng: np.random.Generator, symmetric: bool) -> str:
    """A chain step that halves the size (k=2 VALID, or k=3 with pads 1/0), conv or pooling."""
    if rng.random() < 0.5:
        return g.pool("AveragePool", x, 2, 2)
    return g.conv(x, 3, 2, pads=[1] * g.ndim + [0] * g.ndim)


def flipped(g: G, x: str, rng: np.random.Generator, symmetric: bool) -> str:
    """A branch reversed along one axis (Slice, step -1), convolved, and either reversed back
    (an aligned residual when pads are symmetric) or added as it is (a mirrored path)."""
    axis = int(rng.integers(0, g.ndim))
    y = g.conv(g.flip(x, axis), 3, 1, pads=_same_pads(rng, 3, g.ndim, symmetric), cout=g.channels[x])
    return g.add(x, g.flip(y, axis) if rng.random() < 0.5 else y)


BLOCKS = [residual, inception, unet, strided]  # all keep the size except strided (halves it)


def random_dag(seed: int, ndim: int = 2, size: int = 16, n_blocks: int = 4,
               symmetric: bool | None = None, flips: bool = False) -> tuple:
    """A random model of ``n_blocks`` blocks on a size**ndim input; returns (model, output).
    ``flips`` adds blocks with reversed (negative-step Slice) branches, every other block."""
    rng = np.random.default_rng(seed)
    sym = bool(rng.random() < 0.5) if symmetric is None else symmetric
    g = G((size,) * ndim, channels=1, seed=seed)
    x = g.conv("x", 1, 1)
    for i in range(n_blocks):
        if flips and i % 2 == 0:
            x = flipped(g, x, rng, sym)
            continue
        block = BLOCKS[int(rng.integers(0, len(BLOCKS)))]
        if block in (unet, strided) and (size < 8 or size % 2):
            block = residual
        x = block(g, x, rng, sym)
        size = size // 2 if block is strided else size
    return g.model(x), x
