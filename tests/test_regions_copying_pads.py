"""Exact clipped regions (``diagnostics.exact_regions``) through Pads that copy pixels into their
border (reflect / edge / wrap): a unit in the padding reads the mirrored / replicated / wrapped
pixel, so its region is that pixel's region, not the empty one of zero padding (issue 13).

Oracle: onnxruntime's dependencies (``tests/impulses.py``: each input position perturbed in turn),
per unit and axis the hull of the positions that move it.  Failed before: every chain below had
units whose measured pixels lay outside their region (border units predicted to see nothing, or
less than they read), since exact_regions treated the copying Pad as zero padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rfgraph
from rfgraph import diagnostics as D
from rfgraph.diagnostics.regions import AxisRegions, reads, span_bounds
from rfgraph.fields import Span
from tests.conformance import sweeps
from tests.impulses import dependencies, measured_hulls

CHAINS = sweeps.PAD_CHAINS + [
    [("pad", ("reflect", 2, 1))],
    [("pad", ("edge", 1, 3)), ("conv", (3, 1, 0))],
    [("pad", ("edge", 1, 2)), ("conv", (3, 2, 0)), ("pad", ("reflect", 0, 2))],
    [("conv", (2, 2, 0)), ("pad", ("reflect", 1, 1)), ("pad", ("edge", 2, 0)), ("conv", (3, 1, 1))],
    [("conv", (3, 1, 0)), ("pad", ("wrap", 3, 1)), ("conv", (5, 1, 2))],
]


@pytest.mark.parametrize("layers", CHAINS, ids=lambda layers: "_".join(f"{k}{v}" for k, v in layers))
def test_exact_regions_through_copying_pads_match_onnxruntime(layers: list) -> None:
    case = sweeps.pad_chain(layers)
    analysis = rfgraph.analyze(case.model)
    regions = D.exact_regions(analysis)
    for i in range(len(layers)):
        name = f"t{i}"
        deps, base = dependencies(case.model, "x", name, [2, 3])
        got = regions[name]
        for u in itertools.product(range(base.shape[2]), range(base.shape[3])):
            measured = measured_hulls(deps, 2, (0, slice(None), *u))
            predicted = [(int(r.lo[k]), int(r.hi[k])) if r.lo[k] <= r.hi[k] else None for r, k in zip(got, u)]
            assert predicted == measured, f"{name} unit {u}: region {predicted}, onnxruntime {measured}"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 12), st.integers(0, 6), st.integers(-2, 2), st.integers(0, 6)),
                min_size=1, max_size=14),
       st.integers(1, 4), st.integers(1, 3), st.integers(-3, 2))
def test_reads_of_unordered_regions_match_brute_force(units: list, kernel: int, stride: int, begin: int) -> None:
    """``reads`` on regions in no order (a reflect / wrap border), vs a loop over each window's
    units: the extremes of the bounds of the units that see something."""
    lo = np.array([u[0] for u in units], np.int64)
    hi = lo + np.array([u[1] for u in units]) - np.array([2 if u[2] < -1 else 0 for u in units])  # some empty
    ilo, ihi = lo + np.array([max(u[2], 0) for u in units]), hi - np.array([u[3] % 2 for u in units])
    x = AxisRegions(lo, hi, ilo, ihi)
    span = Span.layer(kernel, stride, -begin)
    n_out = len(units) + 2
    got = reads(span, x, n_out)
    for j in range(n_out):
        first, last = span_bounds(span, np.array([j]), x.n)
        window = [i for i in range(max(int(first[0]), 0), min(int(last[0]), x.n - 1) + 1) if lo[i] <= hi[i]]
        assert bool(got.sees[j]) == bool(window)
        if window:
            assert (got.lo_min[j], got.hi_max[j]) == (min(lo[window]), max(hi[window]))
            assert (got.inner_lo_min[j], got.inner_lo_max[j]) == (min(ilo[window]), max(ilo[window]))
            assert (got.inner_hi_min[j], got.inner_hi_max[j]) == (min(ihi[window]), max(ihi[window]))


@pytest.mark.parametrize("layers", [[("conv", (3, 2, 1)), ("pad", ("constant", 1, 3))]] + CHAINS[:3],
                         ids=lambda layers: "_".join(f"{k}{v}" for k, v in layers))
def test_clipped_boxes_hold_what_each_unit_reads_and_padding_reads_nothing(layers: list) -> None:
    """``EndPoint.boxes(clip_to)`` (and ``rfgraph boxes --clip``): every measured pixel lies in
    the unit's box; a unit of zero padding, which no pixel moves, has an empty box (start past
    end; was clipped to the input's last pixel, [7, 7] for a unit reading nothing)."""
    case = sweeps.pad_chain(layers)
    a = rfgraph.analyze(case.model)
    name = f"t{len(layers) - 1}"
    deps, base = dependencies(case.model, "x", name, [2, 3])
    boxes = a[name].boxes(clip_to=(9, 9))
    empty = 0
    for u in itertools.product(range(base.shape[2]), range(base.shape[3])):
        measured = measured_hulls(deps, 2, (0, slice(None), *u))
        box = boxes[u]
        for k, m in enumerate(measured):
            if m is None:
                empty += box[k] > box[k + 2]
            else:
                assert box[k] <= m[0] and m[1] <= box[k + 2], (name, u, box, measured)
    assert empty > 0 if layers[-1][1][0] == "constant" else empty == 0


def test_boxes_clip_prints_none_for_a_unit_of_padding(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import onnx

    from rfgraph.cli import main
    case = sweeps.pad_chain([("conv", (3, 2, 1)), ("pad", ("constant", 1, 3))])
    onnx.save(case.model, tmp_path / "m.onnx")
    assert main(["boxes", str(tmp_path / "m.onnx"), "--output", "t1", "--index", "7,7", "--clip"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.split()[:3] == ["7,7", "none", "(padding)"], row  # was "[11, 8]": an inverted box
