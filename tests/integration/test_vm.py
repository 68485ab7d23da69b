"""VMs on the real libvirt daemon with the ``debian`` image (run with ``--vm-image debian``).

Nothing is faked: guests boot under libvirt (TCG where KVM does not work), SSH is real,
forwards are real QEMU host forwards. Under CI a missing libvirt fails these tests:
the fixtures raise, nothing here skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from pytest_flake.config import Settings
from pytest_flake.errors import FlakeTimeout
from pytest_flake.session import Session
from pytest_flake.vm import VM, VMPool, connect, default_uri
from pytest_flake.waiting import NotReady, wait_for


def domain_names(settings: Settings) -> set[str]:
    conn = connect(default_uri(settings))
    try:
        return {dom.name() for dom in conn.listAllDomains(0)}
    finally:
        conn.close()


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:
                    found.add(address)
    return found


def qemu_process(machine: VM) -> tuple[int, dict[str, list[int]]]:
    """The pid of the guest's QEMU and its ``Uid``/``Gid`` lines (real, effective, saved, filesystem)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-system-x86_64") and f"guest={machine.name},".encode() in b",".join(
                cmdline):
            ids = {line.split(":")[0]: [int(v) for v in line.split()[1:]] for line in status.splitlines()
                   if line.startswith(("Uid:", "Gid:"))}
            return pid, ids
    raise AssertionError(f"no QEMU process of {machine.name}")


def assert_qemu_unprivileged(machine: VM, pool: VMPool) -> None:
    _, ids = qemu_process(machine)
    user = pool.qemu_user
    assert user is not None and user.uid != 0
    assert ids["Uid"] == [user.uid] * 4 and ids["Gid"] == [user.gid] * 4, ids
    assert 0 not in ids["Uid"] and 0 not in ids["Gid"]
    # its own files are its user's alone; the shared base image stays root's and read-only to it
    for own in (machine.overlay, machine.console):
        stat = own.stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (user.uid, 0o600), own
    image = pool.image(machine.image_spec)
    base = image.disk.stat()
    assert base.st_uid == 0 and not base.st_mode & 0o022


def test_qemu_does_not_run_as_root(vm: VM, flake_vms: VMPool) -> None:
    """QEMU runs as libvirt's unprivileged user: an escape from the guest does not land as root."""
    assert_qemu_unprivileged(vm, flake_vms)
    assert vm.run("true").rc == 0


def test_ssh_and_testinfra(vm: VM, flake_settings: Settings) -> None:
    result = vm.run("id -u; . /etc/os-release; echo $VERSION_CODENAME")
    assert result.rc == 0 and result.stdout.split() == ["0", "bookworm"]
    assert vm.run(["sh", "-c", "exit 3"]).rc == 3
    assert vm.run(["echo", "it's; $(not run)"]).stdout == "it's; $(not run)\n"
    host = vm.host
    assert host.user().name == "root"
    assert host.file("/etc/os-release").contains("bookworm")
    assert host.service("ssh").is_running
    assert host.package("systemd-container").is_installed
    assert host.file("/usr/bin/portablectl").exists and host.file("/usr/bin/systemd-dissect").exists
    assert host.run("touch /root/writable").rc == 0
    assert vm.name.startswith("pf-") and vm.name in domain_names(flake_settings)
    assert "-vm-" in vm.name


def test_forwarded_port_answers_on_loopback_only(vm: VM, http) -> None:  # type: ignore[no-untyped-def]
    assert vm.run("mkdir -p /srv/www && echo hello-from-the-guest > /srv/www/index.html").rc == 0
    assert vm.run("busybox httpd -p 8080 -h /srv/www").rc == 0
    port = vm.forward(8080)
    assert vm.forward(8080) == port  # one forward per guest port
    assert vm.url(8080, "/index.html") == f"http://127.0.0.1:{port}/index.html"
    http.get(vm.url(8080, "/index.html"), retry_for=20).expect(200, contains="hello-from-the-guest")
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert listening_addresses(vm.ssh_port) == {"0100007F"}


