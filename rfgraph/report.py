"""Reporting: turn an Analysis into rows, then into a table (tabulate), Markdown, CSV or JSON.

Computing and printing are separate: ``endpoint_rows`` and ``analysis_dict`` hold the numbers,
``render`` only formats them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tabulate import tabulate

from .analysis import Analysis, EndPoint
from .compare import Pair
from .layers import LayerView, layer_view
from .pieces import cut_text
from .trf import Merge
from .unknown_size import PBySize

FORMATS = ("table", "markdown", "csv", "json")


def number(x: Any) -> Any:
    """A JSON/CSV-friendly number: ints stay ints, Fractions become "p/q" strings, a P that
    depends on an unknown input size its values and the residues of the size giving each."""
    if isinstance(x, PBySize):
        return x.as_json()
    if isinstance(x, Fraction):
        return str(x) if x.denominator != 1 else x.numerator
    return x


def numeric(x: Any) -> Any:
    """A JSON number: ints stay ints, other Fractions become floats (their exact "p/q" form is
    printed beside them by ``number``)."""
    if isinstance(x, Fraction):
        return x.numerator if x.denominator == 1 else float(x)
    return x


def per_axis(values: Sequence[Any]) -> str:
    """One cell for per-axis values: "211" when equal on every axis, else "211, 195" ("3|4": the
    values of a P that depends on an unknown input size)."""
    shown = [_cell(v) for v in values]
    return shown[0] if len(set(shown)) == 1 else ", ".join(shown)


def _cell(v: Any) -> str:
    """One axis's value as a table shows it."""
    if v is None:
        return "global"
    if isinstance(v, PBySize):
        return str(v)
    if isinstance(v, dict):  # a PBySize as ``number`` writes it
        return "|".join(map(str, v["values"]))
    return str(number(v))


def covers_input(ep: EndPoint, analysis: Analysis) -> bool | None:
    """True when every unit reads the first and the last input pixel along every axis (its
    exact clipped region, ``Analysis.exact_regions``: a stride-2 VALID stem that never reads an
    even input's last pixel does not cover it, whatever the unclipped region, nor a global field
    after it: ``global_reach``); None at an unknown input size, where that depends on the size."""
    if analysis.unknown_size is not None:  # a global field too: it sees what it mixed, which may
        return None                         # miss the last pixel at some sizes (a VALID stride-2 stem)
    exact = analysis.exact_regions.get(ep.name)
    for axis, f in enumerate(ep.fields):
        size = analysis.input_shape[analysis.spatial_axes[axis]]
        if exact is not None:  # a global field's units see what it mixed: maybe not the last row
            seen = exact[axis] if ep.units[axis] is not None else exact[axis].as_one_unit()  # (folded: one unit)
            if not seen.covers(size).all():
                return False
        if f.is_global:
            continue
        n = ep.units[axis] or 1
        if any(not (f.region(u)[0] <= 0 and f.region(u)[1] >= size - 1) for u in {0, n - 1}):
            return False
    return True


def _reach_list(analysis: Analysis, ep: EndPoint) -> list[list[int] | None]:
    """Per axis, [first, last] input pixel a global field's units see (None: a local axis)."""
    if not ep.is_global or analysis.unknown_size is not None:
        return [None] * len(ep.fields)
    return [None if r is None else list(r) for r in analysis.global_reach(ep.name)]


def endpoint_rows(analysis: Analysis, names: Iterable[str]) -> list[dict[str, Any]]:
    """One row per end point, with per-axis r, S, P as lists."""
    rows = []
    for name in names:
        ep = analysis[name]
        rows.append({
            "tensor": ep.name, "op": ep.op, "node": ep.node,
            "shape": list(ep.shape),
            "r": [number(v) for v in ep.r], "S": [number(v) for v in ep.S],
            "P": [number(v) for v in ep.P],
            "global": [f.global_at for f in ep.fields],
            "global_reach": _reach_list(analysis, ep),
            "gates": list(ep.gates),
            "covers_input": covers_input(ep, analysis),
            "aligned": ep.aligned, "misaligned_at": ep.misaligned_at,
            "upper_bound_from": None if all(f.is_global for f in ep.fields) else ep.bound_at,
            "shift_invariant": ep.shift_invariant,
            "size_dependent": ep.size_dependent,
        })
    return rows


