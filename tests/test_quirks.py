"""Exporter quirks: the same layers written the ways real exporters write them give the same
receptive field, and that field is the one onnxruntime measures.

Cases: weights in Constant nodes; weights built by ConstantOfShape and pads built by constant
arithmetic (Concat/Slice/Cast, as torch exports reflect padding); Conv without kernel_shape;
auto_pad SAME_UPPER/SAME_LOWER/VALID at odd and even sizes (P recomputed per --input-shape and
flagged size-dependent); ceil_mode (more units, same r/S/P); channels-last inputs (NHWC +
Transpose); fixed batch 1 vs symbolic batch vs Paddle's -1; opsets 7 to 22 (Pad, Slice,
Upsample/Resize in each opset's form); external-data models (weights in a side file).

Oracle: onnxruntime.  For each input row (then column) alone, perturb it and see whether the
chosen output unit changes: the rows that do must be exactly the unit's region clipped to the
input (all weights are positive, so every tap counts).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rfgraph import analyze
from rfgraph.cli import main

SIZE = 17


def vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def make(nodes: list, inits: list, opset: int = 13, shape=(1, 1, SIZE, SIZE), out: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "quirk", [vi("x", list(shape))], [vi(out, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 21 else 10
    return m


def ones(name: str, shape) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def measured(model: onnx.ModelProto, out: str, unit: tuple[int, ...], spatial: tuple[int, int] = (2, 3),
             shape: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """Per spatial axis, the first and last input index whose perturbation changes ``unit``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(vi(out, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = shape or tuple(d.dim_value or 1 for d in m.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.default_rng(0).uniform(1, 2, dims).astype(np.float32)
    base = sess.run(None, {"x": x})[0]
    found = []
    for axis in spatial:
        hits = []
        for i in range(dims[axis]):
            y = x.copy()
            index = [slice(None)] * len(dims)
            index[axis] = i
            y[tuple(index)] += 1.0
            if sess.run(None, {"x": y})[0][unit] != base[unit]:
                hits.append(i)
        found.append((min(hits), max(hits)))
    return found


def clipped(ep, index, sizes) -> list[tuple[int, int]]:
    return [(max(a, 0), min(b, n - 1)) for (a, b), n in zip(ep.region(index), sizes)]


def conv_pool(weight_nodes: list, weight_inits: list, weight: str = "w") -> onnx.ModelProto:
    """Conv 3x3/2 pad 1 (weight from ``weight``) -> Relu -> AveragePool 3x3/2 pad 1 (not MaxPool:
    a max can hide a perturbed tap from the oracle)."""
    nodes = weight_nodes + [
        helper.make_node("Conv", ["x", weight], ["a"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("AveragePool", ["b"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])]
    return make(nodes, weight_inits)


REFERENCE = conv_pool([], [ones("w", (1, 1, 3, 3))])


def rsp(model: onnx.ModelProto, out: str = "y", **kw):
    ep = analyze(model, **kw)[out]
    return ep.r, ep.S, ep.P


def test_reference_against_onnxruntime() -> None:
    """The plain initializer version: r=7, S=4, P=3 by eqs. 2, 9, 10, and as measured."""
    a = analyze(REFERENCE)
    ep = a["y"]
    assert (ep.r, ep.S, ep.P) == ((7, 7), (4, 4), (3, 3))
    for unit in [(0, 0), (2, 3), (4, 4)]:
        assert measured(REFERENCE, "y", (0, 0) + unit) == clipped(ep, unit, (SIZE, SIZE))


def test_weights_in_constant_node() -> None:
    const = helper.make_node("Constant", [], ["w"], name="wconst",
                             value=numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32)))
    assert rsp(conv_pool([const], [])) == rsp(REFERENCE)


def test_weights_from_constant_of_shape_without_kernel_shape() -> None:
    """Weight = ConstantOfShape([1,1,3,3]) and no kernel_shape attribute: the kernel comes from the
    inferred weight shape."""
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"], name="cos",
                              value=numpy_helper.from_array(np.array([1.0], np.float32)))]
    model = conv_pool(nodes, [ints("wshape", [1, 1, 3, 3])])
    assert rsp(model) == rsp(REFERENCE)
    ep = analyze(model)["y"]
    assert measured(model, "y", (0, 0, 2, 2)) == clipped(ep, (2, 2), (SIZE, SIZE))


def test_pads_built_by_constant_arithmetic() -> None:
    """torch-style F.pad(x, (2, 1, 2, 1), "reflect"): pads = Cast(Reshape(Transpose(Slice(Reshape(
    Concat([2, 1, 2, 1], ConstantOfShape([4])))))), all constants; folded to [0,0,2,2, 0,0,1,1]
    the field is a shift by 2 then a 3x3 conv."""
    nodes = [
        helper.make_node("ConstantOfShape", ["six"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["two_one", "zeros"], ["cat"], axis=0),
        helper.make_node("Reshape", ["cat", "shape42"], ["r"]),
        helper.make_node("Slice", ["r", "m1", "mbig", "zero", "m1"], ["flip"]),
        helper.make_node("Transpose", ["flip"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "m1"], ["flat"]),
        helper.make_node("Cast", ["flat"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    inits = [ints("six", [4]), ints("two_one", [2, 1, 2, 1]), ints("shape42", [4, 2]), ints("m1", [-1]),
             ints("mbig", [-(2**62)]), ints("zero", [0]), ones("w", (1, 1, 3, 3))]
    model = make(nodes, inits)
    from rfgraph.onnx_import import build_graph, load_model
    assert list(build_graph(load_model(model)).constant("pads")) == [0, 0, 2, 2, 0, 0, 1, 1]
    a = analyze(model)
    ep = a["y"]
    assert (ep.r, ep.S, ep.P) == ((3, 3), (1, 1), (2, 2))
    assert ep.region((5, 5)) == ((3, 5), (3, 5))


# ---------------------------------------------------------------- auto_pad


def same_begin(mode: str, size: int, k: int = 4, s: int = 2) -> int:
    """Begin pad of auto_pad (ONNX operator spec): total = max((ceil(n/s)-1)*s + k - n, 0)."""
    if mode == "VALID":
        return 0
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2 if mode == "SAME_UPPER" else total - total // 2


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size", [16, 17])
def test_auto_pad_recomputed_per_input_size(mode: str, size: int) -> None:
    """Conv 4x4/2 with auto_pad: begin pad depends on the size for SAME (even kernel, stride 2);
    the report recomputes it for --input-shape and flags it; regions match onnxruntime."""
    model = make([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[4, 4],
                                   strides=[2, 2], auto_pad=mode)],
                 [ones("w", (1, 1, 4, 4))], shape=(1, 1, "H", "W"))
    a = analyze(model, {"x": (1, 1, size, size)})
    ep = a["y"]
    assert ep.P == (same_begin(mode, size),) * 2 and ep.r == (4, 4) and ep.S == (2, 2)
    varies = len({same_begin(mode, n) for n in range(1, 9)}) > 1  # SAME_LOWER: 2 at odd sizes, 1 at even
    assert ep.size_dependent == ("conv" if varies else None)
    for unit in [(0, 0), (ep.units[0] - 1, 3)]:
        assert measured(model, "y", (0, 0) + unit, shape=(1, 1, size, size)) == clipped(ep, unit, (size, size))


def test_size_dependence_in_the_cli_report(tmp_path, capsys) -> None:
    model = make([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[4, 4],
                                   strides=[2, 2], auto_pad="SAME_LOWER")],
                 [ones("w", (1, 1, 4, 4))], shape=(1, 1, "H", "W"))
    path = tmp_path / "same.onnx"
    onnx.save(model, str(path))
    assert main(["analyze", str(path), "--input-shape", "x:1x1x16x16"]) == 0
    out16 = capsys.readouterr().out
    assert main(["analyze", str(path), "--input-shape", "x:1x1x17x17"]) == 0
    out17 = capsys.readouterr().out
    assert "depends on input size (conv)" in out16 and "depends on input size (conv)" in out17
    assert analyze(path, {"x": (1, 1, 16, 16)})["y"].P != analyze(path, {"x": (1, 1, 17, 17)})["y"].P


# ---------------------------------------------------------------- layouts and batch


def test_channels_last_input() -> None:
    """NHWC input + Transpose(0,3,1,2), as TF/keras exports: spatial axes 1 and 2, same field."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])] + [
        helper.make_node("Conv", ["xt", "w"], ["a"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("AveragePool", ["b"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])]
    model = make(nodes, [ones("w", (1, 1, 3, 3))], shape=(1, SIZE, SIZE, 1))
    a = analyze(model)
    assert a.spatial_axes == (1, 2)
    assert rsp(model) == rsp(REFERENCE)
    ep = a["y"]
    assert measured(model, "y", (0, 0, 2, 3), spatial=(1, 2)) == clipped(ep, (2, 3), (SIZE, SIZE))


@pytest.mark.parametrize("batch", [1, "N", -1])
def test_batch_fixed_symbolic_or_minus_one(batch) -> None:
    """Batch 1, a symbolic batch, and Paddle's -1 all analyse the same."""
    model = conv_pool([], [ones("w", (1, 1, 3, 3))])
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    if batch == "N":
        dim.dim_param = "N"
    else:
        dim.dim_value = batch
    a = analyze(model)
    assert a.input_shape[0] == 1 and rsp(model) == rsp(REFERENCE)


# ---------------------------------------------------------------- opsets 7..22


def opset_model(opset: int) -> onnx.ModelProto:
    """Conv/2 -> Relu -> MaxPool/2 -> Pad(1, 1) -> 2x nearest upsampling -> Slice(1:) -> Add,
    each op in the form its opset defines."""
    inits = [ones("w", (1, 1, 3, 3))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MaxPool", ["b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    if opset < 11:
        nodes.append(helper.make_node("Pad", ["c"], ["d"], pads=[0, 0, 1, 1, 0, 0, 1, 1]))
    else:
        nodes.append(helper.make_node("Pad", ["c", "pads"], ["d"]))
        inits.append(ints("pads", [0, 0, 1, 1, 0, 0, 1, 1]))
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    if opset < 9:
        nodes.append(helper.make_node("Upsample", ["d"], ["e"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]))
    elif opset == 9:
        nodes.append(helper.make_node("Upsample", ["d", "scales"], ["e"], mode="nearest"))
        inits.append(scales)
    elif opset == 10:
        nodes.append(helper.make_node("Resize", ["d", "scales"], ["e"], mode="nearest"))
        inits.append(scales)
    else:
        nodes.append(helper.make_node("Resize", ["d", "", "scales"], ["e"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        inits.append(scales)
    if opset < 10:
        nodes.append(helper.make_node("Slice", ["e"], ["f"], starts=[1, 1], ends=[1000, 1000], axes=[2, 3]))
    else:
        nodes.append(helper.make_node("Slice", ["e", "st", "en", "ax"], ["f"]))
        inits += [ints("st", [1, 1]), ints("en", [1000, 1000]), ints("ax", [2, 3])]
    nodes.append(helper.make_node("Add", ["f", "f"], ["y"]))
    return make(nodes, inits, opset=opset)


def test_opsets_7_to_22_agree_and_match_onnxruntime() -> None:
    """The same net in every opset from 7 to 22: identical fields; measured on opset 7, 13, 22."""
    fields = {op: analyze(opset_model(op))["y"] for op in range(7, 23)}
    first = fields[7]
    for op, ep in fields.items():
        assert (ep.r, ep.S, ep.P, ep.units) == (first.r, first.S, first.P, first.units), op
        assert ep.region((3, 4)) == first.region((3, 4)), op
    for op in (7, 13, 22):
        ep = fields[op]
        for unit in [(3, 4), (5, 5)]:
            assert measured(opset_model(op), "y", (0, 0) + unit) == clipped(ep, unit, (SIZE, SIZE)), op


# ---------------------------------------------------------------- external data


def test_external_data_model(tmp_path) -> None:
    """Weights saved in a side file (onnx.save with save_as_external_data) load and analyse the
    same; the folded value of a constant built from an external weight is the real one."""
    model = conv_pool([], [ones("w", (1, 1, 3, 3))])
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    assert (tmp_path / "ext.weights").is_file()
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    a = analyze(path)
    assert (a["y"].r, a["y"].S, a["y"].P) == rsp(REFERENCE)
    assert float(a.graph.constant("w").sum()) == 9.0


@pytest.mark.parametrize("size", [16, 17])
def test_ceil_mode_changes_units_not_r_s_p(size: int) -> None:
    """AveragePool 3x3/2 with ceil_mode: one more unit at odd sizes (its window runs into the end
    padding), the same r, S, P, not flagged as size-dependent; the last unit's region as measured."""
    nodes = [helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=1)]
    model = make(nodes, [], shape=(1, 1, "H", "W"))
    ep = analyze(model, {"x": (1, 1, size, size)})["y"]
    assert ep.units == (-(-(size - 3) // 2) + 1,) * 2
    assert (ep.r, ep.S, ep.P, ep.size_dependent) == ((3, 3), (2, 2), (0, 0), None)
    last = (ep.units[0] - 1, ep.units[1] - 1)
    assert measured(model, "y", (0, 0) + last, shape=(1, 1, size, size)) == clipped(ep, last, (size, size))
