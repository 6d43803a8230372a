"""The worked examples of Araujo et al. (Distill 2019), built as ONNX graphs and analysed."""

import rfgraph
from tests.graphs import G


def test_two_layer_example_region():
    """Conv k=3 p=1 s=3 then conv k=2: the first output feature sees u0=-1, v0=4."""
    g = G((12,))
    y = g.conv(g.conv("x", 3, 3, pads=[1, 1]), 2, 1)
    ep = rfgraph.analyze(g.model(y))[y]
    assert ep.region((0,)) == ((-1, 4),)
    a = rfgraph.analyze(g.model(y))
    mid = a.fields_toward(y)  # the paper's reverse pass: u1 = 0, v1 = 1 on the middle tensor
    first_conv = g.nodes[0].output[0]
    assert mid[first_conv][0].region(0) == (0, 1)
    assert mid["x"][0].region(0) == (-1, 4)


def test_aligned_example():
    """Paths (k=1, s=4) and (k=3, p=1, s=2 -> k=1, s=2) into an Add: r=3, S=4, P=1, aligned."""
    g = G((32,))
    a = g.conv("x", 1, 4)
    b = g.conv(g.conv("x", 3, 2, pads=[1, 0]), 1, 2)
    y = g.add(a, b)
    an = rfgraph.analyze(g.model(y))
    assert (an[y].r, an[y].S, an[y].P) == ((3,), (4,), (1,))
    assert an.aligned and an[y].aligned


def test_misaligned_example_is_reported():
    """k=5 (p=2, q=1) s=2 on one path, two k=3 convs on the other: reported, not raised."""
    g = G((8,))
    left = g.conv("x", 5, 2, pads=[2, 1])
    right = g.conv(g.conv("x", 3, 1), 3, 1)
    y = g.add(left, right)
    an = rfgraph.analyze(g.model(y))
    assert not an.aligned
    (merge,) = an.misaligned
    assert merge.node.startswith("Add")
    assert sorted(b.S for b in merge.branches) == [1, 2]
    assert an[y].fields[0].extent(1) == 6 and an[y].fields[0].extent(2) == 5
    # unit 0: left path [-2, 2] (padding included), right path [0, 4]: union [-2, 4], 7 wide;
    # r is the largest extent over the 4 output units (unclipped convention)
    assert [an[y].fields[0].extent(u) for u in range(4)] == [7, 6, 5, 6]
    assert an[y].r == (7,)
    assert not an[y].aligned and an[y].misaligned_at == merge.node


def test_yu_koltun_dilation_chain():
    """3x3, then 3x3 dilation 2, then 3x3 dilation 4: r = 15 (Yu & Koltun)."""
    g = G((40, 40))
    y = g.conv(g.conv(g.conv("x", 3, 1), 3, 1, d=2), 3, 1, d=4)
    assert rfgraph.analyze(g.model(y))[y].r == (15, 15)


def test_two_3x3_convs():
    g = G((16, 16))
    y = g.conv(g.conv("x", 3, 1, pads=[1] * 4), 3, 1, pads=[1] * 4)
    ep = rfgraph.analyze(g.model(y))[y]
    assert ep.r == (5, 5) and ep.S == (1, 1) and ep.P == (2, 2)
