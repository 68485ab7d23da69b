"""libvirt on another host: user-style vm tests with ``--libvirt-uri qemu+ssh://pf-otherhost/system``.

The other host is a network and mount namespace of this machine with its own sshd and libvirtd
(tests/integration/otherhost.py): our files do not exist there, and its 127.0.0.1 is not ours.
The inner pytest run sees a ``~/.ssh`` that knows it, the way a user's would; libvirt's own ssh
transport and pytest-flake's tunnels both go through it. Afterwards: the guests ran there (not
here), the base image is a volume there with the same content as ours, no ``pf-`` domain and no
VM volume is left there (only the base image and the warm state kept on the host that made it),
and the tunnels are closed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake.images import debian_image_dir, image_cache
from pytest_flake.session import alive, state_dir
from pytest_flake.vm.volumes import BASE_PREFIX, POOL, POOL_DIR, content_id
from pytest_flake.vm.warm import referenced_volumes

from .otherhost import OtherHost, OtherHostUnavailable, check_tools, other_host

pytestmark = [pytest.mark.vm]
STATE = state_dir()  # pytester moves HOME: the inner run gets the real state folder (the debian image is cached there)

USER_TESTS = '''
"""Written as a user would, against the public vm API; --libvirt-uri points at another host."""

import json
import os
import re
import subprocess
from pathlib import Path

URI = os.environ["PF_URI"]


def virsh(*args):
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=False)


def record(**facts):
    path = Path(os.environ["PF_EVIDENCE"])
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(facts)
    path.write_text(json.dumps(known))


def test_guest_basics(vm, tmp_path):
    assert re.fullmatch(r"pf-[0-9a-f]+-vm-[0-9]+", vm.name), vm.name
    # the domain runs there (libvirt's own ssh transport), and not here
    assert virsh("domstate", vm.name).stdout.strip() == "running"
    here = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", vm.name], capture_output=True, text=True)
    assert here.returncode != 0
    result = vm.succeed("uname -s")
    assert result.strip() == "Linux"
    assert vm.run("exit 3").rc == 3
    assert vm.host.file("/etc/os-release").exists
    assert vm.host.service("systemd-journald").is_running
    local = tmp_path / "hello.txt"
    local.write_text("hello from the host\\n")
    vm.copy_to(local, "/root/hello.txt")
    assert vm.host.file("/root/hello.txt").content_string == "hello from the host\\n"
    vm.copy_from("/etc/hostname", tmp_path / "hostname")
    assert (tmp_path / "hostname").read_text().strip() == vm.succeed("hostname").strip()
    # the console comes through libvirt (a virStream) into the log the VM reads
    vm.succeed("echo pf-console-$((6 * 7)) > /dev/ttyS0")
    assert vm.wait_for_console_text(r"pf-console-42", timeout=30) == "pf-console-42"
    xml = virsh("dumpxml", vm.name).stdout
    record(first=vm.name, first_kind=vm.boot_kind, first_console=vm.console_log(), first_xml=xml,
           first_ssh_port=vm.ssh_port)


def test_forward_a_guest_port(vm, http):
    vm.succeed("mkdir -p /srv/www && echo served-from-the-other-host > /srv/www/index.html")
    vm.succeed("systemd-run --unit=pf-web busybox httpd -f -p 8080 -h /srv/www")
    port = vm.forward(8080)
    assert vm.url(8080, "/index.html") == f"http://127.0.0.1:{port}/index.html"
    http.get(vm.url(8080, "/index.html"), retry_for=30).expect(200, contains="served-from-the-other-host")
    # the guest's port is QEMU's forward on the other host's 127.0.0.1, not on ours
    masters = _ssh_masters()
    record(second=vm.name, second_kind=vm.boot_kind, web_port=port, ssh_port=vm.ssh_port, masters=masters)


def test_two_vms_at_once_on_the_other_host(vm_factory):
    one, two = vm_factory(), vm_factory()  # two restores of one saved state, side by side there
    assert virsh("domstate", one.name).stdout.strip() == virsh("domstate", two.name).stdout.strip() == "running"
    one.succeed("echo one > /root/who")
    assert two.run("cat /root/who").rc != 0  # each has its own overlay
    assert one.ssh_port != two.ssh_port
    record(factory=[one.name, two.name], factory_kind=[one.boot_kind, two.boot_kind])


def _ssh_masters():
    found = []
    for pid in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and argv and argv[0].endswith(b"ssh") and b"ControlMaster=yes" in argv \\
                and b"pf-otherhost" in argv:
            found.append(int(pid))
    return found
'''


@pytest.fixture(scope="module")
def oh() -> Iterator[OtherHost]:
    try:
        check_tools()
    except OtherHostUnavailable as exc:
        if os.environ.get("CI"):  # under CI missing infrastructure fails the run (the root conftest's rule)
            pytest.fail(f"CI needs the other host: {exc}")
        pytest.skip(str(exc))
    with other_host(docker=False) as host:
        yield host
    # the host is gone with its volumes: the warm states this machine kept for it are of no more use
    for record in (image_cache(STATE) / "warm").glob("*/remote.json"):
        if json.loads(record.read_text()).get("uri") == host.libvirt_uri:
            shutil.rmtree(record.parent, ignore_errors=True)


def _volumes(oh: OtherHost) -> set[str]:
    done = oh.virsh("vol-list", POOL, "--details")
    assert done.returncode == 0, done.stderr
    return {line.split()[0] for line in done.stdout.splitlines()[2:] if line.strip()}


def test_user_vm_tests_against_the_other_host(pytester: pytest.Pytester, oh: OtherHost,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert oh.virsh("pool-info", POOL).returncode != 0  # a new host: the pool and its volumes come from this run
    evidence = pytester.path / "evidence.json"
    monkeypatch.setenv("PF_EVIDENCE", str(evidence))
    monkeypatch.setenv("PF_URI", oh.libvirt_uri)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(STATE))
    test_file = pytester.makepyfile(test_user_vm=USER_TESTS)
    result = pytester.run(*oh.user_argv([
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", f"--libvirt-uri={oh.libvirt_uri}",
        "--vm-image=debian", "--vm-accel=tcg", "-o", "log_cli=true", "--log-cli-level=INFO", str(test_file)]),
        timeout=900)
    result.assert_outcomes(passed=3)
    facts = json.loads(evidence.read_text())
    session = re.match(r"(pf-[0-9a-f]+)-vm-", facts["first"]).group(1)  # type: ignore[union-attr]

    # the base image went there once, as a volume named by its content, and is the same disk as ours
    disk = debian_image_dir(image_cache(STATE)) / "disk.qcow2"
    base = f"{BASE_PREFIX}{content_id(disk, image_cache(STATE))}.qcow2"
    volumes = _volumes(oh)
    assert base in volumes, volumes
    there = oh.work / "lib-libvirt" / "images" / POOL / base  # the other host's /var/lib/libvirt, seen from here
    assert there.is_file()
    compare = subprocess.run(["qemu-img", "compare", "-q", str(disk), str(there)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr or compare.stdout
    assert not Path(POOL_DIR).exists()  # here, no such pool folder: the volumes are only there
    result.stdout.fnmatch_lines([f"*uploading disk.qcow2 * as {base}: done in*"])

    # the domains ran there, from volumes there: no path of ours in their XML
    xml = facts["first_xml"]
    assert f"{POOL_DIR}/{facts['first']}" in xml and "<console type='pty'" in xml
    assert str(STATE) not in xml and "/root" not in xml and "/tmp/" not in xml
    assert "pf-console-42" in facts["first_console"] and "login:" in facts["first_console"]
    # the first VM booted cold and was saved there; the others restored that state there
    assert (facts["first_kind"], facts["second_kind"], facts["factory_kind"]) == ("cold", "warm", ["warm", "warm"])

    # nothing of the session is left there but the warm state it saved (kept on the host that made it)
    assert oh.virsh("list", "--all", "--name").stdout.split() == []
    # (a record of a host of an earlier run, killed before it could drop its own, names volumes that are not here)
    kept = referenced_volumes(image_cache(STATE) / "warm", oh.libvirt_uri) & volumes
    assert len(kept) == 2 and all(name.startswith(f"{session}-vm-1.") for name in kept), kept
    assert {v for v in volumes if v.startswith("pf-") and not v.startswith(BASE_PREFIX)} == kept
    kernel = f"{BASE_PREFIX}{content_id(disk.parent / 'vmlinuz', image_cache(STATE))}.kernel"
    initrd = f"{BASE_PREFIX}{content_id(disk.parent / 'initrd.img', image_cache(STATE))}.initrd"
    assert {v for v in volumes if v.startswith(BASE_PREFIX)} == {base, kernel, initrd}

    # the tunnels are closed: the session's ssh master is gone, the forwarded ports listen no more
    assert facts["masters"], "no ssh master connection to pf-otherhost ran during the tests"
    for pid in facts["masters"]:
        assert not alive(pid), f"ssh master {pid} outlived the session"
    for port in (facts["web_port"], facts["ssh_port"]):
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


KILLED_RUN = '''
import json, os, signal
from pathlib import Path


def test_killed_with_a_vm_running(vm):
    Path(os.environ["PF_EVIDENCE"]).write_text(json.dumps({"vm": vm.name}))
    os.kill(os.getpid(), signal.SIGKILL)
'''

NEXT_RUN = '''
def test_next_session(flake_session):
    assert flake_session.id
'''


def test_a_killed_sessions_domain_and_volumes_there_are_swept(pytester: pytest.Pytester, oh: OtherHost,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # a state folder of its own (its sessions are only these two), with this machine's image cache and warm states
    state = pytester.path / "state"
    state.mkdir()
    (state / "images").symlink_to(image_cache(STATE), target_is_directory=True)
    evidence = pytester.path / "evidence.json"
    monkeypatch.setenv("PF_EVIDENCE", str(evidence))
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--libvirt-uri={oh.libvirt_uri}",
            "--vm-image=debian", "--vm-accel=tcg"]
    killed = pytester.makepyfile(test_killed=KILLED_RUN)
    result = pytester.run(*oh.user_argv([*argv, str(killed)]), timeout=600)
    assert result.ret == -9, result.stdout.str()
    name = json.loads(evidence.read_text())["vm"]
    session = name.rsplit("-vm-", 1)[0]
    # what the killed run left there: its domain and its overlay
    assert name in oh.virsh("list", "--name").stdout.split()
    left = {v for v in _volumes(oh) if v.startswith(f"{session}-")}
    assert f"{name}.qcow2" in left, left

    after = pytester.makepyfile(test_next=NEXT_RUN)
    result = pytester.run(*oh.user_argv([*argv, str(after)]), timeout=600)
    result.assert_outcomes(passed=1)
    assert name not in oh.virsh("list", "--all", "--name").stdout.split()
    kept = referenced_volumes(image_cache(STATE) / "warm", oh.libvirt_uri)  # a warm state it saved stays
    assert {v for v in _volumes(oh) if v.startswith(f"{session}-")} == left & kept
    assert left - kept, "the killed VM's own disk was not swept"  # its overlay (or, if it saved the state, the
    # overlay it ran on after the save)
