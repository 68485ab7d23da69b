"""The state folder's file system full (a small tmpfs as ``PYTEST_FLAKE_STATE``), for real.

Full from the start: every test that uses the plugin fails at once with one line naming the
folder and the fix, and the header says it too. Full while a container runs: the guest's own
write fails as a failed check, the container and its overlay still go. In both cases nothing is
left in the state folder's sessions, and the next session, with room, passes. (A tmpfs rather
than a loop-mounted image: the suite's other tests check that the host's loop devices stay as
they were found.)
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake.nspawn import ContainerPool

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"

INNER = textwrap.dedent("""
    import pytest
    from pytest_flake.errors import CheckFailed

    def test_local_run(flake, http):
        server = flake.run(port=0)
        http.get(server.url("/")).expect(200)

    def test_container_fills_the_disk(systemd_container):
        with pytest.raises(CheckFailed) as full:
            systemd_container.succeed("dd if=/dev/zero of=/var/tmp/big bs=1M count=64")
        assert "No space left on device" in str(full.value)
        systemd_container.succeed("rm /var/tmp/big; echo still here")
""")


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _mounts_below(folder: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(f"{folder}/")]


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider", *args, timeout=300)


def test_a_full_state_folder_fails_each_test_in_one_line(pytester: pytest.Pytester, small_state: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    state = small_state / "state"
    filler = small_state / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=24"], capture_output=True, check=False)
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    result = _run(pytester, "-k", "local_run")
    result.assert_outcomes(errors=1)
    line = (f"InfrastructureError: cannot register the test session in {state}: No space left on device "
            "(free space there, or point PYTEST_FLAKE_STATE at a folder with room*")
    result.stdout.fnmatch_lines([f"pytest-flake: {line.split(': ', 1)[1]}", line])
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    assert not (state / "sessions").exists() or list((state / "sessions").iterdir()) == []
    filler.unlink()
    again = _run(pytester, "-k", "local_run")
    again.assert_outcomes(passed=1)


def test_a_state_folder_that_fills_while_a_container_runs(pytester: pytest.Pytester, small_state: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           flake_containers: ContainerPool) -> None:
    state = small_state / "state"
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(state))
    # the tree this session built, used in place: the container's writes land in the small folder
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))
    result = _run(pytester, "-k", "container")
    result.assert_outcomes(passed=1)
    assert _mounts_below(small_state) == []  # the overlay went with the container
    assert list((state / "sessions").iterdir()) == []
    again = _run(pytester, "-k", "container")
    again.assert_outcomes(passed=1)
