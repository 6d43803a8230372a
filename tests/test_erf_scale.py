"""ERF at scale (issue 16 sec. 3-5): inputs keyed by index, several units per backward, worker
processes and a Dask cluster giving one process's map, and the execution provider choice.

Oracles: torch autograd on the very inputs ``keyed_rng`` draws; a single unit's map for the
several-unit run; one process for the workers and the cluster.  Dask's ``distributed`` is
pip-installed at test time into pytest's cache (skipped offline, failed with
RFGRAPH_REQUIRE_NETWORK=1)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rfgraph import cli
from rfgraph.erf import INPUT_KEY, compute_erf, compute_erfs, keyed_rng
from rfgraph.errors import RFGraphError
from tests.pip_install import install_once

SIZE = 16  # input side; the net's output is 8 x 8


class Net(torch.nn.Module):
    """conv-relu-conv/2: local, each unit's field inside the image or on its border."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return Net().eval()


@pytest.fixture(scope="module")
def model(net: torch.nn.Module) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(net, (torch.ones(1, 3, SIZE, SIZE),), f, dynamo=False, input_names=["x"],
                      output_names=["y"])
    return onnx.load_from_string(f.getvalue())


def torch_map(net: torch.nn.Module, seed: int, runs: int, unit: tuple[int, int]) -> np.ndarray:
    """Mean |d sum_c y[c, unit] / dx| summed over channels, by autograd, on input i of weight
    draw 0 drawn from keyed_rng(seed, INPUT_KEY, 0, i)."""
    maps = []
    for i in range(runs):
        x = keyed_rng(seed, INPUT_KEY, 0, i).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        (g,) = torch.autograd.grad(net(xt)[0, :, unit[0], unit[1]].sum(), xt)
        maps.append(g.abs()[0].sum(0).numpy())
    return np.mean(maps, axis=0)


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))


