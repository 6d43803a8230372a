"""Bugs the conformance suite (tests/conformance) found, each pinned by its node-suite case or a
minimal model, against onnxruntime (measured dependencies or central differences)."""

from __future__ import annotations

import functools

import pytest

from tests.conformance.cases import Case, all_cases
from tests.conformance.oracle import check_trf, check_vjp


@functools.lru_cache(maxsize=1)
def _cases() -> dict[str, Case]:
    return {c.name: c for c in all_cases()}


def test_space_to_depth_crd_gradient() -> None:
    """SpaceToDepth mode=CRD (opset 28) orders blocks column-row-depth: the gradient undoes that
    permutation (the rule ignored ``mode`` and undid DCR's), vs central differences."""
    assert check_vjp(_cases()["test_spacetodepth_crd_mode_example"]).verdict == "match"
