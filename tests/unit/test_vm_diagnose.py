"""What a guest that did not come up shows (vm/diagnose.py): no libvirt, no guest."""

from __future__ import annotations

import threading

import pytest

from pytest_flake.errors import UsageError, VMError
from pytest_flake.vm import diagnose

# recorded from a Debian 12 guest of the debian image (kernel 6.1.0-50-cloud-amd64) after
# `echo c > /proc/sysrq-trigger`, its first lines
PANIC_CONSOLE = """\
[   70.820809] sysrq: Trigger a crash
[   70.841485] Kernel panic - not syncing: sysrq triggered crash
[   70.841971] CPU: 0 PID: 239 Comm: sh Not tainted 6.1.0-50-cloud-amd64 #1  Debian 6.1.176-1
[   70.842286] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   70.842643] Call Trace:
"""

class FakeDomain:
    def __init__(self, state: int = 1, reason: int = 1, active: bool = True) -> None:
        self._state, self._reason, self.active = state, reason, active

    def state(self) -> list[int]:
        return [self._state, self._reason]

    def isActive(self) -> int:  # noqa: N802 (libvirt's name)
        return int(self.active)


def test_a_panic_is_found_on_the_console():
    assert diagnose.panic_in(PANIC_CONSOLE) == "[   70.841485] Kernel panic - not syncing: sysrq triggered crash"
    assert diagnose.panic_in("Debian GNU/Linux 12 pf-debian ttyS0\n\npf-debian login: ") is None


def test_evidence_says_when_the_console_printed_nothing():
    text = diagnose.evidence("pf-x-vm-1", "", None, local=False)
    assert "the console printed nothing" in text
    assert "domain pf-x-vm-1: not defined" in text


def test_evidence_names_the_domain_state_and_reason():
    pytest.importorskip("libvirt")
    # VIR_DOMAIN_SHUTOFF = 5, VIR_DOMAIN_SHUTOFF_CRASHED = 3
    text = diagnose.evidence("pf-x-vm-1", PANIC_CONSOLE, FakeDomain(5, 3, active=False), local=False)
    assert "domain pf-x-vm-1: shut off (crashed)" in text
    assert "Kernel panic" in text


@pytest.mark.parametrize("memory, cpus, floor, wanted", [
    (64, 1, 256, "64 MiB of memory is below the 256 MiB the debian image needs"),
    (100, 1, 0, "100 MiB of memory is below the 128 MiB any guest needs"),
])
def test_a_floor_refuses_too_little(memory, cpus, floor, wanted):
    with pytest.raises(UsageError) as refused:
        diagnose.check_floor("vm://pf-x-vm-1", "debian", memory, cpus, floor)
    assert wanted in str(refused.value)
    assert "--vm-memory" in str(refused.value)


def test_a_floor_lets_enough_through():
    diagnose.check_floor("vm://pf-x-vm-1", "debian", 256, 1, 256)
    diagnose.check_floor("vm://pf-x-vm-1", "file.qcow2", 128, 1, 0)


def test_the_watch_cuts_a_command_when_the_kernel_panics():
    console = ["boot log\n"]
    cut = threading.Event()

    def command() -> None:  # a command on a dead guest: it returns only when the connection is cut
        console.append(PANIC_CONSOLE)
        assert cut.wait(10)
        raise OSError("Socket is closed")

    with pytest.raises(VMError) as failed:
        with diagnose.Watch("pf-x-vm-1", lambda: "".join(console), FakeDomain(), cut.set, local=False,
                            interval=0.05):
            command()
    assert "the guest's kernel failed: [   70.841485] Kernel panic" in str(failed.value)
    assert isinstance(failed.value.__cause__, OSError)


def test_the_watch_ignores_a_panic_from_before_it_began():
    with diagnose.Watch("pf-x-vm-1", lambda: PANIC_CONSOLE, FakeDomain(), lambda: None, local=False,
                        interval=0.01) as watch:
        threading.Event().wait(0.1)
    assert watch.failure is None


def test_the_watch_cuts_when_the_domain_stops():
    dom = FakeDomain()
    cut = threading.Event()
    with pytest.raises(VMError) as failed:
        with diagnose.Watch("pf-x-vm-1", lambda: "", dom, cut.set, local=False, interval=0.05):
            dom.active = False
            assert cut.wait(10)
    assert "the guest stopped" in str(failed.value)
