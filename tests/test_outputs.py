"""rfgraph.outputs: an output path is checked before the work starts and written atomically.

Cases (issue 15 §3): the output is an input (by the same or another path, through a symlink);
an existing file of another kind; a missing or read-only folder; a folder as the output; a made-up
default name over an existing file (refused without --force); the suffix added and the real path
returned; a failed write leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rfgraph.outputs import OutputError, check_output, write_atomically, write_text


def test_suffix_added_and_real_path_returned(tmp_path: Path) -> None:
    assert check_output(tmp_path / "erf", suffix=".npy") == tmp_path / "erf.npy"
    assert check_output(tmp_path / "erf.NPY", suffix=".npy") == tmp_path / "erf.NPY"


def test_never_over_an_input(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(photo)
    for out in (photo, tmp_path / "link.png", tmp_path / "." / "p.png"):
        with pytest.raises(OutputError, match="is the input"):
            check_output(out, suffix=".png", inputs=[photo])


def test_never_over_another_kind_of_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    with pytest.raises(OutputError, match=r"existing \.onnx file"):
        check_output(model, suffix=".html")
    assert model.read_bytes() == b"onnx"


def test_folders_checked_before_the_work(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "missing" / "x.png", suffix=".png")
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, suffix="")


def test_read_only_folder_refused(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(OutputError, match="not writable"):
            check_output(locked / "x.png", suffix=".png")
    finally:
        locked.chmod(0o700)


def test_default_name_never_replaces_an_existing_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.html"
    notes.write_text("mine")
    with pytest.raises(OutputError, match="--force"):
        check_output(notes, suffix=".html", explicit=False)
    assert check_output(notes, suffix=".html", explicit=False, force=True) == notes
    assert check_output(notes, suffix=".html") == notes  # named explicitly: replaced, as cp does


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_text(out, "good report")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half a rep")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(out, half_then_fail)
    assert out.read_text() == "good report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
