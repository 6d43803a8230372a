"""Analysis at an unknown input size (issue 14 §2): r and S exact, P exact or per residue of the size.

Oracles: the analysis with an explicit --input-shape at sizes of every residue (other sizes than
the ones sampled, H and W at different residues); onnxruntime impulse measurements of the field
of a 1-D TF-'SAME' chain at each residue (independent of rfgraph's rules); onnxruntime running,
or refusing, the model at the sizes said to work or not.

Covers: P per residue and the ops named for a 'SAME' stride-2 net (API, table, CSV, markdown,
JSON against the documented schema); exact P where no padding depends on the size; a Resize to
fixed sizes refused naming the Resize; a U-Net-like merge that runs only at some sizes; the
commands that need a size (boxes, show, report, diagnose) ask for one in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import rfgraph
from rfgraph.cli import main
from rfgraph.errors import DynamicShapeError
from rfgraph.unknown_size import PBySize
from tests.graphs import G
from tests.impulses import dependencies

DOCS = Path(__file__).resolve().parent.parent / "docs" / "json_schema.md"


def same_net(spatial: tuple, pool: str = "MaxPool") -> tuple[onnx.ModelProto, str]:
    """TF-'SAME' layers with stride 2 and odd kernels (begin padding = size mod 2 dependent), a
    'SAME' pool, a residual merge, and a final explicit-padding conv: period 8."""
    g = G(spatial)
    x = g.conv("x", 3, 2, auto_pad="SAME_UPPER")
    x = g.node(pool, [x], kernel_shape=[3] * g.ndim, strides=[2] * g.ndim, auto_pad="SAME_UPPER")
    a = g.conv(x, 5, 2, auto_pad="SAME_UPPER")
    b = g.conv(a, 3, 1, auto_pad="SAME_UPPER")
    y = g.conv(g.add(a, b), 3, 1, pads=[1] * (2 * g.ndim))
    return g.model(y), y


def at_size(model: onnx.ModelProto, sizes: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"x": (1, 1, *sizes)}


def test_P_per_residue_matches_the_analysis_at_every_residue():
    """For H, W at every pair of residues mod 8 (at sizes the unknown-size analysis did not
    sample), P along each axis is the one the merged result gives for that axis's residue; r and
    S are the same at every size."""
    model, y = same_net(("H", "W"))
    a = rfgraph.analyze(model)
    ep = a[y]
    assert a.unknown_size is not None and a.unknown_size.period == (8, 8)
    assert all(isinstance(p, PBySize) for p in ep.P)
    sampled = set(a.unknown_size.sizes)
    for h in range(60, 68):
        w = 60 + (h * 3 + 1) % 8  # another residue along W
        assert (h, w) not in sampled
        b = rfgraph.analyze(model, at_size(model, (h, w)))[y]
        assert (b.r, b.S) == (ep.r, ep.S)
        assert b.P == (ep.P[0].by_residue[h % ep.P[0].period], ep.P[1].by_residue[w % ep.P[1].period])
    pb = ep.P[0]
    assert len(pb.values) > 1 and sorted(v for v in pb.values for _ in pb.residues(v)) == sorted(pb.by_residue)
    names = [n.name for n in model.graph.node]
    assert list(pb.ops) == [names[0], names[1], names[2]]  # the three 'SAME' layers with stride 2
    assert a.unknown_size.ops == pb.ops  # the stride-1 'SAME' conv pads (k-1)/2 at any size


def measured_P(model: onnx.ModelProto, y: str, n: int) -> tuple[int, int, int]:
    """r, S, P of ``y`` measured with onnxruntime impulses on a 1-D input of length n: from the
    first unit whose support starts inside the input (P = u*S - start, Araujo eq. 5)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[2].dim_value = n
    deps, _ = dependencies(fixed, "x", y, [2])
    hits = deps.any(axis=(1, 2))  # (input positions, output units)
    starts = [int(np.argmax(hits[:, u])) for u in range(hits.shape[1])]
    ends = [n - 1 - int(np.argmax(hits[::-1, u])) for u in range(hits.shape[1])]
    u = next(u for u in range(hits.shape[1]) if starts[u] > 0 and ends[u] < n - 1)
    S = starts[u + 1] - starts[u]
    return ends[u] - starts[u] + 1, S, u * S - starts[u]


