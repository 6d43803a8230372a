"""Resize with coordinate_transformation_mode tf_crop_and_resize and a constant roi: a TRF rule
(was refused: the output was never analysed), the roi decoded once (``geometry.resize_roi``) for
the TRF and the VJP.  Units the crop extrapolates read no input: their exact clipped region
(``diagnostics.exact_regions``) is empty, as a zero-padded unit's.

Oracles: onnxruntime's measured dependencies (TRF) and central differences (VJP), on the node
suite's crop cases and a sweep (every nearest mode, linear, cubic; roi inside, past both ends,
past one end, reversed; up and down; on the input and after a Conv)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from onnx import numpy_helper

import rfgraph
from rfgraph import diagnostics as D
from rfgraph import vjp
from rfgraph.errors import InvalidAttributeError
from tests.conformance.cases import Case, all_cases
from tests.conformance.oracle import check_trf, check_vjp
from tests.conformance.sweeps import crop_resize_cases


@functools.lru_cache(maxsize=1)
def _cases() -> dict[str, Case]:
    node = {c.name: c for c in all_cases() if "tf_crop_and_resize" in c.name}
    return node | {c.name: c for c in crop_resize_cases()}


@pytest.mark.parametrize("name", sorted(_cases()))
def test_crop_resize_is_analysed_exactly_and_its_gradient_matches(name: str) -> None:
    case = _cases()[name]
    analysis = rfgraph.analyze(case.model, input_name=case.x_name)
    output = case.model.graph.output[0].name
    assert analysis[output].units  # analysed (before: refused, so the oracle had nothing to compare)
    assert check_trf(case).verdict == "exact"
    assert check_vjp(case).verdict == "match"


def test_extrapolated_units_see_nothing() -> None:
    """roi (-0.3, 1.4) on rows: the two first and two last of 7 output rows lie outside the input
    (x_original < 0 or > 4), hold extrapolation_value and read no pixel (onnxruntime: no input
    moves them); the rows between read their two linear taps."""
    case = _cases()["sweep_resize_crop_linear_floor_outside_7x3"]
    rows = D.exact_regions(rfgraph.analyze(case.model))["y"][0]
    seen = [(int(lo), int(hi)) if lo <= hi else None for lo, hi in zip(rows.lo, rows.hi)]
    x = np.linspace(-0.3 * 4, 1.4 * 4, 7)  # the spec's x_original of each row
    want = [None if not 0 <= v <= 4 else (int(np.floor(v)), int(np.ceil(v))) for v in x]
    assert seen == want


def test_a_roi_of_the_wrong_length_is_refused_naming_the_node() -> None:
    """A roi without a start and an end per resized axis: refused in one line naming the node
    (the VJP read past its end: IndexError)."""
    model = next(iter(crop_resize_cases())).model
    roi = next(i for i in model.graph.initializer if i.name == "roi")
    roi.CopyFrom(numpy_helper.from_array(np.array([0.1, 0.9], np.float32), "roi"))
    with pytest.raises(InvalidAttributeError, match=r"node .*\(Resize\): roi has 2 values.*needs 8"):
        rfgraph.analyze(model)
    with pytest.raises(InvalidAttributeError, match=r"roi has 2 values"):
        vjp.build_vjp(model)
