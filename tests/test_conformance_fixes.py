"""Bugs the conformance suite (tests/conformance) found, each pinned by its node-suite case or a
minimal model, against onnxruntime (measured dependencies or central differences)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from onnx import helper

import rfgraph
from tests.conformance import oracle, sweeps
from tests.conformance.cases import Case, all_cases
from tests.conformance.oracle import check_trf, check_vjp


@functools.lru_cache(maxsize=1)
def _cases() -> dict[str, Case]:
    return {c.name: c for c in all_cases()}


def test_space_to_depth_crd_gradient() -> None:
    """SpaceToDepth mode=CRD (opset 28) orders blocks column-row-depth: the gradient undoes that
    permutation (the rule ignored ``mode`` and undid DCR's), vs central differences."""
    assert check_vjp(_cases()["test_spacetodepth_crd_mode_example"]).verdict == "match"


def test_reshape_to_an_empty_axis_gradient() -> None:
    """Reshape with allowzero to a shape holding 0: the gradient's reshape back to the input's
    static shape keeps 0 as an empty axis (it meant "copy", and onnxruntime failed: a crash)."""
    assert check_vjp(_cases()["test_reshape_allowzero_reordered"]).verdict == "match"


def test_unconvertible_opset_is_refused_in_one_line() -> None:
    """A model onnx's version converter cannot lift to the gradient graph's opset (Scan at opset 8)
    is refused with one line (was the converter's ConvertError, a crash)."""
    got = check_vjp(_cases()["test_scan_sum"])
    assert got.verdict == "refused" and "version converter" in got.detail


@pytest.mark.parametrize("name", ["test_gru_batchwise", "test_lstm_batchwise", "test_simple_rnn_batchwise"])
def test_no_oracle_is_no_verdict(name: str) -> None:
    """onnxruntime refuses batchwise recurrences (layout=1): without an oracle the harness gives
    no verdict (was counted as a crash of the rule)."""
    assert check_vjp(_cases()[name]).verdict == "refused"


def test_softmax_of_a_fully_masked_row_has_zero_gradient() -> None:
    """Attention with a fully masked row: Softmax gives NaN there, a Where replaces it by 0; the
    output does not move with the input there, so the gradient is 0 (the rule spread the NaN
    through the masked branch to every query element), vs central differences."""
    assert check_vjp(_cases()["test_attention_causal_boolmask_nan_robustness_expanded"]).verdict == "match"


def _unary(op: str, x: np.ndarray) -> Case:
    dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op,
                              [helper.make_tensor_value_info("x", dtype, x.shape)],
                              [helper.make_tensor_value_info("y", dtype, x.shape)])
    return Case(op, op, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "x", x)


_SQRT_X = np.array([[0.03, 0.5, 2.0, 0.012]], np.float32)


@pytest.mark.parametrize(("x", "factor", "verdict"), [
    (_SQRT_X, 1.0, "match"),  # one step of 1e-2 gave a mismatch near 0 (steep curvature)
    (_SQRT_X, 1.06, "MISMATCH"),  # a 6% error is still caught
    (_SQRT_X.astype(np.float16), 1.0, "match"),
    (_SQRT_X.astype(np.float16), 1.06, "MISMATCH"),  # float16 is checked in float32, not waved through
])
def test_differences_resolve_curvature_and_catch_errors(x: np.ndarray, factor: float, verdict: str) -> None:
    """The harness's differences (two steps, a rounding floor, float16 checked in float32) accept
    Sqrt's true derivative near 0 and still reject one 6% off (closed form 1 / (2 sqrt x))."""
    case = _unary("Sqrt", x)
    w = np.ones(x.shape)
    got = factor * 0.5 / np.sqrt(x.astype(np.float64))
    if x.dtype == np.float16:
        case = Case(case.name, case.op, oracle._float16_to_float32(case.model), "x", x.astype(np.float32))
    assert oracle._against_differences(case, "y", w, got).verdict == verdict


