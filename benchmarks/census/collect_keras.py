"""Keras models (random init) converted by rfgraph's Keras path (tf2onnx), saved as ONNX: the
Keras applications (source ``keras``), the same without their heads at a dynamic size
(``keras-dynamic``, analysed at 128x128) and keras-hub backbones built from a config (``keras-hub``).

Run with an interpreter that has tensorflow-cpu and tf2onnx (and keras-hub for its models; a
separate venv when they do not fit the main environment):
``VENV/bin/python benchmarks/census/collect_keras.py [--cache DIR] [--only NAME ...]``.
Each model is converted by ``rfgraph.frameworks.export_keras`` (what ``rfgraph.from_keras`` runs
before its analysis) in a subprocess under a time limit; the analysis itself is left to run.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

ROOT = Path(__file__).resolve().parents[2]
# application -> input size (H = W); the smallest that every application accepts with weights=None
APPS = {"MobileNet": 128, "MobileNetV2": 128, "MobileNetV3Small": 128, "MobileNetV3Large": 128,
        "ResNet50": 128, "ResNet50V2": 128, "DenseNet121": 128, "EfficientNetB0": 128,
        "EfficientNetV2B0": 128, "NASNetMobile": 128, "Xception": 128, "InceptionV3": 128, "VGG16": 128,
        "ConvNeXtTiny": 128, "RegNetX002": 128, "RegNetY002": 128, "InceptionResNetV2": 128,
        "EfficientNetB1": 128}

_RESNET50 = ("input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512], "
             "stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], image_shape=(128, 128, 3), ")
_RESNET50_VD = _RESNET50.replace("[64], input_conv_kernel_sizes=[7]", "[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3]")
# keras-hub backbone -> its constructor (``K`` = keras_hub.models), the configs of its docstrings or
# its presets' architectures at small sizes
HUB = {
    "resnet50": f"K.ResNetBackbone({_RESNET50} block_type='bottleneck_block')",
    "resnet50_v2": f"K.ResNetBackbone({_RESNET50} block_type='bottleneck_block', use_pre_activation=True)",
    "resnet50_vd": f"K.ResNetBackbone({_RESNET50_VD} block_type='bottleneck_block_vd')",
    "vgg16": "K.VGGBackbone([2, 2, 3, 3, 3], [64, 128, 256, 512, 512], image_shape=(128, 128, 3))",
    "densenet121": "K.DenseNetBackbone([6, 12, 24, 16], image_shape=(128, 128, 3))",
    "mit_b0": ("K.MiTBackbone(layerwise_depths=[2, 2, 2, 2], num_layers=4, layerwise_num_heads=[1, 2, 5, 8], "
               "layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1, layerwise_patch_sizes=[7, 3, 3, 3], "
               "layerwise_strides=[4, 2, 2, 2], hidden_dims=[32, 64, 160, 256], image_shape=(128, 128, 3))"),
    "vit_tiny": ("K.ViTBackbone(image_shape=(224, 224, 3), patch_size=16, num_layers=4, num_heads=3, "
                 "hidden_dim=192, mlp_dim=768)"),
    "deeplabv3_r50": (f"K.DeepLabV3Backbone(K.ResNetBackbone({_RESNET50} block_type='bottleneck_block'), "
                      "'P5', 8, [6, 12, 18], low_level_feature_key='P2', image_shape=(128, 128, 3))"),
    "cspnet_dark": ("K.CSPNetBackbone(stem_filters=32, stem_kernel_size=3, stem_strides=1, "
                    "stackwise_depth=[1, 2, 4], stackwise_strides=[1, 2, 2], stackwise_num_filters=[32, 64, 128], "
                    "block_type='dark_block', stage_type='dark', image_shape=(128, 128, 3))"),
    "xception": ("K.XceptionBackbone(stackwise_conv_filters=[[32, 64], [64, 128], [256, 256]], "
                 "stackwise_pooling=[True, True, False], image_shape=(128, 128, 3))"),
    "hgnetv2": ("K.HGNetV2Backbone(depths=[1, 2, 4], embedding_size=32, hidden_sizes=[64, 128, 256], "
                "stem_channels=[3, 16, 32], hidden_act='relu', use_learnable_affine_block=False, "
                "stackwise_stage_filters=[(32, 16, 64, 1, 1, 3), (64, 32, 128, 2, 1, 3), (128, 64, 256, 4, 1, 3)], "
                "apply_downsample=[False, True, True], use_lightweight_conv_block=[False, False, False], "
                "image_shape=(128, 128, 3))"),
    "swin_tiny": ("K.SwinTransformerBackbone(image_shape=(224, 224, 3), embed_dim=48, depths=(2, 2, 2, 2), "
                  "num_heads=(3, 6, 12, 24), window_size=7)"),
}
# the same applications without their heads at a dynamic size (input_shape (None, None, 3)), as users
# often convert them: tf2onnx then computes pads and crops from the input's shape, and writes a
# dilated convolution as space-to-batch moves; analysed at DYNAMIC_SIZE, where their fields must
# equal the fixed-size exports' (source keras)
DYNAMIC = ["ResNet50", "MobileNetV2", "DenseNet121", "EfficientNetB0", "Xception", "InceptionV3", "VGG16",
           "ConvNeXtTiny", "MobileNetV3Small", "ResNet50V2", "NASNetMobile", "EfficientNetV2B0",
           "InceptionResNetV2"]
DYNAMIC_SIZE = "1x128x128x3"
DYNAMIC_ARGS = "weights=None, include_top=False, input_shape=(None, None, 3)"
MODELS = {**{name: ("keras", f"keras.applications.{name}(weights=None, input_shape=({size}, {size}, 3))")
             for name, size in APPS.items()},
          **{name: ("keras-hub", expr) for name, expr in HUB.items()},
          **{f"{name}_dynamic": ("keras-dynamic", f"keras.applications.{name}({DYNAMIC_ARGS})") for name in DYNAMIC}}

CONVERT = r'''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, onnx
from rfgraph.frameworks import export_keras
expr, out = sys.argv[1], sys.argv[2]
if "K." in expr:
    import keras_hub
    K = keras_hub.models
keras.utils.set_random_seed(0)
proto, _ = export_keras(eval(expr))
onnx.save(proto, out)
'''


def convert(cache: Path, name: str, source: str, expr: str, limit: float) -> Entry:
    """One model, converted in a subprocess (a failure or timeout is a skip with the reason)."""
    entry, out = model_entry(cache, source, name, origin=expr,
                             note="NHWC input, detected from tf2onnx's leading Transpose")
    if source == "keras-dynamic":
        entry.input_shape = DYNAMIC_SIZE
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return export_in_subprocess(entry, out, [CONVERT, expr, str(out) + ".tmp"], limit, "conversion", env)


def main(argv: list[str] | None = None) -> int:
    export_all(collector_arguments(__doc__, 240.0).parse_args(argv), MODELS, convert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
