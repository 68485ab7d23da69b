"""The layout's rules, read from the code: only the plugin's modules import pytest; plugin.py names its fixtures."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_flake
from pytest_flake import fixtures, plugin

PACKAGE = Path(pytest_flake.__file__).parent
# the plugin; the rest are components
PYTEST_MODULES = {"plugin.py", "fixtures.py", "nodestate.py", "reporting.py", "flakecheck.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_component_modules_never_import_pytest() -> None:
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if str(path.relative_to(PACKAGE)) not in PYTEST_MODULES and {"pytest", "_pytest"} & _imports(path)]
    assert offenders == []


def test_plugin_registers_every_fixture_by_name() -> None:
    defined = {name for name, value in vars(fixtures).items()
               if getattr(value, "_pytestfixturefunction", None) is not None  # pytest < 8.4
               or type(value).__name__ == "FixtureFunctionDefinition"}
    assert len(defined) >= 15
    registered = {getattr(f, "name", None) or getattr(f, "__name__", "") for f in plugin.FIXTURES}
    assert registered == defined
    source = Path(plugin.__file__).read_text()
    assert "import *" not in source

