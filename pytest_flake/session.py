"""A test session's identity, its state directory, and the sweep of dead sessions.

Every resource pytest-flake creates (container, libvirt domain, overlay disk, saved
state, process) carries the session id: containers as the label
``pytest-flake.session=<id>``, domains and files in their names (``pf-<id>-...``).
A session registers itself in ``<state>/sessions/<id>/pid``; a later session that
finds a registration whose process is gone sweeps what that session left behind
(it was killed with SIGKILL, or its machine lost power) before it starts its own.

Under pytest-xdist each worker is a session of its own (a live sibling is never swept), and
the workers of one run share a run directory (:mod:`pytest_flake.xdist`, ``session.run``).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InfrastructureError, counted

if TYPE_CHECKING:
    from .xdist import Run

log = logging.getLogger(__name__)

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


class Session:
    """The current test session: a short id, its own directory, and its registration."""

    def __init__(self, root: Path | None = None, session_id: str | None = None) -> None:
        self.root = root or state_dir()
        self.id = session_id or f"{PREFIX}{secrets.token_hex(4)}"
        self.dir = self.root / "sessions" / self.id
        self.keep = False  # set when --flake-keep kept a resource: the next session sweeps it
        self.run: Run | None = None  # the pytest-xdist run this session is a worker of (None: the session is the run)

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
        from .tunnel import close_all

        close_all(self.dir)  # ssh master connections (remote Docker, libvirt) and their forwards
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def name(self, *parts: str) -> str:
        """A resource name carrying the session id: ``pf-1a2b3c4d-vm-1``."""
        return "-".join((self.id, *parts))

    def dead_sessions(self) -> list[str]:
        """Ids of registered sessions whose process is gone (killed runs)."""
        dead: list[str] = []
        base = self.root / "sessions"
        if not base.is_dir():
            return dead
        for entry in sorted(base.iterdir()):
            if entry.name == self.id or not entry.name.startswith(PREFIX):
                continue
            try:
                pid_text, _, started = (entry / "pid").read_text().strip().partition(" ")
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, started = 0, ""
            if pid <= 0 or not alive(pid, started or None):
                dead.append(entry.name)
        return dead

    def forget(self, session_id: str) -> None:
        """Remove the registration of a dead session once its resources are swept."""
        shutil.rmtree(self.root / "sessions" / session_id, ignore_errors=True)

    def session_dir(self, session_id: str) -> Path:
        """The directory of any session (this one or a dead one) by id."""
        return self.root / "sessions" / session_id


def sweep_dead_sessions(current: Session, settings: Any) -> str | None:
    """Remove what killed sessions left: their processes, containers, domains and files.

    Called once per session, before the first test that uses a fixture of the plugin (a
    run that never uses it touches no daemon). Every component of the registry
    (:func:`pytest_flake.components.components`) sweeps, under this session's state
    root. Returns one line that names the sessions swept and what was done about what
    each component found, or None when no session had died.
    """
    from .components import components
    from .xdist import sweep_dead_runs

    sweep_dead_runs(current.root, keep=current.run.dir if current.run is not None else None)
    dead = current.dead_sessions()
    if not dead:
        return None
    log.warning("pytest-flake: sweeping %d session(s) that did not end or left resources: %s", len(dead),
                ", ".join(dead))
    done: list[str] = []
    for component in components(settings):
        try:
            found = component.sweep(dead, current.root)
        except Exception as exc:  # one component's trouble must not stop the others
            log.warning("pytest-flake: could not sweep %s resources of %s: %s", component.name,
                        ", ".join(dead), exc)
            found = [f"could not sweep: {exc}"]
        if found:
            done.append(f"{component.name}: {', '.join(found)}")
    for session_id in dead:
        current.forget(session_id)
    return (f"swept what {counted(len(dead), 'earlier session')} left ({', '.join(dead)}): "
            + ("; ".join(done) if done else "nothing of theirs was left"))
