"""Benchmark: the ERF of one unit on its cone (``rfgraph.cone``) against the full image.

Per input, best of ``--reps``, the three measured interleaved in one run (same load for all):
  forward   onnxruntime forward of the whole model on the full image (graph optimisation ALL),
  full ERF  rfgraph's gradient graph (forward + backward) on the full image,
  cone ERF  the same unit's gradient on the crop of its field (crop, run, put back in a zero map),
  + cuts    the same, with the layers after the cuts inside the network on their crops
            (``rfgraph.cuts`` alone),
  + inner   the cone inside the network that ``--region cone`` (and ``auto`` on a long run)
            picks: every layer on the unit's cone (``rfgraph.trim``) or the cuts, whichever
            saves more multiply-accumulates,
and the one-time costs of the cone (planning: the model loaded and analysed at the crop's size;
the exactness guard: the full-image engine built and run once), the cone/full gain and the
largest difference of the two gradients relative to max |g|.

Cases: (a) a ResNet-50 v1.5 (benchmarks/bench_erf.py's torch model, exported) layer2 centre unit
at 224x224, target cone ERF <= 0.5x the forward; (b) YOLOv8n (model_zoo.modern, random weights)
at 1024x1024, a P3 (stride 8) head cell: the centre cell and the corner cell, on the heads and on
the output as ultralytics exports it (anchors joined and decoded: no input crop runs, each layer
on the anchor's cone does); (c) the ResNet-50
trunk's centre unit at 224 (its field covers the input: only cuts apply).
Run on demand (not a test):  python benchmarks/bench_erf_cone.py [--reps 5] [--threads 1]
[--cases resnet50_layer2 yolov8n_p3_centre yolov8n_p3_corner yolov8n_export_p3_corner]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import onnx

NO_SPIN = {"session.intra_op.allow_spinning": "0"}


def resnet50_layer2() -> tuple[onnx.ModelProto, str]:
    """bench_erf's ResNet-50 with its layer2 output (after the 4 blocks at stride 8) as an
    output of the exported graph, next to the logits."""
    import torch
    from bench_erf import build

    net = build("resnet50", 224)
    trunk = net[0] if isinstance(net, torch.nn.Sequential) and len(net) == 2 else net

    class Both(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            feats = trunk[:11](x)  # stem (4 modules), layer1 (3 blocks), layer2 (4 blocks)
            return net(x), feats

    f = io.BytesIO()
    torch.onnx.export(Both(), (torch.randn(1, 3, 224, 224),), f, dynamo=False, input_names=["x"],
                      output_names=["features", "layer2"], opset_version=17)
    return onnx.load_from_string(f.getvalue()), "layer2"


def resnet50_trunk() -> tuple[onnx.ModelProto, str]:
    """bench_erf's ResNet-50 trunk (output 'y', 7x7 at stride 32)."""
    from bench_erf import export

    with __import__("tempfile").TemporaryDirectory() as tmp:
        export("resnet50", 224, Path(tmp) / "r.onnx")
        return onnx.load(str(Path(tmp) / "r.onnx")), "y"


def yolov8n_1024() -> tuple[onnx.ModelProto, str]:
    from model_zoo import modern

    return modern.yolov8n(1024).build(), "head_p3"


def yolov8n_export_1024() -> tuple[onnx.ModelProto, str]:
    """YOLOv8n as ultralytics exports it (anchors joined and decoded): the P3 piece of output0."""
    from model_zoo import modern

    return modern.yolov8n_export(1024).build(), "output0#0"


CASES: dict[str, tuple[Callable[[], tuple[onnx.ModelProto, str]], str]] = {
    "resnet50_layer2": (resnet50_layer2, "centre"),
    "yolov8n_p3_centre": (yolov8n_1024, "centre"),
    "yolov8n_p3_corner": (yolov8n_1024, "corner"),
    "yolov8n_export_p3_centre": (yolov8n_export_1024, "centre"),
    "yolov8n_export_p3_corner": (yolov8n_export_1024, "corner"),
    "resnet50_centre": (resnet50_trunk, "centre"),
}


