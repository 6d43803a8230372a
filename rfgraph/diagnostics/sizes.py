"""Input-size range: square input sizes n for which the end points cover the whole input and no
layer is unproductive (found by re-analysing the model at each size)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..analysis import Analysis
from ..errors import InputSizeError, RFGraphError
from .coverage import layer_verdicts
from .regions import AxisRegions, exact_regions, input_sizes


@dataclass(frozen=True)
class SizePoint:
    """The verdicts at one square input size n."""

    size: int
    covers: tuple[bool, ...] | None  # per axis: in every end point some unit sees the whole
    # axis (None: the model cannot be analysed at this size)
    unproductive: tuple[int, ...] | None  # per axis, number of layers unproductive along it
    error: str = ""

    @property
    def good(self) -> bool:
        return (self.covers is not None and all(self.covers)
                and self.unproductive is not None and not any(self.unproductive))


@dataclass(frozen=True)
class SizeRange:
    """Square input sizes (scanned on a grid) where some unit of every end point sees the whole
    input and no layer is unproductive; ``intervals`` are the maximal runs of good grid sizes."""

    points: tuple[SizePoint, ...]
    step: int
    stopped: str | None = None  # why the scan ended before the grid's last size (its time limit)

    @property
    def intervals(self) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for p in self.points:
            if p.good and runs and runs[-1][1] + self.step == p.size:
                runs[-1] = (runs[-1][0], p.size)
            elif p.good:
                runs.append((p.size, p.size))
        return runs


def size_range(reanalyse: Callable[[int], Analysis], endpoints: Sequence[str],
               sizes: Iterable[int], step: int, progress: bool = False) -> SizeRange:
    """Evaluate coverage and unproductive layers at every size (failures recorded, not raised);
    ``progress`` shows a bar on stderr (one re-analysis per size)."""
    import sys

    from tqdm import tqdm

    from .. import budgets

    points: list[SizePoint] = []
    grid, limit, start = list(sizes), budgets.SCAN_SECONDS.limit(), time.monotonic()
    for n in tqdm(grid, desc="rfgraph: input-size scan", unit="size", file=sys.stderr,
                  disable=not progress, leave=False):
        elapsed = time.monotonic() - start
        if points and elapsed * (len(points) + 1) / len(points) > limit:  # the next size would pass the
            # limit (at the mean time per size so far): the scan keeps what it has, and says so
            return SizeRange(tuple(points), step, f"the scan stopped at size {points[-1].size} of {grid[-1]} after "
                             f"{elapsed:.0f} s: the next size would pass its limit of {limit} s (a slow re-analysis "
                             f"per size); narrow it with --size-max or --size-step, or raise the limit with "
                             f"{budgets.SCAN_SECONDS.env}")
        try:
            a = reanalyse(n)
            regions = exact_regions(a)
            verdicts = layer_verdicts(a, regions)
            covers = tuple(all(_covers_axis(a, e, ax, regions) for e in endpoints)
                           for ax in range(len(a.spatial_axes)))
            unprod = tuple(sum(v.unproductive_along(ax) for v in verdicts)
                           for ax in range(len(a.spatial_axes)))
            points.append(SizePoint(n, covers, unprod))
        except RFGraphError as exc:
            points.append(SizePoint(n, None, None, str(exc)))
            if isinstance(exc, InputSizeError) and exc.fixed_target:  # a constant target holds one
                # number of values: every other size fails the same way (swin at 4..80: 6 s per size)
                return SizeRange(tuple(points), step, f"the scan stopped at size {n}: node '{exc.node}' "
                                 f"(Reshape) has a target fixed when the file was exported, which no other "
                                 f"input size fits; export the model with dynamic shapes to scan sizes")
    return SizeRange(tuple(points), step)


def _covers_axis(a: Analysis, endpoint: str, axis: int, regions: Mapping[str, tuple[AxisRegions, ...]]) -> bool:
    if endpoint not in a.endpoints:
        raise RFGraphError(f"end point '{endpoint}' not analysed at this size")
    ep = a[endpoint]
    size = input_sizes(a)[axis]
    if ep.fields[axis].is_global:
        return True
    if endpoint not in regions:  # exact_regions keeps only tensors with units along every axis
        raise RFGraphError(f"end point '{endpoint}' has no units at this size (shape "
                           f"{list(ep.shape)})")
    return bool(regions[endpoint][axis].covers(size).any())


def default_size_grid(analysis: Analysis, endpoints: Sequence[str], step: int | None = None,
                      largest: int | None = None, max_points: int = 64) -> tuple[list[int], int]:
    """Sizes to scan: multiples of ``step`` (default: the largest integer stride S of the end
    points) up to ``largest`` (default: twice the largest r, at least the current size)."""
    strides = [abs(int(s)) for e in endpoints for s in analysis[e].S
               if s is not None and Fraction(s).denominator == 1]
    step = step or max(strides + [1])
    rs = [r for e in endpoints for r in analysis[e].r if r is not None]
    top = largest or max([2 * max(rs + [1]), *input_sizes(analysis)])
    while top // step > max_points:
        step *= 2
    return list(range(step, top + 1, step)), step
