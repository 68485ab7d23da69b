"""Fixtures of the pytester tests: a clean environment, the tiny flake, a PATH without nix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_flake.config import OPTIONS
from tests.plugin.flake_helpers import write_flake


@pytest.fixture(autouse=True)
def clean_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs must not see the outer run's pytest-flake settings (runs after pytester's own set-up)."""
    for opt in OPTIONS:
        if opt.env:
            monkeypatch.delenv(opt.env, raising=False)
    # pytester restores sys.modules after every inner run, so a heavy third-party plugin
    # (hypothesis) would be imported again each time: keep it out of the inner runs.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")


@pytest.fixture
def tiny_flake(pytester: pytest.Pytester, nix: None) -> Path:
    """The tiny flake in ``./tiny`` of pytester's directory."""
    return write_flake(pytester.path / "tiny")


@pytest.fixture
def no_nix_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH without nix (an empty directory)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty
