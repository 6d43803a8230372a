"""Inputs and weights for ERF averaging (Luo et al. sec. 3): random or real input images, and random
re-initialisations of the weights that keep the graph.

Conventions: every draw comes from one ``numpy.random.Generator`` (deterministic under a seed);
Gaussian inputs are N(0, 1), uniform inputs U[0, 1) (non-negative, as in the support property);
images are resized to the input's spatial size, scaled to [0, 1], then normalised with the model's
per-channel mean and std (ImageNet's by default).
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .erf_conventions import Order, image_order
from .errors import RFGraphError
from .onnx_import import copy_model

FLOAT32 = np.dtype(np.float32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Ops whose weight operand (input 1, rank >= 2) is re-initialised; their bias (input 2) is zeroed.
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


class InputKind(str, Enum):
    """Where the N input samples come from."""

    GAUSSIAN = "gaussian"
    UNIFORM = "uniform"
    IMAGES = "images"


class Reinit(str, Enum):
    """Weight re-initialisation: keep the model's, all ones (Luo sec. 2.1), He or Glorot normal,
    or Luo's new initialisation (sec. 4.1): He with each kernel tap's scale growing from the centre
    outward (``periphery``), or its extreme, all weight on the kernel's corners (``corners``)."""

    NONE = "none"
    ONES = "ones"
    HE = "he"
    GLOROT = "glorot"
    PERIPHERY = "periphery"
    CORNERS = "corners"


DEFAULT_PERIPHERY_STRENGTH = 4.0


@dataclass(frozen=True)
class WeightInit:
    """A re-initialisation with its parameter: ``periphery:S`` gives a tap at normalised squared
    distance d2 from the kernel centre (corners: 1) the variance share 1 + S d2 (S = 0 is He)."""

    kind: Reinit
    strength: float = DEFAULT_PERIPHERY_STRENGTH

    @classmethod
    def parse(cls, spec: str | Reinit | WeightInit) -> WeightInit:
        """``none|ones|he|glorot|corners|periphery[:S]`` (the ``--reinit`` syntax)."""
        if isinstance(spec, WeightInit):
            return spec
        name, _, param = str(getattr(spec, "value", spec)).partition(":")
        try:
            kind = Reinit(name)
        except ValueError:
            raise RFGraphError(f"--reinit {spec}: choose one of {REINIT_CHOICES}") from None
        if param and kind is not Reinit.PERIPHERY:
            raise RFGraphError(f"--reinit {spec}: only 'periphery' takes a parameter (periphery:S)")
        strength = _strength(param, spec) if param else DEFAULT_PERIPHERY_STRENGTH
        return cls(kind, strength)


REINIT_CHOICES = "none, ones, he, glorot, corners, periphery[:S]"


def _strength(text: str, spec: object) -> float:
    """The S of ``periphery:S``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise RFGraphError(f"--reinit {spec}: the periphery strength must be a number >= 0")
    return value


def tap_variances(kernel: Sequence[int], how: WeightInit) -> np.ndarray:
    """Each kernel tap's share of the weight variance, mean 1 (so the layer's output variance is
    He's): uniform for He, 1 + S d2 for ``periphery``, only the corners for ``corners``."""
    offsets = [np.abs(np.arange(k) - (k - 1) / 2) for k in kernel]
    grids = np.meshgrid(*offsets, indexing="ij")
    if how.kind is Reinit.CORNERS:
        share = np.ones(tuple(kernel))
        for grid, k in zip(grids, kernel):
            share = share * (grid == (k - 1) / 2)
    elif how.kind is Reinit.PERIPHERY:
        d2 = sum(grid ** 2 for grid in grids)
        share = 1.0 + how.strength * (d2 / d2.max() if d2.max() > 0 else d2)
    else:
        share = np.ones(tuple(kernel))
    return share * (share.size / share.sum())


def random_inputs(kind: InputKind, shape: Sequence[int], rng: np.random.Generator,
                  dtype: np.dtype = FLOAT32) -> np.ndarray:
    """One batch of random inputs of ``shape`` (Gaussian N(0,1) or uniform U[0,1))."""
    if kind is InputKind.GAUSSIAN:
        return rng.standard_normal(shape).astype(dtype)
    if kind is InputKind.UNIFORM:
        return rng.random(shape).astype(dtype)
    raise ValueError(f"{kind} is not a random input kind")


