"""``rfgraph diagnose``: coverage, border and unproductive layers, input-size range, object sizes,
alignment fixes and (with --erf) ERF growth; definitions in docs/diagnostics.md."""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import Any

from tabulate import tabulate

from ..diagnostics import Diagnosis, diagnose
from ..report import NOTE_LINES, gates_note, json_text, layout_line, number
from ._common import add_model_args, model_errors, options_from_args

EXAMPLES = """examples:
  rfgraph diagnose model.onnx
  rfgraph diagnose model.onnx --input-shape images:1x3x640x640 --object-size 32 --object-size 256
  rfgraph diagnose model.onnx --output p3 --output p4 --erf --erf-runs 16 --format json
  rfgraph diagnose model.onnx --rules my_ops.toml

exit codes: 0 diagnosed; 1 the analysis stopped at an unsupported node (partial report);
2 unreadable model or bad arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="architecture diagnostics: coverage, unproductive layers, "
                                        "input sizes, object sizes, alignment fixes, ERF growth",
                       description="Architecture diagnostics from the exact receptive fields; each "
                                   "diagnostic is defined in docs/diagnostics.md.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--output", action="append", default=[], metavar="NAME",
                   help="end points (heads) to diagnose; default: graph outputs and the last local "
                        "feature maps before global ops")
    p.add_argument("--object-size", action="append", type=int, default=[], metavar="PX",
                   help="object size in input pixels to check against each head (repeatable)")
    p.add_argument("--no-size-range", action="store_true",
                   help="skip the input-size scan (it re-analyses the model once per size)")
    p.add_argument("--size-step", type=int, metavar="N", help="grid step of the input-size scan "
                   "(default: the largest integer stride of the end points, doubled until at most 64 sizes are "
                   "scanned)")
    p.add_argument("--size-max", type=int, metavar="N", help="largest input size scanned "
                   "(default: twice the largest r)")
    p.add_argument("--erf", action="store_true", help="also compute ERFs (Luo et al.): ERF/TRF "
                   "ratio per end point and the layer where the ERF stops growing")
    p.add_argument("--erf-runs", "--runs", type=int, default=8, metavar="N", help="inputs averaged per ERF")
    p.add_argument("--erf-layers", type=int, default=8, metavar="K",
                   help="layers sampled on the way to each end point for the ERF growth")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with model_errors(args.model):
        d = diagnose(args.model, options=options_from_args(args), endpoints=args.output or None,
                     object_sizes=args.object_size, scan_sizes=not args.no_size_range,
                     size_step=args.size_step, size_max=args.size_max, erf=args.erf,
                     erf_runs=args.erf_runs, erf_layers=args.erf_layers,
                     progress=not getattr(args, "quiet", False) and sys.stderr.isatty())
    print(json_text(diagnosis_dict(d)) if args.format == "json" else render(d))
    return 1 if d.analysis.stops else 0


def _num(x: Any) -> Any:
    return number(x) if isinstance(x, Fraction) else x


def diagnosis_dict(d: Diagnosis) -> dict[str, Any]:
    """The whole diagnosis as plain data (every number the table shows)."""
    a = d.analysis
    return {
        "input": {"name": a.input_name, "shape": list(a.input_shape),
                  "axis_names": list(a.axis_names), "layout": a.layout,
                  "layout_reason": a.layout_reason},
        "rule_notes": dict(a.rule_notes),
        "stops": [{"node": s.node, "op": s.op, "reason": s.reason} for s in a.stops],
        "coverage": [{"endpoint": c.endpoint, "axes": [
            {"axis": x.axis, "input_size": x.size, "r": x.r, "r_over_n": x.ratio,
             "covers_input": x.covers, "some_unit_sees_all": x.covered_by_some,
             "border_layer": x.border_layer,
             "full_coverage_layer": x.full_layer} for x in c.axes],
            "unproductive_layers": [v.node for v in c.unproductive], "gates": list(c.gates)}
            for c in d.coverage],
        "layers": [{"node": v.node, "op": v.op, "output": v.output,
                    "unproductive_fraction": list(v.fraction), "unproductive": v.unproductive}
                   for v in d.verdicts],
        "size_range": None if d.sizes is None else {
            "step": d.sizes.step, "intervals": [list(i) for i in d.sizes.intervals], "stopped": d.sizes.stopped,
            "points": [{"size": p.size,
                        "some_unit_sees_all": None if p.covers is None else list(p.covers),
                        "unproductive_layers": None if p.unproductive is None else list(p.unproductive),
                        "error": p.error} for p in d.sizes.points]},
        "objects": [{"endpoint": o.endpoint, "size": o.size, "trf_fraction": list(o.trf_fraction),
                     "trf": o.trf_verdict, "erf_extent": None if o.erf_extent is None
                     else list(o.erf_extent), "erf": o.erf_verdict} for o in d.objects],
        "alignment_fixes": [{"node": f.node, "op": f.op, "axis": f.axis,
                             "branches": list(f.branches), "offset_px": _num(f.offset),
                             "fixable": f.fixable, "pads": {t: list(p) for t, p in f.pads.items()},
                             "fix": f.describe(), "verified": f.verified} for f in d.fixes],
        "erf": [{"endpoint": g.endpoint, "plateau_layer": g.plateau, "error": g.error,
                 "layers": [{"tensor": p.tensor, "erf_size": p.erf_size,
                             "erf_extent": list(p.erf_extent),
                             "trf": None if p.trf is None else list(p.trf),
                             "erf_trf_ratio": p.ratio} for p in g.points]} for g in d.erf],
    }


def render(d: Diagnosis) -> str:
    """Tables and notes, one section per diagnostic."""
    a = d.analysis
    head = f"input '{a.input_name}' {list(a.input_shape)} ({layout_line(a)}); end points: "
    parts = [head + ", ".join(d.endpoints)]
    parts += _rule_notes(d) + [_coverage_table(d), _layers_section(d), _sizes_section(d)]
    parts += [_objects_table(d), _fixes_section(d), _erf_table(d)]
    parts += [f"STOPPED at node '{s.node}' ({s.op}): {s.reason}" for s in a.stops]
    return "\n\n".join(p for p in parts if p)


def _rule_notes(d: Diagnosis) -> list[str]:
    notes = d.analysis.rule_notes
    if not notes:
        return []
    return ["nodes analysed with declared or assumed rules:\n"
            + "\n".join(f"  {node}: {why}" for node, why in notes.items())]


def _coverage_table(d: Diagnosis) -> str:
    rows = []
    for c in d.coverage:
        for x in c.axes:
            rows.append([c.endpoint, x.axis, x.size, "global" if x.r is None else x.r,
                         "-" if x.ratio is None else f"{x.ratio:.2f}",
                         "every unit" if x.covers else ("some units" if x.covered_by_some else "no unit"),
                         x.border_layer or "-", x.full_layer or "-",
                         len(c.unproductive)])
    head = ["end point", "axis", "n", "r", "r/n", "sees whole axis", "border layer",
            "full-coverage layer", "unproductive layers"]
    gated = [f"  {c.endpoint}: {gates_note(c.gates, named=0)}" for c in d.coverage if c.gates]
    notes = ("\nlocal fields (r and coverage with every gate held constant: squeeze-excitation, "
             "normalisation statistics; the exact field is global through the gates):\n"
             + "\n".join(gated)) if gated else ""
    return "coverage\n" + tabulate(rows, headers=head, tablefmt="simple") + notes


def _layers_section(d: Diagnosis) -> str:
    bad = [v for v in d.verdicts if v.unproductive]
    if not bad:
        return "unproductive layers: none"
    lines = [f"  {v.node} ({v.op}): {', '.join(f'{100 * f:.0f}%' for f in v.fraction)} of units "
             f"add only pixels outside the image" for v in bad]
    return "unproductive layers (per axis share of output units):\n" + "\n".join(lines)


def _sizes_section(d: Diagnosis) -> str:
    if d.sizes is None:
        return ""
    iv = d.sizes.intervals
    every = f" every {d.sizes.step}" if d.sizes.step > 1 else ""
    where = ", ".join(f"{lo} to {hi}{every}" if lo != hi else f"{lo}" for lo, hi in iv) or "none"
    scanned = [p.size for p in d.sizes.points]
    text = (f"input sizes (square, step {d.sizes.step}, scanned {scanned[0]}..{scanned[-1]}) where "
            f"a unit of every end point sees the whole input and no layer is unproductive: {where}")
    if d.sizes.stopped:
        text += f"\n{d.sizes.stopped}"
    failed = [f"  {p.size}: {p.error}" for p in d.sizes.points if p.error]
    if failed:
        text += "\nsizes that could not be analysed:\n" + "\n".join(failed[:NOTE_LINES])
        if len(failed) > NOTE_LINES:
            text += f"\n  ... and {len(failed) - NOTE_LINES} more (--format json lists them all)"
    return text


def _objects_table(d: Diagnosis) -> str:
    if not d.objects:
        return ""
    rows = [[o.endpoint, o.size, o.trf_verdict, "-" if o.erf_extent is None
             else " x ".join(map(str, o.erf_extent)), o.erf_verdict] for o in d.objects]
    return "object sizes\n" + tabulate(rows, headers=["end point", "object px", "TRF", "ERF extent",
                                                      "ERF"], tablefmt="simple")


def _fixes_section(d: Diagnosis) -> str:
    if not d.fixes:
        return "alignment: every merge aligned"
    lines = []
    for f in d.fixes[:NOTE_LINES]:
        check = {True: " [verified: aligned after the fix]",
                 False: " [re-analysis: still misaligned]", None: ""}[f.verified]
        lines.append(f"  {f.node} ({f.op}) along {f.axis}, centres {number(f.offset)} px apart: "
                     f"{f.describe()}{check}")
    if len(d.fixes) > NOTE_LINES:
        lines.append(f"  ... and {len(d.fixes) - NOTE_LINES} more (--format json lists them all)")
    return "alignment fixes:\n" + "\n".join(lines)


def _erf_table(d: Diagnosis) -> str:
    if not d.erf:
        return ""
    rows = []
    for g in d.erf:
        last = g.final
        rows.append([g.endpoint, "-" if last is None else f"{last.erf_size:.1f}",
                     "-" if last is None or last.trf is None else " x ".join(map(str, last.trf)),
                     "-" if last is None or last.ratio is None else f"{last.ratio:.3f}",
                     g.plateau or "-", g.error])
    return "ERF\n" + tabulate(rows, headers=["end point", "ERF size", "TRF r", "ERF/TRF",
                                             "ERF stops growing at", "note"], tablefmt="simple")
