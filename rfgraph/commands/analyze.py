"""``rfgraph analyze``: the receptive field (r, S, P, alignment) of a model's end points."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..analysis import Analysis
from ..compare import compare
from ..errors import RFGraphError
from ..layers import layer_view
from ..pool import check_workers, in_order
from ..report import (
    STATUSES,
    ModelPart,
    ModelReport,
    model_part,
    render,
    render_comparison,
    render_layers,
    render_models,
)
from ._common import add_format_arg, add_model_args, add_pool_args, load_analysis, model_errors, show_progress

EXAMPLES = """examples:
  rfgraph analyze model.onnx
  rfgraph analyze model.onnx --all --format markdown
  rfgraph analyze model.onnx --layers             one row per layer, with its growth of r
  rfgraph analyze model.onnx --output feat1 --output feat2 --format json
  rfgraph analyze model.onnx --input-shape images:1x3x640x640

  rfgraph analyze a.onnx b.onnx models/          one table, a model column (a folder: its *.onnx)
  rfgraph analyze models/ --workers 4             the models on 4 processes (same output)
  rfgraph analyze models/ --scheduler tcp://HOST:8786
                                                  ... on a Dask cluster
  rfgraph analyze m.onnx@1x3x224x224 m.onnx@1x3x320x320 --compare
                                                  one model at two input sizes, side by side