def analysis_dict(analysis: Analysis, names: Iterable[str]) -> dict[str, Any]:
    """The whole report as plain data (the JSON schema documented in README)."""
    return {
        "input": {"name": analysis.input_name, "shape": list(analysis.input_shape),
                  "spatial_axes": list(analysis.spatial_axes), "axis_names": list(analysis.axis_names),
                  "layout": analysis.layout, "layout_reason": analysis.layout_reason},
        "aligned": analysis.aligned,
        "unknown_size": None if analysis.unknown_size is None else {
            "period": list(analysis.unknown_size.period),
            "sizes_analysed": [list(s) for s in analysis.unknown_size.sizes],
            "size_dependent_ops": list(analysis.unknown_size.ops),
            "runs_at_residues": None if analysis.unknown_size.runs_at is None else list(analysis.unknown_size.runs_at),
            "cannot_run": analysis.unknown_size.cannot_run or None,
            "only_residue_0": analysis.unknown_size.only_residue_0},
        "endpoints": endpoint_rows(analysis, names),
        "misaligned_merges": [
            {"node": m.node, "op": m.op, "output": m.output, "axis": analysis.axis_names[m.axis],
             "branches": [{"tensor": b.tensor, "S": number(b.S), "centre": numeric(Fraction(b.centre)),
                           "centre_exact": number(Fraction(b.centre)), "r": b.r,
                           "phase_centres": [number(c) for c in b.phases]}
                          for b in m.branches]}
            for m in analysis.misaligned],
        "global_at": dict(analysis.global_at),
        "upper_bounds": analysis.bounds,
        "gates": {g.node: {"op": g.op, "tensor": g.tensor, "source": g.source, "statistics": g.statistics}
                  for g in analysis.gates.values()},
        "rule_notes": dict(analysis.rule_notes),
        "shape_notes": list(analysis.shape_notes),
        "stops": [{"node": s.node, "op": s.op, "reason": s.reason, "tensors_lost": s.lost}
                  for s in analysis.stops],
        "pieces": {out: [{"tensor": p.name, "axis": p.axis,  # bounds: null where they depend on the size
                          "start": p.start if analysis.unknown_size is None else None,
                          "stop": p.stop if analysis.unknown_size is None else None} for p in cut]
                   for out, cut in analysis.pieces.items()},
    }


def _partial_reach(row: dict[str, Any], axes: Sequence[tuple[str, int]]) -> str:
    """', seeing only H 0-62 of the input': a global row whose mixed positions miss an end; or,
    where its units together see the whole input but not each of them, that (``axes``: each
    input spatial axis's name and size)."""
    parts = [f"{name} {reach[0]}-{reach[1]}" for (name, n), reach in zip(axes, row["global_reach"])
             if reach is not None and reach != [0, n - 1]]
    if parts:
        return f", seeing only {', '.join(parts)} of the input"
    if row["covers_input"] is False:  # all units together see the input, not each (attention's queries)
        return ", not every unit seeing the whole input (each: boxes --clip)"
    return ""


def input_axes(analysis: Analysis) -> list[tuple[str, int]]:
    """(name, size) of each input spatial axis (size 0 where unknown)."""
    return [(name, int(analysis.input_shape[a] or 0)) for name, a in zip(analysis.axis_names, analysis.spatial_axes)]


GATES_SHOWN = 3  # gate nodes named in a table's note; JSON lists them all


def row_note(row: dict[str, Any], axes: Sequence[tuple[str, int]], gates_named: int = GATES_SHOWN) -> str:
    """The note of an end-point row (``endpoint_rows``; ``axes``: ``input_axes``): size
    dependence, mixed strides, reversal, where a global field comes from and what it sees, the
    gates a local field holds (``gates_named`` of them named; 0 where lines below name them)."""
    note = []
    by_size = [p for p in row["P"] if isinstance(p, dict)]
    if by_size:
        ops = dict.fromkeys(o for p in by_size for o in p["ops"])
        note.append(f"P depends on the input size (ops {', '.join(ops)})")
    elif row["size_dependent"]:
        note.append(f"depends on input size ({row['size_dependent']})")
    if not row["shift_invariant"]:
        note.append("mixed strides: r is the largest extent")
    if any((isinstance(s, int) and s < 0) or (isinstance(s, str) and s.startswith("-")) for s in row["S"]):
        note.append("reversed (S < 0): unit 0 sees the far end")
    if any(row["global"]):
        note.append("global from " + next(g for g in row["global"] if g) + _partial_reach(row, axes))
    if row["gates"]:
        note.append(gates_note(row["gates"], gates_named) + ("" if gates_named else " (named below)"))
    if row["upper_bound_from"]:
        note.append(f"an upper bound from {row['upper_bound_from']} (folded positions put back)")
    return "; ".join(note)


