"""Vector-Jacobian-product (VJP) graph builder: from a forward ONNX graph, an ONNX graph computing
``d(seed . y)/dx`` for one output ``y`` and the graph input ``x``, run by plain onnxruntime.

Conventions: only the input gradient is built (weights are constants of the backward pass, no
weight gradient is ever computed); the forward nodes that ``y`` depends on are kept in the same
graph, so one session runs forward and backward together and onnxruntime shares and fuses them.
Each op's rule is one small function in ``semantics.VJP_RULES`` (op type -> rule), kept with its op
family in ``rfgraph/semantics/``; this module builds the graph around them.  An op without a rule
raises ``UnsupportedOpError`` naming the node and pointing to the finite-difference engine
(``--method fd``), which runs any op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import runtime
from .errors import (
    InvalidAttributeError,
    RFGraphError,
    UnsupportedOpError,
)
from .onnx_import import (
    FLOAT_TYPES,
    MIN_OPSET,
    ModelGraph,
    build_graph,
    default_opset,
    known_shapes,
    measure_shapes,
    node_reads,
    prepare,
    static_shapes_and_types,
)
from .projections import linear_layer, readers_of
from .reassociate import reassociated
from .semantics import VJP_RULES, geometry
from .semantics.gradient import (
    FINITE_PRESERVING,
    INDEX_OUTPUTS,
    NON_DIFFERENTIABLE,
    QUANTIZED_OPS,
    Builder,
    IllTypedGradient,
    NodeView,
    QuantizedGradient,
    _window,
)

SEED_NAME = "rfgraph_seed"
FD_HINT = "use the finite-difference engine instead (--method fd; method='fd' in Python), which runs any op"
QUANTIZED_HINT = "compute the ERF of the float model it was quantized from"
GRAD_NAME = "rfgraph_grad"


class VJPError(RFGraphError):
    """The gradient graph cannot be built for this model (bad output name, no path to input)."""


# --------------------------------------------------------------------------------------------
# Graph analysis: static shapes, constants, the active set, the nodes to back-propagate through.
# --------------------------------------------------------------------------------------------


def tensor_shapes(model: onnx.ModelProto, input_name: str) -> tuple[dict[str, tuple[int, ...]],
                                                                    dict[str, int]]:
    """Static shape and element type of every tensor: the model preparation's shape inference
    (``onnx_import.static_shapes_and_types``), window ops by the spec, completed by its onnxruntime
    probe (``measure_shapes``, zeros input) for the tensors inference leaves symbolic."""
    shapes, dtypes = static_shapes_and_types(model)
    _window_output_shapes(model, shapes)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        try:
            shapes.update(measure_shapes(model, missing, dtypes))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's load/run errors have no common base
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VJPError(f"onnxruntime could not run the model to measure its tensor shapes: {why}; "
                           f"{FD_HINT}") from None
        _window_output_shapes(model, shapes)
    return shapes, dtypes


def _window_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Output shapes of window ops by the spec (``geometry.output_sizes``), where ONNX shape
    inference departs from it or gives up; an invalid node is refused here, naming it."""
    for node in model.graph.node:
        if node.op_type not in geometry.WINDOW_OPS:
            continue
        x, y = node.input[0], node.output[0]
        w = shapes.get(node.input[1], ()) if len(node.input) > 1 and node.op_type != "MaxPool" else ()
        if x not in shapes or ("Conv" in node.op_type and not w):
            continue
        if w and len(w) != len(shapes[x]):
            raise InvalidAttributeError(f"node '{node.name or node.op_type}' ({node.op_type}): weight of rank "
                                        f"{len(w)} for an input of rank {len(shapes[x])}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", w[2:]))
        if len(kernel) != len(shapes[x]) - 2:
            continue
        sizes = geometry.output_sizes(node.op_type, node.name or node.op_type, attrs, kernel, shapes[x][2:])
        channels = {"Conv": w[:1], "ConvTranspose": (w[1] * int(attrs.get("group", 1)),) if w else ()}
        shapes[y] = (shapes[x][0], *channels.get(node.op_type, shapes[x][1:2]), *sizes)


