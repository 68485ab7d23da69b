"""The Docker daemon killed mid-test, then restarted (a private dockerd of this test's own, for real).

The daemon is killed with SIGKILL while the inner test's container runs; the inner test's next
call into the container fails at once, in one line naming the daemon. The container could not be
removed then: the session leaves its registration, and the next session, once the daemon is back,
sweeps the container (its header says so) and passes. Nothing of the private daemon is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .host import processes_with
from .inner import inner_session

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("nix")]

INNER = textwrap.dedent("""
    import os, time
    from pathlib import Path

    def test_daemon_dies(docker_container, flake_session):
        container = docker_container("docker")
        signals = Path(os.environ["SIGNALS"])
        (signals / "up").write_text(flake_session.id)
        deadline = time.monotonic() + 120
        while not (signals / "killed").exists():
            assert time.monotonic() < deadline, "never told the daemon was killed"
            time.sleep(0.1)
        container.host.run("true")

    def test_next(docker_container):
        docker_container("docker").host.check_output("true")
""")


class PrivateDockerd:
    """A dockerd with its own socket, data and exec roots, in a network namespace of its own, with no network."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.url = f"unix://{base}/docker.sock"
        self.pidfile = base / "dockerd.pid"

    def start(self) -> None:
        with open(self.base / "dockerd.log", "ab") as log:
            # in a network namespace of its own: with --bridge=none dockerd deletes the bridge docker0 of
            # whatever namespace it runs in, and the host's belongs to the machine's own daemon
            subprocess.Popen(["unshare", "--net", "dockerd", "--host", self.url, "--data-root", str(self.base / "data"),
                              "--exec-root", str(self.base / "exec"), "--pidfile", str(self.pidfile),
                              "--storage-driver", "overlay2", "--iptables=false", "--ip-masq=false",
                              "--bridge=none"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.monotonic() + 120
        while subprocess.run(["docker", "--host", self.url, "version"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, (self.base / "dockerd.log").read_text()[:3000]
            time.sleep(0.5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pidfile.read_text()), sig)

    def containers(self, session: str) -> list[str]:
        out = subprocess.run(["docker", "--host", self.url, "ps", "-aq", "--filter",
                              f"label=pytest-flake.session={session}"], capture_output=True, text=True, check=True)
        return out.stdout.split()

    def processes(self) -> list[int]:
        """Every process of this daemon (dockerd, its containerd, shims): their command lines name its folder."""
        return processes_with(str(self.base))

    def stop_the_rest(self) -> None:
        """SIGKILL what the killed daemon left running (its containerd, the shims), as systemd ends a unit's cgroup."""
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        # a killed containerd may stay a zombie (its new parent may never reap it): a pid file naming it
        # makes the new dockerd wait for a containerd that is not there
        (self.base / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def remove(self) -> None:
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.3)
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.base}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.base)], check=False)


@pytest.fixture
def dockerd() -> Iterator[PrivateDockerd]:
    daemon = PrivateDockerd(Path(tempfile.mkdtemp(prefix="pf-dk-")))  # short: a socket path has ~100 bytes
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.remove()
    assert not daemon.processes()


def _bridge_index() -> str | None:
    try:
        return Path("/sys/class/net/docker0/ifindex").read_text().strip()
    except OSError:
        return None


@pytest.fixture
def host_bridge() -> Iterator[str | None]:
    """The host's docker0 (the machine's own daemon's): the private daemon must leave it as it was."""
    before = _bridge_index()
    yield before
    assert _bridge_index() == before


def test_a_daemon_killed_mid_test_fails_it_in_one_line_and_is_swept_later(
        pytester: pytest.Pytester, host_bridge: str | None, dockerd: PrivateDockerd, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    pytester.makepyfile(test_inner=INNER)
    signals = tmp_path / "signals"
    signals.mkdir()
    monkeypatch.setenv("SIGNALS", str(signals))
    monkeypatch.setenv("DOCKER_HOST", dockerd.url)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    argv = [sys.executable, "-m", "pytest", f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider"]
    with inner_session([*argv, "test_inner.py::test_daemon_dies"], pytester.path) as inner:
        session = inner.wait_for(signals / "up")
        dockerd.kill()
        (signals / "killed").write_text("")
        out = inner.finish()
    assert "1 failed" in out, out
    line = next(line for line in out.splitlines() if line.startswith("DockerError: "))
    assert line.startswith(f"DockerError: container {session}-web-server-1: 'true': the Docker daemon at "
                           f"{dockerd.url} stopped answering (Connection refused)"), line
    assert "urllib3" not in out and "Traceback" not in out, out
    dockerd.stop_the_rest()  # what a service manager does before it starts a killed daemon again
    dockerd.start()  # back: the container is still there, stopped, labelled with the failed session
    assert dockerd.containers(session) != []
    again = pytester.runpytest_subprocess(f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider",
                                          "test_inner.py::test_next", timeout=240)
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([f"pytest-flake: swept what 1 earlier session left ({session}): "
                                "docker: 1 container removed*"])
    assert dockerd.containers(session) == []
