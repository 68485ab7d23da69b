"""Reports for CI: a failed test's evidence and facts reach the JUnit XML file (issue 14, item 3)."""

from __future__ import annotations

import os
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


PORTABLE_FAILING = """
def test_portable_fails(systemd_container, portable_service, http):
    service = portable_service(systemd_container, "portable")
    http.get(systemd_container.url(3031, "/missing-portable-page"), retry_for=30)
    assert service.is_active()
    assert False, "the portable service is wrong"
"""


@pytest.mark.nspawn
def test_junit_xml_of_a_failed_portable_test_holds_the_journal(pytester: pytest.Pytester, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable service runs in a systemd container (the fast home of portable services; a VM is the same)."""
    import shutil

    if shutil.which("systemd-nspawn") is None or os.geteuid() != 0:
        pytest.skip("systemd-nspawn needs root and systemd-container")
    pytester.makepyfile(test_portable=PORTABLE_FAILING)
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", f"--junitxml={xml}",
                                           "-o", "junit_logging=system-out")
    result.assert_outcomes(failed=1)
    case = find_testcase(xml, "test_portable_fails")
    props = properties(case)
    journals = [v for n, v in props.items() if n.startswith("pytest-flake evidence: journal of portable service "
                                                                "web-server_1.0 in ")]
    assert len(journals) == 1, props
    assert "web-server" in journals[0] and "/missing-portable-page" in journals[0], journals[0][-2000:]
    system_out = case.find("system-out")
    assert system_out is not None and "/missing-portable-page" in (system_out.text or "")
