"""Closed forms of the single-path case (Araujo et al. eqs. 2, 5, 6, 11) vs the span algebra and the
full pass on real ONNX chains; property-based over random kernel/stride/pad/dilation stacks."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rfgraph
from rfgraph.fields import AxisField, Span, closed_form_P, closed_form_r
from tests.graphs import chain

layer = st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(0, 3), st.integers(1, 3))


def _closed_form(layers):
    """r0, S0, P0 from eqs. (2), (9)-(10) with the dilated kernel d(k-1)+1."""
    ks = [d * (k - 1) + 1 for k, s, p, d in layers]
    ss = [s for _, s, _, _ in layers]
    S = 1
    for s in ss:
        S *= s
    return closed_form_r(ks, ss), S, closed_form_P([p for _, _, p, _ in layers], ss)


@given(st.lists(layer, min_size=1, max_size=8), st.integers(0, 20))
@settings(max_examples=300, deadline=None)
def test_span_composition_matches_closed_form(layers, u):
    """Composing layer spans gives eq. (2) r, eq. (10) S, eq. (9) P, and eqs. (5), (6), (11) regions."""
    span = Span(1, 1, (0,), (0,))
    for k, s, p, d in reversed(layers):  # from the output unit back towards the input
        span = span.then(Span.layer(k, s, p, d))
    field = AxisField((span,))
    r, S, P = _closed_form(layers)
    assert (field.size(), field.stride, field.padding) == (r, S, P)
    u0 = -P + u * S  # eq. (5)
    assert field.region(u) == (u0, u0 + r - 1)  # eq. (6)
    assert field.centre(u) == -P + u * S + Fraction(r - 1, 2)  # eq. (11)


@given(st.lists(layer, min_size=1, max_size=5))
@settings(max_examples=25, deadline=None)
def test_onnx_chain_matches_closed_form(layers):
    """The whole pipeline (ONNX file -> import -> rules -> pass) on a real chain of Convs."""
    r, S, _ = _closed_form(layers)
    model, out = chain((r + 2 * S,), layers)  # large enough for at least one output unit
    ep = rfgraph.analyze(model)[out]
    assert (ep.r[0], ep.S[0], ep.P[0]) == _closed_form(layers)


def test_convtranspose_after_conv_is_exact():
    """A stride-2 k=2 transposed conv after a stride-2 conv: each output sees exactly one unit,
    so the field is r=3 (an affine/Fraction model would say 4)."""
    conv = Span.layer(3, 2, 1)
    convt = Span.periodic(1, [0, 0], [0, 0])  # output o reads input floor(o/2)
    field = AxisField((convt.then(conv),))
    assert [field.region(u) for u in range(4)] == [(-1, 1), (-1, 1), (1, 3), (1, 3)]
    assert field.size() == 3 and field.stride == 1


def test_mixed_strides_extent_varies_with_unit():
    """The article's misaligned example: 6 input samples for the 2nd feature, 5 for the 3rd."""
    left = Span.layer(5, 2, 2)
    right = Span.layer(3, 1, 0).then(Span.layer(3, 1, 0))
    field = AxisField((right, left))
    assert field.extent(1) == 6 and field.extent(2) == 5


def _periodic(draw, q: int) -> Span:
    """A span of period q: unit m*q + t reads [m*A + lo[t], m*A + hi[t]] (an upsampling's)."""
    A = draw(st.integers(1, 4))
    lo = [draw(st.integers(-3, 3)) for _ in range(q)]
    return Span.periodic(A, lo, [a + draw(st.integers(0, 4)) for a in lo])


@st.composite
def _mixed_field(draw) -> AxisField:
    """Two or three branches: layer stacks, some after a periodic span of period 1-9."""
    spans = []
    for _ in range(draw(st.integers(2, 3))):
        span = _periodic(draw, draw(st.integers(1, 9))) if draw(st.booleans()) else Span(1, 1, (0,), (0,))
        for k, s, p, d in draw(st.lists(layer, min_size=1, max_size=3)):
            span = span.then(Span.layer(k, s, p, d))
        spans.append(span)
    return AxisField(tuple(spans))


@given(_mixed_field(), st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_size_is_the_largest_extent_of_the_units_there_are(field, n_units):
    """r over n units is the largest extent of units 0..n-1, whatever the period: a period past
    the last unit (ghostnetv2's 7 units, period 2401) once gave 37783 for 2711."""
    assert field.size(n_units) == max(field.extent(u) for u in range(n_units))


def test_quick_init_keeps_frozen_value_semantics():
    """quick_init's direct slot filling: same signature and defaults, still immutable and hashable."""
    import dataclasses

    from rfgraph.fields import quick_init

    a = AxisField(spans=(Span(1, 2, (0,), (2,)),))
    assert a.global_at is None and a == AxisField((Span(1, 2, (0,), (2,)),), None)
    assert hash(a) == hash(AxisField((Span(1, 2, (0,), (2,)),)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.global_at = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Span(1, 2, (0,))  # type: ignore[call-arg]

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="cannot fill"):
        quick_init(WithFactory)
