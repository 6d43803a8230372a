"""diagnostics is a package split by topic (issue 13 section 4): what ``rfgraph.diagnostics``
exported before still imports from it, and no module reaches into ``Analysis._pass``."""

import ast
from pathlib import Path

import rfgraph
from rfgraph import diagnostics
from rfgraph.trf import output_transfers
from tests.graphs import chain

PACKAGE = Path(rfgraph.__file__).parent
# the names the single-module diagnostics.py exported (its __all__), plus those tests and commands import
EXPORTED = ["AlignmentFix", "AxisCoverage", "AxisRegions", "Coverage", "Diagnosis", "ERFGrowth",
            "LayerVerdict", "ObjectFit", "SizeRange", "alignment_fixes", "apply_fixes",
            "contained_fraction", "coverage", "diagnose", "erf_growth", "exact_regions",
            "layer_verdicts", "layers", "object_fit", "plateau_index", "size_range"]


def test_every_former_name_imports_from_the_package():
    """Catches a name lost in the split (commands and tests import them from the package)."""
    missing = [n for n in EXPORTED if not hasattr(diagnostics, n)]
    assert missing == [] and set(EXPORTED) <= set(diagnostics.__all__)


def _reads_private_pass(path: Path) -> bool:
    """Whether the module's code reads an attribute named ``_pass``."""
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(n, ast.Attribute) and n.attr == "_pass" for n in ast.walk(tree))


def test_only_analysis_reads_the_pass_result():
    """Diagnostics and path counts go through Analysis's methods (three functions and paths.py
    read ``analysis._pass`` before)."""
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "analysis.py" and _reads_private_pass(p)]
    assert offenders == []


def test_analysis_transfer_views_match_the_pass():
    """output_transfers / node_transfers / local_edges give what the pass recorded."""
    model, _ = chain((16, 16), [(3, 2, 1, 1), (3, 1, 1, 2)])
    a = rfgraph.analyze(model)
    res = a._pass
    assert list(a.output_transfers()) == list(output_transfers(a.graph, res))
    assert [i for i, _ in a.node_transfers()] == [i for i in res.order if i in res.transfers]
    for idx, tensor, ot in a.output_transfers():
        assert a.transfer(idx).outputs[0] is ot and tensor in a.endpoints
        assert a.local_edges(a.graph.names[idx], ot.edges) == ot.edges  # no gate here
