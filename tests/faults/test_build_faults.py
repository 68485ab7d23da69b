"""A build killed mid-build (its builder gets SIGKILL, as an OOM killer or a user would do it).

Real runs: the inner session builds with the real nix; this test finds the real builder process by
a token in its command line and kills it. The inner test must fail (not hang), in one line that
names the cause, with the build log's tail, and leave nothing: no builder, no nix, and the next
session passes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from .host import processes_with

FLAKE = r'''
{
  outputs = { self }: {
    packages.x86_64-linux = {
      slow = derivation {
        name = "slow";
        system = "x86_64-linux";
        builder = "/bin/busybox";
        # the token makes a new derivation each run (never cached) and marks its builder's command line
        args = [ "sh" "-euc" "echo compiling part 1 of 9; /bin/busybox sleep 300; echo @TOKEN@ > $out" ];
      };
      quick = derivation {
        name = "quick";
        system = "x86_64-linux";
        builder = "/bin/busybox";
        args = [ "sh" "-euc" "echo @TOKEN@ > $out" ];
      };
    };
  };
}
'''

INNER = textwrap.dedent("""
    import os

    def test_build(flake):
        flake.build(os.environ["ATTR"])
""")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill_builder_when_it_runs(token: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the builder and what it started (its ``sleep``), as an OOM killer takes a build's processes."""
    while not stop.wait(0.2):
        builders = [pid for pid in processes_with(token) if _children(pid)]  # the shell, once its sleep runs
        if builders:
            for pid in builders:
                children = _children(pid)
                for victim in (pid, *children):  # the builder first: nix then sees it end by the signal
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
            killed.extend(builders)
            return


def test_a_builder_killed_mid_build_fails_the_test_with_its_log(pytester: pytest.Pytester, nix: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    token = f"pf-fault-{secrets.token_hex(6)}"
    flake = pytester.mkdir("slowflake")
    (flake / "flake.nix").write_text(FLAKE.replace("@TOKEN@", token))
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(pytester.path / "state"))
    monkeypatch.setenv("ATTR", "slow")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_builder_when_it_runs, args=(token, killed, stop), daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        result = pytester.runpytest_subprocess(f"--flake=path:{flake}", "-p", "no:cacheprovider", timeout=240)
    finally:
        stop.set()
        killer.join()
    print(f"the killed build failed its test {time.monotonic() - started:.1f}s after the session started")
    assert killed, "the builder never ran: this test would prove nothing"
    result.assert_outcomes(failed=1)
    # one line naming the cause: the build, and the signal that ended its builder
    result.stdout.fnmatch_lines(["BuildError: nix build path:*#packages.x86_64-linux.slow failed: *signal 9*"])
    result.stdout.fnmatch_lines(["*compiling part 1 of 9*"])  # the build log's tail is attached
    assert processes_with(token) == []  # no builder, no nix left
    # the next session passes
    monkeypatch.setenv("ATTR", "quick")
    again = pytester.runpytest_subprocess(f"--flake=path:{flake}", "-p", "no:cacheprovider", timeout=240)
    again.assert_outcomes(passed=1)