def _input_independent(model: onnx.ModelProto, names: Collection[str], active: set[str],
                       dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """Evaluate ``names`` and every integer tensor not depending on the input's values (shape
    arithmetic) in one onnxruntime run on a zero input; {} if it cannot be evaluated."""
    produced = [o for n in model.graph.node for o in n.output if o]
    wanted = [o for o in produced if o not in active and (
        o in names or dtypes.get(o) in (TensorProto.INT64, TensorProto.INT32))]
    if not any(o in names for o in wanted):
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for o in wanted:
        probe.graph.output.append(helper.make_tensor_value_info(o, dtypes.get(o) or
                                                                TensorProto.FLOAT, None))
    try:
        sess = runtime.session(probe)
        return dict(zip(wanted, sess.run(wanted, runtime.zero_feeds(sess, dtypes))))
    except Exception:  # noqa: BLE001 - ORT errors: the rule reports the missing constant
        return {}


def constants(model: onnx.ModelProto, with_initializers: bool = True) -> dict[str, np.ndarray]:
    """Values of Constant-node outputs (and of initializers unless told not to)."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer} \
        if with_initializers else {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int") or attr.name in ("value_floats", "value_ints"):
                out[node.output[0]] = np.array(helper.get_attribute_value(attr))
    return out


def active_tensors(model: onnx.ModelProto, input_name: str, dtypes: dict[str, int]) -> set[str]:
    """Tensors that depend differentiably on the input (float-typed, not through index ops)."""
    active = {input_name}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in NON_DIFFERENTIABLE or not any(i in active for i in node_reads(node) if i):
            continue
        for i, out in enumerate(node.output):
            if INDEX_OUTPUTS.get(node.op_type) == i:
                continue
            if out and (dtypes.get(out, TensorProto.FLOAT) in FLOAT_TYPES
                        or _on_quantized_path(node, active, dtypes)):
                active.add(out)
    return active


def finite_tensors(model: onnx.ModelProto, input_name: str, dtypes: dict[str, int],
                   constant: Callable[[str], np.ndarray | None]) -> set[str]:
    """Float tensors that are finite for every finite input (float overflow aside): the input,
    finite constants (``constant``: an initializer's or Constant node's value, else None), and
    what ``FINITE_PRESERVING`` ops compute from those and from integer or boolean tensors (a
    Where's condition, a Gather's indices); Div by a constant without zeros, Pow by non-negative
    constants and normalisations with a positive epsilon count too, and so does any tensor
    ``constant`` computes finite.  Another graph input is not known finite (an attention mask the
    user fills may hold -inf)."""
    finite = {input_name} | {i.name for i in model.graph.initializer if _finite_value(constant(i.name))}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            ok = _finite_value(constant(node.output[0]))
        elif node.op_type == "ConstantOfShape":  # its value: 0 unless an attribute says otherwise
            ok = all(_finite_value(numpy_helper.to_array(a.t)) for a in node.attribute if a.name == "value")
        else:  # or a constant the folder computes finite (1 / Sqrt(head size) from the shapes)
            ok = _keeps_finite(node, finite, dtypes, constant) or all(
                _finite_value(constant(o)) for o in node.output if o)
        if ok:
            finite.update(o for o in node.output if o)
    return finite


def _finite_value(value: np.ndarray | None) -> bool:
    """Whether a constant is known and all finite (integers and booleans are)."""
    return value is not None and (value.dtype.kind not in "fc" or bool(np.isfinite(value).all()))


def _keeps_finite(node: onnx.NodeProto, finite: set[str], dtypes: dict[str, int],
                  constant: Callable[[str], np.ndarray | None]) -> bool:
    """Whether ``node``'s outputs are finite given which of its inputs are (``finite_tensors``)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in FINITE_PRESERVING | {"Div", "Pow"}:
        return False
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), None)
    if eps is not None and eps <= 0:
        return False  # a constant row normalised with epsilon 0 is 0/0
    if not all(not name or name in finite or dtypes.get(name, TensorProto.FLOAT) not in FLOAT_TYPES
               for name in node.input):
        return False
    if op == "BatchNormalization":  # var + epsilon > 0, or the scale divides by 0
        var = constant(node.input[4]) if len(node.input) > 4 else None
        return var is not None and bool((var + (1e-5 if eps is None else eps) > 0).all())
    if op == "Div":
        divisor = constant(node.input[1])
        return divisor is not None and not bool((divisor == 0).any())
    if op == "Pow":
        exponent = constant(node.input[1])
        if exponent is None:
            return False
        if bool((exponent >= 0).all() and (exponent == np.round(exponent)).all()):
            return True  # a natural power
        base = constant(node.input[0])  # else only a positive constant base is safe
        return base is not None and bool((base > 0).all())
    return True


