"""`rfgraph analyze A B DIR/` (one table for several models) and `--compare` (two side by side).

Covers: every model's part of the table equals that model's own single-model analysis (JSON
documents equal, CSV rows equal with the model column in front); an error of one model is its
row (the same one line the single-model run prints) and the others go on; a folder is its
*.onnx files sorted, an empty one an error row; exit codes 0 / 1 (partial) / 2 (refused) / 3
(internal error); MODEL@SHAPE; --compare of one model at two input sizes whose 'SAME' padding
differs: each side equals the single-model run at that size, P equals the spec's closed form, and
'differs' marks exactly the end points whose r, S or P differ; matching by name, else by order;
the JSON schemas of docs/json_schema.md.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import onnx
import pytest

from rfgraph.cli import main
from rfgraph.compare import match_names
from tests.graphs import G
from tests.test_analyze_cli import _with_unknown_op
from tests.test_cli_consistency import schema


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _chain(path: Path, convs: int, size: int = 16) -> Path:
    g = G((size, size))
    x = "x"
    for _ in range(convs):
        x = g.relu(g.conv(x, 3, 1, pads=[1] * 4))
    onnx.save(g.model(x), path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b_chain.onnx (ok), a_unknown.onnx (partial), c_broken.onnx (refused), notes.txt (ignored)."""
    d = tmp_path / "models"
    d.mkdir()
    _chain(d / "b_chain.onnx", 2)
    src, _ = _with_unknown_op(tmp_path)
    (d / "a_unknown.onnx").write_bytes(src.read_bytes())
    (d / "c_broken.onnx").write_bytes(b"not a model")
    (d / "notes.txt").write_text("not a model either")
    return d


def test_each_model_equals_its_single_analysis(folder: Path, capsys: pytest.CaptureFixture) -> None:
    """JSON: one entry per model, in argument order (a folder's files sorted); each analysis is
    the single-model document, each error the single-model error line; exit 2 (one refused)."""
    code, out, _ = _run(capsys, "zoo:cnn_small", str(folder), "--format", "json")
    doc = json.loads(out)
    models = ["zoo:cnn_small", *(str(folder / n) for n in ("a_unknown.onnx", "b_chain.onnx", "c_broken.onnx"))]
    assert [m["model"] for m in doc["models"]] == models
    assert [m["status"] for m in doc["models"]] == ["ok", "partial", "ok", "refused"]
    assert code == 2
    for entry in doc["models"]:
        single_code, single_out, single_err = _run(capsys, entry["model"], "--format", "json")
        assert single_code == {"ok": 0, "partial": 1, "refused": 2}[entry["status"]]
        if entry["status"] == "refused":
            assert entry["analysis"] is None
            assert f"rfgraph: error: {entry['error']}" == single_err.strip()
        else:
            assert entry["error"] is None and entry["analysis"] == json.loads(single_out)


@pytest.mark.parametrize("drop, code", [(("c_broken.onnx",), 1), (("c_broken.onnx", "a_unknown.onnx"), 0)])
def test_exit_code_is_the_worst_status(folder: Path, drop: tuple, code: int, capsys: pytest.CaptureFixture) -> None:
    for name in drop:
        (folder / name).unlink()
    assert _run(capsys, str(folder))[0] == code


def test_csv_and_table_rows_are_the_single_rows(folder: Path, capsys: pytest.CaptureFixture) -> None:
    """CSV: the single-model CSV rows with the model in front; the error in its row's note;
    table and markdown hold the same cells."""
    chain, broken = str(folder / "b_chain.onnx"), str(folder / "c_broken.onnx")
    _, out, _ = _run(capsys, "zoo:cnn_small", chain, broken, "--format", "csv")
    rows = [r for r in csv.reader(io.StringIO(out)) if r]
    assert rows[0][0] == "model"
    for model in ("zoo:cnn_small", chain):
        _, single, _ = _run(capsys, model, "--format", "csv")
        assert [r[1:] for r in rows[1:] if r[0] == model] == [r for r in csv.reader(io.StringIO(single)) if r][1:]
    (err_row,) = [r for r in rows if r[0] == broken]
    _, _, err = _run(capsys, broken)
    assert "error: " + err_row[-1].removeprefix("error: ") == err.strip().removeprefix("rfgraph: ")
    for fmt in ("table", "markdown"):
        _, out, _ = _run(capsys, "zoo:cnn_small", chain, broken, "--format", fmt)
        assert out.startswith("3 models: 2 ok, 0 partial, 1 refused")
        for r in rows[1:]:
            assert re.search(r"\s+".join(re.escape(c) + r"[\s|]*" for c in r if c), out), (fmt, r)


