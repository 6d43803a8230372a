"""Export Hugging Face transformers vision models (random init from a config, no download) with
torch's TorchScript exporter: segmentation, depth, super-resolution and backbones.

``python benchmarks/census/collect_hf.py [--cache DIR] [--only NAME ...] [--site DIR]``
Needs torch and ``transformers`` (``pip install --target DIR 'transformers<5'``, then ``--site
DIR``).  Each export runs in its own subprocess under a time limit; a failure is a skip with its
reason.  The model's first tensor output is exported (logits, predicted depth, reconstruction).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

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
}

EXPORT_SCRIPT = r'''
import sys, warnings, torch
sys.path.insert(0, sys.argv[4])
sys.path.insert(0, sys.argv[5])
from tv_shim import import_torchvision
import_torchvision()  # transformers imports torchvision where present
import transformers as T
warnings.simplefilter("ignore")
expr, shape, out = sys.argv[1], tuple(int(d) for d in sys.argv[2].split("x")), sys.argv[3]
torch.manual_seed(0)
model = eval(expr).eval()
class First(torch.nn.Module):
    """The model's first tensor output (ModelOutput objects do not export)."""
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(pixel_values=x)[0]
torch.onnx.export(First(model), (torch.randn(shape),), out, dynamo=False, opset_version=17,
                  input_names=["pixel_values"])
'''


def export_one(cache: Path, name: str, expr: str, shape: tuple[int, ...], site: str, limit: float) -> Entry:
    """Export one model in a subprocess (kept when already there)."""
    dims = "x".join(map(str, shape))
    entry, out = model_entry(cache, "transformers-ts", name, origin=expr, note=f"input {dims}")
    return export_in_subprocess(entry, out, [EXPORT_SCRIPT, expr, dims, str(out) + ".tmp", site,
                                             str(Path(__file__).parent)], limit, "export")


def main(argv: list[str] | None = None) -> int:
    parser = collector_arguments(__doc__, 300.0)
    parser.add_argument("--site", default="", help="folder transformers was installed into (pip --target)")
    args = parser.parse_args(argv)
    export_all(args, MODELS, lambda cache, name, expr, shape, limit: export_one(cache, name, expr, shape, args.site,
                                                                                 limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
