"""Builds as Nix users expect them: GC roots for the session, live logs, status lines, a timeout."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("nix")

# A flake whose `slow` build prints a line, waits until the file $GO exists, then prints another.
FLAKE = r'''
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      run = name: script: derivation {
        inherit name system;
        builder = "/bin/busybox";
        args = [ "sh" "-euc" script ];
        token = "@TOKEN@";
      };
    in {
      packages.${system} = {
        default = run "rooted" "echo @TOKEN@ > $out";
        slow = run "slow" ''
          echo "slow build: step one"
          while [ ! -e @GO@ ]; do /bin/busybox sleep 0.1; done
          echo "slow build: step two"
          echo done > $out
        '';
        sleepy = run "sleepy" "/bin/busybox sleep 37; echo late @TOKEN@ > $out";
      };
    };
}
'''


def write_flake(directory: Path, go: Path) -> tuple[Path, str]:
    token = secrets.token_hex(8)  # a new derivation each run: nothing comes from an earlier build
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(textwrap.dedent(FLAKE).replace("@TOKEN@", token).replace("@GO@", str(go)))
    return directory, token


def test_build_is_a_gc_root_for_the_session(pytester: pytest.Pytester, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    flake, _ = write_flake(tmp_path / "flake", tmp_path / "go")
    report = tmp_path / "report.json"
    monkeypatch.setenv("REPORT", str(report))
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile(test_inner="""
        import json, os, subprocess

        def test_rooted(flake, flake_session):
            build = flake.build()
            # a collection of exactly this path (the machinery of `nix-store --gc`, without
            # collecting other users' garbage): refused, the session holds a root
            gc = subprocess.run(["nix-store", "--delete", str(build.out)], capture_output=True, text=True)
            json.dump({"out": str(build.out), "rc": gc.returncode, "stderr": gc.stderr,
                       "exists": build.out.exists(),
                       "roots": [os.readlink(p) for p in (flake_session.dir / "gcroots").iterdir()],
                       "session": str(flake_session.dir)}, open(os.environ["REPORT"], "w"))
    """)
    result = pytester.runpytest_subprocess(f"--flake=path:{flake}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    seen = json.loads(report.read_text())
    out = Path(seen["out"])
    assert seen["rc"] != 0, seen
    assert "still alive" in seen["stderr"], seen["stderr"]
    assert seen["exists"]
    assert seen["roots"] == [seen["out"]]
    # the roots went with the session: now the same collection deletes it
    assert not Path(seen["session"]).exists()
    gc = subprocess.run(["nix-store", "--delete", str(out)], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert not out.exists()


@pytest.fixture
def go_file() -> Iterator[Path]:
    """A path the build can see: builds run as a build user, who cannot enter pytest's 0700 tmp dirs."""
    directory = Path(tempfile.mkdtemp(prefix="pf-go-"))
    directory.chmod(0o755)
    yield directory / "go"
    shutil.rmtree(directory, ignore_errors=True)


def test_build_log_streams_to_log_cli_while_it_runs(pytester: pytest.Pytester, tmp_path: Path, go_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    go = go_file
    flake, _ = write_flake(tmp_path / "flake", go)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile(test_inner="""
        def test_slow(flake):
            assert flake.build("slow").out.read_text() == "done\\n"
    """)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--flake=path:{flake}",
            "-o", "log_cli=true", "-o", "log_cli_level=INFO", "test_inner.py"]
    proc = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "slow build: step one" in line:
                break
        # the build is still waiting for us: its first line came while it ran
        assert proc.poll() is None, "\n".join(lines)
        assert not any("step two" in line for line in lines)
        time.sleep(4)  # long enough for a status line
        go.write_text("go")
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += rest.splitlines()
    text = "\n".join(lines)
    assert proc.returncode == 0, text
    assert any(line.startswith("INFO") and "pytest_flake.nix" in line and "slow build: step one" in line
               for line in lines), text
    assert any("slow build: step two" in line for line in lines), text
    # a build that ran longer than a few seconds gets a status line: what, and how long
    assert any("pytest-flake: building " in line and "#packages.x86_64-linux.slow" in line for line in lines), text
    assert any("pytest-flake: built " in line and "#packages.x86_64-linux.slow in " in line for line in lines), text


def test_build_timeout_stops_the_build(pytester: pytest.Pytester, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    flake, token = write_flake(tmp_path / "flake", tmp_path / "go")
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    pytester.makepyfile(test_inner="""
        def test_sleepy(flake):
            flake.build("sleepy")
    """)
    result = pytester.runpytest_subprocess(f"--flake=path:{flake}", "-p", "no:cacheprovider",
                                           "--flake-build-timeout=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"FlakeTimeout: 'nix build --json --out-link * --print-build-logs path:{flake}#packages.x86_64-linux.sleepy' "
        "did not finish in 2s (raise --flake-build-timeout, or leave it unset to wait)",
    ])
    # the builder went with it
    assert [cmd for cmd in _cmdlines() if f"late {token}" in cmd] == []


def _cmdlines() -> list[str]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_omitted_flake_is_found_in_a_parent_directory(pytester: pytest.Pytester, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    flake, token = write_flake(pytester.path, tmp_path / "go")
    sub = pytester.path / "tests" / "deep"
    sub.mkdir(parents=True)
    (sub / "test_inner.py").write_text(textwrap.dedent(f"""
        def test_found(flake):
            assert flake.build().out.read_text() == "{token}\\n"
    """))
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_inner.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"pytest-flake: flake: {pytester.path} (from flake.nix in a parent of the "
                                 "invocation directory)"])
