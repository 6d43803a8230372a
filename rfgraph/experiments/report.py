"""``report.md``: every experiment's figures next to the paper's claims, with the measured value
and a verdict (match / differ / new / skipped / no reference)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from ..outputs import write_text
from .base import Claim, Context, Result
from .registry import EXPERIMENTS

MISSING = "(missing: no reference data)"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def claim_rows(claims: Sequence[Claim]) -> list[str]:
    """Markdown table rows of claims."""
    rows = ["| claim | paper | measured | verdict |", "|---|---|---|---|"]
    for c in claims:
        paper = c.paper or MISSING
        note = f" ({c.note})" if c.note else ""
        rows.append(f"| {_cell(c.claim)} | {_cell(paper)} | {_cell(c.measured)}{_cell(note)} | "
                    f"**{c.verdict.value}** |")
    return rows


def section(res: Result) -> list[str]:
    """The report section of one experiment."""
    exp = EXPERIMENTS.get(res.name)
    lines = [f"## {res.name}: {res.title}", ""]
    if exp:
        lines.append(f"Source: {exp.source}.  ")
    if res.settings:
        lines.append(f"Settings: {res.settings}.  ")
    lines.append(f"Run time: {res.seconds:.1f} s." + (f"  Numbers: [{res.csv}]({res.csv})"
                                                      if res.csv else ""))
    lines.append("")
    if res.error:
        lines += [f"**Failed**: `{_cell(res.error)}`", ""]
    for fig in res.figures:
        lines += [f"![{fig}]({fig})", ""]
    if res.claims:
        lines += claim_rows(res.claims) + [""]
    for note in res.notes:
        if not res.error or not note.startswith("Traceback"):
            lines.append(f"- {note}")
    if res.notes:
        lines.append("")
    return lines


def write_report(ctx: Context, results: Sequence[Result]) -> str:
    """Write ``ctx.out / report.md`` and return its text."""
    ref = ctx.reference
    mode = "quick (CI smoke: fewer runs, smaller nets)" if ctx.quick else "full"
    lines = ["# rfgraph experiments: effective vs theoretical receptive fields", "",
             (f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
              f"`rfgraph experiments`; mode: {mode}; runs: "
              f"{ctx.runs if ctx.runs else 'per experiment (paper defaults)'}; seed {ctx.seed}; "
              f"total time {sum(r.seconds for r in results):.0f} s."), ""]
    if ref.available:
        lines.append(f"Paper values read from `{ref.root}` (reference/luo2016_claims.md, "
                     "reference/modern_networks_rf.csv, seeds/araujo2019_*.txt).")
    else:
        lines.append("**No reference data found** (`--reference DIR` or ../shared): the paper's "
                     "values are missing below, numeric claims read 'no reference'.")
    lines += ["", ("Verdicts: *match* = the measurement agrees with the paper's claim; *differ* = it "
                   "does not; *new* = a question the paper leaves open, measured here; *skipped* = "
                   "could not be measured (see the note)."), "", "## Summary", "",
              "| experiment | claim | paper | measured | verdict |", "|---|---|---|---|---|"]
    for res in results:
        if res.error:
            lines.append(f"| {res.name} | (failed) | | {_cell(res.error)} | **error** |")
        for c in res.claims:
            lines.append(f"| {res.name} | {_cell(c.claim)} | {_cell(c.paper or MISSING)} | "
                         f"{_cell(c.measured)} | **{c.verdict.value}** |")
    lines.append("")
    for res in results:
        lines += section(res)
    text = "\n".join(lines) + "\n"
    write_text(ctx.out / "report.md", text)  # atomic: an interrupted run keeps the previous report
    return text
