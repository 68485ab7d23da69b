"""The suite's HTTP test servers: a failed request is logged with the test that made it, never printed.

``socketserver`` prints a failed request's traceback ("Exception occurred during processing of
request") to ``sys.stderr`` from the request's own thread; a thread that outlives its test writes
it to the terminal, in the middle of the suite's output. :class:`LoggingHTTPServer` logs it instead
(pytest keeps it with the test, under "Captured log"), and closing it waits for its requests, so
each one ends inside the test that made it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class LoggingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 whose request errors go to :mod:`logging`."""

    daemon_threads = False  # server_close() joins the requests' threads
    block_on_close = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        host, port = self.server_address[:2]
        log.warning("test server %s:%s: a request from %s failed", host, port, client_address, exc_info=True)

    def server_close(self) -> None:
        """Stop listening, end the connections kept alive (their reads see the end), wait for every request."""
        with self._lock:
            open_requests = list(self._open)
        for request in open_requests:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RD)
        super().server_close()


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[LoggingHTTPServer]:
    """A :class:`LoggingHTTPServer` on a free 127.0.0.1 port serving ``handler``, for the ``with`` block."""
    server = LoggingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
