"""One model preparation (``onnx_import.prepare``: opset >= 17, the input's shape fixed, traced
batches in Reshape targets freed) for the gradient graph and the finite differences; the finite
differences no longer import the gradient builder (issue 13 section 4)."""

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import runtime, vjp
from rfgraph.errors import DynamicShapeError
from rfgraph.finite_diff import FiniteDifference
from rfgraph.onnx_import import prepare

PACKAGE = Path(rfgraph.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module name a file imports (relative ones as written, without the dots)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_finite_differences_do_not_import_the_gradient_builder():
    """Catches finite_diff reaching into vjp again (it took prepare and session_options from it)."""
    assert not {"vjp", "rfgraph.vjp"} & _imported_modules(PACKAGE / "finite_diff.py")


def _flatten_model() -> onnx.ModelProto:
    """x(1,2,4,4) -> Reshape to the traced [1, 32] -> y: a batch baked in as torch's tracer does."""
    target = numpy_helper.from_array(np.array([1, 32], np.int64), "target")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "target"], ["y"])], "flat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [target])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_prepare_fixes_the_shape_and_frees_the_traced_batch():
    """At batch 3 each sample's output equals a batch-1 run of the original (oracle: onnxruntime on
    the unprepared model, one sample at a time); the opset is raised to 17."""
    model = _flatten_model()
    batched = prepare(model, (3, 2, 4, 4), "x")
    assert next(o.version for o in batched.opset_import if o.domain == "") >= 17
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    (y,) = runtime.session(batched).run(None, {"x": x})
    one = runtime.session(model)
    assert np.array_equal(y, np.concatenate([one.run(None, {"x": x[i:i + 1]})[0] for i in range(3)]))


def test_a_shape_of_another_rank_is_refused_naming_the_input():
    with pytest.raises(DynamicShapeError, match="has rank 3, the model's input 'x' has rank 4"):
        prepare(_flatten_model(), (1, 2, 4), "x")


def test_finite_differences_run_on_the_prepared_model():
    """d(seed . y)/dx of a Reshape is the seed reshaped to x (closed form), 4 inputs per run."""
    fd = FiniteDifference(_flatten_model(), "y", "x", (1, 2, 4, 4), (2, 3), batch=4)
    seed = np.arange(32, dtype=np.float32).reshape(1, 32)
    grad = fd.gradient(np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32), seed)
    assert fd.k == 4 and np.allclose(grad, seed.reshape(1, 2, 4, 4), atol=1e-3)


def test_gradient_graph_reads_the_preparations_shapes_without_a_probe(monkeypatch) -> None:
    """The gradient graph's tensor shapes come from the model preparation's inference (shape
    arithmetic folded), as the TRF's do: Reshape(x, Concat(Shape(x)[:2], ReduceProd(Shape(x)[2:])))
    needs no onnxruntime run (before: a second inference of its own, which left the Reshape
    unknown and ran the model on zeros to measure it).  The gradient is checked in closed form."""
    ints = {"st": [0], "en": [2], "far": [9]}
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "st", "en"], ["lead"]),
             helper.make_node("Slice", ["s", "en", "far"], ["rest"]),
             helper.make_node("ReduceProd", ["rest"], ["flat"], keepdims=1),
             helper.make_node("Concat", ["lead", "flat"], ["target"], axis=0),
             helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "target"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def no_probe(*args, **kwargs):
        raise AssertionError("onnxruntime probe run for shapes the preparation knows")

    monkeypatch.setattr(vjp, "measure_shapes", no_probe)
    built = vjp.build_vjp(model)
    assert built.output_shape == (1, 2, 12)
    rng = np.random.default_rng(0)
    x, seed = rng.standard_normal((1, 2, 3, 4)).astype(np.float32), rng.standard_normal((1, 2, 12)).astype(np.float32)
    got = vjp.input_gradient(built, vjp.session(built), x, seed)
    np.testing.assert_allclose(got, seed.reshape(x.shape) * (x > 0), rtol=1e-6)
