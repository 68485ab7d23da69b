"""The Docker fixtures against Podman's Docker-compatible socket (``podman system service``).

A private service with its own storage (vfs: no mounts left behind) in a temporary
directory; skipped where ``podman`` is not installed (Debian: ``apt-get install podman
catatonit``). Podman's containers ask for a ``nofile`` limit of 1048576 by default, more
(and ``nproc`` likewise), more than a machine with a lower hard limit may give: the
service gets ``default_ulimits`` set to this process's hard limits.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("nix")]

INNER = """
def test_serves(docker_image, docker_container, http, flake_docker):
    image = docker_image("docker")
    container = docker_container(image, ports=[3031])
    http.get(container.url(3031)).expect(200, contains="web-server 1.0")
    assert flake_docker.connect().version.startswith("Podman ")

def test_fails(docker_container, http):
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/missing-under-podman"))
    assert False, "the service is wrong"
"""


def _limits() -> str:
    limits = []
    for name, kind, most in (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 4096)):
        hard = resource.getrlimit(kind)[1]
        value = most if hard == resource.RLIM_INFINITY else min(hard, most)
        limits.append(f'"{name}={value}:{value}"')
    return f"[containers]\ndefault_ulimits = [{', '.join(limits)}]\n"


@contextlib.contextmanager
def podman_service(conf: str) -> Iterator[str]:
    """A private ``podman system service`` with its own storage and ``containers.conf``; yields its socket URL."""
    podman = shutil.which("podman")
    if podman is None:  # optional: scripts/setup does not install it (Docker is the daemon CI must have)
        pytest.skip("podman is not installed (apt-get install podman catatonit)")
    base = Path(tempfile.mkdtemp(prefix="pf-podman-"))  # short: a unix socket path has ~100 bytes
    (base / "containers.conf").write_text(conf)
    store = ["--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs"]
    sock = base / "podman.sock"
    env = dict(os.environ, CONTAINERS_CONF=str(base / "containers.conf"))
    service = subprocess.Popen([podman, *store, "system", "service", "--time=0", f"unix://{sock}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(sock))
                    break
                except OSError:
                    time.sleep(0.2)
        else:
            pytest.fail("podman system service did not open its socket in 30s")
        yield f"unix://{sock}"
    finally:
        subprocess.run([podman, *store, "rm", "--all", "--force"], env=env, capture_output=True, timeout=120)
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=30)
        subprocess.run([podman, *store, "system", "reset", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def podman_socket() -> Iterator[str]:
    with podman_service(_limits()) as url:
        yield url


def test_docker_fixtures_run_against_podman(pytester: pytest.Pytester, tmp_path: Path, podman_socket: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    pytester.makepyfile(test_podman=INNER)
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"pytest-flake: docker: {podman_socket} (from $DOCKER_HOST)"])
    case = next(c for c in ET.parse(xml).getroot().iter("testcase") if c.get("name") == "test_fails")
    logs = [p.get("value", "") for p in case.iter("property")
            if p.get("name", "").startswith("pytest-flake evidence: logs of container ")]
    assert len(logs) == 1 and "/missing-under-podman" in logs[0]


def test_podman_ulimits_above_the_hard_limit_say_what_to_set(pytester: pytest.Pytester, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] in (resource.RLIM_INFINITY, 1048576):
        pytest.skip("this machine's hard nofile limit is not below Podman's default for containers")
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    with podman_service("[containers]\n") as url:
        monkeypatch.setenv("DOCKER_HOST", url)
        pytester.makepyfile(test_limits="""
            def test_start(docker_container):
                docker_container("docker", ports=[3031])
        """)
        result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "DockerError: cannot start container pf-*-web-server-1 from web-server:1.0: *error setting rlimit* (Podman "
        "gives containers ulimits (nofile 1048576 for root) above this machine's hard limits; set default_ulimits = "
        '[[]"nofile=N:N", "nproc=N:N"] in containers.conf (ulimit -Hn, ulimit -Hu))',  # [[] is a literal [
    ])
