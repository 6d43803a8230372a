"""One self-contained HTML page about a model's receptive fields (``rfgraph report``).

Sections: summary (input, end points with r, S, P per axis, alignment verdict), a per-layer table
sortable by any column, the tensor graph drawn with each tensor coloured by its field size r and
misaligned merges ringed in red, ERF heatmaps with the TRF box (``rfgraph.erf`` via
``rfgraph.overlay``), and an interactive view: hovering an output cell draws its input region
over the (user-supplied) image.  Every number comes from the ``Analysis`` API or the ERF engine;
the page only looks them up (per-axis regions are embedded as computed by ``EndPoint.regions``).
CSS and JavaScript are inlined from ``rfgraph/templates`` (Jinja2); nothing is fetched when viewed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import networkx as nx

from . import __version__, overlay
from .analysis import Analysis, EndPoint
from .errors import RFGraphError
from .outputs import write_text
from .report import COVERS_TEXT, analysis_dict, endpoint_rows, input_axes, json_text, number, per_axis, row_note

GRAPH_DX, GRAPH_DY, GRAPH_MARGIN = 190, 46, 30  # graph layout: column and row pitch, margin (px)
# A label is two lines (name; op and r), each short enough to stay inside its column at 11 px.
LABEL_CHARS = 22
GLOBAL_COLOUR = "#9e9e9e"
GRAPH_CMAP = "viridis"
ERF_METRICS = ("erf_size", "erf_extent", "gaussian_radius", "erf_trf_ratio")


@dataclass(frozen=True)
class ERFOptions:
    """Which end points get an ERF heatmap, and how the ERF is averaged."""

    outputs: Sequence[str] | None = None  # None: the default end points with a local field
    limit: int = 4
    runs: int = 8
    method: str = "grad"
    inputs: str = "gaussian"
    seed: int = 0
    progress: bool = False


@dataclass
class Report:
    """The page and the machine-readable summary printed by ``--format json``."""

    html: str
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        """Write the page atomically; a one-line error when the path cannot be written."""
        return write_text(Path(path), self.html)


# ------------------------------------------------------------------------------------ tables


def sort_key(values: Sequence[Any]) -> float:
    """Numeric sort key of a per-axis cell (ints or "p/q" strides): the largest value; global
    (None) sorts last."""
    if any(v is None for v in values):
        return 1e18
    return max(float(Fraction(v)) for v in values) if values else 0.0


def layer_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per analysed tensor (topological order), with display text and sort keys."""
    rows = []
    axes = input_axes(analysis)
    for pos, row in enumerate(endpoint_rows(analysis, list(analysis.endpoints))):
        rows.append({**row, "pos": pos, "shape_text": "x".join(str(d) for d in row["shape"]),
                     "note": row_note(row, axes), "covers_text": COVERS_TEXT[row["covers_input"]],
                     "r_text": per_axis(row["r"]), "S_text": per_axis(row["S"]),
                     "P_text": per_axis(row["P"]), "r_key": sort_key(row["r"]),
                     "S_key": sort_key(row["S"]),
                     "P_key": sort_key(row["P"])})
    return rows


def verdict(analysis: Analysis) -> str:
    """The alignment verdict in words."""
    if analysis.aligned:
        return "aligned: every merge satisfies conditions (12)-(13)"
    nodes = sorted({m.node for m in analysis.misaligned})
    return f"MISALIGNED at {len(nodes)} merge(s): {', '.join(nodes)}"


# ------------------------------------------------------------------------------------ graph


def tensor_dag(analysis: Analysis) -> nx.DiGraph:
    """Analysed tensors as a DAG: an edge a -> b when a node reads a and writes b."""
    dag = nx.DiGraph()
    dag.add_nodes_from(analysis.endpoints)
    for node in analysis.graph.nodes:
        ins = [t for t in node.input if t in analysis.endpoints]
        outs = [t for t in node.output if t in analysis.endpoints]
        dag.add_edges_from((a, b) for a in ins for b in outs)
    return dag


