"""Run experiments by name and write the report; one failing experiment does not stop the others."""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..errors import RFGraphError
from . import reference as reference_mod
from .base import Context, Result
from .registry import EXPERIMENTS
from .report import write_report


def resolve(names: Sequence[str] | None) -> list[str]:
    """Experiment names in registry order (all when none given); unknown names are an error."""
    if not names:
        return list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise RFGraphError(f"unknown experiment(s) {', '.join(unknown)}; available: "
                           f"{', '.join(EXPERIMENTS)}")
    return [n for n in EXPERIMENTS if n in names]


def run_experiments(names: Sequence[str] | None = None, out: str | Path = "out/experiments", *,
                    runs: int | None = None, quick: bool = False, seed: int = 0,
                    reference: str | Path | None = None, progress: bool = True,
                    threads: int = 1) -> list[Result]:
    """Run the named experiments (default: all) and write ``OUT/report.md``; returns the results."""
    chosen = resolve(names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, quick, runs, seed, progress, threads, reference_mod.load(reference))
    results = []
    for name in ctx.bar(chosen, "experiments", total=len(chosen)):
        results.append(run_one(ctx, name))
        write_report(ctx, results)  # keep a report of what is done so far
    return results


def run_one(ctx: Context, name: str) -> Result:
    """One experiment; an exception becomes a Result carrying the error."""
    exp = EXPERIMENTS[name]
    t0 = time.perf_counter()
    try:
        return exp.run(ctx)
    except Exception as exc:  # noqa: BLE001 - reported, the other experiments still run
        res = Result(name, exp.title, error=f"{type(exc).__name__}: {exc}")
        res.notes.append(traceback.format_exc(limit=3))
        res.seconds = time.perf_counter() - t0
        return res
