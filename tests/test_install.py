"""One install, every command: ``pip install .`` with no extras, into a fresh virtual environment
that sees none of this machine's packages, then every command once on a bundled model.

Failed before (issue 17): ``rfgraph experiments`` ended every experiment in
``ModuleNotFoundError: matplotlib``, ``rfgraph report`` printed "internal error (No module named
'markupsafe')", and a command whose module failed to import vanished from the CLI without a word.
What stays optional (torch for ``from_torch``) fails with one line naming the install command.
Needs PyPI (the venv installs the dependencies); offline it skips, unless RFGRAPH_REQUIRE_NETWORK.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from tests.pip_install import run_pip

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zoo:luo_conv_random_5"  # a 5-layer conv stack: every command runs in seconds


@pytest.fixture(scope="module")
def plain_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with rfgraph installed from this checkout, no extras; its python."""
    where = tmp_path_factory.mktemp("plain_install")
    venv.create(where / "venv", with_pip=True, system_site_packages=False)
    python = where / "venv" / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)]
    run_pip(cmd, "rfgraph into a fresh venv", cwd=where)
    return python


def run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m rfgraph ARGS`` in the plain venv, outside the checkout (so it imports the
    installed copy, not this tree)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RFGRAPH_DEBUG")}
    return subprocess.run([str(python), "-m", "rfgraph", "-q", *args], capture_output=True, text=True,
                          timeout=600, check=False, cwd=cwd, env=env)


COMMANDS = {
    "analyze": (["analyze", MODEL], None),
    "boxes": (["boxes", MODEL, "--output", "output", "--index", "4,4"], None),
    "erf": (["erf", MODEL, "--runs", "2", "--png", "erf.png", "--npy", "erf.npy"], "erf.png"),
    "show": (["show", MODEL, "--image", "photo.png", "--output", "output", "--index", "4,4",
              "-o", "overlay.png"], "overlay.png"),
    "report": (["report", MODEL, "-o", "report.html"], "report.html"),
    "diagnose": (["diagnose", MODEL], None),
    "table": (["table", "--models", "alexnet_v2"], None),
    "experiments": (["experiments", "uniform-random-relu", "--quick", "--out", "exp"], "exp/report.md"),
}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_after_a_plain_install(name: str, plain_env: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    args, written = COMMANDS[name]
    proc = run(plain_env, args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    if written:
        assert (tmp_path / written).stat().st_size > 0


@pytest.mark.network
@pytest.mark.slow
def test_optional_framework_missing_is_one_line(plain_env: Path, tmp_path: Path) -> None:
    """No torch in the plain venv: from_torch says how to install it, in one line."""
    code = ("import rfgraph\ntry:\n    rfgraph.from_torch(None, None)\nexcept rfgraph.RFGraphError as e:\n"
            "    print('ERR', e)\n")
    proc = subprocess.run([str(plain_env), "-c", code], capture_output=True, text=True, timeout=300,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("ERR") and "pip install" in line and "torch" in line, line
    assert sys.executable not in line


def test_command_with_missing_dependency_stays_listed_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A broken install (jinja2 gone): `rfgraph report` is still a command and prints one line
    with the install command (it vanished from the CLI before: 'invalid choice')."""
    import importlib

    from rfgraph import cli

    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name == "rfgraph.commands.report":
            raise ModuleNotFoundError("No module named 'jinja2'", name="jinja2")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    assert cli.main(["report", "model.onnx", "-o", "r.html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install jinja2" in err[0] and "'report'" in err[0], err
