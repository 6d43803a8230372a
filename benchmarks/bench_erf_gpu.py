"""Benchmark on a GPU: ERF time per input against the forward pass and torch autograd, on CUDA.

Same models, weights and seeds as bench_erf.py (ResNet-50 trunk and ViT-S/16, 224x224), measured
in one run, interleaved:
  (a) onnxruntime forward on its CUDA execution provider,
  (b) rfgraph's ERF gradient graph on the CUDA execution provider (``--provider cuda``),
  (c) torch autograd input gradient on CUDA (parameters frozen), synchronised,
with the ratios ERF/forward and ERF/torch, the gradients' agreement, and the providers the
gradient session kept (nodes without a CUDA kernel fall back to CPU).  Needs onnxruntime-gpu
and torch with CUDA; whichever is missing is said, and the rest is still measured.
Run on demand (not a test):  python benchmarks/bench_erf_gpu.py [--models resnet50 vit_s]
[--batch 8] [--reps 20] [--size 224] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_erf import _channel, _inputs, build, export

CUDA_EP = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def ort_cuda() -> bool:
    from rfgraph import runtime

    return runtime.has_cuda()


def torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def make_forward(path: str, batch: int, size: int) -> Callable[[], np.ndarray]:
    """(a) onnxruntime forward on CUDA, graph optimisation ALL."""
    import onnx

    from rfgraph import runtime
    from rfgraph.onnx_import import prepare

    model = prepare(onnx.load(path), (batch, 3, size, size))
    sess = runtime.session(model, providers=CUDA_EP)
    x = _inputs(batch, size)
    return lambda: sess.run(None, {"x": x})[0]


def make_erf(path: str, batch: int, size: int, channel: int | None
             ) -> tuple[Callable[[], np.ndarray], list[str]]:
    """(b) rfgraph's gradient graph on CUDA; with the providers its session kept."""
    import onnx

    from rfgraph import erf as erf_mod
    from rfgraph import vjp
    from rfgraph.onnx_import import prepare

    model = onnx.load(path)
    out_shape = vjp.tensor_shapes(prepare(model, (1, 3, size, size)), "x")[0]["y"]
    target = erf_mod.Target("y", out_shape, (2, 3), ((out_shape[2] - 1) // 2,
                                                      (out_shape[3] - 1) // 2), channel)
    engine = erf_mod.GradientEngine(model, target, "x", (1, 3, size, size), batch, providers=CUDA_EP)
    x = _inputs(batch, size)
    return (lambda: engine(x)), list(engine.sess.get_providers())  # type: ignore[attr-defined]


def make_torch(name: str, batch: int, size: int) -> Callable[[], np.ndarray]:
    """(c) torch autograd on CUDA, parameters frozen, gradient w.r.t. the input only."""
    import torch

    net = build(name, size).cuda()
    x0 = torch.tensor(_inputs(batch, size)).cuda()
    with torch.no_grad():
        shape = net(x0[:1]).shape
    seed = torch.zeros((batch,) + tuple(shape[1:]), device="cuda")
    channels = slice(None) if _channel(name) is None else _channel(name)
    seed[:, channels, (shape[2] - 1) // 2, (shape[3] - 1) // 2] = 1.0

    def step() -> np.ndarray:
        x = x0.clone().requires_grad_(True)
        (net(x) * seed).sum().backward()
        torch.cuda.synchronize()
        return x.grad.cpu().numpy()

    return step


def measure(name: str, batch: int, size: int, reps: int) -> dict:
    """Best-of-``reps`` ms per input of each runtime present, interleaved, and the ratios."""
    out: dict = {"model": name, "batch": batch, "ort_cuda": ort_cuda(), "torch_cuda": torch_cuda()}
    fns: dict[str, Callable[[], np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{name}.onnx")
        export(name, size, Path(path))
        if out["ort_cuda"]:
            fns["forward"] = make_forward(path, batch, size)
            fns["erf"], out["erf_providers"] = make_erf(path, batch, size, _channel(name))
        if out["torch_cuda"]:
            fns["torch"] = make_torch(name, batch, size)
        results = {k: fn() for k, fn in fns.items()}  # warm-up (and CUDA kernel selection)
        for _ in range(2):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    out["ms"] = {k: 1e3 * min(v) / batch for k, v in times.items()}
    ms = out["ms"]
    if "erf" in ms:
        out["erf_over_forward"] = ms["erf"] / ms["forward"]
    if "erf" in ms and "torch" in ms:
        out["erf_over_torch"] = ms["erf"] / ms["torch"]
        ref = results["torch"]
        out["max_rel_err"] = float(np.abs(results["erf"] - ref).max() / np.abs(ref).max())
    return out


def report(r: dict) -> str:
    """One model's line: times, ratios, and what could not run."""
    missing = [what for what, ok in (("onnxruntime CUDA provider (install onnxruntime-gpu)",
                                      r["ort_cuda"]), ("torch CUDA", r["torch_cuda"])) if not ok]
    times = ", ".join(f"{k} {v:.3g} ms" for k, v in r["ms"].items())
    ratios = ", ".join(f"{k} {r[k]:.3g}x" for k in ("erf_over_forward", "erf_over_torch") if k in r)
    text = f"{r['model']} (batch {r['batch']}, per input): {times or 'nothing measured'}"
    text += f"; {ratios}" if ratios else ""
    if "max_rel_err" in r:
        text += f"; max rel err vs torch {r['max_rel_err']:.2g}"
    if "erf_providers" in r:
        text += f"; gradient session providers: {', '.join(r['erf_providers'])}"
    if missing:
        text += f"; NOT AVAILABLE here: {'; '.join(missing)}"
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_s"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    for name in args.models:
        r = measure(name, args.batch, args.size, args.reps)
        print(json.dumps(r) if args.json else report(r), flush=True)


if __name__ == "__main__":
    main()
