"""rfgraph's theoretical fields on real models against an independent oracle: the support of the
exact input gradient.  For each ONNX file, a sample of its local end points (six spread over the
graph, ``--count``; the last; every one a resampling op makes), the centre and the corner unit of
each: the union over three random inputs of
the pixels where d(unit)/d(input) is nonzero must lie inside the clipped box rfgraph reports
(UNSOUND otherwise: a wrong number) and, where every path carries a gradient, reach its edges
(loose otherwise: zero-initialised residual branches, dead units, an upper bound the analysis names;
zero: no gradient at all, where the box is not empty).

    python benchmarks/support.py A.onnx B.onnx ...            # prints one row per model
    python benchmarks/support.py DIR/*.onnx --perturb         # weights off their (zero) init first
    python benchmarks/support.py det.onnx --input-shape 1x3x320x320   # a model of dynamic sizes

A unit is seeded as the ERF seeds it (``erf.make_seed``: one element per unit axis, every channel).
Where the local field holds gates constant (squeeze-excitation), so does the gradient: each gate's
operand is replaced by a constant holding its value at that input (the gradient graph is built
again per input).  End points behind a normalisation's statistics (GroupNorm over positions),
which no operand holds, are skipped.  Exit status 1 when any check is UNSOUND.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tabulate import tabulate

import rfgraph
from rfgraph import runtime, vjp
from rfgraph.erf import Target, make_seed

VERDICTS = ("exact", "loose", "UNSOUND", "zero")


@dataclass(frozen=True)
class Check:
    """One unit of one end point: the verdict, the measured hull and the reported box per axis."""

    verdict: str
    tensor: str
    unit: tuple[int, ...]
    measured: tuple[tuple[int, int], ...] = ()
    box: tuple[tuple[int, int], ...] = ()


# inputs that set a node's geometry, not its arithmetic: a Resize's roi and scales stay as they are
GEOMETRY_SLOTS = {"Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4), "Reshape": (1,),
                  "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,)}


def perturbed(model: onnx.ModelProto, scale: float = 0.05, seed: int = 1) -> onnx.ModelProto:
    """The model with ``scale`` N(0, 1) added to every float initializer of more than one value
    (zero-initialised gammas no longer cut paths) but those setting a geometry (a Resize's scales:
    keras-hub's DeepLabV3 upsampled by 8.0165 had an exact span of 70,842 taps); BatchNorm's
    running variances kept positive."""
    nodes = model.graph.node
    geometry = {n.input[i] for n in nodes for i in GEOMETRY_SLOTS.get(n.op_type, ()) if i < len(n.input)}
    variances = {n.input[4] for n in nodes if n.op_type == "BatchNormalization" and len(n.input) > 4}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for k, t in enumerate(out.graph.initializer):
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.size > 1 and t.name not in geometry:
            w = w + scale * rng.standard_normal(w.shape).astype(np.float32)
            out.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.abs(w) if t.name in variances else w, t.name))
    return out


# ops whose geometry is more than a sliding window: every end point they make is checked
RESAMPLING = {"Resize", "Upsample", "ConvTranspose", "DepthToSpace", "Col2Im"}


def sampled_end_points(a: rfgraph.Analysis, count: int = 6) -> list[str]:
    """Local end points whose gates are operands (none behind statistics): ``count`` spread in
    graph order, the last, and every one a resampling op makes (a jax2onnx Resize of an NHWC map,
    between two sampled end points, was the one the analysis got wrong)."""
    local = [n for n, ep in a.endpoints.items() if ep.unit_axes and not ep.is_global and ep.op != "Input"
             and all(ep.units) and all(a.gates[g].slot >= 0 for g in ep.gates)]
    if not local:
        return []
    picks = {local[len(local) * k // count] for k in range(count)} | {local[-1]}
    picks |= {n for n in local if a[n].op in RESAMPLING}
    return sorted(picks, key=local.index)


def measured_hull(support: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Per axis, the first and last index where ``support`` (spatial axes only) holds."""
    hull = []
    for ax in range(support.ndim):
        hit = np.nonzero(support.any(axis=tuple(j for j in range(support.ndim) if j != ax)))[0]
        hull.append((int(hit[0]), int(hit[-1])))
    return tuple(hull)


Gradient = Callable[[np.ndarray, np.ndarray], np.ndarray]


def local_gradient(a: rfgraph.Analysis, name: str) -> Gradient:
    """d(seed . name)/dx at x, every gate on the way to ``name`` held constant: its operand read
    from a constant holding its value at x (the local field's definition)."""
    model = a.graph.model
    gates = [a.gates[g] for g in a[name].gates]
    if not gates:
        graph = vjp.build_vjp(model, name, input_name=a.input_name)
        sess = vjp.session(graph)
        return lambda x, seed: vjp.input_gradient(graph, sess, x, seed)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    held = sorted({g.tensor for g in gates})
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in held)
    values = runtime.session(probe, ["CPUExecutionProvider"])

    def gradient(x: np.ndarray, seed: np.ndarray) -> np.ndarray:
        fixed = dict(zip(held, values.run(held, {a.input_name: x})))
        graph = vjp.build_vjp(_held(model, a, gates, fixed), name, input_name=a.input_name)
        return vjp.input_gradient(graph, vjp.session(graph), x, seed)
    return gradient


