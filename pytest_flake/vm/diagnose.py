"""Why a guest did not come up: what its console, its domain and QEMU say, and the floors an image needs.

A guest that cannot boot should fail in seconds with what was seen, not at the end of
``--flake-timeout`` with an empty section: :func:`evidence` gathers the console's last lines
(or says that it printed nothing), the domain's state and the reason libvirt gives, and the
end of QEMU's own log; :func:`panic_in` finds a kernel panic on the console, which leaves the
domain running (a panicked kernel halts, it does not stop QEMU). :func:`check_floor` refuses
memory or CPUs below what an image needs before anything is defined.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError, VMError, tail

# the names libvirt gives a domain's state (virDomainState), and the prefix of each state's reasons
_STATES = {0: ("no state", "NOSTATE"), 1: ("running", "RUNNING"), 2: ("blocked", "BLOCKED"),
           3: ("paused", "PAUSED"), 4: ("shutting down", "SHUTDOWN"), 5: ("shut off", "SHUTOFF"),
           6: ("crashed", "CRASHED"), 7: ("suspended by power management", "PMSUSPENDED")}
_PANIC = re.compile(r"^.*(Kernel panic - not syncing|Oops:|BUG: unable to handle).*$", re.MULTILINE)
# where libvirt writes a domain's QEMU log: the system daemon, then a user's session daemon
_QEMU_LOG_DIRS = (Path("/var/log/libvirt/qemu"), Path(os.path.expanduser("~/.cache/libvirt/qemu/log")))
# a guest below this gets no further than its kernel's first allocations, whatever the image
GENERIC_MIN_MEMORY = 128


def domain_state(dom: Any) -> str:
    """``shut off (crashed)``: the domain's state and libvirt's reason for it, or why it is unknown."""
    if dom is None:
        return "not defined"
    try:
        state, reason = dom.state()
    except Exception as exc:  # the domain may be gone: say so instead of failing the report
        return f"unknown ({type(exc).__name__}: {exc})"
    name, prefix = _STATES.get(int(state), (f"state {state}", ""))
    return f"{name} ({_reason_name(prefix, int(reason))})"


def _reason_name(prefix: str, reason: int) -> str:
    from .connection import libvirt_module

    try:
        libvirt = libvirt_module()
    except Exception:
        return f"reason {reason}"
    prefix = f"VIR_DOMAIN_{prefix}_"
    for attr in dir(libvirt):
        if attr.startswith(prefix) and attr != f"{prefix}LAST" and getattr(libvirt, attr) == reason:
            return attr[len(prefix):].lower().replace("_", " ")
    return f"reason {reason}"


def qemu_log(name: str, lines: int = 15) -> str:
    """The end of QEMU's log of domain ``name`` on this machine ('' when libvirt keeps none here)."""
    for folder in _QEMU_LOG_DIRS:
        path = folder / f"{name}.log"
        try:
            return tail(path.read_text(errors="replace"), lines)
        except OSError:
            continue
    return ""


def panic_in(console: str) -> str | None:
    """The console line of a kernel panic or oops, or None."""
    match = _PANIC.search(console)
    return match.group(0).strip() if match else None


def evidence(name: str, console: str, dom: Any, *, local: bool = True) -> str:
    """What was seen of a guest that did not come up: console, domain state, QEMU's log."""
    parts = [f"console (last lines):\n{tail(console, 40)}" if console.strip() else "the console printed nothing",
             f"domain {name}: {domain_state(dom)}"]
    log_text = qemu_log(name) if local else ""
    if log_text:
        parts.append(f"QEMU's log (last lines):\n{log_text}")
    return "\n".join(parts)


def check_floor(what: str, image_name: str, memory: int, cpus: int, min_memory: int, min_cpus: int = 1) -> None:
    """Refuse, before boot, memory or CPUs below what ``image_name`` needs (``min_memory`` 0: unknown)."""
    floor = max(min_memory, GENERIC_MIN_MEMORY)
    if memory < floor:
        source = f"the {image_name} image needs" if min_memory else "any guest needs"
        raise UsageError(f"{what}: {memory} MiB of memory is below the {floor} MiB {source}; it would not boot",
                         hint=f"raise --vm-memory (or vm_factory(memory=...)) to at least {floor}")
    if cpus < min_cpus:
        raise UsageError(f"{what}: {cpus} CPU(s) is below the {min_cpus} the {image_name} image needs",
                         hint=f"raise --vm-cpus (or vm_factory(cpus=...)) to at least {min_cpus}")


class Watch:
    """While a command runs in a guest, watch the guest: a kernel panic or a stopped domain ends the wait.

    A command in a guest whose kernel died never returns: the SSH connection goes to QEMU's
    forward, which stays open. Within the block a thread looks at the domain and at what the
    console printed since the block began, about once a second; when the guest is gone it calls
    ``cut`` (closes the connection, so the command returns) and leaving the block raises
    :class:`VMError` with the evidence, in place of whatever the cut connection raised.
    """

    def __init__(self, name: str, console: Callable[[], str], dom: Any, cut: Callable[[], None], *,
                 local: bool = True, interval: float = 1.0) -> None:
        self.name, self._console, self._dom, self._cut = name, console, dom, cut
        self._local, self._interval = local, interval
        self._stop = threading.Event()
        self._start = 0
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._watch, name=f"pytest-flake watch {name}", daemon=True)

    def _gone(self) -> str | None:
        panic = panic_in(self._console()[self._start:])
        if panic:
            return f"the guest's kernel failed: {panic}"
        try:
            active = self._dom is None or bool(self._dom.isActive())
        except Exception:  # libvirt restarting, say: not the guest's fault, and the command may still end
            return None
        return None if active else f"the guest stopped ({domain_state(self._dom)})"

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            failure = self._gone()
            if failure is not None:
                self.failure = failure
                with contextlib.suppress(Exception):
                    self._cut()
                return

    def __enter__(self) -> Watch:
        self._start = len(self._console())
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.failure is not None:
            raise VMError(f"vm://{self.name}: {self.failure} while a command ran",
                          hint="the console shows why (a guest short of memory panics too: raise --vm-memory)",
                          details=evidence(self.name, self._console(), self._dom, local=self._local)) from exc