def test_each_input_has_its_own_generator_whatever_the_batch(net, model) -> None:
    """Input i is keyed_rng(seed, INPUT_KEY, w, i)'s draw (before: one sequential Generator for
    weights and inputs): batches of 1 and of 4 give the autograd map on those inputs."""
    ref = torch_map(net, 3, 5, (3, 3))
    for batch in (1, 4):
        res = compute_erf(model, runs=5, seed=3, batch=batch)
        np.testing.assert_allclose(res.erf, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_several_units_equal_their_single_unit_maps(net, model) -> None:
    """Four units (centre, corner, border, interior) in one call, one backward serving four
    (one seed per batch item): each equals its own run (<= 1e-6) and autograd (<= 1e-4)."""
    units = [(3, 3), (0, 0), (7, 2), (5, 6)]
    many = compute_erfs(model, units=units, runs=3, seed=1)
    assert many[0].batch >= len(units)  # the pairs shared backward passes
    for unit, res in zip(units, many):
        assert res.target.unit == unit
        close(res.erf, compute_erf(model, unit=unit, runs=3, seed=1, batch=1).erf)
        ref = torch_map(net, 1, 3, unit)
        np.testing.assert_allclose(res.erf, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_workers_give_one_process_map(model) -> None:
    """Two worker processes sharing two He weight draws x 7 inputs give one process's map."""
    kw = {"runs": 7, "seed": 5, "weight_runs": 2, "reinit": "he", "batch": 2}
    one = compute_erf(model, **kw)
    two = compute_erf(model, workers=2, **kw)
    close(two.erf, one.erf)
    assert two.samples == one.samples == 14 and one.erf.max() > 0


def test_cli_units_and_workers(model, tmp_path: Path, capsys) -> None:
    """``erf --units 3,3 0,0 --workers 2 --npy``: the stacked maps are the single-unit maps."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    npy = tmp_path / "e.npy"
    argv = ["erf", str(path), "--units", "3,3", "0,0", "--workers", "2", "--runs", "3",
            "--npy", str(npy), "--no-progress", "--format", "json", "--provider", "cpu"]
    assert cli.main(argv) == 0
    maps = np.load(npy)
    assert maps.shape == (2, SIZE, SIZE)
    for unit, got in zip([(3, 3), (0, 0)], maps):
        close(got, compute_erf(model, unit=unit, runs=3).erf)
    assert [d["unit"] for d in json.loads(capsys.readouterr().out)] == [[3, 3], [0, 0]]


def test_cuda_refused_where_onnxruntime_has_none(model) -> None:
    """--provider cuda without the CUDA provider: a clear error, exit 2 on the command line."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    with pytest.raises(RFGraphError, match="no CUDA execution provider"):
        compute_erf(model, runs=1, provider="cuda")


@pytest.fixture(scope="module")
def dask_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dask's distributed, pip-installed once into pytest's cache (never vendored)."""
    return install_once(request, tmp_path_factory, "rfgraph_dask", ["distributed"], no_deps=False, timeout=600)


def test_dask_local_cluster_gives_one_process_map(model, dask_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A LocalCluster of 2 worker processes on loopback (the command a real cluster takes:
    --scheduler tcp://HOST:8786): the same map as one process."""
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "path", [*sys.path, str(dask_path)])  # installed packages first
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, str(dask_path),
                                                      os.environ.get("PYTHONPATH", "")]))
    from distributed import LocalCluster

    kw = {"runs": 6, "seed": 2, "weight_runs": 2, "reinit": "he", "batch": 2}
    one = compute_erf(model, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        res = compute_erf(model, scheduler=cluster.scheduler_address, **kw)
    close(res.erf, one.erf)
    assert res.samples == 12


class NanNet(Net):
    """Net plus sqrt(mean of x): a NaN gradient for the inputs whose mean is negative (about
    half of the Gaussian draws)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.sqrt(x.mean(dim=(1, 2, 3), keepdim=True))


def test_workers_keep_the_first_finite_samples_as_one_process() -> None:
    """Skipping non-finite samples (RepLKNet's rule) on 2 workers keeps the samples one process
    keeps: the first 5 inputs (in index order) with a positive mean, averaged by autograd."""
    from dataclasses import replace

    from rfgraph import erf_conventions as ec

    net = NanNet().eval()
    f = io.BytesIO()
    torch.onnx.export(net, (torch.ones(1, 3, SIZE, SIZE),), f, dynamo=False, input_names=["x"],
                      output_names=["y"])
    model = onnx.load_from_string(f.getvalue())
    conv = replace(ec.DEFAULT, skip_nonfinite=True)
    runs = 5

    def draws(seed: int) -> list[np.ndarray]:
        return [keyed_rng(seed, INPUT_KEY, 0, i).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
                for i in range(2 * runs)]  # runs, and as many replacements

    def fits(xs: list[np.ndarray]) -> bool:  # some of the first runs replaced, enough in all
        return sum(x.mean() > 0 for x in xs) >= runs and any(x.mean() <= 0 for x in xs[:runs])
    seed = next(s for s in range(50) if fits(draws(s)))
    good = [x for x in draws(seed) if x.mean() > 0][:runs]
    kw = {"runs": runs, "seed": seed, "batch": 2, "conventions": conv}
    one = compute_erf(model, **kw)
    two = compute_erf(model, workers=2, **kw)
    maps = []
    for x in good:
        xt = torch.tensor(x, requires_grad=True)
        (g,) = torch.autograd.grad(net(xt)[0, :, 3, 3].sum(), xt)
        maps.append(g.abs()[0].sum(0).numpy())
    ref = np.mean(maps, axis=0)
    np.testing.assert_allclose(one.erf, ref, rtol=1e-4, atol=1e-6 * ref.max())
    close(two.erf, one.erf)
    assert one.samples == two.samples == runs


# ------------------------------------------------------------------ lanes: runs at a time in this process

def test_lanes_policy() -> None:
    """One lane per core (at most MAX_LANES) when rfgraph chooses the threads; one where the
    caller pinned threads, on workers or a cluster, on CUDA or finite differences, with few
    batches, or when the activations of more lanes would not fit in half the memory available."""
    from rfgraph import erf_parallel as ep

    cores = os.cpu_count() or 1
    gb = 1 << 30
    assert ep.lanes(1, None, 0, True, 1000, 100 << 20, 64 * gb) == min(cores, ep.MAX_LANES)
    assert ep.lanes(2, None, 0, True, 1000, 1, 64 * gb) == 1
    assert ep.lanes(1, "tcp://h:8786", 0, True, 1000, 1, 64 * gb) == 1
    assert ep.lanes(1, None, 1, True, 1000, 1, 64 * gb) == 1
    assert ep.lanes(1, None, 0, False, 1000, 1, 64 * gb) == 1
    assert ep.lanes(1, None, 0, True, ep.LANE_BATCHES - 1, 1, 64 * gb) == 1
    assert ep.lanes(1, None, 0, True, 1000, 3 * gb, 4 * gb) == 1  # 2 GB of 4 holds one run of 3 GB
    assert ep.lanes(1, None, 0, True, 1000, gb, 4 * gb) == min(cores, 2)
    assert ep.threads_per_worker(1, None, 2) == max(1, cores // 2)
    assert ep.threads_per_worker(1, None, 1) == 0


def test_lanes_give_the_one_lane_map(model, monkeypatch) -> None:
    """Four lanes sharing each of two He weight draws' engine give the map of one lane (runs one
    after the other) and of torch autograd at the model's own weights; the bar advances per batch."""
    from rfgraph import erf as erf_mod
    from rfgraph import erf_parallel as ep

    counted: list[int] = []

    def progress(total: int, show: bool, what: str = "input"):  # type: ignore[no-untyped-def]
        return lambda n, close=False: counted.append(n)

    monkeypatch.setattr(erf_mod, "_progress", progress)
    used: list[int] = []
    real = ep._on_lanes

    def spy(sampler, todo, lanes, bar, first):  # type: ignore[no-untyped-def]
        used.append(lanes)
        return real(sampler, todo, lanes, bar, first)

    monkeypatch.setattr(ep, "_on_lanes", spy)
    monkeypatch.setattr(ep, "lanes", lambda *a, **k: 4)
    kw = {"runs": 9, "seed": 3, "weight_runs": 2, "reinit": "he", "batch": 1}
    four = compute_erf(model, **kw)
    assert used == [4] and [n for n in counted if n] == [1] * 18  # per batch (of one input)
    monkeypatch.setattr(ep, "lanes", lambda *a, **k: 1)
    one = compute_erf(model, **kw)
    assert used == [4]  # the second call ran its shards one after the other
    close(four.erf, one.erf, 1e-12)
    assert four.samples == one.samples == 18 and one.erf.max() > 0
    monkeypatch.setattr(ep, "lanes", lambda *a, **k: 3)
    own = compute_erf(model, runs=7, seed=2, batch=1)
    close(own.erf, torch_map(Net().eval(), 2, 7, (3, 3)), 1e-5)


def test_a_failing_lane_fails_the_call(model, monkeypatch) -> None:
    """An error on a lane reaches the caller (no map made of the other lanes' shards)."""
    from rfgraph import erf_parallel as ep

    monkeypatch.setattr(ep, "lanes", lambda *a, **k: 2)
    real = ep._shard
    calls: list[int] = []

    def broken(sampler, shard, bar, engine=None):  # type: ignore[no-untyped-def]
        calls.append(shard.start)
        if shard.start >= 4:
            raise RuntimeError("lane failed")
        return real(sampler, shard, bar, engine)

    monkeypatch.setattr(ep, "_shard", broken)
    with pytest.raises(RuntimeError, match="lane failed"):
        compute_erf(model, runs=8, seed=0, batch=1)
    assert calls


def test_cli_threads_pin_one_run_at_a_time(model, tmp_path: Path, monkeypatch) -> None:
    """``erf --threads 1`` runs one input batch at a time (no lanes) and gives the default's map;
    a negative count is refused in one line (exit 2)."""
    from rfgraph import erf_parallel as ep

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    lanes: list[int] = []
    real = ep._on_lanes
    monkeypatch.setattr(ep, "_on_lanes", lambda s, t, n, b, f: lanes.append(n) or real(s, t, n, b, f))
    monkeypatch.setattr(ep, "LANE_BATCHES", 1)
    maps = []
    for extra in ([], ["--threads", "1"]):
        out = tmp_path / f"m{len(extra)}.npy"
        argv = ["erf", str(path), "--runs", "8", "--batch", "1", "--npy", str(out), "--no-progress", *extra]
        assert cli.main(argv) == 0
        maps.append(np.load(out))
    assert lanes == ([min(os.cpu_count() or 1, ep.MAX_LANES)] if (os.cpu_count() or 1) > 1 else [])
    close(maps[1], maps[0], 1e-12)
    assert cli.main(["erf", str(path), "--threads", "-1"]) == 2


def test_cli_units_as_csv_are_one_table(model, tmp_path: Path, capsys) -> None:
    """``erf --units 3,3 0,0 --format csv``: one header and a unit column (it printed a block per
    unit, each with its own header and no unit: no CSV reader could take it), each unit's rows
    its own single-unit CSV's."""
    import csv
    import io

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    base = ["erf", str(path), "--runs", "2", "--no-progress", "--format", "csv", "-q", "--provider", "cpu"]
    assert cli.main([*base, "--units", "3,3", "0,0"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["unit", "metric", "value", "definition"] and all(len(r) == 4 for r in rows)
    for unit in ("3,3", "0,0"):
        assert cli.main([*base, "--unit", unit]) == 0
        single = list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]
        assert [r[1:] for r in rows[1:] if r[0] == unit] == single