COVERS_TEXT = {True: "yes", False: "no", None: "depends on size"}


def _table_rows(rows: list[dict[str, Any]], axes: Sequence[tuple[str, int]],
                gates_named: int = GATES_SHOWN) -> list[list[Any]]:
    """Table cells of the end-point rows (``row_note`` says what ``gates_named`` does)."""
    return [[row["tensor"], row["op"], "x".join("?" if d is None else str(d) for d in row["shape"]),
             per_axis(row["r"]), per_axis(row["S"]), per_axis(row["P"]), COVERS_TEXT[row["covers_input"]],
             "yes" if row["aligned"] else f"NO ({row['misaligned_at']})", row_note(row, axes, gates_named)]
            for row in rows]


def gates_note(gates: Sequence[str], named: int = GATES_SHOWN) -> str:
    """'local (gates held constant); global via 2 gates: a, b': what a gated row's r, S, P are
    (the first ``named`` gate nodes named; none when 0)."""
    shown = ", ".join(gates[:named]) + (", ..." if len(gates) > named else "")
    return (f"local field, gates held constant; global via {len(gates)} "
            f"gate{'s' if len(gates) > 1 else ''}" + (f": {shown}" if named else ""))


HEADERS = ["tensor", "op", "shape", "r", "S", "P", "covers input", "aligned", "note"]


