"""A command channel to a VM's guest that does not pay for SSH: a virtio-serial port and a small agent.

The domain has a ``<channel>`` whose host end is a unix socket in the VM's folder (``<name>.agent``,
made the running user's, mode 0600, before anything connects); the guest end is
``/dev/virtio-ports/org.pytest-flake.agent.0``, where ``agent.sh`` (shipped next to this module, only
bash builtins on a command's way) serves requests. A cold boot installs the agent over SSH, as a
transient systemd service, before its warm state is saved, so every warm start restores a guest
whose agent runs already; the agent keeps its port open and reads again when the host's end goes (a
restore is a new socket), and a connect asks again until it answers.

Frames (byte-exact, no encoding: lengths frame the bytes)::

    request  b"<id> <timeout ms, 0: none> <length>\\n" + command
    answer   b"<id> <exit code> <stdout length> <stderr length> <ok|timeout>\\n" + stdout + stderr

:class:`Channel` is the host's end (one command at a time, under a lock); :class:`AgentLink` is what
a :class:`~pytest_flake.vm.VM` holds: installing, connecting, and saying which way commands go
(``"agent"``, or ``"ssh"`` for a guest without the port, an agent that did not answer, or a launcher
whose guest runs on another host).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..errors import CheckTimeout, VMError
from .common import AGENT_PORT, log

GUEST_PORT = f"/dev/virtio-ports/{AGENT_PORT}"
AGENT_SCRIPT = Path(__file__).with_name("agent.sh")
GUEST_SCRIPT = "/run/pytest-flake-agent.sh"
UNIT = "pytest-flake-agent"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
PING_EVERY = 1.0  # seconds between the empty commands of a connect, until the agent answers one
GRACE = 15.0  # seconds past a command's timeout before the host gives up on the agent's answer
HEADER_LIMIT = 256


def agent_fingerprint() -> str:
    """What a warm state's key records of the agent it runs (a changed script: boot cold again)."""
    return hashlib.sha256(AGENT_SCRIPT.read_bytes()).hexdigest()[:16]


def usable_socket_path(path: Path) -> Path | None:
    """``path`` if a unix socket can live there (the length of ``sun_path``), else None (then: SSH)."""
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def secure_socket(path: Path) -> None:
    """The host's end is the running user's alone: owner, mode 0600 (only the owner may connect)."""
    os.chown(path, os.getuid(), os.getgid())
    os.chmod(path, 0o600)


def install_command() -> str:
    """The guest command (run over SSH, after ``agent.sh`` was copied to :data:`GUEST_SCRIPT`) that starts it."""
    return (f"test -c {GUEST_PORT} && systemd-run --quiet --unit={UNIT} --property=Restart=always "
            f"--property=RestartSec=1 /bin/bash {GUEST_SCRIPT} {GUEST_PORT}")


def timed_command(command: str, timeout: float | None) -> str:
    """``command`` for the SSH path: under coreutils' timeout (KILL, to its process group) when one is given.

    ``; exit $?``: the login shell waits for timeout (its own group) and exits 137, rather than exec it.
    """
    if not timeout:
        return command
    return f"timeout -s KILL {max(float(timeout), 0.001):.3f} bash -c {shlex.quote(command)}; exit $?"


def encode_request(ident: int, timeout: float | None, command: bytes) -> bytes:
    """One request frame; ``timeout`` None or 0: no limit."""
    if b"\0" in command:
        raise VMError("a guest command cannot hold a NUL byte", hint="pass binary data through a file (copy_to)")
    millis = 0 if not timeout else max(1, round(float(timeout) * 1000))
    return b"%d %d %d\n" % (ident, millis, len(command)) + command


@dataclass(frozen=True)
class Reply:
    """What the agent answered: exit code, both outputs' bytes, and whether the timeout killed it."""

    ident: int
    rc: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def parse_header(line: bytes) -> tuple[int, int, int, int, bool]:
    """``(id, exit code, stdout length, stderr length, timed out)`` of an answer's first line."""
    fields = line.split()
    if len(fields) != 5 or fields[4] not in (b"ok", b"timeout") or not all(f.isdigit() for f in fields[:4]):
        raise ValueError(f"not an answer of the agent: {line[:80]!r}")
    ident, rc, out, err = (int(f) for f in fields[:4])
    return ident, rc, out, err, fields[4] == b"timeout"


