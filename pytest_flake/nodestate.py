"""What pytest-flake keeps on pytest's objects: settings and session on the config, each test's state on its node.

- The settings (:func:`settings_of`) and the session (:func:`ensure_session`, made when a
  test first needs it, which sweeps killed sessions) live in ``config.stash``.
- A :class:`TestState` lives on each test (``item.stash``): the evidence attached to its
  report when it fails (:func:`evidence`), the cleanups of what it started, its reports
  (:func:`keep_if_failed` reads them). Fixtures reach it through ``request.node``.
- :func:`flake_binding`: while a test or a fixture wider than a test runs, the session's
  :class:`~pytest_flake.nix.Flake` uses the ``flake`` marker of that node and hands it the
  processes it starts. There is no "current test" anywhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .config import Settings
from .errors import UsageError
from .nix import Binding, Flake, FlakeOptions
from .process import Process
from .reporting import BuildStatus, record_fact
from .session import Session
from .sweep import sweep_dead_sessions
from .tunnel import close_all
from .xdist import Run

log = logging.getLogger(__name__)

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey[Session]()
RUN_KEY = pytest.StashKey[Run]()  # the run of a pytest-xdist worker, shared with its siblings
# a bad setting (say $PYTEST_FLAKE_TIMEOUT=abc) fails only a run that uses the plugin
SETTINGS_ERROR = pytest.StashKey[str]()
SWEPT_KEY = pytest.StashKey[str]()  # what the sweep of killed sessions did (one line)


def settings_of(config: pytest.Config) -> Settings:
    """The resolved settings; a bad value is a usage error here, when something needs them."""
    error = config.stash.get(SETTINGS_ERROR, None)
    if error is not None:
        raise pytest.UsageError(error)
    return config.stash[SETTINGS_KEY]


def ensure_session(config: pytest.Config) -> Session:
    """The session's id and directory, made when a test first needs them.

    The sweep of sessions that were killed (their containers, domains, processes and
    files) runs then, once: a run that never uses a fixture of the plugin creates no
    directory and contacts no daemon.
    """
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        settings = settings_of(config)
        session = Session()
        session.__enter__()
        config.stash[SESSION_KEY] = session
        swept = sweep_dead_sessions(session, settings, run_of(config))
        if swept is not None:
            config.stash[SWEPT_KEY] = swept  # the report header's line (plugin.pytest_report_collectionfinish)
            log.warning("pytest-flake: %s", swept)
    return session


def run_of(config: pytest.Config) -> Run | None:
    """The pytest-xdist run this process is a worker of (None: no xdist, or the session is the run)."""
    return config.stash.get(RUN_KEY, None)


def end_session(config: pytest.Config) -> None:
    """At the end of the run: the session's ssh masters (remote Docker, libvirt) and their forwards are
    closed, then its directory goes (unless something was kept for the next session to sweep)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        close_all(session.dir)
        session.__exit__(None, None, None)


class TestState:
    """What pytest-flake tracks for one running test: evidence, cleanups, reports."""

    __test__ = False  # not a test class

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.evidence: list[tuple[str, Callable[[], str]]] = []
        self.cleanups: list[Callable[[], Any]] = []
        self.reports: dict[str, pytest.TestReport] = {}

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.reports.values())

    def collect_evidence(self) -> Iterator[tuple[str, str]]:
        for title, collect in self.evidence:
            try:
                text = collect()
            except Exception as exc:  # evidence must never hide the failure
                text = f"(could not collect: {exc})"
            if text:
                yield title, text

    def cleanup(self) -> None:
        while self.cleanups:
            step = self.cleanups.pop()
            try:
                step()
            except Exception as exc:
                log.warning("pytest-flake: cleanup of %s failed: %s", self.item.nodeid, exc)


TEST_STATE = pytest.StashKey[TestState]()


def _state(request: pytest.FixtureRequest) -> TestState | None:
    """The state of the test a function-scoped fixture runs for (None for wider scopes)."""
    state: TestState | None = request.node.stash.get(TEST_STATE, None)
    return state


def evidence(request: pytest.FixtureRequest, title: str, collect: Callable[[], str]) -> None:
    """Attach ``collect()`` as section ``title`` to the report of the test if it fails."""
    state = _state(request)
    if state is not None:
        state.evidence.append((title, collect))


def keep_if_failed(request: pytest.FixtureRequest, what: str, how: str | Callable[[], str]) -> bool:
    """With ``--flake-keep``, tell whether the current test failed and say how to reach ``what``.

    ``how`` is the line to print, or a callable that makes it (called only when kept).

    A fixture calls this in its teardown; True means: do not remove the resource.
    The session's registration is then left behind too, so the next session sweeps
    what was kept.
    """
    settings = request.config.stash[SETTINGS_KEY]
    state = _state(request)
    if not settings.flake_keep or state is None or not state.failed:
        return False
    session = request.config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.keep = True
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"pytest-flake: kept {what} of failed {state.item.nodeid}: {how() if callable(how) else how}"
    if reporter is not None:
        reporter.write_line(line)
    log.warning(line)
    return True