def json_text(data: Any, indent: int | None = 2, separators: tuple[str, str] | None = None) -> str:
    """The one JSON writer of every command: an undefined number (NaN, infinite) becomes null,
    since JSON has neither (json.dumps would print NaN, which parsers reject)."""
    return json.dumps(_finite(data), indent=indent, separators=separators, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def tabular(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, before: Sequence[str] = (),
            after: Sequence[str] = (), numparse: bool = True) -> str:
    """Rows as CSV, or as a table (``simple``; ``github`` for markdown) between the ``before`` and
    ``after`` paragraphs (``numparse`` False keeps cells such as '+6' as written)."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(headers)
        writer.writerows(rows)
        return buf.getvalue()
    style = "github" if fmt == "markdown" else "simple"
    table = tabulate(rows, headers=headers, tablefmt=style, disable_numparse=not numparse)
    return "\n\n".join(p for p in [*before, table, *after] if p)


def render(analysis: Analysis, names: Sequence[str], fmt: str = "table") -> str:
    """The report in one format; tables come with a summary of merges, global ops and stops."""
    if fmt == "json":
        return json_text(analysis_dict(analysis, names))
    rows = endpoint_rows(analysis, names)
    named = GATES_SHOWN if fmt == "csv" else 0  # a table's notes name them, a CSV has no notes
    return tabular(HEADERS, _table_rows(rows, input_axes(analysis), named), fmt, [_summary(analysis)],
                   _notes(analysis, names))


def layout_line(analysis: Analysis) -> str:
    """'layout NHWC: why' (how the input's spatial axes were chosen), for every output."""
    return f"layout {analysis.layout}: {analysis.layout_reason}"


def _summary(analysis: Analysis) -> str:
    axes = "x".join(f"{n}={'?' if analysis.input_shape[a] is None else analysis.input_shape[a]}"
                    for n, a in zip(analysis.axis_names, analysis.spatial_axes))
    verdict = "aligned" if analysis.aligned else f"MISALIGNED at {len({m.node for m in analysis.misaligned})} merge(s)"
    shape = _dims(analysis.input_shape)
    return (f"input '{analysis.input_name}' [{shape}] (spatial {axes}; "
            f"{layout_line(analysis)}){_other_inputs(analysis)}; "
            f"{len(analysis.endpoints)} tensors analysed, {len({m.node for m in analysis.merges})} "
            f"merges: {verdict}")


def _dims(shape: Sequence[int | None]) -> str:
    """'1, 3, ?, ?': a shape's dims, unknown ones as '?'."""
    return ", ".join("?" if d is None else str(d) for d in shape)


def _other_inputs(analysis: Analysis) -> str:
    """' (other inputs: h [1, 1, 128]; --input picks one)', where the model has more than one."""
    others = [f"{name} [{_dims(analysis.graph.shapes.get(name) or ())}]"
              for name in analysis.graph.inputs if name != analysis.input_name]
    return f" (other inputs: {', '.join(others)}; --input picks one)" if others else ""


NOTE_LINES = 10  # misaligned merges and global nodes listed in a table; JSON lists them all


def _phases(centres: tuple) -> str:
    """After an upsampling, the centre of unit u minus u*S for each u mod q ('' for one phase)."""
    if len(centres) < 2:
        return ""
    return f" centre-u*S by u mod {len(centres)}: {', '.join(str(number(c)) for c in centres)}"


def _unknown_size_lines(analysis: Analysis, names: Sequence[str]) -> list[str]:
    """At an unknown input size: how it was analysed, and each P that depends on the size with
    the residues of the size giving each value (the first NOTE_LINES)."""
    how = analysis.unknown_size
    if how is None:
        return []
    ops = ", ".join(how.ops) if how.ops else "none"
    where = "multiples of" if how.only_residue_0 else "one size per residue of the size modulo"
    lines = [(f"input size unknown: r and S hold at every size; P analysed at {where} the strides' "
              f"product ({', '.join(map(str, how.period))}) and checked at {'x'.join(map(str, how.sizes[-1]))}; "
              f"ops whose padding depends on the size: {ops}")]
    if how.only_residue_0:
        lines.append(f"the strides multiply to {max(how.period)}, more sizes than rfgraph analyses one by one; "
                     f"P is the same at every size since no op's padding depends on it; the sizes the model "
                     f"runs at were not searched")
    if how.runs_at is not None:
        runs_at: dict[str, list[str]] = {}  # residues -> axes
        for axis_name, period in zip(analysis.axis_names, how.period):
            text = f"n = {', '.join(map(str, sorted({k % period for k in how.runs_at})))} (mod {period})"
            runs_at.setdefault(text, []).append(axis_name)
        where = "; ".join(f"{text} along {', '.join(axes)}" for text, axes in runs_at.items())
        lines.append(f"the model runs only at sizes {where}; at the others {how.cannot_run}")
    varying = [analysis[n] for n in names if any(analysis[n].P_at_unknown_size)]
    for ep in varying[:NOTE_LINES]:
        by_text: dict[str, list[str]] = {}
        for axis, pb in enumerate(ep.P_at_unknown_size):
            if pb is not None:
                by_text.setdefault(f"{pb.describe()} (ops {', '.join(pb.ops)})", []).append(analysis.axis_names[axis])
        for text, axes in by_text.items():
            lines.append(f"P of '{ep.name}' along {', '.join(axes)} depends on the input size n there: {text}")
    if len(varying) > NOTE_LINES:
        lines.append(f"... and {len(varying) - NOTE_LINES} more tensors whose P depends on the size "
                     f"(--format json lists them all)")
    return lines


def _notes(analysis: Analysis, names: Sequence[str] = ()) -> list[str]:
    """Misaligned merges and ops that mix all positions (the first NOTE_LINES of each), rules
    used, and stops, one line each; at an unknown input size, the Ps that depend on it."""
    misaligned: dict[tuple[str, int], Merge] = {}
    for m in analysis.misaligned:  # one line per merge and axis, in the order found
        misaligned.setdefault((m.node, m.axis), m)
    lines = _unknown_size_lines(analysis, names)
    for m in list(misaligned.values())[:NOTE_LINES]:
        br = "; ".join(f"{b.tensor}: S={number(b.S)} centre={number(b.centre)} r={b.r}{_phases(b.phases)}"
                       for b in m.branches)
        lines.append(f"misaligned merge {m.node} ({m.op}) along {analysis.axis_names[m.axis]}: {br}")
    if len(misaligned) > NOTE_LINES:
        lines.append(f"... and {len(misaligned) - NOTE_LINES} more misaligned merges along an axis "
                     f"(--format json lists them all)")
    gating = {analysis.graph.names[i] for i in analysis.gating_nodes()}  # named by their gate's line
    mixers = [(node, why) for node, why in analysis.global_at.items() if node not in gating]
    for node, why in mixers[:NOTE_LINES]:
        lines.append(f"global field from {node}: {why}")
    if len(mixers) > NOTE_LINES:
        lines.append(f"... and {len(mixers) - NOTE_LINES} more nodes that mix all positions")
    gates = [g for g in analysis.gates.values() if g.node not in gating]  # not those feeding statistics only
    for g in gates[:NOTE_LINES]:
        lines.append(f"gate {g.node} ({g.op}): its {g.statistics} held constant for the local fields"
                     if g.statistics else
                     f"gate {g.node} ({g.op}): '{g.tensor}' (the same at every position but for "
                     f"constant factors, pooled at {g.source}) held constant for the local fields")
    if len(gates) > NOTE_LINES:
        lines.append(f"... and {len(gates) - NOTE_LINES} more gates (--format json lists them all)")
    for node, why in list(analysis.bounds.items())[:NOTE_LINES]:
        lines.append(f"upper bound from {node}: {why}")
    for node, why in analysis.rule_notes.items():
        lines.append(f"rule used at node '{node}': {why}")
    lines += analysis.shape_notes
    for out, cut in analysis.pieces.items():
        lines.append(cut_text(out, cut, sized=analysis.unknown_size is None))
    for s in analysis.stops:
        lines.append(f"STOPPED at node '{s.node}' ({s.op}): {s.reason}; {s.lost} tensor(s) after it not analysed")
    return ["\n".join(lines)] if lines else []


# ---------------------------------------------------------------- the layer view (analyze --layers)

LAYER_HEADERS = ["layer", "op", "kernel", "stride", "pad", "dilation", "shape", "r", "S", "P", "delta r",
                 "mark", "folded"]


def layer_dicts(view: LayerView) -> list[dict[str, Any]]:
    """One plain row per layer (the JSON ``layers[]``): geometry, field, growth, marks, folded ops."""
    return [{
        "node": lay.node, "op": lay.op, "tensor": lay.output, "shape": list(lay.shape),
        "kernel": list(lay.geometry.kernel), "stride": [number(s) for s in lay.geometry.stride],
        "pads": [list(p) for p in lay.geometry.pads],
        "dilation": None if lay.geometry.dilation is None else list(lay.geometry.dilation),
        "geometry_from": lay.geometry.source,
        "r": [number(v) for v in lay.r], "S": [number(v) for v in lay.S], "P": [number(v) for v in lay.P],
        "delta_r": list(lay.delta_r), "covers_input": lay.covers_input, "marks": list(lay.marks),
        "folded": list(lay.folded),
    } for lay in view.layers]


def _pad_cell(pads: Sequence[Sequence[int | None]], source: str) -> str:
    """'1' for symmetric pads, '0/1' for begin/end, '-2' for a rule's offset (a crop), '?' for
    pads that depend on an unknown input size, '-' for an op reading every position."""
    def one(p: Sequence[int | None]) -> str:
        begin, end = p
        if begin is None:
            return "?" if source == "attributes" else "-"
        return str(begin) if end is None or end == begin else f"{begin}/{end}"
    return per_axis([one(p) for p in pads])


def _folded_cell(ops: Sequence[str]) -> str:
    """'BatchNormalization, Relu, Mul x2': the folded op types in order, repeats counted."""
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items())


def _delta_cell(delta: Sequence[int | None]) -> str:
    """'+6' per axis ('global' where the field became global here)."""
    return per_axis(["global" if d is None else f"+{d}" if d > 0 else str(d) for d in delta])


def _layer_table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[row["node"], row["op"], per_axis(["global" if k is None else k for k in row["kernel"]]),
             per_axis(row["stride"]), _pad_cell(row["pads"], row["geometry_from"]),
             "-" if row["dilation"] is None else per_axis(row["dilation"]),
             "x".join("?" if d is None else str(d) for d in row["shape"]),
             per_axis(row["r"]), per_axis(row["S"]), per_axis(row["P"]), _delta_cell(row["delta_r"]),
             "; ".join(row["marks"]), _folded_cell(row["folded"])] for row in rows]


