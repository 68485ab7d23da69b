"""``/dev/loop-control`` missing (for real, in a mount namespace of the inner session's own).

The inner session runs under ``unshare --mount`` with a ``/dev`` that lacks ``loop-control``
(:mod:`tests.faults.nodevloop`; the host's ``/dev`` is never touched). Its container boots without
loop devices; attaching a ``.raw`` fails at once in one line that names the container, the image
and the way out, while a directory image still attaches. Afterwards the host's loop devices are
as they were, and no container is left.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pytest_flake.nspawn import ContainerPool
from pytest_flake.nspawn.maintenance import _nspawn_processes

from .host import host_loops, processes_with

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
LAUNCHER = Path(__file__).with_name("nodevloop.py")

INNER = textwrap.dedent("""
    import os

    def test_raw_image(systemd_container, portable_service):
        assert not os.path.exists("/dev/loop-control")
        portable_service(systemd_container, "portable")

    def test_directory_image(systemd_container, portable_service, flake, tmp_path, http):
        import subprocess
        raw = next(flake.build("portable").out.glob("*.raw")) if flake.build("portable").out.is_dir() \\
            else flake.build("portable").out
        tree = tmp_path / raw.name.removesuffix(".raw")
        subprocess.run(["unsquashfs", "-q", "-d", str(tree), str(raw)], check=True)
        portable_service(systemd_container, tree)
        http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
""")


def test_no_loop_control_fails_a_raw_image_in_one_line(pytester: pytest.Pytester, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       flake_containers: ContainerPool) -> None:
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))
    before = host_loops()
    result = pytester.run("unshare", "--mount", "--propagation", "private", sys.executable, str(LAUNCHER),
                          sys.executable, "-m", "pytest", f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider",
                          "-p", "no:randomly", "-o", "log_cli=false", timeout=300)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "PortableError: pf-*-nspawn-1 has no loop devices, so web-server_1.0.raw cannot be attached there "
        "(attach a directory image*"])
    assert "Traceback" not in result.stdout.str()
    assert host_loops() == before
    assert Path("/dev/loop-control").exists()
    # no container of the inner session is left (other sessions' containers may run meanwhile)
    assert set(_nspawn_processes(["pf-"])) & set(processes_with(str(tmp_path))) == set()

