"""pytest-flake's own hooks on the real daemons: a conftest.py's edits reach the container and the nspawn machine.

Each test runs a session of its own (pytester) whose conftest.py implements one hook, and the
inner test reads the effect back from what is running: the daemon's record of the container,
the environment of the systemd container's init. (tests/plugin/test_hooks.py checks the wiring.)
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_flake.docker import Docker
from pytest_flake.nspawn import ContainerPool

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"

CONTAINER_RUN = textwrap.dedent(
    """
    def pytest_flake_container_run(image, kwargs):
        kwargs["environment"] = {**(kwargs["environment"] or {}), "FROM_HOOK": image}
        kwargs["mem_limit"] = "192m"
        kwargs["labels"]["pf-test.hook"] = "container-run"
    """
)

CONTAINER_TESTS = textwrap.dedent(
    """
    import pytest

    def test_a_container(docker_container, http):
        container = docker_container("docker", ports=[3031])
        http.get(container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
        container.sdk.reload()
        attrs = container.sdk.attrs
        assert f"FROM_HOOK={container.ref}" in attrs["Config"]["Env"]
        assert attrs["Config"]["Labels"]["pf-test.hook"] == "container-run"
        assert attrs["HostConfig"]["Memory"] == 192 * 1024 * 1024
        assert "FROM_HOOK=" in container.host.run("env").stdout  # the process sees it too

    @pytest.mark.flake_service(3031)
    def test_the_docker_target(service, http):
        http.get(service.url("/"), retry_for=30).expect(200)
        service.container.sdk.reload()
        assert service.container.sdk.attrs["HostConfig"]["Memory"] == 192 * 1024 * 1024
    """
)


def test_container_run_hook_edits_what_the_container_runs_with(pytester: pytest.Pytester,
                                                               flake_docker: Docker) -> None:
    pytester.makeconftest(CONTAINER_RUN)
    pytester.makepyfile(test_inner=CONTAINER_TESTS)
    result = pytester.runpytest_subprocess(f"--flake={REF}", "--flake-targets=docker", "-p", "no:cacheprovider",
                                           timeout=600)
    result.assert_outcomes(passed=2)


NSPAWN_COMMAND = textwrap.dedent(
    """
    def pytest_flake_nspawn_command(name, argv):
        argv.append(f"--setenv=FROM_HOOK={name}")
    """
)

NSPAWN_TESTS = textwrap.dedent(
    """
    def test_a_container(systemd_container):
        init = systemd_container.succeed("tr '\\\\0' '\\\\n' < /proc/1/environ").split()
        assert f"FROM_HOOK={systemd_container.name}" in init
    """
)


def test_nspawn_command_hook_edits_the_command_line(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, flake_containers: ContainerPool) -> None:
    pytester.makeconftest(NSPAWN_COMMAND)
    pytester.makepyfile(test_inner=NSPAWN_TESTS)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTEST_FLAKE_CONTAINER_IMAGE", str(flake_containers.tree().root))  # this session's tree
    result = pytester.runpytest_subprocess(f"--flake={REF}", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=1)
