"""ONNX import: load and check a model, infer shapes, and expose its DAG as a networkx graph.

Initializers and Constant nodes are values, not layers.  Every failure on a user's file becomes an
``RFGraphError`` with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from . import runtime
from .budgets import BIG_WEIGHT, WEIGHT_BYTES
from .errors import (
    DynamicShapeError,
    GraphStructureError,
    InputSizeError,
    InvalidAttributeError,
    ModelLoadError,
    RFGraphError,
)
from .semantics import BROADCAST_OPS
from .semantics.contrib import expand_contrib_ops
from .semantics.layout import circular_padding
from .space_to_batch import may_hold_space_to_batch, rewrite_space_to_batch

ModelSource = str | os.PathLike | bytes | onnx.ModelProto
Shape = tuple  # of int | None (None: unknown dim)

MAX_DIM = 2**31 - 1  # larger dims are refused as absurd
MIN_OPSET = 17  # LayerNormalization, ScatterElements(add), Split/ReduceSum with tensor inputs


@dataclass
class ModelGraph:
    """An ONNX model as a DAG of nodes, with tensor shapes and constant values.

    ``dag`` has one networkx node per ONNX node (keyed by index); an edge ``a -> b`` means a
    tensor produced by ``a`` is consumed by ``b``.  Graph inputs have no producer.
    """

    model: onnx.ModelProto
    dag: nx.DiGraph
    nodes: list[onnx.NodeProto]
    names: list[str]  # unique display name per node
    producer: dict[str, int]  # tensor -> index of producing node
    shapes: dict[str, Shape]
    initializers: dict[str, onnx.TensorProto]
    inputs: list[str]  # graph inputs that are not initializers
    outputs: list[str]
    opset: int
    _constants: dict[str, np.ndarray | None] = field(default_factory=dict)
    captured: dict[int, list[str]] = field(default_factory=dict)  # node -> outer tensors its subgraphs read
    node_inputs: list[tuple[str, ...]] = field(default_factory=list)  # per node, as plain tuples:
    node_outputs: list[tuple[str, ...]] = field(default_factory=list)  # protobuf field access is
    op_types: list[str] = field(default_factory=list)  # slow in the pass's hot loop
    edges_forward: bool = False  # every edge runs forward in file order (checked by build_graph)

    def node_of(self, tensor: str) -> onnx.NodeProto | None:
        """The node computing ``tensor`` (None for a graph input or an initializer)."""
        idx = self.producer.get(tensor)
        return None if idx is None else self.nodes[idx]

    def wrap_padding(self, idx: int) -> tuple[int, int, int, int] | None:
        """``semantics.layout.circular_padding`` of node ``idx`` (a Concat), on this graph."""
        return circular_padding(self.nodes[idx], self.node_of, self.constant, self.shapes.get) \
            if self.op_types[idx] == "Concat" else None

    def __post_init__(self) -> None:
        if not self.node_inputs:
            self.node_inputs = [tuple(n.input) for n in self.nodes]
            self.node_outputs = [tuple(n.output) for n in self.nodes]
            self.op_types = [n.op_type for n in self.nodes]

    def constant(self, tensor: str) -> np.ndarray | None:
        """Value of a tensor that does not depend on the graph inputs, else None.

        Initializers, Constant nodes, Shape of a fully known shape, and small constant-only
        subgraphs (ConstantOfShape-built weights, pads computed by Slice/Concat...) folded one node
        at a time with the ONNX reference evaluator.  Iterative, so 100k-node chains cannot
        overflow the stack.
        """
        stack = [tensor]
        while stack:
            t = stack[-1]
            if t in self._constants:
                stack.pop()
                continue
            deps = self._fold_inputs(t)
            missing = [d for d in deps or () if d not in self._constants]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            self._constants[t] = None if deps is None else self._evaluate(t)
        return self._constants[tensor]

    def _fold_inputs(self, tensor: str) -> list[str] | None:
        """Tensors a constant's value needs first ([] for a leaf), or None when not constant."""
        if tensor in self.initializers:
            return []
        if tensor not in self.producer:
            return None
        node = self.nodes[self.producer[tensor]]
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return []
        if node.op_type in ("Shape", "Size"):  # known from the input's shape alone
            shape = self.shapes.get(node.input[0])
            return [] if shape is not None and None not in shape else None
        if node.op_type in FOLDABLE_OPS:
            return [t for t in node.input if t]
        return None

    def _evaluate(self, tensor: str) -> np.ndarray | None:
        """Compute one constant tensor whose inputs are already folded (None if too big or failing)."""
        if tensor in self.initializers:
            return _initializer_value(self.initializers[tensor])
        node = self.nodes[self.producer[tensor]]
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type == "Shape":
            attrs = attributes(node)
            shape = self.shapes[node.input[0]]
            return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], dtype=np.int64)
        if node.op_type == "Size":
            return np.array(math.prod(self.shapes[node.input[0]]), dtype=np.int64)
        values = [self._constants[t] if t else None for t in node.input]
        if any(v is None for t, v in zip(node.input, values) if t):
            return None
        if any(np.size(v) > MAX_FOLD_ELEMENTS for v in values if v is not None):
            return None
        out_shape = self.shapes.get(tensor)
        if node.op_type in ALLOCATING_OPS and (out_shape is None or None in out_shape
                                               or math.prod(out_shape) > MAX_FOLD_ELEMENTS):
            return None  # never allocate an absurd tensor to fold a constant
        return _run_node(node, values, self.opset, tensor)

    def topological_nodes(self) -> list[int]:
        """Node indices in topological order (deterministic: ties broken by file order)."""
        if self.edges_forward or all(p < i for p, i in self.dag.edges):  # the usual case: a sorted
            return list(range(len(self.nodes)))  # file, whose lexicographic sort is file order
        return list(nx.lexicographical_topological_sort(self.dag))


# Ops folded when all their inputs are constant: cheap value/shape arithmetic exporters use to
# build weights, pads, scales and Reshape targets.  Anything else is treated as run-time data.
FOLDABLE_OPS = {
    "Identity", "Cast", "CastLike", "Concat", "Reshape", "Slice", "Transpose", "Squeeze",
    "Unsqueeze", "Gather", "Split", "Flatten", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Floor",
    "Ceil", "Sqrt", "Min", "Max", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Where", "Not", "ConstantOfShape",
    "Expand", "Tile", "Range", "Pow", "Mod", "Clip", "ReduceProd", "ReduceSum", "Pad",
}
# Foldable ops whose output may be far larger than their inputs: folded only when shape inference
# gives a small known output size.
ALLOCATING_OPS = {"ConstantOfShape", "Expand", "Tile", "Range", "Pad"}
MAX_FOLD_ELEMENTS = 1 << 22


def _run_node(node: onnx.NodeProto, values: Sequence[np.ndarray | None], opset: int,
              tensor: str) -> np.ndarray | None:
    """Evaluate one node on constant inputs with the ONNX reference evaluator (None on failure),
    wrapped in a model of the file's opset: a bare node is run by the newest version of its op
    (Unsqueeze-13 refused opset 12's ``axes`` attribute, so ddddocr's Reshape targets stayed unknown)."""
    from onnx.reference import ReferenceEvaluator
    feeds = {t: np.asarray(v) for t, v in zip(node.input, values) if t}
    inputs = [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), None)
              for t, v in feeds.items()]
    outputs = [o for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", inputs,
                                   [onnx.helper.make_empty_tensor_value_info(o) for o in outputs])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", max(opset, 1))])
    try:
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001  an op the evaluator rejects: value unknown, never fail the load
        return None
    for name, value in zip(outputs, outs):
        if name == tensor:
            return np.asarray(value)
    return None


def _initializer_value(tensor: onnx.TensorProto) -> np.ndarray | None:
    """An initializer as an array; None when its data is missing or does not match its dims."""
    from onnx.external_data_helper import uses_external_data
    if math.prod(tensor.dims) > MAX_DIM or uses_external_data(tensor):
        return None  # absurd, or side-file data that was not loaded (never read relative to cwd)
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001  malformed tensor data: treat the value as unknown
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a Constant node, whichever attribute holds it."""
    for attr in node.attribute:
        if attr.name == "value":
            return _initializer_value(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None


# ---------------------------------------------------------------- loading


def read_model(source: ModelSource) -> onnx.ModelProto:
    """Parse a model from a path, bytes or ModelProto; refuse unsafe external data; write
    onnxruntime's contrib ops as the standard ops they compute (``semantics.contrib``)."""
    return expand_contrib_ops(_read_model(source))


