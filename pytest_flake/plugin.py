"""pytest-flake's hooks and options (fixtures live in :mod:`pytest_flake.fixtures`).

Registered through the ``pytest11`` entry point ``flake``; do not also list it in a
``conftest.py``'s ``pytest_plugins``.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from . import doctor
from .config import OPTIONS, Settings
from .errors import FlakeError
from .fixtures import *  # noqa: F403  (fixtures are registered by being imported here)
from .fixtures import CURRENT_ITEM, SESSION_KEY, SETTINGS_KEY, TEST_STATE, TestState
from .session import Session

log = logging.getLogger("pytest_flake")

# fixture name -> markers added to every test that uses it (directly or through others)
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "flake": ("nix",),
    "flake_docker": ("docker",),
    "docker_image": ("docker",),
    "docker_container": ("docker",),
    "flake_vms": ("vm",),
    "vm": ("vm",),
    "vm_factory": ("vm",),
    "portable_service": ("portable", "vm"),  # a portable service always runs in a VM
}
MARKERS = (
    "nix: uses Nix to build flake outputs (added automatically to tests using the flake fixture)",
    "docker: needs a Docker daemon (added automatically to tests using docker_image/docker_container)",
    "vm: boots virtual machines through libvirt (added automatically to tests using vm/vm_factory)",
    "portable: attaches systemd portable services in a VM (added automatically, with vm, to tests using "
    "portable_service)",
    "flake(ref): test this flake reference instead of --flake, for one test, class or module",
)
# component modules that own resources a killed session may have left behind
SWEEPERS = ("pytest_flake.docker", "pytest_flake.vm")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flake", "pytest-flake: integration tests of Nix flakes")
    for opt in OPTIONS:
        env = f" [env: {opt.env}]" if opt.env else ""
        default = f" [default: {opt.default}]" if opt.default not in (None, False) else ""
        if opt.kind == "bool":
            group.addoption(opt.flag, dest=opt.name, action="store_true", default=None,
                            help=f"{opt.help}{env}")
            parser.addini(opt.name, f"{opt.help}{env}", type="bool", default=None)
        else:
            group.addoption(opt.flag, dest=opt.name, default=None, metavar=opt.metavar, choices=opt.choices,
                            help=f"{opt.help}{env}{default}")
            parser.addini(opt.name, f"{opt.help}{env}", default=None)
    group.addoption("--flake-doctor", action="store_true", default=False,
                    help="check Nix, Docker, libvirt, KVM and the VM image cache, print what to fix, and exit")


def _resolve_settings(config: pytest.Config) -> Settings:
    try:
        return Settings.resolve(
            option=lambda name: config.getoption(name, default=None),
            ini=lambda name: config.getini(name),
            invocation_dir=Path(config.invocation_params.dir),
        )
    except FlakeError as exc:
        raise pytest.UsageError(f"pytest-flake: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("flake_doctor", default=False):
        return None
    settings = _resolve_settings(config)
    return doctor.run(settings, print)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[SETTINGS_KEY] = _resolve_settings(config)
    _teardown_on_sigterm()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _teardown_on_sigterm() -> None:
    """SIGTERM (a CI time limit, ``kill``) tears fixtures down like Ctrl-C does.

    Only when nobody else handles SIGTERM; SIGKILL cannot be caught, and what it leaves
    is swept by the next session.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return []
    return ["pytest-flake: " + line for line in doctor.header(settings)]


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if SETTINGS_KEY not in config.stash:
        return
    flake_session = Session().__enter__()
    config.stash[SESSION_KEY] = flake_session
    sweep_dead_sessions(flake_session, config.stash[SETTINGS_KEY])


def sweep_dead_sessions(current: Session, settings: Settings) -> None:
    """Remove what killed sessions left: their processes, containers, domains and files."""
    from .process import sweep as sweep_processes

    dead = current.dead_sessions()
    if not dead:
        return
    log.warning("pytest-flake: sweeping %d session(s) that did not end: %s", len(dead), ", ".join(dead))
    for session_id in dead:
        sweep_processes(current.session_dir(session_id))
    for name in SWEEPERS:
        try:
            module: Any = importlib.import_module(name)
            module.sweep(dead, settings)
        except Exception as exc:  # one component's trouble must not stop the others
            log.warning("pytest-flake: could not sweep %s resources of %s: %s", name.rsplit(".", 1)[-1],
                        ", ".join(dead), exc)
    for session_id in dead:
        current.forget(session_id)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # an interrupted test (Ctrl-C, SIGTERM) never reached its own teardown hook
    item = session.config.stash.get(CURRENT_ITEM, None)
    state = item.stash.get(TEST_STATE, None) if item is not None else None
    if state is not None:
        state.cleanup()
    flake_session = session.config.stash.get(SESSION_KEY, None)
    if flake_session is not None:
        flake_session.__exit__(None, None, None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker in sorted({m for f, marks in FIXTURE_MARKERS.items() if f in names for m in marks}):
            item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[TEST_STATE] = TestState(item)
    item.config.stash[CURRENT_ITEM] = item


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    state = item.stash.get(TEST_STATE, None)
    if state is not None:
        state.cleanup()
    item.config.stash[CURRENT_ITEM] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    state = item.stash.get(TEST_STATE, None)
    if state is not None:
        state.reports[report.when] = report
        if report.failed and report.when in ("call", "setup"):
            for title, text in state.collect_evidence():
                report.sections.append((title, text))
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, FlakeError) and not isinstance(excinfo.value, AssertionError):
        report.longrepr = _describe_error(excinfo.value)


def _describe_error(exc: FlakeError) -> str:
    """Our infrastructure errors as their message and notes, without plugin internals."""
    lines = [f"{type(exc).__name__}: {exc}"]
    lines += getattr(exc, "__notes__", [])
    return "\n".join(lines)
