"""Every registered command behaves the same way.

Covers: ``--version``; top-level ``--help`` lists every command; each command's ``--help`` has an
"examples:" section with at least one ``rfgraph COMMAND`` line and documents its exit codes;
``--quiet`` is accepted before and after the command name; every command that prints results
offers ``--format json`` and prints one valid JSON document with it (sample arguments per command
below: a new command without them fails here on purpose); the JSON of ``analyze``, ``boxes`` and
``show`` validates against the schemas in docs/json_schema.md (on a model with a misaligned merge
and a global op, so every optional part of the schema is exercised).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph.cli import COMMANDS, build_parser, main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "json_schema.md"

# Commands that only write files and print no results, with the reason (none today).
NO_RESULTS: dict[str, str] = {}
# Commands known to lack --format json: strict xfail, so fixing them turns this list red.
KNOWN_GAPS: dict[str, str] = {}
HELP_GAPS: dict[str, str] = {}


def known(commands: list[str], gaps: dict[str, str]) -> list:
    """``commands`` as parameters, the known gaps marked strict xfail (fixing one turns it red)."""
    return [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=gaps[c])) if c in gaps else c
            for c in commands]


def branchy(path: Path) -> Path:
    """x(1,2,16,12) -> 3x3/2 conv -> [2x2/2 | 1x1/2] -> Add (misaligned) -> GAP -> y."""
    rng = np.random.default_rng(0)
    ws = {n: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
          for n, s in (("w0", (2, 2, 3, 3)), ("wa", (2, 2, 2, 2)), ("wb", (2, 2, 1, 1)))}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t"], name="stem", strides=[2, 2], pads=[1] * 4),
             helper.make_node("Conv", ["t", "wa"], ["a"], name="a", strides=[2, 2]),
             helper.make_node("Conv", ["t", "wb"], ["b"], name="b", strides=[2, 2]),
             helper.make_node("Add", ["a", "b"], ["sum"], name="merge"),
             helper.make_node("GlobalAveragePool", ["sum"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "b", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(ws.values()))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return branchy(tmp_path_factory.mktemp("cli") / "b.onnx")


def sample_args(command: str, model: Path, tmp: Path) -> list[str]:
    """Arguments that make ``command`` print results on the small model (json format added later)."""
    samples = {
        "analyze": [str(model), "--all"],
        "boxes": [str(model), "--output", "sum", "--all"],
        "show": [str(model), "--output", "sum", "--index", "1,1", "-o", str(tmp / "o.png"), "--runs", "2"],
        "report": [str(model), "-o", str(tmp / "r.html"), "--erf-runs", "2"],
        "erf": [str(model), "--output", "sum", "--runs", "2"],
        "table": ["--models", "luo_conv_relu_3", "--no-reference"],
        "diagnose": [str(model), "--no-size-range"],
        "experiments": ["rf-vs-accuracy", "--quick", "--out", str(tmp / "exp"), "--no-progress"],
    }
    if command not in samples:
        pytest.fail(f"no sample arguments for command '{command}': add them to sample_args")
    return samples[command]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def schema(name: str) -> dict:
    block = re.search(rf"<!-- schema: {name} -->\s*```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert block, f"docs/json_schema.md has no schema block for '{name}'"
    return json.loads(block.group(1))


def test_every_listed_command_is_registered() -> None:
    """An optional dependency may hide a command; in the test environment none is missing."""
    assert set(subparsers()) == set(COMMANDS)


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"rfgraph {rfgraph.__version__}"


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--quiet" in out and all(re.search(rf"^\s+{c}\s", out, re.MULTILINE) for c in COMMANDS), out


@pytest.mark.parametrize("command", known(COMMANDS, HELP_GAPS))
def test_help_has_examples_and_exit_codes(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    examples = out.split("examples:", 1)
    assert len(examples) == 2, f"'rfgraph {command} --help' has no 'examples:' section"
    assert re.search(rf"^\s+rfgraph {command}\b", examples[1], re.MULTILINE), "no example invokes the command"
    assert "exit codes" in out, f"'rfgraph {command} --help' does not document its exit codes"


@pytest.mark.parametrize("command", COMMANDS)
def test_quiet_before_and_after_the_command(command: str) -> None:
    sub = subparsers()[command]
    assert "--quiet" in sub._option_string_actions
    assert "--quiet" in build_parser()._option_string_actions


@pytest.mark.parametrize("command", known([c for c in COMMANDS if c not in NO_RESULTS], KNOWN_GAPS))
def test_format_json_prints_one_document(command: str, model: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    fmt = subparsers()[command]._option_string_actions.get("--format")
    assert fmt is not None and "json" in (fmt.choices or ()), f"'rfgraph {command}' has no --format json"
    code = main([command, *sample_args(command, model, tmp_path), "--format", "json"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    json.loads(out)  # exactly one document: trailing text would make this fail


@pytest.mark.parametrize("command, name", [("analyze", "analyze"), ("boxes", "boxes"), ("show", "show")])
def test_json_follows_the_documented_schema(command: str, name: str, model: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert main([command, *sample_args(command, model, tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, schema(name))
    if command == "analyze":  # the optional parts were exercised
        assert doc["misaligned_merges"] and doc["global_at"] and any(None in e["r"] for e in doc["endpoints"])


def test_report_json_embeds_the_analyze_document(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["report", *sample_args("report", model, tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, schema("report"))
    analysis_part = {k: doc[k] for k in schema("analyze")["required"]}
    jsonschema.validate(analysis_part, schema("analyze"))
    assert doc["erf"] and doc["erf"][0]["tensor"] == "sum" and doc["erf"][0]["error"] is None


# One ERF vocabulary (issue 17 §4): each concept under one pair of names, in every command that
# computes an ERF; before, erf/show took --runs where report/diagnose took --erf-runs, erf took
# --inputs where show took --erf-inputs, and report named the ERF's tensor --erf-output only.
ERF_VOCABULARY = {"runs": {"--runs", "--erf-runs"}, "method": {"--method", "--erf-method"},
                  "inputs": {"--inputs", "--erf-inputs"}, "output": {"--output", "--erf-output"}}
ERF_COMMANDS = {"erf": {"runs", "method", "inputs", "output"}, "show": {"runs", "method", "inputs", "output"},
                "report": {"runs", "method", "output"}, "diagnose": {"runs"}}  # diagnose --output: its end points


@pytest.mark.parametrize("command", sorted(ERF_COMMANDS))
def test_one_erf_vocabulary(command: str) -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for concept, names in ERF_VOCABULARY.items():
        actions = [a for a in sub._actions if names & set(a.option_strings)]
        if concept in ERF_COMMANDS[command]:
            assert len(actions) == 1 and names <= set(actions[0].option_strings), (command, concept)
