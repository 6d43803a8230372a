"""Linear algebra: MatMul, Gemm, MatMulInteger, QLinearMatMul, Einsum."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import UnsupportedOpError
from ..fields import BROADCAST, Span
from .gradient import Builder, Grads, NodeView, _quantized
from .gradient import Rule as VJPRule
from .transfer import (
    MIXES,
    AxisLayout,
    Edge,
    Layout,
    NodeContext,
    OutTransfer,
    Rule,
    Transfer,
    _str_attr,
    axis_parts,
    carried,
    copy_span,
    plain_layout,
    spatial_of,
    with_scalar_edges,
    with_sizes,
)

# ---------------------------------------------------------------- receptive-field (TRF) rules


def matmul_rule(ctx: NodeContext) -> Transfer:
    """MatMul/Gemm: contracted spatial axes mix (attention, Flatten+Gemm); others pass through."""
    return _matmul(ctx, 0, 1)


def quantized_matmul_rule(b_slot: int, scalar_slots: Sequence[int]) -> Rule:
    """MatMulInteger (B at slot 1) and QLinearMatMul (B at slot 3): a MatMul whose zero points
    and scales (``scalar_slots``) may be computed from the input (dynamic quantization)."""
    def rule(ctx: NodeContext) -> Transfer:
        for slot in ctx.data_slots():
            if slot not in (0, b_slot, *scalar_slots):
                raise ctx.unsupported(f"input {slot} computed from the input; no rule for that case")
        return with_scalar_edges(ctx, _matmul(ctx, 0, b_slot), scalar_slots)
    return rule


def _matmul(ctx: NodeContext, a_slot: int, b_slot: int) -> Transfer:
    """The matrix product of the operands at ``a_slot`` and ``b_slot`` (see ``matmul_rule``)."""
    a_lay, b_lay = ctx.layouts[a_slot], ctx.layouts[b_slot]
    a_shape = ctx.in_shapes[a_slot] or tuple(0 for _ in (a_lay or ()))
    b_shape = ctx.in_shapes[b_slot] or tuple(0 for _ in (b_lay or ()))
    a_lay = a_lay if a_lay is not None else plain_layout(a_shape)
    b_lay = b_lay if b_lay is not None else plain_layout(b_shape)
    if ctx.op == "Gemm":
        if ctx.attrs.get("transA", 0):
            a_lay = a_lay[::-1]
        if ctx.attrs.get("transB", 0):
            b_lay = b_lay[::-1]
    if len(a_lay) < 2 or len(b_lay) < 2:
        raise ctx.unsupported("1-D matrix product")
    batch_rank = max(len(a_lay), len(b_lay)) - 2
    pad_a = ((((-1, 1),),) * (batch_rank + 2 - len(a_lay))) + a_lay
    pad_b = ((((-1, 1),),) * (batch_rank + 2 - len(b_lay))) + b_lay
    batch = tuple(pa if spatial_of(pa) or math.prod(s for _, s in pa) != 1 else pb
                  for pa, pb in zip(pad_a[:batch_rank], pad_b[:batch_rank]))
    out_lay = batch + (pad_a[-2], pad_b[-1])
    rows, cols = set(spatial_of(pad_a[-2])), set(spatial_of(pad_b[-1]))
    if rows & cols:  # attention scores: the query positions index the rows, the keys are read
        out_lay = out_lay[:-1] + (((-1, math.prod(s for _, s in pad_b[-1])),),)
    n = batch_rank
    to_out = {a_slot: list(range(n)) + [n, None], b_slot: list(range(n)) + [None, n + 1]}
    operands = [(slot, lay) for slot, lay in ((a_slot, pad_a), (b_slot, pad_b)) if ctx.layouts[slot] is not None]
    edges, mixed = _product_edges({slot: _product_maps(lay, out_lay, to_out[slot]) for slot, lay in operands},
                                  out_lay)
    if ctx.op == "Gemm" and len(ctx.node.input) > 2 and ctx.layouts[2] is not None:
        edges.append(Edge(2, dict.fromkeys(mixed, MIXES) | dict.fromkeys(carried(out_lay), BROADCAST)))
    out_lay = with_sizes(out_lay, ctx.out_shapes[0])
    why = "matrix product over positions" if mixed else ""
    return Transfer((OutTransfer(out_lay, tuple(edges)),), mix_reason=why)


def _product_edges(per_slot: Mapping[int, dict[int, Span | None]],
                   out_lay: Layout) -> tuple[list[Edge], set[int]]:
    """A product's edges and mixed spatial axes from its operands' maps (``_product_maps``).
    An axis some operand reads whole (MIXES) and no output axis indexes (Flatten+Gemm, attention
    over the values' rows) is read whole from every operand.  One an output axis still indexes
    keeps each operand's own map: attention's rows are its queries, each reading its own
    position and every key, so the output keeps the queries as units (MatMul, Einsum)."""
    mixed = {a for maps in per_slot.values() for a, sp in maps.items() if sp is MIXES}
    gone = mixed - {a for p in out_lay for a in spatial_of(p)}
    edges = [Edge(slot, {a: sp for a, sp in maps.items() if a not in gone} | dict.fromkeys(gone, MIXES))
             for slot, maps in per_slot.items()]
    return edges, mixed


def _product_maps(lay: Layout, out_lay: Layout, to_out: Sequence[int | None]) -> dict[int, Span | None]:
    """Edge maps of one operand of a product: tensor axis t of the operand becomes output axis
    ``to_out[t]`` (None: contracted).  Per spatial axis: the output's parts copied from the
    operand's, the others read whole (MIXES when none is copied; a window's span when the
    window index is copied but not the row within it); BROADCAST where only the output has it."""
    maps: dict[int, Span | None] = {}
    for a in {x for p in [*lay, *out_lay] for x in spatial_of(p)}:
        mine = axis_parts(lay, a)
        if not mine:
            maps[a] = BROADCAST
            continue
        index = {(to_out[t], i): k for k, (t, i, _) in enumerate(mine) if to_out[t] is not None}
        theirs = axis_parts(out_lay, a)
        out_from = [index.get((t, i)) for t, i, _ in theirs]
        if out_from != list(range(len(mine))):
            maps[a] = copy_span([s for _, _, s in mine], [s for _, _, s in theirs], out_from)
    return maps


def einsum_terms(equation: str, ranks: Sequence[int]) -> tuple[list[str], str] | None:
    """Operand and output index strings of an Einsum equation ("bqd,bkd->bqk"), or None when it
    uses what the rules below do not read (an ellipsis, a letter repeated within one term)."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return None
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if not arrow:  # implicit output: the letters seen once, in alphabetical order
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(terms) != len(ranks) or any(len(t) != r for t, r in zip(terms, ranks)):
        return None
    if any(len(set(t)) != len(t) for t in [*terms, out]):
        return None
    return terms, out


