"""Attribute sweeps of our own for ops the node suite covers thinly (one small model per
attribute combination, studied input x of shape (1, 2, H, W))."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conformance.cases import Case


def _model(node: onnx.NodeProto, x_shape: tuple[int, ...], inits: dict[str, np.ndarray],
           opset: int = 19) -> onnx.ModelProto:
    graph = helper.make_graph([node], "sweep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def resize_cases() -> list[Case]:
    """Resize nearest/linear with every coordinate transform and nearest mode, up and down."""
    out = []
    coords = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]
    nearest = ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"]
    for coord, (mode, nm), (h, w) in itertools.product(
            coords, [("nearest", n) for n in nearest] + [("linear", "floor")], [(4, 8), (5, 3), (6, 1)]):
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode, nearest_mode=nm,
                                coordinate_transformation_mode=coord)
        model = _model(node, (1, 2, 4, 6), {"sizes": np.array([1, 2, h, w], np.int64)})
        out.append(Case(f"sweep_resize_{mode}_{nm}_{coord}_{h}x{w}", "Resize", model, "x", _x((1, 2, 4, 6))))
    return out


CROP_ROIS = {"inside": (0.2, 0.7), "outside": (-0.3, 1.4), "start": (-0.6, 0.5), "reversed": (0.8, 0.1)}


def crop_resize_cases() -> list[Case]:
    """Resize tf_crop_and_resize: nearest (each mode), linear and cubic over a constant roi
    inside the input, past both ends (extrapolated units hold extrapolation_value), past one
    end, and reversed; up and down; on x directly and after a 3x3 Conv."""
    out = []
    methods = [("nearest", n) for n in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")] + \
        [("linear", "floor"), ("cubic", "floor")]
    for (mode, nm), (roi_name, (start, end)), (h, w), conv in itertools.product(
            methods, CROP_ROIS.items(), [(7, 3), (2, 9)], (False, True)):
        roi = np.array([0, 0, start, start / 2, 1, 1, end, end / 2 + 0.5], np.float32)
        inits = {"roi": roi, "sizes": np.array([1, 2, h, w], np.int64)}
        resize = helper.make_node("Resize", ["c" if conv else "x", "roi", "", "sizes"], ["y"], mode=mode,
                                  nearest_mode=nm, coordinate_transformation_mode="tf_crop_and_resize",
                                  extrapolation_value=2.5)
        nodes = [resize]
        if conv:
            inits["w"] = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
            nodes.insert(0, helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]))
        graph = helper.make_graph(nodes, "crop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 2, 5, 6))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, k) for k, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        name = f"sweep_resize_crop_{mode}_{nm}_{roi_name}_{h}x{w}" + ("_after_conv" if conv else "")
        out.append(Case(name, "Resize", model, "x", _x((1, 2, 5, 6))))
    return out


def pad_cases() -> list[Case]:
    """Pad in every mode, with pads larger than one and negative."""
    out = []
    for mode, pads in itertools.product(["constant", "reflect", "edge", "wrap"],
                                        [[0, 0, 2, 1, 0, 0, 1, 3], [0, 0, 1, -1, 0, 0, 2, 0]]):
        node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
        model = _model(node, (1, 2, 5, 6), {"pads": np.array(pads, np.int64)})
        out.append(Case(f"sweep_pad_{mode}_{'_'.join(map(str, pads))}", "Pad", model, "x", _x((1, 2, 5, 6))))
    return out


def pad_chain(layers: list[tuple], size: int = 9, seed: int = 0) -> Case:
    """A chain of Conv ("conv", (kernel, stride, pad)) and Pad ("pad", (mode, begin, end)) layers
    on a (1, 2, size, size) input: copying pads after strided layers and after one another."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for i, (kind, (a, b, c)) in enumerate(layers):
        if kind == "conv":
            inits[f"w{i}"] = rng.standard_normal((2, 2, a, a)).astype(np.float32)
            nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"t{i}"], strides=[b, b], pads=[c] * 4))
        else:
            inits[f"p{i}"] = np.array([0, 0, b, b, 0, 0, c, c], np.int64)
            nodes.append(helper.make_node("Pad", [cur, f"p{i}"], [f"t{i}"], mode=a))
        cur = f"t{i}"
    graph = helper.make_graph(nodes, "pad_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 (1, 2, size, size))],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    name = "sweep_pad_chain_" + "_".join(f"{k}{a}{b}{c}" for k, (a, b, c) in layers)
    return Case(name, "Pad", model, "x", _x((1, 2, size, size)))


PAD_CHAINS = [  # each was unsound before the copies were followed (or is the common generator block)
    [("conv", (3, 2, 1)), ("pad", ("reflect", 2, 1)), ("conv", (3, 1, 0))],
    [("pad", ("reflect", 3, 3)), ("conv", (3, 1, 0)), ("pad", ("reflect", 1, 1)), ("conv", (3, 1, 0))],
    [("pad", ("wrap", 1, 2)), ("pad", ("wrap", 2, 2))],
    [("pad", ("wrap", 2, 0)), ("pad", ("reflect", 2, 2))],
    [("pad", ("edge", 2, 1)), ("pad", ("wrap", 2, 2)), ("pad", ("wrap", 0, 2))],
    [("conv", (3, 2, 1)), ("pad", ("wrap", 1, 2)), ("pad", ("wrap", 1, 1))],
]


def batch_norm_cases() -> list[Case]:
    """BatchNormalization in inference and in training mode."""
    out = []
    for training in (0, 1):
        outputs = ["y", "rm", "rv"] if training else ["y"]
        node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], outputs, training_mode=training)
        inits = {k: np.abs(_x((2,))) + 0.5 for k in "sbmv"}
        model = _model(node, (2, 2, 4, 5), inits)
        del model.graph.output[1:]
        out.append(Case(f"sweep_batchnorm_training_{training}", "BatchNormalization", model, "x", _x((2, 2, 4, 5))))
    return out