def constant_folder(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> Callable[[str], np.ndarray | None]:
    """The loader's constant folder over ``model`` at the static ``shapes`` (built on first use):
    values computed from constants and shapes alone (an attention scale from a tensor's size, a
    BatchNorm's parameters behind Identity nodes), node by node, without a session."""
    graph: list[ModelGraph | None] = []

    def fold(name: str) -> np.ndarray | None:
        if not graph:
            try:
                graph.append(build_graph(model))
                graph[0].shapes.update(shapes)  # type: ignore[union-attr]
            except RFGraphError:
                graph.append(None)
        return graph[0].constant(name) if graph[0] is not None else None

    return fold


def constant_reader(model: onnx.ModelProto) -> Callable[[str], np.ndarray | None]:
    """A tensor's value where constants alone give it: stored (a Constant node's; an
    initializer's, read when asked, as ``Builder.constant_or_folded`` does, not every weight at
    once), else the loader's folder (behind Identity nodes: how torch's exporter shares equal
    weights)."""
    nodes, folded = constants(model, with_initializers=False), constant_folder(model, known_shapes(model))
    initializers = {i.name: i for i in model.graph.initializer}

    def read(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        return nodes[name] if name in nodes else folded(name)

    return read


def _on_quantized_path(node: onnx.NodeProto, active: set[str], dtypes: dict[str, int]) -> bool:
    """An integer output that still carries the input: a quantized op's (``QUANTIZED_OPS``) or
    one computed from an active integer tensor (a quantized value moved by Reshape, MaxPool...)."""
    return node.op_type in QUANTIZED_OPS or any(
        i in active and dtypes.get(i, TensorProto.FLOAT) not in FLOAT_TYPES for i in node.input if i)


def ancestors(model: onnx.ModelProto, target: str) -> list[onnx.NodeProto]:
    """The nodes ``target`` depends on, in graph (topological) order."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    needed: set[int] = set()
    stack = [target]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors implicitly
            if attr.type == onnx.AttributeProto.GRAPH:
                stack.extend(i for n in attr.g.node for i in n.input if i)
    return [n for n in model.graph.node if id(n) in needed]


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VJPGraph:
    """A built gradient graph: feed ``input_name`` and ``seed_name``; ``grad_name`` is d(seed.y)/dx;
    ``output_name`` (the forward value of y) is also an output."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    seed_name: str
    grad_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: np.dtype


def build_vjp(model: onnx.ModelProto, output: str | None = None,
              input_shape: Sequence[int] | None = None, input_name: str | None = None,
              emit_output: bool = False) -> VJPGraph:
    """Build the ONNX graph of ``d(seed . y)/dx`` (forward and backward in one graph).

    ``output`` defaults to the first graph output; ``input_shape`` fixes the input (batch included);
    ``emit_output`` also returns y (otherwise onnxruntime prunes what only y needed).
    """
    model = prepare(model, input_shape, input_name)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    x_name = input_name or next(i.name for i in graph.input if i.name not in inits)
    y_name = output or graph.output[0].name
    shapes, dtypes = tensor_shapes(model, x_name)
    if y_name not in shapes:
        raise VJPError(f"'{y_name}' is not a tensor of the model; outputs: "
                       f"{', '.join(o.name for o in graph.output)}")
    active = active_tensors(model, x_name, dtypes)
    if y_name not in active:
        raise VJPError(f"'{y_name}' does not depend (differentiably) on input '{x_name}'")
    model, shapes, dtypes, active = _unrolled(model, x_name, shapes, dtypes, active)
    forward = [_copy(n) for n in ancestors(model, y_name)]
    b = _builder(model, x_name, shapes, dtypes, active)
    _pools_before_relus(b, forward, y_name)
    if any(n.op_type == "Softmax" for n in forward):  # the one rule that reads it; the pass reads every weight
        b.finite = finite_tensors(model, x_name, dtypes, b.constant_or_folded)
    b.producers = {o: n for n in forward for o in n.output if o}
    forward = _scalings_folded(b, _prescaled_linears(b, forward, y_name), y_name)
    _norm_affines_folded(b, forward, y_name)
    forward = reassociated(b, forward, y_name)
    grad_x = _backward(b, forward, x_name, y_name)
    return _assemble(model, forward, b, x_name, y_name, grad_x, emit_output)


def _unrolled(model: onnx.ModelProto, x_name: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, int],
              active: set[str]) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]], dict[str, int], set[str]]:
    """The model with the recurrences on the input's path unrolled (``rfgraph.unroll``: they have
    no rule of their own), and its shapes, types and active set again; unchanged without any."""
    from .unroll import RECURRENT_OPS, unroll_recurrences

    recurrent = [n for n in model.graph.node if n.op_type in RECURRENT_OPS and any(o in active for o in n.output)]
    if not recurrent:
        return model, shapes, dtypes, active
    lengths = {}
    for n in recurrent:
        batch_first = any(a.name == "layout" and a.i for a in n.attribute)
        lengths[n.output[0]] = shapes[n.input[0]][1 if batch_first else 0]
    try:
        model = unroll_recurrences(model, lengths, active, _builder(model, x_name, shapes, dtypes, active).value)
    except UnsupportedOpError as exc:
        raise _with_way_out(exc) from None
    shapes, dtypes = tensor_shapes(model, x_name)
    return model, shapes, dtypes, active_tensors(model, x_name, dtypes)