def _held(model: onnx.ModelProto, a: rfgraph.Analysis, gates: Sequence, fixed: dict[str, np.ndarray]
          ) -> onnx.ModelProto:
    """``model`` with each gate node reading its gate operand from an initializer of ``fixed``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = {name: i for i, name in enumerate(a.graph.names)}
    for k, gate in enumerate(gates):
        const = f"rfgraph_held/{k}"
        out.graph.node[index[gate.node]].input[gate.slot] = const
        out.graph.initializer.append(numpy_helper.from_array(fixed[gate.tensor], const))
    return out


def check_unit(a: rfgraph.Analysis, gradient: Gradient, name: str, unit: tuple[int, ...],
               rng: np.random.Generator, inputs: int = 3) -> Check:
    """The verdict of one unit: its gradient support over ``inputs`` random inputs vs its box."""
    ep = a[name]
    target = Target(name, tuple(d or 1 for d in ep.shape), tuple(t for t, _ in ep.unit_axes), ep.tensor_index(unit))
    seed = make_seed(target, 1)
    others = tuple(t for t in range(len(a.input_shape)) if t not in a.spatial_axes)
    support = np.zeros([a.input_shape[t] for t in a.spatial_axes], dtype=bool)
    for _ in range(inputs):
        x = rng.standard_normal(a.input_shape).astype(np.float32)
        support |= (gradient(x, seed) != 0).any(axis=others)
    box = tuple(tuple(int(v) for v in r) for r in ep.clipped_region(unit, support.shape))
    if not support.any():  # reads only padding (an empty box): exact; else the weights cut every path
        return Check("exact" if any(lo > hi for lo, hi in box) else "zero", name, unit, (), box)
    hull = measured_hull(support)
    inside = all(lo <= g0 and g1 <= hi for (g0, g1), (lo, hi) in zip(hull, box))
    verdict = "UNSOUND" if not inside else "exact" if hull == box else "loose"
    return Check(verdict, name, unit, hull, box)


def check_model(model: onnx.ModelProto, count: int = 6, seed: int = 0,
                shape: Sequence[int] | None = None) -> list[Check]:
    """Every check of one model (``sampled_end_points``, centre and corner unit of each); ``shape``
    fixes the first input's shape (a model exported with dynamic sizes)."""
    a = rfgraph.analyze(model, input_shape={"": shape} if shape else None)
    rng = np.random.default_rng(seed)
    checks = []
    for name in sampled_end_points(a, count):
        ep = a[name]
        units = dict.fromkeys([tuple(n // 2 for n in ep.units), tuple(0 for _ in ep.units)])
        try:
            gradient = local_gradient(a, name)
        except vjp.VJPError:  # no differentiable path (a Sign, a comparison): no gradient to measure
            checks += [Check("zero", name, unit, (), ep.clipped_region(unit, [a.input_shape[t] for t in
                                                                                a.spatial_axes]))
                       for unit in units]
            continue
        checks += [check_unit(a, gradient, name, unit, rng) for unit in units]
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--perturb", action="store_true", help="add 0.05 N(0,1) to every float weight first")
    parser.add_argument("--count", type=int, default=6, help="end points spread over the graph (besides the "
                                                              "last and the resampling ops')")
    parser.add_argument("--show", action="store_true", help="list every check that is not exact")
    parser.add_argument("--input-shape", metavar="1x3x320x320", help="the first input's shape (dynamic sizes)")
    args = parser.parse_args(argv)
    rows, unsound = [], 0
    for path in args.models:
        try:
            model = onnx.load(str(path))
            shape = [int(d) for d in args.input_shape.split("x")] if args.input_shape else None
            checks = check_model(perturbed(model) if args.perturb else model, args.count, shape=shape)
        except rfgraph.RFGraphError as exc:
            rows.append([path.stem, "-", "", "", "", "", str(exc).splitlines()[0][:80]])
            continue
        counts = Counter(c.verdict for c in checks)
        unsound += counts["UNSOUND"]
        rows.append([path.stem, len(checks), *(counts[v] for v in VERDICTS), ""])
        for c in checks if args.show else ():
            if c.verdict != "exact":
                print(f"  {path.stem} {c.verdict} {c.tensor} unit {c.unit}: measured {c.measured}, box {c.box}")
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    print()
    print(tabulate(rows, ["model", "checks", *VERDICTS, "error"]))
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
