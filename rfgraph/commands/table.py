"""``rfgraph table``: r, S, P of the model_zoo networks, next to published numbers when known.

The networks are built from their definitions (model_zoo) and analysed like any ONNX model; the
published numbers are *read at run time* from a reference CSV (``--reference``, or
``../shared/reference/modern_networks_rf.csv`` next to the checkout or the working directory),
never stored in the package.  Without a reference the table still prints, with no verdicts.

Reference CSV: ``#`` lines are comments; columns ``model, r, S, P`` and optionally ``end_point``
(rows without it are the model's final end point) and ``resolution`` (rows with it apply only
to models built at that input size; ``None``/empty: any size, as the receptive_field library's
rows at unknown resolution).  Values ``None``/empty mean "not published": the verdict then
compares only the published quantities (e.g. a paper that gives r alone, or P = None).

``--models`` takes zoo names or the sets ``slim`` (the twelve nets of Araujo et al., the
default), ``grf`` (the nineteen configurations of the library's rf_benchmark), ``modern`` (nets
deployed today: ResNet-50 v1.5, ConvNeXt-T, EfficientNet-B0/V2-S, MobileNetV3-L, RegNetY-400MF,
YOLOv8n, Swin-T, ViT-B/16; gated nets give the local field, gates held constant) and ``all``;
``--size`` builds each model at the given input sizes (``name:size=N``).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..analysis import analyze
from ..errors import RFGraphError
from ..pool import check_workers, in_order
from ..report import FORMATS, gates_note, json_text, number, per_axis
from ._common import add_pool_args, show_progress

REFERENCE_NAME = Path("shared") / "reference" / "modern_networks_rf.csv"

EXAMPLES = """examples:
  rfgraph table                                   the twelve TF-slim networks, final end points
  rfgraph table --endpoints --format markdown     every end point (resnet blocks, mixed layers)
  rfgraph table --models resnet_v1_50 resnet_v1_50:size=321 torch_resnet50
  rfgraph table --models grf --endpoints --size 224 321 --reference grf_rf_benchmark.csv
  rfgraph table --models modern --endpoints        today's nets (local fields through SE gates)
  rfgraph table --reference my_numbers.csv --fail-on-differ
  rfgraph table --models all --workers 4          the models built on 4 processes (same table)

