"""Memory and time bounded by what a command must do (issue 15 §2).

Failed before (each test): a 600-byte file of ConstantOfShape + Concats made ONNX's data
propagation allocate gigabytes; ``--fill`` on a [30000, 30000] input materialised 3.6 GB;
``boxes --all`` on 10^10 units, ``diagnose --size-max 10^9`` and ``show --scale 100000`` ran until
memory ran out.  Each is now bounded (peak memory measured in a child process) or refused in one
line that gives the estimate and the variable that raises the limit, and the limit, once raised,
lets the same work through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import budgets
from rfgraph.cli import main
from rfgraph.onnx_import import propagated_values_are_small

ROOT = Path(__file__).resolve().parents[1]


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _conv(path: Path, extra_inputs: list | None = None, extra_nodes: list | None = None) -> Path:
    """x (1x1xHxW, dynamic) -> 3x3 Conv -> y, with optional extra inputs and nodes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if extra_nodes else "y"], pads=[1, 1, 1, 1])]
    return _save(path, nodes + (extra_nodes or []), [x] + (extra_inputs or []),
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])


# The child reports its own VmHWM at exit: the peak of the memory of the program it runs.  Neither
# wait4's nor RUSAGE_CHILDREN's ru_maxrss can be used: a child started by vfork + exec carries the
# parent's peak (pytest's, over 1 GB in the whole suite) in its accounting.
CHILD = """import sys
from rfgraph.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))
    sys.stderr.write('\\nRFGRAPH_TEST_VMHWM ' + peak.split()[1] + '\\n')
sys.exit(rc)
"""


def _peak_rss_mb(argv: list[str]) -> tuple[int, float, str]:
    """Run the CLI in a child process: exit status, that child's peak resident memory (MB), stderr."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux) to read a process's peak memory")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    lines = proc.stderr.strip().splitlines()
    peak_kb = int(lines[-1].split()[1])
    return proc.returncode, peak_kb / 1024, "\n".join(lines[:-1])


def _doubling_chain(path: Path, doublings: int) -> Path:
    """ConstantOfShape([2^22]) doubled ``doublings`` times by Concat, beside a Conv of the input."""
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["k0"])]
    nodes += [helper.make_node("Concat", [f"k{i}", f"k{i}"], [f"k{i + 1}"], axis=0) for i in range(doublings)]
    nodes += [helper.make_node("Shape", [f"k{doublings}"], ["n"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
    return _save(path, nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                                    helper.make_tensor_value_info("n", TensorProto.INT64, None)],
                 [w, numpy_helper.from_array(np.array([1 << 22], np.int64), "s")])


def test_data_propagation_skipped_where_its_values_would_be_huge(tmp_path: Path) -> None:
    """2^22 x 2^7 int64 values = 4 GB for ONNX's data propagation before; now under 1 GB."""
    path = _doubling_chain(tmp_path / "chain.onnx", 7)
    assert not propagated_values_are_small(onnx.load(path))
    rc, peak, err = _peak_rss_mb(["analyze", str(path)])
    assert rc == 0, err
    assert peak < 1024, f"peak {peak:.0f} MB"


def test_data_propagation_kept_for_small_shape_values(tmp_path: Path) -> None:
    small = tmp_path / "ok.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["k"]), helper.make_node("Concat", ["k", "k"], ["k2"], axis=0),
             helper.make_node("Reshape", ["x", "k2"], ["y"])]
    _save(small, nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
          [numpy_helper.from_array(np.array([2], np.int64), "s")])
    assert propagated_values_are_small(onnx.load(small))


