"""The one exception hierarchy: every error class lives in errors.py and is exported from the package."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import pytest_flake
from pytest_flake import errors

PACKAGE = Path(pytest_flake.__file__).parent


def _error_classes() -> list[type[BaseException | Warning]]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, (BaseException, Warning)) and obj.__module__ == errors.__name__]


def test_every_error_class_is_exported() -> None:
    classes = _error_classes()
    assert len(classes) >= 20
    for cls in classes:
        assert getattr(pytest_flake, cls.__name__, None) is cls, f"{cls.__name__} is not exported from pytest_flake"
        assert cls.__name__ in pytest_flake.__all__


def _bases(node: ast.ClassDef) -> list[str]:
    return [ast.unparse(base) for base in node.bases]


EXCEPTION_BASES = ("Exception", "BaseException", "Warning", "UserWarning", "Error", "Exited", "Timeout",
                   "Failed", "NotReady", "GiveUp")


def test_no_module_defines_an_error_class_of_its_own() -> None:
    defined = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    base.rsplit(".", 1)[-1].endswith(EXCEPTION_BASES) for base in _bases(node)):
                defined.append(f"{path.relative_to(PACKAGE)}: class {node.name}({', '.join(_bases(node))})")
    assert defined == []


@pytest.mark.parametrize("name", ["ProcessExited", "ProcessError", "NotReady", "GiveUp", "FlakeWarning"])
def test_classes_that_moved_keep_their_old_homes(name: str) -> None:
    from pytest_flake import nix, process, waiting

    old = {"ProcessExited": process, "ProcessError": process, "NotReady": waiting, "GiveUp": errors,
           "FlakeWarning": nix}[name]
    assert getattr(old, name) is getattr(errors, name)


def test_the_two_families_stay_apart() -> None:
    assert issubclass(errors.ProcessExited, errors.FlakeError)
    assert not issubclass(errors.ProcessExited, AssertionError)
    assert issubclass(errors.CheckFailed, AssertionError) and not issubclass(errors.CheckFailed, errors.FlakeError)
    assert issubclass(errors.FlakeTimeout, TimeoutError)
    assert not issubclass(errors.NotReady, errors.FlakeError)  # never leaves wait_for
