"""scripts/lint (run by .ci/run) fails on each kind of problem it is there to catch.

Each case lints a tiny project laid out like this one, with one flaw, and checks that the
step meant to catch it is the one reported as failed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LINT = Path(__file__).resolve().parents[2] / "scripts" / "lint"
PYPROJECT = """\
[project]
name = "tiny"
version = "0"
requires-python = ">=3.10"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP"]

[tool.mypy]
strict = true
"""
CLEAN = '''\
"""A clean module."""
{imports}

def note(exc: BaseException) -> str:
    """Its text."""
    return str(exc)
'''


def lint(tmp_path: Path, module: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("vermin") is None:
        pytest.skip("vermin is not installed (pip install -e '.[test]')")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for name in ("pytest_flake", "tests", "benchmarks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text('"""Package."""\n')
    (tmp_path / "conftest.py").write_text('"""Conftest."""\n')
    (tmp_path / "pytest_flake" / "mod.py").write_text(module)
    return subprocess.run(["bash", str(LINT), str(tmp_path)], capture_output=True, text=True, timeout=300)


def test_a_clean_project_passes(tmp_path: Path) -> None:
    proc = lint(tmp_path, CLEAN.format(imports=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lint: mypy ok" in proc.stdout


@pytest.mark.parametrize(
    ("imports", "body", "step"),
    [
        pytest.param("import os\n", "", "ruff", id="unused-import"),
        pytest.param("", '\n\ndef f(exc: BaseException) -> None:\n    exc.add_note("3.11 only")\n', "mypy",
                     id="add_note-is-3.11"),
        pytest.param("import tomllib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401\n", "",
                     "python floor (3.10)", id="tomllib-is-3.11"),
    ],
)
def test_each_flaw_fails_its_step(tmp_path: Path, imports: str, body: str, step: str) -> None:
    proc = lint(tmp_path, CLEAN.format(imports=imports) + body)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"lint: failed: {step}", proc.stdout + proc.stderr
