"""Benchmark: ERF time per input against the forward pass and against torch autograd.

For a ResNet-50-like and a ViT-S-like model at 224x224 (built in torch, exported with a dynamic
batch, identical weights everywhere) it measures, per input:
  (a) onnxruntime forward alone (graph optimisation ALL, same batch),
  (b) rfgraph's ERF gradient (forward + backward in one onnxruntime session),
  (c) torch autograd input gradient with parameters frozen (requires_grad False),
and, with all threads (--threads 0), (a) and (b)'s auto engine in lanes: one run per core at a
time, one thread each, as ``rfgraph erf`` runs many inputs (``erf_parallel.lanes``),
and prints ERF/forward and ERF/torch ratios, the peak memory of each (max RSS of a fresh
subprocess, so each number includes its own runtime; also that of onnxruntime alone on the file,
the least a forward takes), and the gradient agreement with torch (float32, and the
same weights in float64: the reference for every float32 gradient, torch's included).
Run on demand (not a test):  python benchmarks/bench_erf.py [--models resnet50 vit_s]
[--batch 4] [--reps 3] [--threads 0] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

# ----------------------------------------------------------------------------- models (torch)

def resnet50(num_classes: int = 1000):  # type: ignore[no-untyped-def]
    """ResNet-50 v1.5 (bottleneck, stride in the 3x3), written out: torchvision is not used."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.relu(self.body(x) + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers)  # the trunk: ERF of a unit of the last feature map


