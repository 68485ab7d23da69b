"""libvirt's QEMU save-file format: the domain XML in its header, a header with new XML, and
:class:`SaveFeed`, which hands libvirt a shared save file with this VM's header through a FIFO."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import VMError

_SAVE_MAGIC = b"LibvirtQemudSave"
_SAVE_HEADER = struct.Struct("<16s19I")  # magic, version, data_len, was_running, compressed, cookie_offset, unused
HEADER_SIZE = _SAVE_HEADER.size


def read_save_header(path: Path) -> bytes:
    """The header of a libvirt QEMU save image: the fixed part and the XML area (:func:`header_length` bytes)."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SIZE)
        return head + handle.read(header_length(head, str(path)) - len(head))


def read_save_xml(path: Path) -> str:
    """The domain XML stored in a libvirt QEMU save image."""
    return xml_of_header(read_save_header(path), str(path))


def header_length(head: bytes, what: str = "the save image") -> int:
    """How many bytes the header (the fixed part and the XML area) of a save image takes, from its first bytes."""
    if len(head) < HEADER_SIZE or head[:16] != _SAVE_MAGIC:
        raise VMError(f"{what} is not a libvirt save image")
    return HEADER_SIZE + int(_SAVE_HEADER.unpack(head[:HEADER_SIZE])[2])


def xml_of_header(header: bytes, what: str = "the save image") -> str:
    """The domain XML in a save image's header (``header``: at least :func:`header_length` bytes)."""
    data = header[HEADER_SIZE:header_length(header, what)]
    return data.split(b"\0", 1)[0].decode()


def header_with_xml(header: bytes, new_xml: str, what: str = "the save image") -> bytes:
    """A save image's header (same length) with ``new_xml`` in place of its domain XML; the cookie is kept."""
    fields = list(_SAVE_HEADER.unpack(header[:HEADER_SIZE]))
    if fields[0] != _SAVE_MAGIC or fields[1] != 2:
        raise VMError(f"{what}: unknown save image format (version {fields[1]})")
    data_len, cookie_offset = fields[2], fields[5]
    data = header[HEADER_SIZE:HEADER_SIZE + data_len]
    cookie = data[cookie_offset:].split(b"\0", 1)[0] if cookie_offset else b""
    xml = new_xml.encode() + b"\0"
    payload = xml + (cookie + b"\0" if cookie else b"")
    if len(payload) > data_len:
        raise VMError(f"{what}: the new domain XML does not fit in the save header")
    fields[5] = len(xml) if cookie else 0
    return _SAVE_HEADER.pack(*fields) + payload.ljust(data_len, b"\0")


class SaveFeed:
    """libvirt reads a saved state through a FIFO: this VM's header, then the shared save file's stream.

    libvirt's restore accepts other XML (``dxml``) only with the saved UUID, so two VMs restored from
    one save file at once need a header of their own each. libvirt reads the header off the file it
    is given, then hands the same descriptor to QEMU, which reads the migration stream sequentially:
    a FIFO serves both, and nothing is copied. The writer thread splices the stream from the page
    cache into the pipe.

    ``with SaveFeed(fifo, save, header) as feed: conn.restoreFlags(str(fifo), ...)``: entering makes
    the FIFO (0600; ``prepare(fifo)`` then hands it over) and starts the writer; leaving stops the
    writer (it gives up as soon as the restore returned, whether libvirt opened the FIFO or not) and
    removes the FIFO. :attr:`error` is what the writer failed on (a reader that went away early is
    no error of its own: libvirt says why it stopped reading).
    """

    POLL = 0.05  # seconds between looks at whether the restore returned

    def __init__(self, fifo: Path, save: Path, header: bytes,
                 prepare: Callable[[Path], None] = lambda fifo: None) -> None:
        self.fifo, self.save, self.header = fifo, save, header
        self._prepare = prepare
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.written = 0  # bytes libvirt and QEMU read off the FIFO

    def __enter__(self) -> SaveFeed:
        self.fifo.unlink(missing_ok=True)
        os.mkfifo(self.fifo, 0o600)
        try:
            self._prepare(self.fifo)
            with open(self.save, "rb") as handle:  # fails here, not in the thread: unreadable or not a save file
                header_length(handle.read(HEADER_SIZE), str(self.save))
            self._thread = threading.Thread(target=self._run, name=f"save feed {self.fifo.name}", daemon=True)
            self._thread.start()
        except BaseException:
            self.fifo.unlink(missing_ok=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        try:
            if self._thread is not None:
                self._thread.join()
        finally:
            self.fifo.unlink(missing_ok=True)

    def _run(self) -> None:
        fd = -1
        try:
            fd = self._open()
            if fd < 0:
                return  # the restore returned without opening the FIFO
            with contextlib.suppress(OSError):  # fewer wake-ups; the default size works too
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
            view = memoryview(self.header)
            while view and self._writable(fd):
                with contextlib.suppress(BlockingIOError):
                    sent = os.write(fd, view)
                    view, self.written = view[sent:], self.written + sent
            with open(self.save, "rb") as src:
                offset, size = len(self.header), os.fstat(src.fileno()).st_size
                while offset < size and self._writable(fd):
                    with contextlib.suppress(BlockingIOError):
                        sent = os.splice(src.fileno(), fd, size - offset, offset_src=offset)
                        if sent == 0:
                            break  # the file shrank: QEMU finds the stream cut short and libvirt says so
                        offset, self.written = offset + sent, self.written + sent
        except BrokenPipeError:
            pass  # the reader closed its end: the restore is over, one way or the other
        except BaseException as exc:  # reported by the caller, with libvirt's own error
            self.error = exc
        finally:
            if fd >= 0:
                os.close(fd)

    def _open(self) -> int:
        """The FIFO's write end once libvirt opened it for reading; -1 when the restore returned first."""
        while True:
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            if self._done.wait(0.002):
                return -1

    def _writable(self, fd: int) -> bool:
        """Wait until the pipe takes more; False when the restore returned meanwhile (the reader is done)."""
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while not self._done.is_set():
            for _, events in poller.poll(self.POLL * 1000):
                if events & (select.POLLERR | select.POLLHUP):
                    raise BrokenPipeError(errno.EPIPE, "the reader closed the FIFO")
                return True
        return False
