"""libvirt's streams (``virStream``): sparse uploads into a volume, bytes in and out of one, and the
console of a domain read into a local file (:class:`ConsoleReader`). libvirt is imported when first used."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from .common import log
from .connection import libvirt_module


class _SparseFile:
    """The callbacks of ``virStream.sparseSendAll`` over a file descriptor (SEEK_DATA / SEEK_HOLE)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, _stream: Any, nbytes: int, _opaque: Any) -> bytes:
        return os.read(self.fd, nbytes)

    def hole(self, _stream: Any, _opaque: Any) -> tuple[bool, int]:
        current = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            data = os.lseek(self.fd, current, os.SEEK_DATA)
        except OSError:  # ENXIO: in the hole at the end (or at the end itself)
            data = -1
        if data < 0:
            end = os.lseek(self.fd, 0, os.SEEK_END)
            os.lseek(self.fd, current, os.SEEK_SET)
            return False, end - current
        if data > current:
            os.lseek(self.fd, current, os.SEEK_SET)
            return False, data - current
        hole = os.lseek(self.fd, data, os.SEEK_HOLE)
        os.lseek(self.fd, current, os.SEEK_SET)
        return True, hole - data

    def skip(self, _stream: Any, length: int, _opaque: Any) -> int:
        return os.lseek(self.fd, length, os.SEEK_CUR)


def upload_file(conn: Any, vol: Any, path: Path) -> None:
    """Send ``path`` into ``vol`` from offset 0 (holes stay holes)."""
    libvirt = libvirt_module()
    size = path.stat().st_size
    stream = conn.newStream(0)
    fd = os.open(path, os.O_RDONLY)
    try:
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        sparse = _SparseFile(fd)
        stream.sparseSendAll(sparse.read, sparse.hole, sparse.skip, None)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise
    finally:
        os.close(fd)


def upload_bytes(conn: Any, vol: Any, data: bytes, offset: int = 0) -> None:
    """Write ``data`` into ``vol`` at ``offset`` (the rest of the volume stays as it is)."""
    stream = conn.newStream(0)
    try:
        vol.upload(stream, offset, len(data), 0)
        view = memoryview(data)
        while view:
            sent = stream.send(bytes(view[: 256 * 1024]))
            view = view[sent:]
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise


def download_bytes(conn: Any, vol: Any, offset: int, length: int) -> bytes:
    """``length`` bytes of ``vol`` from ``offset``."""
    stream = conn.newStream(0)
    chunks: list[bytes] = []
    try:
        vol.download(stream, offset, length, 0)
        got = 0
        while got < length:
            chunk = stream.recv(min(256 * 1024, length - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise
    return b"".join(chunks)


class ConsoleReader:
    """Reads a domain's console through libvirt (``virDomainOpenConsole`` on a ``virStream``) into a file.

    A daemon thread appends what the guest writes to ``path`` (the VM's console log, read by
    ``console_log()``); it ends when the domain stops (the stream ends) or :meth:`stop` is called.

    ``conn`` should be a connection of its own (``close_conn``: closed when the reader ends): a
    blocking ``recv`` on libvirt's remote driver holds up other streams of its connection (a volume
    upload there waited for its reply for as long as the console was quiet).
    """

    def __init__(self, conn: Any, dom: Any, path: Path, *, name: str = "", close_conn: bool = False) -> None:
        self.conn, self.dom, self.path, self.name = conn, dom, path, name
        self.close_conn = close_conn
        self.stream: Any = None
        self.error = ""
        self.bytes = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"pf-console-{name}", daemon=True)

    def start(self) -> ConsoleReader:
        libvirt = libvirt_module()
        self.stream = self.conn.newStream(0)
        self.dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with open(self.path, "ab", buffering=0) as out:
                while True:
                    data = self.stream.recv(64 * 1024)
                    if isinstance(data, int) or not data:  # -2 (would block) never comes on a blocking stream
                        break
                    out.write(data)
                    self.bytes += len(data)
        except Exception as exc:  # the domain stopped, or the stream was aborted
            if not self._stopping:
                self.error = str(exc)
                log.debug("vm://%s: console stream ended: %s", self.name, exc)
        finally:
            with contextlib.suppress(Exception):
                self.stream.finish() if not self.error and not self._stopping else self.stream.abort()
            if self.close_conn:
                with contextlib.suppress(Exception):
                    self.conn.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread end (it ends by itself once the domain is gone); abort the stream after ``timeout``."""
        if self._thread.ident is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stopping = True
            with contextlib.suppress(Exception):
                self.stream.abort()
            self._thread.join(timeout)
