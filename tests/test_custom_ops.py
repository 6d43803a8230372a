"""Custom op rules: register_op, TOML rules files, domains, and the --assume-pointwise fallback.

Cases: a com.example op analysed through a rules file (r, S, P equal to the closed forms of
Araujo et al. eqs. 2, 9, 10) and refused with a clear message without it (library and CLI);
register_op with numbers, attributes and a callable; pointwise and global kinds; kind 'conv' on a
a fused com.example ConvRelu equals the same graph with a standard Conv; domain matching; assumed
pointwise only when the output keeps the spatial shape, and reported per node; bad rules files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import custom_ops
from rfgraph.cli import main
from rfgraph.errors import RFGraphError
from rfgraph.fields import closed_form_P, closed_form_r


def custom_model(op: str = "MyPool", domain: str = "com.example", out_shape: list | None = None,
                 **attrs: object) -> onnx.ModelProto:
    """x(1,3,32,32) -> op (custom domain) -> Conv 3x3 pad 1 -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node(op, ["x"], ["p"], domain=domain, name="custom", **attrs),
             helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              name="conv")]
    vi = [helper.make_tensor_value_info("p", TensorProto.FLOAT, out_shape)] if out_shape else []
    g = helper.make_graph(nodes, "g", [x], [y], [w], value_info=vi)
    opsets = [helper.make_opsetid("", 17)]
    if domain not in ("", "ai.onnx"):
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(g, opset_imports=opsets)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text('[[op]]\nname = "MyPool"\ndomain = "com.example"\nkernel = "attr:k"\n'
                    'stride = 2\npad = 1\n')
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "custom.onnx"
    onnx.save(custom_model(k=5), path)
    return path


def test_rules_file_analyses_custom_domain_op(rules_file: Path) -> None:
    """Kernel read from the node attribute k=5, stride 2, pad 1, then Conv 3x3: closed forms."""
    a = rfgraph.analyze(custom_model(k=5), rules=rules_file)
    assert not a.stops
    ep = a["y"]
    assert ep.r == (closed_form_r([5, 3], [2, 1]),) * 2 == (9, 9)
    assert ep.P == (closed_form_P([1, 1], [2, 1]),) * 2 == (3, 3)
    assert ep.S == (2, 2)
    assert a["p"].shape[2:] == (15, 15)  # floor((32 + 2 - 5) / 2) + 1, declared for shape inference
    assert "com.example::MyPool" in a.rule_notes["custom"]


def test_without_rules_the_op_is_refused_clearly() -> None:
    a = rfgraph.analyze(custom_model(k=5))
    assert [(s.node, s.op) for s in a.stops] == [("custom", "MyPool")]
    assert "com.example" in a.stops[0].reason and "--rules" in a.stops[0].reason
    assert "y" not in a


def test_cli_with_and_without_rules(model_file: Path, rules_file: Path, capsys) -> None:
    """Exit 1 and a one-line STOPPED note without rules; exit 0 and r=9 with --rules."""
    assert main(["analyze", str(model_file)]) == 1
    out = capsys.readouterr().out
    assert "STOPPED at node 'custom' (MyPool)" in out and "--rules" in out
    assert main(["analyze", str(model_file), "--rules", str(rules_file), "--format", "json"]) == 0
    import json

    rows = {r["tensor"]: r for r in json.loads(capsys.readouterr().out)["endpoints"]}
    assert rows["y"]["r"] == [9, 9]
    assert main(["diagnose", str(model_file), "--no-size-range"]) == 1
    assert "STOPPED at node 'custom' (MyPool)" in capsys.readouterr().out
    assert main(["diagnose", str(model_file), "--rules", str(rules_file), "--no-size-range"]) == 0
    assert "custom: MyPool: declared window rule for com.example::MyPool" in capsys.readouterr().out


def test_register_op_numbers_and_callable() -> None:
    """register_op with per-axis lists, and a callable over attributes, give the same fields."""
    try:
        rfgraph.register_op("MyPool", kernel=[5, 3], stride=[2, 1], pad=[2, 1],
                            domain="com.example")
        a = rfgraph.analyze(custom_model(k=5))
        assert a["y"].r == (closed_form_r([5, 3], [2, 1]), closed_form_r([3, 3], [1, 1]))
        assert a["y"].P == (closed_form_P([2, 1], [2, 1]), closed_form_P([1, 1], [1, 1]))
        with pytest.raises(RFGraphError, match="already declared"):
            rfgraph.register_op("MyPool", kernel=3, domain="com.example")
        rfgraph.register_op("MyPool", domain="com.example", replace=True,
                            rule=lambda at: {"kernel": at["k"], "stride": at["k"] - 3, "pad": 0})
        b = rfgraph.analyze(custom_model(k=4))
        assert b["p"].r == (4, 4) and b["p"].S == (1, 1)
        assert b["y"].r == (closed_form_r([4, 3], [1, 1]),) * 2
    finally:
        rfgraph.unregister_op("MyPool", domain="com.example")
    assert rfgraph.analyze(custom_model(k=5)).stops  # unregistered again


@pytest.mark.parametrize("kind", ["pointwise", "global"])
def test_pointwise_and_global_kinds(kind: str) -> None:
    rules = custom_ops.RuleSet([custom_ops.make_spec("MyOp", None, 1, 0, 1, kind, "com.example",
                                                     None, "test")])
    a = rfgraph.analyze(custom_model("MyOp"), rules=rules)
    assert not a.stops
    if kind == "pointwise":
        assert a["p"].r == (1, 1) and a["y"].r == (3, 3) and a["p"].shape == (1, 3, 32, 32)
    else:
        assert a["p"].is_global and a["y"].is_global
        assert "custom" in a.global_at