def _builder(model: onnx.ModelProto, x_name: str, shapes: dict[str, tuple[int, ...]],
             dtypes: dict[str, int], active: set[str]) -> Builder:
    """The context the rules work in (its ``value`` reads the tensors that do not depend on the
    input: constants, initializers, else the loader's folder, else one evaluation on zeros)."""
    opset = default_opset(model, MIN_OPSET)
    fold = constant_folder(model, shapes)
    computed: dict[str, np.ndarray] = {}  # the operands computed in the graph, from one run
    batched: list[bool] = []  # that run was made (once, whatever it gave)

    def evaluate(name: str) -> dict[str, np.ndarray]:  # folded where it can, else from one run
        value = fold(name)
        if value is not None:
            return {name: value}
        if not batched:  # the first: every such operand at once (a run per weight took 100 s
            batched.append(True)  # on dm_nfnet_f0)
            operands = _computed_operands(model, active, shapes, dtypes)
            computed.update(_input_independent(model, operands | {name}, active, dtypes))
        return {name: computed.pop(name)} if name in computed else \
            _input_independent(model, {name}, active, dtypes)

    b = Builder(shapes=dict(shapes), dtypes=dict(dtypes), opset=opset,
                consts=constants(model, with_initializers=False), active=active,
                dtype=dtypes.get(x_name, TensorProto.FLOAT), evaluate=evaluate,
                initializers={i.name: i for i in model.graph.initializer})
    b.fold = fold
    return b


def _computed_operands(model: onnx.ModelProto, active: set[str], shapes: dict[str, tuple[int, ...]],
                       dtypes: dict[str, int]) -> set[str]:
    """Float tensors computed from constants alone that nodes on the input's paths read (a
    standardised convolution weight), when their known sizes add up to ``COMPUTED_BYTES`` or
    less; else none."""
    made = {o for n in model.graph.node for o in n.output if o}
    operands = {t for n in model.graph.node if any(a in active for a in n.input)
                for t in n.input if t in made and t not in active and dtypes.get(t) in FLOAT_TYPES}
    size = sum(math.prod(shapes.get(o, (COMPUTED_BYTES,))) * 4 for o in operands)
    return operands if size <= COMPUTED_BYTES else set()


COMPUTED_BYTES = 1 << 30  # operands evaluated together in one run, at most


