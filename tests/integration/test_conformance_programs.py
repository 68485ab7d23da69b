"""flake.run() runs what the real ``nix run`` runs, on the conformance flake (programs.nix).

Real Nix, no fakes: each package and app is run both ways, by ``nix run path:...#attr``
and by ``Flake.run``, and what the two printed is compared. Where ``nix run`` itself fails
(a lone file that no rule names, a missing program), the test says what pytest-flake does
instead. The flake is referred to as ``path:`` so that files git does not track are seen.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from pytest_flake import Flake, MissingOutputError, NotReady, Process, UsageError
from pytest_flake.waiting import wait_for

CONFORMANCE = Path(__file__).resolve().parents[1] / "flakes" / "conformance"
REF = f"path:{CONFORMANCE}"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"  # a flake with packages, no apps
ARGS = ["one", "two words"]


@pytest.fixture(scope="module")
def _cache() -> dict[str, Flake]:
    return {}


@pytest.fixture
def conformance(nix: None, _cache: dict[str, Flake]) -> Flake:
    """One Flake for the module, so each package is built and evaluated once."""
    if "flake" not in _cache:
        _cache["flake"] = Flake(REF)
    return _cache["flake"]


@pytest.fixture
def env_without_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)  # the programs serve HTTP only when PORT is set


def nix_run(attr: str) -> subprocess.CompletedProcess[str]:
    """The real ``nix run`` of ``attr`` (offline: everything builds locally); ``.#x`` is ``REF#x``."""
    attr = attr.split("#", 1)[-1]
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    return subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "run", f"{REF}#{attr}",
                           "--", *ARGS], capture_output=True, text=True, timeout=600, env=env,
                          stdin=subprocess.DEVNULL)


def output_of(process: Process) -> str:
    """What a program that prints and exits printed (it is stopped if it does not exit)."""
    def exited() -> None:
        if process.poll() is None:
            raise NotReady(f"{process!r} still runs")

    with process:
        wait_for(exited, what=f"{process!r} exiting", timeout=60, interval=0.02, max_interval=0.2,
                 on_timeout=process.logs)
        assert process.poll() == 0, f"{process!r} did not exit with 0: {process.logs()}"
        return process.logs()


@pytest.mark.parametrize("attr, says", [
    # apps.<system>.default comes before packages.<system>.default (greeter-2)
    ("default", "hi from toolbox-1.0"),
    ("", "hi from toolbox-1.0"),
    # name "greeter-2", no pname/mainProgram: bin/greeter, not bin/busybox
    ("greeter-2", "greeter from greeter-2"),
    # pname over the parsed name (bin/pname-demo exists too)
    ("pname-differs", "hello-pname from pname-demo-3.1"),
    # meta.mainProgram over pname and the parsed name
    ("main-program", "mp-main from mp-tool-1.0"),
    # an app pointing into a package
    ("bye", "bye from toolbox-1.0"),
    (".#bye", "bye from toolbox-1.0"),
    ("apps.x86_64-linux.bye", "bye from toolbox-1.0"),
    # an app in a package's second output: only the string's context says which output to build
    ("split-tool", "split-tool from split-1.0 (tools output)"),
    # a full package path skips the apps
    ("packages.x86_64-linux.default", "greeter from greeter-2"),
])
def test_runs_what_nix_run_runs(conformance: Flake, env_without_port: None, attr: str, says: str) -> None:
    real = nix_run(attr)
    assert real.returncode == 0, real.stderr
    assert real.stdout == f"{says} {' '.join(ARGS)}\n"
    ours = output_of(conformance.run(attr, args=ARGS))
    assert ours == real.stdout


def test_two_binaries_serve_from_greeter_not_busybox(conformance: Flake) -> None:
    program = conformance.program("greeter-2")
    assert program.name == "greeter"
    assert sorted(p.name for p in program.parent.iterdir()) == ["busybox", "greeter"]
    with conformance.run("greeter-2", port=0) as server:
        with urllib.request.urlopen(server.url("/"), timeout=30) as response:
            assert response.read().decode() == "greeter from greeter-2\n"
        assert "greeter from greeter-2" in server.logs()


def test_lone_file_runs_where_nix_run_fails(conformance: Flake, env_without_port: None) -> None:
    real = nix_run("lone")
    assert real.returncode != 0
    assert "/bin/lone" in real.stderr  # nix run looks for the parsed name only
    assert output_of(conformance.run("lone", args=ARGS)) == f"solo from lone-1.0 {' '.join(ARGS)}\n"


def test_missing_main_program_fails_like_nix_run(conformance: Flake) -> None:
    real = nix_run("missing-main")
    assert real.returncode != 0 and "/bin/ghost" in real.stderr
    with pytest.raises(UsageError) as err:
        conformance.run("missing-main")
    msg = str(err.value)
    assert "packages.x86_64-linux.missing-main: meta.mainProgram is 'ghost' but /nix/store/" in msg
    assert "/bin/ghost does not exist" in msg and "bin has missing-main)" in msg