def _read_model(source: ModelSource) -> onnx.ModelProto:
    """The model as stored (``read_model`` without the contrib ops' expansion)."""
    if isinstance(source, onnx.ModelProto):
        return _without_external_locations(source)
    if isinstance(source, (bytes, bytearray)):
        model = _parse_bytes(bytes(source), "<bytes>")
        _check_declarations(model, "<bytes>")
        return _without_external_locations(model)
    path = Path(os.fspath(source))
    if str(path).startswith("zoo:"):
        return _zoo_model(str(path)[4:])
    _check_model_file(path)
    data = path.read_bytes()
    model = _parse_bytes(data, str(path))
    _check_declarations(model, str(path))
    _load_external_data(model, path.parent)
    return model


def _check_declarations(model: onnx.ModelProto, where: str) -> None:
    """Refuse what would be analysed with unknown semantics or nothing to analyse: an opset newer
    than the installed onnx knows, a graph input with a dimension of 0, every graph input shadowed
    by an initializer (a default value: no data input is left)."""
    known = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > known:
            raise ModelLoadError(f"{where}: opset {imp.version} is newer than any this onnx release knows "
                                 f"(<= {known}): the ops' semantics are unknown; upgrade onnx or export "
                                 f"with opset <= {known}")
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim if inp.type.HasField("tensor_type") else []
        if any(d.HasField("dim_value") and d.dim_value == 0 for d in dims):
            raise ModelLoadError(f"{where}: input '{inp.name}' has a dimension of size 0: an empty tensor has "
                                 f"no receptive field")
    _check_nodes(model, where)
    if model.graph.input and not data_inputs(model):
        names = ", ".join(f"'{i.name}'" for i in model.graph.input)
        raise ModelLoadError(f"{where}: every graph input ({names}) has an initializer of the same name (a "
                             f"default value), so none is a data input; remove those initializers to analyse it")


def _check_nodes(model: onnx.ModelProto, where: str) -> None:
    """Refuse, before any work, a node without an op type or without outputs: not an ONNX node (an
    8 MB file of 4M empty nodes took 5 GB and 3 min, then was analysed as if they were absent)."""
    opset = default_opset(model, 1)
    for i, node in enumerate(model.graph.node):
        what = f"node #{i}" + (f" '{node.name}'" if node.name else "")
        if not node.op_type:
            raise GraphStructureError(f"{where}: {what} has no op type: not a valid ONNX node")
        if not any(node.output):
            raise GraphStructureError(f"{where}: {what} ({node.op_type}) has no output: not a valid ONNX node")
        fewest = _fewest_inputs(node.op_type, node.domain, opset)
        if len(node.input) < fewest:  # a required input missing: every rule would index past the end
            raise GraphStructureError(f"{where}: {what} ({node.op_type}) has {len(node.input)} input(s); the "
                                      f"ONNX spec (opset {opset}) requires at least {fewest}")


@functools.cache
def _fewest_inputs(op_type: str, domain: str, opset: int) -> int:
    """The inputs the spec requires of the op at ``opset`` (0 for ops it does not know)."""
    if domain not in ("", "ai.onnx"):
        return 0
    try:
        return int(onnx.defs.get_schema(op_type, opset, "").min_input)
    except Exception:  # noqa: BLE001  an op this onnx does not know: its rule (or the lack of one) decides
        return 0


def unknown_standard_op(op_type: str, domain: str) -> bool:
    """An op in ONNX's own domain that ONNX does not define (an exporter's leftover framework
    call: tf2onnx's StatefulPartitionedCall)."""
    if domain not in ("", "ai.onnx"):
        return False
    return not isinstance(op_type, str) or not onnx.defs.has(op_type)  # (undecodable bytes: no op)


MAX_MODEL_BYTES = 2**31 - 1  # protobuf cannot parse a larger message: refused before reading
WEIGHT_BUDGET_ENV = WEIGHT_BYTES.env


def _check_model_file(path: Path) -> None:
    """Refuse, before reading a byte, what is no ONNX file: a missing path, a folder, a device or
    FIFO (``/dev/zero`` read forever, a FIFO blocked forever), or a file protobuf cannot parse."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{path}: not a regular file (a device, FIFO or socket); refused, not read")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelLoadError(f"{path}: {st.st_size} bytes, larger than an ONNX file can be "
                             f"({MAX_MODEL_BYTES} bytes: protobuf's limit; large weights go in side files)")


def weight_budget() -> int:
    """Side-file bytes one model may read (``budgets.WEIGHT_BYTES``: ``RFGRAPH_MAX_WEIGHT_BYTES``,
    default 8 GiB; 0, negative or non-numeric values are refused as every other limit's)."""
    return WEIGHT_BYTES.limit()


def _zoo_model(name: str) -> onnx.ModelProto:
    """Build a model of the bundled model_zoo by name (``zoo:NAME`` or ``zoo:NAME:key=value``)."""
    import model_zoo

    if not model_zoo.is_available(name):
        raise ModelLoadError(f"zoo:{name}: unknown model; available: {', '.join(model_zoo.available())}")
    try:
        return model_zoo.build(name)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"zoo:{name}: {exc}") from None


def _parse_bytes(data: bytes, where: str) -> onnx.ModelProto:
    """Parse serialized ONNX, turning protobuf failures into a readable error."""
    if not data:
        raise ModelLoadError(f"{where}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ...
        if "depth" in str(exc).lower():  # e.g. If inside If 200 deep: an ONNX model protobuf cannot read
            raise ModelLoadError(f"{where}: its messages nest deeper than protobuf's parsing limit (subgraphs "
                                 f"inside subgraphs, e.g. If in If); it cannot be read ({exc})") from None
        raise ModelLoadError(
            f"{where}: not an ONNX model or truncated file (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{where}: not an ONNX model or empty graph (no nodes found)")
    return model


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Load weights kept in side files, refusing any location outside the model's folder."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    base = base.resolve()
    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    total = 0
    for tensor in tensors:
        try:
            info = ExternalDataInfo(tensor)
        except (ValueError, TypeError) as exc:  # offset="abc": int() of the field fails
            raise ModelLoadError(f"tensor '{tensor.name}': bad external data field ({exc})") from None
        target = _external_file(tensor, info.location, base)
        total += _external_span(tensor, info, target)
    budget = weight_budget()
    if total > budget:
        raise ModelLoadError(f"the model's side files would load {total} bytes, over the budget of {budget} "
                             f"(set {WEIGHT_BUDGET_ENV} to raise it)")
    if tensors:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:  # noqa: BLE001 - any failure: one clear line, never a traceback
            raise ModelLoadError(f"cannot read external data: {exc}") from None


def _external_file(tensor: onnx.TensorProto, location: str, base: Path) -> Path:
    """The side file of ``tensor``, refused when it lies outside the model's folder or is missing."""
    target = (base / location).resolve()
    if os.path.isabs(location) or base not in target.parents:
        raise ModelLoadError(
            f"tensor '{tensor.name}': external data location '{location}' points outside the "
            f"model's folder; refused (not read)")
    if not target.is_file():
        raise ModelLoadError(f"tensor '{tensor.name}': external data file '{location}' not found")
    return target


def _external_span(tensor: onnx.TensorProto, info: Any, target: Path) -> int:
    """Bytes ``tensor`` reads from its side file: offset and length non-negative, inside the file,
    and the length its dims and type need (checked before any read)."""
    itemsize = element_size(tensor.data_type)
    need = math.prod(tensor.dims) * itemsize if itemsize else None
    offset = int(info.offset or 0)
    length = int(info.length) if info.length is not None else (need if need is not None else -1)
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelLoadError(f"tensor '{tensor.name}': external data offset {offset} / length {length} lie "
                             f"outside its {size}-byte file '{info.location}'")
    if need is not None and length != need:
        raise ModelLoadError(f"tensor '{tensor.name}': external data length {length} bytes, but its shape "
                             f"{list(tensor.dims)} needs {need}")
    return length


def element_size(elem_type: int) -> int | None:
    """Bytes per element of a numeric ONNX element type (None for strings and unknown types)."""
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize) \
        if elem_type in _NUMERIC_TYPES else None


_NUMERIC_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                            onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                            onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                            onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL})


def _all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every stored tensor, whatever type its attribute declares (onnx and onnxruntime read a
    ``t`` field under any type): initializers (dense and sparse), attribute tensors of the main
    graph, of every subgraph, of model functions and of training graphs, so no external location
    escapes the folder check."""
    graphs: list[onnx.GraphProto | onnx.FunctionProto] = [model.graph, *model.functions]
    for info in model.training_info:
        graphs += [info.initialization, info.algorithm]
    while graphs:  # iterative: nesting depth cannot overflow the stack
        g = graphs.pop()
        if isinstance(g, onnx.GraphProto):
            yield from g.initializer
            for sparse in g.sparse_initializer:
                yield from (sparse.values, sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _attribute_tensors(attr: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    """The tensors an attribute stores, in any of its fields (dense or sparse)."""
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
    for sp in [*sparse, *attr.sparse_tensors]:
        yield from (sp.values, sp.indices)


def _without_external_locations(model: onnx.ModelProto) -> onnx.ModelProto:
    """An in-memory model has no folder: its side-file references are cut (on a copy), so that no
    reader, ours, onnx's or onnxruntime's, resolves them against the current directory; those
    tensors' values stay unknown."""
    from onnx.external_data_helper import uses_external_data
    if not any(uses_external_data(t) for t in _all_tensors(model)):
        return model
    model = copy_model(model)
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            del tensor.external_data[:]
    return model


