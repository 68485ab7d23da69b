"""pytest-flake's own suite: under CI, missing infrastructure fails the run, never skips it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _libvirt_answers() -> bool:
    for path in ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock"):
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(path)
                    return True
                except OSError:
                    continue
    return False


@pytest.fixture
def nix() -> None:
    """For tests that need nix: skip without it, except under CI, where a missing nix fails."""
    if shutil.which("nix"):
        return
    message = "nix is not on PATH (scripts/setup installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI a run that would skip every integration test is a failure: check first."""
    if not os.environ.get("CI") or session.config.getoption("collectonly"):
        return
    missing = []
    if shutil.which("nix") is None:
        missing.append("nix (apt-get install nix-bin; scripts/setup does it)")
    if not _docker_answers():
        missing.append("a Docker daemon (scripts/setup starts a private one)")
    if not _libvirt_answers():
        missing.append("libvirtd (scripts/setup starts it)")
    if missing:
        pytest.exit("CI needs real infrastructure, missing: " + "; ".join(missing), returncode=3)
