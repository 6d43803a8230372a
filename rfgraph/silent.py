"""Paths that carry no signal: a node whose weights are all zero (a residual branch initialised
to zero, as timm does by default; a pruned layer) outputs a constant, so no gradient crosses it.
The ERF then covers only the paths around such nodes; ``silent_notes`` names them and gives the
field of the paths left (the TRF pass on the model with their inputs held constant).  A product
by a constant of at most ``FAINT_SCALE`` (a layer scale at its initial value, 1e-6 in timm's
ConvNeXt or RDNet) is faint, not silent: the gradient crosses it scaled down so far that the ERF
is the paths around it, and the note says so the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import RFGraphError
from .onnx_import import elem_types, infer_shapes, known_shapes
from .options import ModelOptions
from .vjp import active_tensors, constant_reader

# op -> the operands that, all zero, make its output independent of its other inputs (a product
# by the operand, or a normalisation's scale)
ZEROING_OPERANDS: Mapping[str, tuple[int, ...]] = {
    "Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1), "Mul": (0, 1),
    "BatchNormalization": (1,), "LayerNormalization": (1,), "InstanceNormalization": (1,),
    "GroupNormalization": (1,),
}


FAINT_SCALE = 1e-3  # a Mul by a nonzero constant no larger than this (in magnitude) is faint
FAINT_OPS = ("Mul",)  # a layer scale; a Conv of tiny weights is the model's own business


@dataclass(frozen=True)
class SilentNode:
    """A node on the input's paths whose operand ``operand`` is a constant of zeros."""

    name: str
    op_type: str
    operand: str


def silent_nodes(model: onnx.ModelProto, input_name: str) -> list[SilentNode]:
    """The nodes reading the input (through any path) that output a constant because one of
    their ``ZEROING_OPERANDS`` is a constant of zeros (through Identity and other folds)."""
    return _quiet_nodes(model, input_name)[0]


def _quiet_nodes(model: onnx.ModelProto, input_name: str) -> tuple[list[SilentNode], list[SilentNode]]:
    """In one sweep of the graph: the silent nodes (``silent_nodes``), and the faint ones, the
    ``FAINT_OPS`` whose constant operand is nonzero and at most ``FAINT_SCALE`` in magnitude."""
    active = active_tensors(model, input_name, elem_types(model))
    constant = constant_reader(model)
    silent, faint = [], []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not any(i in active for i in node.input if i):
            continue
        operands = [name for name in _zeroing_operands(node) if name not in active]
        zero = next((name for name in operands if _all_zero(constant, name)), None)
        if zero is not None:
            silent.append(SilentNode(node.name or node.output[0], node.op_type, zero))
            continue
        small = next((name for name in operands if _faint(constant, name)), None) \
            if node.op_type in FAINT_OPS else None
        if small is not None:
            faint.append(SilentNode(node.name or node.output[0], node.op_type, small))
    return silent, faint


def _zeroing_operands(node: onnx.NodeProto) -> list[str]:
    slots = ZEROING_OPERANDS.get(node.op_type, ())
    return [node.input[k] for k in slots if k < len(node.input) and node.input[k]]


def _all_zero(constant: Callable[[str], np.ndarray | None], name: str) -> bool:
    value = constant(name)
    return value is not None and value.size > 0 and value.dtype.kind in "fc" and not value.any()


def _faint(constant: Callable[[str], np.ndarray | None], name: str) -> bool:
    value = constant(name)
    if value is None or value.size == 0 or value.dtype.kind not in "fc" or not value.any():
        return False
    return float(np.abs(value).max()) <= FAINT_SCALE