def _replace_input(b: Builder, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
    """Give input ``index`` of a forward node a new constant; one a fold made before (a builder
    constant nothing else reads) is dropped at once, not held to the end (a weight's size)."""
    old = node.input[index]
    node.input[index] = b.const(value, dtype=value.dtype)
    if old.startswith("rfgraph_vjp/const"):
        b.inits[:] = [t for t in b.inits if t.name != old]
        b.consts.pop(old, None)


def _norm_affines_folded(b: Builder, forward: list[onnx.NodeProto], y_name: str) -> None:
    """Fold, in place, the scale and shift of each LayerNormalization over the last axis whose
    output only MatMul/Gemm by constant weights read into those weights (diag(gamma) W, and beta W
    into their bias): the norm then outputs xhat itself, which its gradient rule reads instead of
    recomputing it and scaling by gamma (3 passes fewer per norm: ViT-S has 23)."""
    readers = readers_of(forward)
    for node in forward:
        users = readers.get(node.output[0], [])
        affine = _foldable_affine(b, node, users, readers, y_name)
        if affine is None:
            continue
        gamma, beta = affine
        for user in users:
            _affine_into_linear(b, user, gamma, beta, readers)
        node.input[1] = b.const(np.ones(b.shape(node.input[1]), gamma.dtype), dtype=gamma.dtype)  # xhat
        del node.input[2:]


def _foldable_affine(b: Builder, node: onnx.NodeProto, users: list[onnx.NodeProto],
                     readers: dict[str, list[onnx.NodeProto]], y_name: str
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """(gamma, beta) of a LayerNormalization that ``_norm_affines_folded`` folds, else None."""
    if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx") or not users:
        return None
    rank = len(b.shape(node.input[0]))
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    if rank < 2 or axis % rank != rank - 1 or node.output[0] == y_name:
        return None
    width = b.shape(node.input[0])[-1]
    gamma = b.constant_or_folded(node.input[1])
    has_beta = len(node.input) > 2 and bool(node.input[2])
    beta = b.constant_or_folded(node.input[2]) if has_beta else np.zeros(width)
    if gamma is None or beta is None or gamma.dtype.kind != "f" or gamma.size != width or beta.size != width:
        return None
    gamma, beta = gamma.reshape(width), beta.reshape(width)
    if np.all(gamma == 1) and not beta.any():
        return None  # nothing to fold: the gradient rule reads xhat already (``_unit_affine``)
    if not all(_linear_reader(b, u, node.output[0], readers, bool(beta.any())) for u in users):
        return None
    return gamma, beta


def _linear_reader(b: Builder, user: onnx.NodeProto, data: str, readers: dict[str, list[onnx.NodeProto]],
                   shifted: bool) -> bool:
    """True when ``user`` multiplies ``data`` (its first operand) by a constant 2-D float weight,
    with a bias a shift can be added to when ``shifted``: Gemm's constant C (or none), or a
    MatMul's one reader, an Add of a constant over the last axis."""
    if user.op_type not in ("MatMul", "Gemm") or user.domain not in ("", "ai.onnx") or user.input[0] != data \
            or data in user.input[1:]:
        return False
    weight = b.constant_or_folded(user.input[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or b.is_active(user.input[1]):
        return False
    if user.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute}
        has_c = len(user.input) > 2 and bool(user.input[2])
        return not attrs.get("transA", 0) and (not shifted or not has_c or _constant_bias(b, user.input[2]))
    return not shifted or _bias_add(b, user, readers) is not None


def _bias_add(b: Builder, user: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]
              ) -> tuple[onnx.NodeProto, int] | None:
    """(the Add, the index of its bias) when a MatMul's one reader adds a constant vector over
    the last axis to it."""
    adds = readers.get(user.output[0], [])
    if len(adds) != 1 or adds[0].op_type != "Add" or adds[0].domain not in ("", "ai.onnx"):
        return None
    side = 1 if adds[0].input[0] == user.output[0] else 0
    if adds[0].input[1 - side] != user.output[0] or not _constant_bias(b, adds[0].input[side]):
        return None
    width = b.shape(user.output[0])[-1]
    return (adds[0], side) if b.shape(adds[0].input[side])[-1:] == (width,) else None


def _constant_bias(b: Builder, name: str) -> bool:
    """True for a constant float tensor that varies along the last axis only."""
    value = None if b.is_active(name) else b.constant_or_folded(name)
    return value is not None and value.dtype.kind == "f" and value.size == (value.shape[-1] if value.ndim else 1)


def _affine_into_linear(b: Builder, user: onnx.NodeProto, gamma: np.ndarray, beta: np.ndarray,
                        readers: dict[str, list[onnx.NodeProto]]) -> None:
    """(xhat gamma + beta) W + c  ->  xhat (diag(gamma) W) + (c + beta W), W read as the node reads it."""
    weight = b.constant_or_folded(user.input[1])
    assert weight is not None
    attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute}
    trans_b = user.op_type == "Gemm" and bool(attrs.get("transB", 0))
    w = (weight.T if trans_b else weight).astype(np.float64)  # (K, N)
    scaled = w * gamma.astype(np.float64)[:, None]
    _replace_input(b, user, 1, (scaled.T if trans_b else scaled).astype(weight.dtype))
    if not beta.any():
        return
    shift = beta.astype(np.float64) @ w
    if user.op_type == "Gemm":
        shift *= float(attrs.get("alpha", 1.0))
        _shifted_gemm_bias(b, user, shift, float(attrs.get("beta", 1.0)), weight.dtype)
        return
    found = _bias_add(b, user, readers)
    assert found is not None
    add, side = found
    bias = b.constant_or_folded(add.input[side])
    assert bias is not None
    _replace_input(b, add, side, (bias.astype(np.float64) + shift).astype(bias.dtype))


def _shifted_gemm_bias(b: Builder, gemm: onnx.NodeProto, shift: np.ndarray, beta: float, dtype: np.dtype) -> None:
    """Gemm's C (times its beta) plus ``shift``: C + shift / beta, or C = shift with beta 1."""
    if len(gemm.input) > 2 and gemm.input[2] and beta != 0.0:
        c = b.constant_or_folded(gemm.input[2])
        assert c is not None
        _replace_input(b, gemm, 2, (c.astype(np.float64) + shift / beta).astype(c.dtype))
        return
    while len(gemm.input) < 3:
        gemm.input.append("")
    gemm.input[2] = b.const(shift.astype(dtype), dtype=dtype)
    for a in gemm.attribute:
        if a.name == "beta":
            a.f = 1.0


def _prescaled_linears(b: Builder, forward: list[onnx.NodeProto], y_name: str) -> list[onnx.NodeProto]:
    """``forward`` with a scaling u = t s of a linear layer's output t (x W + c, constant W and c)
    folded into the layer (W s, c s: it outputs u) when every other reader of t scales it too,
    directly or through one product t f: those scalings take 1/s.  A torch GELU's x / sqrt(2):
    one pass less over ViT-S's widest tensor per block (the product's 0.5 then takes sqrt(2),
    and ``_scalings_folded`` moves it into the next layer)."""
    readers = readers_of(forward)
    dropped = set()
    for node in forward:
        found = b.scalar_scaling(node)
        if found is None or node.output[0] == y_name or any(id(n) in dropped for n in readers.get(found[0], [])):
            continue
        t, s = found
        found_layer = linear_layer(t, b.producers, readers, b.constant_or_folded)
        layer = None if found_layer is None else list(found_layer.nodes)
        others = _rescalable_readers(b, t, node, readers, y_name)
        if layer is None or others is None or s == 0.0 or not np.isfinite(s):
            continue
        for op in layer:
            _scale_linear(b, op, s)
        for op in others:
            _rescale(b, op, 1.0 / s)
        for op in readers.get(node.output[0], []):
            op.input[:] = [t if i == node.output[0] else i for i in op.input]
        dropped.add(id(node))
    return [n for n in forward if id(n) not in dropped]


def _rescalable_readers(b: Builder, t: str, scaling: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]],
                        y_name: str) -> list[onnx.NodeProto] | None:
    """The scalings that take t's new factor when ``scaling`` is folded into t's layer: each other
    reader of t if it scales t, or the readers of a product t f (f not t) that all scale it."""
    out = []
    for reader in readers.get(t, []):
        if reader is scaling:
            continue
        if b.scalar_scaling(reader) is not None:
            out.append(reader)
            continue
        product_readers = readers.get(reader.output[0], [])
        if reader.op_type != "Mul" or reader.domain not in ("", "ai.onnx") or list(reader.input).count(t) != 1 \
                or reader.output[0] == y_name or not product_readers \
                or any(b.scalar_scaling(r) is None for r in product_readers):
            return None
        out.extend(product_readers)
    return out if t != y_name else None


