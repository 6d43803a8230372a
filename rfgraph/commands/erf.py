"""``rfgraph erf``: the effective receptive field (Luo et al. 2016) of one output unit, its
metrics table, a heatmap PNG and the raw array."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tabulate import tabulate

from .. import erf_conventions as ec
from ..errors import RFGraphError
from ..outputs import check_output, write_atomically
from ..report import FORMATS, json_text
from ._common import add_model_args, add_pool_args, model_errors, options_from_args, show_progress

if TYPE_CHECKING:  # the ERF engine is imported when the command runs
    from ..erf import ERFResult

EXAMPLES = """examples:
  rfgraph erf model.onnx                             centre unit of the first output, 20 runs
  rfgraph erf model.onnx --output feat --runs 100 --png erf.png --log
  rfgraph erf zoo:luo_conv_uniform_10 --reinit ones --runs 1 --npy erf.npy
  rfgraph erf model.onnx --inputs images/ --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5
  rfgraph erf model.onnx --method fd                 finite differences (ops without a VJP rule)
  rfgraph erf model.onnx --output layer2 --region full   on the full image (default auto: the
                                                     unit's cone when smaller, checked exact)
  rfgraph erf model.onnx --preset replknet --inputs val_images/ --png erf.png
                                                     RepLKNet's conventions (Ding et al. 2022)
  rfgraph erf model.onnx --scalar mean --aggregate square --centre half

exit codes: 0 done; 2 unreadable model, op without a gradient rule (try --method fd), bad arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``erf`` parser."""
    p = sub.add_parser("erf", help="effective receptive field of one output unit",
                       description="Effective receptive field (Luo et al. 2016): |d y_unit / d x| "
                                   "averaged over random inputs, with Luo's ERF size, a Gaussian fit, "
                                   "RepLKNet area ratios and the ERF/TRF ratio.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--output", "--erf-output", metavar="NAME",
                   help="tensor holding the unit (default: the first output, or the input of the Softmax or "
                        "LayerNorm that computes it where their channel sum is constant)")
    p.add_argument("--unit", metavar="I,J", help="unit index along the tensor axes that hold positions "
                   "(a flattened token axis: the token index; default: centre)")
    p.add_argument("--unit-axis", type=int, metavar="T",
                   help="for a tensor with no axis of positions (a ViT's tokens after its class token; "
                        "its field is global), the tensor axis --unit indexes: --unit-axis 1 --unit 99 "
                        "seeds token 99")
    p.add_argument("--units", metavar="I,J", nargs="+",
                   help="several units of the tensor, each averaged over the same inputs (one "
                        "backward serves several: one seed per batch item); --npy writes them "
                        "stacked")
    add_pool_args(p, "the shards of inputs and weight draws")
    p.add_argument("--region", choices=("auto", "cone", "full"), default="auto",
                   help="input the gradient is computed on: the unit's cone (the crop of its "
                        "receptive field, same gradient, cheaper; and inside the network, each layer "
                        "only where the unit reads it, or the layers after a block output on that "
                        "tensor's crop), the full image, or auto: the "
                        "cone where it is smaller than the image and checked exact (inside the "
                        "network where the run is long enough to repay planning it), else the full "
                        "image (a note says which and why); cone: an error where it cannot be used")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime execution provider (auto: CUDA when onnxruntime has it)")
    p.add_argument("--channel", type=int,
                   help="seed one channel (default: all channels summed); implies --scalar channel")
    p.add_argument("--runs", "--erf-runs", type=int, default=None,
                   help="inputs N (default: the preset's, 20; replknet: 50)")
    p.add_argument("--method", "--erf-method", choices=("grad", "fd"), default="grad",
                   help="grad: exact gradient graph; fd: central differences inside the TRF")
    p.add_argument("--fd-budget", type=float, default=None, metavar="SECONDS",
                   help="--method fd is refused when estimated (forward passes x the measured time "
                        "of one) to take longer than this (default 600)")
    p.add_argument("--inputs", "--erf-inputs", default=None, metavar="gaussian|uniform|DIR",
                   help="input distribution, or a folder of PNG/JPEG images (default: gaussian)")
    p.add_argument("--mean", default=None, metavar="M1,M2,M3", help="image normalisation mean")
    p.add_argument("--std", default=None, metavar="S1,S2,S3", help="image normalisation std")
    p.add_argument("--reinit", default="none", metavar="|".join(("none", "ones", "he", "glorot", "corners",
                                                                   "periphery[:S]")),
                   help="re-initialise the weights (keeping the graph) before each weight run; "
                        "periphery[:S] and corners: Luo et al.'s new initialisation (sec. 4.1), He with "
                        "tap variances 1 + S*d^2 from the kernel centre (S default 4), or only on the "
                        "kernel's corners")
    p.add_argument("--weight-runs", type=int, default=1, help="weight re-initialisations M")
    p.add_argument("--signed", action="store_true",
                   help="average the signed gradient, not |.| (= --aggregate signed)")
    p.add_argument("--seed", type=int, default=0, help="random seed (results are deterministic)")
    p.add_argument("--batch", type=int, default=0,
                   help="inputs per onnxruntime run (default 0: automatic, by input size)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="onnxruntime threads per run; default 0: rfgraph's choice, one run per "
                        "core at a time with one thread each (lanes, up to 8, as memory allows); "
                        "N: one run at a time on N threads (less memory)")
    p.add_argument("--png", metavar="FILE", help="write a heatmap (TRF box drawn over it)")
    p.add_argument("--log", action="store_true", help="logarithmic colour scale for --png")
    p.add_argument("--npy", metavar="FILE", help="write the raw ERF array (.npy)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.add_argument("--timings", action="store_true",
                   help="add the wall time ('seconds') to the JSON output (without it, the same "
                        "--seed gives byte-identical output)")
    ec.add_convention_args(p)
    p.set_defaults(func=run)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RFGraphError(f"{what} '{text}': expected comma-separated numbers") from None


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise RFGraphError(f"{what} '{text}': expected comma-separated integers, e.g. 7,7") from None


def run(args: argparse.Namespace) -> int:
    """Compute, print, and write the requested files."""
    from ..erf import compute_erfs
    from ..inputs import IMAGENET_MEAN, IMAGENET_STD

    quiet = bool(getattr(args, "quiet", False))
    options = options_from_args(args)
    options.erf_input()  # a shape for an input other than the differentiated one: refused first
    units = _units(args)
    npy, png = output_paths(args)
    with model_errors(args.model):  # onnxruntime refusing the model: one line, exit 2
        results = compute_erfs(
            args.model, args.output, options=options, units=units, runs=args.runs, workers=args.workers,
            scheduler=args.scheduler, provider=args.provider, region=args.region, unit_axis=args.unit_axis,
            method=args.method, inputs=args.inputs, reinit=args.reinit,
            weight_runs=args.weight_runs, seed=args.seed, batch=args.batch, threads=args.threads,
            progress=show_progress(args),
            mean=_floats(args.mean, "--mean") or IMAGENET_MEAN,
            std=_floats(args.std, "--std") or IMAGENET_STD, conventions=conventions(args),
            **({} if args.fd_budget is None else {"fd_budget": args.fd_budget}))
    if len(results) > 1:
        return _print_units(results, args, quiet, npy)
    result = results[0]
    written = write_files(result, npy, png, args.log)
    print(render(result, args.format, args.timings))
    if not quiet:
        for path in written:
            print(f"rfgraph: wrote {path}", file=sys.stderr)
    if not quiet and args.format != "json":  # JSON carries its notes in the document
        for note in result.notes:
            print(f"rfgraph: note: {note}", file=sys.stderr)
    return 0


def _units(args: argparse.Namespace) -> list[tuple[int, ...] | None]:
    """--unit (one) or --units (several); the centre unit when neither is given."""
    if args.units and args.unit:
        raise RFGraphError("give --unit or --units, not both")
    if args.units and args.png:
        raise RFGraphError("--png draws one unit's map; with --units write them with --npy")
    return [_ints(u, "--units") for u in args.units] if args.units else [_ints(args.unit, "--unit")]


def _print_units(results: Sequence[ERFResult], args: argparse.Namespace, quiet: bool,
                 npy: Path | None) -> int:
    """Several units: their maps stacked in --npy (written atomically), one table each (JSON: a list)."""
    if npy is not None:
        write_atomically(npy, lambda tmp: _save_npy(tmp, np.stack([r.erf for r in results])))
        if not quiet:
            print(f"rfgraph: wrote {npy}", file=sys.stderr)
    if args.format == "csv":
        print(_units_csv(results))
    else:
        texts = [render(r, args.format, args.timings) for r in results]
        print("[" + ",\n".join(texts) + "]" if args.format == "json" else "\n\n".join(texts))
    if not quiet and args.format != "json":
        for note in results[0].notes:
            print(f"rfgraph: note: {note}", file=sys.stderr)
    return 0


def _units_csv(results: Sequence[ERFResult]) -> str:
    """Several units' metrics as one CSV table, a unit column first (one header, not one block
    per unit: a CSV reader takes it whole)."""
    from ..metrics import metric_rows

    return _csv_text(["unit", "metric", "value", "definition"],
                     [[",".join(map(str, header(r)["unit"])), *row]
                      for r in results for row in metric_rows(r.metrics) + displayed_rows(r)])


def _csv_text(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A header and rows as CSV text, without the last line break."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


def output_paths(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The real --npy and --png paths (suffix added), checked before the ERF is computed: a
    bad folder fails in a second, not after the whole measurement."""
    inputs = [args.model, args.inputs, *args.rules]
    npy = None if args.npy is None else check_output(args.npy, suffix=".npy", inputs=inputs, what="--npy")
    png = None if args.png is None else check_output(args.png, suffix=".png", inputs=inputs, what="--png")
    return npy, png


