"""The one waiting primitive: retries on "not yet", gives up with what it saw last."""

from __future__ import annotations

import socket
import time

import pytest

from pytest_flake.errors import FlakeError, FlakeTimeout
from pytest_flake.waiting import NotReady, free_port, port_open, wait_for


def test_returns_the_probe_result_once_ready() -> None:
    calls = []

    def probe() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise NotReady(f"attempt {len(calls)}")
        return "ready"

    assert wait_for(probe, what="thing", timeout=5, interval=0.01) == "ready"
    assert len(calls) == 3


def test_named_transient_errors_are_retried() -> None:
    calls = []

    def probe() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionRefusedError("refused")
        return 42

    assert wait_for(probe, what="thing", timeout=5, interval=0.01, transient=(ConnectionError,)) == 42
    assert len(calls) == 2


def test_other_errors_propagate_at_once() -> None:
    calls = []

    def probe() -> None:
        calls.append(1)
        raise ValueError("crashed")

    with pytest.raises(ValueError, match="crashed"):
        wait_for(probe, what="thing", timeout=5, interval=0.01)
    assert calls == [1]  # called once: not retried until the timeout


def test_timeout_names_what_and_last_seen() -> None:
    seen = iter(range(1000))

    def probe() -> None:
        raise NotReady(f"state {next(seen)}")

    started = time.monotonic()
    with pytest.raises(FlakeTimeout) as err:
        wait_for(probe, what="guest web answering SSH", timeout=0.3, interval=0.02, max_interval=0.05,
                 hint="look at the console")
    assert time.monotonic() - started >= 0.3  # it waited the whole timeout (how much longer is no claim here)
    exc = err.value
    assert isinstance(exc, TimeoutError) and isinstance(exc, FlakeError)
    msg = str(exc)
    assert msg.startswith("guest web answering SSH: not ready after 0.3s; last seen: NotReady: state ")
    assert "(look at the console)" in msg
    last = int(msg.split("state ")[1].split(" ")[0])
    assert last > 0  # the last attempt, not the first
    assert isinstance(exc.__cause__, NotReady)


def test_timeout_attaches_evidence() -> None:
    def probe() -> None:
        raise NotReady("no")

    with pytest.raises(FlakeTimeout) as err:
        wait_for(probe, what="x", timeout=0.1, interval=0.02, on_timeout=lambda: "console: kernel panic")
    assert "console: kernel panic" in getattr(err.value, "__notes__", [])


def test_evidence_failure_does_not_hide_the_timeout() -> None:
    def probe() -> None:
        raise NotReady("no")

    def broken() -> str:
        raise OSError("log gone")

    with pytest.raises(FlakeTimeout) as err:
        wait_for(probe, what="x", timeout=0.1, interval=0.02, on_timeout=broken)
    assert "(could not collect logs: log gone)" in getattr(err.value, "__notes__", [])


def test_port_open_and_free_port() -> None:
    port = free_port()
    with pytest.raises(NotReady, match=f"127.0.0.1:{port} refused"):
        port_open(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # free_port gave a bindable port
        server.listen()
        port_open(port)
