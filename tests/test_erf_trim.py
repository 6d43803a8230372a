"""Every layer on the unit's cone (``rfgraph.trim``): each tensor computed only where the unit reads it.

Cases: window nodes of every geometry the rewrite crops (Conv with stride, dilation, groups,
asymmetric pads, auto_pad SAME_UPPER / SAME_LOWER / VALID; Max/Average/Lp pools with ceil_mode
and count_include_pad) in 1-D, 2-D and 3-D, at centre, corner and border units; broadcast
operands (per-channel, full-size constant maps, scalars), BatchNormalization, Concat over
channels, residual merges; Resize by a whole factor (nearest, linear, cubic; coordinate modes that
shift; scales or sizes), while align_corners keeps the whole tensor; ConvTranspose (strides,
pads, output_padding, dilation, groups, bias; 1-D to 3-D); reductions over the channels (six ops,
keepdims 0 and 1, axes as attribute or input) and a softmax written out with them, while one over
a position keeps the whole tensor; DepthToSpace (DCR, CRD) and SpaceToDepth; random
multi-path models; a ViT's last block on the unit's token (MatMul rows, LayerNorm, Softmax,
Transpose, Reshape, Slice, Shape nodes kept at the original's shapes), a box over several rows of
tokens; the ERF through it with weights redrawn, and of a global unit; and where it is not used
(finite differences, several units sharing the whole image, too little saved).
Oracles: onnxruntime's forward of the whole model (the rewritten model's output equals the whole
output on its box), the whole model's gradient graph (the gradient through the rewrite equals it,
<= 1e-6 of its max; that graph is checked against torch autograd in test_erf.py), and a
brute-force cone: the positions each layer must compute, found by visiting every kernel tap of
every position read (sets, no interval arithmetic), whose multiply-accumulates the rewrite must
count exactly; for the ViT, the closed form of what one token saves in the last block.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rfgraph import erf as erf_mod
from rfgraph import trim, vjp
from rfgraph.erf import compute_erfs
from rfgraph.errors import RFGraphError
from rfgraph.onnx_import import prepare
from tests.dag_gen import random_dag
from tests.graphs import G

TOL = 1e-6
NOTE = "each layer on the unit's cone"


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return vjp.tensor_shapes(prepare(model, dims), "x")[0]


def _trim(model: onnx.ModelProto, unit: tuple[int, ...]) -> tuple[trim.Trimmed, dict[str, tuple[int, ...]]]:
    shapes = _shapes(model)
    out = model.graph.output[0].name
    rank = len(shapes[out])
    made = trim.trim(model, shapes, out, tuple(range(2, rank)), tuple((u, u) for u in unit))
    assert made is not None, "the rewrite should save something here"
    return made, shapes


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _forward_equal(model: onnx.ModelProto, unit: tuple[int, ...]) -> trim.Trimmed:
    """The rewritten model's output is the whole model's on its box (onnxruntime both)."""
    made, shapes = _trim(model, unit)
    assert made.box == tuple((u, u) for u in unit)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 2  # 2 where the batch is free
    x = np.random.default_rng(3).standard_normal((batch,) + shapes["x"][1:]).astype(np.float32)
    whole, part = _run(model, x), _run(made.model, x)
    box = (slice(None), slice(None)) + tuple(slice(lo, hi + 1) for lo, hi in made.box)
    assert part.shape == whole[box].shape
    np.testing.assert_allclose(part, whole[box], rtol=1e-5, atol=1e-6 * float(np.abs(whole).max()))
    return made


def _cropped_at_corners(model: onnx.ModelProto, before: str) -> int:
    """At how many of ``_corners``' units the rewrite computes tensor ``before`` on fewer
    positions than the whole model (each unit's value checked equal to the whole model's)."""
    whole = math.prod(_shapes(model)[before][2:])
    out = _shapes(model)[model.graph.output[0].name]
    return sum(math.prod(_shapes(_forward_equal(model, unit).model)[before][2:]) < whole for unit in _corners(out))


def _corners(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The centre, the first and the last unit, and one on a border."""
    sizes = shape[2:]
    centre = tuple((n - 1) // 2 for n in sizes)
    border = tuple(n - 1 if k == 0 else (n - 1) // 2 for k, n in enumerate(sizes))
    return [centre, (0,) * len(sizes), tuple(n - 1 for n in sizes), border]


# ------------------------------------------------------------------ window geometry, forward

WINDOWS = {  # name: (op, kernel, stride, attrs)
    "conv_s2_asym": ("Conv", 3, 2, {"pads": "asym"}),
    "conv_d2": ("Conv", 3, 1, {"d": 2}),
    "conv_k4_s3": ("Conv", 4, 3, {"pads": "asym"}),
    "conv_groups": ("Conv", 3, 1, {"group": 2}),
    "conv_same_upper": ("Conv", 4, 2, {"auto_pad": "SAME_UPPER"}),
    "conv_same_lower": ("Conv", 4, 2, {"auto_pad": "SAME_LOWER"}),
    "conv_valid": ("Conv", 3, 2, {"auto_pad": "VALID"}),
    "maxpool_ceil": ("MaxPool", 3, 2, {"ceil_mode": 1, "pads": "asym"}),
    "maxpool_d2": ("MaxPool", 2, 1, {"dilations": 2}),
    "avgpool_incl": ("AveragePool", 3, 2, {"count_include_pad": 1, "pads": "asym"}),
    "avgpool_excl_ceil": ("AveragePool", 3, 2, {"count_include_pad": 0, "ceil_mode": 1, "pads": "asym"}),
    "lppool": ("LpPool", 3, 2, {"p": 2, "pads": "asym"}),
}


def _window_model(name: str, ndim: int) -> onnx.ModelProto:
    """conv -> the window node -> relu -> conv: the window node sits where the cone is partial."""
    op, k, s, attrs = WINDOWS[name]
    g = G((13, 11, 9)[:ndim], seed=7)
    x = g.relu(g.conv("x", 3, pads=[1] * (2 * ndim), cout=4))
    pads = [1] * ndim + [0] * ndim if attrs.get("pads") == "asym" else None
    if op == "Conv":
        cout = 4
        x = g.conv(x, k, s, pads=pads, d=int(attrs.get("d", 1)), cout=cout, group=int(attrs.get("group", 1)),
                   auto_pad=attrs.get("auto_pad"))  # type: ignore[arg-type]
    else:
        extra = {a: [v] * ndim if a == "dilations" else v for a, v in attrs.items() if a != "pads"}
        x = g.pool(op, x, k, s, pads=pads, **extra)
    return g.model(g.conv(g.relu(x), 3, pads=[0] * (2 * ndim)))


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_window_nodes_on_their_cone(name: str, ndim: int) -> None:
    """Each unit's value through the rewritten model is the whole model's."""
    model = _window_model(name, ndim)
    out = _shapes(model)[model.graph.output[0].name]
    for unit in _corners(out):
        made = _forward_equal(model, unit)
        assert made.macs < made.macs_before


# ------------------------------------------------------------------ brute-force cone

def _brute_cone(layers: list[tuple[int, int, int, int]], sizes: list[int], unit: tuple[int, int]
                ) -> list[int]:
    """Per layer, how many output positions the rewrite computes: the box around the positions the
    next layer reads, found by visiting every tap of every position of that layer's box and keeping
    those inside its input (``layers``: kernel, stride, dilation, begin pad; ``sizes``: each
    layer's input size, square)."""
    box = [(unit[0], unit[0]), (unit[1], unit[1])]
    counts: list[int] = []
    for (k, s, d, p), n in zip(reversed(layers), reversed(sizes)):
        counts.append(math.prod(hi - lo + 1 for lo, hi in box))
        read = [{o * s - p + j * d for o in range(lo, hi + 1) for j in range(k)} & set(range(n)) for lo, hi in box]
        box = [(min(r), max(r)) for r in read]
    return counts[::-1]


@pytest.mark.parametrize("seed", range(12))
def test_multiply_accumulates_match_the_brute_force_cone(seed: int) -> None:
    """A random chain of convolutions: the MACs the rewrite counts are those of the brute-force
    cone's positions, layer by layer, and its output still matches the whole model's."""
    rng = np.random.default_rng(seed)
    g = G((23, 23), seed=seed)
    x, size = "x", 23
    layers: list[tuple[int, int, int, int]] = []
    sizes: list[int] = []
    costs: list[int] = []  # MACs per output position
    for _ in range(int(rng.integers(3, 6))):
        k, s, d = int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 1, 2])), int(rng.choice([1, 2]))
        p, e = (int(v) for v in rng.integers(0, (k - 1) * d + 1, size=2))
        out_size = (size + p + e - (k - 1) * d - 1) // s + 1
        if out_size < 3:
            break
        costs.append(2 * g.channels[x] * k * k)
        x = g.conv(x, k, s, pads=[p, p, e, e], d=d, cout=2)
        layers.append((k, s, d, p))
        sizes.append(size)
        size = out_size
    model = g.model(x)
    unit = (int(rng.integers(0, size)), int(rng.integers(0, size)))
    expected = sum(count * cost for count, cost in zip(_brute_cone(layers, sizes, unit), costs))
    made = trim.trim(model, _shapes(model), x, (2, 3), ((unit[0], unit[0]), (unit[1], unit[1])))
    whole = sum(cost * n * n for cost, n in zip(costs, sizes[1:] + [size]))
    if made is None:  # refused: it would save under MIN_GAIN, as the brute force says
        assert whole - expected < trim.MIN_GAIN * whole
        return
    assert (made.macs, made.macs_before) == (expected, whole)
    _forward_equal(model, unit)


