"""Value objects for receptive fields along one spatial axis, and the paper's equations on them.

A *span* is the affine interval map of Araujo et al. eqs. (5)-(6): unit ``u`` of a tensor sees the
units ``[u*S + lo, u*S + hi]`` of another tensor.  A layer is a span (``S = s``, ``lo = -p``,
``hi = k - 1 - p``); composing spans along a path gives the path's (r, S, P) in closed form
(eqs. 2, 9, 10), and a union of paths with equal stride is again a span (min lo, max hi).
Strides may be fractional (upsampling): numbers are ``int`` where they can be and ``Fraction``
only where they must be, which keeps the common integer case fast and every value exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Union

Rational = Union[int, Fraction]


def exact(x: Rational) -> Rational:
    """Return ``x`` as an ``int`` when it is integral, else as a ``Fraction``."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    return x


def ceil_q(x: Rational) -> int:
    """Ceiling of a rational, exactly."""
    return x if isinstance(x, int) else -((-x.numerator) // x.denominator)


def floor_q(x: Rational) -> int:
    """Floor of a rational, exactly."""
    return x if isinstance(x, int) else x.numerator // x.denominator


@dataclass(frozen=True, slots=True)
class Span:
    """Affine interval map: unit ``u`` sees units ``[ceil(u*S + lo), floor(u*S + hi)]``."""

    S: Rational
    lo: Rational
    hi: Rational

    @staticmethod
    def layer(kernel: int, stride: int, pad_begin: int, dilation: int = 1) -> "Span":
        """Span of a sliding-window layer; dilation enters as the effective kernel d(k-1)+1."""
        k_eff = dilation * (kernel - 1) + 1
        return Span(stride, -pad_begin, k_eff - 1 - pad_begin)

    def then(self, other: "Span") -> "Span":
        """Apply ``self`` to a unit, then ``other`` to each unit reached (composition of eqs. 5-6)."""
        S = exact(self.S * other.S)
        lo = exact(self.lo * other.S + other.lo)
        hi = exact(self.hi * other.S + other.hi)
        if isinstance(S, int):  # units are integers: the interval can be tightened exactly
            lo, hi = ceil_q(lo), floor_q(hi)
        return Span(S, lo, hi)

    def region(self, u: int) -> tuple[int, int]:
        """Integer region ``[u0, v0]`` seen by unit ``u`` (eqs. 5-6 / 8)."""
        return ceil_q(exact(u * self.S + self.lo)), floor_q(exact(u * self.S + self.hi))

    @property
    def period(self) -> int:
        """Number of consecutive units after which the region pattern repeats (1 for integer S)."""
        return 1 if isinstance(self.S, int) else self.S.denominator


IDENTITY = Span(1, 0, 0)


def merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Union of paths: one span per distinct stride, keeping the widest extent (eqs. 1, 9, 10)."""
    by_stride: dict[Rational, Span] = {}
    for sp in spans:
        old = by_stride.get(sp.S)
        if old is None:
            by_stride[sp.S] = sp
        elif sp.lo < old.lo or sp.hi > old.hi:
            by_stride[sp.S] = Span(sp.S, min(sp.lo, old.lo), max(sp.hi, old.hi))
    return tuple(by_stride[s] for s in sorted(by_stride))


@dataclass(frozen=True, slots=True)
class AxisField:
    """Receptive field along one input spatial axis: a union of spans, or global.

    ``spans`` has one element when every path has the same effective stride (shift-invariant
    field, eq. 12 holds); more than one when strides differ.  ``global_at`` names the node that
    made the field cover the whole input along this axis (global pooling, attention, Flatten+Gemm).
    """

    spans: tuple[Span, ...]
    global_at: str | None = None

    @property
    def is_global(self) -> bool:
        return self.global_at is not None

    @property
    def shift_invariant(self) -> bool:
        return not self.is_global and len(self.spans) == 1

    def region(self, u: int) -> tuple[int, int]:
        """Input region ``[u0, v0]`` of unit ``u`` (unclipped: may extend into the padding)."""
        if self.is_global:
            raise ValueError(f"field is global (made so at node '{self.global_at}')")
        regions = [sp.region(u) for sp in self.spans]
        return min(r[0] for r in regions), max(r[1] for r in regions)

    def extent(self, u: int) -> int:
        """Receptive-field size of unit ``u``: length of the union's extent."""
        u0, v0 = self.region(u)
        return v0 - u0 + 1

    def size(self, n_units: int | None = None) -> int:
        """Receptive-field size r: the largest extent over units (all of them when the tensor has
        ``n_units`` along the axis; exact since extents are periodic, or convex across strides)."""
        return max(self.extent(u) for u in self._probe_units(n_units))

    def _probe_units(self, n_units: int | None) -> list[int]:
        period = math.lcm(*(sp.period for sp in self.spans))
        units = set(range(period))
        if len(self.spans) > 1 and n_units:  # extent is convex in u across strides
            units.update(range(max(n_units - period, 0), n_units))
        return sorted(units)

    @property
    def stride(self) -> Rational:
        """Effective stride S (eq. 10); for mixed strides, the largest."""
        return self.spans[-1].S

    @property
    def padding(self) -> Rational:
        """Effective padding P (eq. 9): ``u0 = -P + u*S`` for unit 0 (``-lo`` for fractional S)."""
        if len(self.spans) == 1 and not isinstance(self.spans[0].S, int):
            return exact(-self.spans[0].lo)
        return -self.region(0)[0]

    def centre(self, u: int) -> Fraction:
        """Centre of the region of unit ``u`` (eq. 11 generalised to the union)."""
        u0, v0 = self.region(u)
        return Fraction(u0 + v0, 2)


def global_field(node: str) -> AxisField:
    """Field covering the whole input, made so at ``node``."""
    return AxisField((), global_at=node)


def union_fields(fields: Iterable[AxisField]) -> AxisField:
    """Union of the fields of several paths into one tensor."""
    fields = list(fields)
    for f in fields:
        if f.is_global:
            return f
    return AxisField(merge_spans(sp for f in fields for sp in f.spans))


# Closed forms of the single-path case (Araujo et al. eqs. 2, 5, 6, 11), used by docs and tests.

def closed_form_r(kernels: list[int], strides: list[int]) -> int:
    """Eq. (2): r0 = sum_l (k_l - 1) prod_{i<l} s_i + 1."""
    r, prod = 1, 1
    for k, s in zip(kernels, strides):
        r += (k - 1) * prod
        prod *= s
    return r


def closed_form_P(pads: list[int], strides: list[int]) -> int:
    """Eq. (9) closed form: P0 = sum_l p_l prod_{i<l} s_i."""
    P, prod = 0, 1
    for p, s in zip(pads, strides):
        P += p * prod
        prod *= s
    return P
