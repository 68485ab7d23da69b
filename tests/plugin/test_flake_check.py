"""--flake-check through pytest itself: the option and its twins, the items, ids, markers, selection (pytester)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("nix")

# the flake is in ./tiny of the rootdir: its items are under tiny/flake.nix
ITEMS = ["tiny/flake.nix::packages::broken", "tiny/flake.nix::packages::crash", "tiny/flake.nix::packages::default",
         "tiny/flake.nix::packages::silent", "tiny/flake.nix::packages::web"]


def test_a_folder_with_only_a_flake_collects_its_outputs(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-check", "--collect-only", "-q")
    result.stdout.fnmatch_lines([*ITEMS, "5 tests collected*"])
    assert result.ret == 0


def test_without_the_option_nothing_is_collected(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--collect-only")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["pytest-flake: flake check: off (from default)"])


def test_each_output_is_checked_and_a_failed_build_shows_its_log(pytester: pytest.Pytester, tiny_flake: Path,
                                                                 tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-check", "-v", f"--junitxml={xml}",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["tiny/flake.nix::packages::broken FAILED*", "*BuildError: nix build *#packages.x86_64-"
                                 "linux.broken failed*", "*compile error: widget.c:3*",
                                 "*pytest-flake: build log of packages.x86_64-linux.broken*"])
    result.stdout.fnmatch_lines(["pytest-flake: flake check: on (from --flake-check)"])
    cases = {case.get("name"): case for case in ET.parse(xml).getroot().iter("testcase")}
    assert set(cases) == {"broken", "crash", "default", "silent", "web"}
    props = {p.get("name"): p.get("value", "") for p in cases["web"].iter("property")}
    assert props["pytest-flake packages.x86_64-linux.web"].endswith("/bin/web")  # the program nix run runs
    assert props["nix build packages.x86_64-linux.web"].startswith("/nix/store/")
    broken = {p.get("name"): p.get("value", "") for p in cases["broken"].iter("property")}
    assert "compile error: widget.c:3" in broken["pytest-flake evidence: build log of packages.x86_64-linux.broken"]


@pytest.mark.parametrize("how", ["env", "ini"])
def test_the_environment_and_the_ini_file_turn_it_on_and_no_flake_check_off(
        pytester: pytest.Pytester, tiny_flake: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("PYTEST_FLAKE_CHECK", "1")
        source = "$PYTEST_FLAKE_CHECK"
    else:
        pytester.makeini("[pytest]\nflake_check = true\n")
        source = "ini flake_check"
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--collect-only")
    result.stdout.fnmatch_lines([f"pytest-flake: flake check: on (from {source})", "collected 5 items*",
                                 "*<OutputItem broken>*"])
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--no-flake-check", "--collect-only")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["pytest-flake: flake check: off (from --no-flake-check)"])


def test_keywords_and_markers_select_outputs_beside_the_users_tests(pytester: pytest.Pytester,
                                                                    tiny_flake: Path) -> None:
    pytester.makepyfile(test_mine="def test_mine():\n    pass\n")
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-check", "--collect-only", "-q",
                                           "-k", "web or mine")
    result.stdout.fnmatch_lines(["test_mine.py::test_mine", "tiny/flake.nix::packages::web", "2/6 tests collected*"])
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-check", "--collect-only", "-q",
                                           "-m", "not nix")
    result.stdout.fnmatch_lines(["test_mine.py::test_mine", "1/6 tests collected (5 deselected)*"])


def test_a_flake_that_does_not_evaluate_fails_one_item_saying_why(pytester: pytest.Pytester, nix: None) -> None:
    (pytester.path / "bad").mkdir()
    (pytester.path / "bad" / "flake.nix").write_text("{ outputs = { self }: { packages = undefinedThing; }; }\n")
    result = pytester.runpytest_subprocess(f"--flake={pytester.path / 'bad'}", "--flake-check", "-v", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["bad/flake.nix::flake::outputs FAILED*",
                                 "NixError: cannot list the outputs of flake *undefined variable 'undefinedThing'*"])


def test_without_a_flake_it_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--flake-check", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--flake-check has no flake to check: pass --flake DIR*"])
