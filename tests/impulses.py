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
    """Every unit of tensor ``name``: its TRF region (clipped to the input; the whole input where
    global) is exactly the hull of the positions that move it.  Returns the units checked."""
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
        for a, n in enumerate(sizes):
            f = ep.fields[a]
            want = (0, n - 1) if f.is_global else tuple(int(np.clip(v, 0, n - 1)) for v in f.region(unit[a]))
            assert got[a] == want, f"{name} unit {unit} axis {a}: measured {got[a]}, TRF {want}"
        checked += 1
    return checked


def with_constant_gates(proto: onnx.ModelProto, analysis, seed: int = 2) -> onnx.ModelProto:
    """The model with each gate's operand (``analysis.gates``) replaced by a constant initializer,
    its value on a random input: the onnxruntime counterpart of detaching the gate."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    gated = list(dict.fromkeys(g.tensor for g in analysis.gates.values()))
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in gated)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = next(i for i in sess.get_inputs() if i.name == analysis.input_name)
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    x = np.random.default_rng(seed).random(shape).astype(np.float32)
    values = dict(zip(gated, sess.run(gated, {analysis.input_name: x})))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep = [n for n in out.graph.node if not set(n.output) & set(gated)]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.extend(onnx.numpy_helper.from_array(v, t) for t, v in values.items())
    return out
