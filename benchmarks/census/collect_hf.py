
"""Export Hugging Face transformers models (random init from a config, no download) with torch's
TorchScript exporter (``--exporter dynamo``: its dynamo exporter, source transformers-dynamo):
segmentation, depth, super-resolution, backbones, video and audio.

``python benchmarks/census/collect_hf.py [--cache DIR] [--only NAME ...] [--site DIR] [--exporter dynamo]``
Needs torch and ``transformers`` (``pip install --target DIR 'transformers<5'``, then ``--site
DIR``).  Each export runs in its own subprocess under a time limit; a failure is a skip with its
reason.  The model's first tensor output is exported (logits, predicted depth, reconstruction; an
encoder's features), the model called with its one input by position.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

# a small transformer of 2 or 4 layers, for the models whose default config is large
SMALL_VIT_2, SMALL_VIT_4 = (f"hidden_size=96, num_hidden_layers={n}, num_attention_heads=4, intermediate_size=192"
                            for n in (2, 4))

# name -> (python expression building the model, ``T`` = transformers; input shape)
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "segformer_b0": ("T.SegformerForSemanticSegmentation(T.SegformerConfig(num_labels=19))", (1, 3, 256, 256)),
    "dpt_small": (("T.DPTForDepthEstimation(T.DPTConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4,"
                   " intermediate_size=192, image_size=224, patch_size=16, neck_hidden_sizes=[24, 48, 96, 96],"
                   " fusion_hidden_size=32, backbone_out_indices=[0, 1, 2, 3]))"), (1, 3, 224, 224)),
    "mobilevit_deeplab": ("T.MobileViTForSemanticSegmentation(T.MobileViTConfig(num_labels=5))", (1, 3, 256, 256)),
    "dinov2_small": (("T.Dinov2Model(T.Dinov2Config(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,"
                      " intermediate_size=192, image_size=224, patch_size=14))"), (1, 3, 224, 224)),
    "convnextv2_atto": (("T.ConvNextV2ForImageClassification(T.ConvNextV2Config(depths=[2, 2, 6, 2],"
                         " hidden_sizes=[40, 80, 160, 320]))"), (1, 3, 224, 224)),
    "swin2sr_small": (("T.Swin2SRForImageSuperResolution(T.Swin2SRConfig(embed_dim=32, depths=[2, 2],"
                       " num_heads=[2, 2], window_size=8, upscale=2, image_size=64))"), (1, 3, 64, 64)),
    "glpn": ("T.GLPNForDepthEstimation(T.GLPNConfig())", (1, 3, 256, 256)),
    # eighteenth session: backbones with their own padding and token layouts, video, and 1-D audio
    "levit_128s": ("T.LevitForImageClassification(T.LevitConfig())", (1, 3, 224, 224)),
    "poolformer_s12": ("T.PoolFormerForImageClassification(T.PoolFormerConfig())", (1, 3, 224, 224)),
    "efficientformer_l1": ("T.EfficientFormerForImageClassification(T.EfficientFormerConfig())", (1, 3, 224, 224)),
    "regnet_y_040": ("T.RegNetForImageClassification(T.RegNetConfig())", (1, 3, 224, 224)),
    "resnet50_hf": ("T.ResNetForImageClassification(T.ResNetConfig())", (1, 3, 224, 224)),
    "bit_same_pad": (("T.BitForImageClassification(T.BitConfig(global_padding='SAME', embedding_dynamic_padding=True,"
                      " layer_type='bottleneck'))"), (1, 3, 224, 224)),
    "van_b0": (("T.VanForImageClassification(T.VanConfig(hidden_sizes=[32, 64, 160, 256], depths=[3, 3, 5, 2],"
                " mlp_ratios=[8, 8, 4, 4]))"), (1, 3, 224, 224)),
    "cvt_13": ("T.CvtForImageClassification(T.CvtConfig())", (1, 3, 224, 224)),
    "focalnet_tiny": ("T.FocalNetForImageClassification(T.FocalNetConfig())", (1, 3, 224, 224)),
    "convnext_tiny_hf": ("T.ConvNextForImageClassification(T.ConvNextConfig())", (1, 3, 224, 224)),
    "mobilenet_v1_tf_pad": ("T.MobileNetV1ForImageClassification(T.MobileNetV1Config())", (1, 3, 224, 224)),
    "mobilenet_v2_deeplab": ("T.MobileNetV2ForSemanticSegmentation(T.MobileNetV2Config())", (1, 3, 256, 256)),
    "efficientnet_b0_hf": (("T.EfficientNetForImageClassification(T.EfficientNetConfig(width_coefficient=1.0,"
                            " depth_coefficient=1.0, image_size=224, hidden_dim=1280))"), (1, 3, 224, 224)),
    "upernet_convnext": (("T.UperNetForSemanticSegmentation(T.UperNetConfig(backbone_config=T.ConvNextConfig("
                          "depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], out_features=['stage1', 'stage2',"
                          " 'stage3', 'stage4']), hidden_size=64, auxiliary_in_channels=128))"), (1, 3, 384, 384)),
    "vitdet_small": ((f"T.VitDetModel(T.VitDetConfig({SMALL_VIT_4}, window_block_indices=[0, 2],"
                      " window_size=7, use_relative_position_embeddings=True, image_size=224))"),
                     (1, 3, 224, 224)),
    "depth_anything_small": (("T.DepthAnythingForDepthEstimation(T.DepthAnythingConfig(backbone_config=T.Dinov2Config("
                              "hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=192,"
                              " image_size=224, patch_size=14, out_features=['stage1', 'stage2', 'stage3', 'stage4'],"
                              " reshape_hidden_states=False), reassemble_hidden_size=96, neck_hidden_sizes=[24, 48, 96,"
                              " 96], fusion_hidden_size=32, head_hidden_size=16))"), (1, 3, 224, 224)),
    "textnet": ("T.TextNetModel(T.TextNetConfig())", (1, 3, 224, 224)),
    "hiera_tiny": ("T.HieraModel(T.HieraConfig())", (1, 3, 224, 224)),
    "pvt_tiny": ("T.PvtForImageClassification(T.PvtConfig())", (1, 3, 224, 224)),
    "pvt_v2_b0": ("T.PvtV2ForImageClassification(T.PvtV2Config())", (1, 3, 224, 224)),
    "yolos_small": ((f"T.YolosForObjectDetection(T.YolosConfig({SMALL_VIT_4}, image_size=[224, 224],"
                     " num_detection_tokens=10))"), (1, 3, 224, 224)),
    "vitmatte_small": (("T.VitMatteForImageMatting(T.VitMatteConfig(backbone_config=T.VitDetConfig(num_channels=4,"
                        f" {SMALL_VIT_4},"
                        " image_size=224, window_block_indices=[0, 2], window_size=7,"
                        " use_relative_position_embeddings=True), hidden_size=96, convstream_hidden_sizes=[24, 48, 96],"
                        " fusion_hidden_sizes=[64, 32, 16, 16]))"), (1, 4, 224, 224)),
    "beit_seg_small": ((f"T.BeitForSemanticSegmentation(T.BeitConfig({SMALL_VIT_4}, out_indices=[1, 2, 3, 4],"
                        " use_relative_position_bias=True, image_size=384))"), (1, 3, 384, 384)),
    "sam_vision_small": (("T.SamVisionModel(T.SamVisionConfig(hidden_size=96, num_hidden_layers=2,"
                          " num_attention_heads=4, image_size=256, window_size=7, global_attn_indexes=[1],"
                          " output_channels=32, mlp_dim=192))"),
                         (1, 3, 256, 256)),
    "vitpose_small": (("T.VitPoseForPoseEstimation(T.VitPoseConfig(backbone_config=T.VitPoseBackboneConfig("
                       f"{SMALL_VIT_4},"
                       " image_size=[256, 192], out_indices=[4]), use_simple_decoder=True))"),
                      (1, 3, 256, 192)),
    "timesformer_small": ((f"T.TimesformerForVideoClassification(T.TimesformerConfig(num_frames=4, {SMALL_VIT_2}))"
                          ), (1, 4, 3, 224, 224)),
    "videomae_small": (f"T.VideoMAEModel(T.VideoMAEConfig(num_frames=4, {SMALL_VIT_2}))",
                       (1, 4, 3, 224, 224)),
    "wav2vec2_small": ((f"T.Wav2Vec2Model(T.Wav2Vec2Config({SMALL_VIT_2}, num_conv_pos_embeddings=32,"
                        " num_conv_pos_embedding_groups=4))"), (1, 16000)),
    "hubert_layer_norm": ((f"T.HubertModel(T.HubertConfig({SMALL_VIT_2}, feat_extract_norm='layer', conv_bias=True,"
                           " num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4))"),
                          (1, 16000)),
    "wavlm_small": ((f"T.WavLMModel(T.WavLMConfig({SMALL_VIT_2}, num_conv_pos_embeddings=32,"
                     " num_conv_pos_embedding_groups=4))"), (1, 16000)),
    "sew_small": ((f"T.SEWModel(T.SEWConfig({SMALL_VIT_2}, squeeze_factor=2, num_conv_pos_embeddings=32,"
                   " num_conv_pos_embedding_groups=4))"), (1, 16000)),
    "wav2vec2_conformer": ((f"T.Wav2Vec2ConformerModel(T.Wav2Vec2ConformerConfig({SMALL_VIT_2},"
                            " num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,"
                            " conv_depthwise_kernel_size=15, position_embeddings_type='rotary'))"), (1, 16000)),
    "whisper_encoder": (("T.WhisperForAudioClassification(T.WhisperConfig(d_model=96, encoder_layers=2,"
                         " encoder_attention_heads=4, encoder_ffn_dim=192))"), (1, 80, 3000)),
    "ast_small": ((f"T.ASTForAudioClassification(T.ASTConfig({SMALL_VIT_2}, max_length=256, num_mel_bins=128))"
                  ), (1, 256, 128)),
    "encodec_encoder": ("T.EncodecModel(T.EncodecConfig()).encoder", (1, 1, 24000)),
    "dac_encoder": ("T.DacModel(T.DacConfig()).encoder", (1, 1, 16384)),
    "speecht5_hifigan": ("T.SpeechT5HifiGan(T.SpeechT5HifiGanConfig())", (1, 50, 80)),
}

# the input's name where it is not the vision models' pixel_values (4-D, 5-D) or audio's input_values
INPUT_NAMES = {"whisper_encoder": "input_features", "speecht5_hifigan": "spectrogram"}


EXPORT_SCRIPT = r'''
import sys, warnings, torch
sys.path.insert(0, sys.argv[4])
sys.path.insert(0, sys.argv[5])
from tv_shim import import_torchvision
import_torchvision()  # transformers imports torchvision where present
import transformers as T
warnings.simplefilter("ignore")
expr, shape, out, name = sys.argv[1], tuple(int(d) for d in sys.argv[2].split("x")), sys.argv[3], sys.argv[6]
dynamo = sys.argv[7] == "dynamo"
torch.manual_seed(0)
model = eval(expr).eval()
class First(torch.nn.Module):
    """The model's first tensor output (ModelOutput objects do not export)."""
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x):
        y = self.m(x)
        return y if isinstance(y, torch.Tensor) else y[0]
