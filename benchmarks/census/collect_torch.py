"""Export torchvision and timm architectures (random init) with both torch exporters.

``python benchmarks/census/collect_torch.py [--cache DIR] [--only NAME ...] [--exporters ts dynamo]``
Each export runs in its own subprocess under a time limit; a failure or a timeout is recorded as a
skip with its reason.  Needs torch, torchvision, timm and onnxscript (for the dynamo exporter).
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_CACHE, Entry, export_in_subprocess, model_entry, record

IMG = (1, 3, 224, 224)
SMALL = (1, 3, 160, 160)
VIDEO = (1, 3, 8, 112, 112)

# name -> (python expression building the module, input shape); torchvision ``m`` = torchvision.models
TORCHVISION: dict[str, tuple[str, tuple[int, ...]]] = {
    "alexnet": ("m.alexnet()", IMG), "vgg11": ("m.vgg11()", IMG), "resnet18": ("m.resnet18()", IMG),
    "resnet50": ("m.resnet50()", IMG), "resnext50_32x4d": ("m.resnext50_32x4d()", IMG),
    "squeezenet1_0": ("m.squeezenet1_0()", IMG), "squeezenet1_1": ("m.squeezenet1_1()", IMG),
    "densenet121": ("m.densenet121()", IMG), "googlenet": ("m.googlenet(aux_logits=False, init_weights=True)", IMG),
    "inception_v3": ("m.inception_v3(aux_logits=False, init_weights=True)", (1, 3, 299, 299)),
    "shufflenet_v2_x0_5": ("m.shufflenet_v2_x0_5()", IMG), "mobilenet_v2": ("m.mobilenet_v2()", IMG),
    "mobilenet_v3_small": ("m.mobilenet_v3_small()", IMG), "mobilenet_v3_large": ("m.mobilenet_v3_large()", IMG),
    "mnasnet0_5": ("m.mnasnet0_5()", IMG), "efficientnet_b0": ("m.efficientnet_b0()", IMG),
    "efficientnet_v2_s": ("m.efficientnet_v2_s()", IMG), "regnet_x_400mf": ("m.regnet_x_400mf()", IMG),
    "regnet_y_400mf": ("m.regnet_y_400mf()", IMG), "convnext_tiny": ("m.convnext_tiny()", IMG),
    "vit_b_16": ("m.vit_b_16()", IMG), "swin_t": ("m.swin_t()", IMG), "swin_v2_t": ("m.swin_v2_t()", IMG),
    "maxvit_t": ("m.maxvit_t()", IMG),
    "fcn_resnet50": ("m.segmentation.fcn_resnet50(weights_backbone=None)", SMALL),
    "deeplabv3_mobilenet_v3_large": ("m.segmentation.deeplabv3_mobilenet_v3_large(weights_backbone=None)", SMALL),
    "lraspp_mobilenet_v3_large": ("m.segmentation.lraspp_mobilenet_v3_large(weights_backbone=None)", SMALL),
    "resnet18_fpn": (("FPNWrap(m.detection.backbone_utils.resnet_fpn_backbone(backbone_name='resnet18',"
                     " weights=None))"), SMALL),
    "mobilenet_v3_fpn": (("FPNWrap(m.detection.backbone_utils.mobilenet_backbone("
                         "backbone_name='mobilenet_v3_large', weights=None, fpn=True))"), SMALL),
    "ssdlite320_backbone": ("m.detection.ssdlite320_mobilenet_v3_large(weights_backbone=None).backbone",
                            (1, 3, 320, 320)),
    "r3d_18": ("m.video.r3d_18()", VIDEO), "mc3_18": ("m.video.mc3_18()", VIDEO),
    "r2plus1d_18": ("m.video.r2plus1d_18()", VIDEO), "s3d": ("m.video.s3d()", (1, 3, 16, 224, 224)),
    "swin3d_t": ("m.video.swin3d_t()", VIDEO),
    "raft_small": ("FlowWrap(m.optical_flow.raft_small())", (1, 3, 128, 128)),
    "q_resnet18": ("m.quantization.resnet18(quantize=True)", IMG),
    "q_mobilenet_v2": ("m.quantization.mobilenet_v2(quantize=True)", IMG),
    "q_shufflenet_v2_x0_5": ("m.quantization.shufflenet_v2_x0_5(quantize=True)", IMG),
}

# timm: one architecture per family (random init); input = the model's default size
TIMM = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "mobilevit_xxs", "convnext_atto",
        "regnetx_002", "ghostnet_100", "hrnet_w18_small", "dla34", "vit_tiny_patch16_224",
        "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256", "coatnet_nano_rw_224",
        "efficientformer_l1", "levit_128s", "poolformer_s12", "pit_ti_224", "xcit_nano_12_p16_224",
        "repvgg_a0", "rexnet_100", "lcnet_050", "tinynet_e", "skresnet18", "selecsls42b", "ese_vovnet19b_dw",
        "densenet121", "gcvit_xxtiny", "edgenext_xx_small", "fastvit_t8", "efficientvit_b0", "mobileone_s0",
        "resmlp_12_224", "pvt_v2_b0", "botnet26t_256", "hgnetv2_b0", "inception_next_atto", "cait_xxs24_224",
        "tresnet_m", "cspresnet50",
        # families added in the sixteenth session (none of them seen by the tests)
        "nf_resnet26", "res2net50_14w_8s", "resnest14d", "ecaresnet26t", "volo_d1_224", "crossvit_tiny_240",
        "mixer_s16_224", "sequencer2d_s", "halonet26t", "lambda_resnet26t", "cspdarknet53", "mixnet_s",
        "tiny_vit_5m_224", "repvit_m1", "efficientformerv2_s0", "davit_tiny", "focalnet_tiny_srf",
        "mobilevitv2_050", "eva02_tiny_patch14_224", "nest_tiny", "mambaout_femto", "starnet_s1",
        "ghostnetv2_100", "hiera_tiny_224", "dpn48b", "gernet_s", "visformer_tiny", "cs3darknet_focus_s",
        "tnt_s_patch16_224", "inception_v4", "resnetv2_50x1_bit", "coat_lite_tiny", "convit_tiny", "vgg16_bn",
        "xception41", "twins_pcpvt_small", "fbnetv3_b", "rdnet_tiny", "gmlp_s16_224", "convmixer_768_32"]

EXPORT_SCRIPT = r'''
import sys, time, torch
sys.path.insert(0, sys.argv[5])
from tv_shim import import_torchvision
torchvision = import_torchvision()
m = torchvision.models
class FPNWrap(torch.nn.Module):
    """An FPN backbone returns a dict: export its maps as a tuple."""
    def __init__(self, b): super().__init__(); self.b = b
    def forward(self, x): return tuple(self.b(x).values())
class FlowWrap(torch.nn.Module):
    """RAFT takes two frames and returns a list of flows: export the last."""
    def __init__(self, f): super().__init__(); self.f = f
    def forward(self, a, b): return self.f(a, b, num_flow_updates=2)[-1]
expr, shape, exporter, out = sys.argv[1], tuple(int(d) for d in sys.argv[2].split("x")), sys.argv[3], sys.argv[4]
torch.manual_seed(0)
if expr.startswith("timm:"):
    import timm
    model = timm.create_model(expr[5:], pretrained=False)
else:
    model = eval(expr)
model.eval()
x = torch.randn(shape)
args = (x, torch.randn(shape)) if "FlowWrap" in expr else (x,)
names = ["image1", "image2"] if len(args) == 2 else ["input"]
# not under no_grad: there torch's attention takes a fused path (_native_multi_head_attention) no exporter knows
if exporter == "ts":
    torch.onnx.export(model, args, out, dynamo=False, opset_version=17, input_names=names)
else:
    torch.onnx.export(model, args, out, dynamo=True, external_data=False, input_names=names)
'''


def timm_shape(name: str) -> tuple[int, ...]:
    """The model's default input size (timm's pretrained config), batch 1."""
    from tv_shim import import_torchvision
    import_torchvision()
    import timm
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    return (1, *cfg.get("input_size", (3, 224, 224)))


def export_one(cache: Path, source: str, name: str, expr: str, shape: tuple[int, ...], exporter: str,
               limit: float) -> Entry:
    """Export one model in a subprocess; a failure or timeout becomes a skip with the reason."""
    dims = "x".join(map(str, shape))
    entry, out = model_entry(cache, source, name, origin=expr, note=f"input {dims}")
    return export_in_subprocess(entry, out, [EXPORT_SCRIPT, expr, dims, exporter, str(out) + ".tmp",
                                             str(Path(__file__).parent)], limit, "export")


def jobs(which: list[str], only: set[str]) -> list[tuple[str, str, str, tuple[int, ...], str]]:
    """(source, name, expression, input shape, exporter) of every export asked for."""
    out = []
    for exporter in which:
        for name, (expr, shape) in TORCHVISION.items():
            if not only or name in only:
                out.append((f"torchvision-{exporter}", name, expr, shape, exporter))
        for name in TIMM:
            if not only or name in only:
                out.append((f"timm-{exporter}", name, f"timm:{name}", timm_shape(name), exporter))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--exporters", nargs="+", default=["ts", "dynamo"])
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per export")
    args = parser.parse_args(argv)
    todo = jobs(args.exporters, set(args.only))
    lock = threading.Lock()

    def one(job: tuple[str, str, str, tuple[int, ...], str]) -> None:
        entry = export_one(args.cache, job[0], job[1], job[2], job[3], job[4], args.limit)
        with lock:  # the manifest is rewritten after every export: an interrupted run keeps its work
            record(args.cache, entry)
            print(entry.source, entry.name, entry.skip or "ok", entry.export_s, flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
