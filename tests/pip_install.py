"""Packages the tests install at run time (models shipped in wheels, torchvision, Dask): once per
session into pytest's cache, never vendored; offline the test skips with the reason, unless
RFGRAPH_REQUIRE_NETWORK is set (CI), where it fails."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest


def run_pip(cmd: Sequence[str], what: str, timeout: int = 900, cwd: Path | None = None) -> None:
    """Run a pip command; skip (or fail under RFGRAPH_REQUIRE_NETWORK) when it cannot install."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(cmd, 1, "", f"pip timed out after {timeout} s")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        if os.environ.get("RFGRAPH_REQUIRE_NETWORK"):
            pytest.fail(f"cannot install {what}: {why}")
        pytest.skip(f"{what} not installable (offline?): {why}")


def install_once(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str,
                 packages: Sequence[str], no_deps: bool = True, timeout: int = 900) -> Path:
    """``pip install --target`` of ``packages`` into pytest's cache folder ``name`` (a temporary
    folder when the cache plugin is off), once: a stamp file names what was installed."""
    cache = getattr(request.config, "cache", None)
    target = Path(cache.mkdir(name)) if cache else tmp_path_factory.mktemp(name)
    listed = "\n".join(sorted(packages))  # the stamp names a digest: a long list overflows a file name
    stamp = target / f"installed-{hashlib.sha256(listed.encode()).hexdigest()[:16]}"
    if stamp.exists():
        return target
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *(["--no-deps"] if no_deps else []), "--target", str(target), "--upgrade", *packages]
    run_pip(cmd, " ".join(packages), timeout)
    stamp.touch()
    return target
