"""``--flake-check``: every output of a flake tested with no test code (issue 22), for real.

Each run is a pytester subprocess in an empty folder (no test file), so the items come from the
flake alone: the offline example and the conformance flake pass (but for the conformance flake's
outputs that are broken on purpose), and the broken flake fails exactly its four broken outputs,
each with its evidence.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_flake.session import state_dir

STATE = state_dir()  # the run's own, read before pytester moves HOME: the inner runs share its OS trees
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = f"path:{ROOT / 'examples' / 'offline'}"
CONFORMANCE = f"path:{ROOT / 'tests' / 'flakes' / 'conformance'}"
BROKEN = f"path:{ROOT / 'tests' / 'flakes' / 'broken'}"
pytestmark = [pytest.mark.docker, pytest.mark.nspawn, pytest.mark.usefixtures("nix")]


def run(pytester: pytest.Pytester, ref: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--flake={ref}", "--flake-check", "-p", "no:cacheprovider", "-v", *args)


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{"packages::docker": "PASSED", ...}`` from the ``-v`` lines."""
    found: dict[str, str] = {}
    for line in result.outlines:
        match = re.match(r"^flake\.nix::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a run's files go; the inner runs keep the outer run's state folder (its OS tree for containers)."""
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(STATE))
    return tmp_path


def test_the_example_passes_item_by_item_in_a_folder_without_tests(pytester: pytest.Pytester, state: Path) -> None:
    result = run(pytester, EXAMPLE)
    assert result.ret == 0, result.stdout.str()[-4000:]
    assert outcomes(result) == {f"packages::{name}": "PASSED" for name in (
        "default", "docker", "docker-next", "portable", "portable-next", "web-server", "web-server-next",
        "web-service")}
    result.stdout.fnmatch_lines(["pytest-flake: flake check: on (from --flake-check)"])


def test_the_conformance_flake_fails_only_its_outputs_broken_on_purpose(pytester: pytest.Pytester,
                                                                        state: Path) -> None:
    result = run(pytester, CONFORMANCE)
    found = outcomes(result)
    failed = sorted(name for name, outcome in found.items() if outcome == "FAILED")
    assert failed == ["apps::no-such-program", "apps::wrong-type", "packages::missing-main",
                      "packages::not-image-two-raws"], result.stdout.str()[-4000:]
    passed = {name for name, outcome in found.items() if outcome == "PASSED"}
    assert {"apps::default", "apps::split-tool", "packages::docker-gzip", "packages::docker-zstd",
            "packages::docker-stream", "packages::docker-legacy", "packages::portable-raw", "packages::portable-dir",
            "packages::portable-usrlib", "packages::portable-tree", "packages::not-image-unit",
            "packages::main-program", "packages::ambiguous"} <= passed
    assert len(found) == 26
    result.stdout.fnmatch_lines(["*meta.mainProgram is 'ghost'*", "*holds 2 portable images*",
                                 "*program */bin/nope does not exist*", "*has type 'derivation', not 'app'*"])


def test_the_broken_flake_fails_exactly_its_broken_outputs_with_their_evidence(pytester: pytest.Pytester,
                                                                               state: Path) -> None:
    xml = state / "junit.xml"
    result = run(pytester, BROKEN, f"--junitxml={xml}")
    assert outcomes(result) == {
        "checks::failing": "FAILED", "checks::passing": "PASSED",
        "packages::default": "PASSED", "packages::good-service": "PASSED", "packages::missing-exec": "FAILED",
        "packages::docker-exits": "FAILED", "packages::docker-runs": "PASSED",
        "packages::portable-fails": "FAILED", "packages::portable-runs": "PASSED",
        "packages::portable-oneshot": "PASSED",  # a oneshot that exited 0 is done, not down
        "lib::lib": "SKIPPED",
    }, result.stdout.str()[-4000:]
    text = result.stdout.str()
    assert "the failing check says: 2 + 2 is not 5" in text  # the build log's tail
    assert "the container says goodbye" in text  # the container's logs
    assert re.search(r"ExecStart=/nix/store/\S+-hello-1.0/bin/no-such-program does not exist", text)
    assert "is not executable: No such file or directory" in text  # systemd-analyze verify's own message
    assert "the unit gives up" in text  # the unit's journal
    assert "lib: a library of Nix functions" in text
    cases = {case.get("name"): case for case in ET.parse(xml).getroot().iter("testcase")}
    props = {p.get("name", ""): p.get("value", "") for p in cases["docker-exits"].iter("property")}
    assert any(name.startswith("pytest-flake evidence: logs of") and "goodbye" in value
               for name, value in props.items()), props
    good = {p.get("name", ""): p.get("value", "") for p in cases["good-service"].iter("property")}
    assert good["nix build packages.x86_64-linux.good-service"].startswith("/nix/store/")
    assert "ExecStart=" in good["pytest-flake packages.x86_64-linux.good-service"]


def test_markers_and_keywords_select_outputs(pytester: pytest.Pytester, state: Path) -> None:
    result = run(pytester, BROKEN, "-m", "not nspawn")
    found = outcomes(result)
    assert "packages::docker-runs" in found and not {"packages::portable-fails", "packages::portable-runs",
                                                     "packages::portable-oneshot"} & set(found)
    result.stdout.fnmatch_lines(["*3 deselected*"])
    result = run(pytester, BROKEN, "-m", "not nspawn and not docker")
    assert outcomes(result) == {"checks::failing": "FAILED", "checks::passing": "PASSED",
                                "packages::default": "PASSED", "packages::good-service": "PASSED",
                                "packages::missing-exec": "FAILED", "lib::lib": "SKIPPED"}
    result.stdout.fnmatch_lines(["*5 deselected*"])
    result = run(pytester, BROKEN, "-k", "docker")
    assert outcomes(result) == {"packages::docker-exits": "FAILED", "packages::docker-runs": "PASSED"}
    result = run(pytester, BROKEN, "-k", "checks and not failing")
    assert outcomes(result) == {"checks::passing": "PASSED"}


def test_portable_outputs_go_to_a_vm_when_asked(pytester: pytest.Pytester, state: Path) -> None:
    result = pytester.runpytest_subprocess(f"--flake={BROKEN}", "--flake-check", "--flake-portable-host", "vm",
                                           "-m", "vm", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["flake.nix::packages::portable-fails", "flake.nix::packages::portable-oneshot",
                                 "flake.nix::packages::portable-runs", "*3/11 tests collected (8 deselected)*"])


def test_beside_the_users_own_tests_and_under_xdist(pytester: pytest.Pytester, state: Path) -> None:
    pytester.makepyfile(test_mine="def test_mine(flake):\n    assert flake.build('default').out.exists()\n")
    result = run(pytester, BROKEN, "-n", "2", "-m", "not nspawn and not docker")
    result.assert_outcomes(passed=4, failed=2, skipped=1)
    assert "test_mine.py::test_mine" in result.stdout.str()
