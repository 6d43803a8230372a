"""PaddlePaddle models (random init) exported by ``paddle.onnx.export`` (paddle2onnx), saved as ONNX.

Run with an interpreter that has paddlepaddle and paddle2onnx (a separate venv: ``pip install
paddlepaddle paddle2onnx packaging``):  ``VENV/bin/python benchmarks/census/collect_paddle.py
[--cache DIR] [--only NAME ...]``.  Each export runs in its own subprocess under a time limit; a
failure is a skip with its reason.  Besides ``paddle.vision.models``, a small dense-prediction net
(``seg_head``, in paddle_nets.py) carries what the classifiers do not: transposed and dilated convolutions, bilinear
and nearest interpolation, pixel shuffle, a non-global adaptive pool and SAME padding.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

# name -> (python expression building the layer: ``M`` = paddle.vision.models, ``nn``, ``F``; input shape)
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet50": ("M.resnet50()", (1, 3, 224, 224)),
    "resnext50_32x4d": ("M.resnext50_32x4d()", (1, 3, 224, 224)),
    "mobilenet_v1": ("M.mobilenet_v1()", (1, 3, 224, 224)),
    "mobilenet_v2": ("M.mobilenet_v2()", (1, 3, 224, 224)),
    "mobilenet_v3_large": ("M.mobilenet_v3_large()", (1, 3, 224, 224)),
    "shufflenet_v2_swish": ("M.shufflenet_v2_swish()", (1, 3, 224, 224)),
    "squeezenet1_0": ("M.squeezenet1_0()", (1, 3, 224, 224)),
    "densenet121": ("M.densenet121()", (1, 3, 224, 224)),
    "googlenet": ("M.googlenet()", (1, 3, 224, 224)),
    "inception_v3": ("M.inception_v3()", (1, 3, 299, 299)),
    "alexnet": ("M.alexnet()", (1, 3, 224, 224)),
    "vgg11": ("M.vgg11()", (1, 3, 224, 224)),
    "lenet": ("M.LeNet()", (1, 1, 28, 28)),
    "seg_head": ("SegHead()", (1, 3, 128, 160)),  # the interpolations fix sizes of this input
}

EXPORT_SCRIPT = r'''
import sys, warnings
warnings.simplefilter("ignore")
import paddle
from paddle.vision import models as M
sys.path.insert(0, sys.argv[4])
from paddle_nets import SegHead  # paddle's export reads a layer's source: a file, not "python -c"

expr, shape, out = sys.argv[1], [int(d) for d in sys.argv[2].split("x")], sys.argv[3]
paddle.seed(0)
model = eval(expr)
model.eval()
spec = [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]
paddle.onnx.export(model, out[:-len(".onnx")], input_spec=spec, opset_version=13)
'''


def export_one(cache: Path, name: str, expr: str, shape: tuple[int, ...], limit: float) -> Entry:
    """Export one model in a subprocess (kept when already there)."""
    dims = "x".join(map(str, shape))
    entry, out = model_entry(cache, "paddle", name, origin=f"paddle: {expr}", note=f"input {dims}")
    # paddle.onnx.export appends ".onnx" to the path it is given: hand it "<out>.tmp" without it
    return export_in_subprocess(entry, out, [EXPORT_SCRIPT, expr, dims, str(out) + ".tmp.onnx",
                                             str(Path(__file__).parent)], limit,
                                "export", tmp_suffix=".tmp.onnx")


def main(argv: list[str] | None = None) -> int:
    export_all(collector_arguments(__doc__, 300.0).parse_args(argv), MODELS, export_one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