# ------------------------------------------------------------------ operands and merges

def _operands_model() -> onnx.ModelProto:
    """Residual block with BatchNormalization, a per-channel bias, a full-size positional map, a
    scalar, PRelu, a Concat over channels of two branches, a Split over channels."""
    g = G((12, 12), channels=2, seed=9)
    x = g.conv("x", 3, pads=[1] * 4, cout=3)
    scale, bias, mean, var = (g._init(np.full(3, v, np.float32)) for v in (1.5, 0.1, 0.2, 0.8))
    x = g.node("BatchNormalization", [x, scale, bias, mean, var])
    x = g.node("Add", [x, g._init(np.random.default_rng(1).standard_normal((1, 3, 12, 12)), "pos")])
    x = g.node("PRelu", [x, g._init(np.array([[[0.1]], [[0.2]], [[0.3]]]), "slope")])
    y = g.conv(g.relu(g.conv(x, 3, pads=[1] * 4, cout=3)), 3, pads=[1] * 4, cout=3)
    x = g.node("Mul", [g.add(x, y), g._init(np.array(0.5), "half")])
    x = g.node("Concat", [g.conv(x, 1), g.conv(x, 3, pads=[1] * 4)], 4, axis=1)
    a, b = g.node("Split", [x, g._init(np.array([1, 3]), "sizes")], n_out=2, axis=1)
    g.channels[a], g.channels[b] = 1, 3
    x = g.node("Concat", [g.conv(a, 3, pads=[1] * 4, cout=1), b], 4, axis=1)  # a C2f-like split
    return g.model(g.conv(g.relu(x), 3, 2, pads=[1] * 4))


