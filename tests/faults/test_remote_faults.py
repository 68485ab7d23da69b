"""The session's ssh master connection killed while a container runs on another host (for real).

The other host is the suite's network and mount namespace with its own sshd and dockerd
(tests/integration/otherhost.py). The inner test's container runs there; this test kills the
session's ssh master with SIGKILL; the inner test's next call into the container fails at once in
one line that names the ended connection. The container could not be removed then: the next
session sweeps it there (its header says so) and passes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake.session import alive
from tests.integration.otherhost import OtherHost, OtherHostUnavailable, check_tools, other_host
from tests.integration.test_remote_docker import REMOTE_TESTS

from .inner import inner_session

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
pytestmark = [pytest.mark.docker]
MASTERS = REMOTE_TESTS[REMOTE_TESTS.index("def _ssh_masters"):REMOTE_TESTS.index("def test_evidence")]

INNER = f'''
import json, os, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.flake("path:{EXAMPLE}")

{MASTERS}

def test_master_killed(docker_container, flake_session):
    container = docker_container("docker", ports=[3031])
    signals = Path(os.environ["SIGNALS"])
    (signals / "up").write_text(json.dumps({{"session": flake_session.id, "container": container.name,
                                             "masters": _ssh_masters()}}))
    deadline = time.monotonic() + 120
    while not (signals / "killed").exists():
        assert time.monotonic() < deadline, "never told the master was killed"
        time.sleep(0.1)
    container.host.run("true")


def test_next(docker_image):
    assert docker_image("docker").tag == "web-server:1.0"
'''


@pytest.fixture(scope="module")
def oh() -> Iterator[OtherHost]:
    try:
        check_tools()
    except OtherHostUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with other_host(libvirt=False) as host:
        yield host


def test_a_killed_ssh_master_fails_the_test_in_one_line_and_is_swept_later(
        pytester: pytest.Pytester, oh: OtherHost, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    monkeypatch.setenv("DOCKER_HOST", oh.docker_url)
    monkeypatch.setenv("SIGNALS", str(signals))
    test_file = pytester.makepyfile(test_inner=INNER)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:randomly"]
    with inner_session(oh.user_argv([*argv, f"{test_file}::test_master_killed"]), pytester.path) as inner:
        facts = json.loads(inner.wait_for(signals / "up", seconds=600))
        assert facts["masters"], "no ssh master carried the session: this test would prove nothing"
        for pid in facts["masters"]:
            os.kill(pid, signal.SIGKILL)
        (signals / "killed").write_text("")
        out = inner.finish()
    assert "1 failed" in out, out
    line = next(line for line in out.splitlines() if line.startswith("SSHError: "))
    assert line.startswith(f"SSHError: container {facts['container']}: 'true': ssh to pf-otherhost: the master "
                           "connection ended"), line
    assert "Traceback" not in out and "urllib3" not in out, out
    assert facts["container"] in oh.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    again = pytester.run(*oh.user_argv([*argv, f"{test_file}::test_next"]), timeout=600)
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([f"pytest-flake: swept what 1 earlier session left ({facts['session']}): "
                                "*docker: 1 container removed*"])
    assert facts["container"] not in oh.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not any(alive(pid) for pid in facts["masters"])
