"""Golden-file tests of the printed CLI output: the exact tables a user reads.

The numbers in these files are proven by the oracle tests (closed forms, brute force, published
tables); these tests pin the *presentation* (columns, notes, merge lines, number formats), so a
change to it shows up as a reviewed diff.  Regenerate on purpose with
``python -m pytest tests/test_golden.py --update-golden`` and read the diff before committing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rfgraph.cli import main

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    # every tensor of a deep residual net, default table
    "analyze_resnet_v1_50_all": ["analyze", "zoo:resnet_v1_50", "--all", "-q"],
    # misaligned merges (U-Net skip connections), markdown
    "analyze_torch_unet_markdown": ["analyze", "zoo:torch_unet", "--format", "markdown", "-q"],
    # global fields (attention MatMul) and where they come from
    "analyze_vit_small": ["analyze", "zoo:vit_small", "-q"],
    # the layer view: GELU and LayerNorm ops folded into the layers before them
    "analyze_vit_small_layers": ["analyze", "zoo:vit_small", "--layers", "-q"],
    # the modern-network table without a reference (the reference adds a verdict column)
    "table_no_reference": ["table", "--no-reference", "-q"],
    # input box and centre of one unit
    "boxes_resnet_v1_50": ["boxes", "zoo:resnet_v1_50", "--output", "resnet_v1_50/block4", "--index", "3,3", "-q"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_output_matches_golden_file(name: str, capsys: pytest.CaptureFixture[str],
                                        request: pytest.FixtureRequest) -> None:
    """The command's stdout equals tests/golden/NAME.txt byte for byte, and it exits 0."""
    assert main(CASES[name]) == 0
    out = capsys.readouterr().out
    path = GOLDEN / f"{name}.txt"
    if request.config.getoption("--update-golden"):
        path.write_text(out)
    assert path.exists(), f"no golden file {path}; create it with --update-golden"
    assert out == path.read_text(), f"output differs from {path}; if intended, regenerate with --update-golden"


def test_golden_files_all_have_a_case() -> None:
    """No stale golden file is left behind when a case is removed."""
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(CASES)
