"""Settings: option > env > ini > default, the recorded source, and validation messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_flake.config import OPTIONS, Settings
from pytest_flake.errors import CommandLineError, UsageError


def resolve(tmp_path: Path, options: dict[str, Any] | None = None, ini: dict[str, Any] | None = None,
            env: dict[str, str] | None = None) -> Settings:
    opts, inis = options or {}, ini or {}
    return Settings.resolve(option=lambda name: opts.get(name), ini=lambda name: inis.get(name),
                            invocation_dir=tmp_path, environ=env or {})


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    s = resolve(tmp_path)
    assert s.flake is None
    assert s.vm_image == "arch"
    assert s.vm_accel == "auto"
    assert s.vm_memory == 1024
    assert s.vm_cpus == 1
    assert s.flake_keep is False
    assert s.flake_timeout == 120.0
    assert all(s.source(opt.name) == "default" for opt in OPTIONS)
    assert s.invocation_dir == tmp_path


def test_option_beats_env_beats_ini(tmp_path: Path) -> None:
    both = resolve(tmp_path, options={"flake": "from-option"}, ini={"flake": "from-ini"},
                   env={"PYTEST_FLAKE": "from-env"})
    assert both.flake == "from-option"
    assert both.source("flake") == "--flake"
    assert both.describe("flake") == "from-option (from --flake)"

    env = resolve(tmp_path, ini={"flake": "from-ini"}, env={"PYTEST_FLAKE": "from-env"})
    assert env.flake == "from-env"
    assert env.source("flake") == "$PYTEST_FLAKE"

    ini = resolve(tmp_path, ini={"flake": "from-ini"})
    assert ini.flake == "from-ini"
    assert ini.source("flake") == "ini flake"


def test_each_option_records_its_own_source(tmp_path: Path) -> None:
    s = resolve(tmp_path, options={"vm_memory": "2048"}, ini={"vm_cpus": "2", "vm_accel": "tcg"},
                env={"PYTEST_FLAKE_TIMEOUT": "7.5", "DOCKER_HOST": "unix:///tmp/d.sock"})
    assert (s.vm_memory, s.source("vm_memory")) == (2048, "--vm-memory")
    assert (s.vm_cpus, s.source("vm_cpus")) == (2, "ini vm_cpus")
    assert (s.vm_accel, s.source("vm_accel")) == ("tcg", "ini vm_accel")
    assert (s.flake_timeout, s.source("flake_timeout")) == (7.5, "$PYTEST_FLAKE_TIMEOUT")
    assert (s.docker_host, s.source("docker_host")) == ("unix:///tmp/d.sock", "$DOCKER_HOST")
    assert s.source("vm_image") == "default"


def test_empty_env_and_ini_fall_through(tmp_path: Path) -> None:
    s = resolve(tmp_path, ini={"flake": ""}, env={"PYTEST_FLAKE": ""})
    assert s.flake is None
    assert s.source("flake") == "default"


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("ON", True), ("true", True),
                                           ("0", False), ("no", False), ("off", False), ("False", False)])
def test_bool_words(tmp_path: Path, raw: str, expected: bool) -> None:
    s = resolve(tmp_path, env={"PYTEST_FLAKE_KEEP": raw})
    assert s.flake_keep is expected


def test_bool_from_option_and_ini(tmp_path: Path) -> None:
    assert resolve(tmp_path, options={"flake_keep": True}).flake_keep is True
    assert resolve(tmp_path, ini={"flake_keep": True}).source("flake_keep") == "ini flake_keep"
    # --no-flake-keep (False from the command line) wins over env and ini
    no_keep = resolve(tmp_path, options={"flake_keep": False}, env={"PYTEST_FLAKE_KEEP": "1"}, ini={"flake_keep": True})
    assert no_keep.flake_keep is False
    assert no_keep.source("flake_keep") == "--no-flake-keep"


def test_bad_bool_names_value_and_valid_words(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        resolve(tmp_path, env={"PYTEST_FLAKE_KEEP": "maybe"})
    msg = str(err.value)
    assert "$PYTEST_FLAKE_KEEP='maybe' is not a boolean" in msg
    assert "true" in msg and "false" in msg


def test_bad_int_names_value_and_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        resolve(tmp_path, options={"vm_memory": "lots"})
    assert "--vm-memory='lots' is not a number" in str(err.value)

    with pytest.raises(UsageError) as err:
        resolve(tmp_path, ini={"vm_cpus": "two"})
    assert "ini 'vm_cpus'='two' is not a number" in str(err.value)


def test_bad_float_and_non_positive(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\$PYTEST_FLAKE_TIMEOUT='soon' is not a number"):
        resolve(tmp_path, env={"PYTEST_FLAKE_TIMEOUT": "soon"})
    with pytest.raises(UsageError, match=r"--vm-cpus='0' must be greater than 0"):
        resolve(tmp_path, options={"vm_cpus": "0"})
    with pytest.raises(UsageError, match=r"must be greater than 0"):
        resolve(tmp_path, env={"PYTEST_FLAKE_TIMEOUT": "-1"})


@pytest.mark.parametrize(("given", "fails_at_once"), [
    ({"options": {"flake_timeout": "soon"}}, True),
    ({"options": {"flake_targets": "podman"}}, True),
    ({"env": {"PYTEST_FLAKE_TIMEOUT": "soon"}}, False),
    ({"env": {"PYTEST_FLAKE_TARGETS": "podman"}}, False),
    ({"ini": {"flake_timeout": "soon"}}, False),
])
def test_a_bad_value_typed_on_the_command_line_is_a_command_line_error(tmp_path: Path, given: dict[str, Any],
                                                                       fails_at_once: bool) -> None:
    """The plugin stops the run at once on a CommandLineError; any other UsageError fails only a run that uses it."""
    with pytest.raises(UsageError) as err:
        resolve(tmp_path, **given)
    assert isinstance(err.value, CommandLineError) is fails_at_once


def test_an_image_name_no_image_has_fails_at_once_wherever_it_was_set(tmp_path: Path) -> None:
    given: dict[str, Any]
    for given in ({"options": {"vm_image": "debian-bullseye"}}, {"env": {"PYTEST_FLAKE_VM_IMAGE": "debian-bullseye"}}):
        with pytest.raises(CommandLineError, match="--vm-image 'debian-bullseye' is no built-in image"):
            resolve(tmp_path, **given)


def test_bad_choice_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        resolve(tmp_path, env={"PYTEST_FLAKE_VM_ACCEL": "xen"})
    msg = str(err.value)
    assert "$PYTEST_FLAKE_VM_ACCEL='xen' is not valid" in msg
    assert "valid values: auto, kvm, tcg" in msg


def test_default_flake_is_invocation_dir_with_flake_nix(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    s = resolve(tmp_path)
    assert s.flake == str(tmp_path)
    assert s.source("flake") == "flake.nix in the invocation directory"
    # an explicit flake still wins
    assert resolve(tmp_path, env={"PYTEST_FLAKE": "elsewhere"}).flake == "elsewhere"


def test_no_default_flake_without_flake_nix(tmp_path: Path) -> None:
    (tmp_path / "default.nix").write_text("{}\n")
    assert resolve(tmp_path).flake is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = resolve(tmp_path)
    with pytest.raises(AttributeError):
        s.flake = "x"  # type: ignore[misc]


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_and_inf_are_refused(tmp_path: Path, raw: str) -> None:
    with pytest.raises(UsageError) as raised:
        resolve(tmp_path, env={"PYTEST_FLAKE_TIMEOUT": raw})
    assert str(raised.value) == (f"$PYTEST_FLAKE_TIMEOUT={raw!r} is not a finite number (give seconds or a count: "
                                 "seconds to wait for a service, container or guest to be ready)")
    with pytest.raises(UsageError) as raised:
        resolve(tmp_path, options={"flake_build_timeout": raw})
    assert str(raised.value).startswith(f"--flake-build-timeout={raw!r} is not a finite number")


def test_build_timeout_is_off_by_default(tmp_path: Path) -> None:
    assert resolve(tmp_path).flake_build_timeout is None
    s = resolve(tmp_path, env={"PYTEST_FLAKE_BUILD_TIMEOUT": "600"}, ini={"flake_build_timeout": "30"})
    assert s.flake_build_timeout == 600.0 and s.source("flake_build_timeout") == "$PYTEST_FLAKE_BUILD_TIMEOUT"


def test_ini_paths_are_relative_to_the_ini_file(tmp_path: Path) -> None:
    ini_dir = tmp_path / "project"
    (ini_dir / "images").mkdir(parents=True)
    (ini_dir / "images" / "test.qcow2").touch()
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)

    def settings(ini: dict[str, str]) -> Settings:
        return Settings.resolve(option=lambda name: None, ini=lambda name: ini.get(name), invocation_dir=elsewhere,
                                environ={}, ini_dir=ini_dir)

    assert settings({"flake": "path:../flake"}).flake == f"path:{tmp_path / 'flake'}"
    assert settings({"flake": "./sub"}).flake == str(ini_dir / "sub")
    assert settings({"flake": "git+file:sub"}).flake == f"git+file:{ini_dir / 'sub'}"
    assert settings({"flake": "github:owner/repo"}).flake == "github:owner/repo"
    assert settings({"flake": "/abs/flake"}).flake == "/abs/flake"
    assert settings({"vm_image": "images/test.qcow2"}).vm_image == str(ini_dir / "images" / "test.qcow2")
    assert settings({"vm_image": "debian"}).vm_image == "debian"
    assert settings({"vm_image": "https://example.invalid/x.qcow2"}).vm_image == "https://example.invalid/x.qcow2"
    # the same values from the environment stay relative to where pytest runs
    env = Settings.resolve(option=lambda name: None, ini=lambda name: None, invocation_dir=elsewhere,
                           environ={"PYTEST_FLAKE": "path:../flake"}, ini_dir=ini_dir)
    assert env.flake == "path:../flake"


def test_flake_is_found_in_a_parent_but_not_above_a_git_checkout(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    s = resolve(deep)
    assert s.flake == str(tmp_path)
    assert s.source("flake") == "flake.nix in a parent of the invocation directory"
    (tmp_path / "a" / ".git").mkdir()  # a checkout below the flake: nix stops at its top
    assert resolve(deep).flake is None
