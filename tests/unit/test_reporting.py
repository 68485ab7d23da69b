"""Status lines of long builds and where evidence goes, with a fake terminal and a fake pytest-html."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pytest_flake.nix import Build
from pytest_flake.reporting import EVIDENCE_PROPERTY, BuildStatus, attach_evidence


class FakeReporter:
    def __init__(self, isatty: bool) -> None:
        self.isatty = isatty
        self.calls: list[tuple[str, str]] = []

    def rewrite(self, line: str, **markup: Any) -> None:
        self.calls.append(("rewrite", line))

    def write_line(self, line: str, **markup: Any) -> None:
        self.calls.append(("write_line", line))

    def ensure_newline(self) -> None:
        self.calls.append(("ensure_newline", ""))

    def line(self, line: str = "") -> None:
        self.calls.append(("line", line))


class FakePluginManager:
    def __init__(self, reporter: FakeReporter) -> None:
        self.reporter = reporter

    def get_plugin(self, name: str) -> Any:
        return self.reporter if name == "terminalreporter" else None


class FakeConfig:
    def __init__(self, reporter: FakeReporter, log_cli: bool = False) -> None:
        self.pluginmanager = FakePluginManager(reporter)
        self.stash = pytest.Stash()
        self._log_cli = log_cli

    def getini(self, name: str) -> Any:
        return self._log_cli if name == "log_cli" else None


BUILD = Build(attr="packages.x86_64-linux.default", out=Path("/nix/store/abc-x"), outputs={}, drv=Path("/d"))
WHAT = "path:/f#packages.x86_64-linux.default"


def test_short_build_gets_no_status_line() -> None:
    reporter = FakeReporter(isatty=True)
    status = BuildStatus(FakeConfig(reporter))  # type: ignore[arg-type]
    status(WHAT, 1.0, None)
    status(WHAT, 1.5, BUILD)
    assert reporter.calls == []


def test_long_build_on_a_terminal_rewrites_one_line() -> None:
    reporter = FakeReporter(isatty=True)
    status = BuildStatus(FakeConfig(reporter))  # type: ignore[arg-type]
    for seconds in (1.0, 3.5, 4.5, 5.5):
        status(WHAT, seconds, None)
    status(WHAT, 6.0, BUILD)
    assert reporter.calls == [
        ("rewrite", f"pytest-flake: building {WHAT} (4s)"),
        ("rewrite", f"pytest-flake: building {WHAT} (4s)"),
        ("rewrite", f"pytest-flake: building {WHAT} (6s)"),
        ("rewrite", f"pytest-flake: built {WHAT} in 6.0s: /nix/store/abc-x"),
        ("line", ""),
    ]


def test_long_build_in_a_log_writes_a_line_when_slow_and_one_when_done() -> None:
    reporter = FakeReporter(isatty=False)
    status = BuildStatus(FakeConfig(reporter))  # type: ignore[arg-type]
    for seconds in (3.5, 4.5, 5.5):
        status(WHAT, seconds, None)
    status(WHAT, 6.0, BUILD)
    assert reporter.calls == [
        ("ensure_newline", ""),
        ("write_line", f"pytest-flake: building {WHAT} (4s) ..."),
        ("write_line", f"pytest-flake: built {WHAT} in 6.0s: /nix/store/abc-x"),
    ]


class FakeItem:
    def __init__(self) -> None:
        self.user_properties: list[tuple[str, object]] = []
        self.stash = pytest.Stash()


class FakeReport:
    def __init__(self, when: str) -> None:
        self.when = when
        self.sections: list[tuple[str, str]] = []
        self.user_properties: list[tuple[str, object]] = []


def test_evidence_goes_to_sections_properties_teardown_and_html_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    extras = types.SimpleNamespace(text=lambda content, name: {"name": name, "content": content})
    monkeypatch.setitem(sys.modules, "pytest_html", types.SimpleNamespace(extras=extras))
    item, call, teardown = FakeItem(), FakeReport("call"), FakeReport("teardown")
    attach_evidence(item, call, [("logs of container c1", "GET /x 404\n")])  # type: ignore[arg-type]
    attach_evidence(item, teardown, [])  # type: ignore[arg-type]
    assert call.sections == [("Captured stdout call (pytest-flake: logs of container c1)", "GET /x 404\n")]
    assert item.user_properties == [(EVIDENCE_PROPERTY + "logs of container c1", "GET /x 404\n")]
    assert call.extras == [{"name": "logs of container c1", "content": "GET /x 404\n"}]  # type: ignore[attr-defined]
    # the teardown report (the one JUnit's <system-out> is written from) carries it, with its title
    assert teardown.sections == [("Captured stdout call (pytest-flake: logs of container c1)",
                                  f"{' pytest-flake: logs of container c1 '.center(80, '-')}\nGET /x 404\n")]
