"""Two analyses side by side (two models, or one model at two input sizes): their end points
matched by name, the rest paired in order, and which of r, S, P differ for each pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .analysis import Analysis

COMPARED = ("r", "S", "P")  # the quantities whose differences are marked


@dataclass(frozen=True)
class Pair:
    """One row of a comparison: an end point of A and its match in B (None: no match)."""

    a: str | None
    b: str | None
    match: str  # 'name' (same tensor name), 'order' (the n-th unmatched of each), 'only A', 'only B'
    differs: tuple[str, ...]  # the quantities of COMPARED that differ (all of them without a match)


def match_names(a: Sequence[str], b: Sequence[str]) -> list[tuple[str | None, str | None, str]]:
    """(A name, B name, how matched): equal names first; the others paired in their order; the
    unpaired rest alone.  Rows follow A's order, B's unpaired end points last."""
    common = set(a) & set(b)
    rest_b = [n for n in b if n not in common]
    rows: list[tuple[str | None, str | None, str]] = []
    for name in a:
        if name in common:
            rows.append((name, name, "name"))
        elif rest_b:
            rows.append((name, rest_b.pop(0), "order"))
        else:
            rows.append((name, None, "only A"))
    rows += [(None, name, "only B") for name in rest_b]
    return rows


def compare(a: Analysis, a_names: Sequence[str], b: Analysis, b_names: Sequence[str]) -> list[Pair]:
    """The end points ``a_names`` of ``a`` against ``b_names`` of ``b`` (``match_names``)."""
    pairs = []
    for x, y, how in match_names(a_names, b_names):
        if x is None or y is None:
            pairs.append(Pair(x, y, how, COMPARED))
            continue
        ea, eb = a[x], b[y]
        pairs.append(Pair(x, y, how, tuple(q for q in COMPARED if getattr(ea, q) != getattr(eb, q))))
    return pairs


__all__ = ["COMPARED", "Pair", "compare", "match_names"]
