"""Attention products of a few query rows reassociated through the key and value projections.

A unit on one token (``rfgraph.trim``) leaves the last block's attention with one query row, but its
keys and values still come from projections of every token: k = x Wk + bk, v = x Wv + bv, laid out
per head by Reshape and Transpose nodes.  Through that one row the products regroup:

    q k^T = (q Wk_h^T) x^T + q bk_h        a v = (a x) Wv_h + (a 1) bv_h

per head h (Wk_h the head's columns), so neither projection is computed: products of m rows where
the projection took every token's (ViT-S's last block: 58M multiply-accumulates forward, as many
backward).  Exact up to rounding order.  The layout chain is read by applying it to arrays of the
projection's (token, column) indices, so any Reshape/Transpose/Squeeze/Unsqueeze spelling works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .projections import linear_layer, only_reader, readers_of
from .semantics.gradient import Builder

LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


def reassociated(b: Builder, forward: list[onnx.NodeProto], y_name: str) -> list[onnx.NodeProto]:
    """``forward`` with each MatMul(l, r) of few rows whose r is a per-head layout of a projection
    x W (+ c) read only there rewritten as above, where that costs fewer multiply-accumulates."""
    readers = readers_of(forward)
    producers = {o: n for n in forward for o in n.output if o}
    out = list(forward)
    for node in forward:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.output[0] == y_name:
            continue
        found = _projected_operand(b, node, producers, readers, y_name)
        if found is None:
            continue
        chain, x, weight, bias, token, column = found
        new_nodes = _regrouped(b, node, x, weight, bias, token, column)
        if new_nodes is None:
            continue
        drop = {id(n) for n in chain} | {id(node)}
        at = out.index(node)
        out = [n for n in out[:at] if id(n) not in drop] + new_nodes + [n for n in out[at + 1:] if id(n) not in drop]
    return out


Projected = tuple[list[onnx.NodeProto], str, np.ndarray, "np.ndarray | None", int, np.ndarray]


def _projected_operand(b: Builder, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                       readers: dict[str, list[onnx.NodeProto]], y_name: str) -> Projected | None:
    """(the chain's nodes, x, W, c or None, token axis of r, r's column index array) when the
    MatMul's second operand r is a layout of x W (+ c) whose tensors nothing else reads."""
    left, right = node.input
    lshape, rshape = b.shape(left), b.shape(right)
    if len(lshape) != 4 or len(rshape) != 4 or not b.is_active(left) or left == right:
        return None
    chain: list[onnx.NodeProto] = []
    t, scale = right, 1.0
    while True:
        p = producers.get(t)
        if p is None or not only_reader(t, chain[0] if chain else node, readers) or t == y_name:
            return None
        scaled = b.scalar_scaling(p)
        if scaled is not None:  # torch's attention scales k^T by sqrt(scale): into W and c
            scale *= scaled[1]
        elif p.op_type not in LAYOUT_OPS or p.domain not in ("", "ai.onnx"):
            break
        chain.insert(0, p)
        t = p.input[0] if scaled is None else scaled[0]
    linear = linear_layer(t, producers, readers, b.constant_or_folded)
    if linear is None or linear.nodes[0].op_type != "MatMul" or linear.weight.ndim != 2 or not b.is_active(linear.x):
        return None
    nodes, x, weight, bias = list(linear.nodes), linear.x, linear.weight, linear.bias
    weight = weight * np.asarray(scale, weight.dtype)
    bias = None if bias is None else bias * np.asarray(scale, bias.dtype)
    xshape = b.shape(x)
    if len(xshape) != 3 or xshape[0] != 1 or b.shape(t) != xshape[:2] + (weight.shape[1],):
        return None
    tokens, cols = _indices(b, chain, xshape[1], weight.shape[1])
    if tokens is None or cols is None:
        return None
    axis = _token_axis(tokens)
    if axis is None or not _heads_columns(cols, axis):
        return None
    return nodes + chain, x, weight, bias, axis, cols


