"""Builders of ONNX graphs for the networks of the papers (structure is what matters).

    import model_zoo
    model_zoo.available()                      # names
    model = model_zoo.build("resnet_v1_50")    # onnx.ModelProto
    model = model_zoo.build("resnet_v1_50:size=321,width=0.25")
    model_zoo.GRF_BENCHMARK                    # the 19 rf_benchmark configurations (names as GRF's)
    model = model_zoo.build("luo_conv_relu_20")   # any n: luo_conv_{uniform|random|relu|tanh|sigmoid}_{n}
    model_zoo.endpoints(model)                 # end-point tensor names, the last is the output

Parameters after ``:`` are ``key=value`` pairs passed to the builder (ints, floats, strings;
``a/b/c`` is a tuple of ints).  No published receptive-field number lives in this package: the
graphs are built from the architectures' definitions only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from . import luo, modern, slim, torchstyle, vit
from .builder import GraphBuilder

__all__ = [
    "GRF_BENCHMARK",
    "MODERN_MODELS",
    "SLIM_MODELS",
    "GraphBuilder",
    "ZooEntry",
    "available",
    "build",
    "builder",
    "endpoints",
    "entry",
    "is_available",
]


@dataclass(frozen=True)
class ZooEntry:
    """One named model: its builder, family and the fixed keyword arguments it is built with."""

    name: str
    make: Callable[..., GraphBuilder]
    family: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _registry() -> dict[str, ZooEntry]:
    reg: dict[str, ZooEntry] = {}
    for name, fn in {**slim.SLIM_BUILDERS, **slim.GRF_EXTRA_BUILDERS}.items():
        reg[name] = ZooEntry(name, fn, "tf-slim", f"TF-slim {name} to its final end point")
    for act in ("uniform", "random"):
        for n in (5, 10, 20, 40):
            reg[f"luo_conv_{act}_{n}"] = _luo_stack_entry(act, n)
    for act in ("relu", "tanh", "sigmoid"):
        reg[f"luo_conv_{act}_20"] = _luo_stack_entry(act, 20)
    for variant in ("baseline", "subsample", "dilation"):
        nm = "luo_conv15" if variant == "baseline" else f"luo_conv15_{variant}"
        reg[nm] = ZooEntry(nm, luo.conv15, "luo", f"Luo et al. 15-layer net ({variant})",
                           {"variant": variant})
    reg["luo_cifar_resnet"] = ZooEntry("luo_cifar_resnet", luo.cifar_resnet, "luo",
                                       "Luo et al. CIFAR ResNet, 17 blocks, no downsampling")
    reg["luo_camvid_frontend"] = ZooEntry("luo_camvid_frontend", luo.camvid_frontend, "luo",
                                          "Luo et al. CamVid front end, 16 blocks, 4 subsamplings")
    reg["dilated_stack"] = ZooEntry("dilated_stack", luo.dilated_stack, "blog",
                                    "Yu & Koltun 3x3 convs with dilation 1, 2, 4")
    reg["highresnet"] = ZooEntry("highresnet", luo.highresnet, "blog",
                                 "HighResNet (Li et al. 2017), 2-D, 9 dilated residual blocks")
    reg["vit_small"] = ZooEntry("vit_small", vit.vit, "transformer", "small ViT, mean-pooled")
    reg["cnn_small"] = ZooEntry("cnn_small", vit.cnn, "transformer", "CNN twin of vit_small")
    for nm, fn in (("torch_resnet50", torchstyle.resnet50), ("torch_vgg16", torchstyle.vgg16),
                   ("torch_mobilenet_v2", torchstyle.mobilenet_v2), ("torch_unet", torchstyle.unet)):
        reg[nm] = ZooEntry(nm, fn, "torchvision", f"torchvision-style {nm[6:]} (symmetric pads)")
    for nm, make in modern.MODERN_BUILDERS.items():
        reg[nm] = ZooEntry(nm, make, "modern", f"{nm} (torchvision's layers, structure only)")
    reg["yolov8n_export"] = ZooEntry("yolov8n_export", modern.yolov8n_export, "modern",
                                     "YOLOv8n as ultralytics exports it: anchors of the 3 levels joined, decoded")
    return reg


_STACK = re.compile(r"^luo_conv_(uniform|random|relu|tanh|sigmoid)_(\d+)$")


def _luo_stack_entry(kind: str, n: int) -> ZooEntry:
    """luo_conv_{kind}_{n}: uniform/random = linear stack; relu/tanh/sigmoid = random + act."""
    kw: dict[str, Any] = {"n": n}
    if kind in ("uniform", "random"):
        kw.update(weights=kind, act="linear")
    else:
        kw.update(weights="random", act=kind)
    return ZooEntry(f"luo_conv_{kind}_{n}", luo.conv_stack, "luo",
                    f"Luo et al. stack of {n} 3x3 convs ({kind})", kw)


REGISTRY = _registry()
SLIM_MODELS: tuple[str, ...] = tuple(slim.SLIM_BUILDERS)
"""The twelve TF-slim nets of Araujo et al.'s table."""
GRF_BENCHMARK: tuple[str, ...] = slim.GRF_BENCHMARK
"""The nineteen TF-slim configurations of the receptive_field library's rf_benchmark."""
MODERN_MODELS: tuple[str, ...] = ("torch_resnet50", *modern.MODERN_BUILDERS)
"""Networks deployed today (ResNet-50 v1.5 is torchvision's layout, ``torch_resnet50``)."""


def available() -> list[str]:
    """Names accepted by ``build`` (parametric families accept other values too, see module doc)."""
    return list(REGISTRY)


def entry(name: str) -> ZooEntry:
    """The registry entry of ``name`` (without ``:params``); KeyError if unknown."""
    base = name.split(":", 1)[0]
    if base in REGISTRY:
        return REGISTRY[base]
    m = _STACK.match(base)
    if m and int(m.group(2)) > 0:
        return _luo_stack_entry(m.group(1), int(m.group(2)))
    raise KeyError(f"unknown zoo model '{base}'; available: {', '.join(available())}")


def is_available(name: str) -> bool:
    """True when ``build(name)`` knows the model (parameters are checked only when building)."""
    try:
        entry(name)
    except KeyError:
        return False
    return True


def _value(text: str) -> Any:
    if "/" in text:
        return tuple(int(t) for t in text.split("/"))
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_params(name: str) -> dict[str, Any]:
    """``"model:k=v,k2=v2"`` -> ``{"k": v, "k2": v2}``."""
    _, _, tail = name.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, tail.split(",")):
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ValueError(f"zoo parameter '{item}' is not key=value")
        params[key.strip()] = _value(val.strip())
    return params


def builder(name: str) -> GraphBuilder:
    """The filled GraphBuilder of ``name`` (shapes and metadata available before ``build``)."""
    e = entry(name)
    kwargs = {**e.kwargs, **parse_params(name)}
    try:
        b = e.make(**kwargs)
    except TypeError as exc:
        raise ValueError(f"zoo model '{e.name}': bad parameters {kwargs}: {exc}") from None
    b.metadata.setdefault("model_zoo.name", name)
    return b


def build(name: str) -> onnx.ModelProto:
    """Build the named model as a checked ``onnx.ModelProto``."""
    return builder(name).build()


def endpoints(model: onnx.ModelProto) -> list[str]:
    """End-point tensor names recorded by the builder (graph outputs when none recorded)."""
    for prop in model.metadata_props:
        if prop.key == "model_zoo.endpoints" and prop.value:
            return prop.value.split(",")
    return [o.name for o in model.graph.output]
