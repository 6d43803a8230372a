"""What a DETR-style head does after its encoder, each analysed (RT-DETR-L stopped at the first of
them, 1200 tensors before its output; now it reaches its output, global): TopK over positions
(which it keeps depends on every value there: global), a constant table looked up by
input-dependent indices (each output element reads its own index), GatherElements by indices
(mixes along its axis).  Oracle: onnxruntime impulses (``tests.impulses``): what moves an output
element lies inside its TRF region; a global one is moved from both ends of the input."""

from __future__ import annotations

import numpy as np

from rfgraph import analyze
from tests.graphs import G
from tests.impulses import check_tensor, dependencies, measured_hulls

SIZE = 8


def test_a_table_looked_up_by_a_local_index_reads_the_index_field() -> None:
    """conv 3x3 -> ArgMax over channels (an index per position) -> Gather(constant table): each
    output position reads its own index, so its field is the conv's 3x3: what moves it (through the
    ArgMax: only impulses that flip the index) lies inside that region, by onnxruntime impulses."""
    g = G((SIZE, SIZE), channels=2, batch=1)
    c = g.conv("x", 3, pads=[1, 1, 1, 1], cout=4)
    index = g.node("ArgMax", [c], axis=1, keepdims=0)
    table = g._init(np.random.default_rng(0).standard_normal((4, 3)))
    looked = g.node("Gather", [table, index], cout=3, axis=0)  # (1, H, W, 3)
    out = g.node("Transpose", [looked], perm=[0, 3, 1, 2])
    model = g.model(out)
    a = analyze(model)
    assert not a.stops and a[out].r == (3, 3) and a[out].units == (SIZE, SIZE)
    deps, _ = dependencies(model, "x", out, [2, 3])
    for unit in [(0, 0), (3, 4), (7, 7)]:
        got = measured_hulls(deps, 2, (0, slice(None), *unit))
        want = a[out].clipped_region(unit, (SIZE, SIZE))
        assert all(h is not None and w[0] <= u <= w[1] and w[0] <= h[0] <= h[1] <= w[1]
                   for h, w, u in zip(got, want, unit)), (unit, got, want)  # inside; an index moves in steps


def test_top_k_over_positions_is_global_and_gather_elements_mixes_its_axis() -> None:
    """Scores per position, flattened to tokens, the top 5 kept (TopK over the tokens), their
    features picked by GatherElements: every output reads the whole input (each end moves it)."""
    g = G((SIZE, SIZE), channels=2, batch=1)
    c = g.conv("x", 3, pads=[1, 1, 1, 1], cout=4)
    tokens = g.node("Reshape", [c, g._init(np.array([1, 4, SIZE * SIZE]))])
    score = g.node("ReduceMax", [tokens], axes=[1], keepdims=1)  # (1, 1, 64)
    _, top = g.node("TopK", [score, g._init(np.array([5]))], axis=2, n_out=2)
    picks = g.node("Expand", [top, g._init(np.array([1, 4, 5]))])
    out = g.node("GatherElements", [tokens, picks], axis=2)  # (1, 4, 5)
    model = g.model(out)
    a = analyze(model)
    assert not a.stops and a[out].is_global
    assert any(why.startswith("TopK over axis 2") for why in a.global_at.values())
    assert check_tensor(a, model, out) == 1  # one unit, the whole input: both ends reach it
