"""Path-RF histogram: how many input-to-output paths give each receptive-field size.

Counted by dynamic programming over the DAG (paths into a tensor grouped by their composed span),
so graphs with exponentially many paths (residual stacks) cost O(|E| x distinct spans), never a
path-by-path enumeration.
"""

from __future__ import annotations

from collections import Counter

from .analysis import Analysis
from .fields import IDENTITY, AxisField, Span

GLOBAL = "global"


def path_histogram(analysis: Analysis, target: str) -> list[dict[int | str, int]]:
    """Per input spatial axis: receptive-field size -> number of paths from the input to ``target``.

    Paths through an op that mixes all positions are counted under the key ``"global"``.
    """
    analysis[target]
    mg = analysis.graph
    n_axes = len(analysis.spatial_axes)
    counts: dict[str, list[Counter]] = {analysis.input_name: [Counter({IDENTITY: 1}) for _ in range(n_axes)]}
    for idx, tensor, out in analysis.output_transfers():
        node = mg.nodes[idx]
        acc: list[Counter] = [Counter() for _ in range(n_axes)]
        for e in out.edges:
            for axis in range(n_axes):
                _extend_counts(acc[axis], counts[node.input[e.slot]][axis], e.span(axis))
        counts[tensor] = acc
    units = analysis[target].units
    return [_histogram(c, n) for c, n in zip(counts[target], units)]


def _extend_counts(acc: Counter, before: Counter, span: Span | None) -> None:
    """Add the paths of one input, each extended through the edge's span."""
    for key, n in before.items():
        if key == GLOBAL or span is None:
            acc[GLOBAL] += n
        else:
            acc[key if span is IDENTITY else span.then(key)] += n


def _histogram(counter: Counter, n_units: int | None) -> dict[int | str, int]:
    """Group path counts by receptive-field size, sorted by size."""
    hist: Counter = Counter()
    for key, n in counter.items():
        hist[GLOBAL if key == GLOBAL else AxisField((key,)).size(n_units)] += n
    return dict(sorted(hist.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))
