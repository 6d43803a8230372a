"""Value objects for receptive fields along one spatial axis, and the paper's equations on them.

A *span* maps a unit of one tensor to the interval of units it sees in another tensor.  For a
sliding-window layer it is the affine map of Araujo et al. eqs. (5)-(6): unit ``u`` sees
``[u*s - p, u*s - p + k - 1]``.  Upsampling (ConvTranspose, Resize, DepthToSpace) makes the map a
*periodic staircase* rather than affine, so a span is stored exactly as

    unit u = m*q + t  (0 <= t < q)   sees   [m*A + lo[t], m*A + hi[t]]

with integers only: effective stride ``S = A/q`` (a Fraction when q does not divide A).  Integer
strides are the case ``q = 1``.  Spans compose exactly (a path's r, S, P: eqs. 2, 9, 10) and the
union of paths with equal stride is again a span (min lo, max hi), which is the "largest field"
bookkeeping of the paper's DAG algorithm, made exact for misaligned paths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Rational = int | Fraction
T = TypeVar("T", bound="DataclassInstance")


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen slots dataclass an ``__init__`` that fills its slots directly.

    A frozen dataclass sets each field through ``object.__setattr__``, about 3x slower than this;
    the pass creates a few objects per layer, so on a 100k-node graph that is a tenth of its time.
    Same signature and defaults; instances stay immutable and hashable.
    """
    fields = dataclasses.fields(cls)
    if any(f.default_factory is not dataclasses.MISSING or not f.init for f in fields):
        raise TypeError(f"quick_init: {cls.__name__} has fields it cannot fill directly")
    names = [f.name for f in fields]
    setters = {f"_set_{n}": cls.__dict__[n].__set__ for n in names}  # slot descriptors
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    code = f"def __init__(self, {', '.join(names)}):\n{body}"
    exec(code, setters)  # noqa: S102 - generated from the dataclass's own field names
    init, original = setters["__init__"], vars(cls)["__init__"]
    init.__defaults__ = original.__defaults__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = original.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - a class attribute, replaced once at import
    return cls


