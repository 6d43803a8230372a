"""ERF sums beyond one process: the weight draws and input runs cut into shards (contiguous input
ranges of one weight draw), run in this process (one after the other, or several at a time on
threads sharing the engine: ``lanes``), in local worker processes (one onnxruntime session each)
or on a Dask cluster, and their float64 sums added in shard order.  Every input has
its own Generator (``erf.keyed_rng``), so one process, N workers and a cluster sum the same
samples: the maps agree to rounding (float64 sums in another grouping).

The workers and the cluster are ``rfgraph.pool``'s (processes or Dask, and why not Ray).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import erf as erf_mod  # _progress through the module: tests replace it
from . import pool
from .erf import ConeEngine, FDEngine, Method, Sampler, UnitsEngine


@dataclass(frozen=True)
class Shard:
    """Inputs ``start`` to ``stop`` (exclusive) of weight draw ``w``."""

    w: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardSums:
    """Per unit: the float64 sum of the kept maps, maps kept and inputs drawn."""

    totals: np.ndarray  # (units, *spatial)
    kept: np.ndarray
    drawn: np.ndarray
    batch: int = 1
    providers: tuple[str, ...] = ()


def shards(weight_runs: int, runs: int, batch: int, parts: int) -> list[Shard]:
    """Each weight draw's ``runs`` inputs cut into at most ``parts`` contiguous ranges, whole
    batches each, in (w, start) order."""
    per = -(-runs // parts)
    per = -(-per // batch) * batch
    return [Shard(w, a, min(a + per, runs)) for w in range(weight_runs) for a in range(0, runs, per)]


def threads_per_worker(workers: int, scheduler: str | None, lanes: int = 1) -> int:
    """onnxruntime threads per session: the cores shared among local workers, or among the lanes
    of this process (0: onnxruntime's default, all cores)."""
    if scheduler or max(workers, lanes) <= 1:
        return 0
    return max(1, (os.cpu_count() or 1) // max(workers, lanes))


# Several runs of one engine at a time in this process, one onnxruntime thread each, beat one run
# on all cores: an input's run parallelises its large ops only, and two runs share no lock
# (onnxruntime sessions run concurrently).  Measured on the 2-core box (benchmarks/README.md):
# ResNet-50's ERF engine 119.7 -> 108.6 ms per input, ViT-S's 166.8 -> 146.2 ms.
MAX_LANES = 8
LANE_MEMORY_SHARE = 0.5  # of the memory available at the start, for the lanes' activations
LANE_BATCHES = 4  # batches per lane at least, else fewer lanes (their set-up is not free)


def lanes(workers: int, scheduler: str | None, threads: int, gradient_on_cpu: bool, batches: int,
          run_bytes: int, available_bytes: int | None = None) -> int:
    """Runs at a time in this process: one per core (at most MAX_LANES) when the caller left the
    threads to rfgraph (``threads`` 0), on one process, for gradient engines on the CPU; fewer when
    there are few ``batches`` to run or when ``run_bytes`` (one run's activations) per lane would
    exceed LANE_MEMORY_SHARE of the memory available."""
    if workers > 1 or scheduler or threads or not gradient_on_cpu:
        return 1
    most = min(os.cpu_count() or 1, MAX_LANES, max(1, batches // LANE_BATCHES))
    available = memory_available() if available_bytes is None else available_bytes
    if available is None:
        return min(most, 2)
    return max(1, min(most, int(LANE_MEMORY_SHARE * available) // max(run_bytes, 1)))


def memory_available() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# shards (whole batches) per worker and weight draw: the bar advances per shard, so per batch
# where a draw has at most this many batches per worker
SHARDS_PER_WORKER = 8


def sample_sums(sampler: Sampler, weight_runs: int, runs: int, workers: int, scheduler: str | None,
                progress: bool, fd_budget: float, first: UnitsEngine | ConeEngine | None = None,
                lanes: int = 1) -> ShardSums:
    """Sums of every weight draw's first ``runs`` kept maps: shards here (``lanes`` at a time), in
    worker processes or on the ``scheduler``'s cluster, merged in shard order; replacements for
    non-finite samples are then drawn here, in input order, so the kept set is the one a single
    process keeps.  ``first``: weight draw 0's engine when the caller has built it (the cones'
    check)."""
    here = workers == 1 and not scheduler
    parts = 1 if here and lanes == 1 else max(workers, lanes, 2) * SHARDS_PER_WORKER
    # built here only where needed (this process runs the shards, or the finite differences'
    # cost check)
    if first is None and (here or sampler.method is Method.FD):
        first = sampler.engine(0)
    if first is not None:
        check_fd_cost(first, runs * weight_runs, fd_budget)
    todo = shards(weight_runs, runs, sampler.batch, parts)
    bar = _bar(first, runs * weight_runs, progress)
    if parts == 1:
        results = [_shard(sampler, s, bar, first if s.w == 0 else None) for s in todo]
    elif here:
        results = _on_lanes(sampler, todo, lanes, bar, first)
    else:
        results = _on_pool(sampler, todo, workers, scheduler, bar)
    merged = _merge(results, len(sampler.targets))
    _redraw(sampler, merged, weight_runs, runs, results, bar)
    bar(0, close=True)
    facts = results[0][1]
    return ShardSums(merged.totals, merged.kept, merged.drawn, facts.batch, facts.providers)


def _bar(engine: UnitsEngine | ConeEngine | None, inputs: int, progress: bool) -> Callable[..., None]:
    """A progress bar over inputs, per batch (per shard on workers); with finite differences,
    over forward passes."""
    fd = [e for e in engine.engines if isinstance(e, FDEngine)] if engine else []
    if not fd:
        return erf_mod._progress(inputs, progress)
    bar = erf_mod._progress(sum(e.fd.forwards() for e in fd) * inputs, progress, "forward")
    for e in fd:
        e.on_forwards = bar
    return lambda n, close=False: bar(0, close)


def check_fd_cost(engine: UnitsEngine | ConeEngine, inputs: int, budget: float) -> None:
    """Finite differences are refused before they start when over ``budget`` seconds."""
    for e in engine.engines:
        if isinstance(e, FDEngine):
            e.check_cost(inputs * len(engine.engines), budget)
            return


def _merge(results: Sequence[tuple[Shard, ShardSums]], units: int) -> ShardSums:
    """The shards' sums added in shard order (float64), so any run of the same shards agrees."""
    totals = np.zeros((units,) + results[0][1].totals.shape[1:], np.float64)
    kept, drawn = np.zeros(units, np.int64), np.zeros(units, np.int64)
    for _, r in sorted(results, key=lambda sr: (sr[0].w, sr[0].start)):
        totals += r.totals
        kept += r.kept
        drawn += r.drawn
    return ShardSums(totals, kept, drawn)


def _redraw(sampler: Sampler, merged: ShardSums, weight_runs: int, runs: int,
            results: Sequence[tuple[Shard, ShardSums]], bar: Callable[..., None]) -> None:
    """Where a weight draw kept fewer than ``runs`` maps (non-finite ones skipped), draw the
    replacements (inputs ``runs``.. in order) here, into ``merged``."""
    draws = sampler.draws(runs)
    for w in range(weight_runs):
        kept = np.sum([r.kept for s, r in results if s.w == w], axis=0)
        if draws == runs or bool((kept >= runs).all()):
            continue
        k, d = sampler.add(merged.totals, sampler.engine(w), w, runs, draws, list(runs - kept), bar)
        merged.kept[:] += k
        merged.drawn[:] += d


def _shard(sampler: Sampler, shard: Shard, bar: Callable[..., None],
           engine: UnitsEngine | ConeEngine | None = None) -> tuple[Shard, ShardSums]:
    """One shard's sums (all its inputs are wanted: replacements come later, in order)."""
    engine = engine or _cached_engine(sampler, shard.w)
    totals = np.zeros((len(sampler.targets),) + tuple(sampler.full_shape[a] for a in sampler.spatial),
                      np.float64)
    n = shard.stop - shard.start
    kept, drawn = sampler.add(totals, engine, shard.w, shard.start, shard.stop,
                              [n] * len(sampler.targets), bar)
    return shard, ShardSums(totals, kept, drawn, engine.batch, tuple(engine.providers()))


_CACHE: dict[tuple[int, int], UnitsEngine | ConeEngine] = {}
_LOCK = threading.Lock()


def _cached_engine(sampler: Sampler, w: int) -> UnitsEngine | ConeEngine:
    """A worker's engine for weight draw ``w``, kept while its shards run (one at a time)."""
    key = (id(sampler), w)
    with _LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = sampler.engine(w)
        return _CACHE[key]


def _on_lanes(sampler: Sampler, todo: list[Shard], lanes: int, bar: Callable[..., None],
              first: UnitsEngine | ConeEngine | None) -> list[tuple[Shard, ShardSums]]:
    """Shards on ``lanes`` threads of this process, all running each weight draw's one engine
    (onnxruntime sessions run concurrently), the bar advancing per batch (under a lock)."""
    from concurrent.futures import ThreadPoolExecutor

    engines: dict[int, UnitsEngine | ConeEngine] = {} if first is None else {0: first}
    building, counting = threading.Lock(), threading.Lock()  # a build must not stall the bar

    def engine_of(w: int) -> UnitsEngine | ConeEngine:
        with building:  # one build per draw; the draw before may still be running on a lane
            if w not in engines:
                for old in [k for k in engines if k < w - 1]:
                    del engines[old]
                engines[w] = sampler.engine(w)
            return engines[w]

    def counted(n: int, close: bool = False) -> None:
        with counting:
            bar(n)

    def run(shard: Shard) -> tuple[Shard, ShardSums]:
        return _shard(sampler, shard, counted, engine_of(shard.w))

    with ThreadPoolExecutor(lanes, thread_name_prefix="rfgraph-lane") as lanes_pool:
        return list(lanes_pool.map(run, todo))


def _silent(n: int, close: bool = False) -> None:
    """A shard's own bar on a worker: the caller counts the shard when it returns."""


def _pool_shard(sampler: Sampler, shard: Shard) -> tuple[Shard, ShardSums]:
    """One shard on a worker of ``rfgraph.pool`` (its progress is counted when it returns)."""
    return _shard(sampler, shard, _silent)


def _on_pool(sampler: Sampler, todo: list[Shard], workers: int, scheduler: str | None,
             bar: Callable[..., None]) -> list[tuple[Shard, ShardSums]]:
    """Shards on ``workers`` local processes or the Dask cluster at ``scheduler``
    (``rfgraph.pool``), the bar advancing per shard (merged later in shard order)."""
    out = []
    for _, (shard, sums) in pool.unordered(_pool_shard, sampler, todo, workers, scheduler):
        bar(int(sums.drawn.max()))
        out.append((shard, sums))
    return out


def provider_notes(providers: Sequence[str]) -> list[str]:
    """Which onnxruntime execution providers ran, when CUDA was one of them."""
    if "CUDAExecutionProvider" not in providers:
        return []
    return [(f"onnxruntime ran the gradient graph on {', '.join(providers)} (nodes without a "
             "CUDA kernel run on the CPU provider; onnxruntime lists them at log level verbose)")]


__all__ = ["Shard", "ShardSums", "check_fd_cost", "sample_sums", "shards"]
