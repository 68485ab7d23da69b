"""A systemd container: boot with systemd-nspawn, run commands with nsenter, copy files in and out.

How it is started (:class:`SystemdContainer`, :class:`ContainerPool`) is kept apart from how one
talks to it (:meth:`SystemdContainer.run`, the testinfra backend :class:`NsenterBackend`). Facts
of these machines it relies on: nspawn runs where PID 1 is not systemd only with
``--register=no --keep-unit``; ``nsenter -t LEADER -a`` enters the container (LEADER: its
systemd); ``portablectl attach`` of a ``.raw`` needs the host's loop devices bound in and
``--capability=all`` (:mod:`.loops` puts the host's devices back afterwards).

Each container boots a throwaway copy-on-write copy of its tree in
``<session dir>/nspawn/<name>/`` (``name`` carries the session id, and the nspawn pid is
recorded there), so :mod:`.maintenance` can sweep what a killed session left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NspawnError, UsageError, tail
from ..guest import GuestCommands
from ..images import Tree, image_cache
from ..session import start_time
from ..waiting import NotReady, wait_for
from . import cgroups, loops
from .relay import NetnsSockets, Relay
from .trees import drop_copy, resolve_tree, writable_copy

if TYPE_CHECKING:
    from testinfra.backend.base import CommandResult
    from testinfra.host import Host

    from ..session import Session

log = logging.getLogger(__name__)

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_TIMEOUT = 10.0
SUBDIR = "nspawn"  # under the session directory


def nspawn_argv(name: str, root: Path, devices: Sequence[Path]) -> list[str]:
    """The systemd-nspawn command line of a container (private network, loop devices bound in)."""
    argv = [
        "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
        f"--machine={name}", f"--directory={root}", "--private-network", "--capability=all",
        "--console=pipe", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
    ]
    if devices:
        argv += [f"--bind={device}" for device in (loops.DEV / "loop-control", *devices)]
    return argv


def enter_argv(leader: int, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` in every namespace of the container whose systemd is ``leader``, as root, clean env."""
    return ["nsenter", "-t", str(leader), "-a", "--", "env", "-i", f"PATH={GUEST_PATH}", "HOME=/root",
            "USER=root", "LANG=C.UTF-8", "TERM=dumb", *argv]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class NsenterBackend:
    """A testinfra backend that runs commands in a container through nsenter (``nspawn://NAME``)."""

    @staticmethod
    def make(container: SystemdContainer) -> Any:
        from testinfra.backend.base import BaseBackend

        class _Backend(BaseBackend):  # type: ignore[misc]
            NAME = "nspawn"

            def __init__(self) -> None:
                super().__init__(f"nspawn://{container.name}")

            def get_pytest_id(self) -> str:
                return f"nspawn://{container.name}"

            def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
                cmd = self.get_command(command, *args)
                proc = container.exec(["/bin/sh", "-c", cmd])
                return self.result(proc.returncode, self.encode(cmd), proc.stdout, proc.stderr)

        return _Backend()


