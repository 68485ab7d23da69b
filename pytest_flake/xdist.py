"""One run shared by the processes of a pytest-xdist run: its directory, its locks, its build cache.

Under pytest-xdist each worker is a session of its own (its own id, registration, VMs and
containers: :mod:`pytest_flake.session`), but the workers of one run share what is costly
to make: a flake output is built once per run, an image loaded once per run. They meet in
the run's directory ``<state>/runs/<testrun_uid>/``:

- ``pid``: the controller's pid and start time (like a session's registration); a later
  session removes the directory of a run whose controller is gone
  (:func:`pytest_flake.sweep.sweep_dead_runs`), and never the one of a live controller, whose
  workers may still be using it;
- ``builds/<key>.json``: a build's store paths, written by the worker that built it;
- ``gcroots/``: that build's out-link, so the store paths stay rooted until the whole run
  ends (not only until the worker that built them does);
- ``locks/<name>.lock``: one lock per build and per image load (:meth:`Run.once`,
  :meth:`Run.lock`).

The controller (the process without ``config.workerinput``) names the directory and hands it
to each worker (:meth:`Run.workerinput`, :meth:`Run.from_workerinput`); the first worker that
uses the plugin makes it, and the controller removes it when the run ends. Without xdist (or
with ``-n 0``) there is no run: the session is the run, and nothing here is used.

Never imports pytest (the hooks are in :mod:`pytest_flake.plugin`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._host import locked, write_atomic
from .session import start_time, state_dir

log = logging.getLogger(__name__)

RUNS = "runs"
WORKERINPUT_KEY = "pytest_flake_run"  # node.workerinput[...]: what a worker needs to join the run


def _safe(name: str) -> str:
    """A file name for ``name``: its readable characters, and a hash when any were dropped."""
    clean = re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:80]
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return clean


class Run:
    """The directory the processes of one pytest-xdist run share: ``<state>/runs/<uid>/``.

    ``controller`` is ``(pid, start time)`` of the process that owns the run. The directory is
    made on first use (:meth:`ensure`), so a run that never uses the plugin leaves no trace.
    """

    def __init__(self, directory: Path, controller: tuple[int, str], host: str = "") -> None:
        self.dir = directory
        self.controller = controller
        self.host = host or socket.gethostname()

    @classmethod
    def for_uid(cls, uid: str, root: Path | None = None) -> Run:
        """The run of xdist's ``testrunuid`` owned by this process (the controller)."""
        pid = os.getpid()
        return cls((root or state_dir()) / RUNS / _safe(uid), (pid, start_time(pid)))

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def builds(self) -> Path:
        return self.dir / "builds"

    @property
    def gcroots(self) -> Path:
        return self.dir / "gcroots"

    # -- controller and workers ------------------------------------------------------------
    def workerinput(self) -> dict[str, str]:
        """What the controller puts in each worker's ``node.workerinput`` (strings: execnet sends them)."""
        pid, started = self.controller
        return {"dir": str(self.dir), "pid": str(pid), "started": started, "host": self.host}

    @classmethod
    def from_workerinput(cls, workerinput: Mapping[str, Any]) -> Run | None:
        """The run a worker belongs to, or None: no run handed in, or a controller on another machine.

        A worker started elsewhere (``--tx ssh=...``) cannot reach the controller's directory:
        it builds and loads on its own, like a run without xdist.
        """
        data = workerinput.get(WORKERINPUT_KEY)
        if not isinstance(data, Mapping) or not data.get("dir"):
            return None
        if data.get("host") and data["host"] != socket.gethostname():
            log.info("pytest-flake: the xdist controller runs on %s, this worker on %s: no shared run",
                     data["host"], socket.gethostname())
            return None
        try:
            pid = int(data["pid"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(Path(str(data["dir"])), (pid, str(data.get("started") or "")), str(data.get("host") or ""))

    def ensure(self) -> Run:
        """Make the directory and its registration (the controller's pid); idempotent, safe in parallel."""
        if (self.dir / "pid").is_file():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        pid, started = self.controller
        write_atomic(self.dir / "pid", f"{pid} {started}")
        return self

    def remove(self) -> None:
        """Remove the directory (the controller, when the run ends): the GC roots of its builds go with it."""
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- sharing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the run-wide lock ``name`` (a worker holding it blocks its siblings, not itself twice)."""
        self.ensure()
        with locked(self.dir / "locks" / f"{_safe(name)}.lock"):
            yield

    def once(self, key: str, make: Callable[[], dict[str, Any]],
             valid: Callable[[dict[str, Any]], bool] = lambda _: True) -> tuple[dict[str, Any], bool]:
        """``make()`` once per run for ``key``: ``(value, shared)``.

        The first caller runs ``make`` under the key's lock and keeps its value (JSON) in
        ``builds/<key>.json``; a sibling waits for that lock, then reads the value and does not
        call ``make`` (``shared`` is True). A value ``valid`` refuses (its store path is gone) is
        made again. A failing ``make`` keeps nothing: the next caller tries for itself.
        """
        path = self.builds / f"{_safe(key)}.json"
        with self.lock(f"build-{key}"):
            found = read_json(path)
            if found is not None and valid(found):
                return found, True
            value = make()
            write_atomic(path, json.dumps(value, indent=1, sort_keys=True))
            return value, False


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None (missing, unreadable, not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["RUNS", "WORKERINPUT_KEY", "Run", "read_json"]
