"""Control flow: If, Loop, Scan (subgraphs are out of scope: reported, never guessed)."""

from __future__ import annotations

from .gradient import Rule as VJPRule
from .transfer import NodeContext, Rule, Transfer

# ---------------------------------------------------------------- receptive-field (TRF) rules


def control_flow_rule(ctx: NodeContext) -> Transfer:
    """If/Loop/Scan: their subgraphs are out of scope; reported, never guessed."""
    raise ctx.unsupported("control-flow op with subgraphs; subgraphs are out of scope for the analysis")


# ---------------------------------------------------------------- the family's tables

TRF: dict[str, Rule] = {"If": control_flow_rule, "Loop": control_flow_rule, "Scan": control_flow_rule}

# No VJP rule: subgraphs are out of scope; the gradient builder refuses them like any op without a rule.
VJP: dict[str, VJPRule] = {}
