"""Whole sessions with systemd containers (pytester, real systemd-nspawn): the host's loop devices,
a session killed with SIGKILL and swept, the evidence of a failed test, the service fixture on nspawn.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_flake.nspawn import ContainerPool
from pytest_flake.nspawn.maintenance import _nspawn_processes
from tests.faults.host import host_loops

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"


INNER = textwrap.dedent(
    """
    import json, os, signal
    from pathlib import Path

    def test_inner(systemd_container, portable_service, flake_session, http):
        service = portable_service(systemd_container, "portable")
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
        service.reattach("portable-next")  # the container's systemd removes the loop device of 1.0
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.1")
        loops = sorted(p.name for p in Path("/dev").iterdir() if p.name.startswith("loop"))
        Path(os.environ["REPORT"]).write_text(json.dumps({
            "session": flake_session.id, "container": systemd_container.name, "loops": loops}))
        if os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        service.detach()
    """
)


@pytest.fixture
def inner(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          flake_containers: ContainerPool) -> Callable[..., tuple[pytest.RunResult, dict[str, object]]]:
    """Run INNER in a new session with its own state, on this session's (already built) tree."""
    pytester.makepyfile(test_inner=INNER)
    state = tmp_path / "state"
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))

    def run(kill: bool = False) -> tuple[pytest.RunResult, dict[str, object]]:
        report = tmp_path / "report.json"
        report.unlink(missing_ok=True)
        monkeypatch.setenv("REPORT", str(report))
        if kill:
            monkeypatch.setenv("KILL", "1")
        else:
            monkeypatch.delenv("KILL", raising=False)
        result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", "-p", "no:randomly")
        return result, json.loads(report.read_text())

    return run


def test_host_loop_devices_are_left_as_found_after_a_session(inner) -> None:  # type: ignore[no-untyped-def]
    before = host_loops()
    result, report = inner()
    result.assert_outcomes(passed=1)
    assert report["loops"] != before, "the container changed no loop device: this test would prove nothing"
    assert host_loops() == before
    assert _nspawn_processes([f"{report['session']}-"]) == []


def test_host_loop_devices_come_back_after_a_killed_session_is_swept(inner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = host_loops()
    killed, report = inner(kill=True)
    session = str(report["session"])
    try:  # whatever fails here, the next session below still sweeps what the killed one left
        assert killed.ret != 0
        assert report["loops"] != before, "the container changed no loop device: this test would prove nothing"
        # SIGKILL leaves the container running and the host's loop devices changed
        assert _nspawn_processes([f"{session}-"]) != []
        assert (tmp_path / "state" / "sessions" / session / "nspawn" / "loops.json").is_file()
    finally:
        after, report2 = inner()  # the next session sweeps the killed one first
    after.assert_outcomes(passed=1)
    # the next session's header says what the killed one left and what was done about it
    after.stdout.fnmatch_lines([f"pytest-flake: swept what 1 earlier session left ({session}): *"
                                "nspawn: 1 container stopped, 1 overlay root unmounted and removed, *loop device* *"])
    assert _nspawn_processes([f"{session}-"]) == []
    assert not (tmp_path / "state" / "sessions" / session).exists()
    assert host_loops() == before


FAILING = textwrap.dedent(
    """
    def test_fails(systemd_container, portable_service, http):
        portable_service(systemd_container, "portable")
        http.get(systemd_container.url(3031, "/cgi-bin/info"), retry_for=30).expect(200, json={"version": "9.9"})
    """
)


def test_failed_test_report_carries_journal_and_unit_status(pytester: pytest.Pytester, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            flake_containers: ContainerPool) -> None:
    pytester.makepyfile(test_failing=FAILING)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*journal of container nspawn://pf-*",
        "*Startup finished in*",
        "*units of container nspawn://pf-*",
        "*web-server.service - web-server 1.0 (portable)*",
        "*Active: active (running)*",
    ])


SERVICE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.flake_service(3031)
    def test_service(service, http):
        info = service.url("/cgi-bin/info")
        http.get(info, retry_for=30).expect(200, json={"version": "1.0", "portable": "web-server_1.0.raw"})
        assert service.vm.name.split("-")[-2] == "nspawn", service.vm.name
        service.upgrade("portable-next")
        http.get(info, retry_for=30).expect(200, json={"version": "1.1", "portable": "web-server_1.1.raw"})
        assert "web-server 1.1" in service.logs()
    """
)


@pytest.mark.parametrize("image", ["debian", "debian-trixie", "debian-sid"])
def test_service_fixture_portable_target_in_a_container(pytester: pytest.Pytester, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        flake_containers: ContainerPool, image: str) -> None:
    """--flake-portable-host nspawn moves the service fixture's portable target into a systemd container
    (of each release: systemd 252, 257, 262)."""
    pytester.makepyfile(test_service=SERVICE)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree(image).root))
    result = pytester.runpytest_subprocess(f"--flake={REF}", "--flake-portable-host=nspawn",
                                           "--flake-targets=portable", "-p", "no:cacheprovider", "-p", "no:randomly",
                                           "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_service*portable*PASSED*"])
    assert os.environ.get("PYTEST_FLAKE_PORTABLE_HOST") is None  # the option alone did it
