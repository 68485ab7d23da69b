"""Helpers for this host, shared by every component: tools, file sniffing, ports, locks, copies.

* :func:`run_tool` runs a program (an argv list, never a shell) with a timeout; a missing
  program is always :class:`MissingToolError`, a failure an error naming the command, its
  exit code and the tail of its output. :func:`run_command` is the same run for a command
  whose exit code the caller reads itself.
* :func:`sniff` and :func:`describe_file` say what a file is by its first bytes, for
  "PATH is not an image: it is ..." messages.
* :func:`port_open`, :func:`port_answers` (probes for :func:`~pytest_flake.waiting.wait_for`)
  and :func:`free_port`.
* :func:`locked` (an exclusive lock file), :func:`reflink_copy` (``cp --reflink=auto``),
  :func:`write_private` (a 0600 file such as a private key).

Never imports pytest.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .errors import FlakeError, MissingToolError, NotReady, tail

log = logging.getLogger(__name__)

SETUP_HINT = "run scripts/setup or install it"


# --------------------------------------------------------------------------- running tools


def run_command(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float | None = None,
    error: type[FlakeError] = FlakeError,
    hint: str = SETUP_HINT,
    input: str | None = None,  # noqa: A002 (subprocess.run's name)
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host program and return it completed, whatever its exit code (the caller judges it).

    For the commands whose exit code is an answer (``umount`` that may fall back, a probe); fails
    like :func:`run_tool` otherwise: a missing program is :class:`MissingToolError` with ``hint``,
    a run past ``timeout`` seconds or one that cannot start is ``error``.
    """
    args = [str(arg) for arg in argv]
    if not args:
        raise ValueError("run_tool: empty argv")
    if not os.path.isabs(args[0]) and shutil.which(args[0]) is None:
        raise MissingToolError(f"{what}: {args[0]} is not installed", hint=hint)
    command = shlex.join(args)
    log.debug("run: %s", command)
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              env=dict(env) if env is not None else None, cwd=cwd)
    except FileNotFoundError as exc:
        raise MissingToolError(f"{what}: {args[0]} is not installed", hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what}: {command} did not finish in {timeout:g}s") from exc
    except OSError as exc:
        raise error(f"{what}: cannot run {command}: {exc.strerror or exc}") from exc


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float | None = None,
    error: type[FlakeError] = FlakeError,
    hint: str = SETUP_HINT,
    input: str | None = None,  # noqa: A002 (subprocess.run's name)
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> str:
    """Run a host program and return its standard output.

    ``what`` says what the command is for (the start of every message). A program that
    is not installed raises :class:`MissingToolError` with ``hint``; a command that exits
    non-zero, runs past ``timeout`` seconds or cannot be started raises ``error`` naming
    the command and its exit code, with the tail of its output as a note.
    """
    proc = run_command(argv, what=what, timeout=timeout, error=error, hint=hint, input=input, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise error(f"{what}: {shlex.join(proc.args)} exited with {proc.returncode}",
                    details=tail((proc.stdout or "") + (proc.stderr or ""), 30))
    return proc.stdout


# --------------------------------------------------------------------------- file sniffing

# (offset, magic, kind), checked in order; the first match wins
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x7fELF", "elf"),
    (0, b"hsqs", "squashfs"),
    (0, b"sqsh", "squashfs"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"(\xb5/\xfd", "zstd"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"QFI\xfb", "qcow2"),
    (512, b"EFI PART", "gpt"),
    (257, b"ustar", "tar"),
    (0, b"#!", "script"),
)
SNIFF_BYTES = 1024  # enough for every kind above

_WORDS = {
    "elf": "an ELF executable",
    "squashfs": "a squashfs image (a portable service image?)",
    "gzip": "a gzip file (a docker-archive or tarball?)",
    "zstd": "a zstd file (a docker-archive or tarball?)",
    "bzip2": "a bzip2 file (a tarball?)",
    "xz": "an xz file (a tarball?)",
    "zip": "a zip archive",
    "qcow2": "a qcow2 disk image",
    "gpt": "a GPT disk image",
    "tar": "a tar archive",
    "unit": "a systemd unit file",
    "empty": "an empty file",
}


