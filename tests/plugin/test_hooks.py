"""pytest-flake's own hooks, with pytester: registered with their arguments, and wired into each component.

A conftest.py implements a hook; the component (VMPool, Docker, ContainerPool) is replaced by
a fake that keeps the callable the fixture hands it, and the test calls it as the component
would. tests/integration/test_hooks.py checks the effect on a real container and a real
systemd container.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FAKES = """
import pytest_flake.docker
import pytest_flake.nspawn
import pytest_flake.vm


class FakeVMPool:
    def __init__(self, settings, session, *, edit_domain=None, progress=None):
        self.edit_domain = edit_domain

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class FakeContainerPool(FakeVMPool):
    def __init__(self, session, image, *, timeout, invocation_dir, edit_command=None):
        self.edit_command = edit_command


class FakeDocker:
    @classmethod
    def from_settings(cls, settings, *, session_id, run, control_dir, edit_run=None):
        docker = cls()
        docker.edit_run = edit_run
        return docker

    def close(self):
        pass


pytest_flake.vm.VMPool = FakeVMPool
pytest_flake.nspawn.ContainerPool = FakeContainerPool
pytest_flake.nspawn.unavailable = lambda: None
pytest_flake.docker.Docker = FakeDocker
"""

HOOKS = """
import xml.etree.ElementTree as ET


def pytest_flake_domain_xml(name, domain):
    ET.SubElement(ET.SubElement(domain, "memoryBacking"), "hugepages")
    domain.set("edited-for", name)


def pytest_flake_container_run(image, kwargs):
    kwargs["environment"] = {**(kwargs["environment"] or {}), "FROM_HOOK": image}
    kwargs["mem_limit"] = "256m"


def pytest_flake_nspawn_command(name, argv):
    argv.append(f"--setenv=FROM_HOOK={name}")
"""

# a second implementation, in a plugin: every implementation is called, each adds its part
SECOND = """
def pytest_flake_nspawn_command(name, argv):
    argv.append("--bind-ro=/srv/data")
"""

TESTS = """
import xml.etree.ElementTree as ET


def test_domain_xml(flake_vms):
    root = ET.fromstring("<domain type='qemu'><name>pf-vm-1</name></domain>")
    flake_vms.edit_domain("pf-vm-1", root)
    assert root.get("edited-for") == "pf-vm-1"
    assert root.find("memoryBacking/hugepages") is not None


def test_container_run(flake_docker):
    kwargs = {"environment": {"PORT": "3031"}, "name": "pf-web-1", "detach": True}
    flake_docker.edit_run("web-server:1.0", kwargs)
    assert kwargs == {"environment": {"PORT": "3031", "FROM_HOOK": "web-server:1.0"}, "name": "pf-web-1",
                      "detach": True, "mem_limit": "256m"}


def test_nspawn_command(flake_containers):
    argv = ["systemd-nspawn", "--boot", "--machine=pf-nspawn-1"]
    flake_containers.edit_command("pf-nspawn-1", argv)
    assert argv[:3] == ["systemd-nspawn", "--boot", "--machine=pf-nspawn-1"]
    assert sorted(argv[3:]) == ["--bind-ro=/srv/data", "--setenv=FROM_HOOK=pf-nspawn-1"]
"""


def test_each_hook_reaches_its_component(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKES + HOOKS)
    pytester.makepyfile(pf_second=SECOND, test_hooks=TESTS)
    pytester.syspathinsert()
    # in a subprocess: the fakes replace the components for that run only
    result = pytester.runpytest_subprocess("-p", "pf_second", "-v")
    result.assert_outcomes(passed=3)


def test_without_an_implementation_nothing_changes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAKES)
    pytester.makepyfile(test_plain="""
        def test_container_run(flake_docker):
            kwargs = {"environment": None, "name": "pf-web-1"}
            flake_docker.edit_run("web-server:1.0", kwargs)
            assert kwargs == {"environment": None, "name": "pf-web-1"}
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("hook", "wrong"), [("pytest_flake_domain_xml(name, root)", "root"),
                                            ("pytest_flake_container_run(image, args)", "args"),
                                            ("pytest_flake_nspawn_command(machine, argv)", "machine")])
def test_an_implementation_with_a_wrong_argument_is_refused(pytester: pytest.Pytester, hook: str, wrong: str) -> None:
    """The hooks are registered with their arguments, so pluggy checks every implementation against them."""
    pytester.makeconftest(f"def {hook}:\n    pass\n")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret != 0
    name = hook.split("(")[0]
    result.stderr.fnmatch_lines([f"*for hook '{name}'*", f"*{{'{wrong}'}}*can not be found in the hookspec*"])


def test_every_hook_is_documented_in_the_readme() -> None:
    from pytest_flake import hooks

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Hooks\n", 1)[1].split("\n## ", 1)[0]
    names = [name for name in vars(hooks) if name.startswith("pytest_flake_")]
    assert len(names) == 3
    for name in names:
        assert f"`{name}(" in section, name
        assert "in place" in (getattr(hooks, name).__doc__ or ""), name