# ---------------------------------------------------------------- shapes


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI ``name:1x3x224x224`` specs (``name`` may be omitted for the first input)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise DynamicShapeError(f"--input-shape '{spec}': expected NAME:1x3x224x224") from None
        if any(d <= 0 or d > MAX_DIM for d in shape):
            raise DynamicShapeError(f"--input-shape '{spec}': dims must be between 1 and {MAX_DIM}")
        shapes[name] = shape
    return shapes


def data_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are not initializers (older exporters list weights as inputs too)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix input dims: the given shapes, and batch 1 where the batch dim is symbolic (in every
    input whose dims use the same symbol)."""
    inputs = {i.name: i for i in model.graph.input}
    names = data_inputs(model)
    for name, shape in shapes.items():
        key = name or (names[0] if names else "")
        if key not in inputs:
            raise DynamicShapeError(f"--input-shape: the model has no input '{name}' "
                                    f"(inputs: {', '.join(names)})")
        dims = inputs[key].type.tensor_type.shape.dim
        if len(dims) and len(dims) != len(shape):
            raise DynamicShapeError(f"--input-shape {key}: rank {len(shape)} given, model input has rank {len(dims)}")
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    batch = set()  # a symbol naming only the batch dim: another input's leading dim of that name is the batch
    for name in names:
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) >= 3 and not dims[0].HasField("dim_value"):
            symbol = dims[0].dim_param
            if symbol and sum(d.dim_param == symbol for d in dims) == 1:  # paddle2onnx names every dim "?"
                batch.add(symbol)
            dims[0].Clear()
            dims[0].dim_value = 1
    for name in names:  # a diffusion net's noise level sigma ['batch'] beside its image ['batch', 1, H, W]
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_param") and dims[0].dim_param in batch:
            dims[0].Clear()
            dims[0].dim_value = 1


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference, then fold constant shape arguments and infer again until nothing changes.

    ONNX's data propagation gives up on shape arithmetic such as Concat(Slice(Shape(x)), [-1]),
    common in exported Reshape targets; folding those to initializers lets inference continue.
    """
    model = _infer_once(model)
    for _ in range(MAX_FOLD_ROUNDS):
        if not _fold_shape_arguments(model):
            break
        model = _infer_once(model)
    return model


def _infer_once(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation (where its values stay small); failures leave
    shapes unknown, not fatal."""
    data_prop = propagated_values_are_small(model)
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=data_prop)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown shapes are reported later
        return model


# Ops through which ONNX's data propagation carries a 1-D value, and how long it makes it.
_PASS_THROUGH = {"Identity", "Cast", "CastLike", "Neg", "Abs"}


def propagated_values_are_small(model: onnx.ModelProto) -> bool:
    """Whether the values ONNX's data propagation would materialise stay under MAX_FOLD_ELEMENTS.

    It computes the values of shape-like tensors, ConstantOfShape and Concat included: a 577-byte
    file (ConstantOfShape([2^22]) doubled by 50 Concats) made it allocate over 20 GB.  An upper
    bound of each such value's length is propagated over the nodes, in file order."""
    lengths: dict[str, int] = {}
    values = {t.name: _initializer_value(t) for t in model.graph.initializer if len(t.dims) <= 1}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values.update({o: _constant_node_value(node) for o in node.output})
            continue
        length = _propagated_length(node, values, lengths)
        if length is None:
            continue
        if length > MAX_FOLD_ELEMENTS:
            return False
        lengths.update(dict.fromkeys(node.output, length))
    return True


def _propagated_length(node: onnx.NodeProto, values: Mapping[str, np.ndarray | None],
                       lengths: Mapping[str, int]) -> int | None:
    """Upper bound of the 1-D value a node's output may get by data propagation (None: none known)."""
    def number(i: int) -> int | None:
        value = values.get(node.input[i]) if len(node.input) > i else None
        return int(np.prod(value, dtype=object)) if value is not None and value.size else None

    known = [lengths[t] for t in node.input if t in lengths]
    if node.op_type == "ConstantOfShape":
        return number(0)
    if node.op_type == "Concat" and known:
        constant = [values.get(t) for t in node.input if t not in lengths]
        return sum(known) + sum(int(v.size) for v in constant if v is not None)
    if node.op_type in ("Tile", "Expand") and (known or number(1)):
        return (known[0] if known else 1) * (number(1) or 1)
    if node.op_type in _PASS_THROUGH and known:
        return known[0]
    return None


MAX_FOLD_ROUNDS = 64  # rounds of fold + infer: each block of a windowed transformer may need one
# Inputs that carry shapes, pads, scales or axes (not data), by op: folded when constant.
SHAPE_ARGUMENTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4),
    "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Split": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "Range": (0, 1, 2),
}


def _fold_shape_arguments(model: onnx.ModelProto) -> int:
    """Replace constant-but-computed shape arguments of nodes whose output shape is unknown by
    initializers; returns how many were replaced (0: nothing left to gain)."""
    if not _has_unknown_shape_argument_outputs(model):
        return 0  # the common case: nothing to fold, so no second graph build
    try:
        mg = build_graph(model)
    except Exception:  # noqa: BLE001  structural problems are reported later, by build_graph itself
        return 0
    folded = 0
    for node in model.graph.node:
        slots = SHAPE_ARGUMENTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        out = mg.shapes.get(node.output[0]) if node.output else ()
        if not slots or (out is not None and None not in out):
            continue
        for slot in slots:
            tensor = node.input[slot] if slot < len(node.input) else ""
            if not tensor or tensor in mg.initializers or _is_constant_node(mg, tensor):
                continue
            value = mg.constant(tensor)
            if value is None:
                continue
            name = f"{tensor}::folded"
            if name not in mg.initializers:
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                mg.initializers[name] = model.graph.initializer[-1]
            node.input[slot] = name
            folded += 1
    return folded


def _has_unknown_shape_argument_outputs(model: onnx.ModelProto) -> bool:
    """Whether some node taking shape arguments has an output whose shape inference left unknown."""
    g = model.graph
    wanted = {node.output[0] for node in g.node
              if node.op_type in SHAPE_ARGUMENTS and node.domain in ("", "ai.onnx") and node.output}
    if not wanted:
        return False
    known = {vi.name for vi in list(g.value_info) + list(g.output) + list(g.input)
             if vi.name in wanted and vi.type.HasField("tensor_type")
             and vi.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
    return bool(wanted - known)


def _is_constant_node(mg: ModelGraph, tensor: str) -> bool:
    return tensor in mg.producer and mg.nodes[mg.producer[tensor]].op_type == "Constant"


def _dims(type_proto: onnx.TypeProto, name: str = "?") -> Shape | None:
    """Shape of a tensor type (None for unknown dims), or None when there is no shape."""
    if not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tuple([d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim])
    for v in dims:
        if v is not None and (v < 0 or v > MAX_DIM):
            raise GraphStructureError(
                f"tensor '{name}' has dimension {v} (negative or absurd): a kernel larger than its "
                f"input, or a corrupt shape; refused")
    return dims


def collect_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes of every tensor that shape inference (or the file) knows."""
    shapes: dict[str, Shape] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        s = _dims(vi.type, vi.name)
        if s is not None and (vi.name not in shapes or None in shapes[vi.name]):
            shapes[vi.name] = s
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


# ---------------------------------------------------------------- the DAG


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: the pass allocates millions of small acyclic objects on
    big graphs, and repeated full collections over them would make it superlinear."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()  # move what the pass allocated to the oldest generation (O(1) list
            gc.unfreeze()  # merges), so re-enabling does not rescan millions of young objects
            gc.enable()


def build_graph(model: onnx.ModelProto) -> ModelGraph:
    """Check the graph's structure and return it as a networkx DAG with shapes."""
    with paused_gc():
        return _build_graph(model)


def _build_graph(model: onnx.ModelProto) -> ModelGraph:
    """``build_graph`` proper (protobuf fields are read once, into plain tuples)."""
    g = model.graph
    nodes = list(g.node)
    node_inputs = [tuple(n.input) for n in nodes]
    node_outputs = [tuple(n.output) for n in nodes]
    op_types = [n.op_type for n in nodes]
    initializers = {t.name: t for t in g.initializer}
    inputs = data_inputs(model)
    known = set(initializers) | {i.name for i in g.input}
    producer: dict[str, int] = {}
    names = _unique_node_names(nodes, op_types)
    for idx, outs in enumerate(node_outputs):
        for out in outs:
            if not out:
                continue
            if out in producer or out in known:
                raise GraphStructureError(
                    f"duplicate tensor name '{out}': produced by node '{names[idx]}' and defined "
                    f"elsewhere too; the graph is not valid SSA")
            producer[out] = idx
    captured = {idx: names_ for idx, node in enumerate(nodes)
                if _may_have_subgraphs(node, op_types[idx]) and (names_ := captured_tensors(node))}
    edges: list[tuple[int, int]] = []
    for idx, ins in enumerate(node_inputs):
        for tensor in captured.get(idx, ()):
            if tensor in producer:
                edges.append((producer[tensor], idx))
        for tensor in ins:
            if not tensor:
                continue  # optional input left out
            p = producer.get(tensor)
            if p is not None:
                edges.append((p, idx))
            elif tensor not in known:
                raise GraphStructureError(
                    f"node '{names[idx]}' ({op_types[idx]}) reads tensor '{tensor}', which no node, "
                    f"input or initializer provides")
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(nodes)))
    dag.add_edges_from(edges)
    edges_forward = all(p < i for p, i in edges)
    if not edges_forward:  # edges that all run forward in file order cannot close a cycle
        _check_acyclic(dag, names)
    for out in g.output:
        if out.name not in producer and out.name not in known:
            raise GraphStructureError(f"graph output '{out.name}' is never produced")
    opset = default_opset(model, 0)
    return ModelGraph(model, dag, nodes, names, producer, collect_shapes(model), initializers, inputs,
                      [o.name for o in g.output], opset, captured=captured, node_inputs=node_inputs,
                      node_outputs=node_outputs, op_types=op_types, edges_forward=edges_forward)


