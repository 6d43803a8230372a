"""A small ViT and a CNN of similar depth, for comparing their receptive fields.

``vit``: patch embedding (Conv k=s=patch), learned position embedding (an Add of a constant),
``depth`` pre-norm blocks (LayerNorm, multi-head self-attention with MatMul + Softmax, residual;
LayerNorm, GELU MLP, residual), final LayerNorm, mean over tokens (no class token).  Every token
of the first attention block sees every patch, so the TRF of the output is the whole input.

``cnn``: the same patch stem, then ``depth`` residual blocks of two 3x3 convs (ReLU), a
``features`` end point before global average pooling: a local field that grows by 4 patches
per block, next to the ViT's global one.
"""

from __future__ import annotations

import math

import numpy as np

from .builder import GraphBuilder


def _attention(b: GraphBuilder, x: str, heads: int) -> str:
    """Multi-head self-attention on (B, N, D) tokens (B: images, or windows of one image):
    softmax(Q K^T / sqrt(d)) V, projected."""
    bsz, n, dim = b.shape(x)
    d = dim // heads
    split = lambda t: b.transpose(b.reshape(t, (bsz, n, heads, d)), (0, 2, 1, 3))  # (B, h, N, d)
    q, k, v = (split(b.linear(x, dim)) for _ in range(3))
    kt = b.transpose(k, (0, 1, 3, 2))
    scores = b.mul(b.matmul(q, kt), b.const(np.array(1 / math.sqrt(d), np.float32), "scale"))
    att = b.matmul(b.softmax(scores, axis=-1), v)
    merged = b.reshape(b.transpose(att, (0, 2, 1, 3)), (bsz, n, dim))
    return b.linear(merged, dim)


def vit(size: int = 32, patch: int = 4, dim: int = 32, depth: int = 4, heads: int = 4,
        mlp_ratio: int = 2, seed: int = 0) -> GraphBuilder:
    """Small ViT: patch Conv, position embedding, ``depth`` attention blocks, token mean."""
    b = GraphBuilder("vit_small", (1, 3, size, size), seed=seed)
    x = b.conv(b.input, dim, patch, patch, "VALID", name="patch_embed")
    gh, gw = b.spatial(x)
    x = b.transpose(b.reshape(x, (1, dim, gh * gw)), (0, 2, 1))  # (1, N, D)
    pos = b.const((0.02 * b.rng.standard_normal((1, gh * gw, dim))).astype(np.float32), "pos")
    x = b.add(x, pos, name="tokens")
    eps = [x]
    for i in range(depth):
        with b.scope(f"block{i + 1}"):
            y = b.add(x, _attention(b, b.layernorm(x), heads))
            h = b.linear(b.gelu(b.linear(b.layernorm(y), dim * mlp_ratio)), dim)
        x = b.add(y, h, name=f"block{i + 1}")
        eps.append(x)
    x = b.reduce_mean(b.layernorm(x), axes=[1], name="output")
    b.output(x)
    b.metadata["model_zoo.endpoints"] = ",".join(eps + [x])
    return b


def cnn(size: int = 32, patch: int = 4, dim: int = 32, depth: int = 4, seed: int = 0) -> GraphBuilder:
    """CNN twin of ``vit``: same patch stem, ``depth`` residual 3x3 blocks, global average pool."""
    b = GraphBuilder("cnn_small", (1, 3, size, size), seed=seed)
    x = b.conv(b.input, dim, patch, patch, "VALID", name="patch_embed")
    eps = [x]
    for i in range(depth):
        with b.scope(f"block{i + 1}"):
            y = b.relu(b.conv(x, dim, 3, 1, 1))
            y = b.conv(y, dim, 3, 1, 1)
        x = b.relu(b.add(x, y), name=f"block{i + 1}")
        eps.append(x)
    out = b.reshape(b.global_avg_pool(x), (1, dim), name="output")
    b.output(out)
    b.metadata["model_zoo.endpoints"] = ",".join(eps + [out])
    return b
