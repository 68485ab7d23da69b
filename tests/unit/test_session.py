"""A session's identity (id, state directory, registration, keep, start times, liveness), and the sweep's
side of it: which registrations are dead (recycled pids included), forgetting them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pytest_flake.session import PREFIX, Session, alive, registration, start_time, state_dir
from pytest_flake.sweep import dead_sessions, forget


def register(root: Path, session_id: str, text: str) -> Path:
    d = root / "sessions" / session_id
    d.mkdir(parents=True)
    (d / "pid").write_text(text)
    return d


def finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_state_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    assert state_dir() == tmp_path / "state"
    monkeypatch.delenv("PYTEST_FLAKE_STATE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert state_dir() == tmp_path / "cache" / "pytest-flake"


def test_session_registers_and_removes_itself(tmp_path: Path) -> None:
    session = Session(root=tmp_path)
    assert session.id.startswith(PREFIX) and len(session.id) == len(PREFIX) + 8
    assert Session(root=tmp_path).id != session.id
    with session as s:
        assert s is session
        assert s.dir == tmp_path / "sessions" / s.id
        pid, started = (s.dir / "pid").read_text().split(" ")
        assert int(pid) == os.getpid()
        assert started == start_time(os.getpid()) != ""
        assert s.name("vm", "1") == f"{s.id}-vm-1"
        assert s.session_dir(s.id) == s.dir
    assert not session.dir.exists()


def test_keep_leaves_the_registration(tmp_path: Path) -> None:
    with Session(root=tmp_path) as s:
        s.keep = True
    assert (s.dir / "pid").exists()


def test_registration_reads_a_session_or_a_run(tmp_path: Path) -> None:
    assert registration(register(tmp_path, f"{PREFIX}a", "123 456")) == (123, "456")
    assert registration(register(tmp_path, f"{PREFIX}b", "123")) == (123, "")  # no start time recorded
    assert registration(register(tmp_path, f"{PREFIX}c", "not a pid")) is None
    assert registration(tmp_path / "missing") is None


def test_start_time_and_alive() -> None:
    me = os.getpid()
    assert start_time(me).isdigit()
    assert alive(me)
    assert alive(me, start_time(me))
    assert not alive(me, "1")  # same pid, another start: recycled
    dead = finished_pid()
    assert start_time(dead) == ""
    assert not alive(dead)


# --- the sweep's side: which registrations are dead, and forgetting them -------------------
def test_dead_sessions(tmp_path: Path) -> None:
    me = os.getpid()
    register(tmp_path, f"{PREFIX}alive", f"{me} {start_time(me)}")
    register(tmp_path, f"{PREFIX}oldfmt", f"{me}")  # no start time recorded: pid alone decides
    register(tmp_path, f"{PREFIX}gone", f"{finished_pid()} 12345")
    register(tmp_path, f"{PREFIX}recycled", f"{me} 1")  # our pid now, but not the process that registered
    register(tmp_path, f"{PREFIX}garbage", "not a pid")
    (tmp_path / "sessions" / f"{PREFIX}nopid").mkdir()
    register(tmp_path, "other-dir", f"{finished_pid()} 1")  # not ours: ignored
    with Session(root=tmp_path) as current:
        dead = dead_sessions(current)
        assert dead == sorted([f"{PREFIX}gone", f"{PREFIX}recycled", f"{PREFIX}garbage", f"{PREFIX}nopid"])
        assert current.id not in dead


def test_dead_sessions_without_registry(tmp_path: Path) -> None:
    assert dead_sessions(Session(root=tmp_path / "empty")) == []


def test_forget(tmp_path: Path) -> None:
    d = register(tmp_path, f"{PREFIX}gone", f"{finished_pid()} 1")
    (d / "123.pid").write_text("1")
    with Session(root=tmp_path) as current:
        assert dead_sessions(current) == [f"{PREFIX}gone"]
        forget(current, f"{PREFIX}gone")
        assert not d.exists()
        assert dead_sessions(current) == []
        forget(current, f"{PREFIX}gone")  # idempotent