def setup(model: onnx.ModelProto, output: str, where: str, threads: int) -> dict:
    """The forward session, the full-image and cone engines, and the one-time costs."""
    from rfgraph import cone, runtime
    from rfgraph import erf as erf_mod
    from rfgraph.onnx_import import prepare
    from rfgraph.options import ModelOptions

    proto, analysis, _ = erf_mod._load(model, ModelOptions())
    assert analysis is not None
    name, full_shape, spatial = erf_mod._input_facts(proto, analysis)
    shape = erf_mod._output_shape(proto, output, name, full_shape)
    unit = None if where == "centre" else (0,) * len(analysis[output].unit_axes)
    target = erf_mod.resolve_target(analysis, proto, output, unit, None, len(full_shape), spatial, shape)
    t0 = time.perf_counter()
    cache: dict = {}
    planned = cone.plan(proto, analysis, output, target, target, full_shape, ModelOptions(), cache)
    plan_s = time.perf_counter() - t0
    if planned == cone.COVERS or isinstance(planned, str):  # no input crop: each layer's cone alone
        planned = (cone.Crop.whole(full_shape, spatial), proto, target)
    crop, crop_model, crop_target = planned
    t0 = time.perf_counter()
    inside = planned if crop_model is not proto else cone.COVERS
    narrowed = erf_mod._narrowed(inside, proto, analysis, output, target, target, full_shape, ModelOptions(),
                                 cache, trim=False)
    cuts_s = time.perf_counter() - t0
    if isinstance(narrowed, str) or not narrowed[0].inner:
        narrowed = planned
    t0 = time.perf_counter()
    chosen = erf_mod._narrowed(inside, proto, analysis, output, target, target, full_shape, ModelOptions(), cache)
    inner_s = time.perf_counter() - t0
    if isinstance(chosen, str):
        chosen = planned
    forward = runtime.session(prepare(proto, full_shape, name), threads=threads, config=NO_SPIN)
    t0 = time.perf_counter()
    full = erf_mod.GradientEngine(proto, target, name, full_shape, 1, threads=threads, config=NO_SPIN)
    x = np.random.default_rng(0).standard_normal(full_shape).astype(np.float32)
    g_full = full(x)
    guard_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    small = erf_mod.GradientEngine(crop_model, crop_target, name, crop.shape(full_shape), 1,
                                   threads=threads, config=NO_SPIN)
    build_s = time.perf_counter() - t0
    g_cone = crop.place(small(crop.take(x)), full_shape)
    engines = {}
    for key, (c_crop, c_model, c_target) in (("cuts_run", narrowed), ("inner_run", chosen)):
        engine = erf_mod.GradientEngine(c_model, c_target, name, c_crop.shape(full_shape), 1, threads=threads,
                                        config=NO_SPIN)
        engines[key] = (lambda c, e: lambda: c.place(e(c.take(x)), full_shape))(c_crop, engine)
    diffs = [cone.mismatch(g_cone, g_full)] + [cone.mismatch(run(), g_full) for run in engines.values()]
    return {"x": x, "crop": crop, "full_shape": full_shape, "unit": target.unit, "cuts": narrowed[0],
            "inner": chosen[0], "forward": lambda: forward.run(None, {name: x}), "full": lambda: full(x),
            "cone": lambda: crop.place(small(crop.take(x)), full_shape), **engines,
            "plan_s": plan_s, "cuts_s": cuts_s, "inner_s": inner_s, "guard_s": guard_s, "build_s": build_s,
            "diff": max(d if d is not None else float("inf") for d in diffs)}


def best_interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time of each function over ``reps`` rounds, the functions interleaved."""
    for fn in fns.values():  # warm-up
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0: all)")
    args = ap.parse_args()
    rows = []
    built: dict[str, tuple[onnx.ModelProto, str]] = {}
    for case in args.cases:
        make, where = CASES[case]
        if make.__name__ not in built:
            built[make.__name__] = make()
        model, output = built[make.__name__]
        s = setup(model, output, where, args.threads)
        t = best_interleaved({k: s[k] for k in ("forward", "full", "cone", "cuts_run", "inner_run")}, args.reps)
        inner = s["inner"]
        how = inner.trim_text if inner.trimmed else "; ".join(c.text() for c in inner.inner) or "none"
        rows.append((case, f"{output} {tuple(s['unit'])}", s["crop"].text(s["full_shape"]),
                     t["forward"] * 1e3, t["full"] * 1e3, t["cone"] * 1e3, t["cuts_run"] * 1e3, t["inner_run"] * 1e3,
                     t["cone"] / t["forward"], t["inner_run"] / t["forward"], t["full"] / t["inner_run"],
                     s["diff"], s["plan_s"] + s["inner_s"], s["guard_s"] + s["build_s"], how))
    head = ("case", "unit", "crop", "forward ms", "full ERF ms", "cone ERF ms", "+ cuts ms", "+ inner ms",
            "cone/forward", "+ inner/forward", "gain full/(+ inner)", "max |diff|/max|g|", "plan s",
            "guard+build s", "inner")
    print(f"threads {args.threads}, best of {args.reps}, per input, interleaved")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} | "
              f"{r[8]:.2f}x | {r[9]:.2f}x | {r[10]:.2f}x | {r[11]:.1e} | {r[12]:.1f} | {r[13]:.1f} | {r[14]} |")

if __name__ == "__main__":
    main()
