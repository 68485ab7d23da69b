"""What pytest-flake tells the terminal and the reports: build status lines, facts, evidence.

- :class:`BuildStatus` writes one status line for a build that runs longer than a few
  seconds (what is building, for how long), the way pytest writes its own progress: the
  line is rewritten in place on a terminal, and written once (then once when done) in a
  CI log. The build log itself streams to the ``pytest_flake.nix`` logger (``log_cli``).
- :func:`download_status` is the image store's progress callback: a download's bar,
  rewritten in place on a terminal (off a terminal the store logs every 10% itself).
- :func:`record_fact` adds ``(name, value)`` to a test's ``user_properties``:
  ``--junitxml`` writes them as ``<property>`` elements (the flake ref with its locked
  revision, store paths, image ids, ports).
- :func:`attach_evidence` puts a failed test's evidence (program output, container logs,
  journal, console) where every report keeps it: a section whose title starts with
  ``Captured stdout`` (JUnit's ``<system-out>`` with ``-o junit_logging=system-out`` or
  ``all``), a ``user_properties`` entry (always in the JUnit file), and a pytest-html
  extra when pytest-html is installed.
- :func:`describe_error` is how a test that ends in one of our infrastructure errors
  (a :class:`~pytest_flake.errors.FlakeError`) is reported: the user's own lines, then the
  message and its notes, without pytest's, pluggy's and pytest-flake's frames.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr
from _pytest._io import TerminalWriter

if TYPE_CHECKING:
    from .images import Progress, ProgressCallback

STATUS_AFTER = 3.0  # seconds a build runs before it gets a status line
EVIDENCE_PROPERTY = "pytest-flake evidence: "
EVIDENCE_SECTION = "Captured stdout {when} (pytest-flake: {title})"
# the sections attached to a failed setup or call, carried into the teardown report (JUnit writes that one's)
EVIDENCE_SECTIONS = pytest.StashKey[list[tuple[str, str]]]()


class BuildStatus:
    """``on_build`` callback of :class:`~pytest_flake.nix.Flake`: terminal status of long builds."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.shown: dict[str, float] = {}  # installable -> when its line was last written

    def __call__(self, installable: str, seconds: float, build: Any) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or (installable not in self.shown and (build is not None or seconds < STATUS_AFTER)):
            return
        tty = bool(getattr(reporter, "isatty", False)) and not self.config.getini("log_cli")
        if build is None:
            text = f"pytest-flake: building {installable} ({seconds:.0f}s)"
            if tty:
                self._write(reporter, lambda: reporter.rewrite(text, bold=True))
            elif installable not in self.shown:
                self._write(reporter, lambda: (reporter.ensure_newline(), reporter.write_line(text + " ...")))
            self.shown[installable] = time.monotonic()
            return
        done = f"pytest-flake: built {installable} in {seconds:.1f}s: {build.out}"
        if tty:
            self._write(reporter, lambda: (reporter.rewrite(done, erase=True), reporter.line("")))
        else:
            self._write(reporter, lambda: reporter.write_line(done))
        self.shown.pop(installable, None)

    def _write(self, reporter: Any, write: Any) -> None:
        write_uncaptured(self.config, write)


def write_uncaptured(config: pytest.Config, write: Callable[[], object]) -> None:
    """Call ``write`` with pytest's global and fixture capture suspended, so it reaches the terminal."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    if capman is None:
        write()
        return
    with capman.global_and_fixture_disabled():
        write()


def download_status(config: pytest.Config) -> ProgressCallback | None:
    """The image store's progress callback: a download's bar on pytest's terminal, rewritten in place.

    None off a terminal (or with ``log_cli``): the store then logs every 10%.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not bool(getattr(reporter, "isatty", False)) or config.getini("log_cli"):
        return None

    def show(progress: Progress) -> None:
        line = "pytest-flake: " + progress.bar()
        if progress.finished:
            write_uncaptured(config, lambda: (reporter.rewrite(line, erase=True), reporter.line("")))
        else:
            write_uncaptured(config, lambda: reporter.rewrite(line))

    return show


