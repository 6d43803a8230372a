"""``analyze``/``table`` over many models and ``erf`` shards on one pool (``rfgraph.pool``,
issue 16 sec. 3-4): local worker processes and a Dask LocalCluster give the output of one process.

Oracle: the same command with ``--workers 1`` (one model after another in this process, the
behaviour before the pool), compared byte for byte with its exit code; for the pool itself,
``[fn(item) for item in items]``.  Covers: a folder of zoo and hand-built models with a partial
and a broken one (table, JSON, CSV layers); ``table --models`` with and without an unknown model;
the Dask cluster for both commands; ``--workers 0`` refused; the ERF bar advancing per batch on
workers.  Dask's ``distributed`` is pip-installed at test time into pytest's cache (skipped
offline, failed with RFGRAPH_REQUIRE_NETWORK=1), as in test_erf_scale.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import onnx
import pytest

from rfgraph import pool
from rfgraph.cli import main
from tests.pip_install import install_once
from tests.test_analyze_cli import _with_unknown_op
from tests.test_analyze_many import _chain

ZOO = ["cnn_small", "luo_conv15", "dilated_stack", "luo_cifar_resnet"]


def _slow_square(delay: float, x: int) -> int:
    """x squared, later for small x: the pool finishes the items out of order."""
    time.sleep(delay * (4 - x))
    return x * x


@pytest.mark.parametrize("workers", [1, 3])
def test_in_order_gives_the_list_comprehension(workers: int) -> None:
    """Items finishing in reverse order come back in item order, each once."""
    items = [0, 1, 2, 3]
    assert pool.in_order(_slow_square, 0.2, items, workers) == [x * x for x in items]
    assert sorted(i for i, _ in pool.unordered(_slow_square, 0.0, items, workers)) == items


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four zoo models, a hand-built chain, one partial (unknown op) and one broken file."""
    import model_zoo

    d = tmp_path_factory.mktemp("models")
    for name in ZOO:
        onnx.save(model_zoo.build(name), d / f"{name}.onnx")
    _chain(d / "chain.onnx", 3)
    src, _ = _with_unknown_op(tmp_path_factory.mktemp("unknown"))
    (d / "partial.onnx").write_bytes(src.read_bytes())
    (d / "broken.onnx").write_bytes(b"not a model")
    return d


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("extra", [(), ("--format", "json"), ("--layers", "--format", "csv")])
def test_analyze_folder_on_workers_equals_one_process(folder: Path, extra: tuple[str, ...],
                                                      capsys: pytest.CaptureFixture) -> None:
    """``analyze DIR zoo:NAME --workers 2``: the bytes and the exit code (2: one refused) of
    ``--workers 1``; the broken file's error line and the partial model's stop included."""
    argv = ("analyze", str(folder), "zoo:vgg_a", *extra)
    one = _cli(capsys, *argv, "--workers", "1")
    assert one[0] == 2 and "broken.onnx" in one[1] and "partial" in one[1]
    assert _cli(capsys, *argv, "--workers", "2") == one


def test_table_on_workers_equals_one_process(capsys: pytest.CaptureFixture) -> None:
    """``table --models ... --workers 2``: the table of one process; with an unknown model, the
    same one-line error and exit code 2."""
    argv = ("table", "--no-reference", "--endpoints", "--models", *ZOO)
    one = _cli(capsys, *argv, "--format", "json")
    assert one[0] == 0 and all(name in one[1] for name in ZOO)
    assert _cli(capsys, *argv, "--format", "json", "--workers", "2") == one
    codes, errors = [], []
    for workers in ("1", "2"):
        codes.append(main([*argv, "no_such_net", "cnn_small", "--workers", workers, "--no-progress"]))
        errors.append(capsys.readouterr().err)
    assert codes == [2, 2] and errors[0] == errors[1] and "unknown zoo model 'no_such_net'" in errors[0]


@pytest.mark.parametrize("command", [("analyze", "zoo:cnn_small", "zoo:vgg_a"), ("table", "--models", "cnn_small")])
def test_zero_workers_refused(command: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    assert main([*command, "--workers", "0"]) == 2
    assert "--workers 0: at least 1" in capsys.readouterr().err


def test_erf_bar_advances_per_batch_on_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``erf --workers 2``, 8 inputs in batches of 2: the bar advances by 2, four times, as in
    one process (before: by 4, one shard per worker)."""
    import model_zoo
    from rfgraph import erf as erf_mod

    ticks: dict[int, list[int]] = {}

    def fake_progress(total: int, enabled: bool, unit: str = "input"):
        steps = ticks.setdefault(len(ticks) + 1, [])
        return lambda n, close=False: steps.append(n) if n else None

    monkeypatch.setattr(erf_mod, "_progress", fake_progress)
    model = model_zoo.build("cnn_small")
    for workers in (1, 2):
        erf_mod.compute_erf(model, runs=8, batch=2, workers=workers, progress=True)
    assert ticks == {1: [2, 2, 2, 2], 2: [2, 2, 2, 2]}


@pytest.fixture(scope="module")
def dask_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dask's distributed, pip-installed once into pytest's cache (never vendored)."""
    return install_once(request, tmp_path_factory, "rfgraph_dask", ["distributed"], no_deps=False, timeout=600)


def test_dask_cluster_gives_one_process_output(folder: Path, dask_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """A LocalCluster of 2 worker processes on loopback (a real cluster: --scheduler
    tcp://HOST:8786): ``analyze DIR`` and ``table`` print the bytes of one process."""
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "path", [*sys.path, str(dask_path)])  # installed packages first
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, str(dask_path), os.environ.get("PYTHONPATH", "")]))
    from distributed import LocalCluster

    commands = [("analyze", str(folder), "--format", "json"),
                ("table", "--no-reference", "--models", *ZOO)]
    expected = [_cli(capsys, *argv) for argv in commands]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        got = [_cli(capsys, *argv, "--scheduler", cluster.scheduler_address) for argv in commands]
    assert got == expected


@pytest.mark.parametrize("shape, batch", [((1, 3, 32, 32), 1), ((1, 1, 96, 96), 1), ((1, 3, 224, 224), 1),
                                          ((1, 1, 29, 29), 8), ((1, 3, 16, 16), 8)])
def test_auto_batch_follows_the_cpu_measurement(shape: tuple[int, ...], batch: int) -> None:
    """CPU batches where they were measured faster (benchmarks/README.md, "Batching on CPU": 29x29x1
    at one thread), one input per run elsewhere (32x32x3 and 96x96x1: batch 8 up to 1.5x slower
    per input; before, auto_batch gave those 8); CUDA: 8."""
    from rfgraph.erf import auto_batch
    from rfgraph.runtime import CPU, CUDA

    assert auto_batch(shape, [CPU]) == batch
    assert auto_batch(shape, [CUDA, CPU]) == 8
