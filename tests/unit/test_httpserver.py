"""The suite's test server: a client that hangs up early puts a warning in the test's log, nothing on the terminal."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.httpserver import serving

BIG = b"x" * (32 * 1024 * 1024)  # far more than the socket buffers hold: the server is still writing at the hang-up


class Big(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BIG)))
        self.end_headers()
        self.wfile.write(BIG)


def hang_up_early(port: int) -> None:
    """Ask for the big body, read its first bytes, and reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(16).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST


def test_a_client_hanging_up_early_is_logged_not_printed(capfd: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tests.httpserver"), serving(Big) as server:
        hang_up_early(server.server_address[1])
    # leaving the block waited for the request's thread: its error is in, within this test
    out, err = capfd.readouterr()
    assert "Exception occurred" not in out + err and "Traceback" not in out + err
    failed = [record for record in caplog.records if "a request from" in record.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], (BrokenPipeError, ConnectionResetError))


def test_a_plain_server_prints_the_same_error(capfd: pytest.CaptureFixture[str]) -> None:
    # what the check above guards against: socketserver's own handle_error writes to stderr
    server = ThreadingHTTPServer(("127.0.0.1", 0), Big)
    server.daemon_threads = False  # so that server_close() waits for the request
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        hang_up_early(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert "Exception occurred during processing of request" in capfd.readouterr().err


def test_closing_ends_a_connection_kept_alive() -> None:
    with requests.Session() as session:  # keeps its connection open past the server's close
        def serve_once() -> None:
            with serving(Big) as server:
                assert len(session.get(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10).content) == len(BIG)

        closing = threading.Thread(target=serve_once, daemon=True)
        closing.start()
        closing.join(timeout=60)
        assert not closing.is_alive(), "closing the server waits for a connection the client keeps open"