TILES = {  # name -> (repeats, the op before the Tile); copies of a spatial axis of size > 1 are refused
    "channels": ([1, 3, 1, 1], "Conv"), "batch": ([2, 1, 1, 1], "Conv"), "none": ([1, 1, 1, 1], "Conv"),
    "reduced_h": ([1, 2, 4, 1], "ReduceMean"), "spatial_w": ([1, 1, 1, 2], "Conv"),
}


def tile_cases() -> list[Case]:
    """Tile after a 3x3 Conv (copies of channels, of the batch, of a spatial axis) and after a mean
    over H (copies along the reduced axis: a broadcast)."""
    out = []
    for name, (repeats, before) in TILES.items():
        inits: dict[str, np.ndarray] = {"repeats": np.array(repeats, np.int64)}
        if before == "Conv":
            inits["w"] = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
            first = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
        else:
            inits["axes"] = np.array([2], np.int64)
            first = helper.make_node("ReduceMean", ["x", "axes"], ["c"], keepdims=1)
        graph = helper.make_graph([first, helper.make_node("Tile", ["c", "repeats"], ["y"])], "tile",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 2, 4, 5))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, k) for k, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        out.append(Case(f"sweep_tile_{name}", "Tile", model, "x", _x((1, 2, 4, 5))))
    return out


def top_k_cases() -> list[Case]:
    """TopK of a (1, 2, 4, 5) map along W, along H (which positions it keeps depends on their
    values: the axis becomes global) and along the channels (each position on its own)."""
    out = []
    for axis, k in ((3, 2), (2, 3), (1, 1)):
        node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=axis)
        model = _model(node, (1, 2, 4, 5), {"k": np.array([k], np.int64)})
        del model.graph.output[1:]
        out.append(Case(f"sweep_top_k_axis_{axis}", "TopK", model, "x", _x((1, 2, 4, 5))))
    return out


