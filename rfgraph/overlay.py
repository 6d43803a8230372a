"""Pixel-exact pictures of one unit's field: the input image, its ERF heatmap and its TRF box.

Conventions: a picture is the model's input grid (H x W input pixels, the image resized to it)
magnified by an integer ``scale``, so input pixel (y, x) covers picture pixels
[y*scale, (y+1)*scale) x [x*scale, (x+1)*scale).  The TRF box is the region [u0, v0] per axis
(inclusive, from ``EndPoint.region``) clipped to the input, outlined ``BOX_WIDTH`` pixels wide
inside its outer edge in ``BOX_COLOUR``.  The ERF is divided by its maximum and coloured with
``CMAP``; over an image it is blended with weight ``alpha * value``.  1-D inputs are drawn as a
strip ``STRIP`` input pixels tall; 3-D inputs (T, H, W) as a row of H x W frames ``FRAME_GAP``
picture pixels apart (at most ``MAX_FRAMES``), one ERF scale for all of them, the box on the frames
the region spans.  Needs Pillow and matplotlib (its colour maps), imported lazily.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RFGraphError
from .inputs import read_image
from .outputs import write_atomically

Region = Sequence[tuple[int, int]]
BOX_COLOUR = (0, 255, 255)  # cyan: absent from the 'inferno' map, so the box is always visible
BOX_WIDTH = 2
CMAP = "inferno"
STRIP = 8
MAX_FRAMES = 16  # frames of a 3-D input drawn at most
FRAME_GAP = 4  # picture pixels between two frames
GAP_COLOUR = (32, 32, 32)


def _pil() -> Any:
    """The PIL.Image module, or a one-line error naming the extra."""
    try:
        from PIL import Image
    except ImportError:
        raise RFGraphError("images need Pillow: pip install 'rfgraph[report]'") from None
    return Image


def grid_size(input_shape: Sequence[int], spatial_axes: Sequence[int]) -> tuple[int, int]:
    """(H, W) of the picture's input grid; a 1-D input is a strip STRIP pixels tall, a 3-D one
    (T, H, W) a row of H x W frames (``input_frames``)."""
    sizes = [int(input_shape[a]) for a in spatial_axes]
    if len(sizes) == 1:
        return STRIP, sizes[0]
    if len(sizes) in (2, 3):
        return sizes[-2], sizes[-1]
    raise RFGraphError(f"pictures need a 1-D, 2-D or 3-D input; this one has {len(sizes)} spatial axes")


def input_frames(input_shape: Sequence[int], spatial_axes: Sequence[int], region: Region) -> list[int] | None:
    """The frames of a 3-D input drawn for ``region`` (``frame_indices``); None for 1-D and 2-D."""
    if len(spatial_axes) != 3:
        return None
    return frame_indices(int(input_shape[spatial_axes[0]]), (int(region[0][0]), int(region[0][1])))


def region_2d(region: Region, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, cols) of a region; a 1-D region spans every row of the strip, a 3-D one's rows
    and columns are those inside each frame."""
    if len(region) == 1:
        return (0, height - 1), (int(region[0][0]), int(region[0][1]))
    return (int(region[-2][0]), int(region[-2][1])), (int(region[-1][0]), int(region[-1][1]))


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resized (bilinear) to ``size`` = (H, W): uint8 array (H, W, 3)."""
    _pil()  # the one-line "needs Pillow" error of the picture commands
    return read_image(path, "RGB", size)


def blank_image(size: tuple[int, int]) -> np.ndarray:
    """A neutral grey background of ``size`` = (H, W), used when no image is given."""
    return np.full((size[0], size[1], 3), 96, dtype=np.uint8)


def display_scale(size: tuple[int, int], target: int = 384, largest: int = 16) -> int:
    """Integer magnification bringing the longer side near ``target`` pixels (1 for big inputs)."""
    return int(max(1, min(largest, target // max(size))))


def colourise(erf: np.ndarray, cmap: str = CMAP, top: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), normalised values in [0, 1]) of an ERF map divided by its maximum
    (or by ``top``: one scale for several frames)."""
    try:
        from matplotlib import colormaps
    except ImportError:
        raise RFGraphError("heatmaps need matplotlib: pip install 'rfgraph[report]'") from None
    values = np.abs(np.asarray(erf, dtype=np.float64))
    if top is None:
        top = float(values.max()) if values.size else 0.0
    values = values / top if top > 0 else np.zeros_like(values)
    rgb = (colormaps[cmap](values)[..., :3] * 255).round().astype(np.uint8)
    return rgb, values


