"""Output files: checked before the work starts, written atomically, never over an input.

Conventions (what users of file-writing tools expect, as with ``cp``, ``convert`` or ``gcc -o``):
a path the user names explicitly may replace an existing file of the same kind; a default name
rfgraph makes up (``model.html`` next to the current directory) never replaces an existing file
unless ``--force``; no output ever replaces one of the command's inputs or a file of another kind
(``report m.onnx -o m.onnx``); every write goes to a temporary file in the same folder, renamed
into place when complete, so a failed or interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import RFGraphError


class OutputError(RFGraphError):
    """An output path that cannot or must not be written (checked before the work starts)."""


def check_output(path: str | os.PathLike[str], *, suffix: str, inputs: Iterable[object] = (),
                 explicit: bool = True, force: bool = False, what: str = "output") -> Path:
    """The path the output will be written to, after every check that can fail early: ``suffix``
    added when missing (the real path is returned, to be printed), not a folder, not an input, its
    folder present and writable, and an existing file replaced only when allowed."""
    out = Path(os.fspath(path))
    if out.is_dir():
        raise OutputError(f"{what} '{out}' is a folder; give a file name ending in {suffix}")
    if out.suffix.lower() != suffix.lower():
        if out.suffix and out.exists() and not out.is_dir():
            raise OutputError(f"{what} '{out}' is an existing {out.suffix} file; refusing to replace it "
                              f"with a {suffix} file (name it *{suffix})")
        out = out.with_name(out.name + suffix)
    if out.is_dir():
        raise OutputError(f"{what} '{out}' is a folder; give a file name ending in {suffix}")
    _refuse_inputs(out, inputs, what)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} '{out}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {what} '{out}': folder '{folder}' is not writable")
    if out.exists() and not (explicit or force):
        raise OutputError(f"{what} '{out}' exists; name the output explicitly or add --force to replace it")
    return out


def _refuse_inputs(out: Path, inputs: Iterable[object], what: str) -> None:
    """An output that is one of the inputs (same file, by any path) would destroy it."""
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)) or str(item).startswith("zoo:"):
            continue
        source = Path(os.fspath(item))
        if not source.exists() or not out.exists():
            same = source.resolve() == out.resolve()
        else:
            same = os.path.samefile(source, out)
        if same:
            raise OutputError(f"{what} '{out}' is the input '{source}'; refusing to overwrite it")


@contextlib.contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """A temporary path in ``out``'s folder to write to; renamed onto ``out`` when the block ends
    without error, removed otherwise (the previous ``out``, if any, is never half-written)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomically(out: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename onto ``out``; returns ``out`` (the path to report)."""
    try:
        with atomic_path(out) as tmp:
            write(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write '{out}': {exc.strerror or exc}") from None
    return out


def check_folder(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """A folder outputs will be written into (created later when missing): not an existing file,
    and its nearest existing ancestor writable."""
    out = Path(os.fspath(path))
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} '{out}' is an existing file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{what} '{out}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise OutputError(f"{what} '{out}': folder '{existing}' is not writable")
    return out


def write_text(out: Path, text: str) -> Path:
    """Text written atomically (UTF-8)."""
    return write_atomically(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
