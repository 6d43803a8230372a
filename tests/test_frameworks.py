"""rfgraph.from_torch / from_keras.

Covers: from_torch gives exactly the ONNX path's fields (the test exports the same module with
torch.onnx itself, as the oracle), closed-form r/S/P of the chain (Araujo eqs. 1-3, by hand),
module names mapped back (leaf modules, several nodes in one module, top-level ops), explicit
output names kept, a misaligned merge found through torch, one-line messages when torch,
TensorFlow or tf2onnx are missing, and the tf2onnx name mapping on hand-made node names (TensorFlow
itself is not installed here: from_keras's conversion is not exercised).
"""

from __future__ import annotations

import sys
import warnings
from fractions import Fraction

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import helper

import rfgraph
from rfgraph.frameworks import (
    MissingDependencyError,
    export_keras,
    export_torch,
    from_keras,
    from_torch,
    keras_scope,
    rename_tensors,
    torch_scope,
)

torch = pytest.importorskip("torch")
nn = torch.nn


class Block(nn.Module):
    """Residual block: two 3x3 convs plus the identity, relu applied functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(self.relu(self.conv1(x))) + x)


class Net(nn.Module):
    """stem (3x3/2 conv, relu) -> 2 blocks -> 2x2 max pool -> 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(Block(), Block())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.pool(self.layer1(self.stem(x))))


# (kernel, stride, padding) of every spatial layer along the path to head, in order.
NET_LAYERS = [(3, 2, 1)] + [(3, 1, 1)] * 4 + [(2, 2, 0), (1, 1, 0)]


