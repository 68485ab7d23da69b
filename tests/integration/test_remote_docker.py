"""Docker on another host: user-style docker tests with ``DOCKER_HOST=ssh://pf-otherhost``.

The other host is a network and mount namespace of this machine with its own sshd and dockerd
(tests/integration/otherhost.py). The inner pytest run sees a ``~/.ssh`` that knows it, the way a
user's would; pytest-flake reaches its daemon and the containers' published ports (on that
host's loopback) through ssh. Afterwards: the tunnels are closed, the image is in the other
host's daemon and was never loaded into ours, and no container is left there.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_flake.session import alive

from .otherhost import (
    NETNS_DIR,
    WORK_ROOT,
    OtherHost,
    OtherHostUnavailable,
    check_tools,
    other_host,
    sweep,
    veth_names,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
pytestmark = [pytest.mark.docker]

# the user-style docker tests of this suite, run as they are against the other host, with the tests only
# another host needs after them; the module's flake marker points at the example by path instead
USER_API = Path(__file__).with_name("test_docker_user_api.py")
USER_API_MARK = ("pytestmark = pytest.mark.flake(f\"path:{Path(__file__).resolve().parents[2] / 'examples' / "
                 "'offline'}\")")

REMOTE_TESTS = '''

import json
import os


@pytest.mark.flake_service(3031)
def test_service_upgrade_keeps_its_address(service, http):
    info = service.url("/cgi-bin/info")
    http.get(info, retry_for=30).expect(200, json={"name": "web-server", "version": "1.0"})
    service.upgrade("docker-next")
    assert service.url("/cgi-bin/info") == info  # the same address: the same port there, the same forward here
    http.get(info, retry_for=30).expect(200, json={"version": "1.1"})


def _ssh_masters():
    found = []
    for pid in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")
        except OSError:
            continue
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and argv and argv[0].endswith(b"ssh") and b"ControlMaster=yes" in argv \
                and b"pf-otherhost" in argv:  # this session's own (another run may reach pf-otherhost too)
            found.append(int(pid))
    return found


def test_evidence(docker_image, docker_container, http):
    """What the outer test checks after this run: what ran where, and which tunnel carried it."""
    image = docker_image("docker")
    container = docker_container(image, ports=[3031])
    http.get(container.url(3031)).expect(200, contains="web-server 1.0")
    Path(os.environ["PF_EVIDENCE"]).write_text(json.dumps({
        "image": image.id, "out": str(image.build.out), "container": container.name,
        "port": container.port(3031), "masters": _ssh_masters()}))
'''


def user_tests() -> str:
    """The source of the inner run: test_docker_user_api.py as it is (flake marker by path), then REMOTE_TESTS."""
    source = USER_API.read_text()
    assert source.count(USER_API_MARK) == 1, f"{USER_API.name} no longer has the flake marker this module replaces"
    return source.replace(USER_API_MARK, f'pytestmark = pytest.mark.flake("path:{EXAMPLE}")') + REMOTE_TESTS


KILLED_RUN = '''
import json, os, signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.flake("path:EXAMPLE")

MASTERS


def test_killed_with_a_container_running(docker_container):
    container = docker_container("docker", ports=[3031])
    Path(os.environ["PF_EVIDENCE"]).write_text(json.dumps({
        "container": container.name, "port": container.port(3031), "masters": _ssh_masters()}))
    os.kill(os.getpid(), signal.SIGKILL)
'''

NEXT_RUN = '''
import pytest

pytestmark = pytest.mark.flake("path:EXAMPLE")


def test_next_session(docker_image):
    assert docker_image("docker").tag == "web-server:1.0"
'''


REFUSED_RUN = '''
import pytest

from pytest_flake import DockerError

pytestmark = pytest.mark.flake("path:EXAMPLE")


def test_a_server_that_will_not_forward(docker_image):
    with pytest.raises(DockerError, match="ssh connection works, but /var/run/docker.sock on pf-otherhost does not "
                                          "answer .*AllowStreamLocalForwarding"):
        docker_image("docker")
'''


@pytest.fixture(autouse=True)
def _other_host_possible() -> None:
    try:
        check_tools()
    except OtherHostUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def oh() -> Iterator[OtherHost]:
    check_tools()
    with other_host(libvirt=False) as host:
        yield host


def _cli(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)


Docker = Callable[..., "subprocess.CompletedProcess[str]"]


def _events(docker: Docker, since: float, until: float) -> list[dict[str, Any]]:
    """A daemon's events between two times (``docker events``), as dicts."""
    done = docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format", "{{json .}}")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _made(events: list[dict[str, Any]], name: str) -> bool:
    return any(e.get("Type") == "container" and e.get("Action") == "create"
               and (e.get("Actor") or {}).get("Attributes", {}).get("name") == name for e in events)


