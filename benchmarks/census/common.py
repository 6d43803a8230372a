"""Shared bits of the census: where models and results live, and the manifest of collected models.

Every collector writes its ONNX files under the cache folder (never into git) and one JSON entry
per model (or per skip, with the reason) into ``CACHE/manifest/<source>.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("RFGRAPH_CENSUS_CACHE", Path.home() / ".cache" / "rfgraph-census"))


@dataclass
class Entry:
    """One collected model (or one skipped, with ``skip`` saying why)."""

    name: str
    source: str  # torchvision-ts, torchvision-dynamo, timm-ts, timm-dynamo, keras, pypi
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


def read_manifests(cache: Path) -> list[Entry]:
    """Every entry of every source, in file-name order."""
    entries: list[Entry] = []
    for path in sorted((cache / "manifest").glob("*.json")):
        entries += [Entry(**e) for e in json.loads(path.read_text())]
    return entries
