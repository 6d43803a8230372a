"""One op at a time, for the attribute variants real exports carry (auto_pad SAME at odd and even
sizes, groups, ceil_mode, LpPool, dilated pooling, Pad modes, strided Slice): the pass vs the
brute-force index oracle on every unit, and vs onnxruntime impulses where the op is monotone."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

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


def _conv_lstm(perm: list[int], direction: str = "forward") -> onnx.ModelProto:
    """x (1, 4, 16) -> 3-tap conv (pad 1) -> Transpose(perm) -> LSTM(hidden 3): perm [0, 2, 1]
    feeds the 16 positions as the LSTM's batch (a sequence of length 1, as silero-vad does),
    [2, 0, 1] as its sequence."""
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 4, 3)), ("W", (dirs, 12, 4)), ("R", (dirs, 12, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=perm),
             helper.make_node("LSTM", ["t", "W", "R"], ["y", "y_h"], hidden_size=3, direction=direction)]
    graph = helper.make_graph(nodes, "conv_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _changed_positions(model, position_axis: int) -> list[set[int]]:
    """onnxruntime oracle: for each input position j, the output positions (along tensor axis
    ``position_axis`` of y) whose value changes when x[..., j] is perturbed."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 4, 16)).astype(np.float32)
    base = sess.run(None, {"x": x})[0]
    seen = []
    for j in range(16):
        bumped = x.copy()
        bumped[..., j] += 1.0
        diff = np.moveaxis(sess.run(None, {"x": bumped})[0] != base, position_axis, 0)
        seen.append({i for i in range(diff.shape[0]) if diff[i].any()})
    return seen


def test_recurrence_over_the_batch_axis_keeps_positions_local():
    """An LSTM whose batch axis carries the positions (sequence of length 1) mixes none of them:
    each output position has the conv's 3-tap field, as onnxruntime shows; nothing is global
    (the rule used to report such an LSTM as mixing the whole sequence)."""
    model = _conv_lstm([0, 2, 1])
    a = rfgraph.analyze(model)
    ep = a["y"]
    assert not ep.is_global and not a.global_at and ep.r == (3,) and ep.S == (1,) and ep.P == (1,)
    seen = _changed_positions(model, position_axis=2)  # y: (seq 1, dirs 1, batch 16, hidden 3)
    for i in range(16):
        region = ep.region((i,))[0]
        assert {j for j in range(16) if i in seen[j]} == set(range(max(region[0], 0), min(region[1], 15) + 1))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrence_over_the_positions_is_global(direction):
    """An LSTM over the positions: reported global with the node named; onnxruntime confirms
    that the far ends of the input reach the steps it says (step 0 of a forward LSTM reads only
    the first steps, which the report states in its reason)."""
    model = _conv_lstm([2, 0, 1], direction)
    a = rfgraph.analyze(model)
    assert a["y"].is_global and "LSTM" in a.global_at[next(iter(a.global_at))]
    seen = _changed_positions(model, position_axis=0)  # y: (seq 16, dirs, batch 1, hidden 3)
    last = {"forward": 15, "reverse": 0, "bidirectional": 15}[direction]
    assert set(range(16)) <= {j for j in range(16) if last in seen[j]}  # the whole input reaches it
    reason = next(iter(a.global_at.values()))
    if direction == "forward":
        assert seen[15] == {14, 15} and "earlier" in reason  # causal: a step never reads later ones


def test_einsum_keeps_local_letters_and_mixes_summed_positions():
    """Einsum as exporters write it: a 1x1 conv ('nchw,dc->ndhw') and a layout change
    ('nchw->nhwc') keep the 3x3 conv's field (every unit vs the onnxruntime impulse support);
    token attention scores ('bqd,bkd->bqk', q and k both index positions) and a Dense layer over
    flattened positions ('bn,nm->bm') are global, with the node named."""
    g = G((8, 8), channels=1)
    c = g.conv("x", 3, 1, pads=[1] * 4, cout=2)
    w = g._init(g._weight((3, 2)))
    mixed = g.node("Einsum", [c, w], cout=3, equation="nchw,dc->ndhw")
    nhwc = g.node("Einsum", [mixed], equation="nchw->nhwc")
    model = g.model(nhwc)
    ep = rfgraph.analyze(model)[nhwc]
    assert (ep.r, ep.S, ep.P) == ((3, 3), (1, 1), (1, 1)) and ep.unit_axes == ((1, (0,)), (2, (1,)))
    for unit in np.ndindex(8, 8):  # the NCHW tensor before the layout change: the same unit
        assert impulse_support(model, mixed, unit) == [(max(a, 0), min(b, 7)) for a, b in ep.region(unit)]
    tokens = g.node("Reshape", [mixed, g._init(np.array([0, 3, 64], np.int64), "shape")])
    seq = g.node("Einsum", [tokens], equation="bdn->bnd")
    scores = g.node("Einsum", [seq, seq], equation="bqd,bkd->bqk")
    dense = g.node("Einsum", [g.node("Reshape", [mixed, g._init(np.array([0, 192], np.int64), "flat")]),
                              g._init(g._weight((192, 4)))], equation="bn,nm->bm")
    a = rfgraph.analyze(g.model([scores, dense]))
    assert a[seq].r == (3, 3) and a[scores].is_global and a[dense].is_global
    assert any("Einsum 'bqd,bkd->bqk'" in why for why in a.global_at.values())


def test_grid_sample_may_read_any_position():
    """GridSample with a constant grid that sends output (0, 0) to the input's far corner: that
    pixel moves unit (0, 0) (onnxruntime), so no local field would be right; the analysis
    reports the field as global, naming the node, and goes on past it (it stopped there)."""
    import onnxruntime as ort

    grid = np.zeros((1, 4, 4, 2), np.float32)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4), indexing="ij")
    grid[0, ..., 0], grid[0, ..., 1] = xs, ys
    grid[0, 0, 0] = (1.0, 1.0)  # unit (0, 0) samples the bottom-right corner
    g = G((4, 4))
    sampled = g.node("GridSample", ["x", g._init(grid, "grid")], align_corners=1)
    y = g.conv(sampled, 1, 1, cout=1)
    model = g.model(y)
    a = rfgraph.analyze(model)
    assert a[sampled].is_global and a[y].is_global and not a.stops
    assert "GridSample" in next(iter(a.global_at.values()))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 3, 3] = 1.0
    assert sess.run(None, {"x": x})[0][0, 0, 0, 0] > 0
