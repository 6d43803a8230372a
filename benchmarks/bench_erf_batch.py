"""Benchmark: per-input ERF time at 1, 8 and 32 inputs per onnxruntime run on small zoo models,
the measurement behind ``rfgraph.erf.auto_batch`` (CPU: batches only for tiny inputs).

Batches interleaved, best of ``--reps``; one line per model.  Run on demand (not a test):
python benchmarks/bench_erf_batch.py [--models cnn_small vit_small ...] [--runs 96] [--reps 3]
[--threads 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model_zoo
from rfgraph.erf import auto_batch, compute_erf

BATCHES = (1, 8, 32)


def per_input_ms(model, runs: int, batch: int, threads: int) -> float:  # type: ignore[no-untyped-def]
    """Wall time of one ERF over ``runs`` inputs, per input, in milliseconds."""
    t0 = time.perf_counter()
    compute_erf(model, runs=runs, batch=batch, threads=threads, providers=["CPUExecutionProvider"])
    return (time.perf_counter() - t0) / runs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["luo_conv_uniform_5", "cnn_small", "vit_small",
                                                    "luo_cifar_resnet", "luo_conv15"])
    ap.add_argument("--runs", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    args = ap.parse_args()
    for name in args.models:
        model = model_zoo.build(name)
        compute_erf(model, runs=8, batch=8)  # warm-up
        best = dict.fromkeys(BATCHES, float("inf"))
        for _ in range(args.reps):
            for b in BATCHES:
                best[b] = min(best[b], per_input_ms(model, args.runs, b, args.threads))
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        cells = "  ".join(f"batch {b}: {ms:.2f} ms" for b, ms in best.items())
        auto = auto_batch(shape, ["CPUExecutionProvider"])
        print(f"{name:20s} {'x'.join(map(str, shape)):12s} {cells}  auto: {auto}", flush=True)


if __name__ == "__main__":
    main()
