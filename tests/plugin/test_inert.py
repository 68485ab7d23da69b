"""Installed but unused, the plugin costs nothing and touches nothing (issue 14, item 1)."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSING = "def test_ok():\n    assert 1 + 1 == 2\n"
FAKE_TOOL = """#!{python}
import os, sys
with open(os.environ["FAKE_TOOL_LOG"], "a") as log:
    log.write(os.path.basename(sys.argv[0]) + " " + " ".join(sys.argv[1:]) + "\\n")
sys.exit(1)
"""


class RecordingSocket:
    """A Unix socket that records every connection made to it (and answers nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """PATH with fake nix/docker/virsh that record calls; Docker and libvirt sockets that record connections."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("nix", "nix-store", "docker", "virsh", "qemu-img", "podman"):
        path = bindir / tool
        path.write_text(FAKE_TOOL.format(python=sys.executable))
        path.chmod(0o755)
    docker = RecordingSocket(tmp_path / "docker.sock")
    libvirt = RecordingSocket(tmp_path / "libvirt.sock")
    state = tmp_path / "state"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TOOL_LOG", str(calls))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{docker.path}")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", f"qemu+unix:///system?socket={libvirt.path}")
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    yield {"calls": calls, "docker": docker, "libvirt": libvirt, "state": state}
    docker.close()
    libvirt.close()


def _calls(watched: dict[str, object]) -> str:
    path = watched["calls"]
    assert isinstance(path, Path)
    return path.read_text() if path.exists() else ""


def test_unused_plugin_touches_nothing(pytester: pytest.Pytester, watched: dict[str, object]) -> None:
    pytester.makepyfile(PASSING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    state = watched["state"]
    assert isinstance(state, Path)
    assert not state.exists(), f"session state was created: {list(state.rglob('*'))}"
    assert _calls(watched) == "", "a tool was run"
    docker, libvirt = watched["docker"], watched["libvirt"]
    assert isinstance(docker, RecordingSocket) and isinstance(libvirt, RecordingSocket)
    assert docker.connections == 0
    assert libvirt.connections == 0
    assert not any(line.startswith("pytest-flake") for line in result.outlines), result.outlines


def test_the_watch_sees_a_run_that_uses_the_plugin(pytester: pytest.Pytester, watched: dict[str, object]) -> None:
    """The same watch catches a run that does use the plugin: the fake nix is called, a session is made."""
    pytester.makepyfile("""
        def test_uses(flake_session, flake):  # flake: a test that uses nix, so the header runs it
            assert flake_session.dir.is_dir()
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert any(line.startswith("nix ") and line.endswith("--version") for line in _calls(watched).splitlines())
    result.stdout.fnmatch_lines(["pytest-flake: nix: 'nix --version' failed with exit code 1*"])
    state = watched["state"]
    assert isinstance(state, Path) and (state / "sessions").is_dir()
    assert list((state / "sessions").iterdir()) == []  # removed at the end of the session


def test_bad_env_value_fails_only_runs_that_use_the_plugin(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_FLAKE_TIMEOUT", "abc")
    monkeypatch.setenv("PYTEST_FLAKE_VM_MEMORY", "lots")
    pytester.makepyfile(test_plain=PASSING)
    pytester.runpytest("test_plain.py").assert_outcomes(passed=1)
    assert pytester.runpytest("--help").ret == pytest.ExitCode.OK

    pytester.makepyfile(test_uses="def test_uses(flake_settings):\n    pass\n")
    result = pytester.runpytest("test_uses.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-flake: $PYTEST_FLAKE_VM_MEMORY='lots' is not a number*"])
    result = pytester.runpytest("test_plain.py", "test_uses.py", "-k", "plain")
    result.assert_outcomes(passed=1, deselected=1)


def test_sweep_runs_once_when_a_fixture_is_first_used(pytester: pytest.Pytester, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    dead = state / "sessions" / "pf-deadbeef"
    dead.mkdir(parents=True)
    (dead / "pid").write_text("999999999 1")
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    pytester.makepyfile(test_plain=PASSING)
    pytester.runpytest("test_plain.py").assert_outcomes(passed=1)
    assert dead.exists()  # an unused plugin sweeps nothing

    pytester.makepyfile(test_uses="""
        def test_one(flake_session):
            pass

        def test_two(flake_session):
            pass
    """)
    result = pytester.runpytest("test_uses.py", "-o", "log_cli=true", "-o", "log_cli_level=WARNING")
    result.assert_outcomes(passed=2)
    assert not dead.exists()
    swept = "sweeping 1 session(s) that did not end or left resources: pf-deadbeef"
    assert "\n".join(result.outlines).count(swept) == 1
