"""Flips: Slice with a negative step reverses an axis, so a unit's field moves the other way
(S < 0).  Checked on generated DAGs with reversed branches (some flipped back, some merged
mirrored) against the two oracles that share no code with rfgraph: brute-force path
enumeration (tests/bruteforce.py, ONNX Slice semantics written out) and onnxruntime impulse
responses; plus the reverse pass, strided and clamped starts, and dynamic sizes."""

from __future__ import annotations

import numpy as np
import pytest

import rfgraph
from rfgraph.errors import DynamicShapeError
from tests.bruteforce import Oracle, impulse_support
from tests.dag_gen import random_dag
from tests.graphs import G
from tests.test_trf_oracles import _unclipped, _units


@pytest.mark.parametrize("ndim,size", [(1, 16), (2, 16), (3, 8)])
@pytest.mark.parametrize("seed", range(8))
def test_flipped_dags_match_path_enumeration(seed: int, ndim: int, size: int) -> None:
    """Every sampled unit's region equals the union over all enumerated paths."""
    model, out = random_dag(seed, ndim=ndim, size=size, n_blocks=4, flips=True)
    ep = rfgraph.analyze(model)[out]
    oracle = Oracle(model)
    for unit in _units(ep, n=6, seed=seed):
        assert list(ep.region(unit)) == oracle.region(out, list(unit)), unit


@pytest.mark.parametrize("seed", range(8))
def test_flipped_dags_match_impulse_support(seed: int) -> None:
    """The pixels that move a unit (onnxruntime, positive weights) span exactly its region."""
    model, out = random_dag(seed, ndim=2, size=24, n_blocks=3, flips=True)
    a = rfgraph.analyze(model)
    ep = a[out]
    inside = [u for u in np.ndindex(*ep.units) if _unclipped(a, out, u)]
    assert inside
    for unit in (inside[0], inside[-1], inside[len(inside) // 2]):
        assert list(ep.region(unit)) == impulse_support(model, out, unit), unit


@pytest.mark.parametrize("seed", range(6))
def test_reverse_pass_agrees_on_flipped_dags(seed: int) -> None:
    """The paper's reverse pass reaches the input with the forward pass's regions."""
    model, out = random_dag(seed, ndim=2, size=16, flips=True)
    a = rfgraph.analyze(model)
    back = a.fields_toward(out)["x"]
    for unit in _units(a[out]):
        assert tuple(f.region(u) for f, u in zip(back, unit)) == a[out].region(unit)


def test_flip_reverses_the_stride_and_a_mirrored_merge_is_misaligned() -> None:
    """conv3 -> flip W -> conv3: S = (1, -1); unit 0 along W sees the right edge.  Adding the
    flipped branch to the unflipped one mixes directions: reported misaligned, not shift-invariant."""
    g = G((12, 10))
    c = g.conv("x", 3, 1)  # 10 x 8
    f = g.conv(g.flip(c, 1), 3, 1)  # 8 x 6
    a = rfgraph.analyze(g.model(f))
    ep = a[f]
    assert ep.r == (5, 5) and ep.S == (1, -1)
    assert ep.region((0, 0)) == ((0, 4), (5, 9)) and ep.region((0, 5)) == ((0, 4), (0, 4))
    g = G((12, 12))
    c = g.conv("x", 3, 1, pads=[1] * 4)
    y = g.add(c, g.flip(c, 1))
    a = rfgraph.analyze(g.model(y))
    assert not a.aligned and not a[y].shift_invariant
    assert a[y].region((0, 0)) == ((-1, 1), (-1, 12))  # its own column and the mirrored one


@pytest.mark.parametrize("size,start,step", [(11, -1, -2), (10, -1, -2), (10, 2**62, -3), (10, 5, -1), (9, -3, -2)])
def test_strided_and_clamped_reversals(size: int, start: int, step: int) -> None:
    """Negative steps with huge, negative and interior starts (ONNX clamps to [0, dim - 1]),
    every unit vs onnxruntime: strided reversals keep r = 1 per unit and stride |step|."""
    g = G((size,))
    y = g.flip("x", 0, step=step, start=start)
    model = g.model(y)
    ep = rfgraph.analyze(model)[y]
    assert ep.S == (step,) and ep.r == (1,)
    for u in range(ep.units[0]):
        assert list(ep.region((u,))) == impulse_support(model, y, (u,))


def test_reversal_of_an_unknown_size_asks_for_it() -> None:
    """Where a flip lands depends on the axis length: a dynamic length is asked for, and
    --input-shape gives the reversal."""
    from onnx import TensorProto, helper

    g = G((16,))
    y = g.flip("x", 0)
    model = g.model(y)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "L"]))
    del model.graph.value_info[:]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    a = rfgraph.analyze(model, input_shape={"x": (1, 1, 16)})
    assert a[y].S == (-1,)
    with pytest.raises(DynamicShapeError, match="set them"):
        rfgraph.analyze(model)


def test_erf_of_a_flipped_net_lies_on_its_trf() -> None:
    """The exact gradient and finite differences agree through a reversal, and the gradient's
    support is the centre unit's TRF (positive weights, linear net)."""
    g = G((24, 24), batch=1)
    y = g.conv(g.flip(g.conv("x", 3, 1), 1), 5, 1)
    model = g.model(y)
    grad = rfgraph.compute_erf(model, runs=2, method="grad", seed=1)
    fd = rfgraph.compute_erf(model, runs=2, method="fd", seed=1)
    assert np.abs(grad.erf - fd.erf).max() <= 1e-3 * grad.erf.max()
    support = np.argwhere(grad.erf > 0)
    (h0, h1), (w0, w1) = grad.target.region
    assert support.min(0).tolist() == [h0, w0] and support.max(0).tolist() == [h1, w1]
    assert rfgraph.analyze(model)[y].region(grad.target.unit) == grad.target.region