def exact(x: Rational) -> Rational:
    """Return ``x`` as an ``int`` when it is integral, else as a ``Fraction``."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    return x


@quick_init
@dataclass(frozen=True, slots=True)
class Span:
    """Periodic interval map: unit ``m*q + t`` sees units ``[m*A + lo[t], m*A + hi[t]]``."""

    q: int
    A: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @staticmethod
    @lru_cache(maxsize=4096)
    def layer(kernel: int, stride: int, pad_begin: int, dilation: int = 1) -> Span:
        """Span of a sliding-window layer (eqs. 5-6); dilation gives the kernel d(k-1)+1.

        Interned (spans are immutable): equal layers share one object, so the pass can reuse
        work across axes and layers by identity."""
        k_eff = dilation * (kernel - 1) + 1
        return Span(1, stride, (-pad_begin,), (k_eff - 1 - pad_begin,))

    @staticmethod
    def periodic(A: int, lo: Iterable[int], hi: Iterable[int]) -> Span:
        """Span given by one period of bounds; reduced to its shortest period."""
        lo, hi = tuple(lo), tuple(hi)
        return _canonical(Span(len(lo), A, lo, hi))

    @property
    def S(self) -> Rational:
        """Effective stride (eq. 10): input units advanced per unit."""
        if self.q == 1:  # fast path: integer stride, no Fraction
            return self.A
        return exact(Fraction(self.A, self.q))

    def lo_of(self, u: int) -> int:
        """First unit seen by unit ``u``."""
        m, t = divmod(u, self.q)
        return m * self.A + self.lo[t]

    def hi_of(self, u: int) -> int:
        """Last unit seen by unit ``u``."""
        m, t = divmod(u, self.q)
        return m * self.A + self.hi[t]

    def region(self, u: int) -> tuple[int, int]:
        """Region ``[u0, v0]`` seen by unit ``u`` (eqs. 5-6)."""
        return self.lo_of(u), self.hi_of(u)

    def then(self, other: Span) -> Span:
        """Apply ``self`` to a unit, then ``other`` to every unit reached (path composition).

        Exact because every span's bounds are monotone in the unit index: non-decreasing, or
        non-increasing when ``A < 0`` (a flip: Slice with a negative step).  So the union of
        ``other`` over a contiguous range of units runs from ``other.lo_of(first)`` to
        ``other.hi_of(last)``, or from ``other.lo_of(last)`` to ``other.hi_of(first)`` for a flip.
        """
        if self.q == 1 and other.q == 1:  # the common, affine case: eqs. (2), (9), (10)
            A2 = other.A
            first, last = (self.lo[0], self.hi[0]) if A2 >= 0 else (self.hi[0], self.lo[0])
            return Span(1, self.A * A2, (first * A2 + other.lo[0],), (last * A2 + other.hi[0],))
        q = self.q * other.q // math.gcd(self.A, other.q)
        A = (self.A * q // self.q) // other.q * other.A
        if other.A >= 0:
            lo = tuple(other.lo_of(self.lo_of(t)) for t in range(q))
            hi = tuple(other.hi_of(self.hi_of(t)) for t in range(q))
        else:
            lo = tuple(other.lo_of(self.hi_of(t)) for t in range(q))
            hi = tuple(other.hi_of(self.lo_of(t)) for t in range(q))
        return _canonical(Span(q, A, lo, hi))

    def expanded(self, q: int) -> Span:
        """The same map written with period ``q`` (a multiple of ``self.q``)."""
        if q == self.q:
            return self
        reps = q // self.q
        lo = tuple(k * self.A + b for k in range(reps) for b in self.lo)
        hi = tuple(k * self.A + b for k in range(reps) for b in self.hi)
        return Span(q, self.A * reps, lo, hi)

    def centre_sums(self) -> tuple[int, ...]:
        """``lo[t] + hi[t]``: twice the centre offset of each phase (eq. 11 without u*S)."""
        return tuple(a + b for a, b in zip(self.lo, self.hi))


def _canonical(sp: Span) -> Span:
    """Shortest period that represents the same map (so equal maps compare equal)."""
    for d in range(1, sp.q):
        if sp.q % d or (sp.A * d) % sp.q:
            continue
        step = sp.A * d // sp.q
        if all(sp.lo[t + d] == sp.lo[t] + step and sp.hi[t + d] == sp.hi[t] + step
               for t in range(sp.q - d)):
            return Span(d, step, sp.lo[:d], sp.hi[:d])
    return sp


IDENTITY = Span(1, 1, (0,), (0,))
BROADCAST = Span(1, 0, (0,), (0,))  # every unit sees unit 0 (a size-1 axis broadcast)


def union_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Union of paths: one span per distinct stride, keeping the widest bounds (eqs. 1, 9, 10)."""
    spans = tuple(spans)
    if len(spans) == 1:  # fast path: a single path is its own union
        return spans
    by_stride: dict[Rational, Span] = {}
    for sp in spans:
        key = sp.S
        old = by_stride.get(key)
        by_stride[key] = sp if old is None else _union_same_stride(old, sp)
    return tuple(by_stride[s] for s in sorted(by_stride))


def _union_same_stride(a: Span, b: Span) -> Span:
    """Union of two spans of equal stride: elementwise min of lo and max of hi."""
    if a == b:
        return a
    q = math.lcm(a.q, b.q)
    a, b = a.expanded(q), b.expanded(q)
    lo = tuple(map(min, a.lo, b.lo))
    hi = tuple(map(max, a.hi, b.hi))
    return _canonical(Span(q, a.A, lo, hi))