# Standard ops with graph attributes; standard ops without them cannot carry a subgraph
SUBGRAPH_OPS = {"If", "Loop", "Scan", "SequenceMap"}


def _may_have_subgraphs(node: onnx.NodeProto, op_type: str) -> bool:
    """Whether a node may hold subgraphs: a standard control-flow op, or any op of another domain."""
    return op_type in SUBGRAPH_OPS or node.domain not in ("", "ai.onnx")


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs, and the outer-scope ones its subgraphs read."""
    return [*node.input, *(captured_tensors(node) if _may_have_subgraphs(node, node.op_type) else ())]


def captured_tensors(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read inside a node's subgraphs (If/Loop/Scan bodies): implicit inputs."""
    found: list[str] = []
    pending = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    pending += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    local: set[str] = set()
    while pending:  # iterative walk over nested subgraphs
        sub = pending.pop()
        local |= {i.name for i in sub.input} | {t.name for t in sub.initializer}
        local |= {o for n in sub.node for o in n.output}
        for n in sub.node:
            found.extend(t for t in n.input if t)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    pending.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    pending.extend(a.graphs)
        found.extend(o.name for o in sub.output)
    return sorted({t for t in found if t not in local})


def _unique_node_names(nodes: Sequence[onnx.NodeProto], op_types: Sequence[str]) -> list[str]:
    """A display name per node: its name, or ``op_type#index`` when unnamed or repeated."""
    seen: set[str] = set()
    names = []
    for idx, node in enumerate(nodes):
        name = node.name or f"{op_types[idx]}#{idx}"
        if name in seen:
            name = f"{name}#{idx}"
        seen.add(name)
        names.append(name)
    return names


def _check_acyclic(dag: nx.DiGraph, names: list[str]) -> None:
    """Refuse graphs with a cycle, naming the nodes on it."""
    if nx.is_directed_acyclic_graph(dag):
        return
    cycle = nx.find_cycle(dag)
    path = " -> ".join(names[a] for a, _ in cycle[:6])
    raise GraphStructureError(f"the graph has a cycle ({path} -> ...); ONNX graphs must be acyclic")


def load_model(source: ModelSource, input_shape: Mapping[str, Sequence[int]] | None = None,
               fill: Mapping[str, float] | None = None, *, check: bool = True,
               probe: bool = True) -> onnx.ModelProto:
    """Read a model, fix input shapes, give the ``fill`` inputs their constant values, run shape
    inference, replace each If whose condition is then known by its branch, and check that the
    model can run at that size (``check_input_size``; ``probe``: complete unknown shapes with one
    onnxruntime run); the public loading entry point."""
    model = read_model(source)
    model = copy_model(model)
    _unknown_negative_dims(model)
    exported = static_input_shapes(model)
    if input_shape:
        forget_stored_shapes(model)
    set_input_shapes(model, input_shape or {})
    fill_inputs(model, fill or {})
    model = _dilated_convs_read(_inferred_without_contradictions(model))
    if check:
        check_input_size(model, exported, probe)
    return model