def _scale_linear(b: Builder, node: onnx.NodeProto, s: float) -> None:
    """Multiply a linear layer's node by ``s``: Gemm's alpha and beta, a MatMul's weight, an Add's bias."""
    if node.op_type == "Gemm":
        for name in ("alpha", "beta"):
            attr = next((a for a in node.attribute if a.name == name), None)
            if attr is None:
                node.attribute.append(helper.make_attribute(name, s))
            else:
                attr.f *= s
        return
    index = 1 if node.op_type == "MatMul" else next(i for i, n in enumerate(node.input) if not b.is_active(n))
    value = b.constant_or_folded(node.input[index])
    assert value is not None
    _replace_input(b, node, index, (value.astype(np.float64) * s).astype(value.dtype))


def _rescale(b: Builder, node: onnx.NodeProto, factor: float) -> None:
    """Multiply what a scalar scaling node (x s or x / k) computes by ``factor``."""
    found = b.scalar_scaling(node)
    assert found is not None
    index = next(i for i, n in enumerate(node.input) if b.is_scalar_constant(n))
    value = b.constant_or_folded(node.input[index])
    assert value is not None
    new = found[1] * factor
    _replace_input(b, node, index, np.full(value.shape, 1.0 / new if node.op_type == "Div" else new, value.dtype))


def _scalings_folded(b: Builder, forward: list[onnx.NodeProto], y_name: str) -> list[onnx.NodeProto]:
    """``forward`` with each Mul of a tensor by a scalar constant s, read only as the first operand
    of a MatMul or Gemm by a constant, folded into that node (s W as a new weight; Gemm's alpha):
    one pass less over the tensor, and its gradient's (a torch GELU's final 0.5 before the MLP's
    second layer: 11 passes over ViT-S's widest tensor)."""
    readers = readers_of(forward)
    dropped = set()
    for node in forward:
        found = _folded_scaling(b, node, readers.get(node.output[0], []), y_name)
        if found is None:
            continue
        data, s, user = found
        if user.op_type == "Gemm":
            alpha = next((a for a in user.attribute if a.name == "alpha"), None)
            if alpha is None:
                user.attribute.append(helper.make_attribute("alpha", s))
            else:
                alpha.f *= s
        else:
            weight = b.constant_or_folded(user.input[1])
            assert weight is not None
            _replace_input(b, user, 1, (weight * s).astype(weight.dtype))
        user.input[0] = data
        dropped.add(id(node))
    return [n for n in forward if id(n) not in dropped]


