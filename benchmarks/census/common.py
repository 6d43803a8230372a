"""Shared bits of the census: where models and results live, and the manifest of collected models.

Every collector writes its ONNX files under the cache folder (never into git) and one JSON entry
per model (or per skip, with the reason) into ``CACHE/manifest/<source>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("RFGRAPH_CENSUS_CACHE", Path.home() / ".cache" / "rfgraph-census"))


@dataclass
class Entry:
    """One collected model (or one skipped, with ``skip`` saying why)."""

    name: str
    source: str  # torchvision-ts/-dynamo, timm-ts/-dynamo, transformers-ts, keras, keras-hub, paddle, jax, pypi
    path: str = ""  # the .onnx file, absolute
    origin: str = ""  # how to get it again: constructor, or package==version:path-in-wheel
    input_shape: str = ""  # --input-shape value ("" when the file fixes every size)
    input: str = ""  # --input value
    layout: str = ""  # --layout value, and why in ``note``
    fill: list[str] = field(default_factory=list)  # --fill values
    note: str = ""
    skip: str = ""
    export_s: float = 0.0


def manifest_path(cache: Path, source: str) -> Path:
    return cache / "manifest" / f"{source}.json"


def write_manifest(cache: Path, source: str, entries: list[Entry]) -> None:
    """Write (replace) one source's manifest."""
    path = manifest_path(cache, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(e) for e in entries], indent=1))


def record(cache: Path, entry: Entry) -> None:
    """Add or replace one entry in its source's manifest."""
    path = manifest_path(cache, entry.source)
    old = [Entry(**e) for e in json.loads(path.read_text())] if path.exists() else []
    write_manifest(cache, entry.source, [e for e in old if e.name != entry.name] + [entry])


def read_manifests(cache: Path) -> list[Entry]:
    """Every entry of every source, in file-name order."""
    entries: list[Entry] = []
    for path in sorted((cache / "manifest").glob("*.json")):
        entries += [Entry(**e) for e in json.loads(path.read_text())]
    return entries


def model_entry(cache: Path, source: str, name: str, origin: str, note: str) -> tuple[Entry, Path]:
    """The entry of model ``name`` of ``source`` and the path of its ONNX file in the cache."""
    out = cache / "models" / source / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    return Entry(name=name, source=source, path=str(out), origin=origin, note=note), out


def export_in_subprocess(entry: Entry, out: Path, args: list[str], limit: float, what: str,
                         env: dict[str, str] | None = None, tmp_suffix: str = ".tmp") -> Entry:
    """Run ``python -c ARGS...`` writing ``out`` + ``tmp_suffix``; renamed onto ``out`` on success,
    removed otherwise, where a failure or a timeout becomes the entry's skip reason (and its time is
    kept).  A file already there is kept (the entry as it is: collected by an earlier run)."""
    if out.exists():
        return entry
    tmp = Path(str(out) + tmp_suffix)
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=limit,
                              env=env, check=False)
        said = proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"]  # paddle: stdout
        ok, why = proc.returncode == 0, said[-1][:200]
    except subprocess.TimeoutExpired:
        ok, why = False, f"{what} took more than {limit:.0f} s"
    entry.export_s = round(time.time() - start, 1)
    if ok:
        tmp.rename(out)
    else:
        tmp.unlink(missing_ok=True)
        entry.skip = f"{what} failed: {why}"
    return entry


def collector_arguments(doc: str | None, limit: float) -> argparse.ArgumentParser:
    """A collector's command line: --cache, --only NAME..., --limit (seconds per export)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--limit", type=float, default=limit, help="seconds per export")
    return parser


def export_all(args: argparse.Namespace, models: Mapping[str, Any], export: Callable[..., Entry]) -> None:
    """``export(cache, name, *spec, limit)`` for each selected model; its entry recorded (the
    manifest is rewritten after every export) and printed."""
    for name, spec in models.items():
        if not args.only or name in args.only:
            entry = export(args.cache, name, *spec, args.limit)
            record(args.cache, entry)
            print(entry.source, entry.name, entry.skip or "ok", entry.export_s, flush=True)
