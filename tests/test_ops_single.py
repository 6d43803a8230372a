"""One op at a time, for the attribute variants real exports carry (auto_pad SAME at odd and even
sizes, groups, ceil_mode, LpPool, dilated pooling, Pad modes, strided Slice): the pass vs the
brute-force index oracle on every unit, and vs onnxruntime impulses where the op is monotone."""

import numpy as np
import pytest

import rfgraph
from tests.bruteforce import Oracle, impulse_support
from tests.graphs import G


def _check_all_units(model, out):
    ep = rfgraph.analyze(model)[out]
    oracle = Oracle(model)
    for unit in np.ndindex(*ep.units):
        assert list(ep.region(unit)) == oracle.region(out, list(unit)), unit
    return ep


@pytest.mark.parametrize("size", [15, 16])
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("k,s,d", [(3, 2, 1), (4, 2, 1), (3, 1, 2), (5, 3, 1)])
def test_conv_auto_pad(size, mode, k, s, d):
    g = G((size, size))
    y = g.conv("x", k, s, d=d, auto_pad=mode)
    ep = _check_all_units(g.model(y), y)
    def begin(n):  # ONNX spec: total pad for output ceil(n/s); UPPER puts the extra pixel at the end
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        return total // 2 if mode == "SAME_UPPER" else total - total // 2
    depends = mode != "VALID" and len({begin(n) for n in range(1, s + 1)}) > 1
    assert (ep.size_dependent is not None) == depends


def test_grouped_conv_and_impulse():
    g = G((20, 20), channels=4)
    y = g.conv(g.conv("x", 3, 1, cout=4, group=4), 3, 2, pads=[0, 1, 0, 1], cout=4, group=2)
    model = g.model(y)
    ep = _check_all_units(model, y)
    assert list(ep.region((4, 4))) == impulse_support(model, y, (4, 4))


@pytest.mark.parametrize("op,extra", [("MaxPool", {"ceil_mode": 1}), ("AveragePool", {"ceil_mode": 1}),
                                      ("MaxPool", {"dilations": [2, 2]}), ("LpPool", {"p": 2})])
def test_pooling_variants(op, extra):
    g = G((17, 17))
    y = g.pool(op, "x", 3, 2, pads=[1, 0, 1, 0], **extra)
    _check_all_units(g.model(y), y)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_then_conv(mode):
    """Pad shifts positions by its begin pads whatever the mode (modes differ only at borders)."""
    g = G((12, 12))
    y = g.conv(g.pad("x", 2, 1, mode), 3, 1)
    ep = _check_all_units(g.model(y), y)
    assert ep.P == (2, 2) and ep.r == (3, 3)


def test_strided_slice_offsets_the_field():
    g = G((16, 16))
    c = g.conv("x", 3, 1, pads=[1] * 4)
    consts = [g._init(np.array(v, np.int64), "sl") for v in ([1, 2], [15, 16], [2, 3], [2, 3])]
    y = g.node("Slice", [c, *consts])
    ep = _check_all_units(g.model(y), y)
    assert ep.S == (2, 3) and ep.region((0, 0)) == ((0, 2), (1, 3))
