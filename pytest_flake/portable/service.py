"""A portable service in a guest: copy the image in, attach, reattach, detach.

What would be done by hand::

    scp result/web-server_1.0.raw vm:/root/
    ssh vm portablectl attach --now --runtime /root/web-server_1.0.raw
    ssh vm systemctl status web-server.service
    ssh vm portablectl reattach --now --runtime /root/web-server_1.1.raw

:class:`PortableService` drives ``portablectl`` in a guest through any object with
``run(command) -> result`` (``.rc``, ``.stdout``, ``.stderr``) and
``copy_to(local, remote)``: the :class:`~pytest_flake.vm.VM` of the ``vm`` fixture.
Attachments are ``--runtime`` by default: nothing persists across a reboot of the guest.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Protocol

from ..errors import CheckFailed, GiveUp, PortableError, tail
from ..waiting import NotReady, wait_for
from .image import PortableImage, squash_directory
from .units import parse_environment

log = logging.getLogger(__name__)

REMOTE_DIR = "/root"
PORTABLECTL_HINT = ("install systemd-container in the guest (Debian/Ubuntu: apt-get install systemd-container; "
                    "Fedora: dnf install systemd-container; Arch ships it in systemd)")


class Guest(Protocol):
    """What a portable service needs of a machine: a name, run a command, copy a file in."""

    name: str

    def run(self, cmd: str) -> Any: ...  # named as in pytest_flake.guest.Guest, which every guest implements

    def copy_to(self, local: Path | str, remote: str) -> Any: ...


DEFAULT_SETTLE = 1.0  # seconds a service must stay up in a guest that does not say otherwise


class PortableService:
    """A portable service image attached in a guest with ``portablectl``.

    Use as a context manager (or through the ``portable_service`` fixture): entering
    copies the image in, attaches it with ``--now`` (``--runtime`` unless
    ``runtime=False``) and waits until its units are active; leaving detaches it and
    removes the copied files, whatever happened before.

    ``settle`` is how long a service must stay up after its program was executed to count
    as running (a program that fails right after its exec shows up within that time). By
    default the guest says (its ``settle`` attribute): a guest at native speed (a systemd
    container) needs a tenth of a second, an emulated one (a VM under TCG) about a second.
    """

    def __init__(self, guest: Guest, image: PortableImage | Path | str, *, profile: str = "default",
                 runtime: bool = True, timeout: float = 60.0, remote_dir: str = REMOTE_DIR,
                 resolve: Callable[[str], Path] | None = None, settle: float | None = None) -> None:
        self.guest = guest
        self.settle = float(getattr(guest, "settle", DEFAULT_SETTLE)) if settle is None else settle
        self._resolve = resolve
        self.image = self._open(image)
        self.profile = profile
        self.runtime = runtime
        self.timeout = timeout
        self.remote_dir = remote_dir
        self.attached = False
        self._copied: list[str] = []

    def _open(self, image: PortableImage | Path | str) -> PortableImage:
        """An image from a PortableImage, a path, or (with ``resolve``) a flake attribute."""
        if isinstance(image, PortableImage):
            return image
        if isinstance(image, str) and self._resolve is not None and not Path(image).exists():
            image = self._resolve(image)
        return PortableImage.open(image)

    # -- names ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """``web-server_1.0``: the image name, as portablectl lists it."""
        return self.image.name

    @property
    def prefix(self) -> str:
        """``web-server``: the prefix its unit names start with."""
        return self.image.prefix

    @property
    def units(self) -> list[str]:
        """The unit names attached from the image (``web-server.service``...)."""
        return self.image.units

    @property
    def remote_path(self) -> str:
        """Where the image lies in the guest: ``/root/NAME_VERSION.raw``, whatever its shape.

        Only in a guest without loop devices (a container not given the host's) is a
        directory image copied in as the tree ``/root/NAME_VERSION``: nothing else attaches there.
        """
        return self._remote_for(self.image)

    def _loopless(self) -> bool:
        """Whether the guest says it cannot mount a ``.raw`` (it has no loop devices)."""
        return getattr(self.guest, "loop_devices", True) is False

    def _remote_for(self, image: PortableImage) -> str:
        if self._loopless() and image.kind == "directory":
            return f"{self.remote_dir}/{image.name}"
        return f"{self.remote_dir}/{image.name}.raw"

    @property
    def portable(self) -> str:
        """The ``PORTABLE`` value the units see (the image file name)."""
        return PurePosixPath(self.remote_path).name

    # -- guest commands ---------------------------------------------------------------------
    def _run(self, argv: Sequence[str]) -> Any:
        command = shlex.join(argv)
        log.debug("guest $ %s", command)
        return self.guest.run(command)

    def _check(self, argv: Sequence[str], what: str) -> str:
        result = self._run(argv)
        if result.rc != 0:
            raise PortableError(f"{what}: '{shlex.join(argv)}' failed with exit code {result.rc}",
                                details=tail((result.stdout or "") + (result.stderr or "")))
        return str(result.stdout)

    def _flags(self) -> list[str]:
        flags = ["--now", f"--profile={self.profile}"]
        if self.runtime:
            flags.append("--runtime")
        return flags

    def _copy(self, image: PortableImage) -> str:
        """Copy the image in as ``NAME_VERSION.raw``; a directory image is squashed here first,
        so the units see ``PORTABLE=NAME_VERSION.raw`` whatever shape the image had."""
        remote = self._remote_for(image)
        if self._loopless():
            if image.kind != "directory":
                raise PortableError(
                    f"{self.guest.name} has no loop devices, so {image.name}.raw cannot be attached there",
                    hint="attach a directory image (the image's tree), or run the guest as root, where the host's "
                         "/dev/loop-control and /dev/loop* are bound in")
            self.guest.copy_to(image.path, remote)  # a directory image needs no loop device: copied as it is
        elif image.kind == "directory":
            with tempfile.TemporaryDirectory(prefix="pf-portable-") as tmp:
                raw = squash_directory(image.path, Path(tmp) / f"{image.name}.raw")
                self.guest.copy_to(raw, remote)
        else:
            self.guest.copy_to(image.path, remote)
        self._copied.append(remote)
        return remote

    def _lifecycle(self, verb: str, remote: str, name: str, old: str = "") -> dict[str, Observation]:
        """One guest command for a whole step (each SSH round trip costs 0.2-0.5 s in an emulated guest).

        It checks that portablectl is there, runs ``portablectl VERB --now`` (and, only if that
        failed, ``systemd-dissect`` on the image to say why), removes ``old`` once that worked,
        waits in the guest until each service's main process runs its program (or failed), then
        looks again ``settle`` seconds later. Returns the looks by name (``before``, ``state``, ``settled``).
        """
        services = self._services()
        poll = _poll_interval(self.settle)
        limit = max(1, int(min(self.timeout, _GUEST_WAIT_LIMIT)))
        argv = ["sh", "-c", _LIFECYCLE_SCRIPT, "sh", verb, remote, name, old, self.profile,
                "yes" if self.runtime else "", f"{self.settle:g}", f"{poll:g}", str(limit), *services]
        result = self._run(argv)
        out = str(result.stdout or "")
        steps, snapshots = _parse_lifecycle(out)
        if result.rc != 0:
            failed = steps[-1] if steps else verb
            details = tail("\n".join(line for line in out.splitlines() if not line.startswith("Step="))
                           + (result.stderr or ""))
            if failed == "portablectl":
                raise PortableError("the guest has no portablectl", hint=PORTABLECTL_HINT)
            if failed == "dissect":
                raise PortableError(f"systemd-dissect cannot read {remote} (exit code {result.rc})",
                                    hint="the image is damaged or of a kind this guest's systemd cannot mount",
                                    details=details)
            command = shlex.join(["portablectl", verb, *self._flags(), remote])
            what = f"attach {self.name}" if verb == "attach" else f"reattach {self.name} to {name}"
            raise PortableError(f"{what}: '{command}' failed with exit code {result.rc}", details=details)
        return snapshots

    # -- lifecycle ----------------------------------------------------------------------------
    def attach(self) -> PortableService:
        """Copy the image in, ``portablectl attach --now`` it, wait until its units are active.

        Two exchanges with the guest: the copy, then one command that checks, attaches and
        waits in the guest (see :meth:`_lifecycle`); more state polls only if that wait was not enough.
        """
        remote = self._copy(self.image)
        started = time.monotonic()
        snapshots = self._lifecycle("attach", remote, self.name)
        self.attached = True
        self._wait_running(self.name, seen=snapshots, since=started)
        return self

    def reattach(self, image: PortableImage | Path | str) -> PortableService:
        """Upgrade in place: copy ``image`` in, ``portablectl reattach --now``, wait for the new units."""
        new = self._open(image)
        if new.prefix != self.prefix:
            raise PortableError(f"cannot reattach {self.name} to {new.name}: the prefixes differ "
                                f"({self.prefix} and {new.prefix})", hint="detach it and attach the other image")
        old_remote = self.remote_path
        remote = self._copy(new)
        started = time.monotonic()
        snapshots = self._lifecycle("reattach", remote, new.name, old_remote if old_remote != remote else "")
        if old_remote != remote and old_remote in self._copied:
            self._copied.remove(old_remote)  # removed in the guest once the reattach worked
        before = {unit: _int(state.get("ExecMainStartTimestampMonotonic"))
                  for unit, state in snapshots.get("before", Observation()).units.items()}
        self.image = new
        self._wait_running(new.name, restarted_after=before, seen=snapshots, since=started)
        return self

    def detach(self) -> None:
        """``portablectl detach --now``; the units stop and disappear."""
        if not self.attached:
            return
        self._check(["portablectl", "detach", "--now", *(["--runtime"] if self.runtime else []), self.remote_path],
                    f"detach {self.name}")
        self.attached = False

    def close(self) -> None:
        """Detach if attached and remove the copied files (one guest command); idempotent, never raises twice."""
        if self.attached:
            copied, self._copied = self._copied, []
            try:
                result = self._run(["sh", "-c", _DETACH_SCRIPT, "sh", "yes" if self.runtime else "", self.remote_path,
                                    *copied])
                if result.rc != 0:
                    log.warning("pytest-flake: could not detach %s: exit code %s: %s", self.name, result.rc,
                                tail((result.stdout or "") + (result.stderr or "")))
            except Exception as exc:
                log.warning("pytest-flake: could not detach %s or remove %s: %s", self.name, " ".join(copied), exc)
            self.attached = False
            return
        while self._copied:
            remote = self._copied.pop()
            try:
                self._run(["rm", "-rf", remote])
            except Exception as exc:
                log.warning("pytest-flake: could not remove %s from the guest: %s", remote, exc)

    def __enter__(self) -> PortableService:
        try:
            return self.attach()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------------
    def attached_state(self, name: str | None = None) -> str:
        """``portablectl is-attached``: ``running-runtime``, ``attached``, ``detached``..."""
        result = self._run(["portablectl", "is-attached", name or self.name])
        return str(result.stdout).strip() or "detached"

    def _services(self) -> list[str]:
        return [u for u in self.units if u.endswith(".service") and "@." not in u]

    def _states(self, name: str, units: Sequence[str]) -> Observation:
        """In one guest command: ``portablectl is-attached name`` and, per unit, ActiveState,
        MainPID, InvocationID, ExecMainStartTimestampMonotonic and its main process's Comm."""
        result = self._run(["sh", "-c", _STATE_SCRIPT, "sh", name, *units])
        return _parse_states(str(result.stdout).splitlines())

    def _wait_running(self, name: str, restarted_after: dict[str, int] | None = None,
                      seen: dict[str, Observation] | None = None, since: float | None = None) -> None:
        """Wait until the image is attached and each service runs its own program, and stays up.

        ``active`` alone is not enough: a simple service is active from the fork on, while
        systemd still sets up its mounts and before its program is even executed (the
        process is then called ``(name)``). So a service counts as running once its main
        process has executed its program and the same invocation is still up ``settle``
        seconds later. ``seen``: the snapshots the guest took in the step's own command
        (``state``, then ``settled`` ``settle`` seconds later); when they already show that,
        no further guest command is needed. ``since``: when the wait began (``timeout`` counts from there).
        """
        services = self._services()
        first_seen: dict[str, tuple[str, str, float]] = {}  # unit -> (invocation, main pid, when)

        def judge(observation: Observation, now: float) -> None:
            for unit in services:  # a failed unit leaves the image "attached", not "running"
                if observation.units.get(unit, {}).get("ActiveState") == "failed":
                    raise GiveUp(unit)
            finished = all(_oneshot_done(observation.units.get(unit, {})) for unit in services)
            if observation.attached is not None and not observation.attached.startswith("running") and not finished:
                raise NotReady(f"portablectl is-attached {name}: {observation.attached}")
            for unit in services:
                unit_state = observation.units.get(unit, {})
                active = unit_state.get("ActiveState", "")
                if _oneshot_done(unit_state):
                    continue  # a oneshot that ran and exited 0 is done, not down
                if active != "active":
                    raise NotReady(f"{unit} is {active or 'unknown'}")
                stamp = _int(unit_state.get("ExecMainStartTimestampMonotonic"))
                if restarted_after and stamp <= restarted_after.get(unit, -1):
                    raise NotReady(f"{unit} still runs from the old image")
                pid = unit_state.get("MainPID", "0")
                if pid != "0" and unit_state.get("Comm", "").startswith("("):
                    raise NotReady(f"{unit}: systemd is still setting up its process {pid}")
                invocation = (unit_state.get("InvocationID", ""), pid)
                first = first_seen.get(unit)
                if first is None or first[:2] != invocation:
                    first_seen[unit] = (*invocation, now)
                    raise NotReady(f"{unit} started (pid {pid}); checking that it stays up")
                if now - first[2] < self.settle:
                    raise NotReady(f"{unit} up for {now - first[2]:.1f}s")

        try:
            if seen and "state" in seen:
                # the guest took "state", slept settle seconds, then took "settled": both count as seen
                # at most that long ago (the host's clock goes on at least as long as the guest slept;
                # 1 ms less only keeps the subtraction's rounding from calling it short)
                now = time.monotonic()
                try:
                    with contextlib.suppress(NotReady):
                        judge(seen["state"], now - self.settle - 0.001)
                    if "settled" in seen:
                        judge(seen["settled"], now)
                        return
                except NotReady:
                    pass
            interval = _poll_interval(self.settle)
            left = self.timeout - (time.monotonic() - since if since is not None else 0.0)
            wait_for(lambda: judge(self._states(name, services), time.monotonic()),
                     what=f"portable service {name} running", timeout=max(left, 2 * interval),
                     interval=interval, max_interval=min(0.5, max(self.settle / 2, 0.02)), on_timeout=self.status)
        except GiveUp as failed:
            unit = str(failed)
            raise CheckFailed(f"{unit} of portable service {name} failed to start\n"
                              f"{self.status(unit)}\n{self.journal(unit)}") from None

    def is_active(self, unit: str | None = None) -> bool:
        """Whether ``unit`` (default: every service of the image) is active."""
        units = [unit] if unit else self._services()
        if not units:
            return False
        return all(str(self._run(["systemctl", "is-active", u]).stdout).strip() == "active" for u in units)

    def status(self, unit: str | None = None) -> str:
        """``systemctl status`` of ``unit`` (default: the image's units)."""
        units = [unit] if unit else self.units
        result = self._run(["systemctl", "status", "--no-pager", "--full", "--lines=20", *units])
        return str(result.stdout) + str(result.stderr or "")

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        """The journal of the image's units: systemd's messages and the service's output."""
        units = [unit] if unit else self.units
        argv = ["journalctl", "--no-pager", "--boot", "-o", "short-monotonic", f"--lines={lines}"]
        for u in units:
            argv += ["-u", u]
        result = self._run(argv)
        return str(result.stdout)

    def image_journal(self, lines: int = 200) -> str:
        """Only what this image version logged (the ``PORTABLE=`` journal field)."""
        result = self._run(["journalctl", "--no-pager", "--boot", "-o", "cat", f"--lines={lines}",
                            f"PORTABLE={self.portable}"])
        return str(result.stdout)

    def environment(self, unit: str | None = None) -> dict[str, str]:
        """The ``Environment=`` a unit runs with, as systemd reports it (``PORTABLE``...)."""
        target = unit or self._services()[0]
        result = self._run(["systemctl", "show", "-P", "Environment", target])
        return parse_environment(str(result.stdout))

    def inspect(self) -> str:
        """``portablectl inspect`` of the attached image: os-release and unit files."""
        return self._check(["portablectl", "inspect", "--no-pager", self.remote_path], f"inspect {self.name}")

    def __repr__(self) -> str:
        return f"<PortableService {self.name} units={self.units} attached={self.attached}>"


_GUEST_WAIT_LIMIT = 30.0  # seconds the step's own command waits in the guest for the programs; then host polls


def _oneshot_done(state: dict[str, str]) -> bool:
    """A ``Type=oneshot`` unit that ran and exited 0: ``portablectl attach --now`` returns once its start job is
    done, and a oneshot that then is ``inactive`` with ``Result=success`` ended well (systemd may already have
    unloaded it, so nothing but the journal says that it ran; one that failed stays loaded, ``failed``)."""
    return (state.get("Type") == "oneshot" and state.get("ActiveState") == "inactive"
            and state.get("Result") == "success")


def _poll_interval(settle: float) -> float:
    """Polls scale with the settle time: every 0.2 s in an emulated VM (settle 1 s), 25 ms in a container."""
    return min(0.2, max(settle / 4, 0.01))


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass
class Observation:
    """One look at an image in the guest: ``portablectl is-attached``, and systemd's view of each unit."""

    attached: str | None = None  # None: not looked at (a step's own command knows from portablectl's exit code)
    units: dict[str, dict[str, str]] = field(default_factory=dict)


def _parse_states(lines: Sequence[str]) -> Observation:
    observation = Observation()
    current: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "Attached":
            observation.attached = value.strip() or "detached"
        elif key == "Unit":
            current = observation.units.setdefault(value, {})
        elif key:
            current[key] = value
    return observation


def _parse_lifecycle(out: str) -> tuple[list[str], dict[str, Observation]]:
    """The steps a lifecycle command reached (``Step=`` lines) and the snapshots it took, by step name."""
    steps: list[str] = []
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("Step="):
            steps.append(line.removeprefix("Step=").strip())
            lines[steps[-1]] = []
        elif steps:
            lines[steps[-1]].append(line)
    snapshots: dict[str, Observation] = {
        step: _parse_states(lines[step]) for step in ("before", "state", "settled") if step in lines}
    return steps, snapshots


# $1 is the image name, the other arguments unit names: prints Attached=, then per unit
# Unit=, systemctl show's key=value lines, and Comm= of its main process
_STATE_SCRIPT = (
    'echo "Attached=$(portablectl is-attached "$1")"; shift; '
    'for unit; do echo "Unit=$unit"; '
    'systemctl show -p ActiveState -p MainPID -p InvocationID -p ExecMainStartTimestampMonotonic -p Type -p Result '
    '"$unit"; '
    'pid=$(systemctl show -P MainPID "$unit"); '
    'if [ "${pid:-0}" -gt 0 ]; then echo "Comm=$(cat "/proc/$pid/comm" 2>/dev/null)"; fi; done'
)

# A whole attach or reattach in one guest command. $1 attach|reattach, $2 the image in the guest, $3 its name,
# $4 a file to remove once that worked ("" none), $5 the profile, $6 "yes" for --runtime, $7 settle seconds,
# $8 the poll interval, $9 how many seconds to wait at most; then the service units. Prints Step=NAME before each step
# (on failure the last one names it; the exit code is the failed command's) and the units' states (as
# _STATE_SCRIPT prints them, without Attached=: portablectl's exit code said that) under Step=before
# (reattach), Step=state once every main process runs its program (or one failed, or time ran out)
# and, if they all run, Step=settled after settle seconds more. In an emulated guest each process costs
# 0.1-0.3 s: one systemctl a unit a look, the rest is the shell's own (read, parameter expansion), and
# systemd-dissect runs only to explain a failed attach.
_LIFECYCLE_SCRIPT = (
    "nl='\n'; "
    'look() { s=$(systemctl show -p ActiveState -p MainPID -p InvocationID -p ExecMainStartTimestampMonotonic '
    '-p Type -p Result "$1"); '
    'seen="${seen}Unit=$1$nl$s$nl"; s="$nl$s$nl"; '
    'active=${s#*"${nl}ActiveState="}; active=${active%%"$nl"*}; '
    'inv=${s#*"${nl}InvocationID="}; inv=${inv%%"$nl"*}; '
    'pid=${s#*"${nl}MainPID="}; pid=${pid%%"$nl"*}; comm=""; '
    'done1=""; case "$active$s" in inactive*"${nl}Type=oneshot$nl"*) case "$s" in *"${nl}Result=success$nl"*) '
    'done1=yes;; esac;; esac; '
    'if [ "${pid:-0}" -gt 0 ] 2>/dev/null; then read -r comm 2>/dev/null < "/proc/$pid/comm"; '
    'seen="${seen}Comm=$comm$nl"; fi; }; '
    'running() { seen=""; for u; do look "$u"; '
    '[ "$active" = failed ] && return 2; [ -n "$done1" ] && continue; [ "$active" = active ] || return 1; '
    'case "$before" in *" $u=$inv "*) return 1;; esac; case "$comm" in "("*) return 1;; esac; '
    'done; return 0; }; '
    'verb=$1 image=$2 name=$3 old=$4 profile=$5 runtime=$6 settle=$7 poll=$8 limit=$9; shift 9; '
    'echo Step=portablectl; command -v portablectl >/dev/null 2>&1 || exit 127; '
    'before=" "; if [ "$verb" = reattach ]; then seen=""; '
    'for u; do look "$u"; before="$before$u=$inv "; done; echo Step=before; printf %s "$seen"; fi; '
    'echo "Step=$verb"; portablectl "$verb" --now "--profile=$profile" ${runtime:+--runtime} "$image" >&2 || '
    '{ rc=$?; if command -v systemd-dissect >/dev/null 2>&1; then echo Step=dissect; '
    'systemd-dissect --no-pager "$image" >&2 || exit; echo "Step=$verb"; fi; exit $rc; }; '
    'if [ -n "$old" ]; then rm -rf -- "$old"; fi; '
    'read -r up _ < /proc/uptime; end=$((${up%.*} + limit)); '
    'while :; do running "$@"; r=$?; [ $r -ne 1 ] && break; '
    'read -r up _ < /proc/uptime; [ "${up%.*}" -ge $end ] && break; '
    'sleep "$poll"; done; '
    'echo Step=state; printf %s "$seen"; '
    'if [ $r -eq 0 ]; then sleep "$settle"; seen=""; for u; do look "$u"; done; echo Step=settled; '
    'printf %s "$seen"; fi; exit 0'
)

# $1 "yes" for --runtime, $2 the attached image, then the files to remove: detach, remove, exit as detach did
_DETACH_SCRIPT = ('portablectl detach --now ${1:+--runtime} "$2" >&2; rc=$?; shift 2; '
                  '[ $# -eq 0 ] || rm -rf -- "$@"; exit $rc')
