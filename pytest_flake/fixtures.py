"""pytest-flake's fixtures: thin ``with Component(...) as c: yield c`` wrappers.

The real work lives in modules that never import pytest (nix, process, httpcheck,
docker, vm, portable). This module adds what only pytest knows: which test is
running, whether it failed (``--flake-keep``), and what to attach to its report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from .config import Settings
from .errors import UsageError
from .httpcheck import HttpChecker
from .nix import Flake
from .session import Session

log = logging.getLogger("pytest_flake")

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey[Session]()
CURRENT_ITEM = pytest.StashKey["pytest.Item | None"]()


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
    item = request.config.stash.get(CURRENT_ITEM, None)
    return item.stash.get(TEST_STATE, None) if item is not None else None


def evidence(request: pytest.FixtureRequest, title: str, collect: Callable[[], str]) -> None:
    """Attach ``collect()`` as section ``title`` to the report of the test if it fails."""
    state = _state(request)
    if state is not None:
        state.evidence.append((title, collect))


def keep_if_failed(request: pytest.FixtureRequest, what: str, how: str) -> bool:
    """With ``--flake-keep``, tell whether the current test failed and say how to reach ``what``.

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
    line = f"pytest-flake: kept {what} of failed {state.item.nodeid}: {how}"
    if reporter is not None:
        reporter.write_line(line)
    log.warning(line)
    return True


# --- core -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def flake_settings(request: pytest.FixtureRequest) -> Settings:
    """The resolved pytest-flake settings (option > env > ini > default)."""
    return request.config.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def flake_session(request: pytest.FixtureRequest) -> Session:
    """This test session's id and state directory; resources are labelled with the id."""
    return request.config.stash[SESSION_KEY]


def _marker_ref(config: pytest.Config) -> str | None:
    item = config.stash.get(CURRENT_ITEM, None)
    if item is None:
        return None
    marker = item.get_closest_marker("flake")
    if marker is None:
        return None
    if not marker.args or not isinstance(marker.args[0], str):
        raise UsageError(f"{item.nodeid}: the flake marker takes a flake reference: @pytest.mark.flake('path:./dir')")
    return str(marker.args[0])


@pytest.fixture(scope="session")
def flake(request: pytest.FixtureRequest, flake_settings: Settings, flake_session: Session) -> Iterator[Flake]:
    """The flake under test (``--flake``, or a test's ``@pytest.mark.flake(ref)``).

    ``flake.outputs()`` lists ``packages.<system>``; ``flake.build(attr)`` builds once per
    session; ``flake.run(attr, port=...)`` starts the main program and stops its process
    group at the end of the test.
    """
    config = request.config

    def ref_for() -> str:
        ref = _marker_ref(config) or flake_settings.flake
        if ref is None:
            raise UsageError("no flake to test", hint="pass --flake DIR (or set ini 'flake', or $PYTEST_FLAKE)")
        return ref

    instance = Flake(flake_settings.flake or "", invocation_dir=flake_settings.invocation_dir,
                     system=flake_settings.flake_system, ref_for=ref_for,
                     on_run=lambda process: _register_process(config, process),
                     log_dir=flake_session.dir)
    yield instance


def _register_process(config: pytest.Config, process: Any) -> None:
    item = config.stash.get(CURRENT_ITEM, None)
    state = item.stash.get(TEST_STATE, None) if item is not None else None
    if state is None:
        return
    state.evidence.append((f"output of {process.name}", process.logs))
    state.cleanups.append(process.stop)


@pytest.fixture
def http(request: pytest.FixtureRequest) -> Generator[HttpChecker, None, None]:
    """A curl-like HTTP checker: ``http.get(url).expect(200, contains="ok")``.

    Connection errors are retried for ``retry_for`` seconds (default 10); a failed
    ``expect`` is an ``AssertionError`` whose message is a curl-style transcript.
    """
    checker = HttpChecker()
    evidence(request, "http exchanges", checker.transcripts)
    yield checker
    checker.close()


# --- docker -----------------------------------------------------------------------------


# --- vm ---------------------------------------------------------------------------------


# --- portable ---------------------------------------------------------------------------