def write_files(result: ERFResult, npy: Path | None, png: Path | None, log: bool) -> list[Path]:
    """Write the raw array and the heatmap (each atomically); the paths written."""
    written = []
    if npy is not None:
        written.append(write_atomically(npy, lambda tmp: _save_npy(tmp, result.erf)))
    if png is not None:
        from ..heatmap import render_png

        t = result.target
        written.append(render_png(ec.displayed(result.erf, result.conventions), png, t.region, log,
                                  f"ERF of {t.output}{list(t.unit)} ({result.samples} samples, "
                                  f"{result.method})"))
    return written


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a file handle (np.save would append .npy to a name like x.NPY)."""
    with path.open("wb") as fh:
        np.save(fh, array)


def conventions(args: argparse.Namespace) -> ec.ERFConventions:
    """The conventions of the command line: --preset and the individual options, --channel and
    --signed (= --aggregate signed) included."""
    conv = ec.conventions_from_args(args)
    if not args.signed:
        return conv
    if args.aggregate not in (None, ec.Aggregation.SIGNED.value):
        raise RFGraphError(f"--signed contradicts --aggregate {args.aggregate}; give one of them")
    return replace(conv, aggregation=ec.Aggregation.SIGNED)


def header(result: ERFResult) -> dict[str, Any]:
    """What was measured, for every format."""
    t = result.target
    return {"output": t.output, "unit": list(t.unit), "grid_unit": None if t.grid is None else list(t.grid),
            "channel": t.channel,
            "trf_region": None if t.region is None else [list(r) for r in t.region],
            "method": result.method, "runs": result.runs,
            "weight_runs": result.weight_runs, "absolute": result.absolute,
            "batch": result.batch,
            "samples": result.samples,
            "conventions": dict(ec.describe(result.conventions))}


DISPLAYED_RATIO = ("RepLKNet analyze_erf, on the displayed map: centred square of side 2i+1 "
                   "(i >= 1) at (h//2, w//2) holding >{t} of its sum / map area (side {side})")


def displayed_rows(result: ERFResult) -> list[tuple[str, str, str]]:
    """(name, value, definition) of the area ratios of the displayed map (none when unscaled)."""
    return [(f"displayed_area_ratio@{a.t}", "-" if a.ratio is None else f"{a.ratio:.4g}",
             DISPLAYED_RATIO.format(t=a.t, side="-" if a.side is None else a.side))
            for a in result.displayed_area_ratios]


AGGREGATION_TEXT = {ec.Aggregation.ABS: "|grad|", ec.Aggregation.SIGNED: "signed grad",
                    ec.Aggregation.RELU: "relu(grad)", ec.Aggregation.SQUARE: "grad^2"}


def _scalar_text(conv: ec.ERFConventions) -> str:
    """The differentiated scalar for the title, when it is not the plain channel sum."""
    if conv.scalar in (ec.Scalar.SUM, ec.Scalar.CHANNEL):
        return ""
    return f"d {conv.scalar.value}(y)/dx, "


def render(result: ERFResult, fmt: str, timings: bool = False) -> str:
    """The metrics in one of FORMATS (table, markdown, csv, json); the wall time only with
    ``timings`` (without it, the same inputs and seed give byte-identical output)."""
    from ..metrics import metric_rows, metrics_dict

    m = result.metrics
    if fmt == "json":
        ratios = [{"t": a.t, "side": a.side, "ratio": a.ratio}
                  for a in result.displayed_area_ratios]
        timing = {"seconds": round(result.seconds, 3)} if timings else {}
        return json_text({**header(result), **timing, "metrics": metrics_dict(m),
                          "displayed_area_ratios": ratios, "notes": list(result.notes)})
    rows = metric_rows(m) + displayed_rows(result)
    if fmt == "csv":
        return _csv_text(["metric", "value", "definition"], rows)
    h = header(result)
    channel = "" if h["channel"] is None else f" channel {h['channel']}"
    conv = result.conventions
    grid = "" if h["grid_unit"] is None else \
        f" (token of grid unit {tuple(h['grid_unit'])}, as boxes and show index it)"
    title = (f"ERF of {h['output']} unit {tuple(h['unit'])}{grid}{channel}: "
             f"{h['runs']} runs x {h['weight_runs']} weights, {h['method']}, "
             f"{_scalar_text(conv)}{AGGREGATION_TEXT[conv.aggregation]}, "
             + (f"TRF {h['trf_region']}" if h["trf_region"] else "no local TRF region (see the notes)"))
    table = tabulate(rows, headers=["metric", "value", "definition"],
                     tablefmt="github" if fmt == "markdown" else "simple")
    return f"{title}\n{table}"


__all__: Sequence[str] = ["register", "render", "run"]