@quick_init
@dataclass(frozen=True, slots=True)
class AxisField:
    """Receptive field of a tensor along one input spatial axis: a union of spans, or global.

    ``spans`` holds one span when every path has the same effective stride (condition 12 holds);
    several when strides differ (the field is then not shift-invariant).  ``global_at`` names the
    node that made the field cover the whole input along this axis (global pooling, attention,
    Flatten+Gemm...); ``spans`` is then empty.  ``gates`` names the gates (a feature map times a
    per-channel value pooled from all positions: squeeze-excitation) on the paths into the tensor:
    ``spans`` is then the *local* field, with every gate's output held constant (detached), and
    the exact field is global through them (sorted names).
    """

    spans: tuple[Span, ...]
    global_at: str | None = None
    gates: tuple[str, ...] = ()

    @property
    def is_global(self) -> bool:
        return self.global_at is not None

    @property
    def shift_invariant(self) -> bool:
        return not self.is_global and len(self.spans) == 1

    def region(self, u: int) -> tuple[int, int]:
        """Input region ``[u0, v0]`` of unit ``u`` (unclipped: may extend into the padding)."""
        if self.is_global:
            raise ValueError(f"the field is global (made so at node '{self.global_at}')")
        if len(self.spans) == 1:  # fast path: one stride
            return self.spans[0].region(u)
        regions = [sp.region(u) for sp in self.spans]
        return min(r[0] for r in regions), max(r[1] for r in regions)

    def extent(self, u: int) -> int:
        """Receptive-field size of unit ``u``: length of the region."""
        u0, v0 = self.region(u)
        return v0 - u0 + 1

    def size(self, n_units: int | None = None) -> int:
        """Receptive-field size r: the largest extent over units ``0..n_units-1``.

        Exact: extents repeat with the period, and across mixed strides the extent is convex in
        ``u`` (difference of a max and a min of near-affine maps), so its maximum over a range
        lies in the first or the last period.
        """
        if len(self.spans) == 1 and self.spans[0].q == 1:  # fast path: affine, every unit alike
            return self.spans[0].hi[0] - self.spans[0].lo[0] + 1
        period = math.lcm(*(sp.q for sp in self.spans))
        units = set(range(min(period, n_units or period)))  # no unit past the last one
        if len(self.spans) > 1 and n_units:
            units.update(range(max(n_units - period, 0), n_units))
        return max(self.extent(u) for u in units)

    @property
    def stride(self) -> Rational:
        """Effective stride S (eq. 10); with mixed strides, the largest."""
        return self.spans[-1].S

    @property
    def padding(self) -> int:
        """Effective padding P (eq. 9): the region of unit 0 starts at ``-P`` (eq. 5)."""
        return -self.region(0)[0]

    def centre(self, u: int) -> Fraction:
        """Centre of the region of unit ``u`` (eq. 11)."""
        u0, v0 = self.region(u)
        return Fraction(u0 + v0, 2)


def global_field(node: str) -> AxisField:
    """Field covering the whole input along an axis, made so at ``node``."""
    return AxisField((), global_at=node)


def union_fields(fields: Iterable[AxisField]) -> AxisField:
    """Union of the fields of several paths into one tensor (global wins; gates add up)."""
    fields = list(fields)
    for f in fields:
        if f.global_at is not None:
            return f
    if len(fields) == 1:  # fast path: one path in, already a union
        return fields[0]
    gates = fields[0].gates
    for f in fields:
        if f.gates is not gates:
            gates = merged_gates(fields)
            break
    union = _union_local(fields)
    return union if union.gates == gates else AxisField(union.spans, None, gates)


def merged_gates(fields: Iterable[AxisField]) -> tuple[str, ...]:
    """The gates of several fields, each once, sorted (equal fields compare equal whatever the
    order the paths were met in)."""
    return tuple(sorted({g for f in fields for g in f.gates}))


def with_gate(field: AxisField, gate: str) -> AxisField:
    """A local field that also passed through ``gate`` (held constant); a global one as it is."""
    if field.is_global or gate in field.gates:
        return field
    return AxisField(field.spans, None, tuple(sorted(field.gates + (gate,))))


def _union_local(fields: list[AxisField]) -> AxisField:
    """Union of several local fields (the first one's gates kept; ``union_fields`` sets them)."""
    first = fields[0]
    if len(first.spans) == 1 and first.spans[0].q == 1:  # fast path: affine paths of one stride
        sp = first.spans[0]
        A, lo, hi = sp.A, sp.lo[0], sp.hi[0]
        for f in fields:
            if len(f.spans) != 1 or f.spans[0].q != 1 or f.spans[0].A != A:
                break
            lo, hi = min(lo, f.spans[0].lo[0]), max(hi, f.spans[0].hi[0])
        else:  # a residual Add
            if (lo, hi) == (sp.lo[0], sp.hi[0]):
                return first
            return AxisField((Span(1, A, (lo,), (hi,)),), None, first.gates)
    return AxisField(union_spans(sp for f in fields for sp in f.spans), None, first.gates)


def compose(edge: Span, field: AxisField) -> AxisField:
    """Field of a layer's output unit: the layer's span, then the field of its input."""
    if field.is_global:
        return field
    if len(field.spans) == 1:  # fast path: one stride
        return AxisField((edge.then(field.spans[0]),), None, field.gates)
    return AxisField(union_spans(edge.then(sp) for sp in field.spans), None, field.gates)


# Closed forms of the single-path case (Araujo et al.), used by docs and as test oracles.

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