def test_empty_folder_is_an_error_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    chain = str(_chain(tmp_path / "m.onnx", 1))
    code, out, _ = _run(capsys, chain, str(tmp_path / "empty"), "--format", "json")
    doc = json.loads(out)
    assert code == 2 and doc["models"][0]["status"] == "ok"
    assert "no *.onnx files" in doc["models"][1]["error"]


def test_an_internal_error_is_its_row(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met on one model (simulated) is that model's row; the others are analysed; exit 3."""
    import rfgraph.commands.analyze as command

    real = command.load_analysis

    def flaky(args: Any, *rest: Any) -> Any:
        if args.model.endswith("bad.onnx"):
            raise ZeroDivisionError("simulated")
        return real(args, *rest)

    monkeypatch.setattr(command, "load_analysis", flaky)
    monkeypatch.delenv("RFGRAPH_DEBUG", raising=False)
    good, bad = _chain(tmp_path / "good.onnx", 1), _chain(tmp_path / "bad.onnx", 1)
    code, out, _ = _run(capsys, str(bad), str(good), "--format", "json")
    doc = json.loads(out)
    assert code == 3 and [m["status"] for m in doc["models"]] == ["internal error", "ok"]
    assert "ZeroDivisionError: simulated" in doc["models"][0]["error"]


def _same_chain(path: Path, size: int) -> Path:
    """conv 3x3 s1 p1, then two 3x3 s2 'SAME_UPPER' convs: their begin pad is 0 or 1 with the
    parity of their input size."""
    g = G((size, size))
    x = g.conv("x", 3, 1, pads=[1] * 4)
    x = g.conv(x, 3, 2, auto_pad="SAME_UPPER")
    x = g.conv(x, 3, 2, auto_pad="SAME_UPPER")
    onnx.save(g.model(x), path)
    return path


def _same_upper_P(n: int) -> int:
    """P of the last conv by the spec: total pad (ceil(n/s)-1)*s + k - n, begin = total // 2,
    P = sum of begin pads times the product of the strides before (eq. 9)."""
    P, prod, size = 1, 1, n  # the 3x3 p1 conv: P = 1, size kept
    for s in (2, 2):
        out = -(-size // s)
        total = max((out - 1) * s + 3 - size, 0)
        P += (total // 2) * prod
        prod *= s
        size = out
    return P


def test_compare_two_sizes_marks_exactly_the_differing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One model at 32 and at 34: each side equals the single-model run at that size; P of the
    last conv is the spec's; 'differs' names exactly the quantities that differ."""
    model = str(_same_chain(tmp_path / "same.onnx", 32))
    a, b = f"{model}@1x1x32x32", f"{model}@1x1x34x34"
    code, out, _ = _run(capsys, a, b, "--compare", "--all", "--format", "json")
    doc = json.loads(out)
    assert code == 0
    singles = []
    for spec in (a, b):
        _, single, _ = _run(capsys, spec, "--all", "--format", "json")
        singles.append({r["tensor"]: r for r in json.loads(single)["endpoints"]})
    marked = 0
    for row in doc["rows"]:
        assert row["match"] == "name" and row["a"] == singles[0][row["a"]["tensor"]]
        assert row["b"] == singles[1][row["b"]["tensor"]]
        expected = [q for q in ("r", "S", "P") if row["a"][q] != row["b"][q]]
        assert row["differs"] == expected
        marked += bool(expected)
    assert 0 < marked < len(doc["rows"]) == len(singles[0])
    assert doc["differing"] == marked
    last = doc["rows"][-1]
    assert (last["a"]["P"], last["b"]["P"]) == ([_same_upper_P(32)] * 2, [_same_upper_P(34)] * 2)
    assert last["differs"] == ["P"]


def test_compare_table_marks_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = str(_same_chain(tmp_path / "same.onnx", 32))
    code, out, _ = _run(capsys, f"{model}@1x1x32x32", f"{model}@1x1x34x34", "--compare")
    assert code == 0
    assert "1 of 1 end points differ in r, S or P" in out
    assert re.search(r"\bname\s+1x2x8x8\s+1x2x9x9\s.*\sP\s*$", out, re.MULTILINE), out


def test_match_by_name_then_by_order() -> None:
    """Equal names pair; the rest pair in order; the unpaired stand alone (A's order first)."""
    assert match_names(["x", "a1", "y", "a2"], ["b1", "y", "x"]) == [
        ("x", "x", "name"), ("a1", "b1", "order"), ("y", "y", "name"), ("a2", None, "only A")]
    assert match_names(["a"], ["b", "c"]) == [("a", "b", "order"), (None, "c", "only B")]


def test_compare_two_models_by_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two chains (2 and 3 convs) whose end points have other names: paired by order; r differs
    (5 vs 7: eq. 2), S and P too (P = 2 vs 3)."""
    a, b = _chain(tmp_path / "a.onnx", 2), _chain(tmp_path / "b.onnx", 3)
    code, out, _ = _run(capsys, str(a), str(b), "--compare", "--format", "json")
    (row,) = json.loads(out)["rows"]
    assert code == 0 and row["match"] == "order" and row["a"]["tensor"] != row["b"]["tensor"]
    assert (row["a"]["r"], row["b"]["r"], row["differs"]) == ([5, 5], [7, 7], ["r", "P"])


def test_compare_refuses_a_bad_model_and_a_third(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = str(_chain(tmp_path / "a.onnx", 1))
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    code, out, err = _run(capsys, good, str(tmp_path / "bad.onnx"), "--compare")
    assert code == 2 and not out and err.count("\n") == 1 and "bad.onnx" in err
    code, _, err = _run(capsys, good, good, good, "--compare")
    assert code == 2 and "two models" in err


def test_shape_suffix_and_a_path_with_at(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """MODEL@1x1x20x20 sets the input size; a file whose name holds '@' is read whole."""
    path = _chain(tmp_path / "m@v2.onnx", 1, size=16)
    code, out, _ = _run(capsys, str(path), "--format", "json")
    assert code == 0 and json.loads(out)["input"]["shape"] == [1, 1, 16, 16]
    model = _chain(tmp_path / "m.onnx", 1, size=16)
    code, out, _ = _run(capsys, f"{model}@1x1x20x20", "--format", "json")
    assert code == 0 and json.loads(out)["input"]["shape"] == [1, 1, 20, 20]


@pytest.mark.parametrize("name", ["analyze-models", "analyze-compare"])
def test_json_follows_the_documented_schema(name: str, folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if name == "analyze-models":
        _, out, _ = _run(capsys, str(folder), "--format", "json")
    else:
        model = str(_same_chain(tmp_path / "same.onnx", 32))
        _, out, _ = _run(capsys, f"{model}@1x1x32x32", f"{model}@1x1x34x34", "--compare", "--format", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema(name))
    analyses = ([m["analysis"] for m in doc["models"] if m["analysis"]] if name == "analyze-models"
                else [doc["a"]["analysis"], doc["b"]["analysis"]])
    for analysis in analyses:  # each is the analyze document
        jsonschema.validate(analysis, schema("analyze"))


def test_layers_of_several_models(folder: Path, capsys: pytest.CaptureFixture) -> None:
    """--layers with several models: each model's rows (CSV) and document (JSON) are those of
    its own `analyze MODEL --layers`; the broken one is its error row."""
    chain = str(folder / "b_chain.onnx")
    code, out, _ = _run(capsys, "zoo:cnn_small", chain, str(folder / "c_broken.onnx"), "--layers", "--format", "csv")
    rows = [r for r in csv.reader(io.StringIO(out)) if r]
    assert code == 2 and rows[0][:3] == ["model", "layer", "op"]
    for model in ("zoo:cnn_small", chain):
        _, single, _ = _run(capsys, model, "--layers", "--format", "csv")
        assert [r[1:] for r in rows[1:] if r[0] == model] == [r for r in csv.reader(io.StringIO(single)) if r][1:]
    assert rows[-1][-1].startswith("error: ")
    _, out, _ = _run(capsys, "zoo:cnn_small", chain, "--layers", "--format", "json")
    for entry in json.loads(out)["models"]:
        _, single, _ = _run(capsys, entry["model"], "--layers", "--format", "json")
        assert entry["analysis"] == json.loads(single)


def test_compare_with_a_partial_model_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model that stops at an unsupported op is compared on what was analysed, marked partial."""
    partial, _ = _with_unknown_op(tmp_path)
    chain = _chain(tmp_path / "c.onnx", 1)
    code, out, _ = _run(capsys, str(chain), str(partial), "--compare", "--format", "json")
    doc = json.loads(out)
    assert code == 1 and (doc["a"]["status"], doc["b"]["status"]) == ("ok", "partial")
    _, single, _ = _run(capsys, str(partial), "--format", "json")
    assert doc["b"]["analysis"] == json.loads(single)
