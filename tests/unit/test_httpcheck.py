"""The curl-like checker against a real http.server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from pytest_flake.errors import CheckFailed
from pytest_flake.httpcheck import HttpChecker
from tests.httpserver import LoggingHTTPServer, serving


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._send(200, b"hello world\n", extra={"X-Served-By": "unit-test"})
        elif self.path == "/json":
            body = {"name": "web-server", "version": "1.0", "nested": {"a": 1, "b": 2}, "tags": ["x"]}
            self._send(200, json.dumps(body).encode(), "application/json")
        elif self.path.startswith("/fail"):
            self._send(500, b"boom! " * 400, extra={"X-Trace": "abc123"})
        else:
            self._send(404, b"")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        self._send(201 if data else 400, b"created " + data)


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port held by a bound socket that never listens: connections are refused, and no other program can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def base() -> Iterator[str]:
    with serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http() -> Iterator[HttpChecker]:
    checker = HttpChecker(timeout=5)
    yield checker
    checker.close()


def test_expect_status_and_contains(http: HttpChecker, base: str) -> None:
    r = http.get(f"{base}/ok")
    assert r.expect(200, contains="hello") is r
    assert r.expect(status=(200, 204), contains=["hello", "world"]) is r
    assert r.status_code == 200
    assert r.text == "hello world\n"
    assert r.attempts == 1


def test_expect_json_subset(http: HttpChecker, base: str) -> None:
    r = http.get(f"{base}/json")
    r.expect(json={"version": "1.0"})
    r.expect(json={"nested": {"a": 1}})
    assert r.json()["name"] == "web-server"
    with pytest.raises(CheckFailed, match=r'does not match \{"version": "2.0"\}'):
        r.expect(json={"version": "2.0"})
    with pytest.raises(CheckFailed, match="does not match"):
        r.expect(json={"nested": {"a": 2}})
    with pytest.raises(CheckFailed, match="does not match"):
        r.expect(json={"tags": ["y"]})


def test_expect_json_on_non_json_body(http: HttpChecker, base: str) -> None:
    with pytest.raises(CheckFailed, match="body is not JSON"):
        http.get(f"{base}/ok").expect(json={"a": 1})


def test_expect_headers(http: HttpChecker, base: str) -> None:
    r = http.get(f"{base}/json")
    r.expect(headers={"Content-Type": "application/json"})
    r.expect(headers={"content-type": "json"})  # case-insensitive name, substring value
    with pytest.raises(CheckFailed, match="no header 'X-Missing'"):
        r.expect(headers={"X-Missing": "1"})
    with pytest.raises(CheckFailed, match=r"header Content-Type: 'application/json', expected 'text/html'"):
        r.expect(headers={"Content-Type": "text/html"})


def test_failure_message_is_a_curl_transcript(http: HttpChecker, base: str) -> None:
    r = http.get(f"{base}/fail?x=1")
    with pytest.raises(CheckFailed) as err:
        r.expect(200, contains="fine")
    assert isinstance(err.value, AssertionError)
    msg = str(err.value)
    first = msg.splitlines()[0]
    assert first == f"GET {base}/fail?x=1: status 500, expected 200; body does not contain 'fine'"
    assert "> GET /fail?x=1 HTTP/1.1" in msg
    assert "> User-Agent: python-requests" in msg
    assert "< HTTP/1.1 500 Internal Server Error" in msg
    assert "< X-Trace: abc123" in msg
    assert "< Content-Length: 2400" in msg
    assert "boom! boom!" in msg
    assert "... (1376 more bytes)" in msg  # first 1024 bytes only
    assert r.shown


def test_empty_body_and_post_body_in_transcript(http: HttpChecker, base: str) -> None:
    with pytest.raises(CheckFailed) as err:
        http.get(f"{base}/nothing").expect(200)
    assert "< HTTP/1.1 404 Not Found" in str(err.value)
    assert "(empty body)" in str(err.value)

    r = http.post(f"{base}/items", data="name=x")
    r.expect(201, contains="created name=x")
    with pytest.raises(CheckFailed) as err:
        r.expect(200)
    assert "> POST /items HTTP/1.1" in str(err.value)
    assert "> name=x" in str(err.value)


def test_where_predicate(http: HttpChecker, base: str) -> None:
    r = http.get(f"{base}/ok")
    r.expect(where=lambda resp: resp.text.startswith("hello"))
    with pytest.raises(CheckFailed, match="the 'where' predicate returned False"):
        r.expect(where=lambda resp: False)


def test_history_and_transcripts(http: HttpChecker, base: str) -> None:
    http.get(f"{base}/ok")
    failing = http.get(f"{base}/fail")
    with pytest.raises(CheckFailed):
        failing.expect(200)
    assert len(http.history) == 2
    text = http.transcripts()
    assert "> GET /ok HTTP/1.1" in text
    assert "/fail" not in text  # already shown by its CheckFailed


def test_retry_for_gives_up_with_curl_words() -> None:
    checker = HttpChecker(timeout=1)
    with refusing_port() as port:
        started = time.monotonic()
        with pytest.raises(CheckFailed) as err:
            checker.get(f"http://127.0.0.1:{port}/health", retry_for=0.8)
        elapsed = time.monotonic() - started
    msg = str(err.value)
    assert msg.startswith(f"GET http://127.0.0.1:{port}/health: no answer")
    assert f"* connect to 127.0.0.1 port {port} failed (ConnectionError)" in msg
    attempts = int(msg.rsplit(", ", 1)[1].split(" ")[0])
    assert attempts > 1  # it retried
    assert elapsed >= 0.8  # for all of retry_for (how much longer is no claim here)


def test_no_retry_when_retry_for_is_zero() -> None:
    with refusing_port() as port, \
            pytest.raises(CheckFailed, match=r"failed \(ConnectionError\), 1 attempt\(s\)"):
        HttpChecker().get(f"http://127.0.0.1:{port}/", retry_for=0)


def test_server_starting_late_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    # the port is ours from the start (bound, not listening: refused); it listens from the third attempt on
    server = LoggingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.server_bind()
    port = server.server_address[1]
    checker = HttpChecker(timeout=2)
    send = checker.session.request
    attempts: list[int] = []
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def request(*args: object, **kwargs: object) -> object:
        attempts.append(1)
        if len(attempts) == 3:
            server.server_activate()
            serving.start()
        return send(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checker.session, "request", request)
    try:
        r = checker.get(f"http://127.0.0.1:{port}/ok", retry_for=60)
        r.expect(200, contains="hello")
        assert r.attempts == 3  # two refused, then answered
    finally:
        if serving.is_alive():
            server.shutdown()
        server.server_close()