def live_model(model: onnx.ModelProto, input_name: str, silent: Sequence[SilentNode]) -> onnx.ModelProto:
    """A copy of ``model`` where each silent node reads zeros of the same shape in place of its
    inputs that carry the input: the model of the paths that carry signal."""
    dtypes = elem_types(model)
    active = active_tensors(model, input_name, dtypes)
    shapes = _shapes(model)
    names = {s.name for s in silent}
    live = onnx.ModelProto()
    live.CopyFrom(model)
    for node in live.graph.node:
        if (node.name or node.output[0]) not in names:
            continue
        for k, name in enumerate(node.input):
            if name in active:
                if name not in shapes:
                    raise RFGraphError(f"the shape of '{name}' (read by {node.name}) is unknown")
                held = f"{name}__held_by_{node.name or node.output[0]}"
                dtype = helper.tensor_dtype_to_np_dtype(dtypes.get(name, onnx.TensorProto.FLOAT))  # (a float16 model's)
                live.graph.initializer.append(numpy_helper.from_array(np.zeros(shapes[name], dtype), held))
                node.input[k] = held
    return live


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The static shapes the model declares, else those the loader's inference gives (on a copy:
    it folds shape arguments in place where inference fails)."""
    shapes = known_shapes(model)
    if all(not o or o in shapes for n in model.graph.node for o in n.output):
        return shapes
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return known_shapes(infer_shapes(copy)) | shapes


def silent_notes(model: onnx.ModelProto, input_name: str, output: str, options: ModelOptions,
                 trf_size: Sequence[int | None] | None) -> list[str]:
    """A note naming the silent nodes and the field of the paths left (``trf_size``: the
    output's TRF size, for comparison); [] when there are none, or when the paths left see what
    the whole model sees (an LSTM's first step times its zero initial state); and a note naming
    the faint nodes with the field of the paths around them, where the ERF mostly lies."""
    notes = []
    silent, faint = _quiet_nodes(model, input_name)
    left = _live_field_text(model, input_name, output, options, silent, trf_size) if silent else None
    if left is not None:
        notes.append(f"{len(silent)} node(s) on the input's paths have all-zero weights and pass no gradient "
                     f"({_names(silent)}; e.g. a residual branch initialised to zero): {left}")
    left = _live_field_text(model, input_name, output, options, silent + faint, trf_size) if faint else None
    if left is not None and not left.startswith("no path"):  # every path scaled alike: the map's shape stands
        notes.append(f"{len(faint)} node(s) on the input's paths scale them by at most {FAINT_SCALE:g} "
                     f"({_names(faint)}; e.g. a layer scale at its initial value, as an untrained "
                     f"timm ConvNeXt's): {left.replace('lies within', 'lies mostly within')}, "
                     f"the rest of the map fainter by that factor (trained layer scales are larger; "
                     f"--reinit keeps them)")
    return notes


def _names(nodes: Sequence[SilentNode]) -> str:
    return ", ".join(f"{s.name} ({s.op_type})" for s in nodes[:3]) + (", ..." if len(nodes) > 3 else "")


def _live_field_text(model: onnx.ModelProto, input_name: str, output: str, options: ModelOptions,
                     silent: Sequence[SilentNode], trf_size: Sequence[int | None] | None) -> str | None:
    """What the paths left see: their TRF at ``output``, or that none is left; None when it is
    the whole model's TRF."""
    from .analysis import analyze  # the whole TRF pass: only when there are silent nodes

    if output not in active_tensors(live := live_model(model, input_name, silent), input_name, elem_types(model)):
        return f"no path from '{input_name}' to '{output}' is left, so the gradient is zero everywhere"
    try:
        r = analyze(live, options=options)[output].r
    except (RFGraphError, KeyError) as exc:
        return f"the ERF comes only from the paths around them (their TRF could not be computed: {exc})"
    if trf_size is not None and tuple(r) == tuple(trf_size):
        return None
    was = "" if trf_size is None else f" (the whole model's TRF: {_size_text(trf_size)})"
    return f"the ERF lies within the field of the paths left, {_size_text(r)}{was}"


def _size_text(r: Sequence[int | None]) -> str:
    return " x ".join("global" if v is None else str(v) for v in r)
