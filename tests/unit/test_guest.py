"""GuestCommands on a fake guest whose run() answers from a script (no daemons)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_flake.errors import CheckFailed, CheckTimeout, FlakeTimeout
from pytest_flake.guest import Guest, GuestCommands


@dataclass
class Result:
    rc: int
    stdout: str = ""
    stderr: str = ""


class FakeGuest(GuestCommands):
    """A guest whose commands are answered by ``answer(command)``; records what ran."""

    def __init__(self, answer: Callable[[str], Result], timeout: float = 2.0) -> None:
        self.name = "fake"
        self.answer = answer
        self.commands: list[str] = []
        self._timeout_s = timeout

    @property
    def wait_timeout(self) -> float:
        return self._timeout_s

    def run(self, cmd: str) -> Result:
        self.commands.append(cmd)
        if cmd.startswith("journalctl"):
            return Result(0, "web-server[42]: listen tcp :8080: bind: address already in use\n")
        return self.answer(cmd)

    def copy_to(self, local: str | os.PathLike[str], remote: str) -> None:
        pass

    def copy_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        pass

    def forward(self, guest_port: int) -> int:
        return 40000 + guest_port

    def url(self, guest_port: int, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.forward(guest_port)}/{path.lstrip('/')}"

    @property
    def host(self) -> Any:
        return None


def test_fake_and_vm_comply_with_the_protocol() -> None:
    from pytest_flake.vm import VM

    assert isinstance(FakeGuest(lambda c: Result(0)), Guest)
    for member in ("run", "copy_to", "copy_from", "forward", "url", "journal", "host", "succeed", "fail",
                   "wait_until_succeeds", "wait_for_unit", "wait_for_open_port", "wait_for_console_text",
                   "wait_timeout"):
        assert hasattr(VM, member), member
    assert issubclass(VM, GuestCommands)


def test_succeed_returns_stdout_and_fail_checks_the_opposite() -> None:
    guest = FakeGuest(lambda c: Result(0, "hello\n") if "true" in c else Result(3, "", "boom\n"))
    assert guest.succeed("true") == "hello\n"
    assert guest.fail(["false", "x y"]) == ""
    assert guest.commands[-1] == shlex.join(["false", "x y"])
    with pytest.raises(CheckFailed) as info:
        guest.succeed("false")
    err = info.value
    assert (err.rc, err.stderr) == (3, "boom\n")
    assert "exit code 3" in str(err) and "boom" in str(err)
    assert "address already in use" in err.journal and "address already in use" in str(err)
    assert not isinstance(err, FlakeTimeout)
    with pytest.raises(CheckFailed, match="succeeded but should have failed"):
        guest.fail("true")


def test_wait_until_succeeds_retries_then_times_out_with_the_last_attempt() -> None:
    calls = iter([Result(1, "", "not yet"), Result(1, "", "not yet"), Result(0, "ok")])
    guest = FakeGuest(lambda c: next(calls))
    assert guest.wait_until_succeeds("probe") == "ok"

    stuck = FakeGuest(lambda c: Result(7, "partial", "still down"), timeout=0.5)
    with pytest.raises(CheckTimeout) as info:
        stuck.wait_until_succeeds("probe")
    assert isinstance(info.value, FlakeTimeout) and isinstance(info.value, CheckFailed)
    assert (info.value.rc, info.value.stdout, info.value.stderr) == (7, "partial", "still down")


def test_wait_for_unit_fails_at_once_when_the_unit_failed() -> None:
    answers = {"n": 0}

    def answer(cmd: str) -> Result:
        answers["n"] += 1
        if answers["n"] == 1:
            return Result(0, "ActiveState=activating\nSubState=start\nLoadState=loaded\nResult=success\n")
        return Result(0, "ActiveState=failed\nSubState=failed\nLoadState=loaded\nResult=exit-code\n")

    guest = FakeGuest(answer, timeout=60)
    with pytest.raises(CheckFailed) as info:
        guest.wait_for_unit("web-server")
    assert not isinstance(info.value, FlakeTimeout)
    assert "web-server.service failed (Result=exit-code)" in str(info.value)
    assert "address already in use" in str(info.value)
    assert answers["n"] == 2  # it stopped at the first failed state
    journal = [c for c in guest.commands if c.startswith("journalctl")]
    assert journal and "web-server.service" in journal[0]
    assert "--boot" in journal[0].split()  # this boot's journal only: a tree may hold earlier boots


def test_wait_for_unit_inactive_without_jobs_fails_but_a_queued_job_is_waited_for() -> None:
    idle = FakeGuest(lambda c: Result(0, "ActiveState=inactive\nSubState=dead\nLoadState=loaded\nResult=success\n"))
    with pytest.raises(CheckFailed, match="inactive and no job will start it"):
        idle.wait_for_unit("a.service")
    states = iter([
        "ActiveState=inactive\nSubState=dead\nLoadState=loaded\nResult=success\nJob=12 start waiting\n",
        "ActiveState=inactive\nLoadState=not-found\n",
        "ActiveState=active\nSubState=running\nLoadState=loaded\n",
    ])
    queued = FakeGuest(lambda c: Result(0, next(states)))
    queued.wait_for_unit("a.service")


def test_wait_for_open_port_looks_for_a_listening_socket_in_the_guest() -> None:
    seen: list[str] = []

    def answer(cmd: str) -> Result:
        seen.append(cmd)
        return Result(0) if len(seen) > 1 else Result(1)

    FakeGuest(answer).wait_for_open_port(8080)
    assert ":1F90 " in seen[0] and "/proc/net/tcp" in seen[0]
    with pytest.raises(CheckTimeout, match="port 8081 open"):
        FakeGuest(lambda c: Result(1), timeout=0.4).wait_for_open_port(8081)
