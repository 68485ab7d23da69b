"""The sweep: what killed sessions and runs left behind, removed by the next session.

A session registers itself in ``<state>/sessions/<id>/pid`` (:class:`~pytest_flake.session.Session`),
the controller of a pytest-xdist run in ``<state>/runs/<uid>/pid`` (:class:`~pytest_flake.xdist.Run`).
A registration whose process is gone (killed with SIGKILL, a machine that lost power) is dead:
:func:`sweep_dead_sessions` has every component of the registry (:mod:`pytest_flake.components`)
remove what carries a dead session's id, then forgets the session, and removes the directories of
dead runs (their GC roots, caches and locks). A live sibling worker and a live controller are never
swept. Never imports pytest.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .components import components
from .errors import counted
from .session import PREFIX, Session, alive, registration, state_dir
from .xdist import RUNS, Run

log = logging.getLogger(__name__)

# a run directory without a registration this old was left by a crash between mkdir and the write
_UNREGISTERED_GRACE = 3600.0


def dead_sessions(current: Session) -> list[str]:
    """Ids of the sessions registered under ``current``'s state root whose process is gone (killed runs)."""
    dead: list[str] = []
    base = current.root / "sessions"
    if not base.is_dir():
        return dead
    for entry in sorted(base.iterdir()):
        if entry.name == current.id or not entry.name.startswith(PREFIX):
            continue
        pid, started = registration(entry) or (0, "")
        if pid <= 0 or not alive(pid, started or None):
            dead.append(entry.name)
    return dead


def forget(current: Session, session_id: str) -> None:
    """Remove the registration of a dead session once its resources are swept."""
    shutil.rmtree(current.session_dir(session_id), ignore_errors=True)


def dead_runs(root: Path | None = None, *, keep: Path | None = None) -> list[Path]:
    """Run directories whose controller is gone (a run killed with SIGKILL, a lost machine).

    A live controller's run is never listed (its workers may be using it), nor ``keep`` (the
    run of the caller).
    """
    base = (root or state_dir()) / RUNS
    dead: list[Path] = []
    if not base.is_dir():
        return dead
    for entry in sorted(base.iterdir()):
        if not entry.is_dir() or (keep is not None and entry == keep):
            continue
        controller = registration(entry)
        if controller is None:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > _UNREGISTERED_GRACE:
                    dead.append(entry)
            continue
        pid, started = controller
        if pid <= 0 or not alive(pid, started or None):
            dead.append(entry)
    return dead


def sweep_dead_runs(root: Path | None = None, *, keep: Path | None = None) -> list[str]:
    """Remove the directories of runs whose controller died (their GC roots, caches and locks)."""
    swept: list[str] = []
    for entry in dead_runs(root, keep=keep):
        log.info("pytest-flake: removing the directory of the xdist run %s, whose controller is gone", entry.name)
        shutil.rmtree(entry, ignore_errors=True)
        swept.append(entry.name)
    return swept


def sweep_dead_sessions(current: Session, settings: Any, run: Run | None = None) -> str | None:
    """Remove what killed sessions left: their processes, containers, domains and files.

    Called once per session, before the first test that uses a fixture of the plugin (a
    run that never uses it touches no daemon); ``run`` is the pytest-xdist run ``current``
    is a worker of (kept). Every component of the registry sweeps, under this session's
    state root. Returns one line that names the sessions swept and what was done about what
    each component found, or None when no session had died.
    """
    sweep_dead_runs(current.root, keep=run.dir if run is not None else None)
    dead = dead_sessions(current)
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
        forget(current, session_id)
    return (f"swept what {counted(len(dead), 'earlier session')} left ({', '.join(dead)}): "
            + ("; ".join(done) if done else "nothing of theirs was left"))


__all__ = ["dead_runs", "dead_sessions", "forget", "sweep_dead_runs", "sweep_dead_sessions"]