def _folded_scaling(b: Builder, node: onnx.NodeProto, users: list[onnx.NodeProto], y_name: str
                    ) -> tuple[str, float, onnx.NodeProto] | None:
    """(x, s, the MatMul or Gemm) when ``node`` is x * s that ``_scalings_folded`` folds, else None."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or node.output[0] == y_name or len(users) != 1:
        return None
    scale = next((i for i in node.input if b.is_scalar_constant(i)), None)
    data = next((i for i in node.input if i != scale), "")
    if scale is None or not b.is_active(data) or b.shape(data) != b.shape(node.output[0]):
        return None
    user = users[0]
    if user.op_type not in ("MatMul", "Gemm") or user.domain not in ("", "ai.onnx"):
        return None
    if list(user.input[:1]) != [node.output[0]]:  # the scaled tensor is the first operand
        return None
    weight = b.constant_or_folded(user.input[1]) if len(user.input) > 1 else None
    if weight is None or b.is_active(user.input[1]) or weight.dtype.kind != "f":
        return None
    value = b.constant_or_folded(scale)
    assert value is not None
    return data, float(np.ravel(value)[0]), user


def _pools_before_relus(b: Builder, forward: list[onnx.NodeProto], y_name: str) -> None:
    """MaxPool(Relu(z)) computed as Relu(MaxPool(z)), the ReLU's output read by that pool alone:
    the same values (max commutes with a non-decreasing map) and the same gradient (a window's
    first maximum is the same cell; the ReLU passes it exactly when max z > 0), with the ReLU and
    its gradient mask on the pooled map, a quarter of the cells under a stride-2 pool (ResNet-50's
    stem).  Only where every window holds an input cell: an all-padding window's maximum is no
    value of z, and the ReLU would lift it to 0."""
    readers = readers_of(forward)
    for i, relu in enumerate(forward):
        users = readers.get(relu.output[0], []) if relu.op_type == "Relu" and relu.domain in ("", "ai.onnx") else []
        if len(users) != 1 or relu.output[0] == y_name or not _pool_of_cells(b, users[0], relu.output[0]):
            continue
        pool = users[0]
        pooled = b.fresh("pooled")
        b.shapes[pooled], b.dtypes[pooled] = b.shape(pool.output[0]), b.dtypes[pool.output[0]]
        b.active.add(pooled)
        moved = helper.make_node("MaxPool", [relu.input[0]], [pooled], name=pool.name)
        moved.attribute.extend(pool.attribute)
        forward[i] = moved  # the pool in the ReLU's place (z is ready there), the ReLU in the pool's
        at = next(j for j, n in enumerate(forward) if n is pool)
        forward[at] = helper.make_node("Relu", [pooled], [pool.output[0]], name=relu.name)


def _pool_of_cells(b: Builder, node: onnx.NodeProto, data: str) -> bool:
    """``node`` is a MaxPool of ``data`` without Indices whose every window starts inside the
    input or within reach of it (pads shorter than the dilated kernel, no ceil_mode windows), its
    geometry read as its gradient rule reads it (``_window``); one that rule refuses stays put."""
    if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or list(node.input[:1]) != [data] \
            or any(node.output[1:]):
        return False
    try:
        geo = _window(NodeView(node, {a.name: helper.get_attribute_value(a) for a in node.attribute}), b)
    except RFGraphError:
        return False
    reach = [a.k_eff for a in geo.axes]
    return not geo.ceil_mode and all(p < r for p, r in zip(geo.pads_begin + geo.pads_end, reach + reach))


def _with_way_out(exc: UnsupportedOpError) -> UnsupportedOpError:
    """The same refusal, naming the way out: the finite-difference engine, or for rounding (where
    differences are 0 or a jump as well) the float model the quantized one was made from."""
    hint = QUANTIZED_HINT if isinstance(exc, QuantizedGradient) else FD_HINT
    return UnsupportedOpError(exc.node, exc.op, f"{exc.why}; {hint}")


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _backward(b: Builder, forward: list[onnx.NodeProto], x_name: str, y_name: str) -> str:
    """Walk the forward nodes in reverse, applying each op's rule and summing fan-in gradients."""
    pending: dict[str, list[str]] = {y_name: [SEED_NAME]}
    # a graph input, not emitted (nothing to derive it from): the seed has y's shape by definition
    b.shapes[SEED_NAME], b.dtypes[SEED_NAME] = b.shape(y_name), b.dtype
    b.producers = {o: n for n in forward for o in n.output if o}
    b.readers = readers_of(forward)
    for node in reversed(forward):
        gys = [_total(b, pending.pop(o, []), o) for o in node.output]
        b.grads.update((o, g) for o, g in zip(node.output, gys) if g is not None)
        if all(g is None for g in gys):
            continue
        if not any(b.is_active(i) for i in node_reads(node)):  # (a body may read an outer tensor)
            continue
        rule = VJP_RULES.get(node.op_type)
        if rule is None or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.name or node.output[0], node.op_type,
                                     f"no VJP (gradient) rule for this op; {FD_HINT}")
        view = NodeView(node, {a.name: helper.get_attribute_value(a) for a in node.attribute})
        if gys[0] is None and node.op_type != "Split":
            continue  # auxiliary outputs only (e.g. MaxPool indices): nothing to propagate
        try:
            grads = rule(b, view, gys)
        except UnsupportedOpError as exc:  # a rule refusing these attributes: the same way out
            raise _with_way_out(exc) from None
        except IllTypedGradient as exc:  # the graph would not load: refused, as onnxruntime would
            raise UnsupportedOpError(view.name, node.op_type, f"its gradient does not type-check ({exc}); "
                                     f"{FD_HINT}") from None
        for inp, g in zip(node.input, grads):  # a rule lists its leading inputs' gradients only
            if g is not None and b.is_active(inp):
                _check_gradient_shape(b, node, inp, g)
                pending.setdefault(inp, []).append(g)
    total = _total(b, pending.pop(x_name, []), x_name)
    if total is None:
        raise VJPError(f"no gradient reaches input '{x_name}' from '{y_name}'")
    return total