def test_guest_network_is_restricted(vm: VM, flake_settings: Settings) -> None:
    """The running domain's QEMU netdev is user networking with restrict=on, forwards on loopback only.

    (Checked on the domain rather than by sending from the guest: no test sends to any
    address off this machine, not even to QEMU's virtual gateway.)
    """
    conn = connect(default_uri(flake_settings))
    try:
        xml = conn.lookupByName(vm.name).XMLDesc(0)
    finally:
        conn.close()
    netdevs = re.findall(r"<qemu:arg value=['\"](user,[^'\"]*)['\"]", xml)
    assert len(netdevs) == 1, xml
    options = netdevs[0].split(",")
    assert "restrict=on" in options
    forwards = [o for o in options if o.startswith("hostfwd=")]
    assert forwards and all(o.startswith("hostfwd=tcp:127.0.0.1:") for o in forwards)


def test_copy_to(vm: VM, tmp_path: Path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from a copied script\n")
    script.chmod(0o755)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("A")
    vm.copy_to(script, "/root/hello.sh")
    vm.copy_to(tree, "/root/tree")
    assert vm.run("/root/hello.sh").stdout == "hello from a copied script\n"
    assert vm.run("cat /root/tree/sub/a.txt").stdout == "A"


def test_console_log(vm: VM) -> None:
    vm.run("echo marker-on-the-console > /dev/ttyS0")
    wait_for(lambda: None if "marker-on-the-console" in vm.console_log() else _not_yet("console"),
             what="console marker", timeout=10)


def _not_yet(what: str) -> NoReturn:
    raise NotReady(what)


def test_second_vm_starts_warm_from_the_saved_state(vm_factory: Callable[..., VM], flake_vms: VMPool) -> None:
    first = vm_factory()
    second = vm_factory()
    assert second.warm, "the second VM of an image must restore the saved state"
    assert first.name != second.name and first.ssh_port != second.ssh_port
    assert first.run("echo one > /root/mark").rc == 0
    assert second.run("test -e /root/mark").rc == 1  # each VM has its own overlay
    assert second.run("systemctl is-system-running --wait || true").stdout.strip() in ("running", "degraded")
    assert_qemu_unprivileged(first, flake_vms)
    assert_qemu_unprivileged(second, flake_vms)  # a warm start too
    cold = [seconds for _, warm, seconds in flake_vms.starts if not warm]
    warm = [seconds for _, warm, seconds in flake_vms.starts if warm]
    assert warm
    if cold:  # else the first VM restored a state an earlier session left in the cache
        print(f"\ncold boot to SSH ready: {cold[0]:.1f}s; warm start to SSH ready: {min(warm):.1f}s "
              f"(x{cold[0] / min(warm):.1f} faster)")
        assert min(warm) < cold[0]


WARM_INNER = """
import json, os

def test_inner(vm, vm_factory):
    assert vm.run("true").rc == 0
    seen = [{"name": vm.name, "kind": vm.boot_kind, "warm_from": vm.warm_from, "memory": vm.memory}]
    if os.environ.get("PF_OTHER_MEMORY"):
        other = vm_factory(memory=int(os.environ["PF_OTHER_MEMORY"]))
        assert other.run("true").rc == 0
        seen.append({"name": other.name, "kind": other.boot_kind, "warm_from": other.warm_from,
                     "memory": other.memory})
    with open(os.environ["PF_INNER_OUT"], "a") as out:
        out.write(json.dumps(seen) + "\\n")
"""


def test_warm_state_outlives_the_session(pytester: pytest.Pytester, flake_vms: VMPool, flake_settings: Settings,
                                         monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """A second session's first VM restores the state the first one saved; another size boots cold."""
    image = flake_vms.image("debian")
    # A cache of its own (the image shared): the first run must boot cold. It lives beside the real
    # cache, not in pytest's temporary folders: every pytest session start narrows those (chmod
    # 0700), which takes QEMU's user its way in between the plugin's grant and a restore.
    root = Path(tempfile.mkdtemp(prefix="test-warm-", dir=flake_vms.session.root))
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    (root / "images").mkdir(parents=True)
    (root / "images" / image.disk.parent.name).symlink_to(image.disk.parent)
    probe = flake_vms.cache / "kvm-probe.json"
    if probe.is_file():
        shutil.copy(probe, root / "images" / probe.name)
    out = pytester.path / "seen.jsonl"
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(root))
    monkeypatch.setenv("PF_INNER_OUT", str(out))
    monkeypatch.delenv("PYTEST_FLAKE_VM_WARM", raising=False)
    monkeypatch.delenv("PF_OTHER_MEMORY", raising=False)
    if flake_settings.libvirt_uri:
        monkeypatch.setenv("LIBVIRT_DEFAULT_URI", flake_settings.libvirt_uri)
    pytester.makepyfile(test_inner=WARM_INNER)
    args = ("-p", "no:cacheprovider", "--vm-image", "debian", "--vm-memory", "1024")

    first = pytester.runpytest_subprocess(*args, timeout=600)
    first.assert_outcomes(passed=1)
    monkeypatch.setenv("PF_OTHER_MEMORY", "768")
    second = pytester.runpytest_subprocess(*args, timeout=600)
    second.assert_outcomes(passed=1)

    (one,), (two, other) = (json.loads(line) for line in out.read_text().splitlines())
    first_session, second_session = one["name"].split("-vm-")[0], two["name"].split("-vm-")[0]
    assert one["kind"] == "cold"
    assert two["kind"] == "warm" and two["warm_from"] == first_session  # warm from the first VM on
    assert second_session != first_session and two["name"].startswith(f"{second_session}-vm-")
    assert other["kind"] == "cold" and other["memory"] == 768  # another size: no state fits, boots cold
    states = sorted(p for p in (root / "images" / "warm").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(states) == 2 and all((p / "state.json").is_file() for p in states)  # both sessions' states stay
    for state in states:
        assert (state / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert not any(n.startswith((first_session, second_session)) for n in domain_names(flake_settings))
    assert not (root / "vms").exists() or not list((root / "vms").iterdir())


def test_guest_that_never_answers_ssh(flake_session: Session, flake_settings: Settings, tmp_path: Path) -> None:
    disk = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    env = {"PYTEST_FLAKE_TIMEOUT": "8", "PYTEST_FLAKE_VM_ACCEL": "tcg"}
    if flake_settings.libvirt_uri:
        env["LIBVIRT_DEFAULT_URI"] = flake_settings.libvirt_uri
    settings = Settings.resolve(lambda n: None, lambda n: None, tmp_path, environ=env)
    with Session(root=flake_session.root) as session, VMPool(settings, session) as pool:
        machine = pool.vm(image=str(disk))
        with pytest.raises(FlakeTimeout, match="SSH on 127.0.0.1") as err:
            with machine:
                pass
        assert "console" in "\n".join(getattr(err.value, "__notes__", []))
        assert machine.name not in domain_names(settings)
        assert not machine.overlay.exists()
    assert not (session.root / "vms" / session.id).exists()


INNER = """
import os, time

def test_inner(vm):
    with open(os.environ["PF_INNER_OUT"], "w") as out:
        out.write(vm.name)
    assert vm.run("true").rc == 0
    if os.environ.get("PF_INNER_HANG"):
        time.sleep(600)
"""


def _inner_run(tmp_path: Path, root: Path, *, hang: bool) -> subprocess.Popen[bytes]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    env = dict(os.environ, PYTEST_FLAKE_STATE=str(root), PF_INNER_OUT=str(tmp_path / "name"))
    if hang:
        env["PF_INNER_HANG"] = "1"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--vm-image", "debian",
            "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")]
    return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_session_end_leaves_nothing(flake_session: Session, flake_settings: Settings, tmp_path: Path) -> None:
    proc = _inner_run(tmp_path, flake_session.root, hang=False)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, output
    name = (tmp_path / "name").read_text()
    session_id = name.split("-vm-")[0]
    assert name not in domain_names(flake_settings)
    assert not any(n.startswith(session_id) for n in domain_names(flake_settings))
    vms = flake_session.root / "vms"
    assert not (vms / session_id).exists()
    leftovers = list(vms.rglob(f"{session_id}*")) if vms.exists() else []
    assert leftovers == []


def test_killed_session_is_swept_by_the_next(flake_session: Session, flake_settings: Settings,
                                             tmp_path: Path) -> None:
    proc = _inner_run(tmp_path, flake_session.root, hang=True)
    try:
        name = wait_for(lambda: (tmp_path / "name").read_text() or _not_yet("no name"),
                        what="the inner session's VM", timeout=400, interval=1, transient=(OSError,))
        session_id = name.split("-vm-")[0]
        wait_for(lambda: name in domain_names(flake_settings) or _not_yet("domain"), what="domain", timeout=60)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert name in domain_names(flake_settings)  # SIGKILL left the guest running
    assert (flake_session.root / "vms" / session_id).exists()

    (tmp_path / "next").mkdir()
    # the next session that uses the plugin sweeps (one that does not touches nothing)
    (tmp_path / "next" / "test_nothing.py").write_text("def test_nothing(flake_session):\n    pass\n")
    env = dict(os.environ, PYTEST_FLAKE_STATE=str(flake_session.root))
    nxt = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "--rootdir", str(tmp_path / "next"), str(tmp_path / "next")],
                         cwd=tmp_path / "next", env=env, capture_output=True, text=True, timeout=300)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert not any(n.startswith(session_id) for n in domain_names(flake_settings))
    assert not (flake_session.root / "vms" / session_id).exists()
    assert not (flake_session.root / "sessions" / session_id).exists()


