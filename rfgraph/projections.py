"""Fused projections split into one product per part, so that each part can be computed on its own
box (``rfgraph.trim``).

A transformer computes its queries, keys and values with one product, x W + b, reshapes the last
axis into (3, heads, width), moves the 3 to the front and splits it: q, k and v are column blocks of
one product. The unit of a token reads its queries on one token but the keys and values on all of
them, so the fused product is needed whole; split into three products (W's columns and b's entries
of each part, the same reshape with 1 for the 3, the same transpose), the query product runs on the
unit's token alone (ViT-S's last block: a third of its projection, forward and backward).  Each
part's values are those of the fused product's columns: the same sums, exact up to rounding order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

Fold = Callable[[str], "np.ndarray | None"]  # the value of a constant tensor, None for the others


@dataclass(frozen=True)
class FusedProjection:
    """A product x W (+ b) whose output is reshaped (then transposed) and split along an axis that
    divides W's columns: ``nodes`` the product, its Add, the Reshape, the Transpose, the Split."""

    nodes: tuple[onnx.NodeProto, ...]
    x: str
    weight: np.ndarray  # (K, N)
    bias: np.ndarray | None  # (N,)
    grid: tuple[int, ...]  # the Reshape's output shape: the product's leading axes, then N's factors
    lead: int  # how many leading axes
    axis: int  # the Reshape output's axis the Split divides (one of the factors)
    perm: tuple[int, ...] | None
    sizes: tuple[int, ...]

    @property
    def split(self) -> onnx.NodeProto:
        return self.nodes[-1]


def fused_projections(nodes: Sequence[onnx.NodeProto], shapes: dict[str, tuple[int, ...]], opset: int,
                      fold: Fold, outputs: Sequence[str] = ()) -> list[FusedProjection]:
    """Every fused projection among ``nodes`` (a model's nodes in order) whose intermediate tensors
    have no other reader there and are none of ``outputs`` (the tensors the model gives out)."""
    readers = readers_of(nodes)
    producers = {o: n for n in nodes for o in n.output if o}
    for name in outputs:  # read by the model's user
        readers.setdefault(name, []).append(onnx.NodeProto(name="rfgraph_output"))
    found = []
    for node in nodes:
        if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
            fused = _fused(node, producers, readers, shapes, opset, fold)
            if fused is not None:
                found.append(fused)
    return found