def test_P_per_residue_against_onnxruntime_impulses():
    """1-D: at one length of each residue mod 8 the field measured with onnxruntime has the r, S
    and the P the unknown-size analysis gives for that residue (an average pool: every input in
    the window moves the output, which a max pool's impulses need not)."""
    model, y = same_net(("L",), "AveragePool")
    ep = rfgraph.analyze(model)[y]
    pb = ep.P[0]
    assert isinstance(pb, PBySize) and pb.period == 8
    for n in range(72, 80):
        assert measured_P(model, y, n) == (ep.r[0], ep.S[0], pb.by_residue[n % 8]), n


def test_exact_P_where_no_padding_depends_on_the_size():
    """Explicit pads and stride-1 'SAME': P is a number, the same as at any fixed size."""
    g = G(("H", "W"))
    x = g.conv("x", 3, 2, pads=[1, 1, 1, 1])
    y = g.conv(x, 3, 1, auto_pad="SAME_UPPER")
    model = g.model(y)
    ep = rfgraph.analyze(model)[y]
    fixed = rfgraph.analyze(model, at_size(model, (37, 50)))[y]
    assert (ep.r, ep.S, ep.P) == (fixed.r, fixed.S, fixed.P) == ((7, 7), (2, 2), (3, 3))
    assert ep.size_dependent is None


def test_resize_to_fixed_sizes_is_refused_naming_it():
    """A Resize to a fixed output size: its stride depends on the input size; refused, naming
    the Resize, asking for --input-shape (exit 2, one line)."""
    g = G(("H", "W"))
    x = g.conv("x", 3, 2, pads=[1, 1, 1, 1])
    sizes = g._init(np.array([1, 2, 16, 16]), "sizes")
    y = g.node("Resize", [x, "", "", sizes], mode="nearest")
    model = g.model(y)
    resize = model.graph.node[-1].name
    with pytest.raises(DynamicShapeError, match=rf"node '{resize}' \(Resize\).*--input-shape x:1x1x224x224"):
        rfgraph.analyze(model)


def test_resize_refusal_on_the_cli(tmp_path, capsys):
    """The same refusal on the command line: exit 2, one line naming the op."""
    g = G(("H", "W"))
    x = g.conv("x", 3, 2, pads=[1, 1, 1, 1])
    sizes = g._init(np.array([1, 2, 16, 16]), "sizes")
    g.node("Resize", [x, "", "", sizes], mode="nearest")
    path = tmp_path / "resize.onnx"
    onnx.save(g.model(g.nodes[-1].output[0]), path)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(Resize)" in err and "--input-shape x:" in err and "Traceback" not in err


def unet(spatial: tuple) -> tuple[onnx.ModelProto, str]:
    """Down by 2 twice (explicit pads), up by 2 twice (nearest Resize), each merged with the skip
    of its scale: the maps of a merge agree only when the size is a multiple of 4."""
    g = G(spatial)
    s0 = g.conv("x", 3, 1, pads=[1] * (2 * g.ndim))
    s1 = g.conv(s0, 3, 2, pads=[1] * (2 * g.ndim))
    s2 = g.conv(s1, 3, 2, pads=[1] * (2 * g.ndim))
    u1 = g.add(g.resize(s2, 2), s1)
    y = g.add(g.resize(u1, 2), s0)
    return g.model(y), y


def runs(model: onnx.ModelProto, n: int) -> bool:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {"x": np.zeros((1, 1, n, n), np.float32)})
    except Exception:  # noqa: BLE001 - onnxruntime's refusal of the size is what is measured
        return False
    return True


def test_sizes_the_model_cannot_run_at_are_reported():
    """A U-Net-like merge: the residues said to work are exactly those at which onnxruntime
    runs the model; the field is still exact there."""
    model, y = unet(("H", "W"))
    a = rfgraph.analyze(model)
    how = a.unknown_size
    assert how is not None and how.runs_at is not None and "Add" in how.cannot_run
    period = max(how.period)
    for n in range(24, 24 + period):
        assert runs(model, n) == (n % period in how.runs_at), n
    fixed = rfgraph.analyze(model, at_size(model, (24, 24)))[y]
    assert (a[y].r, a[y].S, a[y].P) == (fixed.r, fixed.S, fixed.P)