def record_fact(node: pytest.Item | pytest.Collector | pytest.Session, name: str, value: str) -> None:
    """Add ``(name, value)`` to the ``user_properties`` of the test ``node`` (once; JUnit ``<property>``).

    ``node`` is where the fact was found (``request.node``); a fact found outside a test
    (a module or session fixture) belongs to no test's report and is dropped.
    """
    if not isinstance(node, pytest.Item):
        return
    entry = (name, value)
    if entry not in node.user_properties:
        node.user_properties.append(entry)


def attach_evidence(item: pytest.Item, report: pytest.TestReport, evidence: list[tuple[str, str]]) -> None:
    """Put each ``(title, text)`` into the report's sections, the test's properties and pytest-html extras.

    The properties go on the item too: ``--junitxml`` writes those of the teardown report.
    """
    if report.when == "teardown":
        carried: list[tuple[str, str]] = item.stash.get(EVIDENCE_SECTIONS, [])
        report.sections.extend(carried)
    if not evidence:
        return
    for title, text in evidence:
        name = EVIDENCE_SECTION.format(when=report.when, title=title)
        report.sections.append((name, text))
        # JUnit's <system-out> joins the texts without their titles: this copy names itself
        headed = f"{f' pytest-flake: {title} '.center(80, '-')}\n{text.rstrip()}\n"
        item.stash.setdefault(EVIDENCE_SECTIONS, []).append((name, headed))
        entry = (EVIDENCE_PROPERTY + title, text)
        report.user_properties = [*report.user_properties, entry]
        item.user_properties.append(entry)
    try:
        import pytest_html  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    extras = list(getattr(report, "extras", []))
    for title, text in evidence:
        extras.append(pytest_html.extras.text(text, name=title))
    report.extras = extras  # type: ignore[attr-defined]


_INTERNALS = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}", f"{os.sep}pytest_flake{os.sep}")


def _below(path: Path, folder: Path) -> bool:
    """Whether ``path`` is in ``folder``, and not in an installed package there (a virtualenv in the project)."""
    try:
        rest = path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return not any(part in ("site-packages", "dist-packages") for part in rest.parts)


class _ErrorRepr(TerminalRepr):
    """A report's text with a ``reprcrash``: the summary line and JUnit's message show the error, not a path."""

    def __init__(self, text: str, message: str, path: str, lineno: int) -> None:
        self.text = text
        self.reprcrash = ReprFileLocation(path, lineno, message)

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.text.splitlines():
            tw.line(line)


def describe_error(excinfo: pytest.ExceptionInfo[BaseException], rootdir: Path | None = None) -> _ErrorRepr:
    """Our infrastructure errors: the user's own lines (a short traceback), then the message and its notes.

    Frames of pytest, pluggy and pytest-flake are left out: they say nothing to the user, and
    neither do the libraries between the user's code and the plugin (testinfra's ``host.run``)
    or those the plugin called (tenacity's retries, ``concurrent.futures``, paramiko). What is
    shown is the user's own files below ``rootdir``; without any, the frames before the first
    one of pytest-flake.
    """
    exc = excinfo.value
    lines: list[str] = []
    frames = list(excinfo.traceback)
    outside = [(i, e) for i, e in enumerate(frames) if not any(part in str(e.path) for part in _INTERNALS)]
    entries = [e for _, e in outside if rootdir is not None and _below(Path(str(e.path)), rootdir)]
    if not entries:
        first_ours = next((i for i, e in enumerate(frames) if _INTERNALS[-1] in str(e.path)), len(frames))
        entries = [e for i, e in outside if i < first_ours]
    for entry in entries:
        path = str(entry.path)
        shown = path
        if rootdir is not None:
            with contextlib.suppress(ValueError):
                shown = str(Path(path).relative_to(rootdir))
        lines.append(f"{shown}:{entry.lineno + 1}: in {entry.name}")
        with contextlib.suppress(Exception):
            lines.append(f"    {str(entry.statement).strip()}")
    message = f"{type(exc).__name__}: {exc}"
    lines.append(message)
    lines += getattr(exc, "__notes__", [])
    last = excinfo.traceback[-1] if excinfo.traceback else None
    return _ErrorRepr("\n".join(lines), message, str(last.path) if last else "", last.lineno + 1 if last else 0)