def _fused(split: onnx.NodeProto, producers: dict[str, onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]],
           shapes: dict[str, tuple[int, ...]], opset: int, fold: Fold) -> FusedProjection | None:
    """The fused projection ending at ``split``, or None."""
    chain: list[onnx.NodeProto] = [split]
    node = producers.get(split.input[0])
    perm = None
    if node is not None and node.op_type == "Transpose" and only_reader(node.output[0], split, readers):
        perm = tuple(int(p) for p in _attrs(node).get("perm", range(len(shapes[node.output[0]]) - 1, -1, -1)))
        chain.insert(0, node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Reshape" or not only_reader(node.output[0], chain[0], readers):
        return None
    reshape = node
    chain.insert(0, reshape)
    linear = linear_layer(reshape.input[0], producers, readers, fold)
    if linear is None or linear.nodes[0].op_type != "MatMul" or not only_reader(reshape.input[0], reshape, readers) \
            or reshape.input[0] not in shapes or reshape.output[0] not in shapes:
        return None
    x, weight, bias, linear_nodes = linear.x, linear.weight, linear.bias, list(linear.nodes)
    grid, flat = shapes[reshape.output[0]], shapes[reshape.input[0]]
    lead = len(flat) - 1
    rank = len(shapes[split.input[0]])
    axis_out = int(_attrs(split).get("axis", 0)) % rank
    axis = perm[axis_out] if perm is not None else axis_out
    sizes = _split_sizes(split, shapes[split.input[0]][axis_out], opset, fold)
    if grid[:lead] != flat[:lead] or math.prod(grid[lead:]) != flat[-1] or axis < lead or sizes is None \
            or weight.ndim != 2 or weight.shape[1] != flat[-1]:
        return None
    return FusedProjection(tuple(linear_nodes + chain), x, weight, bias, grid, lead, axis, perm, sizes)


@dataclass(frozen=True)
class LinearLayer:
    """``t`` = x W (+ c): ``nodes`` the product (MatMul or Gemm) and the Add of c, if any."""

    nodes: tuple[onnx.NodeProto, ...]
    x: str
    weight: np.ndarray  # as the product reads it (a Gemm's transB not applied)
    bias: np.ndarray | None  # the Add's constant, flattened (it varies along the last axis only)


def readers_of(nodes: Sequence[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor's reading nodes among ``nodes``, in order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    return readers


def only_reader(name: str, node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """True when ``node`` is the one node reading tensor ``name``."""
    return [id(r) for r in readers.get(name, [])] == [id(node)]


def linear_layer(t: str, producers: dict[str, onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]],
                 constant: Fold) -> LinearLayer | None:
    """The linear layer computing ``t``: a MatMul or Gemm of a non-constant x by a constant float
    weight (a Gemm's C constant too), or such a product whose one reader adds a constant float
    vector over the last axis to it (the Add computing ``t``); None otherwise.  ``constant``: a
    tensor's value, None for one that depends on the input."""
    node = producers.get(t)
    nodes: list[onnx.NodeProto] = []
    bias = None
    if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
        values = [constant(i) for i in node.input]
        data = next((i for i, v in zip(node.input, values) if v is None), None)
        bias = next((v for v in values if v is not None), None)
        if data is None or bias is None or bias.dtype.kind != "f" or bias.size != (bias.shape[-1] if bias.ndim else 1) \
                or not only_reader(data, node, readers):
            return None
        nodes, node, bias = [node], producers.get(data), bias.reshape(-1)
    if node is None or node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") \
            or len(node.input) < 2 or node.input[0] in node.input[1:]:
        return None
    weight = constant(node.input[1])
    if weight is None or weight.dtype.kind != "f" or constant(node.input[0]) is not None:
        return None
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and constant(node.input[2]) is None:
        return None
    return LinearLayer((node, *nodes), node.input[0], weight, bias)


def _split_sizes(split: onnx.NodeProto, length: int, opset: int, fold: Fold) -> tuple[int, ...] | None:
    """A Split's part sizes when they are constants (input, attribute, or equal parts)."""
    parts = len(split.output)
    if len(split.input) > 1 and split.input[1]:
        value = fold(split.input[1])
        return tuple(int(v) for v in value) if value is not None else None
    attr = _attrs(split).get("split")
    if attr is not None:
        return tuple(int(v) for v in attr)
    if length % parts:
        return None  # opset 18's uneven last part: not handled
    return (length // parts,) * parts


def split_products(model: onnx.ModelProto, fused: Sequence[FusedProjection], shapes: dict[str, tuple[int, ...]]
                   ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """``model`` with each of ``fused`` computed as one product per part (``part_nodes``) and the
    shapes of the new tensors added to a copy of ``shapes``."""
    from .onnx_import import model_like

    shapes = dict(shapes)
    replaced = {id(n): f for f in fused for n in f.nodes}
    first = {id(f.nodes[0]): f for f in fused}
    nodes: list[onnx.NodeProto] = []
    inits = list(model.graph.initializer)
    for node in model.graph.node:
        if id(node) in first:
            new_nodes, new_inits = part_nodes(first[id(node)], shapes)
            nodes.extend(new_nodes)
            inits.extend(new_inits)
        elif id(node) not in replaced:
            nodes.append(node)
    used = {i for n in nodes for i in n.input}
    return model_like(model, nodes, [i for i in inits if i.name in used], list(model.graph.input),
                      list(model.graph.output)), shapes


def part_nodes(f: FusedProjection, shapes: dict[str, tuple[int, ...]]
               ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes of each part of ``f`` (product by its columns, Add, Reshape, Transpose) writing
    the Split's outputs, their constants; each new tensor's shape recorded in ``shapes``."""
    flat_lead = f.grid[:f.lead]
    columns = np.arange(f.weight.shape[1]).reshape(f.grid[f.lead:])
    local = f.axis - f.lead
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    start = 0
    tag = f.split.name or f.split.output[0]
    for p, (size, out) in enumerate(zip(f.sizes, f.split.output)):
        idx = np.take(columns, range(start, start + size), axis=local).reshape(-1)
        start += size
        name = f"rfgraph_split/{tag}/{p}"
        weight = numpy_helper.from_array(np.ascontiguousarray(f.weight[:, idx]), f"{name}/weight")
        inits.append(weight)
        cur = f"{name}/product"
        nodes.append(helper.make_node("MatMul", [f.x, weight.name], [cur], name=cur))
        shapes[cur] = flat_lead + (len(idx),)
        if f.bias is not None:
            bias = numpy_helper.from_array(np.ascontiguousarray(f.bias[idx]), f"{name}/bias")
            inits.append(bias)
            nodes.append(helper.make_node("Add", [cur, bias.name], [f"{name}/biased"], name=f"{name}/biased"))
            cur = f"{name}/biased"
            shapes[cur] = flat_lead + (len(idx),)
        grid = list(f.grid)
        grid[f.axis] = size
        target = numpy_helper.from_array(np.array(grid, np.int64), f"{name}/shape")
        inits.append(target)
        reshaped = out if f.perm is None else f"{name}/reshaped"
        nodes.append(helper.make_node("Reshape", [cur, target.name], [reshaped], name=f"{name}/reshape"))
        shapes[reshaped] = tuple(grid)
        if f.perm is not None:
            nodes.append(helper.make_node("Transpose", [reshaped], [out], name=f"{name}/transpose", perm=list(f.perm)))
    shapes.update((t.name, tuple(t.dims)) for t in inits)
    return nodes, inits


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


__all__ = ["FusedProjection", "LinearLayer", "fused_projections", "linear_layer", "only_reader", "part_nodes",
           "readers_of", "split_products"]