def test_user_docker_tests_against_the_other_host(pytester: pytest.Pytester, oh: OtherHost,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    local_url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert oh.docker("images", "-q").stdout.strip() == ""  # a new daemon: whatever it holds afterwards came now
    evidence = pytester.path / "evidence.json"
    monkeypatch.setenv("DOCKER_HOST", oh.docker_url)
    monkeypatch.setenv("PF_EVIDENCE", str(evidence))
    test_file = pytester.makepyfile(test_user=user_tests())
    since = time.time()
    result = pytester.run(*oh.user_argv([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                                         f"--flake=path:{EXAMPLE}", "--flake-targets=docker", "-o",
                                         "log_cli=true", "--log-cli-level=INFO",
                                         str(test_file)]), timeout=900)
    until = time.time() + 1
    result.assert_outcomes(passed=7)  # the 5 tests of test_docker_user_api.py and the 2 of REMOTE_TESTS
    facts = json.loads(evidence.read_text())

    # it ran there, through ssh: the header named the endpoint, a master connection carried it
    result.stdout.fnmatch_lines(["*docker: ssh://pf-otherhost (from $DOCKER_HOST; its /var/run/docker.sock and "
                                 "published ports through an ssh tunnel)*"])
    assert facts["masters"], "no ssh master connection to pf-otherhost ran during the tests"
    # the tunnels are closed: no master of that session is left, the forwarded port listens no more
    for pid in facts["masters"]:
        assert not alive(pid), f"ssh master {pid} outlived the session"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", facts["port"]), timeout=2):
        pass
    # the image is in the other host's daemon (new: nothing was there before), went there through the API
    # (our store path does not exist there); the container ran there, not in our daemon
    assert oh.docker("image", "inspect", "--format", "{{.Id}}", facts["image"]).stdout.strip() == facts["image"]
    assert oh.inside(["test", "-e", facts["out"]]).returncode != 0
    assert Path(facts["out"]).exists()
    remote_events = _events(oh.docker, since, until)
    assert any(e.get("Type") == "image" and e.get("Action") == "load" for e in remote_events)
    assert _made(remote_events, facts["container"])
    local = functools.partial(_cli, ["docker", "--host", local_url])
    assert not _made(_events(local, since, until), facts["container"]), "the local daemon ran the container"
    # no container is left there
    assert oh.docker("ps", "-a", "-q", "--filter", "label=pytest-flake.session").stdout.strip() == ""


def test_a_killed_sessions_tunnels_and_containers_are_swept(pytester: pytest.Pytester, oh: OtherHost,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    evidence = pytester.path / "evidence.json"
    monkeypatch.setenv("DOCKER_HOST", oh.docker_url)
    monkeypatch.setenv("PF_EVIDENCE", str(evidence))
    masters = REMOTE_TESTS[REMOTE_TESTS.index("def _ssh_masters"):REMOTE_TESTS.index("def test_evidence")]
    killed = pytester.makepyfile(test_killed=KILLED_RUN.replace("EXAMPLE", str(EXAMPLE)).replace("MASTERS", masters))
    pytest_argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    result = pytester.run(*oh.user_argv([*pytest_argv, str(killed)]), timeout=600)
    assert result.ret == -9, result.stdout.str()
    facts = json.loads(evidence.read_text())
    # what the killed run left: its ssh master, the forward, and the container on the other host
    assert facts["masters"] and all(alive(pid) for pid in facts["masters"])
    socket.create_connection(("127.0.0.1", facts["port"]), timeout=2).close()
    assert facts["container"] in oh.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()

    after = pytester.makepyfile(test_next=NEXT_RUN.replace("EXAMPLE", str(EXAMPLE)))
    result = pytester.run(*oh.user_argv([*pytest_argv, str(after)]), timeout=600)
    result.assert_outcomes(passed=1)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in facts["masters"]) and time.monotonic() < deadline:
        time.sleep(0.1)  # killed by the sweep; reaped by init
    assert not any(alive(pid) for pid in facts["masters"]), "the next session left the dead one's ssh master"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", facts["port"]), timeout=2):
        pass
    assert facts["container"] not in oh.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_a_tunnel_that_cannot_work_is_an_error_not_a_wait(pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An sshd that forwards nothing (OpenSSH's AllowTcpForwarding covers unix sockets too): a clear error at once.

    (A server that refuses only the container's port cannot be made with OpenSSH; the unit tests cover what
    ssh writes then: tests/unit/test_tunnel.py::test_check_names_what_no_wait_cures.)
    """
    with other_host(libvirt=False, sshd_options=["AllowTcpForwarding no"]) as strict:
        monkeypatch.setenv("DOCKER_HOST", strict.docker_url)
        test_file = pytester.makepyfile(test_refused=REFUSED_RUN.replace("EXAMPLE", str(EXAMPLE)))
        result = pytester.run(*strict.user_argv([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                                                 str(test_file)]), timeout=600)
        result.assert_outcomes(passed=1)
        assert "Received request to connect to path /var/run/docker.sock, but the request was denied" in \
            strict.log("sshd")
    # the end of the block removed it all: namespace, veth, processes, files
    assert not (NETNS_DIR / strict.name).exists() and not strict.work.exists()
    assert subprocess.run(["ip", "link", "show", veth_names(strict.name)[0]], capture_output=True).returncode != 0
    assert strict.supervisor is not None and strict.supervisor.poll() is not None


KILLED_HARNESS = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.integration.otherhost import other_host
with other_host(docker=False, libvirt=False) as host:
    print(host.name, host.pids["sshd"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_other_host_is_removed_by_the_next(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_HARNESS, str(Path(__file__).resolve().parents[2])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    name, sshd = done.stdout.split()
    assert (NETNS_DIR / name).exists() and (WORK_ROOT / name).exists()  # what the killed run left
    assert name in sweep()
    assert not (NETNS_DIR / name).exists() and not (WORK_ROOT / name).exists()
    deadline = time.monotonic() + 10
    while alive(int(sshd)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(int(sshd))


def test_the_user_side_mount_point_goes_with_the_last_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~/.ssh`` (the mount point of the user side) made by a harness stays while any host lives, then goes."""
    from tests.integration import otherhost

    home = tmp_path / "home" / ".ssh"
    home.parent.mkdir()
    monkeypatch.setattr(otherhost, "user_ssh_dir", lambda: home)
    monkeypatch.setattr(otherhost, "state_dir", lambda: tmp_path / "state")
    with otherhost._home_ssh_mount_point():
        assert home.is_dir()
        with otherhost._home_ssh_mount_point():
            assert home.is_dir()
        assert home.is_dir()  # a sibling's end: the first host still binds onto it
    assert not home.exists()  # the last one out removed what a harness made
    home.mkdir()  # the user's own ~/.ssh is never removed
    with otherhost._home_ssh_mount_point():
        pass
    assert home.is_dir()
