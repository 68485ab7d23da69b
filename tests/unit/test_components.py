"""The one component registry: shared by the sweep and the doctor, lazy, one sweep signature."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_flake import components as registry
from pytest_flake import doctor
from pytest_flake.components import NAMES, Component, components
from pytest_flake.config import Settings
from pytest_flake.session import Session
from pytest_flake.sweep import sweep_dead_sessions


def test_names_and_order() -> None:
    assert NAMES == ("process", "ssh", "docker", "vm", "nspawn")
    assert [c.name for c in components()] == list(NAMES)
    assert [c.name for c in components(names=("nspawn", "docker"))] == ["docker", "nspawn"]
    with pytest.raises(ValueError, match="no such component: podman"):
        components(names=("podman",))


def test_making_the_registry_imports_no_component() -> None:
    code = ("import sys; from pytest_flake.components import components; components(); "
            "print(sorted(m for m in sys.modules if m.startswith(('pytest_flake.', 'docker', 'libvirt'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}).stdout
    assert "'pytest_flake.components'" in out
    for heavy in ("docker", "libvirt", "pytest_flake.docker", "pytest_flake.vm", "pytest_flake.nspawn"):
        assert f"'{heavy}'" not in out and f"'{heavy}." not in out


@pytest.mark.parametrize("name", NAMES)
def test_every_component_complies_with_the_protocol(name: str) -> None:
    (lazy,) = components(names=(name,))
    try:
        made = lazy.load()  # type: ignore[attr-defined]
    except ImportError as exc:  # an extra that is not installed here
        pytest.skip(f"{name}: {exc}")
    assert isinstance(made, Component)
    assert made.name == name
    for member in ("sweep", "doctor"):
        expected = list(inspect.signature(getattr(Component, member)).parameters)[1:]
        assert list(inspect.signature(getattr(made, member)).parameters)[:len(expected)] == expected, member


def test_process_component_sweeps_under_the_state_root_it_is_given(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        from pytest_flake.session import start_time

        folder = tmp_path / "sessions" / "pf-0badcafe"
        folder.mkdir(parents=True)
        (folder / f"{child.pid}.pid").write_text(start_time(child.pid))
        (process,) = components(names=("process",))
        assert process.sweep(["pf-0badcafe"], tmp_path) == ["1 process group (local runs, ssh masters) killed"]
        assert child.wait(timeout=10) == -9
        assert not (folder / f"{child.pid}.pid").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


class Recorder:
    def __init__(self, name: str, calls: list[tuple[str, list[str], Path]], fail: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        self.calls.append((self.name, list(dead_ids), state_root))
        if self.fail:
            raise RuntimeError("daemon gone")
        return ["2 containers stopped"] if self.name == "nspawn" else []

    def doctor(self, settings: Settings) -> list[tuple[bool, str]]:
        if self.fail:
            raise RuntimeError("daemon gone")
        return [(True, f"{self.name}: fine")]


def test_sweep_and_doctor_walk_the_same_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, list[str], Path]] = []
    monkeypatch.setattr(registry, "_load", lambda name, module, settings: Recorder(name, calls, fail=name == "docker"))
    dead = tmp_path / "sessions" / "pf-deadbeef"
    dead.mkdir(parents=True)
    (dead / "pid").write_text("999999999 0")
    with Session(root=tmp_path) as current:
        line = sweep_dead_sessions(current, None)
    # one line: the session, then what each component that found something did about it
    assert line == ("swept what 1 earlier session left (pf-deadbeef): docker: could not sweep: daemon gone; "
                    "nspawn: 2 containers stopped")
    assert [name for name, _, _ in calls] == list(NAMES)  # docker's failure stopped no other
    assert all(ids == ["pf-deadbeef"] and root == tmp_path for _, ids, root in calls)
    assert "could not sweep docker resources of pf-deadbeef: daemon gone" in caplog.text
    assert not dead.exists()
    lines = doctor.component_checks(None)  # type: ignore[arg-type]
    assert lines == [(True, "process: fine"), (True, "ssh: fine"), (False, "docker: check failed: daemon gone"),
                     (True, "vm: fine"), (True, "nspawn: fine")]


def test_doctor_names_the_extra_when_a_component_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str, module: str, settings: object) -> Component:
        raise ModuleNotFoundError("No module named 'libvirt'", name="libvirt")

    monkeypatch.setattr(registry, "_load", load)
    monkeypatch.setattr(doctor, "COMPONENTS", ("vm",))
    assert doctor.component_checks(None) == [  # type: ignore[arg-type]
        (False, "vm: cannot import (No module named 'libvirt'); pip install 'pytest-flake[vm]'")]
