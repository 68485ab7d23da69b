"""pytest-flake under pytest-xdist: a real run with ``-n 2`` over docker, vm and portable tests.

The inner run tests the offline example flake with real Nix, Docker and libvirt. Its two
workers are two sessions of one run: each output is built once (the JUnit facts say which
worker built it and which read its sibling's build), the report header is printed once, and
after the run nothing of its sessions is left (domains, containers, processes, directories).
``--dist loadgroup`` keeps the VM tests on one worker (checked without booting a VM).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from pytest_flake.session import LABEL, alive, state_dir
from pytest_flake.xdist import RUNS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"
# the daemons of this machine, read before the plugin tests' clean environment hides them from inner runs
DAEMONS = {name: os.environ[name] for name in ("DOCKER_HOST", "LIBVIRT_DEFAULT_URI") if os.environ.get(name)}
# ...and the state of this machine (image cache, KVM probe, warm states): pytester gives inner runs a HOME of their own
STATE = state_dir()

pytest.importorskip("xdist")

# each test records its worker, session, run and pid (and what it loaded or booted); every test builds
# the server, so both workers need it
INNER_CONFTEST = """
import os

import pytest


@pytest.fixture
def record():
    def write(*words):
        with open(os.environ["PF_XDIST_RECORD"], "a") as out:
            out.write(" ".join([os.environ.get("PYTEST_XDIST_WORKER", "-"), *map(str, words)]) + "\\n")

    return write


@pytest.fixture(autouse=True)
def _record_session(flake_session, flake, record):
    flake.build("default")
    record("session", flake_session.id, os.environ.get("PYTEST_XDIST_TESTRUNUID", "-"), os.getpid())
"""

INNER_TESTS = """
def test_local_run(flake, http):
    server = flake.run(port=0)
    http.get(server.url("/")).expect(200, contains="web-server 1.0")


def test_docker_container(docker_image, docker_container, http, record):
    image = docker_image("docker")
    record("image", image.id, image.loaded)
    container = docker_container(image, ports=[3031])
    http.get(container.url(3031, "/")).expect(200, contains="web-server 1.0")


def test_docker_image(docker_image, record):
    image = docker_image("docker")
    record("image", image.id, image.loaded)
    assert image.tag == "web-server:1.0"


def test_unit_points_at_the_server(flake):
    assert str(flake.build().out) in flake.build("web-service").out.read_text()


def test_portable_in_a_vm(vm, portable_service, http, record):
    record("vm", vm.name, vm.boot_kind, vm.ready_seconds)
    service = portable_service(vm, "portable")
    assert service.is_active()
    http.get(vm.url(3031, "/cgi-bin/info"), retry_for=30).expect(200, json={"version": "1.0"})


def test_vm_answers(vm, record):
    record("vm", vm.name, vm.boot_kind, vm.ready_seconds)
    assert vm.succeed("cat /etc/os-release")
"""


def _properties(xml: Path) -> list[tuple[str, str, str]]:
    """``(test name, property name, value)`` of every test of a JUnit file."""
    root = ET.parse(xml).getroot()
    return [(case.get("name", ""), prop.get("name", ""), prop.get("value", ""))
            for case in root.iter("testcase") for prop in case.iter("property")]


def _leftover_processes(token: str) -> list[str]:
    """Processes whose environment carries ``token`` (started by the inner run, directly or not)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"PF_XDIST_TOKEN={token}".encode() in environ.split(b"\0"):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.docker