def r_colour(r: Sequence[int | None], largest: int) -> str:
    """Hex colour of a field size on a log scale from 1 to ``largest``; grey when global."""
    sizes = [v for v in r if v is not None]
    if len(sizes) != len(r) or not r:
        return GLOBAL_COLOUR
    from matplotlib import colormaps

    t = math.log(max(sizes)) / math.log(largest) if largest > 1 else 0.0
    red, green, blue, _ = colormaps[GRAPH_CMAP](min(max(t, 0.0), 1.0))
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (red, green, blue)))


def graph_drawing(analysis: Analysis) -> dict[str, Any]:
    """Node positions (layer = longest path from the input), colours, labels and edges."""
    dag = tensor_dag(analysis)
    order = {name: k for k, name in enumerate(analysis.endpoints)}
    layers = [sorted(g, key=order.__getitem__) for g in nx.topological_generations(dag)]
    widest = max((len(g) for g in layers), default=1)
    largest = max((r for r in map(_largest_r, analysis.endpoints.values()) if r is not None), default=1)
    bad = {m.output for m in analysis.misaligned}
    pos, nodes = {}, []
    for depth, names in enumerate(layers):
        for k, name in enumerate(names):
            x = GRAPH_MARGIN + (k + (widest - len(names)) / 2) * GRAPH_DX
            y = GRAPH_MARGIN + depth * GRAPH_DY
            pos[name] = (x, y)
            ep = analysis.endpoints[name]
            nodes.append({"name": name, "x": x, "y": y, "op": ep.op, "label": _short(name, LABEL_CHARS),
                          "detail": _short(ep.op, 12) + " r=" + per_axis(ep.r), "colour": r_colour(ep.r, largest),
                          "r_text": per_axis(ep.r), "misaligned": name in bad,
                          "title": _node_title(ep)})
    edges = [{"d": _edge_path(pos[a], pos[b]), "misaligned": b in bad} for a, b in dag.edges]
    return {"nodes": nodes, "edges": edges, "width": GRAPH_MARGIN * 2 + widest * GRAPH_DX,
            "height": GRAPH_MARGIN * 2 + max(len(layers) - 1, 0) * GRAPH_DY + 10,
            "largest": largest, "legend": [r_colour((v,), largest) for v in _legend_steps(largest)],
            "legend_values": _legend_steps(largest), "growth": growth_curve(analysis, layers)}


def growth_curve(analysis: Analysis, layers: list[list[str]], width: int = 640,
                 height: int = 150) -> dict[str, Any]:
    """Largest local r at each depth, as points of a log-scale chart (global tensors left out)."""
    points = []
    for depth, names in enumerate(layers):
        sizes = [r for r in (_largest_r(analysis[n]) for n in names) if r is not None]
        if sizes:
            points.append((depth, max(sizes)))
    top = max((r for _, r in points), default=1)
    deepest = max(len(layers) - 1, 1)
    scale = math.log(top) if top > 1 else 1.0
    plotted = [{"depth": d, "r": r, "x": 40 + d / deepest * (width - 60),
                "y": height - 20 - (math.log(r) / scale) * (height - 40)} for d, r in points]
    return {"points": plotted, "width": width, "height": height, "top": top,
            "polyline": " ".join(f"{p['x']:.1f},{p['y']:.1f}" for p in plotted)}


def _largest_r(ep: EndPoint) -> int | None:
    """The largest r over the axes of a local end point; None when global or without axes
    (r is None exactly on global axes)."""
    sizes = [v for v in ep.r if v is not None]
    return max(sizes) if sizes and not ep.is_global else None


def _legend_steps(largest: int, count: int = 6) -> list[int]:
    """Field sizes spaced evenly on the log scale from 1 to ``largest``."""
    if largest <= 1:
        return [1]
    return sorted({round(largest ** (i / (count - 1))) for i in range(count)})


def _short(name: str, width: int = 18) -> str:
    """A tensor name cut to ``width`` characters (keeping its end, where names differ)."""
    return name if len(name) <= width else "\u2026" + name[-(width - 1):]


def _node_title(ep: EndPoint) -> str:
    """Tooltip: tensor, op, shape and its field."""
    status = "aligned" if ep.aligned else f"misaligned (at {ep.misaligned_at})"
    return (f"{ep.name}\n{ep.op} {'x'.join(str(d) for d in ep.shape)}\nr = {per_axis(ep.r)}, "
            f"S = {per_axis(ep.S)}, P = {per_axis(ep.P)}\n{status}")