def gather_elements_cases() -> list[Case]:
    """GatherElements of a (1, 2, 4, 5) map by constant indices along W (which column each element
    reads: the axis becomes global), along H and along the channels (each position on its own)."""
    out = []
    rng = np.random.default_rng(2)
    for axis, n in ((3, 5), (2, 4), (1, 2)):
        node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)
        model = _model(node, (1, 2, 4, 5), {"i": rng.integers(0, n, (1, 2, 4, 5)).astype(np.int64)})
        out.append(Case(f"sweep_gather_elements_axis_{axis}", "GatherElements", model, "x", _x((1, 2, 4, 5))))
    return out


def grid_sample_cases() -> list[Case]:
    """GridSample whose grid is computed from the image (deformable attention's sampling points:
    tanh of a 1x1 conv, moved to the last axis), so the gradient flows to both; every padding and
    corner convention, and nearest (whose grid has no gradient)."""
    out = []
    w = np.random.default_rng(3).standard_normal((2, 2, 1, 1)).astype(np.float32)
    for mode, padding, align in (("linear", "zeros", 0), ("linear", "zeros", 1), ("linear", "border", 0),
                                 ("linear", "border", 1), ("nearest", "zeros", 0)):
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Tanh", ["c"], ["t"]),
                 helper.make_node("Mul", ["t", "s"], ["m"]),  # past the border: padding is read
                 helper.make_node("Transpose", ["m"], ["grid"], perm=[0, 2, 3, 1]),
                 helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=padding,
                                  align_corners=align)]
        graph = helper.make_graph(nodes, "grid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 2, 5, 6))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1.3), "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        out.append(Case(f"sweep_grid_sample_from_input_{mode}_{padding}_{align}", "GridSample", model, "x",
                        _x((1, 2, 5, 6))))
    return out


COL2IM = {  # name -> (block, strides, pads, dilations) folding the blocks of a (1, 2, 7, 8) map's conv
    "overlap": ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), "strided": ((3, 2), (2, 2), (1, 0, 0, 1), (1, 1)),
    "dilated": ((2, 2), (1, 2), (0, 1, 1, 0), (2, 1)), "gaps": ((2, 1), (3, 2), (0, 0, 0, 0), (1, 1)),
    "strided_dilated": ((2, 2), (2, 2), (0, 0, 0, 0), (3, 1)),  # taps skip blocks inside the hull
}


def col2im_cases() -> list[Case]:
    """Col2Im (torch's F.fold) of blocks a strided Conv computes from the map (VOLO's outlooker folds
    its attention's output this way): the blocks axis holds the 2-D grid, row-major; overlapping,
    strided, dilated blocks, and blocks leaving pixels of the image uncovered."""
    out = []
    rng = np.random.default_rng(4)
    for name, (block, strides, pads, dilations) in COL2IM.items():
        image = [(g - 1) * s + d * (k - 1) + 1 - p - q
                 for g, s, d, k, p, q in zip((4, 3), strides, dilations, block, pads[:2], pads[2:])]
        k = block[0] * block[1]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Reshape", ["c", "flat"], ["blocks"]),
                 helper.make_node("Col2Im", ["blocks", "image", "block"], ["y"], strides=list(strides),
                                  pads=list(pads), dilations=list(dilations))]
        inits = {"w": rng.standard_normal((2 * k, 2, 2, 2)).astype(np.float32),
                 "flat": np.array([1, 2 * k, 12], np.int64), "image": np.array(image, np.int64),
                 "block": np.array(block, np.int64)}
        graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 2, 8, 6))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, n) for n, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        out.append(Case(f"sweep_col2im_{name}", "Col2Im", model, "x", _x((1, 2, 8, 6))))
    return out


def sweep_cases() -> list[Case]:
    """Every sweep."""
    return (resize_cases() + crop_resize_cases() + pad_cases() + [pad_chain(c) for c in PAD_CHAINS]
            + batch_norm_cases() + tile_cases() + top_k_cases() + gather_elements_cases() + grid_sample_cases()
            + col2im_cases())
