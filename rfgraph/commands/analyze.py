"""``rfgraph analyze``: the receptive field (r, S, P, alignment) of a model's end points."""

from __future__ import annotations

import argparse
import sys

from ..analysis import Analysis
from ..errors import RFGraphError
from ..layers import layer_view
from ..report import render, render_layers
from ._common import add_format_arg, add_model_args, load_analysis

EXAMPLES = """examples:
  rfgraph analyze model.onnx
  rfgraph analyze model.onnx --all --format markdown
  rfgraph analyze model.onnx --layers             one row per layer, with its growth of r
  rfgraph analyze model.onnx --output feat1 --output feat2 --format json
  rfgraph analyze model.onnx --input-shape images:1x3x640x640

exit codes: 0 every requested tensor analysed; 1 the analysis stopped at an unsupported node
(partial report printed); 2 unreadable model or bad arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="theoretical receptive field of every end point",
                       description="Theoretical receptive field (Araujo et al. 2019) of an ONNX model: "
                                   "size r, effective stride S and padding P per spatial axis, "
                                   "alignment of every merge.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_format_arg(p)
    p.add_argument("--all", action="store_true", help="one row per tensor instead of per end point")
    p.add_argument("--layers", action="store_true",
                   help="one row per layer that changes the field (Conv, pools, Resize, Pad...) with its "
                        "kernel, stride, pads, dilation, r, S, P and growth of r; elementwise and "
                        "shape-only ops folded into the layer before them")
    p.add_argument("--output", action="append", default=[], metavar="NAME",
                   help="report these tensors (repeatable); default: graph outputs and the last "
                        "local feature maps before global ops")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    analysis = load_analysis(args)
    if args.layers:
        return _run_layers(analysis, args)
    if args.output:
        names = args.output
        for n in names:
            analysis[n]  # raises a clear error for unknown or unanalysed tensors
    elif args.all:
        names = list(analysis.endpoints)
    else:
        names = analysis.default_endpoints() or list(analysis.endpoints)[-1:]
    print(render(analysis, names, args.format))
    missing = [o for o in analysis.outputs if o not in analysis.endpoints and analysis.stops]
    _stops_to_stderr(analysis, args.format)
    return 1 if missing else 0


def _run_layers(analysis: Analysis, args: argparse.Namespace) -> int:
    """``--layers``: the layer view (``rfgraph.layers``), exit 1 when the analysis stopped."""
    if args.all or args.output:
        raise RFGraphError("--layers lists every layer; it takes neither --all nor --output")
    print(render_layers(analysis, layer_view(analysis), args.format))
    _stops_to_stderr(analysis, args.format)
    return 1 if analysis.stops else 0


def _stops_to_stderr(analysis: Analysis, fmt: str) -> None:
    """Where the analysis stopped, on stderr for the formats whose output has no notes."""
    if analysis.stops and fmt != "table":
        for s in analysis.stops:
            print(f"rfgraph: stopped at node '{s.node}' ({s.op}): {s.reason}", file=sys.stderr)
