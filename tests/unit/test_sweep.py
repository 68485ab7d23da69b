"""The sweep's side of sessions: which registrations are dead (recycled pids included), and forgetting them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pytest_flake.session import PREFIX, Session, start_time
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
