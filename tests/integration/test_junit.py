"""Reports for CI: a failed test's evidence and facts reach the JUnit XML file (issue 14, item 3)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("nix")]

FAILING = """
def test_fails(docker_container, http):
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/missing-page-for-junit"))
    assert False, "the service is wrong"
"""


def find_testcase(xml: Path, name: str) -> ET.Element:
    root = ET.parse(xml).getroot()
    cases = [case for case in root.iter("testcase") if case.get("name") == name]
    assert len(cases) == 1, ET.tostring(root).decode()[:2000]
    return cases[0]


def properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


@pytest.mark.parametrize("logging", ["no", "system-out"])
def test_junit_xml_of_a_failed_docker_test_holds_the_container_logs(pytester: pytest.Pytester, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    logging: str) -> None:
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile(test_failing=FAILING)
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", f"--junitxml={xml}",
                                           "-o", f"junit_logging={logging}")
    result.assert_outcomes(failed=1)
    case = find_testcase(xml, "test_fails")
    assert case.find("failure") is not None
    props = properties(case)
    logs = [value for name, value in props.items() if name.startswith("pytest-flake evidence: logs of container ")]
    assert len(logs) == 1, props
    assert "/missing-page-for-junit" in logs[0]  # the container's own log line of the request
    # the facts: the flake and its locked state, the store path of the image, the container with its ports
    assert props["pytest-flake flake"].startswith(f"{REF} (locked: path sha256-")
    built = [v for n, v in props.items() if n.startswith("nix build ") and n.endswith("#packages.x86_64-linux.docker")]
    assert len(built) == 1 and built[0].startswith("/nix/store/"), props
    container = [v for n, v in props.items() if n.startswith("docker container pf-")]
    assert len(container) == 1 and "sha256:" in container[0] and "3031/tcp->127.0.0.1:" in container[0], props
    system_out = case.find("system-out")
    if logging == "system-out":
        assert system_out is not None and "/missing-page-for-junit" in (system_out.text or "")
        assert "pytest-flake: logs of container" in (system_out.text or "")
    else:
        assert system_out is None