def test_broadcast_operands_and_merges() -> None:
    """Constants broadcast per channel stay whole, a full-size one is sliced to the box, the
    residual merge, the Concat and the Split read their operands on one box: values equal the
    whole model's."""
    model = _operands_model()
    for unit in _corners(_shapes(model)[model.graph.output[0].name]):
        made = _forward_equal(model, unit)
        split = next(n for n in made.model.graph.node if n.op_type == "Split").output[0]
        assert math.prod(_shapes(made.model)[split][2:]) < math.prod(_shapes(model)[split][2:])
        sliced = {n.input[0] for n in made.model.graph.node if n.op_type == "Slice"}
        assert any(name.startswith("pos") for name in sliced), sliced


def _resize_model(mode: str, coord: str, nearest: str = "floor", by_sizes: bool = False, exclude: int = 0
                  ) -> tuple[onnx.ModelProto, str]:
    """conv -> relu -> Resize x2 (scales, or sizes of the spatial axes: opset 18's ``axes``) ->
    conv -> relu -> conv; also the tensor before the Resize."""
    g = G((9, 7), seed=4, opset=18 if by_sizes else 17)
    before = g.relu(g.conv("x", 3, pads=[1] * 4, cout=2))
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    if mode == "cubic":
        attrs["exclude_outside"] = exclude
    if by_sizes:
        sizes = g._init(np.array([18, 14], dtype=np.int64), "sizes")
        x = g.node("Resize", [before, "", "", sizes], axes=[2, 3], **attrs)
    else:
        x = g.node("Resize", [before, "", g._init(np.array([1, 1, 2, 2], np.float32), "scales")], **attrs)
    return g.model(g.conv(g.relu(g.conv(x, 3, pads=[1] * 4)), 3, pads=[1] * 4)), before


RESIZES = [("nearest", "asymmetric", "floor", False), ("nearest", "half_pixel", "round_prefer_floor", False),
           ("nearest", "half_pixel", "round_prefer_ceil", True), ("nearest", "asymmetric", "ceil", True),
           ("linear", "half_pixel", "floor", False), ("linear", "pytorch_half_pixel", "floor", True),
           ("linear", "asymmetric", "floor", False), ("cubic", "half_pixel", "floor", False)]


@pytest.mark.parametrize("mode,coord,nearest,by_sizes", RESIZES)
def test_resize_by_a_whole_factor_on_the_cone(mode: str, coord: str, nearest: str, by_sizes: bool) -> None:
    """A Resize x2 reads the box of its input that holds its box's taps: the layers before it
    are cropped too, and every unit's value (centre, corners, border) equals the whole model's."""
    model, before = _resize_model(mode, coord, nearest, by_sizes)
    out = _shapes(model)[model.graph.output[0].name]
    for unit in _corners(out):
        made = _forward_equal(model, unit)
        assert math.prod(_shapes(made.model)[before][2:]) < math.prod(_shapes(model)[before][2:])