def growth_line(view: LayerView) -> str:
    """'grows the field most: conv1 (+6), ...; 12 layers, 40 ops folded (...)'."""
    by_node = {lay.node: lay for lay in view.layers}
    top = ", ".join(f"{n} ({_delta_cell(by_node[n].delta_r)})" for n in view.largest_growth) or "none"
    before = f"; before the first layer: {_folded_cell(view.folded_before)}" if view.folded_before else ""
    return (f"{len(view.layers)} layers, {view.folded_count} elementwise/shape ops folded into them{before}; "
            f"grow the field most: {top}")


def render_layers(analysis: Analysis, view: LayerView, fmt: str = "table") -> str:
    """The layer view in one format (JSON: the analyze document of the default end points plus
    ``layers`` and ``largest_growth``)."""
    if fmt == "json":
        return json_text(layers_dict(analysis, view))
    return tabular(LAYER_HEADERS, _layer_table_rows(layer_dicts(view)), fmt, [_summary(analysis), growth_line(view)],
                   _notes(analysis), numparse=False)


def layers_dict(analysis: Analysis, view: LayerView) -> dict[str, Any]:
    """The layer view as plain data: the analyze document of the default end points, ``layers``,
    ``folded_before_first_layer`` and ``largest_growth``."""
    names = analysis.default_endpoints() or list(analysis.endpoints)[-1:]
    return {**analysis_dict(analysis, names), "layers": layer_dicts(view),
            "folded_before_first_layer": list(view.folded_before), "largest_growth": list(view.largest_growth)}


