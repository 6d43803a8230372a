"""``rfgraph report``: one self-contained HTML page about a model's receptive fields."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import RFGraphError
from ..outputs import check_output
from ..report import json_text
from ._common import add_model_args, load_analysis

EXAMPLES = """examples:
  rfgraph report model.onnx -o report.html
  rfgraph report model.onnx --image photo.jpg -o report.html     hover view over your picture
  rfgraph report model.onnx --erf-output feat1 --erf-output feat2 --erf-runs 32 -o r.html
  rfgraph report model.onnx --no-erf --format json -o r.html       summary as JSON on stdout

The page needs no network access: CSS, JavaScript and pictures are inlined.  Sections: summary
(input, end points, r/S/P per axis, alignment verdict), every tensor in a sortable table, the graph
coloured by r with misaligned merges in red, ERF heatmaps with the TRF box, and a hover view
(output cell -> its input region over --image).  JSON schema: docs/json_schema.md.

exit codes: 0 report written; 1 written, but the analysis stopped at an unsupported node or an
ERF heatmap could not be drawn;
2 unreadable model or image, unknown tensor, unwritable output."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="self-contained HTML report (tables, graph, ERF, hover view)",
                       description="Write one self-contained HTML page with the receptive fields "
                                   "of a model: summary, sortable per-layer table, graph, ERF "
                                   "heatmaps and an interactive hover view.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("-o", "--out", metavar="FILE.html", help="where to write the page (default: MODEL.html here)")
    p.add_argument("--force", action="store_true",
                   help="let the default name MODEL.html replace an existing file (a name given "
                        "with -o always may)")
    p.add_argument("--image", metavar="FILE", help="picture for the hover view (resized to the input)")
    p.add_argument("--title", help="page title (default: the model's file name)")
    p.add_argument("--no-erf", action="store_true", help="leave the ERF heatmaps out (faster)")
    p.add_argument("--erf-output", "--output", action="append", default=[], metavar="NAME",
                   help="tensor to draw an ERF for (repeatable; default: the last --erf-limit "
                        "end points with a local field)")
    p.add_argument("--erf-limit", type=int, default=4, help="heatmaps drawn by default (default 4)")
    p.add_argument("--erf-runs", "--runs", type=int, default=8, help="random inputs averaged per ERF (default 8)")
    p.add_argument("--method", "--erf-method", choices=("grad", "fd"), default="grad",
                   help="ERF gradients: exact VJP graph (grad) or finite differences (fd)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the ERF inputs")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="what to print once written: one line, or the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..html_report import ERFOptions, build_report

    quiet = bool(getattr(args, "quiet", False))
    if args.erf_runs < 1:
        raise RFGraphError("--erf-runs must be at least 1")
    out = output_path(args)
    analysis = load_analysis(args, needs_size="report")
    erf = None if args.no_erf else ERFOptions(args.erf_output or None, args.erf_limit, args.erf_runs,
                                              args.method, seed=args.seed,
                                              progress=not quiet and sys.stderr.isatty())
    report = build_report(analysis, args.title or Path(args.model).name, args.image, erf)
    report.write(out)
    if args.format == "json":
        if not quiet:
            print(f"rfgraph: wrote {out}", file=sys.stderr)
        print(json_text({"report": str(out), "bytes": len(report.html.encode("utf-8")), **report.summary}))
    elif not quiet:
        print(f"wrote {out} ({len(report.html.encode('utf-8')) // 1024} KiB): {len(analysis.endpoints)} "
              f"tensors, {_heatmaps(report.summary['erf'])}, "
              f"{'aligned' if analysis.aligned else 'MISALIGNED'}")
    if not quiet:
        for note in report.notes:
            print(f"rfgraph: note: {note}", file=sys.stderr)
        for s in analysis.stops:
            print(f"rfgraph: stopped at node '{s.node}' ({s.op}): {s.reason}", file=sys.stderr)
    failed = any(card.get("error") for card in report.summary["erf"])
    return 1 if analysis.stops or failed else 0


def output_path(args: argparse.Namespace) -> Path:
    """The page's path, checked before the analysis: -o (.html added), else MODEL.html in the
    current folder, which never replaces an existing file without --force."""
    name = args.model[4:] if args.model.startswith("zoo:") else Path(args.model).stem
    default = name.replace(":", "_").replace("/", "_") + ".html"
    return check_output(args.out or default, suffix=".html", explicit=bool(args.out), force=args.force,
                        inputs=[args.model, args.image, *args.rules], what="-o")


def _heatmaps(cards: list[dict[str, Any]]) -> str:
    """How many ERF heatmaps were drawn, and how many failed (their cards say why)."""
    failed = sum(1 for card in cards if card.get("error"))
    drawn = f"{len(cards) - failed} ERF heatmap(s)"
    return f"{drawn} ({failed} failed: see the notes)" if failed else drawn
