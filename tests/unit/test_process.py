"""Local runs with real short Python programs: readiness, early exit, group stop, sweep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_flake.errors import FlakeError, FlakeTimeout, NotReady
from pytest_flake.process import Process, ProcessExited, sweep
from pytest_flake.session import start_time
from pytest_flake.waiting import wait_for

SERVER = textwrap.dedent("""
    import os, socket, sys, time
    time.sleep(float(os.environ.get("DELAY", "0")))
    print("listening on", os.environ["PORT"], flush=True)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"])))
    s.listen()
    while True:
        conn, _ = s.accept()
        conn.close()
""")


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited) within ``within`` seconds."""

    def exited() -> None:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state not in ("Z", "X"):
            raise NotReady(f"pid {pid} is in state {state}")

    try:
        wait_for(exited, what=f"pid {pid} exited", timeout=within, interval=0.05, max_interval=0.2)
    except FlakeTimeout:
        return False
    return True


def wait_for_output(proc: Process, text: str) -> None:
    """Wait until ``text`` shows in the output of ``proc`` (its output is the timeout's evidence)."""

    def shown() -> None:
        if text not in proc.logs():
            raise NotReady(f"{text!r} not in the output yet")

    wait_for(shown, what=f"{proc.name} printing {text!r}", timeout=10, interval=0.05, max_interval=0.2,
             on_timeout=proc.logs)


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def test_port_zero_picks_a_port_and_waits_until_it_opens(tmp_path: Path) -> None:
    proc = Process(python(SERVER), env={"DELAY": "0.4"}, port=0, timeout=10, name="srv", log_dir=tmp_path)
    assert proc.port is not None and proc.port > 0
    started = time.monotonic()
    with proc:
        assert time.monotonic() - started >= 0.4
        with socket.create_connection(("127.0.0.1", proc.port), timeout=1):
            pass
        assert proc.url("/health") == f"http://127.0.0.1:{proc.port}/health"
        assert proc.url("x") == f"http://127.0.0.1:{proc.port}/x"
        assert f"listening on {proc.port}" in proc.logs()
        assert (tmp_path / f"{proc.pid}.pid").read_text() == start_time(proc.pid)
        assert proc.poll() is None
        pid = proc.pid
    assert gone(pid)
    assert not (tmp_path / f"{pid}.pid").exists()
    assert proc.returncode is not None


def test_explicit_port_env_is_respected() -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    with Process(python(SERVER), env={"PORT": str(number)}, port=number, timeout=10) as proc:
        assert proc.port == number
        assert f"listening on {number}" in proc.logs()


def test_exit_before_ready_reports_its_output(tmp_path: Path) -> None:
    script = "import sys; print('config file /etc/app.conf missing', flush=True); sys.exit(3)"
    proc = Process(python(script), port=0, timeout=10, name="app", log_dir=tmp_path)
    with pytest.raises(ProcessExited) as err:
        proc.start()
    exc = err.value
    assert isinstance(exc, FlakeError)
    assert f"app exited with code 3 before it opened port {proc.port}" in str(exc)
    assert "config file /etc/app.conf missing" in "\n".join(getattr(exc, "__notes__", []))
    assert not list(tmp_path.glob("*.pid"))


def test_never_listening_times_out_with_output_and_is_stopped() -> None:
    script = "import time; print('starting, honest', flush=True); time.sleep(60)"
    proc = Process(python(script), port=0, timeout=1, name="slow")
    with pytest.raises(FlakeTimeout) as err:
        proc.start()
    msg = str(err.value)
    assert f"slow (pid {proc.pid}) listening on 127.0.0.1:{proc.port}: not ready after 1s" in msg
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "output of slow:" in notes and "starting, honest" in notes
    assert gone(proc.pid)


def test_stop_kills_the_whole_group_including_a_grandchild(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        print("forked", child.pid, flush=True)
        time.sleep(60)
    """)
    proc = Process(python(script), name="parent")
    proc.start()
    wait_for_output(proc, "forked")  # printed after the grandchild's pid was written
    grandchild = int(marker.read_text())
    assert os.getpgid(grandchild) == proc.pid  # same process group as the leader
    proc.stop()
    assert gone(proc.pid)
    assert gone(grandchild)
    assert proc.stop() == proc.returncode  # idempotent


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring TERM", flush=True)
        time.sleep(60)
    """)
    proc = Process(python(script), name="stubborn")
    proc.start()
    wait_for_output(proc, "ignoring TERM")
    code = proc.stop(grace=0.5)
    assert code == -signal.SIGKILL  # TERM was ignored: only the escalation ended it


def test_logs_collects_stdout_and_stderr() -> None:
    script = ("import sys, time; print('out line', flush=True); "
              "print('err line', file=sys.stderr, flush=True); time.sleep(60)")
    proc = Process(python(script))
    assert proc.logs() == ""
    with proc:
        wait_for_output(proc, "err line")
        assert "out line" in proc.logs()
    assert "err line" in proc.logs()  # still readable after stop


def test_not_started_and_no_port() -> None:
    proc = Process(["true"])
    assert "not started" in repr(proc)
    with pytest.raises(FlakeError, match="was not started"):
        _ = proc.pid
    with pytest.raises(FlakeError, match="started without a port"):
        proc.url()
    assert proc.stop() is None


def test_missing_program_is_a_flake_error(tmp_path: Path) -> None:
    with pytest.raises(FlakeError, match="cannot start"):
        Process([str(tmp_path / "no-such-program")]).start()


def _group_leader(seconds: int = 60) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", str(seconds)], start_new_session=True)


def test_sweep_kills_recorded_group(tmp_path: Path) -> None:
    leader = _group_leader()
    try:
        (tmp_path / f"{leader.pid}.pid").write_text(start_time(leader.pid))
        assert sweep(tmp_path) == 1
        assert leader.wait(5) == -signal.SIGKILL
        assert not list(tmp_path.glob("*.pid"))
    finally:
        leader.kill()
        leader.wait()


def test_sweep_ignores_recycled_pid(tmp_path: Path) -> None:
    leader = _group_leader()
    try:
        # the pid is recorded with another start time: a different process had it
        (tmp_path / f"{leader.pid}.pid").write_text("1")
        (tmp_path / "garbage.pid").write_text("x")
        assert sweep(tmp_path) == 0
        assert leader.poll() is None
        assert not list(tmp_path.glob("*.pid"))
    finally:
        leader.kill()
        leader.wait()


def test_sweep_of_missing_directory(tmp_path: Path) -> None:
    assert sweep(tmp_path / "nope") == 0
