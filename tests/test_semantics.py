"""The op-semantics layer (rfgraph/semantics) and the rule table an analysis owns (rfgraph/rules.py).

Cases: an op defined by two families is refused when the tables are assembled; every rfgraph module
imports alone in a fresh interpreter (no import cycle), and semantics loads neither custom_ops nor the
gradient builder; rule tables are independent values: rules given to one analysis, the
assume-pointwise choice and rules registered after a table was made do not leak into another.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import rfgraph
from rfgraph import custom_ops, semantics
from rfgraph.rules import RuleTable
from rfgraph.semantics.transfer import pointwise

ROOT = Path(__file__).resolve().parents[1]


def test_an_op_defined_by_two_families_is_refused() -> None:
    """Two families claiming Relu (one by its TRF rule, one by its VJP rule): refused naming both."""
    first = types.ModuleType("rfgraph.semantics.first")
    first.TRF, first.VJP = {"Relu": pointwise}, {}
    second = types.ModuleType("rfgraph.semantics.second")
    second.TRF, second.VJP = {}, {"Relu": object()}
    with pytest.raises(ImportError, match="op Relu is defined by two families: first and second"):
        semantics._owners((first, second))


def test_every_op_has_one_family_holding_its_rules() -> None:
    """Each op of the assembled tables is owned by the family whose tables hold its rules."""
    for family in semantics.FAMILIES:
        name = family.__name__.rsplit(".", 1)[-1]
        for op in set(family.TRF) | set(family.VJP):
            assert semantics.OWNER[op] == name
            assert semantics.TRF_RULES.get(op) is family.TRF.get(op)
            assert semantics.VJP_RULES.get(op) is family.VJP.get(op)
    assert set(semantics.OWNER) == set(semantics.TRF_RULES) | set(semantics.VJP_RULES)


@pytest.mark.parametrize("name", ["POINTWISE_OPS", "BROADCAST_OPS", "CACHEABLE_OPS", "WINDOW_OPS",
                                  "CHANNELS_FIRST_OPS", "NORMALISING_OPS", "GATE_OPS", "QUANTIZED_OPS"])
def test_op_sets_name_ops_with_rules(name: str) -> None:
    """The op sets other layers read name ops the tables know (a misspelt op would never match)."""
    ops = getattr(semantics, name)
    assert ops and set(ops) <= set(semantics.TRF_RULES)


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(rfgraph.__path__, "rfgraph.")]
    return ["rfgraph", *sorted(n for n in names if n != "rfgraph.__main__")]


IMPORT_ALONE = """
import importlib, sys, types
import rfgraph
path = list(rfgraph.__path__)

def fresh(package_init):
    for loaded in [m for m in sys.modules if m == "rfgraph" or m.startswith("rfgraph.")]:
        del sys.modules[loaded]
    if not package_init:  # the package without its __init__, so that nothing is imported before
        stub = types.ModuleType("rfgraph")
        stub.__path__ = path
        sys.modules["rfgraph"] = stub

for name in sys.argv[1:]:
    fresh(package_init=False)
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if exc.name != "rfgraph":  # not a name from the package's __init__ (rfgraph.analyze...)
            raise
        fresh(package_init=True)
        importlib.import_module(name)
print("ok")
"""


def test_every_module_imports_alone() -> None:
    """Each rfgraph module imported first, before any other rfgraph module (the package's __init__
    left out where the module does not need its names): an import cycle would fail with an
    ImportError or an AttributeError on a partially initialised module."""
    out = subprocess.run([sys.executable, "-c", IMPORT_ALONE, *_modules()], capture_output=True, text=True,
                         cwd=ROOT, timeout=600, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def _rfgraph_imports(path: Path) -> set[str]:
    """The rfgraph modules a semantics module imports (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ["rfgraph", "semantics"][:2 - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("rfgraph")}


def test_semantics_needs_neither_custom_rules_nor_the_builders() -> None:
    """The op layer sits below custom_ops (which builds on it), the rule table, the TRF pass and the
    gradient-graph builder: it imports none of them (so none can form a cycle with it)."""
    above = {"rfgraph.custom_ops", "rfgraph.rules", "rfgraph.trf", "rfgraph.vjp", "rfgraph.analysis"}
    modules = sorted((ROOT / "rfgraph" / "semantics").glob("*.py"))
    assert len(modules) == len(semantics.FAMILIES) + 4  # + __init__, transfer, gradient, geometry
    for path in modules:
        imported = _rfgraph_imports(path)
        assert imported and not imported & above, (path.name, imported)


def test_rule_tables_are_independent_values() -> None:
    """One analysis's declared rules and assume-pointwise choice stay in its own table; a table
    copies register_op's rules when made."""
    declared = custom_ops.RuleSet([custom_ops.make_spec("MyPool", 3, 1, 1, 1, None, "com.example", None,
                                                        "test")])
    with_rules = RuleTable.build(declared)
    plain = RuleTable.build()
    assumed = RuleTable.build(assume_pointwise=True)
    assert with_rules.rule("MyPool", "com.example") is not None
    assert plain.rule("MyPool", "com.example") is None
    assert assumed.rule("MyPool", "com.example") is not None and plain.rule("Unknown", "x") is None
    assert plain.rule("Conv") is semantics.TRF_RULES["Conv"]
    before = RuleTable.build()
    rfgraph.register_op("LaterOp", kernel=3, domain="com.example")
    try:
        assert before.rule("LaterOp", "com.example") is None
        assert RuleTable.build().rule("LaterOp", "com.example") is not None
    finally:
        rfgraph.unregister_op("LaterOp", "com.example")
    assert RuleTable.build().rule("LaterOp", "com.example") is None