def test_conv_kind_matches_the_standard_conv() -> None:
    """com.example::ConvRelu declared as kind 'conv' == the same graph with a plain Conv."""
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 0, 1], "dilations": [2, 1]}

    def model(op: str, domain: str) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])
        w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
        nodes = [helper.make_node(op, ["x", "w"], ["p"], domain=domain, name="fc", **attrs),
                 helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
        ops = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=ops)

    ref = rfgraph.analyze(model("Conv", ""))
    rules = custom_ops.RuleSet([custom_ops.make_spec("ConvRelu", None, 1, 0, 1, "conv",
                                                     "com.example", None, "test")])
    got = rfgraph.analyze(model("ConvRelu", "com.example"), rules=rules)
    assert not got.stops
    for t in ("p", "y"):
        assert (got[t].r, got[t].S, got[t].P, got[t].shape) == (ref[t].r, ref[t].S, ref[t].P,
                                                                ref[t].shape)


def test_domains_are_matched_by_name(tmp_path: Path) -> None:
    """A rule for com.other does not apply to com.example; '*' applies to any domain."""
    path = tmp_path / "r.toml"
    path.write_text('[[op]]\nname = "MyPool"\ndomain = "com.other"\nkind = "pointwise"\n')
    assert rfgraph.analyze(custom_model(k=3), rules=path).stops
    path.write_text('[[op]]\nname = "MyPool"\ndomain = "*"\nkind = "pointwise"\n')
    assert not rfgraph.analyze(custom_model(k=3), rules=path).stops
    rules = custom_ops.load_rules(path)
    assert rules.find("MyPool", "anything") is not None and rules.find("Other", "") is None


def test_assume_pointwise_only_when_spatial_shape_is_kept(tmp_path: Path, capsys) -> None:
    """Output shape known and equal: assumed pointwise, and said so per node; else refused."""
    same = custom_model("Blur", out_shape=[1, 3, 32, 32])
    assert rfgraph.analyze(same).stops  # never without the flag
    a = rfgraph.analyze(same, assume_pointwise=True)
    assert not a.stops and a["y"].r == (3, 3)
    assert "ASSUMED pointwise" in a.rule_notes["custom"]
    smaller = custom_model("Blur", out_shape=[1, 3, 16, 16])
    b = rfgraph.analyze(smaller, assume_pointwise=True)
    assert "does not keep the input's spatial shape" in b.stops[0].reason
    unknown = custom_model("Blur")
    c = rfgraph.analyze(unknown, assume_pointwise=True)
    assert "output shape is unknown" in c.stops[0].reason
    path = tmp_path / "same.onnx"
    onnx.save(same, path)
    assert main(["diagnose", str(path), "--assume-pointwise"]) == 0
    assert "ASSUMED pointwise" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ('[[op]]\nname = "A"\nkind = "blur"\n', "kind 'blur'"),
    ('[[op]]\nkind = "pointwise"\n', "missing 'name'"),
    ('[[op]]\nname = "A"\n', "needs kernel"),
    ('[[op]]\nname = "A"\nkernel = "k"\n', "attr:NAME"),
    ('[[op]]\nname = "A"\nkernel = 3\nstrides = 2\n', "unknown keys"),
    ('[[op]\nname = "A"\n', "not valid TOML"),
    ('title = "x"\n', "no [[op]] tables"),
])
def test_bad_rules_files_fail_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RFGraphError, match=None) as err:
        custom_ops.load_rules(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_rules_file_on_the_cli_exits_2(model_file: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[op]]\nname = "MyPool"\nkind = "blur"\n')
    assert main(["analyze", str(model_file), "--rules", str(path)]) == 2
    assert "kind 'blur'" in capsys.readouterr().err
    assert main(["analyze", str(model_file), "--rules", str(tmp_path / "none.toml")]) == 2


@pytest.mark.parametrize("kernel", ["33", 2.5, [3, "x"], {"a": 1}])
def test_declared_values_that_are_not_ints_are_refused(kernel: object) -> None:
    """A rule value that is not an int or a list of ints (a string read digit by digit, a
    fractional float truncated) is refused in one line, never turned into a wrong number."""
    try:
        rfgraph.register_op("MyPool", domain="com.example", rule=lambda at: {"kernel": kernel, "stride": 1, "pad": 0})
        with pytest.raises(RFGraphError, match="expected an int or a list of ints") as err:
            rfgraph.analyze(custom_model(k=5))
        assert "\n" not in str(err.value) and "'custom'" in str(err.value)
    finally:
        rfgraph.unregister_op("MyPool", domain="com.example")


def test_integral_floats_and_numpy_ints_are_accepted() -> None:
    """TOML and attributes may give 3.0 or numpy integers: the same field as plain ints."""
    try:
        rfgraph.register_op("MyPool", domain="com.example",
                            rule=lambda at: {"kernel": [np.int64(5), 3.0], "stride": 2.0, "pad": [2, 1]})
        a = rfgraph.analyze(custom_model(k=5))
        assert a["p"].r == (5, 3) and a["p"].S == (2, 2)
    finally:
        rfgraph.unregister_op("MyPool", domain="com.example")
