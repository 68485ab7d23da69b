"""Each module logs under its own name, so a user can follow one part (``pytest_flake.vm``) and drop another."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

import pytest_flake


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(pytest_flake.__path__, "pytest_flake."))


def test_every_module_logger_is_named_after_its_module_or_package() -> None:
    loggers = {}
    for name in _modules():
        found = getattr(importlib.import_module(name), "log", None)
        if isinstance(found, logging.Logger):
            loggers[name] = found.name
    assert len(loggers) >= 30
    wrong = {module: logger for module, logger in loggers.items()
             if logger == "pytest_flake" or not (module == logger or module.startswith(logger + "."))}
    assert not wrong, f"loggers not named after their module: {wrong}"
    assert loggers["pytest_flake.nspawn.machine"] == "pytest_flake.nspawn.machine"
    assert loggers["pytest_flake.vm.machine"] == "pytest_flake.vm"


def test_build_logs_keep_the_nix_logger() -> None:
    from pytest_flake import nix, nixrun

    assert nix.build_log.name == nixrun.build_log.name == "pytest_flake.nix"


def test_a_component_record_reaches_the_plugin_logger_and_a_filter_by_name(caplog: pytest.LogCaptureFixture) -> None:
    from pytest_flake.nspawn import machine
    from pytest_flake.vm import common

    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    handler.addFilter(logging.Filter("pytest_flake.vm"))
    parent = logging.getLogger("pytest_flake")
    parent.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="pytest_flake"):
            common.log.debug("a vm step")
            machine.log.debug("a container step")
    finally:
        parent.removeHandler(handler)
    assert [record.getMessage() for record in kept] == ["a vm step"]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("pytest_flake.vm", "a vm step"), ("pytest_flake.nspawn.machine", "a container step")]