class SystemdContainer(GuestCommands):
    """One systemd container on a throwaway copy of an OS tree; a context manager.

    Same guest API as a VM: ``run(cmd)`` (testinfra ``CommandResult``), ``succeed``, ``fail``,
    ``wait_until_succeeds``, ``wait_for_unit``, ``wait_for_open_port``, ``journal``,
    ``copy_to``, ``copy_from``, ``forward(port) -> int`` and ``url(port, path)`` (a 127.0.0.1
    relay into the container's private network), ``host`` (testinfra). Entering boots it
    until ``systemctl is-system-running`` says running (cleaning up if that fails); leaving
    stops it and removes its copy. ``close()`` may be called more than once.
    """

    # How long a portable service must stay up after its exec to count as running: the
    # container runs at native speed, so a program that dies at start does so within ms.
    settle = 0.1

    def __init__(self, pool: ContainerPool, tree: Tree, name: str) -> None:
        self.pool = pool
        self.tree = tree
        self.name = name
        self.workdir = pool.workdir / name
        self.root: Path | None = None
        self.loop_devices = False
        self.cgroup: Path | None = None  # its own cgroup in the host's unified hierarchy (hybrid hosts)
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._sockets: NetnsSockets | None = None
        self._relays: dict[int, Relay] = {}
        self._host: Host | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.boot_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<SystemdContainer nspawn://{self.name} of {self.tree.name}>"

    def __enter__(self) -> SystemdContainer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lifecycle

    @property
    def leader(self) -> int:
        """The pid (on this host) of the container's systemd."""
        if self._leader is None:
            raise NspawnError(f"nspawn://{self.name} is not running")
        return self._leader

    def start(self) -> SystemdContainer:
        """Boot the container and wait until systemd reports the system running."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = writable_copy(self.tree, self.workdir)
        devices: list[Path] = []
        reason = loops.unavailable()
        if reason is None:
            devices = self.pool.loop_book.prepare()
            self.loop_devices = True
        else:
            log.warning("nspawn://%s: no loop devices (%s); only directory portable images will attach",
                        self.name, reason)
        extra = self.pool.cgroup_env(self.tree, f"nspawn://{self.name}")
        self.cgroup = cgroups.own_group(self.name)
        argv = nspawn_argv(self.name, self.root, devices)
        if self.pool.edit_command is not None:  # the pytest_flake_nspawn_command hook
            self.pool.edit_command(self.name, argv)
        argv = cgroups.wrap(argv, self.cgroup)
        log.debug("run: %s%s", "".join(f"{k}={v} " for k, v in extra.items()), shlex.join(argv))
        with open(self.workdir / "console.log", "wb") as console:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                          start_new_session=True, env={**os.environ, **extra})
        pid = self._proc.pid
        (self.workdir / "nspawn.pid").write_text(f"{pid} {start_time(pid)}")
        self._leader = wait_for(self._find_leader, what=f"nspawn://{self.name}: container init", interval=0.02,
                                max_interval=0.1, timeout=self.wait_timeout, on_timeout=self.console_log)
        wait_for(self._booted, what=f"nspawn://{self.name}: boot", interval=0.05, max_interval=0.1,
                 timeout=self.wait_timeout, on_timeout=self._boot_evidence)
        self._sockets = NetnsSockets(Path(f"/proc/{self._leader}/ns/net"), f"nspawn://{self.name}")
        self.boot_seconds = time.monotonic() - started
        log.info("nspawn://%s: %s booted in %.2fs", self.name, self.tree.name, self.boot_seconds)
        return self

    def _exited(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise NspawnError(f"nspawn://{self.name}: systemd-nspawn exited with {self._proc.returncode} while "
                              f"booting {self.tree.root}", details=tail(self.console_log(), 30))

    def _find_leader(self) -> int:
        self._exited()
        assert self._proc is not None
        for child in _children(self._proc.pid):
            if _comm(child) == "systemd":
                return child
        raise NotReady("the container's systemd has not started yet")

    def _booted(self) -> None:
        self._exited()
        proc = self.exec(["systemctl", "is-system-running"])
        state = proc.stdout.decode(errors="replace").strip()
        if state in ("running", "degraded"):
            if state == "degraded":
                log.warning("nspawn://%s: booted degraded: %s", self.name,
                            self.exec(["systemctl", "--failed", "--no-legend"]).stdout.decode(errors="replace").strip())
            return
        if state in ("maintenance", "stopping"):  # "offline": systemd is not answering on its socket yet
            raise NspawnError(f"nspawn://{self.name}: the system is {state} instead of running",
                              details=self._boot_evidence())
        raise NotReady(f"system {state or proc.stderr.decode(errors='replace').strip()}")

    def _boot_evidence(self) -> str:
        parts = [f"--- console of nspawn://{self.name}:\n{tail(self.console_log(), 30)}"]
        if self._leader is not None and self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                parts.append(f"--- jobs:\n{self.exec(['systemctl', 'list-jobs', '--no-pager']).stdout.decode()}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Power the container off (forcefully after ``STOP_TIMEOUT`` seconds)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
        try:
            proc.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            log.warning("nspawn://%s: did not halt in %gs; killing it", self.name, STOP_TIMEOUT)
        if self._leader is not None:
            with contextlib.suppress(OSError):
                os.kill(self._leader, signal.SIGKILL)  # the whole pid namespace goes with it
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the container, close its relays, remove its copy of the tree; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[str] = []
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()
        if self._sockets is not None:
            self._sockets.close()
        try:
            self.stop()
        except Exception as exc:
            errors.append(f"stop: {exc}")
        self._leader = None
        if not cgroups.remove_group(self.cgroup):
            errors.append(f"cgroup {self.cgroup} still has processes")
        try:
            drop_copy(self.workdir)
        except Exception as exc:
            errors.append(str(exc))
        self.pool.release(self)
        if errors:
            log.warning("pytest-flake: could not remove nspawn://%s cleanly: %s", self.name, "; ".join(errors))

    # ---- access

    def exec(self, argv: Sequence[str], *, stdin: Any = None, timeout: float | None = None
             ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` (no shell) in the container as root; the completed process, never raises on rc."""
        command = enter_argv(self.leader, argv)
        log.debug("nspawn://%s: %s", self.name, shlex.join(argv))
        return subprocess.run(command, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout or self.wait_timeout, check=False)

    @property
    def host(self) -> Host:
        """A testinfra Host on this container (commands through nsenter)."""
        if self._host is None:
            from testinfra.host import Host

            self._host = Host(NsenterBackend.make(self))
        return self._host

    def run(self, cmd: str | Sequence[str]) -> CommandResult:
        """Run a shell command as root in the container; a list is quoted for you."""
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        result: CommandResult = self.host.run(command)
        log.debug("nspawn://%s: %s -> %s", self.name, command, result.rc)
        return result

    @property
    def wait_timeout(self) -> float:
        """Default ``timeout`` of the waits: ``--flake-timeout``."""
        return float(self.pool.timeout)

    def forward(self, guest_port: int) -> int:
        """A 127.0.0.1 port on this host relayed to ``guest_port`` on the container's loopback."""
        if guest_port not in self._relays:
            if self._sockets is None:
                raise NspawnError(f"nspawn://{self.name} is not running")
            self._relays[guest_port] = Relay(self._sockets.socket, guest_port, f"nspawn://{self.name}")
        return self._relays[guest_port].port

    def url(self, guest_port: int, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` for a container port (relayed on first use)."""
        return f"http://127.0.0.1:{self.forward(guest_port)}/{path.lstrip('/')}"

    def _check(self, proc: subprocess.CompletedProcess[bytes], what: str) -> None:
        if proc.returncode != 0:
            raise NspawnError(f"nspawn://{self.name}: {what} failed with exit code {proc.returncode}",
                              details=tail((proc.stdout + proc.stderr).decode(errors="replace")))

    def copy_to(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a file or a folder (recursively) into the container; modes are kept, root owns them."""
        source = Path(local)
        quoted = shlex.quote(remote)
        if source.is_dir():
            with subprocess.Popen(["tar", "-C", str(source), "-cf", "-", "."], stdout=subprocess.PIPE) as tar:
                proc = self.exec(["sh", "-c", f"mkdir -p {quoted} && tar --no-same-owner -C {quoted} -xf -"],
                                 stdin=tar.stdout)
            self._check(proc, f"copy_to {source} {remote}")
            return
        if not source.is_file():
            raise UsageError(f"nspawn://{self.name}: copy_to: {source} does not exist")
        mode = f"{source.stat().st_mode & 0o7777:o}"
        with open(source, "rb") as handle:
            proc = self.exec(["sh", "-c", f"cat > {quoted} && chmod {mode} {quoted}"], stdin=handle)
        self._check(proc, f"copy_to {source} {remote}")

    def copy_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or a folder (recursively) out of the container; modes are kept."""
        target = Path(local)
        kind = self.exec(["sh", "-c", f"if [ -d {shlex.quote(remote)} ]; then echo d; "
                                      f"elif [ -e {shlex.quote(remote)} ]; then stat -c %a {shlex.quote(remote)}; fi"])
        answer = kind.stdout.decode().strip()
        if not answer:
            raise UsageError(f"nspawn://{self.name}: copy_from: {remote} does not exist in the container")
        if answer == "d":
            target.mkdir(parents=True, exist_ok=True)
            with subprocess.Popen(["tar", "-C", str(target), "-xf", "-"], stdin=subprocess.PIPE) as untar:
                proc = subprocess.run(enter_argv(self.leader, ["tar", "-C", remote, "-cf", "-", "."]),
                                      stdout=untar.stdin, stderr=subprocess.PIPE, check=False)
                assert untar.stdin is not None
                untar.stdin.close()
            if proc.returncode != 0 or untar.returncode != 0:
                raise NspawnError(f"nspawn://{self.name}: copy_from {remote} failed",
                                  details=proc.stderr.decode(errors="replace"))
            return
        proc = self.exec(["cat", remote])
        self._check(proc, f"copy_from {remote}")
        target.write_bytes(proc.stdout)
        target.chmod(int(answer, 8))

    def console_log(self) -> str:
        """What the container's systemd wrote to its console (the output of systemd-nspawn)."""
        try:
            return (self.workdir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def units_status(self) -> str:
        """``systemctl status`` of the portable units attached and of every failed unit."""
        script = ("units=$(ls /run/systemd/system.attached /etc/systemd/system.attached 2>/dev/null "
                  "| grep -E '\\.(service|socket|target|timer)$' | sort -u); "
                  "[ -z \"$units\" ] || systemctl --no-pager --full status $units; "
                  "systemctl --no-pager --failed")
        result = self.run(["sh", "-c", script])
        return f"{result.stdout}{result.stderr}"

    def enter_command(self) -> str:
        """A command line that opens a shell in this container (for --flake-keep)."""
        return shlex.join(["nsenter", "-t", str(self._leader), "-a", "/bin/bash", "-l"])

    def keep(self) -> None:
        """Leave the container running past the session (the next session sweeps it)."""
        with self._lock:
            self._closed = True
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()


class ContainerPool:
    """The containers of one session: OS trees, names, loop devices; closing it stops them all."""

    def __init__(self, session: Session, image: str = "debian", *, timeout: float = 120.0,
                 cache: Path | None = None, invocation_dir: Path | None = None,
                 edit_command: Callable[[str, list[str]], None] | None = None) -> None:
        self.session = session
        self.image = image
        self.timeout = timeout
        self.cache = cache or image_cache(session.root)
        self.invocation_dir = invocation_dir
        self.edit_command = edit_command  # edits each container's systemd-nspawn argv in place (name, argv)
        self.workdir = session.dir / SUBDIR
        self.loop_book = loops.LoopBook(self.workdir / "loops.json")
        self._trees: dict[str, Tree] = {}
        self._plans: dict[Path, cgroups.Plan] = {}
        self._running: list[SystemdContainer] = []
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> ContainerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tree(self, image: str | None = None) -> Tree:
        spec = image or self.image
        if spec not in self._trees:
            self._trees[spec] = resolve_tree(spec, self.cache, self.invocation_dir)
        return self._trees[spec]

    def cgroup_env(self, tree: Tree, what: str) -> dict[str, str]:
        """What systemd-nspawn's environment needs for the tree's systemd (:mod:`.cgroups`), once per tree."""
        with self._lock:
            plan = self._plans.get(tree.root)
            if plan is None:
                plan = self._plans[tree.root] = cgroups.plan(tree.root)
                log.info("nspawn: %s: %s", tree.name, plan.why)
        return cgroups.require(plan, what)

    def container(self, image: str | None = None) -> SystemdContainer:
        """A new (not yet started) container of ``image`` (default: the pool's)."""
        tree = self.tree(image)
        with self._lock:
            self._count += 1
            container = SystemdContainer(self, tree, self.session.name("nspawn", str(self._count)))
            self._running.append(container)
        return container

    def release(self, container: SystemdContainer) -> None:
        """Called by a closed container; the last one puts the host's loop devices back."""
        with self._lock:
            if container in self._running:
                self._running.remove(container)
            last = not self._running
        if last:
            self.loop_book.restore()

    def close(self) -> None:
        for container in list(self._running):
            try:
                container.close()
            except Exception as exc:  # one container's teardown must not hide the others
                log.warning("pytest-flake: could not remove nspawn://%s: %s", container.name, exc)
        self.loop_book.restore()
        if self.workdir.is_dir() and not any(self.workdir.iterdir()):
            shutil.rmtree(self.workdir, ignore_errors=True)

