"""Boxes clipped to the input hold exactly the pixels a unit reads (``EndPoint.boxes(clip_to)``,
``clipped_region``, ``rfgraph boxes --clip``, the box ``rfgraph show`` draws).

The paper's region [u0, v0] counts padding positions; clipped arithmetically to the input, it can
keep pixels no path reads: a crop before a zero-padded conv (unit 0 reads padding where the cropped
row was: region [0, 2], reads [1, 2]), a dilated kernel's taps in the padding, a VALID conv's dropped
tail.  The clipped boxes come from the analysis's exact regions instead (over a dilated window's
taps only: a unit between two taps may read a farther pixel, Keras' SeparableConv2D then
DepthwiseConv2D with dilations).  Oracle: onnxruntime's
dependencies (``tests/impulses.py``), every unit, equality."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph.cli import main
from tests.impulses import check_tensor, dependencies, measured_hulls

RNG = np.random.default_rng(3)


def chain(size: tuple[int, int], first: list[onnx.NodeProto], inits: dict[str, np.ndarray],
          convs: list[dict]) -> onnx.ModelProto:
    """``first`` nodes (x -> c), then convs c -> t0 -> t1 ..., one channel each."""
    nodes, tensors = list(first), "c"
    for i, attrs in enumerate(convs):
        w = f"w{i}"
        inits[w] = RNG.standard_normal((1, 1, *attrs.pop("kernel_shape"))).astype(np.float32)
        nodes.append(helper.make_node("Conv", [tensors, w], [f"t{i}"], kernel_shape=list(inits[w].shape[2:]), **attrs))
        tensors = f"t{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
                              [helper.make_tensor_value_info(tensors, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def identity() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    return [helper.make_node("Identity", ["x"], ["c"])], {}


def crop_by_slice() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    return ([helper.make_node("Slice", ["x", "st", "en", "ax"], ["c"])],
            {"st": np.array([1, 2]), "en": np.array([100, 100]), "ax": np.array([2, 3])})


def crop_by_pad() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    return [helper.make_node("Pad", ["x", "pads"], ["c"])], {"pads": np.array([0, 0, -1, -2, 0, 0, 0, 1])}


PADDED = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}  # a 3x3 conv, zero padding 1
STRIDED = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
CASES = {
    "slice-then-zero-padded-conv": ((9, 9), crop_by_slice, [PADDED]),
    "negative-pad-then-conv": ((9, 9), crop_by_pad, [PADDED, STRIDED]),
    "dilated-taps-in-padding": ((11, 10), identity, [{"kernel_shape": [3, 3], "dilations": [2, 3],
                                                      "pads": [2, 3, 2, 3]}, STRIDED]),
    "dilated-after-dilated": ((12, 12), identity, [{"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 2, 2, 2]},
                                                  {"kernel_shape": [3, 3], "dilations": [3, 3], "pads": [3, 3, 3, 3]}]),
    "valid-conv-drops-the-tail": ((10, 11), identity, [{"kernel_shape": [4, 4], "strides": [4, 4]}, PADDED]),
}


def model_of(case: str) -> onnx.ModelProto:
    size, first, convs = CASES[case]
    nodes, inits = first()
    return chain(size, nodes, dict(inits), [dict(c) for c in convs])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_clipped_boxes_are_the_hull_of_what_each_unit_reads(case: str) -> None:
    proto = model_of(case)
    a = rfgraph.analyze(proto)
    size = CASES[case][0]
    names = [n.output[0] for n in proto.graph.node if n.op_type == "Conv"]
    arithmetic_misses = 0
    for name in names:
        assert check_tensor(a, proto, name) > 0  # clipped_region == the measured hull, every unit
        deps, base = dependencies(proto, "x", name, [2, 3])
        boxes = a[name].boxes(clip_to=size)
        for u in itertools.product(range(base.shape[2]), range(base.shape[3])):
            measured = measured_hulls(deps, 2, (0, 0, *u))
            assert [(int(boxes[u][k]), int(boxes[u][k + 2])) for k in range(2)] == measured, (name, u)
            region = a[name].region(u)
            arithmetic_misses += any(m is not None and (max(r[0], 0), min(r[1], n - 1)) != m
                                     for r, m, n in zip(region, measured, size))
    assert arithmetic_misses > 0  # the case has units whose arithmetic clip keeps unread pixels


def test_boxes_clip_and_show_draw_the_pixels_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CLI: unit (0, 0) after a crop of row 0 and columns 0-1 and a zero-padded conv reads
    rows 1-2 and columns 2-3 (the arithmetic clip said [0, 2] and [1, 3])."""
    path = tmp_path / "m.onnx"
    onnx.save(model_of("slice-then-zero-padded-conv"), path)
    assert main(["boxes", str(path), "--output", "t0", "--index", "0,0", "--clip"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[:3] == ["0,0", "[1,", "2]"] and row[3:5] == ["[2,", "3]"], row
    assert main(["show", str(path), "--output", "t0", "--index", "0,0", "--no-erf", "--scale", "1",
                 "-o", str(tmp_path / "s.png"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["picture"]["box"] == [2, 1, 3, 2]  # x0, y0, x1, y1
    assert doc["region"] == [[0, 2], [1, 3]]  # the paper's region, unclipped, as before


def test_a_nearest_upsampling_by_tile_keeps_the_exact_clip() -> None:
    """Keras' UpSampling2D as tf2onnx writes it (Unsqueeze, Tile, Reshape: each row repeated) after
    a crop and a zero-padded conv: every element of a repeated row reads what its row reads (the
    upsampled map fell back to the arithmetic clip, keeping the cropped row 0; found by a helper)."""
    ints = {"st": [1], "en": [100], "ax": [2], "u": [3], "rep": [1, 1, 1, 2, 1], "shp": [1, 1, 14, 5]}
    inits = {k: np.array(v, np.int64) for k, v in ints.items()}
    inits["w"] = RNG.uniform(0.5, 1.5, (1, 1, 3, 1)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["c"]),
             helper.make_node("Conv", ["c", "w"], ["k"], kernel_shape=[3, 1], pads=[1, 0, 1, 0]),
             helper.make_node("Unsqueeze", ["k", "u"], ["e"]),
             helper.make_node("Tile", ["e", "rep"], ["t"]),
             helper.make_node("Reshape", ["t", "shp"], ["y"])]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = rfgraph.analyze(proto)
    assert a["y"].units == (14, 5) and check_tensor(a, proto, "y") == 70
    assert a["y"].clipped_region((0, 0), (8, 5))[0] == (1, 2)  # row 0 is cropped: the arithmetic clip kept it