@pytest.mark.vm
@pytest.mark.portable
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("nix")
def test_two_workers_share_one_run_and_leave_nothing(pytester: pytest.Pytester, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "sessions.txt"
    token = secrets.token_hex(8)
    monkeypatch.setenv("PF_XDIST_RECORD", str(record))
    monkeypatch.setenv("PF_XDIST_TOKEN", token)
    monkeypatch.setenv("PYTEST_FLAKE_VM_IMAGE", "debian")  # the image of the suite: built offline, cached
    for name, value in DAEMONS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(STATE))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    xml = tmp_path / "junit.xml"
    started = time.monotonic()
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-n", "2", "-p", "xdist", "-p", "no:cacheprovider",
                                           "-p", "no:randomly", "-v", f"--junitxml={xml}", "-rA",
                                           "--log-level=INFO")  # -rA with INFO: the workers' vm:// lines
    seconds = time.monotonic() - started
    print(f"inner run under -n 2: {seconds:.1f}s")
    result.assert_outcomes(passed=6)

    # two workers, two sessions, one run
    lines = [line.split() for line in record.read_text().splitlines()]
    print("\n".join(" ".join(line) for line in lines if line[1] != "session"))
    rows = [[line[0], *line[2:]] for line in lines if line[1] == "session"]
    workers = {row[0]: row[1] for row in rows}
    assert sorted(workers) == ["gw0", "gw1"], rows
    assert len(set(workers.values())) == 2, rows  # a session of its own each
    uids = {row[2] for row in rows}
    assert len(uids) == 1 and "-" not in uids, rows

    # the image loaded at most once (not at all when the daemon held it), the VM booted cold at most once
    images = [line for line in lines if line[1] == "image"]
    assert len(images) == 2 and len({line[2] for line in images}) == 1, images
    assert [line[3] for line in images].count("True") <= 1, images
    vms = [line for line in lines if line[1] == "vm"]
    steps = [line for line in result.stdout.lines if "vm://" in line or "accel:" in line]
    assert len(vms) == 2 and [line[3] for line in vms].count("cold") <= 1, (vms, steps)

    # the header once: the settings, and the nix facts the controller found
    out = result.stdout.lines
    for prefix in ("pytest-flake: flake: ", "pytest-flake: docker: ", "pytest-flake: system: ",
                   "pytest-flake: flake locked: "):
        assert sum(line.startswith(prefix) for line in out) == 1, (prefix, out[:30])

    # each attribute built once in the run: every other worker that needed it read its sibling's build
    props = _properties(xml)
    fetched = Counter(name for _, name, _ in props if name.startswith("nix build ") and not name.endswith(" shared"))
    shared = Counter(name[:-len(" shared")] for _, name, _ in props
                     if name.startswith("nix build ") and name.endswith(" shared"))
    for installable, count in sorted(fetched.items()):
        print(f"{installable.rsplit('.', 1)[-1]}: needed by {count} worker(s), built by "
              f"{count - shared[installable]}, read from a sibling by {shared[installable]}")
    assert fetched, props
    for installable, count in fetched.items():
        assert count - shared[installable] == 1, (installable, count, shared[installable])
    default = f"nix build {REF}#packages.x86_64-linux.default"
    assert fetched[default] == 2 and shared[default] == 1, (fetched, shared)  # both workers built it: one did
    for name in ("docker", "portable", "web-service"):
        assert fetched[f"nix build {REF}#packages.x86_64-linux.{name}"] >= 1, fetched

    # nothing left: domains, containers, processes, session registrations and the run directory
    sessions = set(workers.values())
    virsh = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()
    assert [d for d in virsh if any(d.startswith(f"{s}-") for s in sessions)] == []
    if shutil.which("docker"):
        for session in sessions:
            containers = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={LABEL}={session}"],
                                        capture_output=True, text=True, timeout=60, check=True).stdout.split()
            assert containers == [], session
    assert _leftover_processes(token) == []
    assert not any(alive(int(row[3])) for row in rows)
    assert not any((STATE / "sessions" / s).exists() for s in sessions)
    assert (STATE / "sessions").is_dir() and not (STATE / RUNS / uids.pop()).exists()


LOADGROUP_TESTS = """
import pytest


@pytest.mark.vm
def test_vm_1(flake_settings):
    pass


@pytest.mark.vm
def test_vm_2(flake_settings):
    pass


@pytest.mark.vm
@pytest.mark.xdist_group("mine")
def test_vm_own_group(flake_settings):
    pass


@pytest.mark.nspawn
def test_container_1(flake_settings):
    pass


@pytest.mark.nspawn
def test_container_2(flake_settings):
    pass


@pytest.mark.parametrize("n", range(6))
def test_light(n):
    pass
"""


