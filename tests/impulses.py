"""Test-only oracle: which input positions move which output units, measured with onnxruntime.

Each input position (all channels at once) is perturbed in turn by a large random impulse; an
output unit depends on the positions whose impulse changes any of its values.  Shares no code with
rfgraph's rules: the TRF region of every unit must be the hull of exactly those positions.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx.numpy_helper


def dependencies(proto: onnx.ModelProto, input_name: str, output: str, spatial: list[int],
                 scale: float = 1000.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean array (input positions..., output shape...): True where the impulse at that
    position changes that output element; and the base output."""
    import onnxruntime as ort
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    base = session.run([output], {input_name: x})[0]
    sizes = [shape[a] for a in spatial]
    deps = np.zeros((*sizes, *base.shape), dtype=bool)
    for pos in itertools.product(*map(range, sizes)):
        index: list = [slice(None)] * len(shape)
        for a, p in zip(spatial, pos):
            index[a] = p
        moved = x.copy()
        moved[tuple(index)] += scale * rng.standard_normal(moved[tuple(index)].shape).astype(np.float32)
        deps[pos] = session.run([output], {input_name: moved})[0] != base
    return deps, base


def measured_hulls(deps: np.ndarray, n_spatial: int, element: tuple) -> list[tuple[int, int] | None]:
    """Per input spatial axis, the first and last position that moves the output elements
    ``element`` (an index into the output); None when no position does."""
    hit = deps[(slice(None),) * n_spatial + element]
    hit = hit.reshape(*deps.shape[:n_spatial], -1).any(axis=-1)
    out: list[tuple[int, int] | None] = []
    for a in range(n_spatial):
        along = hit.any(axis=tuple(b for b in range(n_spatial) if b != a))
        where = np.flatnonzero(along)
        out.append((int(where[0]), int(where[-1])) if where.size else None)
    return out


def check_tensor(analysis, proto: onnx.ModelProto, name: str) -> int:
    """Every unit of tensor ``name``: its TRF region clipped to the input (``clipped_region``: the
    pixels it reads; the whole input where global and not computed exactly) is exactly the hull of
    the positions that move it.  Returns the units checked."""
    ep = analysis[name]
    spatial = list(analysis.spatial_axes)
    sizes = [analysis.input_shape[a] for a in spatial]
    deps, base = dependencies(proto, analysis.input_name, name, spatial)
    units = [range(n or 1) for n in ep.units]
    checked = 0
    for unit in itertools.product(*units):
        element: list = [slice(None)] * base.ndim
        for t, i in zip((t for t, _ in ep.unit_axes), ep.tensor_index(unit)):
            element[t] = i
        got = measured_hulls(deps, len(spatial), tuple(element))
        exact = ep.exact_clip(sizes) if ep.exact_clip is not None else None
        clipped = ep.clipped_region(unit, sizes) if exact is not None or not ep.is_global else None
        for a, n in enumerate(sizes):
            want = (0, n - 1) if clipped is None else clipped[a]
            want = None if want[0] > want[1] else want  # reads only padding: nothing moves it
            assert got[a] == want, f"{name} unit {unit} axis {a}: measured {got[a]}, TRF {want}"
        checked += 1
    return checked


def with_constant_gates(proto: onnx.ModelProto, analysis, seed: int = 2) -> onnx.ModelProto:
    """The model with each gate's operand (``analysis.gates``) replaced by a constant initializer,
    its value on a random input: the onnxruntime counterpart of detaching the gate.  A
    normalisation's statistics (a gate with ``statistics``) are frozen the same way: the node
    becomes ``x * A + B``, with A and B its statistics and affine parameters on that input, by the
    spec's formula (``frozen_normalisation``)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    gates = list(analysis.gates.values())
    gated = list(dict.fromkeys(g.tensor for g in gates if not g.statistics))
    mg = analysis.graph
    norms = {mg.nodes[mg.names.index(g.node)].output[0] for g in gates if g.statistics}
    norm_nodes = [n for n in proto.graph.node if n.output and n.output[0] in norms]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    wanted = list(dict.fromkeys(gated + [t for n in norm_nodes for t in n.input if t and t not in inits]))
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = next(i for i in sess.get_inputs() if i.name == analysis.input_name)
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    x = np.random.default_rng(seed).random(shape).astype(np.float32)
    values = {**inits, **dict(zip(wanted, sess.run(wanted, {analysis.input_name: x})))}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in proto.graph.node:  # each frozen norm in its own place: the order stays topological
        if set(node.output) & set(gated):
            continue
        if not node.output or node.output[0] not in norms:
            nodes.append(node)
            continue
        a, b = frozen_normalisation(node, [values[t] if t else None for t in node.input])
        y = node.output[0]
        nodes += [onnx.helper.make_node("Mul", [node.input[0], y + "/A"], [y + "/xA"]),
                  onnx.helper.make_node("Add", [y + "/xA", y + "/B"], [y])]
        out.graph.initializer.extend([onnx.numpy_helper.from_array(a, y + "/A"),
                                      onnx.numpy_helper.from_array(b, y + "/B")])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(onnx.numpy_helper.from_array(values[t], t) for t in gated)
    return out


def frozen_normalisation(node: onnx.NodeProto, inputs: list) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), each of the input's shape, with ``node(x) = x * A + B`` at this input: the
    statistics and affine parameters of the ONNX spec's formula, for InstanceNormalization,
    GroupNormalization, LayerNormalization, MeanVarianceNormalization, BatchNormalization
    (training_mode=1) and LpNormalization."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x = inputs[0].astype(np.float64)
    rank, eps = x.ndim, attrs.get("epsilon", 1e-5)
    op = node.op_type
    if op == "LpNormalization":
        norm = np.linalg.norm(x, ord=attrs.get("p", 2), axis=attrs.get("axis", -1), keepdims=True)
        return _full(1 / norm, x), np.zeros_like(x, np.float32)
    scale, bias = (inputs + [None, None])[1:3]
    if op == "GroupNormalization":
        groups = attrs["num_groups"]
        grouped = x.reshape(x.shape[0], groups, -1)
        mean = np.broadcast_to(grouped.mean(2, keepdims=True), grouped.shape).reshape(x.shape)
        var = np.broadcast_to(grouped.var(2, keepdims=True), grouped.shape).reshape(x.shape)
        per_channel = x.shape[1] // groups
        if scale.size == groups:  # opset 18: one scale and bias per group
            scale, bias = np.repeat(scale, per_channel), np.repeat(bias, per_channel)
        scale, bias = (v.reshape(-1, *[1] * (rank - 2)) for v in (scale, bias))
    else:
        axes = {"InstanceNormalization": tuple(range(2, rank)),
                "LayerNormalization": tuple(range(attrs.get("axis", -1) % rank, rank)),
                "MeanVarianceNormalization": tuple(attrs.get("axes", (0, 2, 3))),
                "BatchNormalization": (0, *range(2, rank))}[op]
        mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
        if op == "MeanVarianceNormalization":
            scale, bias, eps = np.ones(1), np.zeros(1), 1e-9
        elif op != "LayerNormalization":  # per channel
            scale, bias = (v.reshape(-1, *[1] * (rank - 2)) for v in (scale, bias))
        elif bias is None:
            bias = np.zeros(1)
    a = scale / np.sqrt(var + eps)
    return _full(a, x), _full(bias - mean * a, x)


def _full(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(v, like.shape)).astype(np.float32)
