"""``Process`` used directly (a shared server, as the README shows) leaves no log file behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from pytest_flake.errors import FlakeError
from pytest_flake.process import Process, ProcessExited
from tests.unit.test_process import wait_for_output


@pytest.fixture
def tmpdir_of_tempfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_stopped_process_removes_its_log_and_keeps_its_output(tmpdir_of_tempfile: Path) -> None:
    with Process(["sh", "-c", "echo serving; exec sleep 30"], name="shared") as server:
        assert [p.name for p in tmpdir_of_tempfile.iterdir()][0].startswith("shared-")
        wait_for_output(server, "serving")
    assert list(tmpdir_of_tempfile.iterdir()) == []
    assert server.logs() == "serving\n"


def test_process_that_exits_before_ready_leaves_nothing(tmpdir_of_tempfile: Path) -> None:
    with pytest.raises(ProcessExited) as raised:
        Process(["sh", "-c", "echo broken; exit 3"], port=0, name="crash").start()
    assert raised.value.details is not None and "broken" in raised.value.details
    assert list(tmpdir_of_tempfile.iterdir()) == []


def test_missing_program_leaves_nothing(tmpdir_of_tempfile: Path) -> None:
    with pytest.raises(FlakeError):
        Process(["/nonexistent/program"]).start()
    assert list(tmpdir_of_tempfile.iterdir()) == []


def test_session_log_dir_keeps_the_log(tmp_path: Path) -> None:
    with Process(["sh", "-c", "echo kept; exec sleep 30"], name="in-session", log_dir=tmp_path) as server:
        wait_for_output(server, "kept")
    logs = list(tmp_path.glob("in-session-*.log"))
    assert len(logs) == 1 and logs[0].read_text() == "kept\n"
    assert server.logs() == "kept\n"
