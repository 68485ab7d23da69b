"""Local runs of flake packages: start, wait for the port, keep the output, stop the group.

A :class:`Process` runs in a session (process group) of its own, so ``stop()`` reaches
every child it forked. Its output goes to a file, readable with :meth:`Process.logs` at
any time. The child is asked to die with its parent (``PR_SET_PDEATHSIG``), and its
pid is recorded under the session directory, so a test run killed with SIGKILL leaves
nothing running for long: the next session kills what is recorded (:func:`sweep`, the ``process``
component).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import ProcessError, ProcessExited, UsageError, counted, tail
from .session import start_time
from .waiting import free_port, port_open, wait_for

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Process:
    """A program started by :meth:`Flake.run`; stops (its whole process group) on exit.

    ``port``: wait until 127.0.0.1:port accepts connections; ``0`` picks a free port.
    When ``env`` has no ``PORT``, it is set to ``port`` (the usual convention for web
    servers), so ``flake.run(port=0)`` suits any server that honours ``$PORT``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        timeout: float = 60,
        name: str | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.port = free_port() if port == 0 else port
        self.timeout = timeout
        self._env = dict(os.environ)
        if env:
            self._env.update(env)
        if self.port is not None and not (env and "PORT" in env):
            self._env["PORT"] = str(self.port)
        self._cwd = cwd
        self._log_dir = log_dir
        self._log_path: Path | None = None
        self._kept_logs: str | None = None  # the output, once a log file of our own is removed at stop()
        self._pid_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Process:
        """Start the program and wait until it is ready; on failure nothing is left running."""
        directory = self._log_dir or Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=directory)
        self._log_path = Path(path)
        log.info("run %s", " ".join(self.argv))
        with os.fdopen(fd, "wb") as out:
            try:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=self._env, cwd=self._cwd, start_new_session=True, preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                if self._log_dir is None:
                    self._log_path.unlink(missing_ok=True)
                raise ProcessError(f"cannot start {self.argv[0]}: {exc}") from exc
        if self._log_dir is not None:
            self._pid_file = self._log_dir / f"{self._proc.pid}.pid"
            self._pid_file.write_text(start_time(self._proc.pid))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        if self.port is None:
            return
        port = self.port
        started = time.monotonic()

        def probe() -> None:
            if self.poll() is not None:
                raise ProcessExited(
                    f"{self.name} exited with code {self.returncode} before it opened port {port}",
                    hint="its output follows", details=tail(self.logs()) or "(no output)")
            port_open(port)

        wait_for(probe, what=f"{self.name} (pid {self.pid}) listening on 127.0.0.1:{port}", timeout=self.timeout,
                 interval=0.05, max_interval=0.5,
                 hint="is it listening on 127.0.0.1 and on that port? its output follows",
                 on_timeout=lambda: f"output of {self.name}:\n{tail(self.logs()) or '(no output)'}")
        log.info("%s ready on port %d after %.2fs", self.name, port, time.monotonic() - started)

    def poll(self) -> int | None:
        """The exit code if the program has exited, else None."""
        if self._proc is not None and self.returncode is None:
            self.returncode = self._proc.poll()
        return self.returncode

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(grace)
        # children that outlived the leader still belong to the group
        self._signal_group(signal.SIGKILL)
        self.returncode = proc.returncode
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)
        if self._log_dir is None and self._log_path is not None and self._kept_logs is None:
            # a temporary log file of our own (no session directory to hold it): keep the text, not the file
            self._kept_logs = self.logs()
            self._log_path.unlink(missing_ok=True)
        return self.returncode

    def _signal_group(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Process:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.name} was not started", hint="call start() or use it in a with block")
        return self._proc.pid

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` of the program's port."""
        if self.port is None:
            raise UsageError(f"{self.name} was started without a port", hint="pass port= to flake.run()")
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def logs(self) -> str:
        """Everything the program wrote to stdout and stderr so far."""
        if self._kept_logs is not None:
            return self._kept_logs
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def __repr__(self) -> str:
        state = "not started" if self._proc is None else f"pid {self._proc.pid}"
        return f"<Process {self.name} {state} port={self.port}>"


def sweep(directory: Path) -> int:
    """Kill the process groups recorded in a dead session's ``directory``; return how many."""
    killed = 0
    if not directory.is_dir():
        return 0
    for pid_file in directory.glob("*.pid"):
        try:
            pid = int(pid_file.stem)
            recorded = pid_file.read_text().strip()
        except (ValueError, OSError):
            pid_file.unlink(missing_ok=True)
            continue
        if recorded and start_time(pid) == recorded:  # the same process, not a recycled pid
            try:
                os.killpg(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        pid_file.unlink(missing_ok=True)
    return killed


class ProcessComponent:
    """Local runs (``flake.run()``) and ssh masters: the process groups a killed session recorded."""

    name = "process"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        """Kill the process groups recorded under each dead session's directory (ssh masters among them)."""
        killed = sum(sweep(state_root / "sessions" / session_id) for session_id in dead_ids)
        return [counted(killed, "process group") + " (local runs, ssh masters) killed"] if killed else []

    def doctor(self, settings: Settings) -> list[tuple[bool, str]]:
        """No checks of its own: a local run needs only Nix, which the doctor checks first."""
        return []


def component(settings: Settings | None = None) -> ProcessComponent:
    """The ``process`` component of the registry (:mod:`pytest_flake.components`)."""
    return ProcessComponent(settings)


__all__ = ["Process", "ProcessComponent", "ProcessError", "ProcessExited", "component", "sweep"]