def leave_for_next_session(request: pytest.FixtureRequest, what: str) -> None:
    """``what`` could not be removed (its daemon stopped answering, say): the next session sweeps it.

    The session's registration stays when this session ends, as with ``--flake-keep``, so the next
    session finds it dead and every component sweeps what carries its id.
    """
    session = request.config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.keep = True
    log.warning("pytest-flake: could not remove %s; the next session will", what)


def marker_ref(node: pytest.Item | pytest.Collector | pytest.Session) -> str | None:
    """The ref of the ``flake(ref)`` marker closest to ``node`` (test, class, module), or None."""
    marker = node.get_closest_marker("flake")
    if marker is None:
        return None
    if not marker.args or not isinstance(marker.args[0], str):
        raise UsageError(f"{node.nodeid}: the flake marker takes a flake reference: @pytest.mark.flake('path:./dir')")
    return str(marker.args[0])


def flake_binding(node: pytest.Item | pytest.Collector | pytest.Session,
                  owner: Callable[[Callable[[], Any]], None] | None = None) -> contextlib.AbstractContextManager[Any]:
    """While a test or a fixture runs, the session's flake uses ``node``'s marker and hands it what it starts.

    For a test (or a function-scoped fixture: ``node`` is the test) a process started by
    ``flake.run()`` is stopped at the end of the test and its output goes to the test's
    report; for a wider fixture ``owner`` (its ``request.addfinalizer``) stops it when that
    fixture ends, else the end of the session does. The binding goes on :func:`bindings`,
    which the ``flake`` fixture hands its Flake: a flake made while a binding is in force
    (a fixture that asks for it part way through its set-up) sees it at once.
    """
    config = node.config
    state = node.stash.get(TEST_STATE, None) if isinstance(node, pytest.Item) else None

    def on_run(process: Process) -> None:
        if state is not None:
            state.evidence.append((f"output of {process.name}", process.logs))
            state.cleanups.append(process.stop)
        elif owner is not None:
            owner(process.stop)
        else:
            config.stash[FLAKE_STACK_KEY].callback(process.stop)

    def on_fact(name: str, value: str) -> None:
        record_fact(node, name, value)

    # a wider fixture set up for a test leaves its facts (store paths) to that test's report
    return _bound(bindings(config), Binding(ref_for=lambda: marker_ref(node), on_run=on_run,
                                            on_fact=on_fact if isinstance(node, pytest.Item) else None))


@contextlib.contextmanager
def _bound(stack: list[Binding], binding: Binding) -> Iterator[None]:
    stack.append(binding)
    try:
        yield
    finally:
        stack.remove(binding)


BINDINGS_KEY = pytest.StashKey[list[Binding]]()


def bindings(config: pytest.Config) -> list[Binding]:
    """The bindings in force, innermost last: the ones the session's :class:`~pytest_flake.nix.Flake` reads."""
    found = config.stash.get(BINDINGS_KEY, None)
    if found is None:
        found = config.stash[BINDINGS_KEY] = []
    return found


FLAKE_STACK_KEY = pytest.StashKey[contextlib.ExitStack]()  # stops what the flake started outside any test
FLAKE_KEY = pytest.StashKey[Flake]()  # the session's flake: the flake fixture's, made by whoever needs it first


def session_flake(config: pytest.Config) -> Flake:
    """The session's :class:`~pytest_flake.nix.Flake`, made once: by the ``flake`` fixture, or by
    ``--flake-check`` at collection (its builds are then the fixture's cache too)."""
    made = config.stash.get(FLAKE_KEY, None)
    if made is None:
        settings = settings_of(config)
        session = ensure_session(config)
        options = FlakeOptions(ref_for=lambda: _default_ref(settings), log_dir=session.dir,
                               timeout=settings.flake_timeout, gcroot_dir=session.dir / "gcroots",
                               build_timeout=settings.flake_build_timeout, on_build=BuildStatus(config),
                               bindings=bindings(config), run=run_of(config))
        made = Flake(settings.flake or "", invocation_dir=settings.invocation_dir, system=settings.flake_system,
                     options=options)
        config.stash[FLAKE_KEY] = made
    return made


def _default_ref(settings: Settings) -> str:
    """The ref when no marker names one: ``--flake``, else a usage error saying how to give one."""
    if settings.flake is None:
        raise UsageError("no flake to test", hint="pass --flake DIR (or set ini 'flake', or $PYTEST_FLAKE)")
    return settings.flake
