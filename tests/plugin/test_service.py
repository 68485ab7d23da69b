"""The service fixture's parametrisation, options and marker, with pytester."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

# the real parametrisation and markers, with a stand-in for the fixture's work: it answers its target
FAKE_SERVICE = """
import pytest

@pytest.fixture
def service(request):
    return request.param
"""

THREE_TARGETS = """
import pytest

@pytest.mark.flake_service(3031)
def test_web(service):
    assert service in ("local", "docker", "portable")
"""


@pytest.fixture
def three_targets(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE_SERVICE)
    pytester.makepyfile(test_three=THREE_TARGETS)
    return pytester


def test_one_variant_per_target_with_its_ids(three_targets: pytest.Pytester) -> None:
    result = three_targets.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_web?local? PASSED*", "*test_web?docker? PASSED*",
                                 "*test_web?portable? PASSED*"])


def test_not_vm_drops_the_portable_variant(three_targets: pytest.Pytester) -> None:
    result = three_targets.runpytest("-v", "-m", "not vm")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_web?local? PASSED*", "*test_web?docker? PASSED*"])
    result.stdout.no_fnmatch_line("*test_web?portable? PASSED*")


@pytest.mark.parametrize(("expr", "selected"), [("nix", "local"), ("docker", "docker"), ("portable", "portable"),
                                                 ("vm and portable", "portable")])
def test_each_variant_carries_its_markers(three_targets: pytest.Pytester, expr: str, selected: str) -> None:
    result = three_targets.runpytest("-v", "-m", expr)
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines([f"*test_web?{selected}? PASSED*"])


def test_flake_targets_chooses(three_targets: pytest.Pytester) -> None:
    result = three_targets.runpytest("-v", "--flake-targets", "docker")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_web?docker? PASSED*"])
    result.stdout.no_fnmatch_line("*test_web?local?*")


def test_flake_targets_from_env_and_ini(three_targets: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    three_targets.makeini("[pytest]\nflake_targets = portable, local\n")
    result = three_targets.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_web?portable? PASSED*", "*test_web?local? PASSED*"])
    monkeypatch.setenv("PYTEST_FLAKE_TARGETS", "docker,local")
    result = three_targets.runpytest("-v")  # the environment wins over the ini file
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_web?docker? PASSED*", "*test_web?local? PASSED*"])


def test_unknown_target_is_a_usage_error(three_targets: pytest.Pytester) -> None:
    result = three_targets.runpytest("--flake-targets", "local,podman")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--flake-targets*'podman'*valid targets: local, docker, portable*"])


def test_marker_is_registered_with_its_signature(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(['*flake_service(port, local="default", docker="docker", portable="portable", '
                                 'env=None)*'])


def test_missing_or_bad_marker_names_the_fix(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad="""
        import pytest

        def test_no_marker(service):
            pass

        @pytest.mark.flake_service("http")
        def test_bad_port(service):
            pass
    """)
    result = pytester.runpytest("--flake-targets", "local")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*test_no_marker?local? uses the service fixture but has no flake_service marker*"
        "@pytest.mark.flake_service(PORT)*",
        "*flake_service: port 'http' is not a TCP port*",
    ])


LOCAL_WEB = """
import os
import time
import urllib.request

import pytest

@pytest.mark.flake_service(8080, local="web", env={"ECHO_PORT": "{port}"})
def test_local(service):
    assert service.target == "local" and service.vm is None
    body = urllib.request.urlopen(service.url("/index.html"), timeout=10).read().decode()
    assert body == "tiny web\\n"
    port = service.url().split(":")[2].split("/")[0]
    environ = open(f"/proc/{service.process.pid}/environ", "rb").read().split(b"\\0")
    assert f"ECHO_PORT={port}".encode() in environ
    with open(os.environ["PID_FILE"], "w") as out:
        out.write(str(service.process.pid))
    if os.environ.get("HANG"):
        time.sleep(120)
    assert os.environ.get("FAIL") is None, "failing on purpose"
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_local_target_runs_the_program_and_reports_its_output(pytester: pytest.Pytester, tiny_flake: Path,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_local=LOCAL_WEB)
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-targets=local", "-v")
    result.assert_outcomes(passed=1)
    assert _gone(int(pid_file.read_text()))

    monkeypatch.setenv("FAIL", "1")
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-targets=local")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*output of local service web*", "*url:/index.html*"])
    assert _gone(int(pid_file.read_text()))


def test_pytest_timeout_interrupts_and_the_program_is_stopped_with_evidence(
        pytester: pytest.Pytester, tiny_flake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_local=LOCAL_WEB)
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    monkeypatch.setenv("HANG", "1")
    result = pytester.runpytest_subprocess(f"--flake={tiny_flake}", "--flake-targets=local", "-p", "timeout",
                                           "--timeout=20", timeout=170)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout (>20.0s) from pytest-timeout*", "*output of local service web*",
                                 "*url:/index.html*"])
    assert _gone(int(pid_file.read_text()))


def test_with_pdb_the_service_is_alive_at_the_prompt(pytester: pytest.Pytester, tiny_flake: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_local=LOCAL_WEB)
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    monkeypatch.setenv("FAIL", "1")
    commands = textwrap.dedent("""\
        import urllib.request
        print("AT-PROMPT", service.process.poll(), urllib.request.urlopen(service.url("/index.html")).read())
        continue
    """).encode()
    result = pytester.run("python3", "-m", "pytest", "-p", "pytester", f"--flake={tiny_flake}",
                          "--flake-targets=local", "--pdb", "-p", "no:cacheprovider", str(pytester.path),
                          stdin=commands, timeout=170)
    result.stdout.fnmatch_lines(["*AT-PROMPT None b'tiny web\\n'*"])
    assert _gone(int(pid_file.read_text()))


def test_portable_variant_in_a_systemd_container_is_marked_nspawn(three_targets: pytest.Pytester) -> None:
    result = three_targets.runpytest("-v", "-m", "not vm", "--flake-portable-host", "nspawn")
    result.assert_outcomes(passed=3)
    result = three_targets.runpytest("-v", "-m", "nspawn and portable", "--flake-portable-host", "nspawn")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_web?portable? PASSED*"])
