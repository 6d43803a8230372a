"""The O(|E|+|L|) pass vs two oracles that share no code with it, on generated multi-path DAGs:
brute-force path enumeration with explicit index sets, and onnxruntime impulse responses."""

from collections import Counter

import numpy as np
import pytest

import rfgraph
from tests.bruteforce import Oracle, impulse_support, path_sizes
from tests.dag_gen import random_dag
from tests.graphs import G


def _units(ep, n=5, seed=0):
    """A few unit indices spread over the tensor, corners included."""
    rng = np.random.default_rng(seed)
    units = {tuple(0 for _ in ep.units), tuple(u - 1 for u in ep.units)}
    n = min(n, int(np.prod(ep.units)))
    while len(units) < n:
        units.add(tuple(int(rng.integers(0, u)) for u in ep.units))
    return sorted(units)


@pytest.mark.parametrize("ndim,size", [(1, 16), (2, 16), (3, 8)])
@pytest.mark.parametrize("seed", range(12))
def test_pass_matches_path_enumeration(seed, ndim, size):
    """Regions of several units of the output equal the union over every enumerated path."""
    model, out = random_dag(seed, ndim=ndim, size=size, n_blocks=3 if ndim == 3 else 4)
    ep = rfgraph.analyze(model)[out]
    oracle = Oracle(model)
    for unit in _units(ep):
        assert list(ep.region(unit)) == oracle.region(out, list(unit)), unit


def _unclipped(a, out, unit) -> bool:
    """True when the unit's cone stays inside every tensor it reads (no padding, no clamping),
    checked with the paper's reverse pass: the region of the unit on every earlier tensor."""
    for tensor, fields in a.fields_toward(out).items():
        units = a[tensor].units
        for f, u, n in zip(fields, unit, units):
            lo, hi = f.region(u)
            if n is not None and (lo < 0 or hi > n - 1):
                return False
    return True


@pytest.mark.parametrize("seed", range(10))
def test_pass_matches_impulse_support(seed):
    """With positive weights and inputs, the pixels that move an output unit span exactly
    [u0, v0], for the unit nearest the centre whose cone touches no padding."""
    model, out = random_dag(seed, ndim=2, size=32, n_blocks=3)
    a = rfgraph.analyze(model)
    ep = a[out]
    inside = [u for u in np.ndindex(*ep.units) if _unclipped(a, out, u)]
    assert inside, f"every unit of {out} reads padding; enlarge the test input"
    centre = np.array(ep.units) / 2
    unit = min(inside, key=lambda u: float(np.sum((np.array(u) - centre) ** 2)))
    assert list(ep.region(unit)) == impulse_support(model, out, unit)


def test_histogram_matches_enumeration_on_residual_stack():
    """Path-RF histogram by dynamic programming == counting the enumerated paths' sizes."""
    g = G((64, 64))
    x = g.conv("x", 3, 1, pads=[1] * 4)
    for d in (1, 2, 2, 4, 4):
        y = g.conv(g.relu(g.conv(x, 3, 1, pads=[d] * 4, d=d)), 3, 1, pads=[d] * 4, d=d)
        x = g.add(x, y)
    model = g.model(x)
    a = rfgraph.analyze(model)
    hist = rfgraph.path_histogram(a, x)
    oracle = Oracle(model)
    expected = Counter(path_sizes(oracle, x, [32, 32]))
    assert hist[0] == dict(sorted(expected.items()))
    assert sum(hist[0].values()) == 2 ** 5
    assert max(hist[0]) == a[x].r[0]


def test_reverse_pass_agrees_with_forward_pass():
    """The paper's reverse pass from an end point reaches the input with the forward pass's field."""
    for seed in range(8):
        model, out = random_dag(seed, ndim=2, size=16)
        a = rfgraph.analyze(model)
        back = a.fields_toward(out)["x"]
        ep = a[out]
        for unit in _units(ep):
            assert tuple(f.region(u) for f, u in zip(back, unit)) == ep.region(unit)