def einsum_rule(ctx: NodeContext) -> Transfer:
    """Einsum, read as MatMul is: an output letter carries its operand's positions, the first
    letter to hold a part of positions keeps it (a window index, a query's rows) and a later one
    holding the same part only reads it (the keys of the scores); positions on a summed letter
    are read whole: within a window where the window index is kept (window attention), else
    every position (global attention, a Dense layer over flattened positions)."""
    ranks = [ctx.rank(i) for i in range(len(ctx.node.input))]
    equation = _str_attr(ctx, "equation", "")
    parsed = einsum_terms(equation, ranks)
    if parsed is None:
        raise ctx.unsupported("an Einsum equation with an ellipsis or a repeated letter in one term")
    terms, out = parsed
    layouts = {slot: ctx.data_layout(slot) for slot in ctx.data_slots()}
    shape = ctx.out_shapes[0] or tuple(0 for _ in out)
    out_lay = _einsum_layout(terms, out, layouts, shape)
    edges, mixed = _product_edges(
        {slot: _product_maps(lay, out_lay, [out.index(c) if c in out else None for c in terms[slot]])
         for slot, lay in layouts.items()}, out_lay)
    why = f"Einsum '{equation}' over positions" if mixed else ""
    return Transfer((OutTransfer(with_sizes(out_lay, ctx.out_shapes[0]), tuple(edges)),), mix_reason=why)


def _einsum_layout(terms: Sequence[str], out: str, layouts: Mapping[int, Layout],
                   shape: Sequence[int | None]) -> Layout:
    """The output layout of an Einsum: each letter's parts of positions from the first data
    operand holding them, unless an earlier output letter holds the same parts (the k-th part of
    a spatial axis, in order of significance): that letter then indexes no positions."""
    taken: set[tuple[int, int]] = set()
    out_lay: list[AxisLayout] = []
    for i, letter in enumerate(out):
        source = next(((lay, terms[slot].index(letter)) for slot, lay in layouts.items()
                       if letter in terms[slot] and spatial_of(lay[terms[slot].index(letter)])), None)
        if source is None:
            out_lay.append(((-1, shape[i] or 0),))
            continue
        lay, t = source
        ids = {(a, k) for a in spatial_of(lay[t]) for k, (u, _, _) in enumerate(axis_parts(lay, a)) if u == t}
        if ids & taken:
            out_lay.append(((-1, math.prod(n for _, n in lay[t])),))
            continue
        taken |= ids
        out_lay.append(lay[t])
    return tuple(out_lay)


# ---------------------------------------------------------------- gradient (VJP) rules


