"""Real ``nix build`` of the offline example flake, through a user-style test file.

The inner test file uses only the ``flake``/``http`` API of the design notes (plus
``flake.nix.calls`` to show that a cached build runs no nix process).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"


@pytest.fixture(autouse=True)
def _nix(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, nix: None) -> None:
    for name in ("PYTEST_FLAKE", "PYTEST_FLAKE_SYSTEM", "PYTEST_FLAKE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")  # keep inner runs quick


USER_TESTS = '''
import json

import pytest

SEEN = {}


def test_outputs_are_listed(flake):
    outputs = flake.outputs()
    assert {"default", "web-server", "docker", "web-service", "portable"} <= set(outputs)
    assert flake.system == "x86_64-linux"
    assert flake.ref.startswith("path:/")


def test_builds_are_cached(flake):
    first = flake.build()
    calls = flake.nix.calls
    again = flake.build()
    assert again is first
    assert flake.build(".#default") is first
    assert flake.build("packages.x86_64-linux.default") is first
    assert flake.nix.calls == calls, "a cached build ran nix"
    assert first.attr == "packages.x86_64-linux.default"
    assert str(first.out).startswith("/nix/store/") and first.out.is_dir()
    assert first.outputs == {"out": first.out}
    assert first.drv.name.endswith(".drv") and first.drv.exists()
    assert (first.out / "bin" / "web-server").is_file()
    SEEN["default"] = first


def test_cache_is_shared_between_tests(flake):
    calls = flake.nix.calls
    assert flake.build() is SEEN["default"]
    assert flake.nix.calls == calls


def test_unit_execstart_points_into_the_package(flake):
    unit = flake.build("web-service").out.read_text()
    execstart = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execstart == [f"ExecStart={flake.build().out}/bin/web-server"]
    assert "[Install]" in unit


def test_package_runs_and_answers_http(flake, http):
    server = flake.run(port=0)
    SEEN["pid"] = server.pid
    http.get(server.url("/")).expect(200, contains="web-server 1.0")
    info = http.get(server.url("/cgi-bin/info")).expect(200, json={"name": "web-server", "version": "1.0"},
                                                          headers={"Content-Type": "application/json"})
    assert info.json()["version"] == "1.0"
    assert "response:200" in server.logs()


def test_the_server_was_stopped_after_its_test():
    import os
    try:
        state = open(f"/proc/{SEEN['pid']}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return
    assert state == "Z", "the server outlived its test"


def test_failed_check_prints_transcript(flake, http):
    server = flake.run("web-server", port=0)
    http.get(server.url("/no-such-page")).expect(200, contains="web-server")
'''


def test_user_suite_against_offline_example(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("--flake", f"path:{EXAMPLE}", "-p", "no:randomly")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines([
        f"pytest-flake: flake: path:{EXAMPLE} (from --flake)",
        "pytest-flake: system: x86_64-linux, nix *",
    ])
    # the one failure: the curl-style transcript of the failed check, then the server's output
    result.stdout.fnmatch_lines([
        "*test_failed_check_prints_transcript*",
        "E *CheckFailed: GET http://127.0.0.1:*/no-such-page: status 404, expected 200; "
        "body does not contain 'web-server'",
        "E *> GET /no-such-page HTTP/1.1",
        "E *< HTTP/1.? 404*",
        "E *<",
        "*- Captured stdout call (pytest-flake: output of web-server) -*",
        # busybox httpd -vv logs the request: "url:/no-such-page" (Debian 12), "GET /no-such-page" (unstable)
        "127.0.0.1:*/no-such-page",
    ])
    assert "pytest_flake/" not in result.stdout.str()


GIT_FLAKE = """
{
  outputs = { self }: {
    packages.x86_64-linux.default = derivation {
      name = "hello";
      system = "x86_64-linux";
      builder = "/bin/busybox";
      args = [ "sh" "-c" "echo hello > $out" ];
    };
  };
}
"""


def test_git_flake_with_untracked_file_warns(pytester: pytest.Pytester) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    repo = pytester.path / "repo"
    repo.mkdir()
    (repo / "flake.nix").write_text(GIT_FLAKE)
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for args in (["init", "-q"], ["add", "flake.nix"], [*identity, "commit", "-q", "-m", "flake"]):
        subprocess.run([git, "-C", str(repo), *args], check=True, capture_output=True)
    (repo / "forgotten.nix").write_text("{}\n")
    pytester.makepyfile("""
        def test_outputs(flake):
            assert flake.outputs() == ["default"]
    """)
    result = pytester.runpytest("--flake", "repo")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        f"*FlakeWarning: flake {repo.resolve()} is a git checkout with 1 untracked file(s) that Nix will not see "
        f"(forgotten.nix); 'git add' them or use --flake path:{repo.resolve()}",
    ])

    # the same flake through path: sees every file, and does not warn
    result = pytester.runpytest("--flake", "path:repo")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*FlakeWarning*")


KILLED = '''
import json, os, signal
from pathlib import Path

def test_killed(flake, flake_session):
    server = flake.run(port=0)
    Path(os.environ["REPORT"]).write_text(json.dumps({"pid": server.pid, "session": flake_session.id}))
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_killed_session_leaves_no_process(pytester: pytest.Pytester, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL skips every teardown: the server dies with its parent, the next session sweeps the rest."""
    import json

    from pytest_flake import NotReady
    from pytest_flake.waiting import wait_for

    state = tmp_path / "state"
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    monkeypatch.setenv("REPORT", str(tmp_path / "report.json"))
    pytester.makepyfile(test_killed=KILLED)
    killed = pytester.runpytest_subprocess(f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider")
    assert killed.ret != 0
    report = json.loads((tmp_path / "report.json").read_text())

    def server_gone() -> None:
        if Path(f"/proc/{report['pid']}").exists():
            raise NotReady(f"pid {report['pid']} still runs")

    wait_for(server_gone, what="the server outlived the killed session", timeout=10, interval=0.1)
    registration = state / "sessions" / report["session"]
    assert registration.is_dir()  # left behind by the killed session...

    pytester.makepyfile(test_killed="def test_next(flake_session):\n    pass\n")  # uses the plugin: sweeps
    pytester.runpytest_subprocess(f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not registration.exists()  # ...and swept by the next one
    assert list((state / "sessions").iterdir()) == []