# ---------------------------------------------------------------- many models (analyze A B DIR/)

STATUSES = ("ok", "partial", "refused", "internal error")  # exit codes 0, 1, 2, 3


@dataclass(frozen=True)
class ModelReport:
    """One model of ``analyze A B DIR/``: its analysis and end points, or why it has none."""

    model: str  # as given (a folder's files as FOLDER/NAME.onnx)
    analysis: Analysis | None
    names: tuple[str, ...] = ()
    error: str | None = None
    partial: bool = False  # the analysis stopped before a graph output (the command's exit 1)

    @property
    def status(self) -> str:
        """'ok', 'partial' (stopped at an unsupported node), 'refused' (bad input) or 'internal error'."""
        if self.analysis is None:
            return "internal error" if (self.error or "").startswith("internal error") else "refused"
        return "partial" if self.partial else "ok"


def _model_table_rows(run: ModelReport, layers: bool) -> list[list[Any]]:
    """The model's end-point (or layer) rows with the model in front; an error or a stop as one
    row each, in the last column."""
    width = len(LAYER_HEADERS if layers else HEADERS)
    blank = ["-"] + [""] * (width - 2)
    if run.analysis is None:
        return [[run.model, *blank, f"error: {run.error}"]]
    if layers:
        rows = _layer_table_rows(layer_dicts(layer_view(run.analysis)))
    else:
        rows = _table_rows(endpoint_rows(run.analysis, run.names), input_axes(run.analysis))
    stops = [[*blank, f"STOPPED at node '{s.node}' ({s.op}): {s.reason}; {s.lost} tensor(s) after it not analysed"]
             for s in run.analysis.stops]
    return [[run.model, *row] for row in rows + stops]


def models_line(runs: Sequence[ModelReport | ModelPart]) -> str:
    """'3 models: 2 ok, 1 partial, 0 refused' (and internal errors when there are some)."""
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    shown = [f"{counts[s]} {s}" for s in STATUSES if s != "internal error" or counts[s]]
    return f"{len(runs)} model{'s' if len(runs) != 1 else ''}: {', '.join(shown)}"


def _model_doc(run: ModelReport, layers: bool) -> dict[str, Any] | None:
    """A model's analyze document (``layers``: its layer view's), None without an analysis."""
    if run.analysis is None:
        return None
    return layers_dict(run.analysis, layer_view(run.analysis)) if layers else analysis_dict(run.analysis, run.names)


