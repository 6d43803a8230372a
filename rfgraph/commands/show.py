"""``rfgraph show``: one output unit's TRF box and ERF heatmap over an image, as a PNG."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from .. import budgets
from ..errors import RFGraphError
from ..outputs import check_output
from ..report import json_text, number, numeric
from ._common import add_model_args, load_analysis, model_errors

EXAMPLES = """examples:
  rfgraph show model.onnx --image photo.jpg --output feat --index 3,4 -o overlay.png
  rfgraph show model.onnx --output feat -o centre.png          centre unit over a grey background
  rfgraph show model.onnx --output feat --index 0,0 --no-erf -o box.png
  rfgraph show model.onnx --image photo.jpg --output feat --runs 64 --format json -o o.png

The image is resized to the model's input size; the cyan box is the unit's theoretical receptive
field (clipped to the input), the heatmap its effective receptive field (mean |input gradient| over
--runs random inputs, Luo et al. 2016) divided by its maximum.  A 3-D input (video, volume) is drawn
as a row of frames on one colour scale, the box on the frames the field spans.  JSON schema:
docs/json_schema.md.

exit codes: 0 picture written; 2 unreadable model or image, unknown tensor, bad index."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="TRF box and ERF heatmap of one output unit over an image (PNG)",
                       description="Draw one output unit's theoretical receptive field (box) and "
                                   "effective receptive field (heatmap) over an image.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--output", "--erf-output", required=True, metavar="NAME", help="tensor whose unit is shown")
    p.add_argument("--index", metavar="I,J", help="unit index along the spatial axes (default: centre unit)")
    p.add_argument("--image", metavar="FILE", help="picture to draw on (PNG/JPEG...; default: grey)")
    p.add_argument("-o", "--out", required=True, metavar="FILE.png", help="where to write the PNG")
    p.add_argument("--runs", "--erf-runs", type=int, default=16, help="random inputs averaged for the ERF (default 16)")
    p.add_argument("--method", "--erf-method", choices=("grad", "fd"), default="grad",
                   help="ERF gradients: exact VJP graph (grad) or finite differences (fd)")
    p.add_argument("--erf-inputs", "--inputs", default="gaussian", metavar="KIND",
                   help="ERF inputs: gaussian, uniform or a folder of images (default gaussian)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the ERF inputs")
    p.add_argument("--no-erf", action="store_true", help="draw the TRF box only")
    p.add_argument("--scale", type=int, help="pixels per input pixel (default: longer side ~384 px)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="what to print about the picture (default: text)")
    p.set_defaults(func=run)


def parse_index(text: str | None, units: Sequence[int | None]) -> tuple[int, ...]:
    """``"3,4"`` -> (3, 4); None -> the centre unit ((n - 1) // 2 per axis)."""
    if text is None:
        return tuple((n - 1) // 2 if n else 0 for n in units)
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise RFGraphError(f"--index '{text}': expected integers like 3,4") from None


def run(args: argparse.Namespace) -> int:
    from .. import overlay

    quiet = bool(getattr(args, "quiet", False))
    if args.runs < 1:
        raise RFGraphError("--runs must be at least 1")
    args.out = str(check_output(args.out, suffix=".png", what="-o",
                                inputs=[args.model, args.image, args.erf_inputs, *args.rules]))
    analysis = load_analysis(args, needs_size="show")
    if args.output in analysis.pieces and args.index:  # a detection head's output: an anchor's index
        args.output, (unit,) = analysis.in_piece(args.output, [parse_index(args.index, (None,))])
        args.index = ",".join(map(str, unit))
    ep = analysis[args.output]
    sizes = tuple(analysis.input_shape[a] for a in analysis.spatial_axes)
    if ep.is_global and not ep.reads_known(sizes):
        raise RFGraphError(f"'{ep.name}' has a global field (its units mix positions at node '{ep.global_at}') "
                           f"and the pixels each unit reads are not known: nothing to draw; pick a tensor "
                           f"before the global op (its ERF: rfgraph erf)")
    index = parse_index(args.index, ep.units)
    region = drawn_region(analysis, ep, index)  # (validates the index)
    size = overlay.grid_size(analysis.input_shape, analysis.spatial_axes)  # one frame's, for a 3-D input
    frames = overlay.input_frames(analysis.input_shape, analysis.spatial_axes,
                                  region if all(a <= b for a, b in region) else ep.region(index))
    image = overlay.load_image(args.image, size) if args.image else None
    count = len(frames or [0])
    scale = args.scale or overlay.display_scale((size[0], size[1] * count))
    if scale < 1:
        raise RFGraphError("--scale must be at least 1")
    budgets.IMAGE_PIXELS.check(math.prod(size) * count * scale * scale, f"a picture at --scale {scale}",
                               "use a smaller --scale")
    with model_errors(args.model):
        erf = None if args.no_erf else overlay.unit_erf(
            analysis, ep.name, index, args.runs, args.method, args.erf_inputs, args.seed,
            progress=not quiet and sys.stderr.isatty())
    pic = overlay.draw(analysis.input_shape, analysis.spatial_axes, image, None if erf is None else erf.erf,
                       region, scale)
    overlay.save_png(pic, args.out)
    doc = show_dict(analysis, ep, index, args, pic.shape, scale, erf, frames)
    if args.format == "json":
        print(json_text(doc))
    elif not quiet:
        print(_summary(doc))
    if args.format == "json" and not quiet:
        print(f"rfgraph: wrote {args.out}", file=sys.stderr)
    return 0


def drawn_region(analysis: Any, ep: Any, index: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The box drawn: the unit's region clipped to the input, the pixels it reads (empty, start
    past end, where it reads only padding)."""
    return ep.clipped_region(index, tuple(analysis.input_shape[a] for a in analysis.spatial_axes))


def show_dict(analysis: Any, ep: Any, index: tuple[int, ...], args: argparse.Namespace,
              shape: tuple[int, ...], scale: int, erf: Any, frames: list[int] | None = None) -> dict[str, Any]:
    """What was drawn, as plain data (schema: docs/json_schema.md, ``show``); ``frames``: the
    frames of a 3-D input drawn (the box is then the one inside each frame the region spans)."""
    from .. import overlay
    from ..metrics import metrics_dict

    read = drawn_region(analysis, ep, index)
    box = overlay.box_pixels(read, overlay.grid_size(analysis.input_shape, analysis.spatial_axes), scale)
    picture = {"path": str(args.out), "width": int(shape[1]), "height": int(shape[0]),
               "scale": scale, "box": None if box is None else list(box)}
    if frames is not None:
        picture.update(frames=frames, frame_pitch=int(shape[1] + overlay.FRAME_GAP) // len(frames))
    centre = ep.field_centre(index)
    return {
        "tensor": ep.name, "index": list(index), "axis_names": list(analysis.axis_names),
        "region": [None if f.is_global else list(f.region(u)) for f, u in zip(ep.fields, index)],
        "pixels_read": [list(r) if r[0] <= r[1] else None for r in read],
        "upper_bound_from": ep.bound_at,
        "centre": [None if c is None else numeric(c) for c in centre],
        "centre_exact": [None if c is None else number(c) for c in centre],
        "r": [number(v) for v in ep.r], "S": [number(v) for v in ep.S], "P": [number(v) for v in ep.P],
        "picture": picture,
        "image": args.image,
        "erf": None if erf is None else {"runs": erf.runs, "method": erf.method,
                                         "inputs": args.erf_inputs, "seed": args.seed,
                                         "metrics": metrics_dict(erf.metrics)},
    }


def _pixels(read: list[int] | None) -> str:
    return "nothing" if read is None else f"[{read[0]}, {read[1]}]"


def _summary(doc: dict[str, Any]) -> str:
    """One line saying what was written."""
    region = ", ".join(f"{n} [{r[0]}, {r[1]}]" if r is not None else f"{n} global (reads {_pixels(p)})"
                       for n, r, p in zip(doc["axis_names"], doc["region"], doc["pixels_read"], strict=True))
    pic = doc["picture"]
    erf = doc["erf"]
    box = "TRF box" if all(r is not None for r in doc["region"]) else "box of the pixels read"
    what = box if erf is None else f"{box} + ERF ({erf['runs']} runs, {erf['method']})"
    return (f"wrote {pic['path']} ({pic['width']}x{pic['height']} px, {pic['scale']} px per input "
            f"pixel): {what} of unit ({','.join(map(str, doc['index']))}) of '{doc['tensor']}', "
            f"region {region}" + (f" (an upper bound from {doc['upper_bound_from']}: folded positions "
                                  f"put back)" if doc["upper_bound_from"] else ""))
