"""Argument errors are one line naming the command and its --help (issue 15 §5); a negative
index is read as a value, not an option, and refused with the tensor's units.

Failed before: argparse printed the whole usage (7-16 lines) before the error, and
``--index -1,-1`` ended in "expected one argument".
"""

from __future__ import annotations

import pytest

from rfgraph.cli import main


@pytest.mark.parametrize("argv,words", [
    (["analyze"], ("rfgraph analyze: error:", "model", "rfgraph analyze --help")),
    (["analyze", "zoo:luo_conv_random_5", "--format", "yaml"], ("invalid choice", "--format")),
    (["erf", "zoo:luo_conv_random_5", "--runs", "many"], ("--runs", "invalid int")),
    (["nosuchcommand"], ("rfgraph: error:", "rfgraph --help")),
    # refused before the model is read (was after the whole analysis: 39 s on a SwinV2)
    (["boxes", "no_such_model.onnx", "--output", "y"], ("--index", "--all", "rfgraph boxes --help")),
])
def test_argument_error_is_one_line(argv: list[str], words: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]


def test_a_malformed_index_is_refused_before_the_model_is_read(capsys: pytest.CaptureFixture) -> None:
    assert main(["boxes", "no_such_model.onnx", "--output", "y", "--index", "3;4"]) == 2
    err = capsys.readouterr().err
    assert "expected integers like 3,4" in err and "no_such_model" not in err


def test_negative_index_is_a_value_refused_with_the_units(capsys: pytest.CaptureFixture) -> None:
    assert main(["boxes", "zoo:luo_conv_random_5", "--output", "output", "--index", "-1,-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(-1, -1)" in err[0] and "29, 29" in err[0], err
