"""One function mapped over many items here, on local worker processes or on a Dask cluster,
the results yielded as they finish: the one pool behind ``erf --workers/--scheduler`` (input
shards) and ``analyze``/``table`` over many models.

The engines are ``concurrent.futures.ProcessPoolExecutor`` (spawned processes: no onnxruntime
state is forked) and ``dask.distributed`` (``pip install 'rfgraph[cluster]'``); scheduling is
theirs, never ours.  ``fn(shared, item)`` must be a module-level function; ``shared`` (a model,
the command's options) is sent once per worker process, or scattered once to every Dask worker.
Dask rather than Ray: ``distributed`` is one pip install, its ``LocalCluster`` starts on one
machine (the tests start one on loopback), and a real cluster is one address.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .errors import RFGraphError

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


def check_workers(workers: int) -> None:
    """``--workers`` below 1 is refused (a usage error)."""
    if workers < 1:
        raise RFGraphError(f"--workers {workers}: at least 1 (1: in this process)")


def unordered(fn: Callable[[S, T], R], shared: S, items: Sequence[T], workers: int = 1,
              scheduler: str | None = None) -> Iterator[tuple[int, R]]:
    """``(i, fn(shared, items[i]))`` for every item as it finishes: in this process, in order,
    when ``workers`` is 1 and no ``scheduler``; else on ``workers`` local processes, or on the
    Dask cluster whose scheduler is at ``scheduler`` (tcp://HOST:8786)."""
    check_workers(workers)
    if scheduler:
        return _on_dask(fn, shared, items, scheduler)
    if workers > 1 and len(items) > 1:
        return _on_processes(fn, shared, items, min(workers, len(items)))
    return ((i, fn(shared, item)) for i, item in enumerate(items))


def in_order(fn: Callable[[S, T], R], shared: S, items: Sequence[T], workers: int = 1,
             scheduler: str | None = None, progress: bool = False, unit: str = "model") -> list[R]:
    """``[fn(shared, item) for item in items]`` computed by ``unordered``, with a progress bar on
    stderr advancing per item finished (``progress``)."""
    from tqdm import tqdm

    out: list[Any] = [None] * len(items)
    with tqdm(total=len(items), unit=unit, file=sys.stderr, disable=not progress, leave=False) as bar:
        for i, result in unordered(fn, shared, items, workers, scheduler):
            out[i] = result
            bar.update(1)
    return out


_WORKER: dict[str, Any] = {}  # a worker process's function and shared argument


def _install(fn: Callable[[Any, Any], Any], shared: Any) -> None:
    """Worker-process initialiser: the function and its shared argument, sent once per process."""
    _WORKER["fn"], _WORKER["shared"] = fn, shared


def _call(i: int, item: Any) -> tuple[int, Any]:
    return i, _WORKER["fn"](_WORKER["shared"], item)


def _on_processes(fn: Callable[[S, T], R], shared: S, items: Sequence[T],
                  workers: int) -> Iterator[tuple[int, R]]:
    """The items on ``workers`` spawned local processes, yielded as they complete."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, ctx, initializer=_install, initargs=(fn, shared)) as pool:
        futures = [pool.submit(_call, i, item) for i, item in enumerate(items)]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(cancel_futures=True)


def _dask_call(fn: Callable[[Any, Any], Any], shared: Any, i: int, item: Any) -> tuple[int, Any]:
    return i, fn(shared, item)


def _on_dask(fn: Callable[[S, T], R], shared: S, items: Sequence[T],
             address: str) -> Iterator[tuple[int, R]]:
    """The items on the Dask cluster at ``address`` (its scheduler places them), yielded as
    they complete."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RFGraphError("--scheduler needs Dask's distributed package: pip install "
                           "'rfgraph[cluster]'") from None
    try:
        client = Client(address, timeout="30s")
    except OSError as exc:
        raise RFGraphError(f"no Dask scheduler at {address}: {exc}") from None
    with client:
        sent = client.scatter([shared], broadcast=True)[0]  # a list: a tuple would be scattered per element
        futures = [client.submit(_dask_call, fn, sent, i, item, pure=False)
                   for i, item in enumerate(items)]
        for future in as_completed(futures):
            yield future.result()


__all__ = ["check_workers", "in_order", "unordered"]