def _transpose_last2(b: Builder, t: str) -> str:
    """A tensor with its last two axes swapped: a Transpose node, which onnxruntime folds into a
    constant at load when ``t`` is one (a weight), so the graph carries each weight once."""
    rank = len(b.shape(t))
    out = b.op("Transpose", t, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    return out


def _swapped_last2(b: Builder, t: str) -> bool:
    """True when the forward tensor ``t`` is a Transpose swapping the last two axes (attention's
    K^T): its gradient, (g^T A)^T, then meets the Transpose's own, and onnxruntime drops the pair
    (dK = dS^T Q in one product; ViT-S: 12 transposes of 197 x 64 x 6 fewer)."""
    node = b.producers.get(t)
    if node is None or node.op_type != "Transpose" or len(b.shape(t)) < 2:
        return False
    rank = len(b.shape(t))
    perm = [a.ints for a in node.attribute if a.name == "perm"]
    return bool(perm) and list(perm[0]) == list(range(rank - 2)) + [rank - 1, rank - 2]


def _matmul_gradient(b: Builder, n: NodeView, gys: list) -> Grads:
    """MatMul (numpy semantics): gA = g B^T, gB = A^T g, reduced over broadcast batch axes."""
    a, c = n.inputs
    sa, sc = b.shape(a), b.shape(c)
    g = gys[0]
    a2, c2 = a, c
    gshape = list(b.shape(n.outputs[0]))
    if len(sa) == 1:  # promote 1-D operands as numpy does
        a2 = b.reshape(a, (1, sa[0]))
        gshape.insert(len(gshape) - (0 if len(sc) == 1 else 1), 1)
    if len(sc) == 1:
        c2 = b.reshape(c, (sc[0], 1))
        gshape.append(1)
    g2 = b.reshape(g, gshape) if tuple(gshape) != b.shape(g) else g
    ga = gb = None
    if b.is_active(a):
        ga = b.op("MatMul", g2, _transpose_last2(b, c2))
        ga = b.reduce_to(ga, b.shape(a2))
        ga = b.reshape(ga, sa) if len(sa) == 1 else ga
    if b.is_active(c) and _swapped_last2(b, c) and b.shape(g2)[:-2] == sc[:-2]:
        gb = _transpose_last2(b, b.op("MatMul", _transpose_last2(b, g2), a2))  # (g^T A)^T
    elif b.is_active(c):
        gb = b.op("MatMul", _transpose_last2(b, a2), g2)
        gb = b.reduce_to(gb, b.shape(c2))
        gb = b.reshape(gb, sc) if len(sc) == 1 else gb
    return [ga, gb]


def _gemm(b: Builder, n: NodeView, gys: list) -> Grads:
    """Gemm: alpha g op(B)^T for A, alpha op(A)^T g for B (transposes folded in), beta g for C."""
    alpha, beta = n.attr_float("alpha", 1.0), n.attr_float("beta", 1.0)
    ta, tb = n.attr_int("transA", 0), n.attr_int("transB", 0)
    a, c = n.inputs[0], n.inputs[1]
    g = gys[0]
    ga = gb = gc = None
    if b.is_active(a):
        ga = b.op("Gemm", g, c, alpha=alpha, transB=1 - tb) if not ta else \
            b.op("Gemm", c, g, alpha=alpha, transA=tb, transB=1)
    if b.is_active(c):
        gb = b.op("Gemm", a, g, alpha=alpha, transA=1 - ta) if not tb else \
            b.op("Gemm", g, a, alpha=alpha, transA=1, transB=ta)
    if len(n.inputs) > 2 and b.is_active(n.inputs[2]):
        gc = b.reduce_to(b.op("Mul", g, b.scalar(beta)), b.shape(n.inputs[2]))
    return [ga, gb, gc]


def _einsum(b: Builder, n: NodeView, gys: list) -> Grads:
    """Einsum: each operand's gradient is the einsum of the output gradient with the other
    operands, back to the operand's letters (each of them must appear in the output or in
    another operand: a letter summed within one operand alone would need a broadcast)."""

    parsed = einsum_terms(n.attr_str("equation", ""), [len(b.shape(i)) for i in n.inputs])
    if parsed is None:
        raise UnsupportedOpError(n.name, "Einsum", "an equation with an ellipsis or a repeated letter")
    terms, out = parsed
    grads: list[str | None] = []
    for k, (name, term) in enumerate(zip(n.inputs, terms)):
        if not b.is_active(name):
            grads.append(None)
            continue
        others = [(inp, t) for j, (inp, t) in enumerate(zip(n.inputs, terms)) if j != k]
        if set(term) - set(out) - {c for _, t in others for c in t}:
            raise UnsupportedOpError(n.name, "Einsum", f"operand {k} sums a letter no other term has")
        eq = ",".join([out] + [t for _, t in others]) + "->" + term
        g = b.op("Einsum", gys[0], *[inp for inp, _ in others], equation=eq)
        grads.append(g)
    return grads


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {
    "MatMul": matmul_rule, "Gemm": matmul_rule, "MatMulInteger": quantized_matmul_rule(1, (2, 3)),
    "QLinearMatMul": quantized_matmul_rule(3, (1, 2, 4, 5, 6, 7)),
    "Einsum": einsum_rule,
}

VJP: dict[str, VJPRule] = {
    "MatMul": _matmul_gradient, "Gemm": _gemm, "Einsum": _einsum,
    "MatMulInteger": _quantized, "QLinearMatMul": _quantized,
}
