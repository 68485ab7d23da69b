"""libvirtd restarted while a VM boots (the machine's own daemon, for real).

A restarted libvirtd drops its clients, not its guests: the guest boots on, and the session must
reach it again through a new connection. The inner session cold-boots a VM (warm starts off);
once its domain exists and before SSH answers, this test restarts libvirtd. The inner test passes,
and nothing of it is left: no domain, no session registration.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm]

INNER = textwrap.dedent("""
    def test_boots_through_a_restart(vm):
        assert vm.succeed("echo ok").strip() == "ok"
        assert vm.boot_kind == "cold"
""")


def _domains() -> set[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                         text=True, timeout=60)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _booted(name: str) -> bool:
    """Whether libvirt has started the domain (``running (booted)``), as opposed to still setting it up."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", "--reason", name], capture_output=True,
                         text=True, timeout=60)
    return out.stdout.strip() == "running (booted)"


def _libvirtd_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.path.basename(os.readlink(entry / "exe")).removesuffix(" (deleted)") == "libvirtd":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def restart_libvirtd() -> None:
    """Restart the machine's libvirtd the way it was started: systemd's unit, else the daemon itself."""
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True, timeout=120)
        return
    for pid in _libvirtd_pids():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _libvirtd_pids():
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.2)
    subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline + 60, "libvirtd did not come back"
        time.sleep(0.2)


def test_libvirtd_restarted_while_a_vm_boots(pytester: pytest.Pytester, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not _libvirtd_pids():
        pytest.fail("no libvirtd runs here (scripts/setup starts it)")
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_VM_WARM", "0")  # a cold boot: the restart lands while the kernel boots
    monkeypatch.setenv("PYTEST_FLAKE_VM_IMAGE", "debian")
    before = _domains()
    restarted: list[str] = []
    stop = threading.Event()

    def restart_once_the_domain_runs() -> None:
        while not stop.wait(0.5):
            sessions = tmp_path / "state" / "sessions"
            inner = [p.name for p in sessions.iterdir()] if sessions.is_dir() else []  # other sessions may boot VMs
            new = {d for d in _domains() - before if d.startswith(tuple(f"{i}-" for i in inner)) and _booted(d)}
            if new:
                time.sleep(2)  # the start call has returned by then; the kernel boots (20 s or more under TCG)
                restart_libvirtd()
                restarted.extend(sorted(new))
                return

    restarter = threading.Thread(target=restart_once_the_domain_runs, daemon=True)
    restarter.start()
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=600)
    finally:
        stop.set()
        restarter.join(timeout=180)
    assert restarted, "libvirtd was never restarted during the boot: this test would prove nothing"
    assert _libvirtd_pids(), "libvirtd is not running after the test"
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*Traceback*")
    assert not set(restarted) & _domains()  # the domain went at the end of the session
    sessions = tmp_path / "state" / "sessions"
    left = [p.name for p in sessions.iterdir()] if sessions.exists() else []
    assert left == []  # nothing left for a later sweep either: the inner session removed its own domain