@dataclass(frozen=True)
class ModelPart:
    """One model's share of ``render_models``' output, as plain data: a worker process of
    ``analyze --workers`` sends this, not the analysis with the model's weights."""

    model: str
    status: str
    error: str | None
    doc: dict[str, Any] | None  # its JSON document (json)
    rows: tuple[list[Any], ...]  # its table rows (other formats)


def model_part(run: ModelReport, fmt: str, layers: bool = False) -> ModelPart:
    """The part of ``render_models(..., fmt, layers)`` that ``run`` contributes."""
    if fmt == "json":
        return ModelPart(run.model, run.status, run.error, _model_doc(run, layers), ())
    return ModelPart(run.model, run.status, run.error, None, tuple(_model_table_rows(run, layers)))


def render_models(runs: Sequence[ModelReport | ModelPart], fmt: str = "table", layers: bool = False) -> str:
    """The end points (``layers``: the layers) of several models in one table with a model
    column, or one JSON document with an entry per model (parts made by ``model_part`` with the
    same ``fmt`` and ``layers``)."""
    parts = [r if isinstance(r, ModelPart) else model_part(r, fmt, layers) for r in runs]
    if fmt == "json":
        return json_text({"models": [{"model": p.model, "status": p.status, "error": p.error,
                                      "analysis": p.doc} for p in parts]})
    rows = [row for p in parts for row in p.rows]
    return tabular(["model", *(LAYER_HEADERS if layers else HEADERS)], rows, fmt, [models_line(parts)],
                   numparse=not layers)


# ---------------------------------------------------------------- two analyses side by side (--compare)

COMPARE_HEADERS = ["tensor", "match", "shape (A)", "shape (B)", "r (A)", "r (B)", "S (A)", "S (B)", "P (A)",
                   "P (B)", "differs"]


def comparison_dict(a: ModelReport, b: ModelReport, pairs: Sequence[Pair]) -> dict[str, Any]:
    """The comparison as plain data: both analyses' documents and one row per matched pair."""
    assert a.analysis is not None and b.analysis is not None
    rows_a = {row["tensor"]: row for row in endpoint_rows(a.analysis, [p.a for p in pairs if p.a])}
    rows_b = {row["tensor"]: row for row in endpoint_rows(b.analysis, [p.b for p in pairs if p.b])}
    return {
        "a": {"model": a.model, "status": a.status, "analysis": analysis_dict(a.analysis, a.names)},
        "b": {"model": b.model, "status": b.status, "analysis": analysis_dict(b.analysis, b.names)},
        "rows": [{"match": p.match, "a": rows_a[p.a] if p.a else None, "b": rows_b[p.b] if p.b else None,
                  "differs": list(p.differs)} for p in pairs],
        "differing": sum(bool(p.differs) for p in pairs),
    }


def _compare_table_rows(doc: dict[str, Any]) -> list[list[Any]]:
    out = []
    for row in doc["rows"]:
        a, b = row["a"], row["b"]
        names = [x["tensor"] for x in (a, b) if x]
        cells = [names[0] if len(set(names)) == 1 else " / ".join(names), row["match"]]
        for key, show in (("shape", lambda v: "x".join("?" if d is None else str(d) for d in v)),
                          ("r", per_axis), ("S", per_axis), ("P", per_axis)):
            cells += [show(x[key]) if x else "-" for x in (a, b)]
        out.append([*cells, ", ".join(row["differs"]) if a and b else row["match"]])
    return out


def render_comparison(a: ModelReport, b: ModelReport, pairs: Sequence[Pair], fmt: str = "table") -> str:
    """Two analyses side by side per end point, the quantities that differ named in 'differs'."""
    doc = comparison_dict(a, b, pairs)
    if fmt == "json":
        return json_text(doc)
    head = [f"{label}: {run.model}: input '{run.analysis.input_name}' "
            f"[{', '.join('?' if d is None else str(d) for d in run.analysis.input_shape)}]"
            f"{'' if run.status == 'ok' else ' (' + run.status + ')'}"
            for label, run in (("A", a), ("B", b)) if run.analysis is not None]
    head.append(f"{doc['differing']} of {len(pairs)} end points differ in r, S or P")
    return tabular(COMPARE_HEADERS, _compare_table_rows(doc), fmt, ["\n".join(head)], numparse=False)