KEPT = """
import os


def test_fails(vm):
    open(os.environ["NAME_FILE"], "w").write(vm.name)
    assert vm.run("false").rc == 0
"""


def test_flake_keep_keeps_the_vm_of_a_failed_test_until_the_next_session(
        flake_session: Session, flake_settings: Settings, tmp_path: Path) -> None:
    nothing = "def test_nothing(flake_session):\n    pass\n"  # uses the plugin, so it sweeps
    for name, text in (("kept/test_kept.py", KEPT), ("next/test_nothing.py", nothing)):
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTEST_FLAKE_STATE=str(flake_session.root), NAME_FILE=str(tmp_path / "name"))

    def session(folder: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--vm-image=debian",
                               *args, "--rootdir", str(tmp_path / folder), str(tmp_path / folder)],
                              cwd=tmp_path / folder, env=env, capture_output=True, text=True, timeout=600)

    kept = session("kept", "--flake-keep")
    assert kept.returncode == 1, kept.stdout + kept.stderr
    name = (tmp_path / "name").read_text()
    line = next(ln for ln in kept.stdout.splitlines() if ln.startswith("pytest-flake: kept VM"))
    assert f"kept VM {name} (commands through agent) of failed test_kept.py::test_fails: ssh -i " in line
    port = int(re.search(r" -p (\d+) ", line).group(1))  # type: ignore[union-attr]
    assert name in domain_names(flake_settings)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert conn.recv(64).startswith(b"SSH-2.0-")  # the printed command reaches the kept guest
    command = shlex.split("ssh " + line.split(": ssh ", 1)[1])
    assert "StrictHostKeyChecking=yes" in command  # the guest's host key is pinned, not taken on trust
    done = subprocess.run([*command, "-o", "BatchMode=yes", "cat", "/etc/hostname"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr  # a person can log in with it, the host key checked
    known = Path(next(arg for arg in command if arg.startswith("UserKnownHostsFile=")).split("=", 1)[1])
    known.write_text(known.read_text().replace("[127.0.0.1]", "[127.0.0.2]"))  # a key for another address only
    refused = subprocess.run([*command, "-o", "BatchMode=yes", "true"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr

    nxt = session("next")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert name not in domain_names(flake_settings)  # swept by the next session
