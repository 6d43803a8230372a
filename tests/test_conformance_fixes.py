"""Bugs the conformance suite (tests/conformance) found, each pinned by its node-suite case or a
minimal model, against onnxruntime (measured dependencies or central differences)."""

from __future__ import annotations

import functools

import pytest

from tests.conformance.cases import Case, all_cases
from tests.conformance.oracle import check_vjp


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