def _indices(b: Builder, chain: Sequence[onnx.NodeProto], tokens: int, columns: int
             ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The layout chain applied to the projection's token and column indices (shape (1, T, N))."""
    tok: np.ndarray | None = np.broadcast_to(np.arange(tokens)[None, :, None], (1, tokens, columns))
    col: np.ndarray | None = np.broadcast_to(np.arange(columns)[None, None, :], (1, tokens, columns))
    for node in chain:
        if tok is None or col is None:
            break
        tok, col = _apply(b, node, tok), _apply(b, node, col)
    return tok, col


def _apply(b: Builder, node: onnx.NodeProto, a: np.ndarray) -> np.ndarray | None:
    """One layout node (or scaling: no move) on an index array (its static output shape, from the
    builder)."""
    out_shape = b.shape(node.output[0])
    if node.op_type == "Transpose":
        perm = [int(p) for p in helper.get_attribute_value(node.attribute[0])] if node.attribute else None
        moved = np.transpose(a, perm)
        return moved if moved.shape == out_shape else None
    return a.reshape(out_shape) if a.size == int(np.prod(out_shape)) else None  # Reshape, (Un)Squeeze, Identity


def _token_axis(tokens: np.ndarray) -> int | None:
    """-1 when r[..., i, j] reads token j (k^T), -2 when token i (v), None otherwise."""
    for axis in (-1, -2):
        n = tokens.shape[axis]
        ramp = np.arange(n).reshape((n, 1) if axis == -2 else (1, n))
        if np.array_equal(tokens, np.broadcast_to(ramp, tokens.shape)):
            return axis
    return None


def _heads_columns(cols: np.ndarray, axis: int) -> bool:
    """True when the column index does not move along the token axis (one column per head and
    width position)."""
    first = np.take(cols, [0], axis=axis)
    return bool(np.array_equal(cols, np.broadcast_to(first, cols.shape)))


def _regrouped(b: Builder, node: onnx.NodeProto, x: str, weight: np.ndarray, bias: np.ndarray | None,
               axis: int, cols: np.ndarray) -> list[onnx.NodeProto] | None:
    """The nodes computing the MatMul regrouped (module docstring), or None where that is no cheaper."""
    left = node.input[0]
    _, heads, rows, _ = b.shape(left)
    tokens, width = b.shape(x)[1], weight.shape[0]
    per_head = np.take(cols, 0, axis=axis)[0]  # (heads, d): the column of each head's width position
    if per_head.shape[0] != heads:
        return None
    d = per_head.shape[1]
    before = tokens * width * per_head.size + heads * rows * d * tokens
    after = heads * rows * width * (d + tokens)
    if after >= before:
        return None
    dtype = weight.dtype
    w_heads = weight[:, per_head].transpose(1, 0, 2)  # (heads, K, d)
    nodes: list[onnx.NodeProto] = []

    def emit(op: str, inputs: list[str], **attrs: Any) -> str:
        out = b.fresh(op).replace("rfgraph_vjp/", "rfgraph_regroup/")  # a forward node, not the backward's
        n = helper.make_node(op, inputs, [out], name=out, **attrs)
        b.derive(n)
        b.active.add(out)
        nodes.append(n)
        return out

    # the heads' rows stacked into one matrix against x: one product each way, forward and backward
    stacked, unstacked = b.ints([1, heads * rows, -1]), b.ints([1, heads, rows, -1])
    if axis == -1:  # l k^T: (l Wk_h^T) x^T (+ l bk_h)
        lw = emit("MatMul", [left, b.const(np.ascontiguousarray(w_heads.transpose(0, 2, 1)), dtype)])
        xt = emit("Transpose", [x], perm=[0, 2, 1])  # (1, K, T)
        out = emit("Reshape", [emit("MatMul", [emit("Reshape", [lw, stacked]), xt]), unstacked])
        if bias is not None:
            out = emit("Add", [out, emit("MatMul", [left, b.const(bias[per_head][:, :, None].astype(dtype), dtype)])])
    else:  # a v: (a x) Wv_h (+ (a 1) bv_h)
        ax = emit("Reshape", [emit("MatMul", [emit("Reshape", [left, stacked]), x]), unstacked])
        out = emit("MatMul", [ax, b.const(np.ascontiguousarray(w_heads), dtype)])
        if bias is not None:
            sums = emit("ReduceSum", [left, b.ints([-1])], keepdims=1)
            out = emit("Add", [out, emit("Mul", [sums, b.const(bias[per_head][:, None, :].astype(dtype), dtype)])])
    nodes[-1].output[0] = node.output[0]
    b.derive(nodes[-1])
    return nodes


__all__ = ["reassociated"]