exit codes: 0 table printed; 1 --fail-on-differ and some row differs from the reference;
2 unknown model, unreadable reference or bad arguments."""

Triple = tuple[int | None, int | None, int | None]
RefKey = tuple[str, str | None, int | None]


@dataclass(frozen=True)
class Row:
    """One end point of one model: our r, S, P per axis and the published triple, if any."""

    model: str
    family: str  # tf-slim, torchvision, luo... (conventions differ between families)
    end_point: str
    input_size: list[int]
    r: list[Any]
    S: list[Any]
    P: list[Any]
    published: Triple | None
    verdict: str  # "match", "differ (r, P)" or "-" (no published number)
    note: str


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="receptive fields of the model_zoo networks vs published numbers",
                       description="Build model_zoo networks, compute r, S, P of their end points and "
                                   "compare with published numbers read from a reference CSV.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME", default=None,
                   help="zoo names, optionally NAME:key=value,...; 'slim' for the twelve TF-slim "
                        "nets (default), 'grf' for the nineteen rf_benchmark configurations, "
                        "'modern' for nets deployed today (ResNet-50 v1.5, ConvNeXt-T, "
                        "EfficientNet, MobileNetV3, RegNetY, YOLOv8n, Swin-T, ViT-B/16), 'all' "
                        "for every zoo model")
    p.add_argument("--size", nargs="+", type=int, metavar="N", default=None,
                   help="build each model at input size N x N (one set of rows per size; default: "
                        "each model's own size, or the size=N in its name)")
    p.add_argument("--endpoints", action="store_true",
                   help="one row per intermediate end point (resnet blocks, inception mixed layers)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--reference", metavar="CSV", type=Path,
                   help=f"published numbers (default: ../{REFERENCE_NAME} if it exists)")
    p.add_argument("--no-reference", action="store_true", help="do not compare with any reference")
    p.add_argument("--fail-on-differ", action="store_true", help="exit 1 when a row differs")
    add_pool_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ref_path = None if args.no_reference else (args.reference or default_reference())
    if args.reference is not None and not args.no_reference and not args.reference.is_file():
        raise RFGraphError(f"--reference {args.reference}: file not found")
    reference = load_reference(ref_path) if ref_path else {}
    names = model_names(args.models or ["slim"], args.size)
    check_workers(args.workers)
    per_model = in_order(_rows_or_error, (reference, args.endpoints), names, args.workers,
                         args.scheduler, show_progress(args))
    rows: list[Row] = []
    for result in per_model:
        if isinstance(result, str):  # the first refused model in order, as when built one by one
            raise RFGraphError(result)
        rows += result
    print(render(rows, args.format, ref_path))
    return 1 if args.fail_on_differ and any(r.verdict.startswith("differ") for r in rows) else 0


def model_sets() -> dict[str, list[str]]:
    """Names ``--models`` expands: the Araujo twelve, the rf_benchmark nineteen, today's nets,
    every zoo model."""
    import model_zoo

    return {"slim": list(model_zoo.SLIM_MODELS), "grf": list(model_zoo.GRF_BENCHMARK),
            "modern": list(model_zoo.MODERN_MODELS), "all": model_zoo.available()}


def model_names(requested: Sequence[str], sizes: Sequence[int] | None) -> list[str]:
    """Zoo names to build: sets expanded, then each name once per ``--size`` (``name:size=N``)."""
    sets = model_sets()
    names = [n for name in requested for n in sets.get(name, [name])]
    if not sizes:
        return names
    bad = [n for n in sizes if n < 1]
    if bad:
        raise RFGraphError(f"--size {bad[0]}: an input size is a positive integer")
    clash = [n for n in names if "size" in _params(n)]
    if clash:
        raise RFGraphError(f"model '{clash[0]}' sets its size; drop --size or the size= parameter")
    return [f"{n}{',' if ':' in n else ':'}size={size}" for n in names for size in sizes]


def _params(name: str) -> dict[str, Any]:
    """The ``key=value`` parameters of a zoo name (a usage error when malformed)."""
    import model_zoo

    try:
        return model_zoo.parse_params(name)
    except ValueError as exc:
        raise RFGraphError(str(exc)) from None


def default_reference() -> Path | None:
    """``../shared/reference/...`` next to the checkout, else next to the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (checkout.parent, Path.cwd().parent):
        if (root / REFERENCE_NAME).is_file():
            return root / REFERENCE_NAME
    return None


