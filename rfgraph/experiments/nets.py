"""Small nets the zoo does not have, built with ``model_zoo.GraphBuilder``: plain and residual 3x3
stacks of equal depth, with optional (training-mode) dropout whose mask is drawn per build."""

from __future__ import annotations

import numpy as np
import onnx

from model_zoo.builder import GraphBuilder


def stack(blocks: int, residual: bool, channels: int = 8, size: int | None = None, seed: int = 0,
          dropout: float = 0.0) -> onnx.ModelProto:
    """``blocks`` x (3x3 conv, ReLU, 3x3 conv [+ identity], ReLU): 2*blocks conv layers, TRF
    4*blocks+1.  ``dropout`` p multiplies every ReLU output by a fixed Bernoulli(1-p)/(1-p) mask
    drawn from ``seed`` (dropout as in training: one mask per run)."""
    size = size or 2 * (4 * blocks + 1) + 9
    b = GraphBuilder(f"{'res' if residual else 'plain'}_{blocks}", (1, channels, size, size),
                     seed=seed)
    rng = np.random.default_rng(seed + 7_919)
    x = b.input
    for i in range(blocks):
        with b.scope(f"block{i + 1}"):
            y = _drop(b, b.relu(b.conv(x, channels, 3, 1, 1, bias=False)), dropout, rng)
            y = b.conv(y, channels, 3, 1, 1, bias=False)
            x = _drop(b, b.relu(b.add(x, y) if residual else y), dropout, rng)
    b.output(b.identity(x, name="output"))
    return b.build()


def _drop(b: GraphBuilder, x: str, p: float, rng: np.random.Generator) -> str:
    """Inverted dropout with a mask fixed at build time (identity when p = 0)."""
    if p <= 0:
        return x
    mask = (rng.random(b.shape(x)) >= p).astype(np.float32) / np.float32(1 - p)
    return b.mul(x, b.const(mask, "dropout_mask"))
