"""The plugin's side of systemd containers (pytester, no nspawn needed): skip or fail, the marker, the options."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import pytest_flake.nspawn
from pytest_flake.config import OPTIONS
from pytest_flake.nspawn import maintenance

CONFTEST = textwrap.dedent(
    """
    import pytest

    import pytest_flake.nspawn


    @pytest.fixture(scope="session", autouse=True)
    def no_nspawn():
        with pytest.MonkeyPatch.context() as patch:  # undone after the inner run: the outer one shares the module
            patch.setattr(pytest_flake.nspawn, "unavailable",
                          lambda: "systemd-nspawn is not installed: apt-get install systemd-container")
            yield
    """
)
TESTS = textwrap.dedent(
    """
    def test_uses_a_container(systemd_container):
        raise AssertionError("never reached")

    def test_uses_the_factory(systemd_container_factory):
        raise AssertionError("never reached")

    def test_plain():
        pass
    """
)


@pytest.fixture
def inner(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for opt in OPTIONS:
        if opt.env:
            monkeypatch.delenv(opt.env, raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    return pytester


def test_without_nspawn_container_tests_are_skipped_with_one_line(inner: pytest.Pytester) -> None:
    result = inner.runpytest("-rs", "-p", "no:randomly")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED*pytest-flake: systemd-nspawn is not installed: apt-get install "
                                 "systemd-container"])
    assert pytest_flake.nspawn.unavailable is maintenance.unavailable  # the inner run's patch is undone


def test_without_nspawn_under_ci_container_tests_fail(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*systemd-nspawn is not installed*(CI is set: systemd containers are required)*"])


def test_nspawn_marker_is_added_and_selects(inner: pytest.Pytester) -> None:
    result = inner.runpytest("-m", "not nspawn", "--strict-markers", "-p", "no:randomly")
    result.assert_outcomes(passed=1, deselected=2)
    result = inner.runpytest("-m", "nspawn", "--strict-markers", "-p", "no:randomly")
    result.assert_outcomes(skipped=2, deselected=1)


def test_options_have_ini_twins_env_and_choices(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--flake-portable-host=lxc")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--flake-portable-host*invalid choice*'lxc'*"])
    inner.makeini("[pytest]\ncontainer_image = debian\nflake_portable_host = nspawn\n")
    result = inner.runpytest("--help")
    result.stdout.fnmatch_lines(["*--container-image=NAME|DIR|TARBALL*", "*--flake-portable-host=*"])