def _is_unit(head: bytes) -> bool:
    return head.lstrip().startswith(b"[Unit]") or b"[Service]" in head


def sniff(head: bytes) -> str:
    """The kind of a file from its first bytes (:data:`SNIFF_BYTES` suffice).

    One of ``elf squashfs gzip zstd bzip2 xz zip qcow2 gpt tar script unit empty text binary``.
    """
    if not head:
        return "empty"
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    if _is_unit(head):
        return "unit"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut at the end of the sample
            return "binary"
    return "binary" if b"\0" in head else "text"


def describe_dir(path: Path) -> str:
    """``a directory (bin/, share/)``: the first few entries, directories marked with ``/``."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as exc:
        return f"an unreadable directory ({exc.strerror or exc})"
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
    return f"a directory ({shown or 'empty'})"


def describe_file(path: Path, head: bytes | None = None) -> str:
    """What ``path`` is, in a few words: ``an ELF executable``, ``a script (#!/bin/sh)``...

    ``head`` is the file's first bytes when the caller has read them already.
    """
    if head is None:
        if path.is_dir():
            return describe_dir(path)
        try:
            with path.open("rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
    kind = sniff(head)
    if kind in _WORDS:
        return _WORDS[kind]
    if kind == "script":
        return f"a script ({head.splitlines()[0].decode(errors='replace')})"
    if kind == "binary":
        return f"a binary file starting with {head[:8].hex(' ')}"
    text = head.decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else ""
    return f"a text file starting with {first[:60]!r}"


# --------------------------------------------------------------------------- ports


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> None:
    """Probe: raise :class:`NotReady` unless ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise NotReady(f"{host}:{port} refused: {exc}") from exc


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> None:
    """Probe: raise :class:`NotReady` unless something behind ``host:port`` takes a connection.

    A published Docker port is held by docker-proxy from the start, so a bare connect
    succeeds before the service listens; the proxy then closes the connection at once. A
    service that listens keeps it open (or speaks first): that is "ready".
    """
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(timeout)
            try:
                data = sock.recv(1)
            except TimeoutError:  # socket.timeout is TimeoutError since 3.10
                return  # open and silent: a server waiting for a request
            except OSError as exc:
                raise NotReady(f"{host}:{port} reset: {exc}") from exc
            if not data:
                raise NotReady(f"{host}:{port} accepted and closed at once (nothing listens behind it yet)")
    except OSError as exc:
        raise NotReady(f"{host}:{port} refused: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) for the ``with`` block.

    Two sessions never build, download or fill the same cache entry at once. ``on_wait()``
    is called (say, to log it) when another holds the lock, before waiting for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        if on_wait is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reflink_copy(src: Path, dst: Path, *, what: str, tree: bool = False, timeout: float | None = None,
                 error: type[FlakeError] = FlakeError) -> None:
    """Copy ``src`` to ``dst`` sharing blocks where the file system can (``cp --reflink=auto``).

    A file is copied sparse (``--sparse=always``: a disk image stays small); with ``tree``
    the *contents* of the directory ``src`` go into ``dst`` with owners, modes and links
    kept (``cp -a``). Fails like :func:`run_tool`.
    """
    if tree:
        argv = ["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)]
    else:
        argv = ["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)]
    run_tool(argv, what=what, timeout=timeout, error=error)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: readers see all or nothing.

    The temporary file's name is unique, so two writers at once never write into each other's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (0600 from the start: a key never leaks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


__all__ = [
    "SNIFF_BYTES", "describe_dir", "describe_file", "free_port", "locked", "port_answers", "port_open",
    "reflink_copy", "run_command", "run_tool", "sniff", "write_atomic", "write_private",
]