def _dilated_convs_read(model: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx's space-to-batch dilated convolutions replaced by the dilated Convs they compute
    (``space_to_batch``), shapes inferred again; the model unchanged where there is none."""
    if not may_hold_space_to_batch(model):
        return model
    try:
        mg = build_graph(model)
    except RFGraphError:  # structural problems are reported later, by build_graph itself
        return model
    if not rewrite_space_to_batch(mg, lambda node, values: _run_node(node, values, mg.opset, node.output[0])):
        return model
    return infer_shapes(mg.model)


# ---------------------------------------------------------------- input sizes the model can run

# Ops whose output shape depends on their input's values, not only on its shape: a probe on zeros
# measures one case of them, so shapes after them are never taken from a probe.
VALUE_SHAPED_OPS = {"NonZero", "NonMaxSuppression", "Compress", "Unique", "TopK", "Loop", "Scan", "If"}
# Ops that read only their input's shape: what they compute is no data of the input.
SHAPE_READERS = {"Shape", "Size"}
PROBE_MAX_ELEMENTS = 1 << 24  # the largest input the shape probe runs (64 MB of float32)


def static_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes of the data inputs as the file fixes them (the export size), when every dim is set."""
    inputs = {i.name: i for i in model.graph.input}
    out = {}
    for name in data_inputs(model):
        dims = inputs[name].type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            out[name] = tuple(d.dim_value for d in dims)
    return out


def check_input_size(model: onnx.ModelProto, exported: Mapping[str, tuple[int, ...]],
                     probe: bool = True) -> None:
    """Refuse an input size the model cannot run (``InputSizeError``): a tensor shrunk to nothing,
    a Reshape whose fixed target no longer holds the data, an onnxruntime run that fails; and
    complete the shapes inference left unknown with one onnxruntime run (``probe``).  One pass over
    the shapes finds the nodes worth a look; most models have none and pay only that read."""
    dims = stored_dims(model)
    nodes = list(model.graph.node)
    outputs = [tuple(n.output) for n in nodes]
    produced = {t for outs in outputs for t in outs if t}
    unsure_tensors = (produced - dims.keys()) | {t for t, shape in dims.items()  # unknown, or no unit
                                                 if None in shape or (shape and min(shape) < 1)}  # type: ignore[type-var,operator]
    unsure = [i for i, outs in enumerate(outputs) if not unsure_tensors.isdisjoint(outs)] \
        if unsure_tensors & produced else []
    windows = [i for i, n in enumerate(nodes) if n.op_type in WINDOW_WEIGHTS and outputs[i]  # 1 unit:
               and not _has_units((dims.get(outputs[i][0]) or (None,) * 3)[2:], least=2)]  # maybe none
    reshapes = [i for i, n in enumerate(nodes) if n.op_type == "Reshape"]
    if not (unsure or windows or reshapes):
        return
    dependent = value_dependent(model)
    _refuse_unbroadcastable(model, [nodes[i] for i in unsure], dims, exported)
    _refuse_vanished(model, [nodes[i] for i in sorted(set(unsure) | set(windows))], set(dependent), dims)
    _refuse_reshape_mismatch(model, [nodes[i] for i in reshapes], set(dependent), dims, exported)
    if unsure and probe and _probe_unknown_shapes(model, dependent, dims, exported):
        dims = stored_dims(model)
        _refuse_vanished(model, [n for n in nodes if any(not _has_units(dims.get(t)) for t in n.output if t)],
                         set(dependent), dims)


_INFERENCE_FAILURE = re.compile(r"\(op_type:(\w+)(?:, node name: ([^)]*))?\): \[ShapeInferenceError\] "
                                r"(.*?)(?: \(op_type:|$)")


def upstream_shape_failure(model: onnx.ModelProto) -> InputSizeError | None:
    """Why the model cannot run at its input size where ONNX's strict shape inference fails at a
    node whose output shape is unknown on the input's path (a Squeeze of an axis no longer of size
    1) and no probe run told: the shapes after it stay unknown, and an op rule further on fails on
    them with a message that names the wrong node.  None when no such node fails."""
    dims = stored_dims(model)
    dependent = set(value_dependent(model))
    suspects = [n for n in model.graph.node
                if any(t in dependent and None in (dims.get(t) or (None,)) for t in n.output if t)]
    if not suspects:
        return None
    try:
        shape_inference.infer_shapes(shapes_only(model), check_type=False, strict_mode=True,
                                     data_prop=propagated_values_are_small(model))
        return None
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError; only a named node is used
        found = _INFERENCE_FAILURE.search(" ".join(str(exc).split()))
    if found is None:
        return None
    op, name, why = found.group(1), found.group(2) or "", found.group(3)
    node = next((n for n in suspects if n.op_type == op and n.name == name), None)
    if node is None or "external" in why:  # a value the weightless copy cannot read (refused external
        return None  # data: the Pad's pads unknown), not a size the model cannot run at
    shown = _node_names(model)[node.output[0]][0]
    inputs = ", ".join(_shape_text(dims[t]) if t in dims else "?" for t in node.input if t)
    return InputSizeError(f"the model cannot run at input size {_input_size_text(model)}: node '{shown}' ({op}) "
                          f"fails: {why} (inputs {inputs})", shown, op)


def _has_units(shape: tuple[int | None, ...] | None, least: int = 1) -> bool:
    """Whether a shape is known and has at least ``least`` positions along every axis."""
    return shape is not None and all(d is not None and d >= least for d in shape)


MAX_SEARCH_SIZE = 1 << 16  # the largest spatial size the search for the smallest valid size tries


def smallest_input_size(model: onnx.ModelProto, name: str, shape: Sequence[int], axes: Sequence[int],
                        fill: Mapping[str, float] | None = None) -> tuple[int, ...] | None:
    """Smallest size along each spatial axis (``axes`` of input ``name``) at which no tensor
    vanishes, found with shape inference alone: double every axis until nothing vanishes, then
    bisect each axis with the others held there (output sizes of windows grow with the input, so
    this is the per-axis minimum); None when nothing up to ``MAX_SEARCH_SIZE`` fits.  Remembered
    per model and input (a size scan asks again at every size too small)."""
    base = shapes_only(model)
    key = (hashlib.sha256(base.SerializeToString()).hexdigest(), name, tuple(axes),
           tuple(None if a in axes else d for a, d in enumerate(shape)), tuple(sorted((fill or {}).items())))
    if key not in _SMALLEST_SIZES:
        if len(_SMALLEST_SIZES) >= 64:
            _SMALLEST_SIZES.clear()
        _SMALLEST_SIZES[key] = _search_smallest_size(base, name, shape, axes, fill)
    return _SMALLEST_SIZES[key]


_SMALLEST_SIZES: dict[tuple, tuple[int, ...] | None] = {}


def _search_smallest_size(base: onnx.ModelProto, name: str, shape: Sequence[int], axes: Sequence[int],
                          fill: Mapping[str, float] | None) -> tuple[int, ...] | None:
    """``smallest_input_size``'s search, on a model stripped of its weights."""

    def fits(size: Sequence[int]) -> bool:
        try:
            load_model(base, {name: tuple(size)}, fill, probe=False)
        except InputSizeError as exc:
            return not exc.vanished  # other refusals are no vanishing map
        except RFGraphError:
            return False
        return True

    high = list(shape)
    while not fits(high):
        if max(high[a] for a in axes) >= MAX_SEARCH_SIZE:
            return None
        for a in axes:
            high[a] *= 2
    best = list(high)
    for a in axes:
        lo, hi = 1, high[a]
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(high[:a] + [mid] + high[a + 1:]) else (mid + 1, hi)
        best[a] = hi
    return tuple(best) if fits(best) else tuple(high)


def shapes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the data of big float initializers (weights, never shape arithmetic), for
    the many shape inferences of a search; built field by field, so the weights are neither copied
    nor touched in ``model`` (reading and re-setting their bytes costs their size twice in upb)."""
    light = onnx.ModelProto()
    _copy_fields(light, model, skip="graph")
    _copy_fields(light.graph, model.graph, skip="initializer")
    for init in model.graph.initializer:
        if init.data_type in FLOAT_TYPES and math.prod(init.dims) > BIG_WEIGHT:
            light.graph.initializer.add(name=init.name, dims=init.dims, data_type=init.data_type)
        else:
            light.graph.initializer.append(init)
    return light


def _copy_fields(dst: onnx.ModelProto | onnx.GraphProto, src: onnx.ModelProto | onnx.GraphProto,
                 skip: str) -> None:
    """Copy every set field of ``src`` into ``dst`` except ``skip`` (protobuf copies are deep)."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        target = getattr(dst, fd.name)
        if hasattr(target, "extend"):  # repeated
            target.extend(value)
        elif hasattr(target, "CopyFrom"):  # message
            target.CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def static_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """The shape (where every dim is known) and element type of each tensor, from the shape
    inference every analysis runs (``infer_shapes`` on the ``shapes_only`` copy: constant shape
    arguments folded); what it leaves unknown the probe (``measure_shapes``) can measure."""
    inferred = infer_shapes(shapes_only(model))
    shapes = {name: dims for name, dims in stored_dims(inferred).items() if None not in dims}
    return shapes, elem_types(inferred)  # type: ignore[return-value]


FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                         onnx.TensorProto.BFLOAT16})


def value_dependent(model: onnx.ModelProto) -> list[str]:
    """Tensors computed from the data inputs' values (graph order), not from their shapes alone."""
    live = set(data_inputs(model))
    out = []
    for node in model.graph.node:
        if node.op_type in SHAPE_READERS or not any(t in live for t in node.input if t):
            continue
        for t in node.output:
            if t:
                live.add(t)
                out.append(t)
    return out


def stored_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every stored or inferred shape as it stands, negative dims included (inference writes -1
    where a kernel is larger than its input; ``collect_shapes`` refuses those as corrupt)."""
    out: dict[str, tuple[int | None, ...]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dim = tensor_type.shape.dim
        dims: tuple[int | None, ...] = tuple([d.dim_value for d in dim])
        if not all(dims):  # 0 is also what an unset dim reads: tell the two apart
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in dim)
        if vi.name not in out or None in out[vi.name]:
            out[vi.name] = dims
    out.update({t.name: tuple(t.dims) for t in g.initializer})
    return out


def _input_size_text(model: onnx.ModelProto) -> str:
    """The data inputs' shapes as --input-shape writes them (x:1x3x32x32)."""
    dims = stored_dims(model)
    return ", ".join(f"{n}:{_shape_text(dims.get(n) or ())}" for n in data_inputs(model))