def _check_gradient_shape(b: Builder, node: onnx.NodeProto, inp: str, g: str) -> None:
    """A rule's gradient has its input's shape (derived by the builder, never set by a rule):
    a mismatch is a bug of the rule, caught here instead of as a wrong or failing graph."""
    if b.shape(g) != b.shape(inp):
        raise AssertionError(f"VJP rule of {node.op_type} ('{node.name or node.output[0]}'): gradient of "
                             f"'{inp}' has shape {b.shape(g)}, the input {b.shape(inp)}")


def _total(b: Builder, grads: list[str], like: str) -> str | None:
    """Sum the gradients flowing into one tensor (fan-out in the forward graph)."""
    if not grads:
        return None
    if len(grads) == 1:
        return grads[0]
    return b.op("Sum", *grads)


def _assemble(model: onnx.ModelProto, forward: list[onnx.NodeProto], b: Builder, x_name: str,
              y_name: str, grad_x: str, emit_output: bool) -> VJPGraph:
    """Turn ``model`` (the builder's own copy) into the gradient model, in place: forward and
    backward nodes, inputs x and seed, output dx; weights are moved, never copied (memory)."""
    graph = model.graph
    x_vi = onnx.ValueInfoProto()
    x_vi.CopyFrom(next(i for i in graph.input if i.name == x_name))
    dtype = b.dtype
    seed_vi = helper.make_tensor_value_info(SEED_NAME, dtype, list(b.shape(y_name)))
    final = helper.make_node("Identity", [grad_x], [GRAD_NAME], name=GRAD_NAME)
    outputs = [helper.make_tensor_value_info(GRAD_NAME, dtype, list(b.shape(x_name)))]
    if emit_output:
        outputs.append(helper.make_tensor_value_info(y_name, dtype, list(b.shape(y_name))))
    used = {i for n in forward + b.nodes for i in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    while b.inits:  # one tensor at a time: the builder's copies are freed as they move
        tensor = b.inits.pop(0)
        if tensor.name in used:  # not a weight a later fold replaced
            graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(forward + b.nodes + [final])
    del graph.input[:]
    graph.input.extend([x_vi, seed_vi])
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    graph.name = graph.name + "_vjp"
    return VJPGraph(model, x_name, y_name, SEED_NAME, GRAD_NAME, b.shape(x_name),
                    b.shape(y_name), np.dtype(helper.tensor_dtype_to_np_dtype(dtype)))


def session(vjp: VJPGraph, providers: Sequence[str] | None = None, threads: int = 0,
            config: dict[str, str] | None = None) -> object:
    """An onnxruntime session for a VJP graph: graph optimisation ALL, the best provider present,
    lean on memory (``runtime.session``); ``config``: extra session config entries (e.g.
    {"session.intra_op.allow_spinning": "0"})."""
    try:
        return runtime.session(vjp.model, runtime.best_providers() if providers is None else providers,
                               threads=threads, config=config, lean=True)
    except Exception as exc:
        raise VJPError(f"onnxruntime could not load the gradient graph: {exc}") from exc


def input_gradient(vjp: VJPGraph, sess: object, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Run the gradient graph: d(seed . y)/dx for input ``x``."""
    return sess.run([vjp.grad_name], {vjp.input_name: x.astype(vjp.dtype, copy=False),  # type: ignore[attr-defined]
                                      vjp.seed_name: seed.astype(vjp.dtype, copy=False)})[0]