def _workers(lines: list[str]) -> dict[str, str]:
    """Test name (without its group suffix) -> the worker that ran it, from ``-v`` output."""
    found = {}
    for line in lines:
        match = re.search(r"\[(gw\d+)\] \[\s*\d+%\] PASSED \S+::(\w+(?:\[\d+\])?)(@\S+)?", line)
        if match:
            found[match.group(2) + (match.group(3) or "")] = match.group(1)
    return found


def test_loadgroup_keeps_vm_tests_on_one_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_groups=LOADGROUP_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--dist", "loadgroup", "-v",
                                           "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=11)
    ran = _workers(result.stdout.lines)
    assert ran["test_vm_1@pytest-flake-vm"] == ran["test_vm_2@pytest-flake-vm"], ran
    assert ran["test_container_1@pytest-flake-nspawn"] == ran["test_container_2@pytest-flake-nspawn"], ran
    assert "test_vm_own_group@mine" in ran, ran  # a group of its own is left alone
    assert not any(name.startswith("test_light") and "@" in name for name in ran), ran


def test_no_flake_xdist_group_leaves_the_tests_ungrouped(pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_groups=LOADGROUP_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--dist", "loadgroup", "-v",
                                           "-p", "no:cacheprovider", "--no-flake-xdist-group")
    result.assert_outcomes(passed=11)
    ran = _workers(result.stdout.lines)
    assert "test_vm_1" in ran and "test_container_1" in ran and "test_vm_own_group@mine" in ran, ran
    monkeypatch.setenv("PYTEST_FLAKE_XDIST_GROUP", "0")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--dist", "loadgroup", "-v",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=11)
    assert "test_vm_1" in _workers(result.stdout.lines)


def test_without_xdist_the_session_is_the_run(pytester: pytest.Pytester, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``-n 0`` and ``-p no:xdist``: no run directory, and the nix facts printed once, after collection."""
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile("from pytest_flake.nodestate import run_of\n\n\n"
                        "def test_uses(request, flake_session, flake):\n    assert run_of(request.config) is None\n")
    for args in (("-n", "0", "-p", "xdist"), ("-p", "no:xdist")):
        result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=1)
        assert sum(line.startswith("pytest-flake: system: ") for line in result.stdout.lines) == 1
        assert (tmp_path / "state" / "sessions").is_dir() and not (tmp_path / "state" / RUNS).exists()


BUILD_TESTS = """
import pytest


@pytest.mark.parametrize("n", range(4))
def test_builds(flake, n):
    assert (flake.build().out / "bin" / "web-server").exists()
"""


@pytest.mark.usefixtures("nix")
def test_header_once_and_one_build_under_n_2(pytester: pytest.Pytester, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without daemons: the controller prints the header and the nix facts once; the workers build once."""
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile(test_builds=BUILD_TESTS)
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-n", "2", "-p", "xdist", "-p", "no:cacheprovider",
                                           f"--junitxml={xml}")
    result.assert_outcomes(passed=4)
    for prefix in ("pytest-flake: flake: ", "pytest-flake: system: ", "pytest-flake: flake locked: "):
        assert sum(line.startswith(prefix) for line in result.stdout.lines) == 1, (prefix, result.stdout.lines)
    props = _properties(xml)
    installable = f"nix build {REF}#packages.x86_64-linux.default"
    fetched = [test for test, name, _ in props if name == installable]
    shared = [test for test, name, _ in props if name == f"{installable} shared"]
    assert len(fetched) == 2 and len(shared) == 1, props  # two workers needed it, one of them built it
    flake_facts = [value for _, name, value in props if name == "pytest-flake flake"]
    assert len(flake_facts) == 4 and all(v.startswith(f"{REF} (locked: path sha256-") for v in flake_facts), props
    assert list((tmp_path / "state" / RUNS).iterdir()) == []  # the controller removed the run at its end