def _shape_text(shape: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def _node_names(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Tensor -> (display name, op) of the node producing it (names as ``build_graph`` gives them)."""
    nodes = list(model.graph.node)
    names = _unique_node_names(nodes, [n.op_type for n in nodes])
    return {t: (name, n.op_type) for n, name in zip(nodes, names) for t in n.output if t}


def _refuse_vanished(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], dependent: set[str],
                     dims: Mapping[str, tuple[int | None, ...]]) -> None:
    """Refuse when a tensor computed from the input has a zero or negative dim, or a window is
    larger than its padded input (the first such of ``nodes``, in graph order): the input is too
    small for the windows on its path (a map with no units has no receptive field).  An empty
    tensor that only Concats read (torch.roll by 0 written as two Slices and a Concat: Video Swin's
    time axis shorter than its window) adds nothing to them: their own outputs are checked."""
    joined = _only_concatenated(model)
    for node in nodes:
        if not node.output or node.output[0] not in dependent:
            continue
        short = _window_overhang(node, dims)
        tensor = next((t for t in node.output if t not in joined
                       and any(d is not None and d <= 0 for d in dims.get(t) or ())), None)
        if short is None and tensor is None:
            continue
        name, op = _node_names(model)[node.output[0]]
        what = short or f"gives '{tensor}' the shape {_shape_text(dims[tensor or ''])}, with no units"
        raise InputSizeError(f"input size {_input_size_text(model)} is too small: node '{name}' ({op}) "
                             f"{what}", name, op, vanished=True)


# Ops whose inputs broadcast against each other: the ops whose TRF rule is numpy broadcasting,
# but Expand (its second input is the target shape, not a tensor that broadcasts)
BROADCASTING_OPS = BROADCAST_OPS - {"Expand"}


def _refuse_unbroadcastable(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
                            dims: Mapping[str, tuple[int | None, ...]],
                            exported: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse when the known shapes of an elementwise op's inputs cannot broadcast (per axis from
    the right: equal, or one of them 1), or a Concat's inputs differ off its axis: onnxruntime fails
    there at this size, shape inference left the output unknown (``nodes``), and fields of units
    that do not match would be reported (a NASNet exported at a dynamic size adds a 27x27 map to a
    55x55 one at every size)."""
    for node in nodes:
        shapes = [dims.get(t) for t in node.input if t]
        if any(s is None or None in s for s in shapes) or len(shapes) < 2:
            continue
        if node.op_type in BROADCASTING_OPS and node.domain in ("", "ai.onnx"):
            clash = _broadcast_clash(shapes)  # type: ignore[arg-type]
        elif node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
            clash = _concat_clash(shapes, int(attributes(node).get("axis", 0)))  # type: ignore[arg-type]
        else:
            continue
        if clash:
            name, op = _node_names(model)[node.output[0]]
            raise InputSizeError(f"the model cannot run at input size {_input_size_text(model)}: node '{name}' "
                                 f"({op}) {clash}{_export_size_hint(model, exported)}", name, op)


def _broadcast_clash(shapes: Sequence[tuple[int, ...]]) -> str:
    """Why these shapes do not broadcast together ('' when they do)."""
    rank = max(len(s) for s in shapes)
    for k in range(1, rank + 1):
        sizes = {s[-k] for s in shapes if len(s) >= k} - {1}
        if len(sizes) > 1:
            return f"cannot broadcast its inputs {' and '.join(_shape_text(s) for s in shapes)}"
    return ""


def _concat_clash(shapes: Sequence[tuple[int, ...]], axis: int) -> str:
    """Why these shapes do not concatenate along ``axis`` ('' when they do)."""
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes) or not -rank <= axis < rank:
        return ""  # the rule reports ranks and axes itself
    axis %= rank
    if len({tuple(d for i, d in enumerate(s) if i != axis) for s in shapes}) > 1:
        return f"cannot concatenate its inputs {' and '.join(_shape_text(s) for s in shapes)} along axis {axis}"
    return ""


def _only_concatenated(model: onnx.ModelProto) -> set[str]:
    """Tensors every reader of which is a Concat (none is a graph output)."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, set()).add(node.op_type if node.domain in ("", "ai.onnx") else "")
    outputs = {o.name for o in model.graph.output}
    return {t for t, ops in readers.items() if ops == {"Concat"} and t not in outputs}


# Sliding-window ops: the input slot holding the weights whose dims after the first two are the
# kernel (None: the kernel_shape attribute gives it).
WINDOW_WEIGHTS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "MaxPool": None, "AveragePool": None,
                  "LpPool": None}


def _window_overhang(node: onnx.NodeProto, dims: Mapping[str, tuple[int | None, ...]]) -> str | None:
    """Why a conv/pool window does not fit in its padded input (no output unit under the spec's
    floor((in + pads - dilated kernel) / stride) + 1), or None.  Checked here because ONNX shape
    inference rounds that negative quotient toward zero and reports one unit, which onnxruntime
    then refuses to compute."""
    slot = WINDOW_WEIGHTS.get(node.op_type, -1)
    if slot == -1 or node.domain not in ("", "ai.onnx"):
        return None
    attrs = attributes(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID") or attrs.get("ceil_mode", 0):
        return None  # SAME padding always leaves ceil(in / stride) units; ceil_mode: inference's
    x = dims.get(node.input[0]) if node.input else None
    kernel = _ints(attrs.get("kernel_shape"))
    if kernel is None and slot is not None and slot < len(node.input):
        kernel = _ints((dims.get(node.input[slot]) or ())[2:])
    if not x or not kernel:
        return None
    n = len(kernel)
    pads = _ints(attrs.get("pads", [0] * 2 * n)) if auto_pad in (b"NOTSET", "NOTSET") else [0] * 2 * n
    dilations = _ints(attrs.get("dilations", [1] * n))
    if pads is None or dilations is None or len(pads) != 2 * n or len(dilations) != n or len(x) < n:
        return None  # malformed attributes: the op rules name them
    sizes = x[len(x) - n:]
    for i, (size, k) in enumerate(zip(sizes, kernel)):
        extent = (k - 1) * dilations[i] + 1
        if size is not None and size + pads[i] + pads[i + n] < extent:
            return (f"has input {_shape_text(x)}, smaller along axis {len(x) - n + i} ({size} + padding "
                    f"{pads[i] + pads[i + n]}) than its window ({extent}): no output unit")
    return None


def _ints(value: object) -> list[int] | None:
    """A list of ints, or None when ``value`` is anything else (a malformed attribute)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        return None
    return list(value)


def _refuse_reshape_mismatch(model: onnx.ModelProto, reshapes: Sequence[onnx.NodeProto], dependent: set[str],
                             dims: Mapping[str, tuple[int | None, ...]],
                             exported: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a Reshape whose known target holds another number of values than its known input:
    a target fixed when the model was exported, which this input size no longer fits."""
    for node in reshapes:
        if not node.input or node.input[0] not in dependent:
            continue
        src, dst = dims.get(node.input[0]), dims.get(node.output[0])
        if src is None or dst is None or None in src or None in dst:
            continue
        if math.prod(src) != math.prod(dst):  # type: ignore[arg-type]  # no None left
            name, op = _node_names(model)[node.output[0]]
            hint = _export_size_hint(model, exported)
            raise InputSizeError(
                f"the model cannot run at input size {_input_size_text(model)}: node '{name}' (Reshape) "
                f"reshapes {_shape_text(src)} ({math.prod(src)} values) to {_shape_text(dst)} "  # type: ignore[arg-type]
                f"({math.prod(dst)} values): its target does not fit this input size"  # type: ignore[arg-type]
                f"{hint}", name, op, fixed_target=bool(hint))


def _export_size_hint(model: onnx.ModelProto, exported: Mapping[str, tuple[int, ...]]) -> str:
    """'; it was exported at x:1x3x64x64' when the file fixes another input size, else ''."""
    dims = stored_dims(model)
    if not exported or all(dims.get(n) == s for n, s in exported.items()):
        return ""
    return "; the file was exported at " + ", ".join(f"{n}:{_shape_text(s)}" for n, s in exported.items())


def _probe_unknown_shapes(model: onnx.ModelProto, dependent: Sequence[str],
                          dims: Mapping[str, tuple[int | None, ...]],
                          exported: Mapping[str, tuple[int, ...]]) -> bool:
    """Measure the shapes inference left unknown with one onnxruntime run on zeros, and store them
    in ``value_info``; True when shapes were stored.  Skipped (False) when an input's size is unknown
    or past ``PROBE_MAX_ELEMENTS``, or onnxruntime cannot load the model (a custom op); a failed
    run, or onnxruntime's shape inference failing at load, refuses the size."""
    missing = [t for t in _probe_targets(model, dependent) if None in (dims.get(t) or (None,))]
    if not missing or not _probe_affordable(model, dims):
        return False
    try:
        session = probe_session(model, missing, elem_types(model))
    except Exception as exc:  # noqa: BLE001  onnxruntime cannot load it: refused when its own shape
        if "ShapeInferenceError" in str(exc):  # inference fails (a size that does not fit), else
            _refuse_failed_run(model, str(exc), exported)  # (a custom op...) shapes stay unknown
        return False
    try:
        measured = runtime.run_on_zeros(session, missing, elem_types(model))
    except Exception as exc:  # noqa: BLE001  an onnxruntime failure at run time, handled below
        _refuse_failed_run(model, str(exc), exported)
        return False
    store_shapes(model, measured)
    return True


# Ops whose output can be far larger than their inputs: the probe runs only where each one's size
# is known and within budget (never allocate an absurd tensor to learn a shape).
GROWING_OPS = ALLOCATING_OPS | {"Resize", "Upsample", "ConvTranspose", "Pad"}


def _probe_affordable(model: onnx.ModelProto, dims: Mapping[str, tuple[int | None, ...]]) -> bool:
    """Whether one run is bounded: every input known and at most ``PROBE_MAX_ELEMENTS``, and every
    growing op's output known and within 4x that."""
    def within(shape: tuple[int | None, ...] | None, limit: int) -> bool:
        return shape is not None and None not in shape and math.prod(shape) <= limit  # type: ignore[arg-type]

    return (all(within(dims.get(n), PROBE_MAX_ELEMENTS) for n in data_inputs(model))
            and all(within(dims.get(t), 4 * PROBE_MAX_ELEMENTS) for node in model.graph.node
                    if node.op_type in GROWING_OPS for t in node.output if t))


def _probe_targets(model: onnx.ModelProto, dependent: Sequence[str]) -> list[str]:
    """The value-dependent tensors whose shape a run on zeros tells (none after a VALUE_SHAPED_OPS node)."""
    live = set(dependent)
    blocked: set[str] = set()
    for node in model.graph.node:
        if node.op_type in VALUE_SHAPED_OPS or any(t in blocked for t in node.input if t):
            blocked.update(t for t in node.output if t in live)
    return [t for t in dependent if t not in blocked]


# onnxruntime's messages naming the failing node: at run time, and from its shape inference at load
ORT_NODE_MESSAGES = (r"running (?P<op>\w+) node\. Name:'(?P<node>[^']*)'.*?Status Message: (?P<why>.*)",
                     r"Node \((?P<node>[^)]*)\) Op \((?P<op>\w+)\) (?P<why>.*)")
ORT_SOURCE_PREFIX = r"^\S+\.(?:h|cc|cpp):\d+ .*?\)\s+"  # "/onnxruntime_src/...h:91 f(args) " before the reason


def _refuse_failed_run(model: onnx.ModelProto, message: str, exported: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse the size: onnxruntime cannot run the model at it (the run on zeros failed, or its
    own shape inference did at load), naming the node, its op and onnxruntime's reason."""
    import re
    found = next((m for p in ORT_NODE_MESSAGES if (m := re.search(p, message, re.S))), None)
    why = re.sub(ORT_SOURCE_PREFIX, "", " ".join((found["why"] if found else message).split()))
    where = f"node '{found['node']}' ({found['op']}) fails: {why}" if found else f"onnxruntime fails: {why}"
    raise InputSizeError(f"the model cannot run at input size {_input_size_text(model)}: {where}"
                         f"{_export_size_hint(model, exported)}",
                         found["node"] if found else "", found["op"] if found else "")


def default_opset(model: onnx.ModelProto, absent: int) -> int:
    """The version of the default (ai.onnx) domain ``model`` imports; ``absent`` when none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), absent)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type the file or inference states."""
    g = model.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)
           if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """``collect_shapes`` of the tensors whose every dim is known."""
    return {name: dims for name, dims in collect_shapes(model).items() if None not in dims}


def elem_type(model: onnx.ModelProto, name: str) -> int:
    """Element type of tensor ``name`` as ``elem_types`` knows it, float32 where unknown."""
    return elem_types(model).get(name, onnx.TensorProto.FLOAT)


def prepare(model: onnx.ModelProto, input_shape: Sequence[int] | None = None,
            input_name: str | None = None) -> onnx.ModelProto:
    """A copy of ``model`` at opset >= 17 with the input's shape fixed (``input_shape``): what the
    gradient graph and the finite differences run (one preparation for both)."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    opset = default_opset(model_copy, 0)
    if opset < MIN_OPSET:
        from onnx import version_converter
        try:
            model_copy = version_converter.convert_version(model_copy, MIN_OPSET)
        except Exception as exc:  # the converter raises its own untyped errors
            raise RFGraphError(f"the gradient graph needs opset {MIN_OPSET}; onnx's version converter "
                               f"cannot convert this opset-{opset} model: {exc}".splitlines()[0]) from exc
    del model_copy.graph.value_info[:]  # stale shapes (e.g. at another batch) would conflict
    for out in model_copy.graph.output:
        out.type.tensor_type.ClearField("shape")
    inits = {i.name for i in model_copy.graph.initializer}
    inputs = [i for i in model_copy.graph.input if i.name not in inits]
    target = next((i for i in inputs if i.name == input_name), inputs[0]) if input_name else inputs[0]
    dims = target.type.tensor_type.shape.dim
    if input_shape is not None:
        if len(input_shape) != len(dims):
            raise DynamicShapeError(f"input shape {tuple(input_shape)} has rank {len(input_shape)}, the "
                                    f"model's input '{target.name}' has rank {len(dims)}")
        _rebatch_reshapes(model_copy, target.name, dims, input_shape)
        for d, v in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(v)
    elif any(not d.HasField("dim_value") for d in dims):
        raise DynamicShapeError(f"input '{target.name}' has unknown dimensions; give an input "
                                "shape (e.g. --input-shape 1,3,224,224)")
    return model_copy


def _rebatch_reshapes(model: onnx.ModelProto, input_name: str, dims: object,
                      new_shape: Sequence[int]) -> None:
    """Make Reshape targets that hard-code the traced batch copy the batch instead (``0``).

    torch's tracer bakes the batch into Reshape constants; rewriting a leading 1 to 0 keeps the
    model identical at batch 1 and lets one run carry several inputs.  Callers verify the batched
    result numerically (``erf`` does), since the rewrite assumes axis 0 is the batch.
    """
    old = [d.dim_value if d.HasField("dim_value") else None for d in dims]  # type: ignore[attr-defined]
    if not old or old[0] != 1 or new_shape[0] == 1:
        return
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        arr = numpy_helper.to_array(inits[node.input[1]]).copy()
        if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
            arr[0] = 0
            new_name = node.input[1] + "/rfgraph_batch"
            if new_name not in inits:
                t = numpy_helper.from_array(arr, new_name)
                model.graph.initializer.append(t)
                inits[new_name] = t
            node.input[1] = new_name


def probe_session(model: onnx.ModelProto, names: Sequence[str], dtypes: Mapping[str, int]) -> Any:
    """An onnxruntime session of ``model`` with ``names`` added to its outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            elem = dtypes.get(name, 0) or onnx.TensorProto.FLOAT
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    # no constant folding (bounded memory), quick load; onnxruntime prints some load failures itself
    return runtime.session(probe, optimize=False, quiet=True)


def measure_shapes(model: onnx.ModelProto, names: Sequence[str],
                   dtypes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one onnxruntime run of the model on zero inputs."""
    return runtime.run_on_zeros(probe_session(model, names, dtypes), names, dtypes)


def store_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    """Record measured shapes in ``value_info`` (replacing what inference left unknown)."""
    dtypes = elem_types(model)
    keep = [vi for vi in model.graph.value_info if vi.name not in shapes]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for name, shape in shapes.items():
        model.graph.value_info.append(helper.make_tensor_value_info(
            name, dtypes.get(name, 0) or onnx.TensorProto.FLOAT, list(shape)))


def fill_inputs(model: onnx.ModelProto, fill: Mapping[str, float]) -> None:
    """Turn each ``fill`` input (an RNN state, a sample rate) into an initializer of its declared
    shape (symbolic dims, a batch, taken as 1; --input-shape fixes them first) and type holding
    that value, so that it is a constant like any weight."""
    if not fill:
        return
    names = set(data_inputs(model))
    inputs = {i.name: i for i in model.graph.input if i.name in names}
    for name, value in fill.items():
        if name not in inputs:
            raise RFGraphError(f"--fill names '{name}', which is no data input of the model "
                               f"(inputs: {', '.join(inputs)})")
        tensor_type = inputs[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        dtype = _fill_dtype(name, value, tensor_type.elem_type)
        _add_constant(model, name, dims, np.array([value], dtype=dtype))
        keep = [i for i in model.graph.input if i.name != name]
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _add_constant(model: onnx.ModelProto, name: str, dims: Sequence[int], value: np.ndarray) -> None:
    """Tensor ``name`` of shape ``dims`` holding ``value`` everywhere: an initializer when small, else
    a ConstantOfShape node, so that a fill of a [60000, 60000] input is never materialised here."""
    if math.prod(dims) <= MAX_FOLD_ELEMENTS:
        model.graph.initializer.append(numpy_helper.from_array(np.full(dims, value[0], dtype=value.dtype), name))
        return
    shape_name = f"{name}__rfgraph_fill_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), shape_name))
    node = onnx.helper.make_node("ConstantOfShape", [shape_name], [name], name=f"{name}__rfgraph_fill",
                                 value=numpy_helper.from_array(value))
    model.graph.node.insert(0, node)


def _fill_dtype(name: str, value: float, elem_type: int) -> np.dtype:
    """The numpy type of input ``name``, once ``value`` is known to be exactly representable in
    it (finite, integral for an integer or bool input, in range): never a garbage constant."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    kind = dtype.kind
    where = f"--fill {name}={value:g}: input '{name}'"
    if kind not in "biuf":
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() \
            else str(elem_type)
        raise RFGraphError(f"{where} has type {type_name}, not a number type")
    if not math.isfinite(value):
        raise RFGraphError(f"{where}: the value must be a finite number")
    if kind == "f":
        if abs(value) > float(np.finfo(dtype).max):
            raise RFGraphError(f"{where} is {dtype.name}; {value:g} is out of its range")
        return dtype
    limits = (0, 1) if kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    if value != int(value) or not limits[0] <= int(value) <= limits[1]:
        raise RFGraphError(f"{where} is {dtype.name}; give an integer in [{limits[0]}, {limits[1]}]")
    return dtype


INLINED = "rfgraph: inlined "  # doc_string mark of the nodes that replace an If


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Replace each If whose condition does not depend on the inputs' values (a fixed shape, a
    filled sample rate) by the nodes of the branch it takes; returns how many were replaced.
    Branch tensors keep their names unless one is already used (then the If stays)."""
    if not any(n.op_type == "If" for n in model.graph.node):
        return 0
    try:
        mg = build_graph(model)
    except RFGraphError:  # structural problems are reported later, by build_graph itself
        return 0
    used = {t for n in model.graph.node for t in n.output} | {t.name for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    inlined = 0
    for node in model.graph.node:
        branch = _taken_branch(mg, node)
        produced = [] if branch is None else [t for n in branch.node for t in n.output] + \
            [t.name for t in branch.initializer]
        if branch is None or used & set(produced) or len(branch.output) != len(node.output):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        which = "then_branch" if branch is _attribute_graph(node, "then_branch") else "else_branch"
        for inner in branch.node:
            inner.doc_string = f"{INLINED}{which} of If '{name}'"
            nodes.append(inner)
        for i, (out, branch_out) in enumerate(zip(node.output, branch.output)):
            if out:
                nodes.append(helper.make_node("Identity", [branch_out.name], [out], name=f"{name}::{which}:{i}",
                                              doc_string=f"{INLINED}{which} of If '{name}'"))
        model.graph.initializer.extend(branch.initializer)
        used |= set(produced)
        inlined += 1
    if inlined:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return inlined


def _taken_branch(mg: ModelGraph, node: onnx.NodeProto) -> onnx.GraphProto | None:
    """The branch an If node takes when its condition is a constant, else None."""
    if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    try:
        cond = mg.constant(node.input[0])
    except Exception:  # noqa: BLE001 - a condition that cannot be evaluated stays an If
        return None
    if cond is None or np.asarray(cond).size != 1:
        return None
    return _attribute_graph(node, "then_branch" if bool(np.asarray(cond).reshape(())) else "else_branch")


def _attribute_graph(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name), None)


def inlined_ifs(model: onnx.ModelProto) -> dict[str, str]:
    """If node -> which branch replaced it (from the marks ``inline_constant_ifs`` leaves)."""
    out = {}
    for node in model.graph.node:
        if node.doc_string.startswith(INLINED):
            which, _, rest = node.doc_string[len(INLINED):].partition(" of If ")
            out[rest.strip("'")] = which
    return out


def forget_stored_shapes(model: onnx.ModelProto) -> None:
    """Drop the intermediate and output shapes a file stores (valid for one input size only), so
    shape inference recomputes them for the input shape the user set."""
    del model.graph.value_info[:]
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


CONTRADICTED = "rfgraph:contradicted-shapes"  # metadata key: the declarations dropped, one per line
MAX_CONTRADICTIONS = 16  # rounds of dropping declarations (each re-runs the shape inference)
_CONTRADICTION = re.compile(r"op_type:([^,)]*)(?:, node name: ([^)]*))?\): \[ShapeInferenceError\] Inferred shape "
                            r"and existing shape differ")


def _inferred_without_contradictions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with the constant Ifs inlined; a declared shape that the inference
    contradicts (a wrong export: onnxruntime computes the inferred shape and only warns) is
    dropped and the inference redone, so no command reports or seeds it.  The dropped
    declarations are listed under ``CONTRADICTED`` in the metadata (``contradiction_notes``)."""
    dropped: list[str] = []
    for _ in range(MAX_CONTRADICTIONS):
        inferred = _inferred_and_inlined(copy_model(model))
        found = _contradicted_node(inferred)
        lines = _forget_declarations(model, found) if found else []
        if not lines:
            break
        dropped += lines
    if dropped:
        inferred.metadata_props.add(key=CONTRADICTED, value="\n".join(dropped))
    return inferred


def _inferred_and_inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``infer_shapes``, then each If whose condition is known replaced by its branch, again."""
    model = infer_shapes(model)
    for _ in range(MAX_FOLD_ROUNDS):  # an inlined branch may hold an If of its own
        if not inline_constant_ifs(model):
            break
        model = infer_shapes(model)
    return model


def _contradicted_node(model: onnx.ModelProto) -> set[str]:
    """The outputs of the node whose inferred shape contradicts the recorded one (strict
    inference over the recorded shapes; an unnamed node: every unnamed node of its op), or none."""
    try:
        shape_inference.infer_shapes(shapes_only(model), check_type=False, strict_mode=True,
                                     data_prop=propagated_values_are_small(model))
        return set()
    except Exception as exc:  # noqa: BLE001 - only a contradiction is handled here; the rest later
        found = _CONTRADICTION.search(" ".join(str(exc).split()))
    if not found:
        return set()
    op, name = found.group(1).strip(), (found.group(2) or "").strip()
    return {t for n in model.graph.node if n.name == name and (name or n.op_type == op) for t in n.output}


def _forget_declarations(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Drop the declared shapes of ``names`` (value_info entries removed, graph outputs' shapes
    cleared); one line per declaration, "name: [dims]"."""
    g = model.graph
    lines = [f"{vi.name}: {_declared_text(vi)}" for vi in list(g.value_info) + list(g.output)
             if vi.name in names and vi.type.tensor_type.HasField("shape")]
    kept = [vi for vi in g.value_info if vi.name not in names]
    del g.value_info[:]
    g.value_info.extend(kept)
    for vi in g.output:
        if vi.name in names:
            vi.type.tensor_type.ClearField("shape")
    return lines


def _declared_text(vi: onnx.ValueInfoProto) -> str:
    """A declared shape as [1, seqlen, 3]."""
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]
    return f"[{', '.join(dims)}]"


def contradiction_notes(model: onnx.ModelProto) -> list[str]:
    """One sentence per declared shape ``load_model`` dropped because inference contradicts it."""
    text = next((p.value for p in model.metadata_props if p.key == CONTRADICTED), "")
    shapes = stored_dims(model)
    notes = []
    for line in text.splitlines():
        name, _, declared = line.partition(": ")
        inferred = "another shape"
        if name in shapes:
            inferred = f"[{', '.join('?' if d is None else str(d) for d in shapes[name])}]"
        notes.append(f"'{name}' is declared {declared} in the file, but ONNX shape inference gives {inferred} "
                     f"(what onnxruntime computes): the declaration is ignored")
    return notes


def _unknown_negative_dims(model: onnx.ModelProto) -> None:
    """Exporter quirk (Paddle, old Caffe2): dim_value -1 means "dynamic"; make it an unknown dim."""
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()
                    d.dim_param = "?"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``: the one way rfgraph copies a model it then changes, so the
    caller's ModelProto is never mutated."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def model_like(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto],
               inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A model with ``model``'s opsets, IR version and functions and the graph of the given parts,
    built from them: copying the whole model first, then dropping, would hold its weights twice."""
    graph = helper.make_graph(list(nodes), model.graph.name or "part", list(inputs), list(outputs), list(inits))
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def slice_node(model: onnx.ModelProto, tensor: str, out: str, name: str, starts: Sequence[int],
               ends: Sequence[int], axes: Sequence[int]) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A Slice of ``tensor`` to [starts, ends) along ``axes`` as ``model``'s opset spells it
    (attributes before opset 10, inputs from 10 on) and the initializers its inputs need."""
    opset = default_opset(model, 17)
    if opset < 10:
        return helper.make_node("Slice", [tensor], [out], name=name, starts=list(starts), ends=list(ends),
                                axes=list(axes)), []
    names = [f"{name}#{k}" for k in ("starts", "ends", "axes")]
    consts = [numpy_helper.from_array(np.array(list(v), np.int64), n) for n, v in zip(names, (starts, ends, axes))]
    return helper.make_node("Slice", [tensor, *names], [out], name=name), consts


def check_attribute_types(node: onnx.NodeProto, opset: int, where: str) -> None:
    """Refuse attributes whose type differs from the op's ONNX schema (a float ``pads``...)."""
    if node.domain not in ("", "ai.onnx"):
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, max(opset, 1), "")
    except Exception:  # noqa: BLE001  unknown op or opset: the op-rule table reports it
        return
    for attr in node.attribute:
        spec = schema.attributes.get(attr.name)
        if spec is None:
            continue
        # onnx's .pyi omits .value, which the pybind11 enum has: AttributeProto's type number
        want_type: int = spec.type.value  # type: ignore[attr-defined]
        if attr.type != want_type:
            want = onnx.AttributeProto.AttributeType.Name(want_type)
            got = onnx.AttributeProto.AttributeType.Name(attr.type)
            raise InvalidAttributeError(f"node '{where}' ({node.op_type}): attribute '{attr.name}' has type "
                                        f"{got}, the ONNX spec says {want}")


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