def erf_2d(erf: np.ndarray, height: int) -> np.ndarray:
    """The ERF as a 2-D map: 1-D maps are repeated over the strip's rows."""
    erf = np.asarray(erf)
    return np.repeat(erf[None, :], height, axis=0) if erf.ndim == 1 else erf


def box_pixels(region: Region, size: tuple[int, int], scale: int) -> tuple[int, int, int, int] | None:
    """Outer edge (x0, y0, x1, y1), inclusive picture pixels, of a region clipped to the input;
    None when the region lies wholly outside."""
    (y0, y1), (x0, x1) = region_2d(region, size[0])
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, size[0] - 1), min(x1, size[1] - 1)
    if y0 > y1 or x0 > x1:
        return None
    return x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1


def compose(size: tuple[int, int], image: np.ndarray | None = None, erf: np.ndarray | None = None,
            region: Region | None = None, scale: int = 1, alpha: float = 0.7, top: float | None = None) -> np.ndarray:
    """The picture as uint8 (H*scale, W*scale, 3): image (or grey), ERF heatmap, TRF box.

    Without an image the heatmap is drawn opaque; over an image it is blended by ``alpha * value``.
    ``top``: the value drawn as the colour map's end (default the map's maximum).
    """
    base = (image if image is not None else blank_image(size)).astype(np.float64)
    if erf is not None:
        rgb, values = colourise(erf_2d(erf, size[0]), top=top)
        weight = alpha * values[..., None] if image is not None else np.ones_like(values)[..., None]
        base = base * (1 - weight) + rgb * weight
    pic = np.repeat(np.repeat(base.round().astype(np.uint8), scale, axis=0), scale, axis=1)
    box = box_pixels(region, size, scale) if region is not None else None
    if box is not None:
        draw_box(pic, box)
    return pic


def frame_indices(depth: int, span: tuple[int, int] | None = None) -> list[int]:
    """The frames of a 3-D input drawn: every one up to ``MAX_FRAMES``, else that many evenly
    spaced, with the first and last frames of ``span`` (the region along T, clipped) among them."""
    if depth <= MAX_FRAMES:
        return list(range(depth))
    picked = {int(round(v)) for v in np.linspace(0, depth - 1, MAX_FRAMES)}
    if span is not None:
        lo, hi = max(span[0], 0), min(span[1], depth - 1)
        if lo <= hi:
            picked = set(sorted(picked, key=lambda t: (min(abs(t - lo), abs(t - hi)), t))[2:]) | {lo, hi}
    return sorted(picked)


def draw(input_shape: Sequence[int], spatial_axes: Sequence[int], image: np.ndarray | None,
         erf: np.ndarray | None, region: Region, scale: int) -> np.ndarray:
    """The picture of one unit over a 1-D, 2-D (``compose``) or 3-D input (``compose_frames``)."""
    if len(spatial_axes) == 3:
        return compose_frames([int(input_shape[a]) for a in spatial_axes], image, erf, region, scale)[0]
    return compose(grid_size(input_shape, spatial_axes), image, erf, region, scale)


