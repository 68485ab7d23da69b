"""A second session sweeps while the first still runs (real sessions, real systemd containers).

Session A attaches a portable image in a container and waits; session C is killed with SIGKILL
while its own container runs; session B then starts and sweeps C. A must lose nothing: its
container still serves, its reattach and detach work, its loop devices are its own. Afterwards
the host's loop devices are as they were found and no container is left.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pytest_flake.nspawn import ContainerPool
from pytest_flake.nspawn.maintenance import _nspawn_processes

from .host import host_loops
from .inner import inner_session

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"

SESSIONS = textwrap.dedent("""
    import os, signal, time
    from pathlib import Path

    def test_first(systemd_container, portable_service, flake_session, http):
        service = portable_service(systemd_container, "portable")
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
        folder = Path(os.environ["SIGNALS"])
        (folder / "first").write_text(flake_session.id)
        deadline = time.monotonic() + 240
        while not (folder / "go").exists():
            assert time.monotonic() < deadline, "never told to go on"
            time.sleep(0.2)
        http.get(systemd_container.url(3031, "/"), retry_for=5).expect(200, contains="web-server 1.0")
        service.reattach("portable-next")
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.1")
        service.detach()

    def test_killed(systemd_container, portable_service, flake_session, http):
        portable_service(systemd_container, "portable")
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
        (Path(os.environ["SIGNALS"]) / "killed").write_text(flake_session.id)
        os.kill(os.getpid(), signal.SIGKILL)

    def test_sweeper(systemd_container):
        systemd_container.succeed("true")
""")


def _argv(pytester: pytest.Pytester, test: str) -> list[str]:
    return [sys.executable, "-m", "pytest", f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider",
            "-p", "no:randomly", f"test_sessions.py::{test}"]


def test_a_sweep_while_another_session_runs_takes_nothing_of_it(pytester: pytest.Pytester, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                flake_containers: ContainerPool) -> None:
    pytester.makepyfile(test_sessions=SESSIONS)
    signals = tmp_path / "signals"
    signals.mkdir()
    monkeypatch.setenv("SIGNALS", str(signals))
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))
    before = host_loops()
    with inner_session(_argv(pytester, "test_first"), pytester.path) as first:
        first_id = first.wait_for(signals / "first", seconds=180)
        killed = pytester.run(*_argv(pytester, "test_killed"), timeout=240)
        assert killed.ret not in (0, 1), killed.stdout.str()  # died by SIGKILL, not by a failed test
        killed_id = (signals / "killed").read_text()
        assert _nspawn_processes([f"{killed_id}-"]) != []  # the killed session's container runs on
        sweeper = pytester.run(*_argv(pytester, "test_sweeper"), timeout=240)
        sweeper.assert_outcomes(passed=1)
        sweeper.stdout.fnmatch_lines([f"pytest-flake: swept what 1 earlier session left ({killed_id}): *"])
        assert first_id not in sweeper.stdout.str()  # the live session is nobody's leftover
        assert _nspawn_processes([f"{killed_id}-"]) == []
        assert _nspawn_processes([f"{first_id}-"]) != []  # ...and its container still runs
        (signals / "go").write_text("")
        out = first.finish(timeout=240)
        returncode = first.process.returncode
    assert returncode == 0, out
    assert "1 passed" in out, out
    assert _nspawn_processes([f"{first_id}-"]) == []
    assert host_loops() == before