def test_fill_of_a_huge_input_is_never_materialised(tmp_path: Path) -> None:
    """A [30000, 30000] float input filled with 1 (3.6 GB) that only a ReduceSum reads: the field
    of y is the Conv's (r = 3), found in well under 1 GB."""
    big = helper.make_tensor_value_info("big", TensorProto.FLOAT, [30000, 30000])
    path = _conv(tmp_path / "fill.onnx", [big], [helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                                                helper.make_node("Add", ["c", "s"], ["y"])])
    rc, peak, err = _peak_rss_mb(["analyze", str(path), "--input-shape", "x:1x1x8x8", "--fill", "big=1",
                                  "--format", "csv"])
    assert rc == 0, err
    assert peak < 1024, f"peak {peak:.0f} MB"


@pytest.mark.parametrize("argv, env, words", [
    (["boxes", "{m}", "--input-shape", "x:1x1x100000x100000", "--output", "y", "--all"], budgets.BOX_UNITS.env,
     ("10,000,000,000 units", "--index")),
    (["diagnose", "{m}", "--input-shape", "x:1x1x32x32", "--size-max", "1000000000"], budgets.SCAN_SIZE.env,
     ("--size-max 1000000000",)),
    (["show", "{m}", "--input-shape", "x:1x1x64x64", "--output", "y", "--no-erf", "--scale", "100000",
      "-o", "{d}/s.png"], budgets.IMAGE_PIXELS.env, ("--scale 100000", "40,960,000,000,000 pixels")),
])
def test_work_past_a_limit_is_refused_with_the_estimate(argv: list[str], env: str, words: tuple[str, ...],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _conv(tmp_path / "conv.onnx")
    args = [a.format(m=model, d=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rfgraph: error:"), err
    for w in (env, *words):
        assert w in err[0], err[0]
    assert not (tmp_path / "s.png").exists()


def test_a_raised_limit_lets_the_work_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """boxes --all on 8x8 units: refused under a limit of 10 units, all 64 rows under 64."""
    model = str(_conv(tmp_path / "conv.onnx"))
    argv = ["boxes", model, "--input-shape", "x:1x1x8x8", "--output", "y", "--all", "--format", "json"]
    monkeypatch.setenv(budgets.BOX_UNITS.env, "10")
    assert main(argv) == 2
    assert "64 units" in capsys.readouterr().err
    monkeypatch.setenv(budgets.BOX_UNITS.env, "64")
    assert main(argv) == 0
    assert capsys.readouterr().out.count('"index"') == 64


def test_a_bad_limit_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(budgets.BOX_UNITS.env, "lots")
    with pytest.raises(budgets.RFGraphError, match="RFGRAPH_MAX_UNITS='lots' is not a number"):
        budgets.BOX_UNITS.check(1, "x")


def _resize(path: Path, rows: int) -> Path:
    """A 142-byte-class file: Resize (nearest) of a 4 x 16 map to ``rows`` x 16."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 16])
    sizes = numpy_helper.from_array(np.array([1, 1, rows, 16], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", name="up")
    return _save(path, [node], [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [sizes])


def test_absurd_resize_is_refused_naming_it(tmp_path: Path) -> None:
    """Resize to 2^31 - 1 rows hung (the span of one period of the scale, one unit at a time); 10^7
    rows took 108 s and 938 MB.  Now one line, in seconds and little memory."""
    for rows in (10**7, 2**31 - 1):
        rc, peak, err = _peak_rss_mb(["analyze", str(_resize(tmp_path / f"r{rows}.onnx", rows))])
        assert rc == 2, err
        assert "node 'up' (Resize)" in err and budgets.RESIZE_PERIOD.env in err, err
        assert peak < 400, f"peak {peak:.0f} MB"


def test_a_raised_resize_limit_gives_the_exact_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 -> 280000 rows (a period of 70000 output units): refused by default, exact once raised:
    every output row copies one input row (nearest), so r = 1 and S = 4/280000."""
    path = str(_resize(tmp_path / "r.onnx", 280000))
    with pytest.raises(budgets.BudgetError):
        rfgraph.analyze(path)
    monkeypatch.setenv(budgets.RESIZE_PERIOD.env, "100000")
    y = rfgraph.analyze(path)["y"]
    assert y.r[0] == 1 and y.S[0] == Fraction(4, 280000)
