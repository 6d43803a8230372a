"""Conformance cases: the ONNX project's node tests (regenerated from ``onnx.backend.test.case.node``,
since the wheel ships no data) and attribute sweeps of our own, each as one model whose inputs
other than the studied one are baked in as initializers."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rfgraph.semantics import NON_DIFFERENTIABLE, TRF_RULES, VJP_RULES

FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
VJP_TABLE = set(VJP_RULES) | set(NON_DIFFERENTIABLE)


@dataclass(frozen=True)
class Case:
    """One model, the studied input's name and value, and the op the case exercises."""

    name: str
    op: str
    model: onnx.ModelProto
    x_name: str
    x: np.ndarray

    @property
    def spatial(self) -> bool:
        """True when the studied input has N, C and at least one spatial axis (a TRF case)."""
        return self.x.ndim >= 3


def _primary_op(name: str, model: onnx.ModelProto) -> str:
    """The op a node test is about: the single node's op, or for an expanded function the op
    whose name the test carries."""
    ops = [n.op_type for n in model.graph.node]
    if len(ops) == 1:
        return ops[0]
    flat = name.lower().replace("_", "")
    named = [op for op in set(TRF_RULES) | VJP_TABLE if f"test{op.lower()}" in flat]
    return max(named, key=len) if named else ops[-1]


def _studied_input(model: onnx.ModelProto, values: list[np.ndarray]) -> int | None:
    """Index of the input the case studies: the first float input of rank >= 3, else the first
    float input."""
    floats = [i for i, (v, arr) in enumerate(zip(model.graph.input, values))
              if v.type.tensor_type.elem_type in FLOATS and isinstance(arr, np.ndarray)]
    spatial = [i for i in floats if values[i].ndim >= 3]
    return (spatial or floats or [None])[0]


def freeze(model: onnx.ModelProto, values: list[np.ndarray], keep: int) -> onnx.ModelProto | None:
    """``model`` with every input but ``keep`` turned into an initializer holding its value and
    every shape fixed (None when an input is not a plain tensor)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inputs = list(m.graph.input)
    del m.graph.input[:]
    for i, (vi, arr) in enumerate(zip(inputs, values)):
        if not isinstance(arr, np.ndarray) or not vi.type.HasField("tensor_type"):
            return None
        if i == keep:
            m.graph.input.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, arr.shape))
        elif vi.name:
            m.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
    return m


def node_cases() -> list[Case]:
    """Every node test whose op has a TRF or a VJP rule, with its first data set."""
    return list(_node_cases())


@functools.lru_cache(maxsize=1)
def _node_cases() -> tuple[Case, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tests = collect_testcases()
    out = []
    for t in tests:
        if not t.data_sets:
            continue
        op = _primary_op(t.name, t.model)
        if op not in TRF_RULES and op not in VJP_TABLE:
            continue
        values = list(t.data_sets[0][0])
        keep = _studied_input(t.model, values)
        if keep is None or len(values) != len(t.model.graph.input):
            continue
        model = freeze(t.model, values, keep)
        if model is not None:
            out.append(Case(t.name, op, model, t.model.graph.input[keep].name, values[keep]))
    return tuple(out)


def all_cases() -> list[Case]:
    """Node tests plus our attribute sweeps."""
    from tests.conformance.sweeps import sweep_cases

    return node_cases() + sweep_cases()
