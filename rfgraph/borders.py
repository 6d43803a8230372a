"""Pads that copy pixels into their border (ONNX Pad, mode reflect / edge / wrap).

A unit of such a Pad's output that lies in the padding reads a mirrored (reflect), replicated
(edge) or wrapped (wrap) pixel of the Pad's input, not a constant.  The paper's r, S and P stay
those of the shift (the region still runs into the padding); only the boxes clipped to the input
(``EndPoint.boxes``) add the pixels copied there, so that they hold every pixel a unit reads.

Everything here is in input coordinates: a copying Pad is described by the regions of the first
and last unit of its input (``first``, ``last``).  For an affine input field (one stride, every
unit alike) the region of Pad-input unit -k is that of unit k mirrored about the centre of the
first unit's region, and that of unit n - k translated by ``period`` (n units), so the copies are
exact; otherwise they are bounded by everything the Pad's input reads (sound, looser).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fields import AxisField
from .onnx_import import ModelGraph, attributes
from .semantics import geometry

COPYING_MODES = ("reflect", "edge", "wrap")


@dataclass(frozen=True)
class BorderCopy:
    """One copying Pad along one input axis: its mode, which sides it pads, the regions of its
    input's first and last units, and (affine fields) the extent of its n input units."""

    node: str
    order: int  # the Pad's place in the graph's order (copies are followed last to first)
    mode: str
    begin: bool
    end: bool
    first: tuple[int, int]
    last: tuple[int, int]
    period: int | None  # region(n) - region(0) when the input field is affine; else None


def border_copy(node: str, order: int, mode: str, field: AxisField, n_in: int, pad_begin: int,
                pad_end: int) -> BorderCopy | None:
    """The copy a Pad of ``mode`` makes along one axis (None when it pads nothing there or its
    input is already global along it)."""
    if mode not in COPYING_MODES or field.is_global or n_in <= 0 or (pad_begin <= 0 and pad_end <= 0):
        return None
    affine = field.shift_invariant and field.spans[0].q == 1
    period = field.region(n_in)[0] - field.region(0)[0] if affine else None
    return BorderCopy(node, order, mode, pad_begin > 0, pad_end > 0, field.region(0), field.region(n_in - 1), period)


def copying_node(mg: ModelGraph, idx: int) -> tuple[str, int] | None:
    """(mode, slot of the input copied) when node ``idx`` copies input units into its border:
    a reflect / edge / wrap Pad, a Concat that pads circularly (torch's ``padding_mode='circular'``:
    "wrap"), or a Resize whose spec clamps its taps to the border unit ("clamp"); else None."""
    op, name = mg.op_types[idx], mg.names[idx]
    if op == "Concat":
        wrap = mg.wrap_padding(idx)
        return None if wrap is None else ("wrap", wrap[0])
    attrs = attributes(mg.nodes[idx])
    if geometry.clamps_indices(op, mg.opset, attrs, name):
        return "clamp", 0
    mode = geometry.pad_mode(attrs, name) if op == "Pad" else None
    return (mode, 0) if mode in COPYING_MODES else None


Image = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # reads, wholly, lo, hi per unit


def _images(c: BorderCopy, low: np.ndarray, high: np.ndarray) -> list[Image]:
    """Per side: which units read the padding there, which read nothing else (their box lies
    before the first input unit's region, or after the last's), and the [lo, hi] copied there.

    A Pad-input unit -k (k >= 1) reads no further up than first[1] - 1, and unit n - 1 + k no
    further down than last[0] + 1, so the padding part of a region is cut there."""
    (f_lo, f_hi), (l_lo, l_hi) = c.first, c.last
    out = []
    if c.begin:
        reads = low < f_lo
        top = np.minimum(high, f_hi - 1)
        if c.mode == "edge":
            image = (np.full_like(low, f_lo), np.full_like(low, f_hi))
        elif c.period is None:
            image = (np.full_like(low, f_lo), np.full_like(low, l_hi))
        elif c.mode == "reflect":
            image = (f_lo + f_hi - top, f_lo + f_hi - low)
        else:  # wrap: unit -k reads unit n - k
            image = (low + c.period, top + c.period)
        out.append((reads, high < f_lo, *image))
    if c.end:
        reads = high > l_hi
        bottom = np.maximum(low, l_lo + 1)
        if c.mode == "edge":
            image = (np.full_like(low, l_lo), np.full_like(low, l_hi))
        elif c.period is None:
            image = (np.full_like(low, f_lo), np.full_like(low, l_hi))
        elif c.mode == "reflect":
            image = (l_lo + l_hi - high, l_lo + l_hi - bottom)
        else:  # wrap: unit n - 1 + k reads unit k - 1
            image = (bottom - c.period, high - c.period)
        out.append((reads, low > l_hi, *image))
    return out


def clipped_regions(regions: np.ndarray, size: int, copies: tuple[BorderCopy, ...]) -> np.ndarray:
    """Regions (n, 2) clipped to an input axis of ``size`` pixels, widened to the pixels copied
    into the padding they read; a unit that reads only padding (zeros) gets an empty box, its
    start past its end.

    Copies are followed from the last Pad to the first (a pixel a later Pad copies may lie in an
    earlier Pad's padding, copied in turn); each step keeps one box per unit, the union of what is
    read (a superset: sound), or just the copy when the box lies wholly in that padding."""
    low, high = regions[:, 0].copy(), regions[:, 1].copy()
    for c in sorted(copies, key=lambda b: b.order, reverse=True):
        for reads, wholly, a, b in _images(c, low, high):
            low = np.where(reads, np.where(wholly, a, np.minimum(low, a)), low)
            high = np.where(reads, np.where(wholly, b, np.maximum(high, b)), high)
    return np.stack([np.maximum(low, 0), np.minimum(high, size - 1)], axis=1)
