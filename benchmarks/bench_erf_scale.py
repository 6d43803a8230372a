"""Benchmark: ERF over many inputs and units, on one process, N worker processes and a Dask cluster.

For a model of bench_erf.py (default: the ResNet-50 trunk at 128x128) it times ``compute_erf``
with ``--runs`` inputs on 1 process (in lanes, its default, and one run at a time on all cores)
and ``--workers`` local processes and, when Dask's distributed is
importable, on a LocalCluster of that many workers (or ``--scheduler ADDRESS``); then ``--units``
units in one call (one backward per batch of units) against one call per unit.  Each line gives
the wall time, the ratio to one process and the largest difference from one process's map.
Run on demand (not a test):  python benchmarks/bench_erf_scale.py [--model resnet50] [--size 128]
[--runs 16] [--workers 2] [--units 4] [--scheduler tcp://HOST:8786]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_erf import _channel, export


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the map's maximum."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def cluster_address(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The --scheduler given, else a LocalCluster of --workers processes on loopback (or None)."""
    if args.scheduler:
        return args.scheduler, None
    try:
        from distributed import LocalCluster
    except ImportError:
        return None, None
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None)
    return cluster.scheduler_address, cluster


def main() -> None:
    from rfgraph.erf import compute_erf, compute_erfs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--units", type=int, default=4)
    p.add_argument("--scheduler", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{args.model}.onnx")
        export(args.model, args.size, Path(path))
        kw = {"runs": args.runs, "seed": 0, "channel": _channel(args.model), "provider": "cpu"}
        compute_erf(path, **{**kw, "runs": 2})  # imports and first sessions out of the timings
        one, t1 = timed(compute_erf, path, **kw)
        print(f"{args.model} {args.size}x{args.size}, {args.runs} inputs: 1 process {t1:.2f} s "
              f"(in lanes: {os.cpu_count()} cores)")
        serial, ts = timed(compute_erf, path, threads=os.cpu_count() or 1, **kw)
        print(f"  1 process, one run at a time on all cores (threads pinned, no lanes): {ts:.2f} s "
              f"(lanes {ts / t1:.2f}x faster), max diff {diff(serial.erf, one.erf):.2g}")
        many, tn = timed(compute_erf, path, workers=args.workers, **kw)
        print(f"  {args.workers} worker processes: {tn:.2f} s ({t1 / tn:.2f}x faster), "
              f"max diff {diff(many.erf, one.erf):.2g}")
        address, cluster = cluster_address(args)
        if address is None:
            print("  Dask: distributed not installed (pip install 'rfgraph[cluster]'), skipped")
        else:
            dask, td = timed(compute_erf, path, scheduler=address, **kw)
            print(f"  Dask at {address}: {td:.2f} s ({t1 / td:.2f}x faster), "
                  f"max diff {diff(dask.erf, one.erf):.2g}")
        if cluster is not None:
            cluster.close()
        n = one.target.shape[2]
        units = [(n // 2, int(j)) for j in np.linspace(0, n - 1, args.units)]
        together, tu = timed(compute_erfs, path, units=units, **kw)
        singles = [timed(compute_erf, path, unit=u, **kw) for u in units]
        ts = sum(t for _, t in singles)
        worst = max(diff(a.erf, b.erf) for a, (b, _) in zip(together, singles))
        print(f"  {args.units} units in one call: {tu:.2f} s, one call per unit: {ts:.2f} s "
              f"({ts / tu:.2f}x), max diff {worst:.2g}")


if __name__ == "__main__":
    main()
