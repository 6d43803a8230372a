"""ONNX import: load and check a model, infer shapes, and expose its DAG as a networkx graph.

Initializers and Constant nodes are values, not layers.  Every failure on a user's file becomes an
``RFGraphError`` with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import DynamicShapeError, GraphStructureError, ModelLoadError

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]
Shape = tuple  # of int | None (None: unknown dim)

MAX_DIM = 2**31 - 1  # larger dims are refused as absurd
CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}


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

    def constant(self, tensor: str) -> np.ndarray | None:
        """Value of a tensor that is an initializer or a Constant node's output, else None."""
        if tensor in self._constants:
            return self._constants[tensor]
        value = None
        if tensor in self.initializers:
            value = numpy_helper.to_array(self.initializers[tensor])
        elif tensor in self.producer:
            node = self.nodes[self.producer[tensor]]
            if node.op_type == "Constant":
                value = _constant_node_value(node)
            elif node.op_type in ("Identity", "Cast") and node.input:
                value = self.constant(node.input[0])
        self._constants[tensor] = value
        return value

    def topological_nodes(self) -> list[int]:
        """Node indices in topological order (deterministic: ties broken by file order)."""
        return list(nx.lexicographical_topological_sort(self.dag))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a Constant node, whichever attribute holds it."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None


# ---------------------------------------------------------------- loading


def read_model(source: ModelSource) -> onnx.ModelProto:
    """Parse a model from a path, bytes or ModelProto; refuse unsafe external data."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return _parse_bytes(bytes(source), "<bytes>")
    path = Path(os.fspath(source))
    if str(path).startswith("zoo:"):
        return _zoo_model(str(path)[4:])
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    data = path.read_bytes()
    model = _parse_bytes(data, str(path))
    _load_external_data(model, path.parent)
    return model


def _zoo_model(name: str) -> onnx.ModelProto:
    """Build a model of the bundled model_zoo by name (``zoo:NAME``)."""
    try:
        import model_zoo
    except ImportError as exc:  # pragma: no cover - installed with the package
        raise ModelLoadError("model_zoo is not installed; reinstall rfgraph") from exc
    if not hasattr(model_zoo, "available"):
        raise ModelLoadError("model_zoo has no builders in this installation")
    if name not in model_zoo.available():
        raise ModelLoadError(f"zoo:{name}: unknown model; available: {', '.join(model_zoo.available())}")
    return model_zoo.build(name)


def _parse_bytes(data: bytes, where: str) -> onnx.ModelProto:
    """Parse serialized ONNX, turning protobuf failures into a readable error."""
    if not data:
        raise ModelLoadError(f"{where}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError
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
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            raise ModelLoadError(
                f"tensor '{tensor.name}': external data location '{location}' points outside the "
                f"model's folder; refused (not read)")
        if not target.is_file():
            raise ModelLoadError(f"tensor '{tensor.name}': external data file '{location}' not found")
    if tensors:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ModelLoadError(f"cannot read external data: {exc}") from None


def _all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Initializers and Constant-node tensors of the main graph."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


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
    """Fix input dims: the given shapes, and batch 1 where the batch dim is symbolic."""
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
    for name in names:
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) >= 3 and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation; failures leave shapes unknown, not fatal."""
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return model


def _dims(type_proto: onnx.TypeProto, name: str = "?") -> Shape | None:
    """Shape of a tensor type (None for unknown dims), or None when there is no shape."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        v = d.dim_value if d.HasField("dim_value") else None
        if v is not None and (v < 0 or v > MAX_DIM):
            raise GraphStructureError(
                f"tensor '{name}' has dimension {v} (negative or absurd): a kernel larger than its "
                f"input, or a corrupt shape; refused")
        dims.append(v)
    return tuple(dims)


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


def build_graph(model: onnx.ModelProto) -> ModelGraph:
    """Check the graph's structure and return it as a networkx DAG with shapes."""
    g = model.graph
    initializers = {t.name: t for t in g.initializer}
    inputs = data_inputs(model)
    known = set(initializers) | {i.name for i in g.input}
    producer: dict[str, int] = {}
    names = _unique_node_names(g.node)
    for idx, node in enumerate(g.node):
        for out in node.output:
            if not out:
                continue
            if out in producer or out in known:
                raise GraphStructureError(
                    f"duplicate tensor name '{out}': produced by node '{names[idx]}' and defined "
                    f"elsewhere too; the graph is not valid SSA")
            producer[out] = idx
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(g.node)))
    for idx, node in enumerate(g.node):
        for tensor in node.input:
            if not tensor:
                continue  # optional input left out
            if tensor in producer:
                dag.add_edge(producer[tensor], idx)
            elif tensor not in known:
                raise GraphStructureError(
                    f"node '{names[idx]}' ({node.op_type}) reads tensor '{tensor}', which no node, "
                    f"input or initializer provides")
    _check_acyclic(dag, names)
    for out in g.output:
        if out.name not in producer and out.name not in known:
            raise GraphStructureError(f"graph output '{out.name}' is never produced")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelGraph(model, dag, list(g.node), names, producer, collect_shapes(model),
                      initializers, inputs, [o.name for o in g.output], opset)


def _unique_node_names(nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """A display name per node: its name, or ``op_type#index`` when unnamed or repeated."""
    seen: set[str] = set()
    names = []
    for idx, node in enumerate(nodes):
        name = node.name or f"{node.op_type}#{idx}"
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


def load_model(source: ModelSource, input_shape: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """Read a model, fix input shapes, and run shape inference; the public loading entry point."""
    model = read_model(source)
    model = _copy(model)
    set_input_shapes(model, input_shape or {})
    return infer_shapes(model)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy so that fixing shapes never mutates the caller's ModelProto."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