exit codes: 0 every requested tensor analysed; 1 the analysis stopped at an unsupported node
(partial report printed); 2 unreadable model or bad arguments.  With several models: 0 all
analysed, 1 some partial, 2 some refused (each error is its model's row; the others go on),
3 an internal error in some model (a bug).  --compare: 0, 1 or 2 as for the two models (a
difference is no error)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="theoretical receptive field of every end point",
                       description="Theoretical receptive field (Araujo et al. 2019) of an ONNX model: "
                                   "size r, effective stride S and padding P per spatial axis, "
                                   "alignment of every merge.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, many=True)
    add_format_arg(p)
    p.add_argument("--all", action="store_true", help="one row per tensor instead of per end point")
    p.add_argument("--layers", action="store_true",
                   help="one row per layer that changes the field (Conv, pools, Resize, Pad...) with its "
                        "kernel, stride, pads, dilation, r, S, P and growth of r; elementwise and "
                        "shape-only ops folded into the layer before them")
    p.add_argument("--compare", action="store_true",
                   help="two models (or one at two sizes: MODEL@1x3x224x224 MODEL@1x3x320x320) side by "
                        "side per end point, matched by name, else in order; 'differs' names r, S, P "
                        "where they differ")
    p.add_argument("--output", action="append", default=[], metavar="NAME",
                   help="report these tensors (repeatable); default: graph outputs and the last "
                        "local feature maps before global ops")
    add_pool_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    specs = list(args.model)
    check_workers(args.workers)
    if args.compare:
        return _run_compare(args, specs)
    if len(specs) == 1 and not _onnx_files(specs[0]):  # a folder without models: refused as before
        return _run_one(_with_model(args, specs[0]))
    if args.layers and (args.all or args.output):
        raise RFGraphError("--layers lists every layer; it takes neither --all nor --output")
    parts = in_order(_model_part, _for_workers(args), _expand(specs), args.workers, args.scheduler,
                     show_progress(args))
    print(render_models(parts, args.format, args.layers))
    return max(STATUSES.index(p.status) for p in parts)


def _for_workers(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments sent to each worker: no stage display there (the bar counts models)."""
    return argparse.Namespace(**{**{k: v for k, v in vars(args).items() if k != "func"}, "quiet": True})


def _model_part(args: argparse.Namespace, spec: str) -> ModelPart:
    """One model's rows (or JSON entry), made where it was analysed (``rfgraph.pool``)."""
    return model_part(_model_report(args, spec), args.format, args.layers)


def _run_one(args: argparse.Namespace) -> int:
    """One model: the end points (or every tensor, or those asked for), or its layers."""
    analysis = load_analysis(args)
    if args.layers:
        return _run_layers(analysis, args)
    print(render(analysis, _names(analysis, args), args.format))
    _stops_to_stderr(analysis, args.format)
    return 1 if _partial(analysis) else 0


def _names(analysis: Analysis, args: argparse.Namespace) -> list[str]:
    """The tensors to report: --output's (checked), every one (--all), or the end points."""
    if args.output:
        for n in args.output:
            analysis[n]  # raises a clear error for unknown or unanalysed tensors
        return list(args.output)
    if args.all:
        return list(analysis.endpoints)
    return analysis.default_endpoints() or list(analysis.endpoints)[-1:]


def _partial(analysis: Analysis) -> bool:
    """The analysis stopped before some graph output (exit 1)."""
    return any(o not in analysis.endpoints for o in analysis.outputs) and bool(analysis.stops)


SHAPE_SUFFIX = re.compile(r"^([^:@]+:)?\d+(x\d+)+$")  # MODEL@1x3x224x224 or MODEL@NAME:1x3x224x224


def split_spec(spec: str) -> tuple[str, str | None]:
    """'m.onnx@1x3x320x320' -> ('m.onnx', '1x3x320x320'); a path that exists is taken whole."""
    model, sep, shape = spec.rpartition("@")
    if not sep or os.path.exists(spec) or not SHAPE_SUFFIX.match(shape):
        return spec, None
    return model, shape


def _with_model(args: argparse.Namespace, spec: str) -> argparse.Namespace:
    """The arguments for one model: its path, and its @SHAPE after the --input-shape ones."""
    model, shape = split_spec(spec)
    return argparse.Namespace(**{**vars(args), "model": model,
                                 "input_shape": [*args.input_shape, *([shape] if shape else [])]})


def _expand(specs: Sequence[str]) -> list[str]:
    """The models to analyse: each argument, a folder as its *.onnx files (sorted by name; an
    empty folder stays, to be reported as an error)."""
    out: list[str] = []
    for spec in specs:
        out += _onnx_files(spec) or [spec]
    return out


def _onnx_files(spec: str) -> list[str]:
    """A folder's *.onnx files, sorted by name ([] for anything else)."""
    return sorted(str(p) for p in Path(spec).glob("*.onnx")) if os.path.isdir(spec) else []


def _model_report(args: argparse.Namespace, spec: str) -> ModelReport:
    """One model of several: its analysis and end points, or its error as one line (bad input,
    or an internal error: a bug; RFGRAPH_DEBUG=1 raises it)."""
    one = _with_model(args, spec)
    try:
        if os.path.isdir(spec):
            raise RFGraphError(f"no *.onnx files in folder '{spec}'")
        with model_errors(one.model):
            analysis = load_analysis(one)
        return ModelReport(spec, analysis, tuple(_names(analysis, one)), partial=_partial(analysis))
    except RFGraphError as exc:
        return ModelReport(spec, None, error=" ".join(str(exc).split()))
    except Exception as exc:
        if os.environ.get("RFGRAPH_DEBUG"):
            raise
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return ModelReport(spec, None, error=f"internal error ({text}); this is a bug in rfgraph")


def _run_compare(args: argparse.Namespace, specs: Sequence[str]) -> int:
    """--compare: two models (or one at two sizes) side by side; a refused one stops it (exit 2)."""
    models = _expand(specs)
    if len(models) != 2 or args.layers:
        raise RFGraphError(f"--compare takes two models (got {len(models)}: {', '.join(models)})"
                           if len(models) != 2 else "--compare takes no --layers")
    a, b = (_model_report(args, m) for m in models)
    for run in (a, b):
        if run.analysis is None:
            raise RFGraphError(f"{run.model}: {run.error}")
    assert a.analysis is not None and b.analysis is not None
    pairs = compare(a.analysis, a.names, b.analysis, b.names)
    print(render_comparison(a, b, pairs, args.format))
    return 1 if a.partial or b.partial else 0


def _run_layers(analysis: Analysis, args: argparse.Namespace) -> int:
    """``--layers``: the layer view (``rfgraph.layers``), exit 1 when the analysis stopped."""
    if args.all or args.output:
        raise RFGraphError("--layers lists every layer; it takes neither --all nor --output")
    print(render_layers(analysis, layer_view(analysis), args.format))
    _stops_to_stderr(analysis, args.format)
    return 1 if _partial(analysis) else 0


def _stops_to_stderr(analysis: Analysis, fmt: str) -> None:
    """Where the analysis stopped, on stderr for the formats whose output has no notes."""
    if analysis.stops and fmt != "table":
        for s in analysis.stops:
            print(f"rfgraph: stopped at node '{s.node}' ({s.op}): {s.reason}", file=sys.stderr)
