"""What ONNX ops mean: the only place in rfgraph that knows an op.

Each op family is one module holding, side by side, the receptive-field (TRF) rule and the gradient
(VJP) rule of each of its ops, and ending with its tables ``TRF`` (op -> ``transfer.Rule``) and ``VJP``
(op -> ``gradient.Rule``):

* ``elementwise``: activations, arithmetic, comparisons, Where, Clip, Cast, Identity, Dropout, quantization;
* ``convolution``: Conv, ConvInteger, QLinearConv, ConvTranspose, Col2Im;
* ``pooling``: Max/Average/Lp pools and the global pools;
* ``resampling``: Resize, Upsample, DepthToSpace, SpaceToDepth, GridSample;
* ``layout``: Pad, Slice, Crop, Concat, Split, Gather, Transpose, Reshape, Flatten, (Un)Squeeze, Expand, Tile;
* ``reductions``: Reduce*, ArgMax/ArgMin, TopK;
* ``normalisation``: Batch/Layer/Instance/Group normalisation, MVN, LpNormalization, LRN, Softmax family;
* ``linear``: MatMul, Gemm, MatMulInteger, QLinearMatMul, Einsum;
* ``recurrences``: RNN, GRU, LSTM (TRF only; their gradient is the unrolling in ``rfgraph/unroll.py``);
* ``control_flow``: If, Loop, Scan (refused: subgraphs are out of scope);
* ``contrib``: onnxruntime's own ops (FusedConv, SkipLayerNormalization, QLinearAdd...), no rules:
  each is rewritten as the standard ops it computes when a model is read (``expand_contrib_ops``).

The vocabularies they speak: ``transfer`` (Edge, Transfer, NodeContext, layouts, the generic rule shapes),
``gradient`` (Builder, NodeView, the shared gradient helpers) and ``geometry`` (window geometry decoded once
from the spec).  This module assembles the tables (``TRF_RULES``, ``VJP_RULES``; an op defined by two
families is refused at import) and holds the op sets the other layers read (the TRF pass, the analysis,
the diagnostics, the ERF).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from . import (
    contrib,
    control_flow,
    convolution,
    elementwise,
    layout,
    linear,
    normalisation,
    pooling,
    recurrences,
    reductions,
    resampling,
)
from .gradient import INDEX_OUTPUTS, NON_DIFFERENTIABLE, QUANTIZED_OPS
from .gradient import Rule as VJPRule
from .transfer import Rule, broadcast, pointwise

FAMILIES: tuple[ModuleType, ...] = (elementwise, convolution, pooling, resampling, layout, reductions,
                                    normalisation, linear, recurrences, control_flow, contrib)


def _owners(families: tuple[ModuleType, ...]) -> dict[str, str]:
    """The family that defines each op; an op in two families' tables is a bug, refused here."""
    owner: dict[str, str] = {}
    for family in families:
        name = family.__name__.rsplit(".", 1)[-1]
        for op in set(family.TRF) | set(family.VJP):
            if op in owner:
                raise ImportError(f"op {op} is defined by two families: {owner[op]} and {name}")
            owner[op] = name
    return owner


def _merged(tables: list[Mapping]) -> dict:
    """One op -> rule table from the families' tables (their keys are disjoint: ``_owners``)."""
    return {op: rule for table in tables for op, rule in table.items()}


OWNER = _owners(FAMILIES)
TRF_RULES: dict[str, Rule] = _merged([f.TRF for f in FAMILIES])
VJP_RULES: dict[str, VJPRule] = _merged([f.VJP for f in FAMILIES])

# output unit u reads input unit u (one data input) / broadcast like Add (several)
POINTWISE_OPS = frozenset(op for op, rule in TRF_RULES.items() if rule is pointwise)
BROADCAST_OPS = frozenset(op for op, rule in TRF_RULES.items() if rule is broadcast)

# Ops whose output never depends on input values (shapes only): never layers.
STATIC_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "RandomNormal",
              "RandomUniform", "RandomNormalLike", "RandomUniformLike"}

# Ops whose rule reads only attributes, layouts and shapes, never a constant input's value: the
# pass may reuse one transfer for every node with the same signature (a speed-up, same results).
CACHEABLE_OPS = POINTWISE_OPS | BROADCAST_OPS | {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "Transpose", "Concat", "Flatten", "Softmax", "LogSoftmax", "DepthToSpace", "SpaceToDepth",
    "BatchNormalization",
}

# Op sets the analysis layers read (kept here, beside the rules, so that one place knows ops):
# layers with a sliding window, for the diagnostics' layer table (``geometry.WINDOW_OPS``: the ops
# whose attributes the geometry decoder reads)
WINDOW_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool",
              "LpPool"}
# ops whose ONNX inputs are N, C, spatial...: a graph input they read is channels-first
CHANNELS_FIRST_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool",
                      "LpPool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
                      "InstanceNormalization", "LRN", "SpaceToDepth", "DepthToSpace"}
# ops whose output summed over channels is (nearly) constant: a summed seed's gradient is ~0
NORMALISING_OPS = {"LayerNormalization", "Softmax", "LogSoftmax"}
GATE_OPS = {"Mul", "Add", "Sub", "Div"}  # elementwise ops whose spatially constant, global operand is a gate
# ops whose constant operands line up with the output's axes (broadcast from the right, or a
# Concat's equal ranks): cut along an output axis, such an operand is cut the same way
ALIGNED_OPERAND_OPS = BROADCAST_OPS | {"Concat"}
# ops whose input at that slot is the output's shape (a Reshape or Expand target)
SHAPE_TARGET_OPS = {"Reshape": 1, "Expand": 1}


__all__ = ["ALIGNED_OPERAND_OPS", "BROADCAST_OPS", "CACHEABLE_OPS", "CHANNELS_FIRST_OPS", "FAMILIES",
           "GATE_OPS", "INDEX_OUTPUTS", "NON_DIFFERENTIABLE", "NORMALISING_OPS", "OWNER", "POINTWISE_OPS",
           "QUANTIZED_OPS", "SHAPE_TARGET_OPS", "STATIC_OPS", "TRF_RULES", "VJP_RULES", "WINDOW_OPS"]
