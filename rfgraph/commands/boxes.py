"""``rfgraph boxes``: the input box of output units (what a detection head's anchor cell sees)."""

from __future__ import annotations

import argparse
import math
import sys
from fractions import Fraction
from typing import Any

import numpy as np
from tabulate import tabulate

from .. import budgets
from ..errors import RFGraphError
from ..report import json_text, number, numeric
from ._common import add_model_args, load_analysis


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boxes", help="input region [u0, v0] and centre of output units",
                       description="Input region (inclusive, unclipped) and centre of one output unit, "
                                   "or of every unit of a tensor with --all.",
                       epilog="examples:\n  rfgraph boxes model.onnx --output feat --index 3,4\n"
                              "  rfgraph boxes model.onnx --output feat --all --format json\n\n"
                              "exit codes: 0 boxes printed; 2 unreadable model, unknown tensor or bad index.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--output", required=True, metavar="NAME", help="tensor whose units are mapped")
    which = p.add_mutually_exclusive_group(required=True)  # checked before the model is analysed
    which.add_argument("--index", metavar="I,J", help="unit index along the spatial axes, e.g. 3,4")
    which.add_argument("--all", action="store_true", help="every unit of the tensor")
    p.add_argument("--clip", action="store_true", help="clip regions to the input (the centre is then "
                   "the clipped box's; the field's own centre is shown beside it)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.all:  # a malformed index is refused before the analysis, which may take a while
        try:
            indices = [tuple(int(v) for v in args.index.split(","))]
        except ValueError:
            raise RFGraphError(f"--index '{args.index}': expected integers like 3,4") from None
    analysis = load_analysis(args, needs_size="boxes")
    output = args.output
    if output in analysis.pieces and not args.all:  # a detection head's output: an anchor's index
        output, indices = analysis.in_piece(output, indices)
        if not getattr(args, "quiet", False) and args.format != "json":  # JSON names the tensor
            print(f"rfgraph: note: index {args.index} of '{args.output}' is unit "
                  f"{','.join(map(str, indices[0]))} of its piece '{output}'", file=sys.stderr)
    ep = analysis[output]
    sizes = [analysis.input_shape[a] for a in analysis.spatial_axes]
    if ep.is_global and not (args.clip and ep.reads_known(sizes)):
        raise RFGraphError(f"'{ep.name}' has a global field (its units mix positions at node "
                           f"'{ep.global_at}'); it has no field box"
                           + ("; --clip prints the input pixels each unit reads" if ep.reads_known(sizes) else ""))
    if args.all:
        units = [n or 1 for n in ep.units]
        budgets.BOX_UNITS.check(math.prod(units), f"--all on '{ep.name}' ({'x'.join(map(str, units))})",
                                "pick units with --index")
        indices = [tuple(int(i) for i in idx) for idx in np.ndindex(*units)]
    rows: list[dict[str, list[Any]]] = []  # JSON rows: index, region, centre
    for idx in indices:
        region = ep.clipped_region(idx, sizes) if args.clip else ep.region(idx)
        rows.append(_row(idx, region, ep.field_centre(idx), args.clip))
    if args.format == "json":
        print(json_text({"tensor": ep.name, "axis_names": list(analysis.axis_names), "units": rows}))
    else:
        table = [[",".join(map(str, r["index"]))]
                 + [f"[{b[0]}, {b[1]}]" if b is not None else "none (padding)" for b in r["region"]]
                 + [", ".join(str(c) for c in r["centre_exact"])]
                 + ([", ".join(str(c) for c in r["field_centre_exact"])] if args.clip else [])
                 for r in rows]
        head = (["index"] + [f"{n} region" for n in analysis.axis_names]
                + (["centre of clipped box", "field centre (eq. 11)"] if args.clip else ["centre"]))
        print(tabulate(table, headers=head, tablefmt="simple"))
    return 0


def _row(index: tuple[int, ...], region: tuple[tuple[int, int], ...], centre: tuple[Fraction | None, ...],
         clipped: bool) -> dict[str, Any]:
    """One JSON unit: centres as numbers with their exact form beside them; with --clip the
    centre is the clipped box's and the field's own (eq. 11, maybe outside it) is kept apart."""
    boxes = [list(r) if r[0] <= r[1] else None for r in region]  # None: it reads only padding
    row: dict[str, Any] = {"index": list(index), "region": boxes}
    shown = tuple(Fraction(u0 + v0, 2) if u0 <= v0 else None for u0, v0 in region) if clipped else centre
    row.update(centre=[None if c is None else numeric(c) for c in shown],
               centre_exact=["-" if c is None else number(c) for c in shown])
    if clipped:
        row.update(field_centre=[None if c is None else numeric(c) for c in centre],
                   field_centre_exact=["global" if c is None else number(c) for c in centre])
    return row
