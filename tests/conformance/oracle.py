"""Independent oracles for the conformance suite: onnxruntime's measured dependencies (TRF) and
central differences of onnxruntime's own kernel (VJP).  Each check returns a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

import rfgraph
from rfgraph import vjp
from rfgraph.borders import clipped_regions
from rfgraph.errors import RFGraphError
from tests.conformance.cases import Case

TRF_CLASSES = ("exact", "loose", "UNSOUND", "refused", "CRASH")
VJP_CLASSES = ("match", "MISMATCH", "refused", "CRASH")
# ops that route data (max-like, data-dependent sampling): a prediction wider than the measured
# dependencies is allowed there, and only there
ROUTING_OPS = {"MaxPool", "MaxRoiPool", "MaxUnpool", "GridSample", "RoiAlign", "GatherElements", "GatherND",
               "Gather", "TopK", "ReduceMax", "ReduceMin", "GlobalMaxPool", "Max", "Min", "Relu", "Clip",
               "ArgMax", "ArgMin", "Where", "ScatterElements", "ScatterND", "NonMaxSuppression", "Hardmax",
               "Dropout", "Resize", "Upsample", "AffineGrid", "DeformConv", "Col2Im"}
MAX_POSITIONS = 96  # input positions perturbed per case (spread evenly when there are more)
MAX_OUTPUT = 200_000  # larger outputs are not measured (memory: one mask per position)
MAX_ELEMENTS = 64  # input elements differentiated per VJP case


@dataclass(frozen=True)
class Verdict:
    """The class of one check and why."""

    verdict: str
    detail: str = ""


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _random_like(x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x.shape).astype(x.dtype)


def _positions(spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    every = list(np.ndindex(*spatial))
    if len(every) <= MAX_POSITIONS:
        return every
    picks = np.linspace(0, len(every) - 1, MAX_POSITIONS).round().astype(int)
    return [every[i] for i in sorted(set(picks))]


def measured_dependencies(case: Case, output: str, x: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """For each perturbed spatial position of the input (all batches and channels at once, at
    three magnitudes of both signs), the boolean mask of the output elements that moved."""
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    keep = [o for o in m.graph.output if o.name == output]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    sess = _session(m)
    base = sess.run(None, {case.x_name: x})[0]
    moved = {}
    for pos in _positions(x.shape[2:]):
        mask = np.zeros(base.shape, dtype=bool)
        for delta in (1e-3, 0.5, 10.0, -0.5, -10.0):
            xp = x.copy()
            xp[(slice(None), slice(None)) + pos] += np.asarray(delta, dtype=x.dtype)
            y = sess.run(None, {case.x_name: xp})[0]
            mask |= ~((y == base) | (np.isnan(y) & np.isnan(base)))
        moved[pos] = mask
    return moved


def _unit_index(ep) -> tuple[list[tuple[int, ...]], list[int], np.ndarray]:
    """Every output unit (spatial index), the tensor axes holding units, and each unit's index
    along them (``EndPoint.tensor_index``), computed once per end point."""
    units = list(np.ndindex(*[n or 1 for n in ep.units]))
    axes = [t for t, _ in ep.unit_axes]
    index = np.array([ep.tensor_index(u) for u in units], dtype=np.int64).reshape(len(units), len(axes))
    return units, axes, index


def _unit_masks(mask: np.ndarray, units: list[tuple[int, ...]], axes: list[int],
                index: np.ndarray) -> dict[tuple[int, ...], bool]:
    """Whether each output unit moved: any element at its unit-axes index (``_unit_index``)."""
    other = tuple(a for a in range(mask.ndim) if a not in axes)
    reduced = np.asarray(mask.any(axis=other) if other else mask)  # the unit axes, in increasing order
    if not axes:
        return {unit: bool(reduced) for unit in units}
    hit = reduced[tuple(index[:, axes.index(t)] for t in sorted(axes))]
    return dict(zip(units, (bool(h) for h in hit)))


def _axis_regions(ep, sizes: tuple[int, ...]) -> list[np.ndarray | None]:
    """Per axis, the clipped ``[u0, v0]`` of every unit rfgraph reports (``EndPoint.regions``
    clipped to the input, as every command shows it); None along an axis where the field is global,
    exactly or through gates (a normalisation's statistics: the regions are then the local field)."""
    copies = ep.copies or ((),) * len(sizes)
    return [None if f.is_global or f.gates else clipped_regions(ep.regions(a), n, c)
            for a, (f, n, c) in enumerate(zip(ep.fields, sizes, copies))]


def _predicted(regions: list[np.ndarray | None], unit: tuple[int, ...],
               sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """The input box rfgraph reports for a unit: the whole axis where the field is global."""
    return [(0, n - 1) if r is None else (int(r[u, 0]), int(r[u, 1])) for r, u, n in zip(regions, unit, sizes)]


def check_trf(case: Case) -> Verdict:
    """Predicted region of each output unit vs onnxruntime's measured dependencies."""
    if not case.spatial:
        return Verdict("refused", "no input with spatial axes")
    try:
        a = rfgraph.analyze(case.model, input_name=case.x_name, layout="NC" + "HWDLT"[: case.x.ndim - 2])
    except RFGraphError as exc:
        return Verdict("refused", str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - a crash is a verdict here
        return Verdict("CRASH", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return _compare_outputs(case, a)


def _compare_outputs(case: Case, a) -> Verdict:
    x = _random_like(case.x).astype(np.float64 if case.x.dtype == np.float64 else case.x.dtype)
    sizes = case.x.shape[2:]
    worst = Verdict("exact")
    for out in case.model.graph.output:
        try:
            ep = a[out.name]
        except (KeyError, RFGraphError):
            continue
        if not ep.unit_axes and not ep.is_global and any(n for n in ep.units):
            continue
        if np.prod([d or 1 for d in ep.shape]) > MAX_OUTPUT:
            continue
        try:
            moved = measured_dependencies(case, out.name, x)
        except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the model: no measurement
            return Verdict("refused", f"onnxruntime: {exc}".splitlines()[0])
        shape = next(iter(moved.values())).shape
        if tuple(ep.shape) != shape:
            v = Verdict("UNSOUND", f"'{out.name}' has shape {shape}, analysed as {tuple(ep.shape)}")
        else:
            try:
                v = _compare(ep, moved, sizes)
            except (IndexError, ValueError, RFGraphError) as exc:  # an EndPoint inconsistent with its tensor
                v = Verdict("CRASH", f"unit axes {ep.unit_axes} of '{out.name}' {shape}: {exc}")
        if TRF_CLASSES.index(v.verdict) > TRF_CLASSES.index(worst.verdict):
            worst = v
    if worst.verdict == "loose" and case.op not in ROUTING_OPS:
        return Verdict("loose", "LOOSE on an op that routes no data: " + worst.detail)
    return worst


def _compare(ep, moved: dict[tuple[int, ...], np.ndarray], sizes: tuple[int, ...]) -> Verdict:
    units, axes, index = _unit_index(ep)
    per_pos = {pos: _unit_masks(mask, units, axes, index) for pos, mask in moved.items()}
    every = len(moved) == int(np.prod(sizes))
    loose = ""
    regions = _axis_regions(ep, sizes)
    for unit in np.ndindex(*[n or 1 for n in ep.units]):
        box = _predicted(regions, unit, sizes)
        hits = [pos for pos, units in per_pos.items() if units[unit]]
        for pos in hits:
            if any(not lo <= p <= hi for p, (lo, hi) in zip(pos, box)):
                return Verdict("UNSOUND", f"unit {unit} reads {pos}, predicted {box}")
        if every and hits:
            got = [(min(p[a] for p in hits), max(p[a] for p in hits)) for a in range(len(sizes))]
            if got != box and not loose:
                loose = f"unit {unit} reads {got}, predicted {box}"
    return Verdict("loose", loose) if loose else Verdict("exact")


def _float16_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float32 wherever it computed in float16 (types, initializers,
    constants, Cast targets)."""
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.tensor_type.elem_type == half:
                vi.type.tensor_type.elem_type = single
        for k, t in enumerate(g.initializer):
            if t.data_type == half:
                g.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
        for node in g.node:
            for a in node.attribute:
                if a.name == "to" and a.i == half:
                    a.i = single
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == half:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    return m


def check_vjp(case: Case, seed: int = 1) -> Verdict:
    """The gradient graph's d(seed . y)/dx vs central differences of onnxruntime's kernel.

    A float16 case is checked in float32 (the same graph, every float16 made float32): float16's
    rounding at any usable step is as large as the derivatives themselves, so differences in
    float16 would prove nothing; the rules do not depend on the dtype."""
    if case.x.dtype == np.float16:
        case = Case(case.name, case.op, _float16_to_float32(case.model), case.x_name, case.x.astype(np.float32))
    out = case.model.graph.output[0].name
    try:  # onnxruntime cannot run the model itself (batchwise RNNs): no oracle, no verdict
        y = _session(case.model).run([out], {case.x_name: case.x})[0]
    except Exception as exc:  # noqa: BLE001 - any onnxruntime failure
        return Verdict("refused", f"onnxruntime: {exc}".splitlines()[0])
    try:
        graph = vjp.build_vjp(case.model, out, input_name=case.x_name)
        sess = vjp.session(graph)
        w = np.random.default_rng(seed).standard_normal(np.shape(y))
        got = vjp.input_gradient(graph, sess, case.x, w)
    except RFGraphError as exc:
        return Verdict("refused", str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - a crash is a verdict here
        return Verdict("CRASH", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return _against_differences(case, out, w, np.asarray(got, dtype=np.float64))


@dataclass(frozen=True)
class _Differences:
    """Central and one-sided difference quotients of s(x) = w . y(x) at each studied element, at
    one step, and the rounding error a quotient can carry at that step."""

    step: float
    central: np.ndarray
    sides: np.ndarray  # (element, [forward, backward])
    change: np.ndarray  # s(x + step) - s(x - step)
    rounding: np.ndarray  # bound on a quotient's error from the outputs' rounding


def _differences(sess, case: Case, out: str, w: np.ndarray, flat: np.ndarray, step: float) -> _Differences:
    x = case.x
    eps = float(np.finfo(x.dtype).eps)
    y0 = sess.run([out], {case.x_name: x})[0]
    s0 = float((w * y0.astype(np.float64)).sum())
    central, sides, change, rounding = (np.zeros(len(flat)), np.zeros((len(flat), 2)), np.zeros(len(flat)),
                                        np.zeros(len(flat)))
    for k, i in enumerate(flat):
        vals, moved = [], np.zeros(y0.shape, dtype=bool)
        for sign in (1, -1):
            xp = x.copy().reshape(-1)
            xp[i] += sign * step
            y = sess.run([out], {case.x_name: xp.reshape(x.shape)})[0]
            moved |= y != y0
            vals.append(float((w * y.astype(np.float64)).sum()))
        change[k] = vals[0] - vals[1]
        central[k] = change[k] / (2 * step)
        sides[k] = ((vals[0] - s0) / step, (s0 - vals[1]) / step)
        # each output that moved is rounded to the dtype (half an ulp) at both ends of a quotient,
        # and a change below half an ulp moves nothing (the largest output stands for those)
        wy = np.abs(w * y0.astype(np.float64))
        rounding[k] = eps * (float(wy[moved].sum()) + float(wy.max(initial=0.0))) / step
    return _Differences(step, central, sides, change, rounding)


def _against_differences(case: Case, out: str, w: np.ndarray, got: np.ndarray) -> Verdict:
    """The rule's gradient vs central differences at two steps, h and h/10.

    One step cannot serve every op: float32 needs h = 1e-2 above its rounding, but there a
    quotient misjudges steep curvature (Sqrt near 0, Acos near 1, Tan near a pole, a max switching
    inside the step); where the two steps disagree the smaller one's quotient is taken (its
    truncation error is 100x smaller).  Where the change does not shrink with the step the
    function jumps (LpNormalization at a zero vector): there is no derivative to compare.  At a
    kink (one-sided quotients differ: Relu at 0, tied minima) any value between the two one-sided
    derivatives is a valid choice of the rule.  Differences below the rounding of the outputs are
    not resolved (a saturated tanh in float32)."""
    sess = _session(case.model)
    x = case.x
    if x.size == 0 or got.size == 0:
        return Verdict("match", "empty input")
    f64 = x.dtype == np.float64
    h = 1e-6 if f64 else 1e-2 if x.dtype == np.float32 else 1e-1
    flat = np.arange(x.size)
    if x.size > MAX_ELEMENTS:
        flat = np.linspace(0, x.size - 1, MAX_ELEMENTS).round().astype(int)
    coarse, fine = _differences(sess, case, out, w, flat, h), _differences(sess, case, out, w, flat, h / 10)
    tol = 1e-5 if f64 else 3e-2
    agree = np.abs(coarse.central - fine.central) <= tol * np.maximum(np.abs(coarse.central), np.abs(fine.central)) \
        + coarse.rounding + fine.rounding
    pick = np.where(agree[:, None], coarse.sides, fine.sides)
    ref = np.where(agree, coarse.central, fine.central)
    floor = np.where(agree, coarse.rounding, fine.rounding)
    jump = (np.abs(fine.change) > 0.5 * np.abs(coarse.change)) & (np.abs(coarse.change) > h * (coarse.rounding + 1e-6))
    defined = np.isfinite(ref) & np.isfinite(pick).all(axis=1) & ~jump  # a step out of the domain (Acosh at 1)
    if not defined.any():
        return Verdict("match", "no point where the differences are defined")
    mine = got.reshape(-1)[flat]
    flat, ref, mine, pick, floor = flat[defined], ref[defined], mine[defined], pick[defined], floor[defined]
    kink = np.abs(pick[:, 0] - pick[:, 1]) > 0.1 * np.maximum(np.abs(pick).max(axis=1), 1e-6) + floor
    ref = np.where(kink, np.clip(mine, pick.min(axis=1), pick.max(axis=1)), ref)
    scale = max(float(np.abs(ref).max()), float(np.abs(mine).max()), 1e-6)
    excess = np.abs(mine - ref) - floor
    err = float(np.max(np.where(np.isnan(excess), np.inf, np.maximum(excess, 0)))) / scale
    if not np.isfinite(err) or err > tol:
        k = int(np.argmax(np.where(np.isnan(excess), np.inf, excess)))
        return Verdict("MISMATCH", f"rel err {err:.2g} at element {int(flat[k])}: {mine[k]:.4g} vs fd {ref[k]:.4g}")
    return Verdict("match")