def closed_form(layers: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """r, S, P of a chain: r = 1 + sum (k_l - 1) prod s_<l, S = prod s, P = sum p_l prod s_<l."""
    r, s, p = 1, 1, 0
    for k, stride, pad in layers:
        r, p, s = r + (k - 1) * s, p + pad * s, s * stride
    return r, s, p


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.randn(1, 3, 32, 28)


@pytest.fixture(scope="module")
def via_torch(net: tuple[nn.Module, torch.Tensor]) -> rfgraph.Analysis:
    return from_torch(*net)


@pytest.fixture(scope="module")
def via_onnx(net: tuple[nn.Module, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> rfgraph.Analysis:
    """The oracle: the user's own path, torch.onnx.export to a file then rfgraph.analyze(file)."""
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        torch.onnx.export(net[0], (net[1],), str(path), dynamo=False)
    return rfgraph.analyze(str(path))


def test_from_torch_matches_onnx_path_exactly(net, via_torch, via_onnx) -> None:
    """Every tensor of the exported file has the same field, regions and alignment under its module name."""
    _, mapping = export_torch(*net)
    assert list(via_torch.endpoints) == [mapping.get(t, t) for t in via_onnx.endpoints]
    for old, ep in via_onnx.endpoints.items():
        mine = via_torch[mapping.get(old, old)]
        assert (mine.r, mine.S, mine.P, mine.units, mine.shape, mine.aligned) == \
               (ep.r, ep.S, ep.P, ep.units, ep.shape, ep.aligned), old
        last = tuple(max(n - 1, 0) for n in ep.units)
        assert mine.region(last) == ep.region(last)
        assert (mine.boxes() == ep.boxes()).all()
    assert via_torch.input_shape == via_onnx.input_shape == (1, 3, 32, 28)


def test_closed_form_of_the_chain(via_torch) -> None:
    """The head's r, S, P equal the hand recurrence over the layer list (both axes)."""
    r, s, p = closed_form(NET_LAYERS)
    head = via_torch["head"]
    assert (r, s, p) == (21, 4, 9)  # 1+2+2*(2+2+2+2)+2*1=21; S=2*2; P=1+1*2*4
    assert head.r == (r, r) and head.S == (s, s) and head.P == (p, p)
    assert head.units == (8, 7)  # stem /2, pool /2: 32 -> 16 -> 8 ; 28 -> 14 -> 7
    assert head.region((1, 2)) == ((1 * s - p, 1 * s - p + r - 1), (2 * s - p, 2 * s - p + r - 1))


def test_module_names_mapped_back(via_torch) -> None:
    """Leaf modules by qualified name; several nodes of one module as module/Op; input kept."""
    names = set(via_torch.endpoints)
    assert {"stem.0", "stem.1", "layer1.0.conv1", "layer1.0.relu", "layer1.1.conv2", "layer1.0/Add",
            "layer1.1/Relu", "pool", "head"} <= names
    assert via_torch.input_name == "input.1"
    assert via_torch.outputs == ["head"]
    assert via_torch["layer1.0.conv1"].node == "layer1.0.conv1"


def test_explicit_names_are_kept(net) -> None:
    """Also: the entry point is exported at the package top level."""
    analysis = rfgraph.from_torch(*net, input_names=["images"], output_names=["logits"])
    assert analysis.input_name == "images" and analysis.outputs == ["logits"]
    assert analysis["logits"].r == (21, 21)


def test_rename_off_keeps_exporter_names(net, via_onnx) -> None:
    model, mapping = export_torch(*net, rename=False)
    assert mapping == {}
    assert list(rfgraph.analyze(model).endpoints) == list(via_onnx.endpoints)


class TwoBranch(nn.Module):
    """2x2/2 conv + 1x1/2 conv: same stride, centres 0.5 apart (eq. 13 fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 1, 2, stride=2), nn.Conv2d(1, 1, 1, stride=2)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_misaligned_merge_through_torch() -> None:
    analysis = from_torch(TwoBranch(), torch.zeros(1, 1, 8, 8))
    bad = analysis.misaligned
    assert bad and {m.node for m in bad} == {"Add"}
    centres = sorted({b.centre for b in bad[0].branches})
    assert centres == [Fraction(0), Fraction(1, 2)]


def test_missing_torch_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rfgraph\[torch\]'"):
        from_torch(object(), None)


@pytest.mark.parametrize("absent", ["tensorflow", "tf2onnx"])
def test_missing_keras_dependencies_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, absent: str) -> None:
    """Whichever of TensorFlow / tf2onnx is missing is named, with the extra to install."""
    monkeypatch.setitem(sys.modules, absent, None)
    if absent == "tf2onnx":  # pretend TensorFlow is there, so the second check is reached
        monkeypatch.setitem(sys.modules, "tensorflow", type(sys)("tensorflow"))
    with pytest.raises(MissingDependencyError, match=rf"'{absent}'.*pip install 'rfgraph\[keras\]'") as err:
        from_keras(object())
    assert "\n" not in str(err.value)


def test_missing_dependency_is_an_rfgraph_error() -> None:
    """The error is an RFGraphError, which the CLI turns into one line and exit code 2."""
    assert issubclass(MissingDependencyError, rfgraph.RFGraphError)


def _graph(names: list[tuple[str, str, list[str], str]]) -> onnx.ModelProto:
    """A model from (node name, op, inputs, output) rows; the graph output is the last output."""
    nodes = [helper.make_node(op, ins, [out], name=name) for name, op, ins, out in names]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info(names[-1][3], onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]))


def test_keras_scope_maps_tf2onnx_names_to_layers() -> None:
    """tf2onnx names nodes model/LAYER/OP: one node per layer -> LAYER, several -> LAYER/OP."""
    model = _graph([("model/conv2d/Conv2D", "Relu", ["x"], "t1"),
                    ("model/conv2d/BiasAdd", "Relu", ["t1"], "t2"),
                    ("model/re_lu/Relu", "Relu", ["t2"], "t3"),
                    ("Transpose__12", "Relu", ["t3"], "t4"),
                    ("model/dense/MatMul", "Relu", ["t4"], "out")])
    mapping = rename_tensors(model, keras_scope(["conv2d", "re_lu", "dense"]), outputs=False)
    assert mapping == {"t1": "conv2d/Conv2D", "t2": "conv2d/BiasAdd", "t3": "re_lu"}
    assert [list(n.input) for n in model.graph.node][1:3] == [["conv2d/Conv2D"], ["conv2d/BiasAdd"]]
    assert model.graph.output[0].name == "out"


def tf2onnx_like_model() -> onnx.ModelProto:
    """What tf2onnx makes of Input(32, 32, 3) -> Conv2D(4, 3, strides 2, 'same') -> ReLU:
    an NHWC input with a dynamic batch, a Transpose to NCHW, scoped node names."""
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "model/conv2d/Conv2D/ReadVariableOp:0")
    nodes = [helper.make_node("Transpose", ["input_1"], ["input_1__6:0"], name="Transpose__6", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["input_1__6:0", w.name], ["model/conv2d/BiasAdd:0"],
                              name="model/conv2d/BiasAdd", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Relu", ["model/conv2d/BiasAdd:0"], ["model/re_lu/Relu:0"], name="model/re_lu/Relu"),
             helper.make_node("Transpose", ["model/re_lu/Relu:0"], ["re_lu"], name="model/re_lu/Relu__8",
                              perm=[0, 2, 3, 1])]
    x = helper.make_tensor_value_info("input_1", onnx.TensorProto.FLOAT, ["unk__9", 32, 32, 3])
    y = helper.make_tensor_value_info("re_lu", onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "tf2onnx", [x], [y], [w]),
                             opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def stand_in_tf2onnx(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """TensorFlow is not installed here: stand-in modules for tensorflow (TensorSpec as a tuple)
    and tf2onnx, whose ``convert.from_keras`` records its arguments (the returned list) and
    returns ``tf2onnx_like_model()``."""
    calls: list[tuple] = []
    convert = type(sys)("tf2onnx.convert")
    convert.from_keras = lambda model, input_signature=None, opset=None, custom_op_handlers=None: (
        calls.append((model, input_signature, opset, sorted(custom_op_handlers or {})))
        or (tf2onnx_like_model(), None))
    tf2onnx = type(sys)("tf2onnx")
    tf2onnx.convert = convert
    tensorflow = type(sys)("tensorflow")
    tensorflow.TensorSpec = lambda shape, dtype, name=None: ("spec", tuple(shape), dtype, name)
    monkeypatch.setitem(sys.modules, "tensorflow", tensorflow)
    monkeypatch.setitem(sys.modules, "tf2onnx", tf2onnx)
    monkeypatch.setitem(sys.modules, "tf2onnx.convert", convert)
    return calls


def test_from_keras_contract_with_stand_in_tf2onnx(stand_in_tf2onnx: list[tuple]) -> None:
    """Stand-in modules check the wiring only, against tf2onnx's documented API
    ``tf2onnx.convert.from_keras(model, input_signature=, opset=, custom_op_handlers=) ->
    (proto, storage)`` (arguments passed through, a handler for Erfc, Keras 3's missing
    output_names set, layer names mapped back, the NHWC input found through tf2onnx's leading
    Transpose, a dynamic batch fixed by input_shape)."""
    calls = stand_in_tf2onnx
    layer = type("Layer", (), {})
    keras_model = type("Model", (), {"layers": [], "outputs": []})()
    for name in ("input_1", "conv2d", "re_lu"):
        keras_model.layers.append(layer())
        keras_model.layers[-1].name = name
    analysis = from_keras(keras_model, ["spec"], opset=13, input_shape=(1, 32, 32, 3))
    assert calls == [(keras_model, ["spec"], 13, ["Erfc"])] and keras_model.output_names == []
    assert analysis.spatial_axes == (1, 2) and analysis.input_shape == (1, 32, 32, 3)
    assert list(analysis.endpoints) == ["input_1", "input_1__6:0", "conv2d", "re_lu/Relu", "re_lu"]
    conv = analysis["conv2d"]  # 3x3/2, TF 'same' padding on 32: pads (0, 1); r=3, S=2, P=0
    assert (conv.r, conv.S, conv.P, conv.units) == ((3, 3), (2, 2), (0, 0), (16, 16))
    assert analysis["re_lu"].r == (3, 3) and "model/re_lu/Relu:0" not in analysis


def test_keras_inputs_convert_with_a_batch_of_one(stand_in_tf2onnx: list[tuple]) -> None:
    """Without a signature, tf2onnx gets the model's inputs with the batch fixed at one (a dynamic
    batch mis-converts some graphs: ``test_keras_reduced_attention_converts_and_runs``); a single
    input's whole shape is input_shape where given; a signature given is passed as it is."""
    tensor = type("KerasTensor", (), {"shape": (None, None, None, 3), "dtype": "float32", "name": "image"})
    other = type("KerasTensor", (), {"shape": (None, 7), "dtype": "int64", "name": "ids:0"})
    model = type("Model", (), {"layers": [], "outputs": [], "inputs": [tensor]})()
    export_keras(model)
    export_keras(model, input_shape=(1, 32, 32, 3))
    model.inputs = [tensor, other]
    export_keras(model, input_shape=(1, 32, 32, 3))
    export_keras(model, ["given"])
    assert [call[1] for call in stand_in_tf2onnx] == [
        [("spec", (1, None, None, 3), "float32", "image")],
        [("spec", (1, 32, 32, 3), "float32", "image")],
        [("spec", (1, None, None, 3), "float32", "image"), ("spec", (1, 7), "int64", "ids")],
        ["given"]]


def test_keras_reduced_attention_converts_and_runs() -> None:
    """SegFormer's attention (keys from a strided conv over the token grid, reshaped with the
    batch read from the tensor's shape): tf2onnx 1.17 with the batch left dynamic writes a Reshape
    that onnxruntime refuses at every batch size (keras-hub's MiT failed so); converted with a
    batch of one, it computes what Keras computes.  Needs TensorFlow and tf2onnx."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    import numpy as np
    import onnxruntime as ort
    keras, ops = tf.keras, tf.keras.ops

    class ReducedAttention(keras.layers.Layer):
        def build(self, shape: tuple) -> None:
            self.q, self.k = keras.layers.Dense(shape[-1]), keras.layers.Dense(shape[-1])
            self.sr = keras.layers.Conv2D(shape[-1], 4, strides=4)

        def call(self, x: object) -> object:
            batch, tokens, width = ops.shape(x)
            grid = self.sr(ops.reshape(x, (batch, 8, 8, width)))
            k = ops.transpose(ops.reshape(self.k(ops.reshape(grid, [batch, -1, width])), [batch, -1, 1, width]),
                              [0, 2, 1, 3])
            q = ops.transpose(ops.reshape(self.q(x), (batch, tokens, 1, width)), [0, 2, 1, 3])
            out = ops.softmax(q @ ops.transpose(k, [0, 1, 3, 2])) @ k
            return ops.reshape(ops.transpose(out, [0, 2, 1, 3]), (batch, tokens, width))

    x = keras.Input((64, 16))
    model = keras.Model(x, ReducedAttention()(x))
    proto, _ = export_keras(model)
    data = np.random.default_rng(0).standard_normal((1, 64, 16)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {proto.graph.input[0].name: data})[0]
    assert np.abs(got - model(data).numpy()).max() <= 1e-5


def test_torch_scope_resolves_qualified_and_attribute_components() -> None:
    scope = torch_scope(["layer1", "layer1.0", "layer1.0.conv1", "conv1"])
    node = helper.make_node("Conv", ["a"], ["b"], name="/layer1/layer1.0/conv1/Conv")
    assert scope(node) == ("layer1.0.conv1", "Conv")
    assert scope(helper.make_node("Add", [], [], name="/Add")) == ("", "Add")
    assert scope(helper.make_node("Add", [], [], name="/unknown/Add")) is None
    assert scope(helper.make_node("Add", [], [], name="Add_3")) is None


def test_renaming_never_collides() -> None:
    """A label already used by another tensor keeps the exporter's name."""
    model = _graph([("/a/Relu", "Relu", ["x"], "a"), ("/b/Relu", "Relu", ["a"], "y")])
    mapping = rename_tensors(model, torch_scope(["a", "b"]))
    assert mapping == {"y": "b"}  # 'a' is already the name of the tensor it would become


class Broken(nn.Module):
    def forward(self, x):
        raise ValueError("shape mismatch in my model")


def test_exporter_failure_is_one_line() -> None:
    with pytest.raises(rfgraph.RFGraphError, match=r"^torch.onnx.export failed \(ValueError: shape mismatch"):
        from_torch(Broken(), torch.zeros(1, 1, 8, 8))


def test_dynamo_exporter_works_or_names_its_dependency() -> None:
    """dynamo=True needs onnxscript: same field as the legacy exporter, or a one-line install hint."""
    conv = nn.Conv2d(1, 1, 5, stride=2, padding=2)
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install onnxscript"):
            from_torch(conv, torch.zeros(1, 1, 16, 16), dynamo=True)
        return
    out = from_torch(conv, torch.zeros(1, 1, 16, 16), dynamo=True)
    last = out[out.outputs[0]]
    assert (last.r, last.S, last.P) == ((5, 5), (2, 2), (2, 2))


def test_from_torch_saves_the_exported_model(net, via_torch, tmp_path) -> None:
    """save=PATH writes the renamed export (suffix added), which analyses like the returned
    analysis; a bad folder is refused before the export runs (issue 17 §4)."""
    analysis = rfgraph.from_torch(*net, save=tmp_path / "net")
    saved = rfgraph.analyze(str(tmp_path / "net.onnx"))
    assert list(saved.endpoints) == list(analysis.endpoints) == list(via_torch.endpoints)
    assert saved["head"].r == analysis["head"].r == (21, 21)
    with pytest.raises(rfgraph.RFGraphError, match="does not exist"):
        rfgraph.from_torch(*net, save=tmp_path / "missing" / "net.onnx")


def test_keras_grouped_convs_and_exact_gelu_convert() -> None:
    """Keras 3 runs grouped convolutions under XLA (tf2onnx left a StatefulPartitionedCall: Keras
    ConvNeXt stopped at its first depthwise conv) and its exact GELU calls Erfc (no ONNX op):
    converted, the model has a grouped Conv and 1 - Erf, computes what Keras computes, and the
    depthwise 7x7 after a 4x4/4 stem gives r 28, S 4.  Needs TensorFlow and tf2onnx."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    import numpy as np
    import onnxruntime as ort
    keras = tf.keras
    x = keras.Input((32, 32, 8), batch_size=1)
    y = keras.layers.Conv2D(8, 4, strides=4)(x)
    y = keras.layers.Conv2D(8, 7, padding="same", groups=8)(y)
    model = keras.Model(x, keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=False))(y))
    proto, _ = export_keras(model, [tf.TensorSpec((1, 32, 32, 8), tf.float32)], 17)
    ops = {n.op_type for n in proto.graph.node}
    assert "StatefulPartitionedCall" not in ops and "Erfc" not in ops and "Erf" in ops
    assert any(a.name == "group" and a.i == 8 for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute)
    data = np.random.default_rng(0).standard_normal((1, 32, 32, 8)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {proto.graph.input[0].name: data})[0]
    assert np.abs(got - model(data).numpy()).max() <= 1e-5
    out = rfgraph.analyze(proto)[proto.graph.output[0].name]
    assert out.r == (28, 28) and out.S == (4, 4)