@pytest.mark.parametrize("exclude", [0, 1])
def test_resize_cubic_at_the_borders(exclude: int) -> None:
    """Cubic taps run past the input at its borders (clamped, or dropped by exclude_outside):
    the crop ends at that border as the original does; every unit equals the whole model's."""
    model, _ = _resize_model("cubic", "half_pixel", exclude=exclude)
    out = _shapes(model)[model.graph.output[0].name]
    for unit in [(0, 0), (1, 1), (out[2] - 1, out[3] - 2), (out[2] // 2, 0)]:
        _forward_equal(model, unit)


CONV_TRANSPOSES = {  # name: (kernel, stride, pads begin, pads end, output_padding, dilation, group, bias)
    "k2_s2": (2, 2, 0, 0, 0, 1, 1, False), "k4_s2_p1": (4, 2, 1, 1, 0, 1, 1, True),
    "k3_s2_p1_op1": (3, 2, 1, 1, 1, 1, 1, False), "k3_s3_asym": (3, 3, 2, 0, 0, 1, 1, True),
    "k3_s1_d2": (3, 1, 2, 2, 0, 2, 1, False), "k1_s2": (1, 2, 0, 0, 1, 1, 1, True),
    "k3_s2_groups": (3, 2, 1, 0, 0, 1, 2, False)}


def _conv_transpose_model(name: str, ndim: int) -> tuple[onnx.ModelProto, str]:
    """conv -> relu -> ConvTranspose -> relu -> conv; also the tensor before the ConvTranspose."""
    k, s, p0, p1, op, d, group, bias = CONV_TRANSPOSES[name]
    g = G((7, 6, 5)[:ndim], seed=9)
    before = g.relu(g.conv("x", 3, pads=[1] * (2 * ndim), cout=4))
    inputs = [before, g._init(g._weight((4, 4 // group) + (k,) * ndim))]
    if bias:
        inputs.append(g._init(np.linspace(-1, 1, 4)))
    x = g.node("ConvTranspose", inputs, 4, kernel_shape=[k] * ndim, strides=[s] * ndim, dilations=[d] * ndim,
               pads=[p0] * ndim + [p1] * ndim, output_padding=[op] * ndim, group=group)
    return g.model(g.conv(g.relu(x), 3, pads=[1] * (2 * ndim))), before


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(CONV_TRANSPOSES))
def test_conv_transpose_on_the_cone(name: str, ndim: int) -> None:
    """A ConvTranspose reads the input units that add into its box, run without padding and the
    box sliced out: the layers before it are cropped too (but where the box's units need every
    input), and each unit's value equals the whole model's."""
    model, before = _conv_transpose_model(name, ndim)
    assert _cropped_at_corners(model, before) >= 2  # at the corners at least


def test_ops_it_does_not_read_keep_the_whole_tensor() -> None:
    """A Resize with align_corners (its source depends on the sizes, not a shift): the layers
    before it are computed whole (unchanged), those after it cropped."""
    model, before = _resize_model("linear", "align_corners")
    made = _forward_equal(model, (9, 9))
    conv_before = next(n for n in made.model.graph.node if before in n.output)
    original = next(n for n in model.graph.node if before in n.output)
    assert conv_before == original
    resize = next(n for n in made.model.graph.node if n.op_type == "Resize")
    assert resize.input[0] == before  # reads the whole tensor, computed whole


REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp", "ArgMax"]


def _reduction_model(op: str, keepdims: int, opset: int, axis: int = 1) -> tuple[onnx.ModelProto, str]:
    """conv -> relu -> the reduction over ``axis`` -> (Reshape back to 4-D) -> conv -> conv; also the
    tensor the reduction reads.  Axes as an attribute, or an input where the opset says so."""
    g = G((9, 8), seed=5, opset=opset)
    before = g.relu(g.conv("x", 3, pads=[1] * 4, cout=3))
    attrs: dict[str, object] = {"keepdims": keepdims}
    inputs = [before]
    if op in ("ArgMax", "ArgMin"):
        attrs["axis"] = axis
    elif (op == "ReduceSum" and opset >= 13) or opset >= 18:
        inputs.append(g._init(np.array([axis])))
    else:
        attrs["axes"] = [axis]
    x = g.node(op, inputs, 1 if axis == 1 else 3, **attrs)
    if op in ("ArgMax", "ArgMin"):
        x = g.node("Cast", [x], to=onnx.TensorProto.FLOAT)
    if not keepdims:
        shape = [0, 1, 9, 8] if axis == 1 else [0, 3, 1, 8]
        x = g.node("Reshape", [x, g._init(np.array(shape))])
    return g.model(g.conv(g.conv(x, 3, pads=[1] * 4), 3, pads=[1] * 4)), before


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op", REDUCTIONS)
def test_reductions_over_the_channels_on_the_cone(op: str, keepdims: int, opset: int) -> None:
    """A reduction over the channels is per position: the layers before it are cropped at the
    corners, and each unit's value equals the whole model's."""
    model, before = _reduction_model(op, keepdims, opset)
    assert _cropped_at_corners(model, before) >= 3


def test_a_reduction_over_a_position_keeps_the_whole_tensor() -> None:
    """ReduceMean over the rows mixes every row: the layers before it are computed whole."""
    model, before = _reduction_model("ReduceMean", 1, 13, axis=2)
    made = _forward_equal(model, (0, 0))
    assert _shapes(made.model)[before] == _shapes(model)[before]


def test_softmax_written_out_over_the_channels() -> None:
    """exp(x - max_c x) / sum_c exp(...) with ReduceMax and ReduceSum (as tf2onnx writes a softmax):
    cropped, and the ERF of one channel of a corner unit through the rewrite equals the whole
    image's."""
    g = G((12, 12), seed=8)
    x = "x"
    for _ in range(3):
        x = g.relu(g.conv(x, 3, pads=[1] * 4, cout=3))
    e = g.node("Exp", [g.node("Sub", [x, g.node("ReduceMax", [x], axes=[1], keepdims=1)])])
    model = g.model(g.conv(g.node("Div", [e, g.node("ReduceSum", [e, g._init(np.array([1]))], keepdims=1)]), 3,
                           pads=[1] * 4))
    _forward_equal(model, (0, 11))
    kw = {"runs": 2, "channel": 0, "units": [(0, 11)]}
    coned = compute_erfs(model, region="cone", **kw)[0]  # type: ignore[arg-type]
    full = compute_erfs(model, region="full", **kw)[0]  # type: ignore[arg-type]
    assert any(NOTE in n for n in coned.notes), coned.notes
    assert float(np.abs(coned.erf - full.erf).max()) <= TOL * float(np.abs(full.erf).max())


def _tf_conv1d_model(opset: int, squeeze_axes: bool = True) -> tuple[onnx.ModelProto, str]:
    """Three Conv1D layers as tf2onnx writes them: Unsqueeze to (N, C, 1, L), a 2-D convolution
    with a (1, k) kernel, Squeeze back; also the tensor after the first layer."""
    g = G((40,), channels=2, seed=6, opset=opset, batch=2)  # a Squeeze without axes keeps it
    x, first = "x", ""
    for k, s in ((3, 1), (3, 2), (5, 1)):
        axes = {"axes": [2]} if opset < 13 else {}
        inputs = [x] if opset < 13 else [x, g._init(np.array([2]))]
        u = g.node("Unsqueeze", inputs, **axes)
        w = g._init(g._weight((3, g.channels[x], 1, k)))
        c = g.node("Conv", [u, w], 3, kernel_shape=[1, k], strides=[1, s], pads=[0, 1, 0, 1])
        squeeze_in = [c] if opset < 13 or not squeeze_axes else [c, g._init(np.array([2]))]
        x = g.relu(g.node("Squeeze", squeeze_in, **(axes if squeeze_axes else {})))
        first = first or x
    return g.model(x), first


@pytest.mark.parametrize("opset", [11, 17])
def test_tf_conv1d_through_squeeze_and_unsqueeze(opset: int) -> None:
    """Squeeze and Unsqueeze with constant axes are read per position: every layer of a Conv1D
    stack written as 2-D convolutions is cropped at the corners, each unit equal to the whole
    model's; a Squeeze without axes keeps the whole tensor."""
    model, first = _tf_conv1d_model(opset)
    assert _cropped_at_corners(model, first) >= 2
    model, _ = _tf_conv1d_model(17, squeeze_axes=False)  # the last Squeeze: all the rest whole
    assert trim.trim(model, _shapes(model), model.graph.output[0].name, (2,), ((4, 4),)) is None


SHUFFLES = [("DepthToSpace", 2, "DCR"), ("DepthToSpace", 2, "CRD"), ("DepthToSpace", 3, "DCR"),
            ("SpaceToDepth", 2, ""), ("SpaceToDepth", 3, "")]


@pytest.mark.parametrize("op,block,mode", SHUFFLES)
def test_pixel_shuffles_on_the_cone(op: str, block: int, mode: str) -> None:
    """conv -> DepthToSpace (output unit u reads input unit u // b: whole blocks computed, the box
    sliced out) or SpaceToDepth (u reads b u .. b u + b - 1) -> relu -> conv: each unit's value
    equals the whole model's, and the layers before are cropped at the corners."""
    g = G((12, 12), seed=11)
    before = g.relu(g.conv("x", 3, pads=[1] * 4, cout=block * block if op == "DepthToSpace" else 2))
    attrs: dict[str, object] = {"blocksize": block}
    if mode:
        attrs["mode"] = mode
    cout = 1 if op == "DepthToSpace" else 2 * block * block
    x = g.node(op, [before], cout, **attrs)
    model = g.model(g.conv(g.relu(x), 3, pads=[1] * 4))
    assert _cropped_at_corners(model, before) >= 3


@pytest.mark.parametrize("seed", range(16))
def test_random_models_gradient_equals_whole(seed: int) -> None:
    """Random residual / inception / U-Net models with asymmetric pads: the input gradient of the
    centre and a corner unit through the rewrite equals the whole model's gradient graph."""
    model, out = random_dag(seed, size=20, n_blocks=4)
    shape = _shapes(model)[out]
    x = np.random.default_rng(seed).standard_normal((1,) + _shapes(model)["x"][1:]).astype(np.float32)
    for unit in _corners(shape)[:2]:
        made = trim.trim(model, _shapes(model), out, (2, 3), tuple((u, u) for u in unit))
        if made is None:
            continue
        whole = erf_mod.GradientEngine(model, erf_mod.Target(out, shape, (2, 3), unit), "x", x.shape, 1)
        box_shape = shape[:2] + tuple(hi - lo + 1 for lo, hi in made.box)
        local = tuple(u - lo for u, (lo, _) in zip(unit, made.box))
        part = erf_mod.GradientEngine(made.model, erf_mod.Target(out, box_shape, (2, 3), local), "x", x.shape, 1)
        g_whole, g_part = whole(x), part(x)
        assert float(np.abs(g_part - g_whole).max()) <= TOL * float(np.abs(g_whole).max())


# ------------------------------------------------------------------ in rfgraph erf

def _stack() -> onnx.ModelProto:
    g = G((32, 32), seed=11)
    x = g.relu(g.conv("x", 3, 2, pads=[1] * 4, cout=3))
    for _ in range(3):
        y = g.conv(g.relu(g.conv(x, 3, pads=[1] * 4, cout=3)), 3, pads=[1] * 4, cout=3)
        x = g.relu(g.add(x, y))
    return g.model(g.conv(x, 3, pads=[1] * 4))


@pytest.mark.parametrize("reinit", ["none", "he"])
def test_erf_through_the_rewrite(reinit: str) -> None:
    """``rfgraph erf --region cone`` uses the rewrite inside the unit's input crop (``auto`` does
    where the run is long enough to repay the check), says so, and gives the whole graph's map,
    also with weights redrawn (two draws)."""
    model = _stack()
    kw = {"runs": 3, "absolute": False, "seed": 2, "reinit": reinit, "weight_runs": 2 if reinit == "he" else 1}
    auto = compute_erfs(model, region="cone", **kw)[0]  # type: ignore[arg-type]
    full = compute_erfs(model, region="full", **kw)[0]  # type: ignore[arg-type]
    assert any(NOTE in n and "exact" in n for n in auto.notes), auto.notes
    assert float(np.abs(auto.erf - full.erf).max()) <= TOL * float(np.abs(full.erf).max())


def _off_by(scale: float):  # type: ignore[no-untyped-def]
    """``trim.trim`` whose rewritten model's output is multiplied by ``scale``: a rewrite that
    differs from the whole model as float32 rounding at other sizes can (the check's oracle)."""
    real = trim.trim

    def scaled(*args: object, **kwargs: object) -> trim.Trimmed | None:
        made = real(*args, **kwargs)  # type: ignore[arg-type]
        if made is None:
            return None
        model = onnx.ModelProto()
        model.CopyFrom(made.model)
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{o}/unscaled" if o == out else o for o in node.output]
            node.input[:] = [f"{i}/unscaled" if i == out else i for i in node.input]
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(scale, np.float32), "off_by"))
        model.graph.node.append(onnx.helper.make_node("Mul", [f"{out}/unscaled", "off_by"], [out]))
        return trim.Trimmed(model, made.box, made.macs, made.macs_before)

    return scaled


def test_a_rewrite_off_by_rounding_gives_way_to_the_plan_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite whose first gradient differs from the full image's by more than the check
    allows but at a float32 rounding level (3e-6 of max |g|: fcn_resnet50 showed 1.2e-6) is not
    used; the unit runs on its plan without it (here the cuts; checked again, exact), and says both; also
    under ``auto`` for a long run (the engine ``bench_erf.py`` samples)."""
    monkeypatch.setattr(trim, "trim", _off_by(1 + 3e-6))
    model = _stack()
    got = compute_erfs(model, region="cone", runs=3, absolute=False, seed=2)[0]
    full = compute_erfs(model, region="full", runs=3, absolute=False, seed=2)[0]
    _, auto_notes = erf_mod.gradient_engine(model, region="auto", inputs=10**7)  # long enough to repay it
    for notes in (got.notes, auto_notes):
        assert any(n.startswith(f"not {NOTE}") and "float32 rounding" in n for n in notes), notes
        kept = [n for n in notes if n.startswith("computed on the unit's cone")]
        assert kept and NOTE not in kept[0] and "exact" in kept[0], notes
    assert float(np.abs(got.erf - full.erf).max()) <= TOL * float(np.abs(full.erf).max())


def test_a_rewrite_off_by_more_than_rounding_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by 1e-3 (a model whose values depend on the size): no fallback; --region cone refuses."""
    monkeypatch.setattr(trim, "trim", _off_by(1 + 1e-3))
    with pytest.raises(RFGraphError, match="depend on the input size"):
        compute_erfs(_stack(), region="cone", runs=2)


def test_not_used_for_finite_differences_nor_shared_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite differences keep the model as it is (their quotients magnify the rounding of
    convolutions run at other sizes): the rewrite is not even planned; several units covering the
    input share one model (the cuts of ``rfgraph.cuts``) instead of a rewrite each."""
    planned: list[str] = []
    real = erf_mod._trimmed

    def spy(*args: object, **kwargs: object) -> object:
        planned.append("yes")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(erf_mod, "_trimmed", spy)
    model = _stack()
    compute_erfs(model, region="auto", method="fd", runs=1)
    assert not planned
    compute_erfs(model, region="auto", runs=1)
    assert planned  # the gradient plans it (the oracle of the spy)
    g = G((12, 12), seed=5)
    x = "x"
    for _ in range(5):
        x = g.relu(g.conv(x, 5, pads=[2] * 4))
    wide = g.model(x)  # field 21 > 12: every unit covers the input
    two = compute_erfs(wide, region="cone", runs=1, units=[(5, 5), (6, 6)])
    assert not any(NOTE in n for r in two for n in r.notes), two[0].notes
    assert all("the layers after" in " ".join(r.notes) for r in two), two[0].notes  # the cuts, shared


def test_nothing_to_save() -> None:
    """Output boxes that read every position of every layer: no rewrite (None)."""
    g = G((8, 8), seed=2)
    model = g.model(g.conv(g.conv("x", 3, pads=[1] * 4), 3, pads=[1] * 4))
    assert trim.trim(model, _shapes(model), model.graph.output[0].name, (2, 3), ((0, 7), (0, 7))) is None


# ------------------------------------------------------------------ transformers: the token axis

DIM, HEADS, GRID, PATCH = 16, 2, 4, 4
TOKENS = GRID * GRID + 1  # patches and the class token


def _tiny_vit() -> onnx.ModelProto:
    """A two-block ViT (torch, exported with a dynamic batch: shapes computed by Shape/Gather/Concat)
    whose patch tokens come out as a DIM x GRID x GRID map, as benchmarks/bench_erf.py's ViT-S."""
    import io

    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
            self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
            self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

        def forward(self, t):  # type: ignore[no-untyped-def]
            b, n, d = t.shape
            qkv = self.qkv(self.n1(t)).reshape(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            att = torch.softmax(q @ k.transpose(-2, -1) * (d // HEADS) ** -0.5, dim=-1)
            t = t + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
            return t + self.fc2(F.gelu(self.fc1(self.n2(t))))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
            self.cls = nn.Parameter(torch.randn(1, 1, DIM))
            self.pos = nn.Parameter(torch.randn(1, TOKENS, DIM))
            self.blocks = nn.Sequential(Block(), Block())
            self.norm = nn.LayerNorm(DIM)

        def forward(self, x):  # type: ignore[no-untyped-def]
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            t = self.norm(self.blocks(t))[:, 1:]
            return t.transpose(1, 2).reshape(t.shape[0], DIM, GRID, GRID)

    torch.manual_seed(0)
    net = ViT().eval()
    f = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, GRID * PATCH, GRID * PATCH),), f, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    from rfgraph.options import ModelOptions

    return erf_mod._load(onnx.load_from_string(f.getvalue()), ModelOptions())[0]


def test_last_block_on_the_units_token() -> None:
    """A patch token's unit: the last block's query projection (its fused qkv product split by
    columns, ``rfgraph.projections``), attention rows, projection, MLP and the norms run on its
    token alone (the keys and values on every token): the rewrite counts the closed form's
    multiply-accumulates, its values and input gradient are the whole model's, and the shapes
    read by Shape nodes stay the original's."""
    model = _tiny_vit()
    shapes = _shapes(model)
    assert any(n.op_type == "Shape" for n in model.graph.node)  # the exporter's computed shapes
    d, t = DIM, TOKENS
    saved = (t - 1) * (2 * t * d + 10 * d * d)  # per token: S and att@V rows, q, proj (d2 each), fc1 + fc2 (8 d2)
    x = np.random.default_rng(5).standard_normal((1, 3, GRID * PATCH, GRID * PATCH)).astype(np.float32)
    for unit in _corners(shapes["y"]):
        made = _forward_equal(model, unit)
        assert made.macs_before - made.macs == saved, (made.macs_before - made.macs, saved)
        shape_reads = {n.output[0] for n in model.graph.node if n.op_type == "Shape"}
        assert shape_reads & {i.name for i in made.model.graph.initializer}  # cropped tensors' Shapes: constants
        target = erf_mod.Target("y", shapes["y"], (2, 3), unit, 0)
        whole = erf_mod.GradientEngine(model, target, "x", x.shape, 1)
        part = erf_mod.GradientEngine(made.model, erf_mod.Target("y", (1, DIM, 1, 1), (2, 3), (0, 0), 0), "x",
                                      x.shape, 1)
        g_whole, g_part = whole(x), part(x)
        assert float(np.abs(g_part - g_whole).max()) <= TOL * float(np.abs(g_whole).max())


def test_token_box_over_several_rows_takes_whole_rows() -> None:
    """A box of units over two rows of the map is one flat range of tokens only as whole rows:
    the rewritten output holds those rows whole, and their values are the whole model's."""
    model = _tiny_vit()
    shapes = _shapes(model)
    made = trim.trim(model, shapes, "y", (2, 3), ((1, 2), (1, 2)))
    assert made is not None and made.box == ((1, 2), (0, GRID - 1))
    x = np.random.default_rng(6).standard_normal((1, 3, GRID * PATCH, GRID * PATCH)).astype(np.float32)
    np.testing.assert_allclose(_run(made.model, x), _run(model, x)[:, :, 1:3, :], rtol=1e-5, atol=1e-6)


def test_erf_of_a_global_unit_through_the_rewrite() -> None:
    """``rfgraph erf --region cone`` on the ViT: the field is global (the whole input is read, the
    note says why) and the last block runs on the unit's token; the map is the whole graph's."""
    model = _tiny_vit()
    kw = {"runs": 2, "absolute": False, "seed": 3, "channel": 0}
    coned = compute_erfs(model, region="cone", **kw)[0]  # type: ignore[arg-type]
    full = compute_erfs(model, region="full", **kw)[0]  # type: ignore[arg-type]
    notes = " ".join(coned.notes)
    assert NOTE in notes and "global" in notes, notes
    assert float(np.abs(coned.erf - full.erf).max()) <= TOL * float(np.abs(full.erf).max())


def test_not_used_for_a_channel_sum_after_a_softmax() -> None:
    """Summed over the channels a Softmax's output is constant: its gradient is rounding noise,
    refused before any rewrite (naming --channel); the rewrite is used for one channel."""
    g = G((12, 12), seed=8)
    x = "x"
    for _ in range(3):
        x = g.relu(g.conv(x, 5, pads=[2] * 4))
    model = g.model(g.node("Softmax", [x], axis=1))
    with pytest.raises(RFGraphError, match=r"rounding noise.*--channel"):
        compute_erfs(model, model.graph.output[0].name, region="cone", runs=1)
    one = compute_erfs(model, region="cone", runs=1, channel=0)[0]
    assert any(NOTE in n for n in one.notes), one.notes


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_over_channels_by_opset(opset: int) -> None:
    """Softmax over the channels of a map: per position from opset 13 (the rewrite crops it), over
    channels and every position before (axis 1 flattens the rest: the whole tensor is read)."""
    g = G((10, 10), seed=12, opset=opset)
    x = g.node("Softmax", [g.conv("x", 3, pads=[1] * 4, cout=3)], axis=1)
    model = g.model(g.conv(g.conv(x, 3, pads=[1] * 4), 3, pads=[1] * 4))
    made = _forward_equal(model, (0, 0))
    softmax_in = next(n for n in made.model.graph.node if n.op_type == "Softmax").input[0]
    cropped = math.prod(_shapes(made.model)[softmax_in][2:]) < 100
    assert cropped == (opset >= 13)


def _dfl_head(size: int = 16) -> onnx.ModelProto:
    """A YOLOv8 box head on one scale: convs to a (1, 4 x 4 bins, h, w) map, flattened to
    (1, 16, h*w) anchors (a Reshape merging rows and columns), split into (4 coordinates, 4 bins),
    a softmax over the bins and the DFL's 1x1 conv over (bins) on a (1, bins, 4, anchors) map: its
    H is the 4 coordinates, not positions, and its W the anchors."""
    g = G((size, size), channels=2, batch=1)
    c = g.conv(g.relu(g.conv("x", 3, 2, pads=[1] * 4, cout=4)), 3, pads=[1] * 4, cout=16)
    n = (size // 2) ** 2
    flat = g.node("Reshape", [c, g._init(np.array([1, 16, n]))])
    bins = g.node("Transpose", [g.node("Reshape", [flat, g._init(np.array([1, 4, 4, n]))])], perm=[0, 2, 1, 3])
    soft = g.node("Softmax", [bins], axis=1)
    g.channels[soft] = 4
    dfl = g.conv(soft, 1, cout=1)
    return g.model(g.node("Reshape", [dfl, g._init(np.array([1, 4, n]))]))


@pytest.mark.parametrize("anchor", [0, 27, 63])
def test_a_yolo_box_head_on_the_anchors_cone(anchor: int) -> None:
    """Each layer of the head on one anchor's cone through the Reshape that flattens the grid into
    anchors and the DFL conv whose H is not positions (a real YOLOv8 export's corner anchor at 1024:
    7 % of the multiply-accumulates, its gradient equal): the output and the input gradient equal
    the whole model's."""
    model = _dfl_head()
    made = _forward_equal(model, (anchor,))
    assert made.saved > 0
    shape = _shapes(model)[model.graph.output[0].name]
    x = np.random.default_rng(anchor).standard_normal((1, 2, 16, 16)).astype(np.float32)
    out = model.graph.output[0].name
    whole = erf_mod.GradientEngine(model, erf_mod.Target(out, shape, (2,), (anchor,)), "x", x.shape, 1)
    part = erf_mod.GradientEngine(made.model, erf_mod.Target(out, shape[:2] + (1,), (2,), (0,)), "x", x.shape, 1)
    g_whole, g_part = whole(x), part(x)
    assert np.count_nonzero(g_whole) and float(np.abs(g_part - g_whole).max()) <= TOL * float(np.abs(g_whole).max())