def _edge_path(a: tuple[float, float], b: tuple[float, float]) -> str:
    """A vertical cubic Bezier from node a to node b."""
    mid = (a[1] + b[1]) / 2
    return f"M{a[0]:.1f},{a[1]:.1f} C{a[0]:.1f},{mid:.1f} {b[0]:.1f},{mid:.1f} {b[0]:.1f},{b[1]:.1f}"


# ------------------------------------------------------------------------------------ ERF cards


def erf_targets(analysis: Analysis, options: ERFOptions) -> list[str]:
    """Tensors that get a heatmap: the requested ones, else the first local default end points."""
    if options.outputs:
        for name in options.outputs:
            analysis[name]
        return list(options.outputs)
    local = [n for n in analysis.default_endpoints() if _carded(analysis[n])]
    return local[-options.limit:] if options.limit > 0 else []


def _pictured(ep: EndPoint) -> bool:
    """A local field over a 1-D or 2-D input: the hover view draws it."""
    return not ep.is_global and all(ep.units) and len(ep.fields) in (1, 2)


def _carded(ep: EndPoint) -> bool:
    """A local field over a 1-D, 2-D or 3-D input (drawn as frames): an ERF card draws it."""
    return not ep.is_global and all(ep.units) and len(ep.fields) in (1, 2, 3)


