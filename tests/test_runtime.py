"""rfgraph.runtime is the one module importing onnxruntime (issue 13 section 4): every session,
its providers and threads are made in one place."""

import ast
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

import rfgraph
from rfgraph import runtime

PACKAGE = Path(rfgraph.__file__).parent


def _imports_onnxruntime(tree: ast.AST) -> bool:
    """Whether the module's syntax tree imports onnxruntime (``import``/``from``, anywhere)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "onnxruntime" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "onnxruntime":
            return True
    return False


def test_only_the_runtime_module_imports_onnxruntime():
    """Catches a module that creates its own sessions (options, providers) again (five did)."""
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "runtime.py" and _imports_onnxruntime(ast.parse(p.read_text(), str(p)))]
    assert offenders == []
    assert _imports_onnxruntime(ast.parse((PACKAGE / "runtime.py").read_text()))


def test_run_on_zeros_measures_shapes_and_session_takes_threads():
    """A Transpose's output shape measured on zeros equals numpy's transpose of that shape; a
    session with 1 thread and a config entry loads and runs."""
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 1])], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = runtime.session(model, threads=1, config={"session.intra_op.allow_spinning": "0"})
    assert runtime.run_on_zeros(sess, ["y"], {}) == {"y": np.zeros((2, 3, 5)).transpose(2, 0, 1).shape}
    assert runtime.CPU in runtime.available_providers()
