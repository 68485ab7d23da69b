"""A test session's identity: its id, its state directory, its registration.

Every resource pytest-flake creates (container, libvirt domain, overlay disk, saved
state, process) carries the session id: containers as the label
``pytest-flake.session=<id>``, domains and files in their names (``pf-<id>-...``).
A session registers itself in ``<state>/sessions/<id>/pid`` (its pid and start time,
:func:`registration`); a later session that finds a registration whose process is gone
sweeps what that session left behind (:mod:`pytest_flake.sweep`).

Under pytest-xdist each worker is a session of its own (a live sibling is never swept), and
the workers of one run share a run directory (:mod:`pytest_flake.xdist`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from .errors import InfrastructureError

LABEL = "pytest-flake.session"
PREFIX = "pf-"


def state_dir() -> Path:
    """Where pytest-flake keeps its state: ``$PYTEST_FLAKE_STATE`` or the user cache."""
    explicit = os.environ.get("PYTEST_FLAKE_STATE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pytest-flake"


def start_time(pid: int) -> str:
    """The kernel's start time of ``pid``: survives exec, and tells a recycled pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` runs, and (given ``started``) is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or start_time(pid) == started


def registration(directory: Path) -> tuple[int, str] | None:
    """``(pid, start time)`` registered in ``directory/pid`` (a session's or a run's), None when unreadable."""
    try:
        pid_text, _, started = (directory / "pid").read_text().strip().partition(" ")
        return int(pid_text), started
    except (OSError, ValueError):
        return None


class Session:
    """The current test session: a short id, its own directory, and its registration."""

    def __init__(self, root: Path | None = None, session_id: str | None = None) -> None:
        self.root = root or state_dir()
        self.id = session_id or f"{PREFIX}{secrets.token_hex(4)}"
        self.dir = self.root / "sessions" / self.id
        self.keep = False  # set when --flake-keep kept a resource: the next session sweeps it

    def __enter__(self) -> Session:
        pid = os.getpid()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "pid").write_text(f"{pid} {start_time(pid)}")
        except OSError as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise InfrastructureError(
                f"cannot register the test session in {self.root}: {exc.strerror or exc}",
                hint="free space there, or point PYTEST_FLAKE_STATE at a folder with room (VM images and "
                     "containers keep their files in it)") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def name(self, *parts: str) -> str:
        """A resource name carrying the session id: ``pf-1a2b3c4d-vm-1``."""
        return "-".join((self.id, *parts))

    def session_dir(self, session_id: str) -> Path:
        """The directory of any session (this one or a dead one) by id."""
        return self.root / "sessions" / session_id