@pytest.mark.parametrize("attr, files", [("ambiguous", "alpha, beta"), ("toolbox", "bye, hi")])
def test_no_program_to_choose_lists_bin(conformance: Flake, attr: str, files: str) -> None:
    real = nix_run(attr)
    assert real.returncode != 0 and f"/bin/{attr}'" in real.stderr
    with pytest.raises(UsageError) as err:
        conformance.run(attr)
    msg = str(err.value)
    assert f"packages.x86_64-linux.{attr} has no program to run: no meta.mainProgram, no bin/{attr}" in msg
    assert f"/bin has {files})" in msg
    assert "set meta.mainProgram" in msg and "or add an app" in msg


def test_app_of_wrong_type(conformance: Flake) -> None:
    real = nix_run("wrong-type")
    assert real.returncode != 0 and "should have type 'app'" in real.stderr
    with pytest.raises(UsageError, match=r"^apps\.x86_64-linux\.wrong-type has type 'derivation', not 'app'"):
        conformance.run("wrong-type")


def test_app_program_that_does_not_exist(conformance: Flake) -> None:
    real = nix_run("no-such-program")
    assert real.returncode != 0 and "/bin/nope" in real.stderr
    with pytest.raises(UsageError) as err:
        conformance.run("no-such-program")
    assert "apps.x86_64-linux.no-such-program: program /nix/store/" in str(err.value)
    assert "-toolbox-1.0/bin/nope does not exist" in str(err.value)
    assert "bin has bye, hi)" in str(err.value)


def test_missing_attribute(conformance: Flake) -> None:
    with pytest.raises(MissingOutputError) as err:
        conformance.run("nope")
    msg = str(err.value)
    assert "has no app or package 'nope' (looked for apps.x86_64-linux.nope, packages.x86_64-linux.nope" in msg
    assert "apps under apps.x86_64-linux: bye, default, no-such-program, split-tool, wrong-type;" in msg


def test_apps_and_outputs(conformance: Flake) -> None:
    assert conformance.apps() == ["bye", "default", "no-such-program", "split-tool", "wrong-type"]
    assert {"greeter-2", "pname-differs", "main-program", "lone", "ambiguous", "toolbox"} <= set(conformance.outputs())


def test_flake_without_apps_has_none(nix: None) -> None:
    assert Flake(f"path:{EXAMPLE}").apps() == []


USER_TESTS = '''
import subprocess

import pytest
from pytest_flake import FlakeTimeout


def test_default_is_the_app(flake, http, flake_session):
    assert "default" in flake.apps()
    server = flake.run(port=0)
    http.get(server.url("/")).expect(200, contains="hi from toolbox-1.0")
    # what the app's program string needed was built as a GC root of this session
    toolbox = str(flake.program()).split("/bin/")[0]
    roots = subprocess.run(["nix-store", "--gc", "--print-roots"], capture_output=True, text=True, check=True)
    # "LINK -> TARGET"; Nix 2.34 quotes the link: '"LINK" -> TARGET'
    links = [line.rsplit(" -> ", 1) for line in roots.stdout.splitlines() if " -> " in line]
    mine = [target for link, target in links if link.strip('"').startswith(str(flake_session.dir))]
    assert toolbox in mine, roots.stdout


def test_two_binaries(flake, http):
    server = flake.run("greeter-2", port=0)
    http.get(server.url("/")).expect(200, contains="greeter from greeter-2")


def test_timeout_is_the_flake_timeout(flake):
    with pytest.raises(FlakeTimeout, match=r"sleeper \\(pid \\d+\\) listening on 127.0.0.1:\\d+: not ready after 1.5s"):
        flake.run("sleeper", port=0)


def test_explicit_timeout_wins(flake):
    with pytest.raises(FlakeTimeout, match=r"not ready after 0.5s"):
        flake.run("sleeper", port=0, timeout=0.5)


@pytest.mark.flake("path:@EXAMPLE@")
def test_marker_flake_without_apps(flake, http):
    assert flake.apps() == []
    server = flake.run(port=0)  # packages.default: meta.mainProgram = "web-server"
    http.get(server.url("/")).expect(200, contains="web-server 1.0")
'''


def test_flake_fixture_runs_nix_run_program(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                            nix: None) -> None:
    for name in ("PYTEST_FLAKE", "PYTEST_FLAKE_SYSTEM", "PYTEST_FLAKE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")
    pytester.makepyfile(test_user=USER_TESTS.replace("@EXAMPLE@", str(EXAMPLE)))
    result = pytester.runpytest(f"--flake={REF}", "--flake-timeout=1.5", "-p", "no:randomly")
    result.assert_outcomes(passed=5)