def _int_or_none(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text and text.lower() != "none" else None


def load_reference(path: Path) -> dict[RefKey, Triple]:
    """Published (r, S, P) keyed by (model, end point or None, resolution or None)."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as exc:
        raise RFGraphError(f"reference {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RFGraphError(f"reference {path}: not a CSV text file") from None
    try:
        return _reference_records(path, csv.DictReader(lines))
    except (ValueError, csv.Error) as exc:
        raise RFGraphError(f"reference {path}: not a CSV of model, r, S, P ({exc})") from None


def _reference_records(path: Path, records: Iterable[dict[str | Any, str | Any]]) -> dict[RefKey, Triple]:
    """The published triples of parsed CSV records (rows without any number skipped)."""
    ref: dict[RefKey, Triple] = {}
    for rec in records:
        rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items()}
        if not {"model", "r", "S", "P"} <= rec.keys():
            raise RFGraphError(f"reference {path}: needs columns model, r, S, P")
        vals = tuple(_int_or_none(rec[k]) for k in ("r", "S", "P"))
        if vals == (None, None, None):
            continue
        key = (rec["model"], rec.get("end_point") or None, _int_or_none(rec.get("resolution")))
        ref[key] = vals  # type: ignore[assignment]
    return ref


def lookup(reference: dict[RefKey, Triple], model: str, end_point: str, final: bool,
           size: int | None) -> Triple | None:
    """The published triple of an end point (final end points also match model-only rows)."""
    eps = [end_point] + ([None] if final else [])
    for ep in eps:
        for res in (size, None):
            if (model, ep, res) in reference:
                return reference[(model, ep, res)]
    return None


def verdict(r: Sequence[Any], S: Sequence[Any], P: Sequence[Any], pub: Triple | None) -> str:
    """"match" when every axis equals the published triple, else which quantities differ."""
    if pub is None:
        return "-"
    wrong = [nm for nm, ours, p in zip("rSP", (r, S, P), pub)
             if p is not None and any(v != p for v in ours)]
    return "match" if not wrong else f"differ ({', '.join(wrong)})"


def model_rows(name: str, reference: dict[RefKey, Triple], all_endpoints: bool) -> list[Row]:
    """Build one zoo model, analyse it, and make a row per requested end point."""
    import model_zoo

    if not model_zoo.is_available(name):
        raise RFGraphError(f"unknown zoo model '{name}'; available: {', '.join(model_zoo.available())}")
    try:
        model = model_zoo.build(name)
    except ValueError as exc:
        raise RFGraphError(str(exc)) from None
    analysis = analyze(model)
    base = name.split(":", 1)[0]
    family = model_zoo.entry(name).family
    eps = model_zoo.endpoints(model)
    chosen = eps if all_endpoints else eps[-1:]
    spatial = [analysis.input_shape[a] for a in analysis.spatial_axes]
    size = spatial[0] if len(set(spatial)) == 1 else None
    rows = []
    for ep_name in chosen:
        ep = analysis[ep_name]
        r, S, P = ([number(v) for v in vals] for vals in (ep.r, ep.S, ep.P))
        pub = lookup(reference, base, ep_name, ep_name == eps[-1], size)
        rows.append(Row(name, family, ep_name, spatial, r, S, P, pub, verdict(r, S, P, pub),
                        _note(ep)))
    return rows


def _rows_or_error(shared: tuple[dict[RefKey, Triple], bool], name: str) -> list[Row] | str:
    """``model_rows`` on a worker of ``rfgraph.pool``: its rows, or its refusal's message (sent
    back as text: some RFGraphErrors take other arguments than the message)."""
    try:
        return model_rows(name, *shared)
    except RFGraphError as exc:
        return str(exc)


def _note(ep: Any) -> str:
    notes = [gates_note(ep.gates, named=0)] if ep.gates else []
    if not ep.aligned:
        notes.append(f"misaligned at {ep.misaligned_at}")
    if ep.size_dependent:
        notes.append(f"padding depends on input size ({ep.size_dependent})")
    if not ep.shift_invariant:
        notes.append("mixed strides")
    return "; ".join(notes)


HEADERS = ["model", "family", "end point", "input", "r", "S", "P", "published r", "published S",
           "published P", "verdict", "note"]


def _cells(row: Row) -> list[Any]:
    pub = ["-" if v is None else v for v in (row.published or (None, None, None))]
    return [row.model, row.family, row.end_point, "x".join(map(str, row.input_size)), per_axis(row.r),
            per_axis(row.S), per_axis(row.P), *pub, row.verdict, row.note]


def render(rows: Iterable[Row], fmt: str, reference: Path | None) -> str:
    """The rows as a plain table, Markdown, CSV or JSON."""
    rows = list(rows)
    if fmt == "json":
        return json_text({"reference": str(reference) if reference else None,
                          "rows": [asdict(r) for r in rows]})
    if fmt == "csv":
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADERS)
        writer.writerows(_cells(r) for r in rows)
        return buf.getvalue().rstrip("\n")
    table = tabulate([_cells(r) for r in rows], headers=HEADERS,
                     tablefmt="github" if fmt == "markdown" else "simple")
    return f"{table}\n\n{summary(rows, reference)}"


def summary(rows: Sequence[Row], reference: Path | None) -> str:
    """One line: how many rows match, differ, or have no published number, and from where."""
    if reference is None:
        return f"{len(rows)} rows; no reference CSV: no verdicts"
    n_match = sum(r.verdict == "match" for r in rows)
    n_differ = sum(r.verdict.startswith("differ") for r in rows)
    return (f"{len(rows)} rows: {n_match} match, {n_differ} differ, {len(rows) - n_match - n_differ} "
            f"without a published number (published numbers from {reference})")