def read_image(path: str | Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """An image converted to ``mode`` ("RGB", "L") and resized (bilinear) to ``size`` = (H, W), as
    uint8; a missing, truncated, non-image or oversized file (a decompression bomb: Pillow's
    pixel limit, its warning included) is a one-line RFGraphError naming the file."""
    try:
        from PIL import Image  # pillow is an optional dependency
    except ImportError as exc:
        raise RFGraphError("images need Pillow: pip install pillow") from exc
    path = Path(path)
    if not path.exists():
        raise RFGraphError(f"image '{path}' does not exist")
    if not path.is_file():
        raise RFGraphError(f"image '{path}' is not a regular file")
    # Image.Resampling is Pillow >= 9.1; 9.0 (allowed by pillow>=9) has only Image.BILINEAR
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert(mode).resize((size[1], size[0]), bilinear)
                return np.asarray(img, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RFGraphError(f"image '{path}' is too large to read safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise RFGraphError(f"image '{path}' could not be read ({exc})") from None


class ImageFolder:
    """PNG/JPEG images of a folder, loaded as normalised NCHW arrays of the model's input size."""

    def __init__(self, folder: str | Path, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RFGraphError(f"image folder '{folder}' does not exist; give a folder of "
                               "PNG/JPEG files, or --inputs gaussian|uniform")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise RFGraphError(f"no PNG/JPEG images in '{folder}'")
        self.mean, self.std = tuple(mean), tuple(std)

    def load(self, path: Path, shape: Sequence[int]) -> np.ndarray:
        """One image as a (C, H, W) array (C = 1 or 3 from ``shape``; H, W = the last two)."""
        channels, height, width = shape[-3], shape[-2], shape[-1]
        arr = read_image(path, "L" if channels == 1 else "RGB", (height, width)).astype(np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        mean = np.asarray(self.mean[:channels], np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std[:channels], np.float32).reshape(-1, 1, 1)
        return (arr - mean) / std

    def batches(self, shape: Sequence[int], count: int, rng: np.random.Generator,
                order: Order = Order.RANDOM) -> Iterator[np.ndarray]:
        """``count`` images in batches of shape[0], cycling through the folder in a seeded
        permutation (``random``) or in sorted file order (``sequential``)."""
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise RFGraphError(f"images need a 1- or 3-channel NCHW input; the model takes "
                               f"{tuple(shape)}")
        picks = [self.files[i] for i in image_order(len(self.files), count, Order(order), rng)]
        for start in range(0, count, shape[0]):
            chunk = [self.load(p, shape[1:]) for p in picks[start:start + shape[0]]]
            yield np.stack(chunk)


def reinitialise(model: onnx.ModelProto, how: Reinit | WeightInit | str,
                 rng: np.random.Generator) -> onnx.ModelProto:
    """A copy of ``model`` with the weights of Conv/ConvTranspose/Gemm/MatMul redrawn (same graph).

    ONES: every weight 1 (Luo sec. 2.1); HE: N(0, 2/fan_in); GLOROT: N(0, 2/(fan_in + fan_out));
    PERIPHERY / CORNERS: He, each conv tap's variance times ``tap_variances`` (Gemm/MatMul: He);
    biases of those ops are set to 0; other parameters (norms, embeddings) are kept.  Weights held
    by ``Constant`` nodes (Paddle exports) become initializers first; raises RFGraphError when
    there is no weight to redraw.
    """
    how = WeightInit.parse(how)
    out = copy_model(model)
    if how.kind is Reinit.NONE:
        return out
    weight_constants_to_initializers(out)
    inits = {i.name: i for i in out.graph.initializer}
    done: set[str] = set()
    drawn = 0
    for node in out.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for pos, name in enumerate(node.input):
            if name not in inits or name in done:
                continue
            arr = numpy_helper.to_array(inits[name])
            if not np.issubdtype(arr.dtype, np.floating):
                continue
            if pos == 2 and node.op_type != "MatMul":
                new = np.zeros_like(arr)
            elif arr.ndim >= 2:
                new, drawn = _draw(arr, how, node.op_type, rng), drawn + 1
            else:
                continue
            inits[name].CopyFrom(numpy_helper.from_array(new.astype(arr.dtype), name))
            done.add(name)
    if not drawn:
        raise RFGraphError(f"--reinit {how.kind.value}: no Conv/ConvTranspose/Gemm/MatMul weight is an "
                           "initializer or a Constant, so nothing would be re-initialised "
                           "(weights fed as graph inputs or computed are not redrawn); use "
                           "--reinit none")
    return out


def weight_constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn, in place, the ``Constant`` nodes whose float tensor ``value`` feeds a weight or bias
    slot of a WEIGHT_OPS node into initializers of the same name; returns ``model``."""
    graph = model.graph
    slots = {name for node in graph.node if node.op_type in WEIGHT_OPS
             for name in node.input[WEIGHT_OPS[node.op_type]:3]}
    keep = []
    for node in graph.node:
        tensor = _float_constant(node) if node.output and node.output[0] in slots else None
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return model


def _float_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a ``Constant`` node whose only attribute is a floating-point ``value``."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.attribute) != 1 or node.attribute[0].name != "value":
        return None
    tensor = onnx.TensorProto()
    tensor.CopyFrom(node.attribute[0].t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return tensor if np.issubdtype(dtype, np.floating) else None


def _draw(arr: np.ndarray, how: WeightInit, op: str, rng: np.random.Generator) -> np.ndarray:
    """New values for one weight tensor."""
    if how.kind is Reinit.ONES:
        return np.ones_like(arr)
    fan_in, fan_out = _fans(arr.shape, op)
    var = 2.0 / (fan_in + fan_out) if how.kind is Reinit.GLOROT else 2.0 / fan_in
    draw = rng.standard_normal(arr.shape) * math.sqrt(var)
    if op in ("Conv", "ConvTranspose") and arr.ndim > 2:
        draw = draw * np.sqrt(tap_variances(arr.shape[2:], how))
    return draw


def _fans(shape: Sequence[int], op: str) -> tuple[int, int]:
    """fan_in, fan_out of a weight: Conv (out, in/g, k...), ConvTranspose (in, out/g, k...),
    MatMul (in, out), Gemm (taken as (out, in) as torch exports Linear)."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    if op == "Conv":
        return shape[1] * receptive, shape[0] * receptive
    if op == "ConvTranspose":
        return shape[0] * receptive, shape[1] * receptive
    if op == "MatMul":
        return shape[-2], shape[-1]
    return shape[-1], shape[-2]
