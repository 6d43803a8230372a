"""Value objects of the experiments: the run context, one claim checked, one experiment's result.

Conventions: every experiment writes its files under ``ctx.out / name``; figures are PNG (Agg), the
measured numbers one CSV; a claim's paper value is read from the reference data at run time (never
written in this package), so without ``../shared`` the claim says the paper value is missing.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .reference import Reference


class Verdict(str, Enum):
    """How a measured value compares with the paper's claim."""

    MATCH = "match"
    DIFFER = "differ"
    NEW = "new"  # a question the paper does not answer: measured only
    SKIPPED = "skipped"  # the measurement could not be made (reason in the note)
    NO_REFERENCE = "no reference"  # the paper's number is needed and the reference data is absent


@dataclass(frozen=True)
class Claim:
    """One claim of the paper next to its measurement.

    ``paper`` is the paper's value as the reference data states it ("" when the data is absent).
    """

    claim: str
    paper: str
    measured: str
    verdict: Verdict
    figure: str | None = None
    note: str = ""


@dataclass
class Context:
    """Settings shared by all experiments of one invocation, plus the ERF maps they measured."""

    out: Path
    quick: bool = False
    runs: int | None = None  # overrides each experiment's default run count
    seed: int = 0
    progress: bool = True
    threads: int = 1
    reference: Reference = field(default_factory=Reference.empty)
    maps: list[MapRecord] = field(default_factory=list)

    def n_runs(self, full: int, quick: int) -> int:
        """Runs of one experiment: ``--runs`` when given, else the paper's count (or quick's)."""
        if self.runs is not None:
            return max(1, self.runs)
        return quick if self.quick else full

    def folder(self, name: str) -> Path:
        """The experiment's output folder (created)."""
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, line: str) -> None:
        """A note to the person running the experiments (stderr; silent without progress)."""
        if self.progress:
            import sys

            print(line, file=sys.stderr)

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
        """A tqdm progress bar over ``iterable`` (plain iteration when progress is off)."""
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


@dataclass(frozen=True)
class MapRecord:
    """An ERF map measured by an experiment (kept for the gaussianity summary)."""

    experiment: str
    case: str
    erf: np.ndarray
    r2: float | None
    sigma: float | None
    erf_size: float


@dataclass
class Result:
    """What one experiment produced: files (relative to ``ctx.out``), claims, notes."""

    name: str
    title: str
    settings: str = ""
    figures: list[str] = field(default_factory=list)
    csv: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # set when the experiment raised: the report shows it


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``run(ctx)`` returns its Result."""

    name: str
    title: str
    source: str  # where in the papers it comes from
    run: Callable[[Context], Result]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows (dicts; columns in first-seen order) as CSV; floats with 6 significant digits."""
    if not rows:
        path.write_text("")
        return
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in keys})


def _cell(v: Any) -> Any:
    """One CSV cell: floats to 6 significant digits, None empty."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    if v is None:
        return ""
    return v


def finish(result: Result, ctx: Context, t0: float) -> Result:
    """Write the result's CSV (``name/name.csv``) and stamp its run time."""
    if result.rows:
        path = ctx.folder(result.name) / f"{result.name}.csv"
        write_csv(path, result.rows)
        result.csv = str(path.relative_to(ctx.out))
    result.seconds = time.perf_counter() - t0
    return result


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for the report (``-`` for None/NaN)."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


GAUSSIAN_R2 = 0.9  # a 2-D Gaussian fit with R^2 at least this is called "Gaussian" in the report


def claim(ctx: Context, key: str, text: str, measured: str, ok: bool | None,
          figure: str | None = None, note: str = "", paper: str = "") -> Claim:
    """A qualitative claim: the paper's wording from the reference row ``key`` (``paper`` when there
    is no row to read: a claim stated in words only); ``ok`` None = NEW."""
    paper = (ctx.reference.paper(key) if key else "") or (paper if not key else "")
    verdict = Verdict.NEW if ok is None else (Verdict.MATCH if ok else Verdict.DIFFER)
    return Claim(text, paper, measured, verdict, figure, note)


def numeric_claim(ctx: Context, key: str, text: str, value: float, tol: float,
                  ci: tuple[float, float] | None = None, index: int = 0, digits: int = 3,
                  figure: str | None = None, note: str = "") -> Claim:
    """A claim with a number: ``value`` matches the paper's ``index``-th number of row ``key``
    when within ``tol`` of it or when the paper's number lies in ``ci``."""
    measured = fmt(value, digits) + (f" (95% CI {fmt(ci[0], digits)} .. {fmt(ci[1], digits)})"
                                      if ci and all(np.isfinite(ci)) else "")
    numbers = ctx.reference.numbers(key)
    if len(numbers) <= index:
        return Claim(text, "", measured, Verdict.NO_REFERENCE, figure,
                     (note + "; " if note else "") + "paper value missing (no reference data)")
    target = numbers[index]
    inside = ci is not None and all(np.isfinite(ci)) and ci[0] <= target <= ci[1]
    ok = abs(value - target) <= tol or inside
    paper = ctx.reference.paper(key)
    if index > 0:  # the row's first number is not the one compared: show the one that is
        paper = f"{target:g} (from the paper's row: {paper})"
    return Claim(text, paper, measured,
                 Verdict.MATCH if ok else Verdict.DIFFER, figure,
                 (note + "; " if note else "")
                 + f"match = within {tol:g} of {target:g} or in the CI")