def centre_unit(ep: EndPoint) -> tuple[int, ...]:
    """The unit the ERF engine seeds by default: (n - 1) // 2 per axis (0 along an axis of
    positions the tensor no longer has: a global one)."""
    return tuple(((n or 1) - 1) // 2 for n in ep.units)


def erf_card(analysis: Analysis, name: str, options: ERFOptions) -> dict[str, Any]:
    """One heatmap: the ERF of the centre unit with its TRF box, or why it could not be computed."""
    from .metrics import metric_rows, metrics_dict

    ep = analysis[name]
    unit = centre_unit(ep)
    card: dict[str, Any] = {"tensor": name, "unit": list(unit), "region": None,
                            "r": [number(v) for v in ep.r]}
    if ep.is_global:
        return {**card, "error": f"'{name}' has a global field: no unit-level ERF to draw"}
    region = ep.region(unit)
    card["region"] = [list(r) for r in region]
    try:
        chosen = not options.outputs  # rfgraph picked the tensor: the centre may step back before a Softmax
        result = overlay.unit_erf(analysis, name, None if chosen else unit, options.runs, options.method,
                                  options.inputs, options.seed, options.progress, step_back=chosen)
    except RFGraphError as exc:
        return {**card, "error": str(exc)}
    size = overlay.grid_size(analysis.input_shape, analysis.spatial_axes)  # one frame's, for a 3-D input
    frames = overlay.input_frames(analysis.input_shape, analysis.spatial_axes, region)
    scale = overlay.display_scale(size, target=256) if frames is None else \
        overlay.display_scale((size[0], size[1] * len(frames)), target=768)
    pic = overlay.draw(analysis.input_shape, analysis.spatial_axes, None, result.erf, region, scale)
    box = None  # a row of frames has no single box
    if frames is None:
        box = list(overlay.box_pixels(region, size, scale) or ()) or None
    rows = {k: (v, d) for k, v, d in metric_rows(result.metrics)}
    return {**card, "picture": overlay.data_uri(overlay.png_bytes(pic)), "scale": scale,
            "width": int(pic.shape[1]), "height": int(pic.shape[0]), "box": box,
            "runs": result.runs, "method": result.method, "metrics": metrics_dict(result.metrics),
            "seeded": result.target.output,
            "shown": [(k, rows[k][0], rows[k][1]) for k in ERF_METRICS if k in rows]}


# ------------------------------------------------------------------------------------ interactive


def interactive_data(analysis: Analysis) -> dict[str, Any]:
    """Per-axis regions and centres of every unit of every local tensor (from the API)."""
    eps = {}
    for name, ep in analysis.endpoints.items():
        if not _pictured(ep):
            continue
        eps[name] = {"units": [int(n) for n in ep.units],  # type: ignore[arg-type]
                     "regions": [ep.regions(a).tolist() for a in range(len(ep.fields))],
                     "centres": [[float(ep.fields[a].centre(u)) for u in range(int(ep.units[a]))]  # type: ignore[arg-type]
                                 for a in range(len(ep.fields))],
                     "r": per_axis(ep.r), "S": per_axis(ep.S), "P": per_axis(ep.P)}
    ndim = len(analysis.spatial_axes)
    height, width = overlay.grid_size(analysis.input_shape, analysis.spatial_axes) if ndim in (1, 2) else (0, 0)
    default = next((n for n in reversed(analysis.default_endpoints()) if n in eps), next(iter(eps), None))
    zoom = 480 / max(height, width, 1)
    return {"ndim": ndim, "height": height, "width": width, "axis_names": list(analysis.axis_names),
            "endpoints": eps, "default": default,
            "display": [max(1, round(width * zoom)), max(1, round(height * zoom))]}


def background(analysis: Analysis, image: str | Path | None) -> str | None:
    """Data URI of the image resized to the input grid (grey without one); None for 3-D inputs."""
    if len(analysis.spatial_axes) not in (1, 2):
        return None
    size = overlay.grid_size(analysis.input_shape, analysis.spatial_axes)
    pic = overlay.load_image(image, size) if image else overlay.blank_image(size)
    return overlay.data_uri(overlay.png_bytes(pic))


# ------------------------------------------------------------------------------------ page


def _environment() -> Any:
    """The Jinja2 environment over ``rfgraph/templates`` (autoescaped HTML)."""
    try:
        import jinja2
    except ImportError:
        raise RFGraphError("the HTML report needs Jinja2: pip install 'rfgraph[report]'") from None
    return jinja2.Environment(loader=jinja2.PackageLoader("rfgraph", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              trim_blocks=True, lstrip_blocks=True)


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element ("</" and "<!--" cannot appear)."""
    return json_text(data, indent=None, separators=(",", ":")).replace("<", "\\u003c")


def build_report(analysis: Analysis, title: str, image: str | Path | None = None,
                 erf: ERFOptions | None = ERFOptions()) -> Report:
    """The page and its JSON summary; ``erf=None`` leaves the heatmaps out."""
    from markupsafe import Markup

    from .unknown_size import require_size

    require_size(analysis, "the report")

    defaults = analysis.default_endpoints() or list(analysis.endpoints)[-1:]
    cards = [erf_card(analysis, n, erf) for n in erf_targets(analysis, erf)] if erf else []
    summary = {**analysis_dict(analysis, defaults), "title": title, "image": str(image) if image else None,
               "erf": [{k: c.get(k) for k in ("tensor", "unit", "region", "runs", "method", "metrics", "error")}
                       for c in cards]}
    live = interactive_data(analysis)
    html = _environment().get_template("report.html.j2").render(
        title=title, version=__version__, analysis=analysis, verdict=verdict(analysis),
        summary=summary, end_rows=[r for r in layer_rows(analysis) if r["tensor"] in defaults],
        rows=layer_rows(analysis), graph=graph_drawing(analysis), cards=cards,
        background=background(analysis, image), live=live,
        data=Markup(script_json({"interactive": live})),  # noqa: S704 - our own JSON, "</" escaped
        image_name=Path(image).name if image else None)
    notes = [c["error"] for c in cards if c.get("error")]
    return Report(html, summary, notes)


def render_report(model: Any, out: str | Path, image: str | Path | None = None,
                  erf: ERFOptions | None = ERFOptions(), title: str | None = None,
                  **analyze_kwargs: Any) -> Report:
    """Write the report of ``model`` (anything ``analyze`` takes, or an ``Analysis`` such as
    ``rfgraph.from_torch``'s) to ``out``: the Python twin of ``rfgraph report``."""
    from .analysis import analyze

    analysis = model if isinstance(model, Analysis) else analyze(model, **analyze_kwargs)
    report = build_report(analysis, title or _title(model), image, erf)
    report.write(out)
    return report


def _title(model: Any) -> str:
    return Path(model).name if isinstance(model, (str, Path)) else "model"


__all__ = ["ERFOptions", "Report", "build_report", "erf_card", "graph_drawing", "interactive_data",
           "layer_rows", "render_report", "tensor_dag"]