class _Frames:
    """Buffered reads from the socket, each under a deadline (``None``: none)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self, deadline: float | None) -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(left)
        else:
            self.sock.settimeout(None)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the socket was closed")
        self.buf += chunk

    def line(self, deadline: float | None) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > 1 << 20:  # stale bytes of a broken frame: keep looking, not hoarding
                del self.buf[:-HEADER_LIMIT]
            self._fill(deadline)

    def exact(self, size: int, deadline: float | None) -> bytes:
        while len(self.buf) < size:
            self._fill(deadline)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


class Channel:
    """The host's end of one guest's agent: a unix socket; one command at a time (thread-safe)."""

    def __init__(self, name: str, path: Path, *, grace: float = GRACE,
                 connect: Callable[[Path], socket.socket] | None = None) -> None:
        self.name, self.path, self.grace = name, path, grace
        self._connect = connect or self._unix
        self._sock: socket.socket | None = None
        self._frames: _Frames | None = None
        self._lock = threading.Lock()
        self._next = random.randrange(1 << 20, 1 << 30)  # stale answers of an earlier connection never match

    @staticmethod
    def _unix(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def open(self, timeout: float) -> None:
        """Connect and wait for the agent's answer to an empty command (what came before it is dropped).

        The empty command goes again every :data:`PING_EVERY` seconds until ``timeout``: a guest that
        was just restored may drop what reached its port before it read from it again.
        """
        with self._lock:
            self._close()
            sock = self._connect(self.path)
            self._sock, self._frames = sock, _Frames(sock)
            deadline = time.monotonic() + timeout
            try:
                while True:
                    try:
                        self._exchange(b":", timeout=None, deadline=min(deadline, time.monotonic() + PING_EVERY),
                                       resync=True, keep=True)
                        return
                    except TimeoutError:
                        if time.monotonic() >= deadline:
                            self._fail_timeout(b":", None)
            except BaseException:
                self._close()
                raise

    def run(self, command: str, timeout: float | None = None) -> Reply:
        """Run ``command`` (bash) in the guest; the agent kills it past ``timeout`` (an answer that says so).

        No answer within the timeout and :attr:`grace`: :class:`CheckTimeout`, the connection closed (the
        next :meth:`open` starts again). A connection that breaks (whether the command ran is unknown):
        :class:`VMError`.
        """
        with self._lock:
            if self._sock is None:
                raise VMError(f"vm://{self.name}: the agent's channel is not connected")
            deadline = None if not timeout else time.monotonic() + float(timeout) + self.grace
            return self._exchange(command.encode(), timeout=timeout, deadline=deadline)

    def _exchange(self, command: bytes, *, timeout: float | None, deadline: float | None,
                  resync: bool = False, keep: bool = False) -> Reply:
        """Send one request and read its answer (``keep``: a deadline passed raises TimeoutError as it is)."""
        ident = self._next
        self._next += 1
        request = encode_request(ident, timeout, command)
        sock, frames = self._sock, self._frames
        assert sock is not None and frames is not None
        try:
            sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
            sock.sendall(request)
            while True:
                line = frames.line(deadline)
                if resync:  # skip the rest of an answer the last connection did not read (no newline at its end)
                    start = line.rfind(b"%d " % ident)
                    if start < 0:
                        continue
                    line = line[start:]
                got, rc, out, err, timed_out = parse_header(line)
                stdout, stderr = frames.exact(out, deadline), frames.exact(err, deadline)
                if got == ident:
                    return Reply(ident, rc, stdout, stderr, timed_out)
                if got > ident:
                    raise ValueError(f"an answer to request {got}, not to {ident}")
        except TimeoutError as exc:
            if keep:
                raise
            self._fail_timeout(command, timeout, exc)
        except (OSError, EOFError, ValueError) as exc:
            self._close()
            raise VMError(f"vm://{self.name}: the agent's channel broke: {type(exc).__name__}: {exc}",
                          hint="the next command connects again, or goes through SSH") from exc
        except BaseException:  # Ctrl-C amid an answer: the next command starts on a new connection
            self._close()
            raise

    def _fail_timeout(self, command: bytes, timeout: float | None, cause: BaseException | None = None) -> NoReturn:
        self._close()
        what = "" if timeout is None else f" within the timeout of {timeout}s and {self.grace:g}s more"
        raise CheckTimeout(f"vm://{self.name}: the agent did not answer '{command.decode(errors='replace')}'"
                           f"{what}") from cause

    def _close(self) -> None:
        sock, self._sock, self._frames = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        """Close the socket without the lock: a command waiting on a guest that is gone returns."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        with self._lock:
            self._close()