def schema(name: str) -> dict:
    block = re.search(rf"<!-- schema: {name} -->\s*```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert block
    return json.loads(block.group(1))


def test_cli_prints_the_P_set_in_every_format(tmp_path, capsys):
    """`rfgraph analyze dyn.onnx` exits 0; the table and CSV show P as 'a|b|...', the notes the
    residues and ops; JSON gives the values and residues and follows the documented schema."""
    model, y = same_net(("H", "W"))
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    pb = rfgraph.analyze(model)[y].P[0]
    assert isinstance(pb, PBySize)
    cell = "|".join(map(str, pb.values))
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert f" {cell} " in out and pb.describe() in out and "[1, 1, ?, ?]" in out
    assert main(["analyze", str(path), "--format", "csv"]) == 0
    assert f",{cell}," in capsys.readouterr().out
    assert main(["analyze", str(path), "--format", "markdown"]) == 0
    assert f"| {cell} " in capsys.readouterr().out
    assert main(["analyze", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["endpoints"]
    assert row["P"][0] == {"values": list(pb.values), "modulo": pb.period,
                           "residues": [list(pb.residues(v)) for v in pb.values], "ops": list(pb.ops)}
    assert row["covers_input"] is None and doc["input"]["shape"] == [1, 1, None, None]
    assert doc["unknown_size"]["period"] == [8, 8]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, schema("analyze"))


@pytest.mark.parametrize("command", [["boxes", "--output", "Y", "--index", "0,0"], ["diagnose"],
                                     ["report", "-o", "OUT/r.html"],
                                     ["show", "--output", "Y", "--index", "0,0", "--image", "IMG", "-o", "OUT/o.png"]])
def test_commands_that_need_a_size_ask_for_one(command, tmp_path, capsys):
    """At an unknown size, commands whose answer is per unit or measured ask for --input-shape
    in one line (exit 2); the same command with a size works as before."""
    model, y = same_net(("H", "W"))
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    image = tmp_path / "img.png"
    from PIL import Image
    Image.new("RGB", (48, 48)).save(image)
    args = [a.replace("Y", y).replace("OUT", str(tmp_path)).replace("IMG", str(image)) for a in command]
    assert main([args[0], str(path), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{args[0]} needs a concrete input size" in err and "--input-shape x:" in err
    a = rfgraph.analyze(model)
    with pytest.raises(rfgraph.RFGraphError, match="input size is unknown"):
        a[y].region((0, 0))
    with pytest.raises(DynamicShapeError, match="the reverse pass needs a concrete input size"):
        a.fields_toward(y)


def test_input_shape_keeps_the_exact_field():
    """--input-shape: the field at that size, no unknown-size result."""
    model, y = same_net(("H", "W"))
    a = rfgraph.analyze(model, at_size(model, (45, 45)))
    assert a.unknown_size is None and all(isinstance(p, int) for p in a[y].P)
    assert a[y].region((0, 0))[0][0] == -a[y].P[0]


def test_dynamic_batch_is_analysed_at_batch_1():
    """A dynamic batch next to dynamic spatial dims is no reason to refuse."""
    g = G(("H", "W"))
    y = g.conv("x", 3, 2, auto_pad="SAME_UPPER")
    model = g.model(y)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"]))
    assert rfgraph.analyze(model).unknown_size is not None


def _audio_front_end(path: Path, auto_pad: str | None) -> Path:
    """(1, 1, L) samples -> Conv k=400 s=160 -> Conv k=3 s=2: strides multiply to 320, more sizes
    than rfgraph analyses one by one (an STFT-like hop, as in speech front ends)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "L"])
    w1 = onnx.numpy_helper.from_array(np.ones((4, 1, 400), np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(np.ones((4, 4, 3), np.float32), "w2")
    first = (helper.make_node("Conv", ["x", "w1"], ["a"], strides=[160], auto_pad=auto_pad) if auto_pad
             else helper.make_node("Conv", ["x", "w1"], ["a"], strides=[160], pads=[200, 200]))
    nodes = [first, helper.make_node("Conv", ["a", "w2"], ["y"], strides=[2], pads=[1, 1], name="second")]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_stride_product_past_256_with_explicit_pads_is_analysed(tmp_path: Path) -> None:
    """Refused before (the strides multiply to 320); P cannot depend on the size when every pad is
    explicit, so multiples of 320 suffice: r, S, P equal the analysis at any concrete length."""
    path = str(_audio_front_end(tmp_path / "explicit.onnx", None))
    a = rfgraph.analyze(path)
    assert a.unknown_size is not None and a.unknown_size.only_residue_0
    for length in (16000, 16037, 16319):
        b = rfgraph.analyze(path, {"x": (1, 1, length)})
        assert (a["y"].r, a["y"].S, a["y"].P) == (b["y"].r, b["y"].S, b["y"].P)
    assert a["y"].r == (720,) and a["y"].S == (320,) and a["y"].P == (360,)  # 400 + 2 * 160; 200 + 160


def test_a_stride_product_past_256_with_same_padding_is_refused_naming_it(tmp_path: Path) -> None:
    path = str(_audio_front_end(tmp_path / "same.onnx", "SAME_UPPER"))
    with pytest.raises(DynamicShapeError, match=r"multiply to 320.*padding of"):
        rfgraph.analyze(path)


def _spectrogram_net() -> onnx.ModelProto:
    """(1, 1, 40 mel bins, T frames): a Conv over all 40 bins (H collapses to 1), Squeeze, then a
    'SAME' Conv1d of stride 2 over time: it runs only with exactly 40 bins."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 40, "T"])
    w1 = onnx.numpy_helper.from_array(np.ones((4, 1, 40, 3), np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(np.ones((4, 4, 3), np.float32), "w2")
    axes = onnx.numpy_helper.from_array(np.array([2]), "axes")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[0, 1, 0, 1]),
             helper.make_node("Squeeze", ["a", "axes"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"], strides=[2], auto_pad="SAME_UPPER")]
    graph = helper.make_graph(nodes, "mel", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w1, w2, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_known_spatial_size_beside_an_unknown_one_is_kept(tmp_path: Path, capsys) -> None:
    """A spectrogram of 40 mel bins and unknown length (brainmaze's EEG seizure models: 100 bins):
    every spatial axis was set to the sizes tried (256, ...), so the bins too, where the model
    cannot run, and the analysis ended in a misleading error at a later node.  Now the bins keep
    their 40 and only the time axis is unknown.  Oracle: the analysis at explicit lengths of
    both residues modulo the stride."""
    model = _spectrogram_net()
    a = rfgraph.analyze(model)
    assert a.unknown_size is not None and a.input_shape == (1, 1, 40, None)
    assert a["y"].r[0] == 40 and a["y"].S[0] == 1 and a["y"].shape[-1] is None
    for length in (37, 38):
        at = rfgraph.analyze(model, {"x": (1, 1, 40, length)})
        assert (at["y"].r, at["y"].S, at["y"].P[0]) == (a["y"].r, a["y"].S, a["y"].P[0])
        by = a["y"].P_at_unknown_size[1]
        assert (by.by_residue[length % by.period] if by else a["y"].P[1]) == at["y"].P[1]
    path = tmp_path / "mel.onnx"
    onnx.save(model, path)
    assert main(["diagnose", str(path)]) == 2  # a command that needs a size asks for the unknown one only
    assert "(axes [3] of shape [1, 1, 40, ?])" in capsys.readouterr().err


def test_a_size_where_shape_inference_fails_and_no_probe_runs_names_the_node(tmp_path: Path, capsys) -> None:
    """At 50 mel bins the net's Squeeze meets an axis of 11: ONNX's inference leaves every shape
    after it unknown, and a ConstantOfShape (an LSTM's zero state, as PyTorch exports it) keeps the
    onnxruntime probe from running.  The analysis then failed at a later node with "perm [0, 2, 1]
    is not a permutation of 0 axes"; now the size is refused naming the Squeeze and the reason."""
    model = _spectrogram_net()
    nodes = model.graph.node
    nodes[-1].input[0] = "s2"
    nodes.insert(2, helper.make_node("Shape", ["s"], ["shape"]))
    nodes.insert(3, helper.make_node("ConstantOfShape", ["shape"], ["zeros"]))
    nodes.insert(4, helper.make_node("Add", ["s", "zeros"], ["s1"]))
    nodes.insert(5, helper.make_node("Transpose", ["s1"], ["t"], perm=[0, 2, 1]))
    nodes.insert(6, helper.make_node("Transpose", ["t"], ["s2"], perm=[0, 2, 1]))
    path = tmp_path / "mel.onnx"
    onnx.save(model, path)
    assert rfgraph.analyze(model, {"x": (1, 1, 40, 30)})["y"].r[0] == 40  # the size it runs at
    assert main(["analyze", str(path), "--input-shape", "x:1x1x50x30"]) == 2
    err = capsys.readouterr().err
    assert "cannot run at input size x:1x1x50x30: node" in err and "(Squeeze) fails" in err, err
