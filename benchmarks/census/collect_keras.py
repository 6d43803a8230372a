"""Keras applications (random init) converted by rfgraph's Keras path (tf2onnx), saved as ONNX.

Run with an interpreter that has tensorflow-cpu and tf2onnx (a separate venv when they do not fit
the main environment):  ``VENV/bin/python benchmarks/census/collect_keras.py [--cache DIR]``.
Each model is converted by ``rfgraph.frameworks.export_keras`` (what ``rfgraph.from_keras`` runs
before its analysis) in a subprocess under a time limit; the analysis itself is left to run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_CACHE, Entry, export_in_subprocess, model_entry, write_manifest

ROOT = Path(__file__).resolve().parents[2]
# application -> input size (H = W); the smallest that every application accepts with weights=None
APPS = {"MobileNet": 128, "MobileNetV2": 128, "MobileNetV3Small": 128, "MobileNetV3Large": 128,
        "ResNet50": 128, "ResNet50V2": 128, "DenseNet121": 128, "EfficientNetB0": 128,
        "EfficientNetV2B0": 128, "NASNetMobile": 128, "Xception": 128, "InceptionV3": 128, "VGG16": 128,
        "ConvNeXtTiny": 128, "RegNetX002": 128, "RegNetY002": 128, "InceptionResNetV2": 128,
        "EfficientNetB1": 128}

CONVERT = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, onnx
from rfgraph.frameworks import export_keras
name, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
proto, _ = export_keras(model)
onnx.save(proto, out)
'''


def convert(cache: Path, name: str, size: int, limit: float) -> Entry:
    """One application, converted in a subprocess (a failure or timeout is a skip with the reason)."""
    entry, out = model_entry(cache, "keras", name, origin=f"keras.applications.{name}(weights=None)",
                             note=f"input 1x{size}x{size}x3 (NHWC, detected from tf2onnx's leading Transpose)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return export_in_subprocess(entry, out, [CONVERT, name, str(size), str(out) + ".tmp"], limit,
                                "conversion", env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--limit", type=float, default=240.0)
    args = parser.parse_args(argv)
    entries = []
    for name, size in APPS.items():
        entries.append(convert(args.cache, name, size, args.limit))
        print(name, entries[-1].skip or "ok", entries[-1].export_s, flush=True)
        write_manifest(args.cache, "keras", entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