if dynamo:
    torch.onnx.export(First(model), (torch.randn(shape),), out, dynamo=True, external_data=False, input_names=[name])
else:
    torch.onnx.export(First(model), (torch.randn(shape),), out, dynamo=False, opset_version=17, input_names=[name])
'''


def export_one(cache: Path, name: str, expr: str, shape: tuple[int, ...], site: str, exporter: str,
               limit: float) -> Entry:
    """Export one model in a subprocess (kept when already there)."""
    dims = "x".join(map(str, shape))
    entry, out = model_entry(cache, f"transformers-{exporter}", name, origin=expr, note=f"input {dims}")
    name_of_input = INPUT_NAMES.get(name, "pixel_values" if len(shape) >= 4 else "input_values")
    return export_in_subprocess(entry, out, [EXPORT_SCRIPT, expr, dims, str(out) + ".tmp", site,
                                             str(Path(__file__).parent), name_of_input, exporter], limit, "export")


def main(argv: list[str] | None = None) -> int:
    parser = collector_arguments(__doc__, 300.0)
    parser.add_argument("--site", default="", help="folder transformers was installed into (pip --target)")
    parser.add_argument("--exporter", choices=("ts", "dynamo"), default="ts", help="torch's TorchScript exporter "
                        "(opset 17) or its dynamo exporter (needs onnxscript)")
    args = parser.parse_args(argv)
    export_all(args, MODELS, lambda cache, name, expr, shape, limit: export_one(cache, name, expr, shape, args.site,
                                                                                 args.exporter, limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