def vit_s(size: int = 224):  # type: ignore[no-untyped-def]
    """ViT-S/16: dim 384, depth 12, 6 heads, MLP 1536, cls token, learned positions."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.heads = heads

        def forward(self, t):  # type: ignore[no-untyped-def]
            b, n, d = t.shape
            qkv = self.qkv(self.n1(t)).reshape(b, n, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            t = t + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
            return t + self.fc2(F.gelu(self.fc1(self.n2(t))))

    class ViT(nn.Module):
        def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 16) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, dim, patch, patch)
            n = (size // patch) ** 2
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.grid = size // patch

        def forward(self, x):  # type: ignore[no-untyped-def]
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            t = self.norm(self.blocks(t))[:, 1:]  # patch tokens as a feature map
            return t.transpose(1, 2).reshape(t.shape[0], -1, self.grid, self.grid)

    return ViT()


def build(name: str, size: int):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    net = resnet50() if name == "resnet50" else vit_s(size)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    # random BN statistics so that the folded network is not trivially scaled
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def export(name: str, size: int, path: Path) -> None:
    import torch

    net = build(name, size)
    x = torch.randn(1, 3, size, size)
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    path.write_bytes(f.getvalue())


# ----------------------------------------------------------------------------- measurements

def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited from
    the parent across fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _channel(name: str) -> int | None:
    """The seed's channel: all channels (Luo) for the CNN; one for the ViT, whose last op is a
    LayerNorm over channels (with unit gamma the channel sum is constant: zero gradient)."""
    return 0 if name == "vit_s" else None


def _inputs(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(np.float32)


# Runs of the three runtimes are interleaved: idle worker threads must not spin (onnxruntime's
# pool, torch's OpenMP), or each runtime would steal the cores from the next one.
NO_SPIN = {"session.intra_op.allow_spinning": "0"}
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_forward(path: str, batch: int, size: int, threads: int):  # type: ignore[no-untyped-def]
    """(a) onnxruntime forward alone, graph optimisation ALL."""
    import onnx

    from rfgraph import runtime
    from rfgraph.onnx_import import prepare

    model = prepare(onnx.load(path), (batch, 3, size, size))
    sess = runtime.session(model, threads=threads, config=NO_SPIN)
    x = _inputs(batch, size)
    return lambda: sess.run(None, {"x": x})[0]


def make_forward_file(path: str, batch: int, size: int, threads: int):  # type: ignore[no-untyped-def]
    """(a') onnxruntime forward from the file, in a process that imports nothing else: the least
    memory a forward can take (no model in Python, no serialized copy), for the memory ratio."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = _inputs(batch, size)
    return lambda: sess.run(None, {"x": x})[0]


def make_erf(path: str, batch: int, size: int, threads: int, channel: int | None):  # type: ignore[no-untyped-def]
    """(b) rfgraph's gradient graph of the whole model, forward and backward in one session."""
    import onnx

    from rfgraph import erf as erf_mod
    from rfgraph import vjp
    from rfgraph.onnx_import import prepare

    model = onnx.load(path)
    out_shape = vjp.tensor_shapes(prepare(model, (1, 3, size, size)), "x")[0]["y"]
    target = erf_mod.Target("y", out_shape, (2, 3), ((out_shape[2] - 1) // 2,
                                                      (out_shape[3] - 1) // 2), channel)
    engine = erf_mod.GradientEngine(model, target, "x", (1, 3, size, size), batch, threads=threads,
                                    config=NO_SPIN)
    x = _inputs(batch, size)
    return lambda: engine(x)


def make_erf_auto(path: str, batch: int, size: int, threads: int, channel: int | None):  # type: ignore[no-untyped-def]
    """(b') the engine ``rfgraph erf --region auto`` samples a long run with
    (``rfgraph.erf.gradient_engine``): the unit's cone, in the input and inside the network
    (``rfgraph.trim`` or ``rfgraph.cuts``), checked against the whole graph on a first input."""
    from rfgraph import erf as erf_mod

    engine, notes = erf_mod.gradient_engine(path, "y", channel=channel, region="auto", batch=batch,
                                            threads=threads, config=NO_SPIN)
    print("  [auto] " + "; ".join(notes), file=sys.stderr)
    x = _inputs(batch, size)
    return lambda: engine(x)[0]


def make_torch(name: str, batch: int, size: int, threads: int,  # type: ignore[no-untyped-def]
               double: bool = False):
    """(c) torch autograd, parameters frozen, gradient w.r.t. the input only; ``double``: the
    same weights and input in float64, the reference each float32 gradient's error is read from."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    net = build(name, size)
    x0 = torch.tensor(_inputs(batch, size))
    if double:
        net, x0 = net.double(), x0.double()
    with torch.no_grad():
        shape = net(x0[:1]).shape
    seed = torch.zeros((batch,) + tuple(shape[1:]), dtype=x0.dtype)
    channels = slice(None) if _channel(name) is None else _channel(name)
    seed[:, channels, (shape[2] - 1) // 2, (shape[3] - 1) // 2] = 1.0

    def step() -> np.ndarray:
        x = x0.clone().requires_grad_(True)
        (net(x) * seed).sum().backward()
        return x.grad.numpy()

    return step


def make(kind: str, name: str, path: str, batch: int, size: int, threads: int):  # type: ignore[no-untyped-def]
    if kind == "forward":
        return make_forward(path, batch, size, threads)
    if kind == "forward_file":
        return make_forward_file(path, batch, size, threads)
    if kind == "erf":
        return make_erf(path, batch, size, threads, _channel(name))
    if kind == "erf_auto":
        return make_erf_auto(path, batch, size, threads, _channel(name))
    return make_torch(name, batch, size, threads)


KINDS = ("forward", "erf", "erf_auto", "torch")
LANE_KINDS = ("forward", "erf_auto")  # also timed in lanes with all threads (measure_times)


def lanes_count(threads: int) -> int:
    """Runs at a time ``rfgraph erf`` makes in one process when it chooses the threads
    (``erf_parallel.lanes``: one per core, one onnxruntime thread each); 1 with --threads N."""
    from rfgraph.erf_parallel import MAX_LANES

    return 1 if threads else min(os.cpu_count() or 1, MAX_LANES)


def in_lanes(fn, lanes: int):  # type: ignore[no-untyped-def]
    """``fn`` run ``lanes`` times at once on as many threads (one onnxruntime session shared)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(lanes)

    def run():  # type: ignore[no-untyped-def]
        outs = list(pool.map(lambda _: fn(), range(lanes)))  # waits for every lane
        return outs[0]

    return run


def measure_times(name: str, path: str, batch: int, size: int, reps: int, threads: int) -> dict:
    """Best-of-``reps`` (and median) time per input of each kind, runs interleaved so that all of them see the
    same machine load; plus the gradients' agreement (each ERF with torch's).  With all threads,
    also the forward and the auto engine in lanes (``lanes_count`` runs at a time, one thread
    each: how ``rfgraph erf`` runs many inputs), per input."""
    fns = {k: make(k, name, path, batch, size, threads) for k in KINDS}
    lanes = lanes_count(threads)
    per_call = dict.fromkeys(KINDS, batch)
    if lanes > 1:
        for k in LANE_KINDS:
            fns[k + "_lanes"] = in_lanes(make(k, name, path, batch, size, 1), lanes)
            per_call[k + "_lanes"] = batch * lanes
    outs = {k: fn() for k, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    ref, truth = outs["torch"], make_torch(name, batch, size, threads, double=True)()
    err = {k: float(np.abs(outs[k] - ref).max() / np.abs(ref).max())
           for k in ("erf", "erf_auto", "erf_auto_lanes") if k in outs}
    err64 = {k: float(np.abs(outs[k] - truth).max() / np.abs(truth).max())
             for k in ("erf", "erf_auto", "erf_auto_lanes", "torch") if k in outs}
    return {"ms": {k: 1e3 * min(v) / per_call[k] for k, v in times.items()},
            "median_ms": {k: 1e3 * float(np.median(v)) / per_call[k] for k, v in times.items()},
            "max_rel_err": err, "max_rel_err_float64": err64, "lanes": lanes}


def measure_peak(kind: str, name: str, path: str, batch: int, size: int, threads: int) -> float:
    """Peak resident memory (MB) of a fresh process running one kind twice."""
    fn = make(kind, name, path, batch, size, threads)
    fn()
    fn()
    return _peak_mb()


def _child(q, fn, args):  # type: ignore[no-untyped-def]
    q.put(fn(*args))


def isolated(fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn`` in a fresh process (its memory is its own) and return its result."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    while True:  # a child that dies (an import error, out of memory) must not leave us waiting
        try:
            out = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the measuring process died (exit code {p.exitcode})") from None
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit_s"], choices=["resnet50", "vit_s"])
    ap.add_argument("--batch", type=int, default=1, help="inputs per run (1 is fastest per input "
                    "on CPU at 224x224, measured)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: the runtimes' defaults (all cores)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", action="store_true", help="print one JSON object per model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = str(Path(tmp) / f"{name}.onnx")
            export(name, args.size, Path(path))
            timing = isolated(measure_times, name, path, args.batch, args.size, args.reps,
                              args.threads)
            peaks = {k: isolated(measure_peak, k, name, path, args.batch, args.size, args.threads)
                     for k in (*KINDS, "forward_file")}
            ms = timing["ms"]
            row = {"model": name, "size": args.size, "batch": args.batch, "threads": args.threads,
                   "cpu_count": os.cpu_count(), "forward_ms": ms["forward"], "erf_ms": ms["erf"],
                   "erf_auto_ms": ms["erf_auto"], "erf_auto_over_forward": ms["erf_auto"] / ms["forward"],
                   "torch_ms": ms["torch"], "erf_over_forward": ms["erf"] / ms["forward"],
                   "erf_over_torch": ms["erf"] / ms["torch"], "peak_mb": peaks,
                   "erf_peak_over_forward": peaks["erf"] / peaks["forward"],
                   "max_rel_err_vs_torch": timing["max_rel_err"],
                   "max_rel_err_vs_float64": timing["max_rel_err_float64"], "lanes": timing["lanes"]}
            if timing["lanes"] > 1:
                row.update({"forward_lanes_ms": ms["forward_lanes"], "erf_auto_lanes_ms": ms["erf_auto_lanes"],
                            "erf_auto_lanes_over_forward": ms["erf_auto_lanes"] / ms["forward"],
                            "erf_auto_lanes_over_forward_lanes": ms["erf_auto_lanes"] / ms["forward_lanes"],
                            "erf_auto_lanes_over_forward_lanes_median":
                                timing["median_ms"]["erf_auto_lanes"] / timing["median_ms"]["forward_lanes"]})
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{name} @ {args.size}x{args.size}, batch {args.batch}, threads "
                      f"{args.threads or 'all'}, {os.cpu_count()} CPUs")
                print(f"  per input: forward {row['forward_ms']:.1f} ms | ERF {row['erf_ms']:.1f} ms"
                      f" | ERF auto {row['erf_auto_ms']:.1f} ms | torch autograd {row['torch_ms']:.1f} ms")
                print(f"  ERF / forward = {row['erf_over_forward']:.2f}x (whole graph), "
                      f"{row['erf_auto_over_forward']:.2f}x (auto: the unit's cone)   ERF / torch = "
                      f"{row['erf_over_torch']:.2f}x   (targets: <= 2.0x, <= 1x)")
                if row["lanes"] > 1:
                    print(f"  in {row['lanes']} lanes (runs at a time, one thread each, as `rfgraph erf` "
                          f"runs many inputs): forward {row['forward_lanes_ms']:.1f} ms | ERF auto "
                          f"{row['erf_auto_lanes_ms']:.1f} ms per input; ERF auto in lanes / forward = "
                          f"{row['erf_auto_lanes_over_forward']:.2f}x, / forward in lanes = "
                          f"{row['erf_auto_lanes_over_forward_lanes']:.2f}x (medians of the runs: "
                          f"{row['erf_auto_lanes_over_forward_lanes_median']:.2f}x)")
                pk = row["peak_mb"]
                print(f"  peak RSS: forward {pk['forward']:.0f} MB | ERF {pk['erf']:.0f} MB | "
                      f"torch {pk['torch']:.0f} MB | onnxruntime alone on the file {pk['forward_file']:.0f} MB")
                print(f"  ERF / forward peak = {row['erf_peak_over_forward']:.2f}x (target <= 1.5x; "
                      f"{pk['erf'] / pk['forward_file']:.2f}x onnxruntime alone; auto {pk['erf_auto']:.0f} MB);"
                      f"  max rel err vs torch {row['max_rel_err_vs_torch']['erf']:.2e} (auto "
                      f"{row['max_rel_err_vs_torch']['erf_auto']:.2e})")
                e64 = row["max_rel_err_vs_float64"]
                print(f"  max rel err vs torch autograd in float64: ERF {e64['erf']:.2e}, auto "
                      f"{e64['erf_auto']:.2e}; torch's own float32 gradient {e64['torch']:.2e}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
