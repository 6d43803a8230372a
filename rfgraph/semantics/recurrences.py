"""Recurrences: RNN, GRU, LSTM.

Only their TRF rule lives here; their gradient is the unrolling in ``rfgraph/unroll.py`` (the recurrence
rewritten as its step equations in primitive ops, which the other families' VJP rules back-propagate).
"""

from __future__ import annotations

from .gradient import Rule as VJPRule
from .transfer import AxisLayout, Edge, NodeContext, OutTransfer, Rule, Transfer, _str_attr, mixed_maps, plain_layout

# ---------------------------------------------------------------- receptive-field (TRF) rules


def recurrent_rule(ctx: NodeContext) -> Transfer:
    """RNN/GRU/LSTM: every step reads every step and every feature (contracted by W and R);
    only the batch axis keeps its positions.  Data may arrive on X or on initial_h/initial_c."""
    batch_first = bool(ctx.attrs.get("layout", 0))
    in_batch = {0: 0 if batch_first else 1, 5: 0 if batch_first else 1, 6: 0 if batch_first else 1, 4: 0}
    edges: list[Edge] = []
    batch_parts: AxisLayout | None = None
    for slot in ctx.data_slots():
        if slot not in in_batch:
            raise ctx.unsupported("weights computed from the input (data-dependent recurrence)")
        lay = ctx.data_layout(slot)  # a data slot: never raises
        keep = in_batch[slot]
        edges.append(Edge(slot, mixed_maps(lay, [t for t in range(len(lay)) if t != keep])))
        if batch_parts is None and keep < len(lay):
            batch_parts = lay[keep]
    outs: list[OutTransfer | None] = []
    for i, shape in enumerate(ctx.out_shapes):
        if not ctx.node.output[i]:
            outs.append(None)
            continue
        out_lay = list(plain_layout(shape or ()))
        out_batch = (0 if batch_first else (2 if i == 0 else 1))
        if batch_parts is not None and out_batch < len(out_lay):
            out_lay[out_batch] = batch_parts
        outs.append(OutTransfer(tuple(out_lay), tuple(edges)))
    mixes = any(e.maps for e in edges)  # the sequence axis may index no input position (silero-vad
    # runs its frames as the LSTM's batch, over a sequence of length 1): then nothing is global
    return Transfer(tuple(outs), mix_reason=_recurrence_reason(ctx) if mixes else "")


def _recurrence_reason(ctx: NodeContext) -> str:
    """Why a recurrence is global, by direction: a causal step reads only one side of itself, so
    the whole input is an upper bound for it (exact for the final state and bidirectional runs)."""
    direction = _str_attr(ctx, "direction", "forward")
    if direction == "bidirectional":
        return f"{ctx.op} recurrence (bidirectional): every step reads the whole sequence"
    side = "earlier" if direction == "forward" else "later"
    return (f"{ctx.op} recurrence ({direction}): step t reads all {side} steps, the final state the "
            f"whole sequence; reported as the whole input")


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {"RNN": recurrent_rule, "GRU": recurrent_rule, "LSTM": recurrent_rule}

# No VJP rule: ``vjp.build_vjp`` first unrolls RNN/GRU/LSTM into primitive ops (rfgraph/unroll.py).
VJP: dict[str, VJPRule] = {}