def compose_frames(sizes: Sequence[int], image: np.ndarray | None = None, erf: np.ndarray | None = None,
                   region: Region | None = None, scale: int = 1) -> tuple[np.ndarray, list[int]]:
    """A 3-D input's picture: frames (``frame_indices``) side by side, ``FRAME_GAP`` apart, each
    ``compose``d with the ERF's slice on one colour scale (the whole map's maximum) and the box of
    the region's H x W extent on the frames its T extent spans; returns (picture, frames)."""
    depth, size = int(sizes[0]), (int(sizes[1]), int(sizes[2]))
    frames = frame_indices(depth, None if region is None else (int(region[0][0]), int(region[0][1])))
    top = None if erf is None else float(np.abs(np.asarray(erf, dtype=np.float64)).max())
    gap = np.empty((size[0] * scale, FRAME_GAP, 3), np.uint8)
    gap[:] = GAP_COLOUR
    parts: list[np.ndarray] = []
    for t in frames:
        inside = region is not None and region[0][0] <= t <= region[0][1]
        parts += [gap] if parts else []
        parts.append(compose(size, image, None if erf is None else np.asarray(erf)[t],
                             region if inside else None, scale, top=top))
    return np.concatenate(parts, axis=1), frames


def draw_box(pic: np.ndarray, box: tuple[int, int, int, int], width: int = BOX_WIDTH) -> None:
    """Outline ``box`` (x0, y0, x1, y1 inclusive) in BOX_COLOUR, ``width`` pixels inside its edge."""
    x0, y0, x1, y1 = box
    w = max(1, min(width, (x1 - x0 + 1 + 1) // 2, (y1 - y0 + 1 + 1) // 2))
    pic[y0:y0 + w, x0:x1 + 1] = BOX_COLOUR
    pic[y1 - w + 1:y1 + 1, x0:x1 + 1] = BOX_COLOUR
    pic[y0:y1 + 1, x0:x0 + w] = BOX_COLOUR
    pic[y0:y1 + 1, x1 - w + 1:x1 + 1] = BOX_COLOUR


def png_bytes(pic: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 array."""
    buf = io.BytesIO()
    _pil().fromarray(pic, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI (the HTML report embeds every picture)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_png(pic: np.ndarray, path: str | Path) -> Path:
    """Write a picture as PNG, atomically, with a one-line error when the path cannot be written."""
    data = png_bytes(pic)
    return write_atomically(Path(path), lambda tmp: tmp.write_bytes(data))


def unit_erf(analysis: Any, tensor: str, index: Sequence[int] | None, runs: int = 16, method: str = "grad",
             inputs: str = "gaussian", seed: int = 0, progress: bool = False, step_back: bool = False) -> Any:
    """The ERF (``rfgraph.erf.compute_erf``) of one unit of ``tensor`` (None: the centre), on the
    analysed model, read with the analysis's options (its rules and assume-pointwise choice; its
    shapes and fills are already in the loaded model); ``step_back`` as ``compute_erfs`` says."""
    from .erf import compute_erf

    unit = None if index is None else analysis[tensor].tensor_index(index)  # as the ERF engine indexes it
    options = replace(analysis.options, input_shapes={}, fill={}, input_name=analysis.input_name,
                      layout=analysis.layout)
    result = compute_erf(analysis.graph.model, tensor, unit=unit, runs=runs, method=method,
                         inputs=inputs, seed=seed, progress=progress, options=options, step_back=step_back)
    if result.input_name != analysis.input_name:
        raise RFGraphError(f"the ERF engine differentiates w.r.t. input '{result.input_name}', "
                           f"not '{analysis.input_name}'; drop --input or --no-erf")
    return result


__all__ = ["BOX_COLOUR", "BOX_WIDTH", "CMAP", "box_pixels", "colourise", "compose", "compose_frames", "data_uri",
           "display_scale", "draw", "draw_box", "frame_indices", "grid_size", "input_frames", "load_image",
           "png_bytes", "region_2d",
           "save_png", "unit_erf"]
