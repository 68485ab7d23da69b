"""What every guest offers (a VM, a systemd container), and the NixOS-test style commands on top.

:class:`Guest` is the typed protocol a machine implements: ``name``, ``run(cmd)`` (a result
with ``rc``, ``stdout``, ``stderr``), ``copy_to``, ``copy_from``, ``forward(port) -> int``,
``url(port, path)``, ``journal(unit=None, lines=200)`` and ``host`` (a testinfra Host).

:class:`GuestCommands` is a mixin that builds, on ``run()`` alone, the commands people who
come from NixOS tests expect::

    vm.succeed("systemctl is-system-running --wait")     # -> stdout, or CheckFailed
    vm.fail("test -e /etc/shadow-")                       # -> stdout, or CheckFailed
    vm.wait_until_succeeds("curl -sf localhost:8080")     # retried until --flake-timeout
    vm.wait_for_unit("web-server.service")                # fails at once if the unit failed
    vm.wait_for_open_port(8080)                           # listening inside the guest
    vm.journal("web-server.service", lines=50)

Every failure is a :class:`~pytest_flake.errors.CheckFailed` carrying ``rc``, ``stdout``,
``stderr`` and the journal tail; a wait that runs out of time is a
:class:`~pytest_flake.errors.CheckTimeout` (a ``CheckFailed`` and a ``FlakeTimeout``). Every
wait goes through :func:`pytest_flake.waiting.wait_for`; ``timeout=None`` means the guest's
``wait_timeout`` (the session's ``--flake-timeout``). This module never imports pytest.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import CheckFailed, CheckTimeout, FlakeTimeout, GiveUp, tail
from .waiting import NotReady, wait_for

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
JOURNAL_TAIL = 30  # journal lines a failure carries

Command = str | Sequence[str]


@runtime_checkable
class CommandResult(Protocol):
    """What ``run()`` returns (testinfra's ``CommandResult`` is one)."""

    @property
    def rc(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


@runtime_checkable
class Guest(Protocol):
    """A machine tests talk to: a VM today, a systemd container next."""

    name: str

    def run(self, cmd: str) -> CommandResult:
        """Run a shell command as root (implementations may also take an argv list)."""
        ...

    def copy_to(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a file or folder from this machine into the guest."""
        ...

    def copy_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or folder from the guest to this machine."""
        ...

    def forward(self, guest_port: int) -> int:
        """Publish ``guest_port`` on a 127.0.0.1 port of this machine; returns that port."""
        ...

    def url(self, guest_port: int, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` for a guest port."""
        ...

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        """The guest's journal (of ``unit`` when given), the last ``lines`` lines."""
        ...

    @property
    def host(self) -> Any:
        """A testinfra Host on the guest."""
        ...


def as_command(cmd: Command) -> str:
    """A shell command line: a string as is, a list quoted with :func:`shlex.join`."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _section(title: str, text: str, lines: int = 25) -> str:
    text = tail(text, lines)
    return f"\n--- {title}:\n{text}" if text.strip() else f"\n--- {title}: (empty)"


class GuestCommands:
    """NixOS-test style commands on top of ``run()``; mix into a guest class.

    The class it is mixed into provides ``name`` and ``run(cmd)``; it may override
    :attr:`wait_timeout` (the default ``timeout`` of every wait) and :meth:`journal`.
    """

    name: str

    def run(self, cmd: str) -> CommandResult:  # provided by the guest class
        raise NotImplementedError

    @property
    def wait_timeout(self) -> float:
        """Default ``timeout`` of the waits, in seconds (the session's ``--flake-timeout``)."""
        return DEFAULT_TIMEOUT

    # -- evidence --------------------------------------------------------------------------
    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        """``journalctl`` of the guest (of ``unit`` when given): the last ``lines`` lines."""
        argv = ["journalctl", "--no-pager", "--boot", "-o", "short-monotonic", f"--lines={int(lines)}"]
        if unit:
            argv += ["-u", unit]
        result = self.run(shlex.join(argv))
        return _text(result.stdout) + _text(result.stderr if result.rc != 0 else "")

    def _journal_tail(self, unit: str | None = None) -> str:
        try:
            return self.journal(unit, lines=JOURNAL_TAIL)
        except Exception as exc:  # evidence must never hide the failure
            return f"(could not read the journal: {exc})"

    def _failed(self, what: str, result: CommandResult | None, *, unit: str | None = None,
                timeout: FlakeTimeout | None = None) -> CheckFailed:
        journal = self._journal_tail(unit)
        rc = None if result is None else int(result.rc)
        stdout = "" if result is None else _text(result.stdout)
        stderr = "" if result is None else _text(result.stderr)
        message = f"guest {self.name}: {what}"
        if result is not None:
            message += _section("stdout", stdout) + _section("stderr", stderr)
        message += _section(f"journal{' of ' + unit if unit else ''} (last lines)", journal, JOURNAL_TAIL)
        if timeout is not None:
            return CheckTimeout(message, rc=rc, stdout=stdout, stderr=stderr, journal=journal)
        return CheckFailed(message, rc=rc, stdout=stdout, stderr=stderr, journal=journal)

    def _timeout(self, timeout: float | None) -> float:
        return float(self.wait_timeout if timeout is None else timeout)

    # -- commands --------------------------------------------------------------------------
    def succeed(self, cmd: Command) -> str:
        """Run ``cmd``; its stdout if it exits 0, else :class:`CheckFailed` with rc, output and journal."""
        __tracebackhide__ = True
        command = as_command(cmd)
        result = self.run(command)
        if result.rc != 0:
            raise self._failed(f"'{command}' failed with exit code {result.rc}", result)
        return _text(result.stdout)

    def fail(self, cmd: Command) -> str:
        """Run ``cmd``, which must fail: its stdout if it exits non-zero, else :class:`CheckFailed`."""
        __tracebackhide__ = True
        command = as_command(cmd)
        result = self.run(command)
        if result.rc == 0:
            raise self._failed(f"'{command}' succeeded but should have failed", result)
        return _text(result.stdout)

    def wait_until_succeeds(self, cmd: Command, timeout: float | None = None) -> str:
        """Retry ``cmd`` until it exits 0 (stdout) or ``timeout`` passes (:class:`CheckTimeout`)."""
        __tracebackhide__ = True
        command = as_command(cmd)
        last: list[CommandResult] = []

        def probe() -> str:
            result = self.run(command)
            if result.rc != 0:
                last[:] = [result]
                raise NotReady(f"exit code {result.rc}: {tail(_text(result.stderr) or _text(result.stdout), 3)}")
            return _text(result.stdout)

        try:
            return wait_for(probe, what=f"guest {self.name}: '{command}'", timeout=self._timeout(timeout),
                            interval=0.5, max_interval=2.0)
        except FlakeTimeout as exc:
            raise self._failed(str(exc), last[0] if last else None, timeout=exc) from exc

    def wait_until_fails(self, cmd: Command, timeout: float | None = None) -> str:
        """Retry ``cmd`` until it exits non-zero (stdout) or ``timeout`` passes."""
        __tracebackhide__ = True
        command = as_command(cmd)
        last: list[CommandResult] = []

        def probe() -> str:
            result = self.run(command)
            if result.rc == 0:
                last[:] = [result]
                raise NotReady("still succeeds")
            return _text(result.stdout)

        try:
            return wait_for(probe, what=f"guest {self.name}: '{command}' to fail", timeout=self._timeout(timeout),
                            interval=0.5, max_interval=2.0)
        except FlakeTimeout as exc:
            raise self._failed(str(exc), last[0] if last else None, timeout=exc) from exc

    def wait_for_unit(self, unit: str, timeout: float | None = None) -> None:
        """Wait until ``unit`` is active.

        Fails at once, with the unit's journal, when the unit failed, or when it is
        inactive with no job pending (nothing will start it), instead of waiting out the
        timeout. A unit that is not loaded yet (a portable image being attached) is waited for.
        """
        __tracebackhide__ = True
        if "." not in unit:
            unit += ".service"
        command = shlex.join(["sh", "-c", _UNIT_SCRIPT, "sh", unit])
        last: list[CommandResult] = []

        def probe() -> None:
            result = self.run(command)
            last[:] = [result]
            state = _parse_properties(_text(result.stdout))
            active = state.get("ActiveState", "")
            if active == "active":
                return
            if active == "failed":
                raise GiveUp(f"unit {unit} failed (Result={state.get('Result', '?')})")
            if active == "inactive" and state.get("LoadState") == "loaded" and not state.get("Jobs", "").strip():
                raise GiveUp(f"unit {unit} is inactive and no job will start it")
            raise NotReady(f"{unit}: ActiveState={active or '?'} SubState={state.get('SubState', '?')} "
                           f"LoadState={state.get('LoadState', '?')}")

        try:
            wait_for(probe, what=f"guest {self.name}: unit {unit} active", timeout=self._timeout(timeout),
                     interval=0.3, max_interval=1.0)
        except GiveUp as down:
            raise self._failed(str(down), last[0] if last else None, unit=unit) from None
        except FlakeTimeout as exc:
            raise self._failed(str(exc), last[0] if last else None, unit=unit, timeout=exc) from exc

    def wait_for_open_port(self, port: int, timeout: float | None = None) -> None:
        """Wait until something listens on TCP ``port`` inside the guest (any address)."""
        __tracebackhide__ = True
        pattern = f" [0-9A-F]+:{int(port):04X} [0-9A-F]+:0000 0A "
        command = shlex.join(["grep", "-Eq", pattern, "/proc/net/tcp", "/proc/net/tcp6"])
        last: list[CommandResult] = []

        def probe() -> None:
            result = self.run(command)
            if result.rc != 0:
                last[:] = [result]
                raise NotReady(f"nothing listens on port {port}")

        try:
            wait_for(probe, what=f"guest {self.name}: port {port} open", timeout=self._timeout(timeout),
                     interval=0.3, max_interval=1.0)
        except FlakeTimeout as exc:
            raise self._failed(str(exc), last[0] if last else None, timeout=exc) from exc

    def wait_for_closed_port(self, port: int, timeout: float | None = None) -> None:
        """Wait until nothing listens on TCP ``port`` inside the guest."""
        __tracebackhide__ = True
        pattern = f" [0-9A-F]+:{int(port):04X} [0-9A-F]+:0000 0A "
        command = shlex.join(["grep", "-Eq", pattern, "/proc/net/tcp", "/proc/net/tcp6"])

        def probe() -> None:
            if self.run(command).rc == 0:
                raise NotReady(f"port {port} still listens")

        try:
            wait_for(probe, what=f"guest {self.name}: port {port} closed", timeout=self._timeout(timeout),
                     interval=0.3, max_interval=1.0)
        except FlakeTimeout as exc:
            raise self._failed(str(exc), None, timeout=exc) from exc


def _parse_properties(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    jobs: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if key == "Job" and sep:
            jobs.append(value)
        elif sep and key not in props:
            props[key] = value
    props["Jobs"] = "\n".join(j for j in jobs if j.strip())
    return props


# $1: the unit. systemctl show's states, then one Job= line per job queued for the unit
_UNIT_SCRIPT = (
    'systemctl show -p ActiveState -p SubState -p LoadState -p Result "$1"; '
    'systemctl list-jobs --no-legend --no-pager 2>/dev/null | while read -r id unit rest; do '
    '[ "$unit" = "$1" ] && echo "Job=$id $rest"; done; true'
)
