"""SSH to another host: one master connection per host per session, and forwards over it.

Users reach another host the way they already do: their own ``~/.ssh/config``, agent and
``known_hosts``. :class:`SSHHost` runs the ``ssh`` binary (argv lists, ``BatchMode=yes``, so it
never asks for a password or a host key) as a ``ControlMaster`` whose control socket lives in
the session directory, and adds forwards to it with ``ssh -O forward``: a remote Docker
daemon's socket, a container's published port, a VM's forwarded port. Docker and libvirt on
the same host share one master (:func:`ssh_host`).

The master runs in the foreground in a process group of its own; its pid is recorded in the
session directory as ``<pid>.pid`` (the records of :mod:`pytest_flake.process`), so the
``process`` component's sweep ends the masters of a session that was killed; the ``ssh`` component
(:class:`SSHComponent`) then removes the control sockets they left. When ``ssh``
fails, :class:`~pytest_flake.errors.SSHError` names the host and the fix (host key unknown,
authentication refused, host unreachable). Never imports pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import SSHError, tail
from .session import start_time
from .waiting import NotReady, free_port, wait_for

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

SSH = "ssh"
# unix socket paths hold at most 107 bytes; ssh binds ``ControlPath`` plus a 17-byte random suffix first
MAX_SOCKET_PATH = 88


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _short_dir(directory: Path) -> Path:
    return Path(tempfile.gettempdir()) / f"pf-ssh-{_digest(str(directory.resolve()))}"


def remove_sockets(directory: Path) -> None:
    """Remove the sockets a killed session's masters left for ``directory`` in the temp dir (the sweep)."""
    shutil.rmtree(_short_dir(directory), ignore_errors=True)


def short_socket_path(directory: Path, name: str) -> Path:
    """``directory/name``, or, when that is too long for a unix socket, in a short folder of the temp dir.

    The folder (``pf-ssh-<hash of directory>``) is made by whoever binds there, and goes when empty.
    """
    path = directory / name
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    return _short_dir(directory) / name  # made (0700) by whoever binds there


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh binds: old connections do not count
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def parse_target(target: str) -> tuple[str | None, str, int | None]:
    """``"[user@]host[:port]"`` -> ``(user, host, port)``; a bad one is an :class:`SSHError`."""
    user, at, rest = target.rpartition("@")
    host, port = rest, None
    if rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        if not port_text.isdigit():
            raise SSHError(f"ssh target {target!r} has no port number after ':'",
                           hint="write [user@]host[:port], e.g. root@build-box:2222")
        port = int(port_text)
    if not host or (at and not user) or any(c.isspace() for c in target):
        raise SSHError(f"ssh target {target!r} names no host", hint="write [user@]host[:port], e.g. root@build-box")
    return (user or None), host.strip("[]"), port


def classify(host: str, stderr: str, code: int | None) -> SSHError:
    """A one-line :class:`SSHError` naming ``host`` and the fix, from what ``ssh`` wrote."""
    text = stderr.strip()
    last = tail(text, 1) or f"ssh exited with code {code}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        message, hint = (f"ssh to {host}: its host key changed",
                         f"if the change is expected, remove the old key with `ssh-keygen -R {host}` and connect once "
                         f"by hand")
    elif "Host key verification failed" in text or "No ED25519 host key is known" in text or \
            "host key is known" in text or "authenticity of host" in text:
        message, hint = (f"ssh to {host}: the host key is not known",
                         f"connect once by hand (`ssh {host}`) and accept the key, or add it to ~/.ssh/known_hosts; "
                         f"pytest-flake runs ssh with BatchMode=yes and never accepts a key itself")
    elif "Permission denied" in text or "Too many authentication failures" in text:
        message, hint = (f"ssh to {host}: authentication refused",
                         "load a key the host accepts (ssh-add, or IdentityFile in ~/.ssh/config; ssh-copy-id puts "
                         "it there); pytest-flake runs ssh with BatchMode=yes, so it cannot ask for a password")
    elif "Could not resolve hostname" in text:
        message, hint = (f"ssh to {host}: no such host name",
                         "check the name, or the Host alias in ~/.ssh/config")
    elif any(s in text for s in ("Connection refused", "timed out", "No route to host", "Network is unreachable",
                                 "Connection closed", "Connection reset")):
        message, hint = (f"ssh to {host}: the host is unreachable ({last})",
                         f"is sshd running there, and are the address and port right? `ssh -v {host} true` shows "
                         f"where it connects")
    else:
        message, hint = (f"ssh to {host} failed: {last}", f"try `ssh {host} true` by hand")
    return SSHError(message, hint=hint, details=text or None)


