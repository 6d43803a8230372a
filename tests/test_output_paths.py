"""Every command that writes a file checks the path before the work, writes atomically and names
the file it wrote (issue 15 §3, and the output-path cases of §4).

Failed before: ``report m.onnx -o m.onnx`` replaced the model with HTML; ``show --image p.png -o
p.png`` overwrote the photo; ``report notes.onnx`` replaced an existing notes.html; ``erf --npy x``
wrote x.npy silently and ``erf --png DIR`` wrote DIR.png; ``erf --npy a.npy --png /bad/x.png``
wrote the npy and then failed with exit 3; a write cut by a file-size limit left a truncated page;
``experiments --out FILE`` or a read-only folder ended in exit 3.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rfgraph.cli import main
from tests.test_show import linear_conv

MODEL = "zoo:luo_conv_random_5"


@pytest.fixture()
def no_erf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ERF measurement fails the test: the path checks must come before the work."""
    import rfgraph.erf

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ERF was computed before the output path was checked")

    monkeypatch.setattr(rfgraph.erf, "compute_erf", refuse)


def _one_line(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def test_report_never_replaces_its_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = linear_conv(tmp_path / "m.onnx")
    before = model.read_bytes()
    assert main(["report", str(model), "--no-erf", "-o", str(model)]) == 2
    _one_line(capsys, "m.onnx")
    assert model.read_bytes() == before


def test_show_never_overwrites_the_photo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    before = photo.read_bytes()
    assert main(["show", MODEL, "--output", "output", "--image", str(photo), "--no-erf",
                 "-o", str(photo)]) == 2
    _one_line(capsys, "is the input")
    assert photo.read_bytes() == before


def test_report_default_name_needs_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    model = linear_conv(tmp_path / "notes.onnx")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.html").write_text("my notes")
    assert main(["report", str(model), "--no-erf"]) == 2
    _one_line(capsys, "notes.html", "--force")
    assert (tmp_path / "notes.html").read_text() == "my notes"
    assert main(["report", str(model), "--no-erf", "--force"]) == 0
    assert "<html" in (tmp_path / "notes.html").read_text().lower()


def test_erf_npy_names_the_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "x"
    assert main(["erf", MODEL, "--runs", "1", "--npy", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}.npy" in err, err
    assert np.load(f"{out}.npy").ndim == 2
    assert not out.exists()


def test_erf_png_into_a_folder_is_refused_before_the_work(tmp_path: Path, no_erf: None,
                                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").mkdir()
    assert main(["erf", MODEL, "--png", str(tmp_path / "out")]) == 2
    _one_line(capsys, "is a folder")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("bad", ["missing/x.png", "ro/x.png"])
def test_erf_bad_png_folder_writes_nothing(tmp_path: Path, bad: str, no_erf: None,
                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    if bad.startswith("ro") and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("running as a user who can write anywhere (root)")
    npy = tmp_path / "a.npy"
    assert main(["erf", MODEL, "--npy", str(npy), "--png", str(tmp_path / bad)]) == 2
    _one_line(capsys, "--png")
    assert not npy.exists()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_cut_write_keeps_the_previous_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("the previous good report")
    proc = subprocess.run([sys.executable, "-m", "rfgraph", "report", MODEL, "--no-erf", "-o", str(out)],
                          check=False, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert out.read_text() == "the previous good report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_experiments_out_must_be_a_writable_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    afile = tmp_path / "d"
    afile.write_text("keep")
    assert main(["experiments", "growth", "--quick", "--out", str(afile)]) == 2
    _one_line(capsys, "is an existing file")
    assert afile.read_text() == "keep"
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):
        assert main(["experiments", "growth", "--quick", "--out", str(locked / "exp")]) == 2
        _one_line(capsys, "not writable")


def test_experiments_report_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rfgraph.experiments import report as exp_report
    from rfgraph.experiments.base import Context

    (tmp_path / "report.md").write_text("previous report")
    ctx = Context(tmp_path, quick=True, progress=False)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(27, "File too large")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(Exception, match="File too large"):
        exp_report.write_report(ctx, [])
    assert (tmp_path / "report.md").read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
