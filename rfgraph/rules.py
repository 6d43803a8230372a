"""The rule table one analysis owns: which receptive-field rule each op of the model gets.

Built from the standard table (``semantics.TRF_RULES``), the declared rules (the analysis's rules
file or RuleSet first, then those of ``rfgraph.register_op`` as they stand when the table is made)
and the assume-pointwise choice.  ``analyze`` makes one from its options and hands it to the TRF
pass; the table collects the notes of every node analysed with a declared or assumed rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import custom_ops
from .custom_ops import OpSpec, RuleSet
from .semantics import TRF_RULES
from .semantics.transfer import Rule

# Domains whose ops are the standard ones (``com.microsoft`` and ``ai.onnx.ml`` ops that share a
# standard name mean the same)
STANDARD_DOMAINS = (None, "", "ai.onnx", "com.microsoft", "ai.onnx.ml")

RulesOption = RuleSet | str | Path | Sequence[str | Path] | None


@dataclass
class RuleTable:
    """The TRF rules of one analysis; ``notes``: node -> the declared or assumed rule used on it."""

    declared: RuleSet = field(default_factory=RuleSet)
    registered: RuleSet = field(default_factory=custom_ops.registered_rules)
    assume_pointwise: bool = False
    standard: Mapping[str, Rule] = field(default_factory=lambda: TRF_RULES)
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: RulesOption = None, assume_pointwise: bool = False) -> RuleTable:
        """The table for ``analyze``'s options: a rules file (or several, or a RuleSet) and
        ``assume_pointwise``; ``register_op``'s rules are copied now."""
        return cls(custom_ops.as_ruleset(rules) or RuleSet(), assume_pointwise=assume_pointwise)

    def find(self, op: str, domain: str | None) -> OpSpec | None:
        """The declared rule of an op: the analysis's own first, then ``register_op``'s."""
        return self.declared.find(op, domain) or self.registered.find(op, domain)

    def rule(self, op: str, domain: str | None = "") -> Rule | None:
        """The rule of an op: a declared one first, then the standard table (standard domains),
        then the assume-pointwise fallback; None when there is none."""
        spec = self.find(op, domain)
        if spec is not None:
            return custom_ops.declared_rule(spec, self.notes)
        rule = self.standard.get(op) if domain in STANDARD_DOMAINS else None
        if rule is None and self.assume_pointwise:
            return custom_ops.assumed_pointwise_rule(self.notes)
        return rule