class SSHHost:
    """One SSH master connection to another host; its forwards end with it.

    ``target`` is ``"[user@]host[:port]"``; ``host`` may be an alias of ``~/.ssh/config``.
    ``identity`` (``-i``) and ``options`` (``-o KEY=VALUE`` each) add to the user's config.
    Nothing connects until :meth:`open` (which :meth:`forward` and :meth:`run` call).
    """

    def __init__(self, target: str, *, control_dir: Path, timeout: float = 30.0, identity: str | None = None,
                 options: Sequence[str] = ()) -> None:
        self.user, self.host, self.port = parse_target(target)
        self.target = target
        self.control_dir = Path(control_dir)
        self.timeout = timeout
        self.identity = identity
        self.options = list(options)
        key = _digest(target, identity or "", *self.options)
        self.control_path = short_socket_path(self.control_dir, f"ssh-{key}.ctl")
        self._key = key
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid_file: Path | None = None
        self._log: Path | None = None
        self._forwards: dict[int, tuple[int, str]] = {}  # remote port -> (local port, remote host)
        self._sockets: dict[str, Path] = {}  # remote path -> local socket
        self._previous: dict[int, int] = {}  # remote port -> the local port it had: a new forward takes it again
        self.open_seconds = 0.0

    @classmethod
    def from_url(cls, url: str, *, control_dir: Path, timeout: float = 30.0) -> SSHHost:
        """``ssh://user@host:22``, ``qemu+ssh://root@host/system?keyfile=K`` (``keyfile`` -> ``-i``).

        libvirt's ``known_hosts=FILE`` becomes ``UserKnownHostsFile``; ``no_verify=1``
        ``StrictHostKeyChecking=no``.
        """
        parts = urlsplit(url)
        if parts.scheme != "ssh" and not parts.scheme.endswith("+ssh"):
            raise SSHError(f"{url!r} is not an ssh URL", hint="use ssh://[user@]host[:port] or qemu+ssh://...")
        if not parts.hostname:
            raise SSHError(f"the URL {url!r} names no host", hint="use ssh://[user@]host[:port]")
        query = parse_qs(parts.query)
        options: list[str] = []
        if query.get("known_hosts"):
            options.append(f"UserKnownHostsFile={query['known_hosts'][-1]}")
        if query.get("no_verify", ["0"])[-1] == "1":
            options.append("StrictHostKeyChecking=no")
        target = (f"{unquote(parts.username)}@" if parts.username else "") + parts.hostname
        if parts.port:
            target += f":{parts.port}"
        keyfile = query.get("keyfile", [None])[-1]
        return cls(target, control_dir=control_dir, timeout=timeout, identity=keyfile, options=options)

    def __repr__(self) -> str:
        return f"SSHHost({self.target!r})"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _argv(self, *extra: str, master: bool = False) -> list[str]:
        argv = [SSH, "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-o", f"ConnectTimeout={max(1, int(self.timeout))}", "-S", str(self.control_path)]
        argv += ["-o", "ControlMaster=yes" if master else "ControlMaster=no"]
        if master:
            argv += ["-o", "ControlPersist=no", "-o", "StreamLocalBindUnlink=yes", "-o", "ServerAliveInterval=15"]
        for option in self.options:
            argv += ["-o", option]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity:
            argv += ["-i", self.identity]
        return [*argv, *extra]

    # the master
    @property
    def is_open(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def open(self) -> SSHHost:
        """Start the master connection (idempotent); an :class:`SSHError` names the host and the fix."""
        if self.is_open:
            return self
        self._end_master()
        self.control_dir.mkdir(parents=True, exist_ok=True)
        self.control_path.parent.mkdir(mode=0o700, exist_ok=True)  # a short folder goes when its master ends
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        self._log = self.control_dir / f"ssh-{self._key}.log"
        started = time.monotonic()
        argv = self._argv("-N", self.destination, master=True)
        log.debug("ssh: %s", shlex.join(argv))
        with open(self._log, "wb") as err:
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                              start_new_session=True)
            except FileNotFoundError:
                raise SSHError(f"ssh to {self.host}: the ssh program is not installed",
                               hint="apt-get install openssh-client") from None
        pid = self._proc.pid
        self._pid_file = self.control_dir / f"{pid}.pid"
        self._pid_file.write_text(start_time(pid))  # the process component's sweep ends it after a SIGKILL
        try:
            wait_for(self._master_ready, what=f"ssh master connection to {self.target}", timeout=self.timeout + 5,
                     interval=0.02, max_interval=0.2,
                     hint=f"ssh to {self.host} neither connected nor failed; try `ssh -v {self.target} true`")
        except BaseException:
            self._end_master()
            raise
        self.open_seconds = time.monotonic() - started
        log.info("ssh: connected to %s in %.2fs (master pid %d)", self.target, self.open_seconds, pid)
        return self

    def _master_ready(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            stderr = self._log.read_text(errors="replace") if self._log else ""
            raise classify(self.host, stderr, code)
        if not self.control_path.exists():
            raise NotReady("no control socket yet")

    def _control(self, *args: str, what: str) -> subprocess.CompletedProcess[str]:
        """``ssh -S CTL -O ...`` to the master; an :class:`SSHError` when it refuses."""
        if not self.is_open:
            raise SSHError(f"ssh to {self.host}: the master connection is not open (it ended, or was never opened)",
                           hint="the connection may have dropped; see the log above for why",
                           details=tail(self._log.read_text(errors="replace")) if self._log and self._log.exists()
                           else None)
        argv = self._argv(*args, self.destination)
        log.debug("ssh: %s", shlex.join(argv))
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            raise SSHError(f"ssh to {self.host}: could not {what}: {tail(done.stderr, 1) or done.returncode}",
                           hint="is the port or socket free here, and does the server allow forwarding "
                                "(AllowTcpForwarding, AllowStreamLocalForwarding)?", details=done.stderr or None)
        return done

    # forwards
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> int:
        """A 127.0.0.1 port here that reaches ``remote_host:remote_port`` there; one per remote port."""
        held = self._forwards.get(remote_port)
        if held is not None and held[1] == remote_host:
            return held[0]
        if held is not None:
            self.cancel(remote_port)
        self.open()
        for attempt in range(3):  # the free port may be taken between the probe and ssh's bind
            local = self._previous.get(remote_port, 0) if attempt == 0 else 0
            local = local if local and _free(local) else free_port()
            try:
                self._control("-O", "forward", "-L", f"127.0.0.1:{local}:{remote_host}:{remote_port}",
                              what=f"forward 127.0.0.1:{local} to {remote_host}:{remote_port}")
            except SSHError:
                if attempt == 2 or not self.is_open:
                    raise
                continue
            self._forwards[remote_port] = (local, remote_host)
            self._previous[remote_port] = local  # a container that comes back on the same port keeps its URL
            log.debug("ssh: 127.0.0.1:%d -> %s:%s:%d", local, self.host, remote_host, remote_port)
            return local
        raise AssertionError("unreachable")  # pragma: no cover

    def forward_socket(self, remote_path: str) -> Path:
        """A unix socket here that reaches the unix socket ``remote_path`` there."""
        held = self._sockets.get(remote_path)
        if held is not None:
            return held
        self.open()
        local = short_socket_path(self.control_dir, f"fwd-{self._key}-{_digest(remote_path)}.sock")
        local.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            local.unlink()
        self._control("-O", "forward", "-L", f"{local}:{remote_path}", what=f"forward {local} to {remote_path}")
        self._sockets[remote_path] = local
        log.debug("ssh: %s -> %s:%s", local, self.host, remote_path)
        return local

    def cancel(self, remote_port: int) -> None:
        """End the forward of ``remote_port`` (if any); failures are logged, the port forgotten."""
        held = self._forwards.pop(remote_port, None)
        if held is None or not self.is_open:
            return
        local, remote_host = held
        try:
            self._control("-O", "cancel", "-L", f"127.0.0.1:{local}:{remote_host}:{remote_port}",
                          what=f"cancel the forward of 127.0.0.1:{local}")
        except (SSHError, subprocess.TimeoutExpired) as exc:
            log.warning("ssh: %s", exc)

    def cancel_socket(self, remote_path: str) -> None:
        """End the forward of the remote socket ``remote_path`` (if any) and remove the local socket."""
        local = self._sockets.pop(remote_path, None)
        if local is None:
            return
        if self.is_open:
            try:
                self._control("-O", "cancel", "-L", f"{local}:{remote_path}", what=f"cancel the forward of {local}")
            except (SSHError, subprocess.TimeoutExpired) as exc:
                log.warning("ssh: %s", exc)
        with contextlib.suppress(FileNotFoundError):
            local.unlink()

    def check(self) -> None:
        """Raise :class:`SSHError` when no wait can help: the master ended, or the server refuses forwarding.

        A forward whose far end is refused looks, here, like a port that accepts and closes at
        once; a probe that sees that asks this before it waits on.
        """
        text = self._log.read_text(errors="replace") if self._log is not None and self._log.exists() else ""
        if "administratively prohibited" in text:
            raise SSHError(f"ssh to {self.host}: the server refuses forwarding",
                           hint="allow it in that host's sshd_config: AllowTcpForwarding yes (ports), "
                                "AllowStreamLocalForwarding yes (the Docker socket)", details=tail(text))
        if not self.is_open:
            raise SSHError(f"ssh to {self.host}: the master connection ended", hint="see its log below; is the "
                           "host still up?", details=tail(text) or None)

    @property
    def forwards(self) -> dict[int, int]:
        """Remote port -> local port, of the forwards open now."""
        return {remote: local for remote, (local, _) in self._forwards.items()}

    # commands
    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` there (shlex-quoted for the remote shell) over the master; never raises on its exit code."""
        self.open()
        command = shlex.join(str(a) for a in argv)
        full = self._argv(self.destination, "--", command)
        log.debug("ssh: %s", shlex.join(full))
        try:
            done = subprocess.run(full, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SSHError(f"ssh to {self.host}: `{command}` did not finish in {timeout:g}s",
                           hint="raise the timeout, or look at the command on that host") from exc
        if done.returncode == 255 and not self.is_open:
            raise classify(self.host, done.stderr.decode(errors="replace"), done.returncode)
        return subprocess.CompletedProcess(full, done.returncode, done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))

    # the end
    def close(self) -> None:
        """Cancel every forward and end the master (``-O exit``, then a kill); idempotent, never raises."""
        for remote in list(self._forwards):
            self.cancel(remote)
        for path in list(self._sockets):
            self.cancel_socket(path)
        if self.is_open:
            with contextlib.suppress(SSHError, subprocess.TimeoutExpired):
                self._control("-O", "exit", what="end the master connection")
        self._end_master()

    def _end_master(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.debug("ssh: master connection to %s ended", self.target)
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)
            self._pid_file = None
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        if self._log is not None and proc is not None:
            self._log.unlink(missing_ok=True)
        self._forwards.clear()
        for local in self._sockets.values():
            local.unlink(missing_ok=True)
        self._sockets.clear()
        with contextlib.suppress(OSError):  # the short folder of a long session path, once empty
            _short_dir(self.control_dir).rmdir()

    def __enter__(self) -> SSHHost:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


_HOSTS: dict[tuple[str, str], SSHHost] = {}


def ssh_host(url: str, *, control_dir: Path) -> SSHHost:
    """The one :class:`SSHHost` of this process for ``url`` (an ssh URL or ``[user@]host[:port]``) and ``control_dir``.

    Docker and libvirt on the same host share it; :func:`close_all` ends it.
    """
    key = (url, str(Path(control_dir).resolve()))
    held = _HOSTS.get(key)
    if held is None:
        if "://" in url:
            held = SSHHost.from_url(url, control_dir=control_dir)
        else:
            held = SSHHost(url, control_dir=control_dir)
        for other in _HOSTS.values():  # the same host written as another URL: share its master
            if (other.control_path, other.identity, other.options) == (held.control_path, held.identity,
                                                                      held.options):
                held = other
                break
        _HOSTS[key] = held
    return held


def close_all(control_dir: Path) -> None:
    """Close every :class:`SSHHost` of ``control_dir`` (at session end)."""
    wanted = str(Path(control_dir).resolve())
    for key in [k for k in _HOSTS if k[1] == wanted]:
        _HOSTS.pop(key).close()


class SSHComponent:
    """The control sockets of a killed session's ssh masters (the ``process`` component ends the masters)."""

    name = "ssh"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        """Remove the short socket folders (in the temp dir) of each dead session's long session path."""
        for session_id in dead_ids:
            remove_sockets(state_root / "sessions" / session_id)
        return []

    def doctor(self, settings: Settings) -> list[tuple[bool, str]]:
        """No checks of its own: ``ssh`` is needed only for another host, and says so when it fails."""
        return []


def component(settings: Settings | None = None) -> SSHComponent:
    """The ``ssh`` component of the registry (:mod:`pytest_flake.components`)."""
    return SSHComponent(settings)


__all__ = ["SSHComponent", "SSHHost", "classify", "close_all", "component", "parse_target", "remove_sockets",
           "short_socket_path", "ssh_host"]
