"""A 127.0.0.1 relay on this host into a container's private network.

A container started with ``--private-network`` has only its own loopback, and nothing on
the host can route to it. A socket, though, belongs to the network namespace of the thread
that created it: one thread of this process joins the container's namespace (``setns`` on
``/proc/LEADER/ns/net``, through ctypes since ``os.setns`` is Python 3.12+) and only makes
sockets there. The relay listens on 127.0.0.1 in the host namespace, and for each
connection has that thread make a socket, connects it to the container's 127.0.0.1:PORT and
copies bytes both ways. No veth, no address, no host network configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InfrastructureError

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
BUFFER = 65536


def setns(fd: int, nstype: int) -> None:
    """``setns(2)`` for the calling thread (``os.setns`` exists only from Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetnsSockets:
    """A thread living in another network namespace that makes sockets there on request."""

    def __init__(self, netns: Path, name: str) -> None:
        self.netns = netns
        self.name = name
        self._requests: queue.Queue[queue.Queue[Any] | None] = queue.Queue()
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name=f"netns-{name}", daemon=True)
        self._thread.start()
        error = self._ready.get()
        if error is not None:
            raise InfrastructureError(f"cannot join the network namespace {netns} of {name}: {error}",
                                      hint="containers need root (CAP_SYS_ADMIN)") from error

    def _serve(self) -> None:
        try:
            fd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
        except BaseException as exc:  # reported to the constructor
            self._ready.put(exc)
            return
        self._ready.put(None)
        while True:
            reply = self._requests.get()
            if reply is None:
                return
            try:
                reply.put(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except OSError as exc:
                reply.put(exc)

    def socket(self) -> socket.socket:
        """A new TCP socket in the other namespace (usable from any thread)."""
        if not self._thread.is_alive():
            raise InfrastructureError(f"the network namespace thread of {self.name} has stopped")
        reply: queue.Queue[Any] = queue.Queue()
        self._requests.put(reply)
        result = reply.get(timeout=10)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, socket.socket)
        return result

    def close(self) -> None:
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout=5)


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until both sides have closed."""
    peers = {client: upstream, upstream: client}
    open_reads = {client, upstream}
    with selectors.DefaultSelector() as sel:
        for each in open_reads:
            sel.register(each, selectors.EVENT_READ)
        while open_reads:
            for key, _ in sel.select(timeout=60):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(BUFFER)
                except OSError:
                    data = b""
                if data:
                    try:
                        peers[sock].sendall(data)
                        continue
                    except OSError:
                        pass
                sel.unregister(sock)
                open_reads.discard(sock)
                with contextlib.suppress(OSError):
                    peers[sock].shutdown(socket.SHUT_WR)
    client.close()
    upstream.close()


class Relay:
    """Listens on 127.0.0.1:``port`` (0: any free port) and forwards to ``target_port`` in the namespace."""

    def __init__(self, sockets: Callable[[], socket.socket], target_port: int, name: str, port: int = 0) -> None:
        self._sockets = sockets
        self.target_port = int(target_port)
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"relay-{name}-{target_port}", daemon=True)
        self._thread.start()
        log.info("%s: guest port %d on 127.0.0.1:%d", name, self.target_port, self.port)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True,
                             name=f"relay-{self.name}-{self.target_port}-conn").start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = self._sockets()
            upstream.settimeout(10)
            upstream.connect(("127.0.0.1", self.target_port))
            upstream.settimeout(None)
        except Exception as exc:  # refused in the container: the client sees a closed connection
            log.debug("%s: connecting to guest port %d failed: %s", self.name, self.target_port, exc)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        _pump(client, upstream)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
