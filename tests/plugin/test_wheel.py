"""The wheel, installed with no extras into a clean virtual environment, stays out of the way.

Offline: the wheel is built from a copy of the sources (nothing is written into the
checkout), and its core dependencies are copied from this environment's installed
distributions instead of being downloaded.
"""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# what the wheel declares with no extras, read from its own metadata below
TESTINFRA_OPTIONS = ("--hosts", "--connection", "--ssh-config", "--sudo")


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("pytest_flake", "vms"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    wheels = list(out.glob("pytest_flake-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def requirements_of(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    lines = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines]


def no_extra_environment() -> dict[str, str]:
    """This interpreter's marker environment with no extra selected (``extra == ""``)."""
    return {**{key: str(value) for key, value in default_environment().items()}, "extra": ""}


def closure(requirements: list[Requirement]) -> set[str]:
    """Names of the installed distributions that the requirements (no extras) pull in, recursively."""
    env = no_extra_environment()
    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate(env)]
    while todo:
        req = todo.pop()
        name = metadata.distribution(req.name).metadata["Name"]
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        for line in metadata.requires(name) or []:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate(env):
                todo.append(sub)
    return seen


def copy_distribution(name: str, site: Path) -> None:
    dist = metadata.distribution(name)
    base = Path(str(dist.locate_file("")))
    for file in dist.files or []:
        source = base / file
        if file.parts[0] == ".." or not source.is_file():
            continue  # console scripts and files outside site-packages
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel-build"))


def test_the_wheel_holds_every_module_and_recipe(wheel: Path) -> None:
    """Every module of the package and every image recipe is in the wheel (a subpackage left out of
    pyproject's list would install a plugin that fails on its first Docker or portable test)."""
    wanted = {f"pytest_flake/{p.relative_to(ROOT / 'pytest_flake').as_posix()}"
              for p in (ROOT / "pytest_flake").rglob("*.py") if "__pycache__" not in p.parts}
    wanted |= {f"pytest_flake/vms/{p.relative_to(ROOT / 'vms').as_posix()}"
               for p in (ROOT / "vms").rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert sorted(wanted - names) == []


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    requirements = requirements_of(wheel)
    core = [r for r in requirements if r.marker is None or r.marker.evaluate(no_extra_environment())]
    assert "pytest-testinfra" not in {r.name for r in core}, core
    assert {r.name for r in requirements if r.name == "pytest-testinfra"}, "testinfra should be in the extras"
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    site = Path(purelib)
    for name in closure(core):
        copy_distribution(name, site)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    assert sysconfig.get_paths()["purelib"] != purelib
    return python


def test_clean_install_has_no_testinfra_options(clean_venv: Path, tmp_path: Path) -> None:
    proc = subprocess.run([str(clean_venv), "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "--flake-doctor" in proc.stdout and "--no-flake-keep" in proc.stdout
    for option in TESTINFRA_OPTIONS:
        assert option not in proc.stdout, option
    check = subprocess.run([str(clean_venv), "-c", "import testinfra"], capture_output=True, text=True)
    assert check.returncode != 0  # the environment really is clean


def test_clean_install_leaves_a_plain_project_alone(clean_venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_plain.py").write_text("def test_plain():\n    assert sum([1, 2]) == 3\n")
    state = tmp_path / "state"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTEST_FLAKE_STATE": str(state),
           "PYTEST_FLAKE_TIMEOUT": "abc"}  # a bad setting, too: not this run's business
    proc = subprocess.run([str(clean_venv), "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=project,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "pytest-flake" not in proc.stdout
    assert not state.exists()
    plugins = subprocess.run([str(clean_venv), "-m", "pytest", "--version", "--version"], cwd=project,
                             capture_output=True, text=True, env=env)
    assert "pytest-flake" in plugins.stdout + plugins.stderr  # the plugin is installed and registered