def test_no_derivative_at_a_jump() -> None:
    """Sign jumps at 0 (no derivative, the quotients grow as 1/h): the element is left out, while
    elsewhere a wrong derivative is still caught."""
    x = np.array([[0.0, 0.7, -0.4]], np.float32)
    case = _unary("Sign", x)
    assert oracle._against_differences(case, "y", np.ones(x.shape), np.array([123.0, 0.0, 0.0])).verdict == "match"
    assert oracle._against_differences(case, "y", np.ones(x.shape), np.array([0.0, 0.5, 0.0])).verdict == "MISMATCH"


def test_a_kink_accepts_any_derivative_between_its_sides() -> None:
    """Abs at 0: one-sided derivatives -1 and 1; 0 (the rule's choice, a subgradient) is valid,
    2 is not."""
    x = np.array([[0.0, 0.5]], np.float32)
    case = _unary("Abs", x)
    assert oracle._against_differences(case, "y", np.ones(x.shape), np.array([0.0, 1.0])).verdict == "match"
    assert oracle._against_differences(case, "y", np.ones(x.shape), np.array([2.0, 1.0])).verdict == "MISMATCH"


@pytest.mark.parametrize("name", ["sweep_pad_reflect_0_0_2_1_0_0_1_3", "sweep_pad_reflect_0_0_1_-1_0_0_2_0",
                                  "sweep_pad_wrap_0_0_2_1_0_0_1_3", "sweep_pad_wrap_0_0_1_-1_0_0_2_0"])
def test_copying_pad_boxes_hold_the_copied_pixels(name: str) -> None:
    """Pad reflect / wrap: a border unit reads a mirrored / wrapped pixel; its clipped box is that
    pixel (was the zero-padding box, which missed it: unsound), vs onnxruntime's dependencies."""
    assert check_trf(_cases()[name]).verdict == "exact"


@pytest.mark.parametrize("layers", sweeps.PAD_CHAINS + [
    [("pad", ("edge", 1, 2)), ("conv", (3, 2, 0)), ("pad", ("reflect", 0, 2))],
    [("conv", (2, 2, 0)), ("pad", ("reflect", 1, 1)), ("pad", ("edge", 2, 0)), ("conv", (3, 1, 1))],
])
def test_copying_pads_in_chains_are_sound(layers: list) -> None:
    """Copying pads after strided layers and after one another (a pixel a later Pad copies lies in
    an earlier Pad's padding): every pixel a unit reads is in its box, vs onnxruntime."""
    assert check_trf(sweeps.pad_chain(layers)).verdict in ("exact", "loose")


def test_copying_pad_keeps_r_s_p() -> None:
    """A reflect pad has the r, S, P of the zero pad of the same size (the paper's); only the
    clipped boxes differ."""
    fields = {}
    for mode in ("constant", "reflect"):
        ep = rfgraph.analyze(sweeps.pad_chain([("pad", (mode, 2, 1)), ("conv", (3, 2, 0))]).model)["t1"]
        fields[mode] = (ep.r, ep.S, ep.P)
    assert fields["reflect"] == fields["constant"]


@pytest.mark.parametrize("name", ["sweep_tile_channels", "sweep_tile_batch", "sweep_tile_none", "sweep_tile_reduced_h"])
def test_tile_copies_of_features_or_of_a_size_one_axis_are_analysed(name: str) -> None:
    """Tile (gcvit's global query, repeated over the windows) stopped the analysis: copies of
    channels, of the batch or of an axis of size 1 are analysed, each unit's region equal to its
    measured dependencies (the global H of a mean over H included, the local W kept), and the
    gradient matches central differences."""
    case = _cases()[name]
    analysis = rfgraph.analyze(case.model, input_name="x", layout="NCHW")
    assert "y" in analysis and not analysis.stops
    assert check_trf(case).verdict == "exact"
    assert check_vjp(case).verdict == "match"


def test_tile_copies_of_a_spatial_axis_are_refused() -> None:
    """Copies along W (output unit o reads unit o mod 5) have no sliding field: the analysis stops
    at the Tile naming why; the gradient still matches central differences."""
    case = _cases()["sweep_tile_spatial_w"]
    analysis = rfgraph.analyze(case.model, input_name="x", layout="NCHW")
    assert "y" not in analysis
    (stop,) = analysis.stops
    assert stop.op == "Tile" and "o mod 5" in stop.reason
    assert check_vjp(case).verdict == "match"