class AgentLink:
    """Which way a VM's commands go (:attr:`kind`: ``"agent"`` or ``"ssh"``), and the agent's channel.

    ``path`` None: the domain has no port (another host, or a folder too deep for a socket's path).
    """

    def __init__(self, name: str, path: Path | None, timeout: float) -> None:
        self.name, self.path, self.timeout = name, path, float(timeout)
        self.kind = "ssh"
        self.why = "no agent port" if path is None else "not connected"
        self.channel = Channel(name, path) if path is not None else None

    def install(self, ssh_run: Callable[[str], Any], put: Callable[[Path, str], None]) -> bool:
        """Copy the agent into a booted guest and start it (over SSH); False, with :attr:`why`, if that fails.

        ``ssh_run(command)`` answers with what has ``rc`` and ``stderr`` (testinfra's result)."""
        if self.channel is None:
            return False
        try:
            put(AGENT_SCRIPT, GUEST_SCRIPT)
            done = ssh_run(install_command())
            rc, err = done.rc, done.stderr
        except (VMError, OSError) as exc:
            rc, err = -1, str(exc)
        if rc != 0:
            self.why = f"the agent did not start ({err.strip() or f'exit {rc}'})"
            log.warning("vm://%s: %s; commands go through SSH", self.name, self.why)
            self.channel = None  # nobody serves the port: never wait for an answer on it
            return False
        return True

    def secure(self) -> None:
        """Right after the domain started: narrow the socket libvirt made (root's, mode 0775 here) to 0600."""
        if self.channel is not None:
            with contextlib.suppress(OSError):  # connect() tries again, and says why when it fails
                secure_socket(self.channel.path)

    def connect(self, wait: float = 10.0) -> str:
        """Connect to the agent (after a boot or a restore, where it runs already: it answers within a second);
        :attr:`kind`, ``"ssh"`` when it does not answer within ``wait`` seconds."""
        if self.channel is None:
            return self.kind
        if self.channel.connected and self.kind == "agent":
            return self.kind
        try:
            secure_socket(self.channel.path)
            self.channel.open(min(self.timeout, wait))
            self.kind, self.why = "agent", ""
        except (OSError, VMError) as exc:
            self.kind, self.why = "ssh", f"the agent did not answer: {exc}"
            log.info("vm://%s: %s; commands go through SSH", self.name, self.why)
        return self.kind

    def run(self, command: str, timeout: float | None) -> Reply | None:
        """The agent's answer, or None: the caller runs ``command`` over SSH (the channel is not up and does
        not come back). A channel that breaks during the command raises (:class:`VMError`,
        :class:`CheckTimeout`); the next command connects again."""
        channel = self.channel
        if self.kind != "agent" or channel is None:
            return None
        if not channel.connected and self.connect() != "agent":
            log.warning("vm://%s: %s; commands go through SSH from now on", self.name, self.why)
            return None
        return channel.run(command, timeout)

    def cut(self) -> None:
        if self.channel is not None:
            self.channel.cut()

    def disconnect(self) -> None:
        if self.channel is not None:
            self.channel.close()
