"""The testinfra adapter of containers (``pytest_flake.docker.exec_backend``) against the installed testinfra.

The adapter subclasses testinfra's ``DockerBackend`` and overrides ``run``. These tests pin
down what it relies on, so a testinfra release that changes any of it fails here (and not
in the middle of a user's test run): the signatures it calls or overrides, the attributes
it reads or sets, and the range pyproject allows. A fake SDK container stands in for the
daemon (a unit test); tests/integration/test_docker*.py run the adapter on a real one.
"""

from __future__ import annotations

import inspect
import io
import re
import tarfile
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

testinfra_host = pytest.importorskip("testinfra.host")
from testinfra.backend import base  # noqa: E402
from testinfra.backend.docker import DockerBackend  # noqa: E402

from pytest_flake.docker import container_shell, exec_backend  # noqa: E402
from pytest_flake.errors import DockerError  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def parameters(function: Any) -> list[tuple[str, inspect._ParameterKind]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


# --- the contract: what the adapter calls, overrides, reads and sets ----------------------------------------
def test_the_pinned_range_holds_the_installed_release() -> None:
    pins = re.findall(r'"pytest-testinfra>=([\d.]+),<(\d+)"', PYPROJECT.read_text())
    assert pins, "pyproject pins pytest-testinfra as >=X,<Y"
    installed = tuple(int(part) for part in version("pytest-testinfra").split(".")[:2])
    for low, high in pins:
        assert tuple(int(part) for part in low.split(".")[:2]) <= installed < (int(high), 0)


def test_docker_backend_takes_the_container_name_first() -> None:
    assert parameters(DockerBackend.__init__)[:2] == [("self", POSITIONAL), ("name", POSITIONAL)]


def test_run_is_overridden_with_the_signature_testinfra_calls() -> None:
    expected = [("self", POSITIONAL), ("command", POSITIONAL), ("args", VAR_POSITIONAL), ("kwargs", VAR_KEYWORD)]
    assert parameters(DockerBackend.run) == expected
    assert parameters(base.BaseBackend.run) == expected
    assert parameters(type(exec_backend(fake_container())).run) == expected


def test_the_base_methods_the_adapter_calls() -> None:
    assert parameters(base.BaseBackend.get_command) == [("self", POSITIONAL), ("command", POSITIONAL),
                                                        ("args", VAR_POSITIONAL)]
    assert parameters(base.BaseBackend.encode) == [("self", POSITIONAL), ("data", POSITIONAL)]
    assert [name for name, _ in parameters(base.BaseBackend.result)] == ["self", "rc", "cmd", "stdout", "stderr"]
    assert isinstance(inspect.getattr_static(base.BaseBackend, "encoding"), property)


def test_user_comes_from_the_container_spec() -> None:
    assert (DockerBackend("root@abc").name, DockerBackend("root@abc").user) == ("abc", "root")
    assert DockerBackend("abc").user is None


def test_host_takes_a_backend() -> None:
    assert parameters(testinfra_host.Host.__init__) == [("self", POSITIONAL), ("backend", POSITIONAL)]


# --- the adapter on a fake SDK container ---------------------------------------------------------------------
class FakeSdkContainer:
    """The few calls of docker's ``Container`` the adapter makes, recorded."""

    def __init__(self, *, has_sh: bool = True, entrypoint: bytes = b"") -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.has_sh = has_sh
        self.entrypoint = entrypoint
        self.attrs = {"Config": {"Entrypoint": ["/entry"] if entrypoint else None, "Cmd": None}}

    def exec_run(self, argv: list[str], **kwargs: Any) -> tuple[int, Any]:
        self.calls.append((argv, kwargs))
        if argv == ["/bin/sh", "-c", "true"]:
            return (0 if self.has_sh else 126), b""
        if argv[-2:] == ["-c", "true"] and not kwargs:  # another shell looked for: the entrypoint's interpreter runs
            return (0 if self.entrypoint and argv[0] in self.entrypoint.decode() else 126), b""
        if kwargs.get("demux"):
            command = argv[-1]
            if command.startswith("exit "):
                return int(command.split()[1]), (None, b"failed\n")
            return 0, (("out: " + command + "\n").encode(), None)
        raise AssertionError(f"unexpected exec {argv}")

    def get_archive(self, path: str) -> tuple[list[bytes], dict[str, Any]]:
        if path == "/nix/store":
            raise FileNotFoundError(path)  # the SDK's NotFound: no store in this image
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(path.rsplit("/", 1)[-1])
            info.size = len(self.entrypoint)
            archive.addfile(info, io.BytesIO(self.entrypoint))
        return [buffer.getvalue()], {}


def fake_container(sdk: FakeSdkContainer | None = None) -> Any:
    return SimpleNamespace(id="0123abcd", name="pf-test-web-1", ref="web-server:1.0",
                           sdk=sdk or FakeSdkContainer(),
                           docker=SimpleNamespace(url="unix:///run/fake.sock", check_tunnel=lambda: None))


class GoneSdkContainer(FakeSdkContainer):
    """A daemon that stopped answering: the SDK's calls raise what requests raises then."""

    def exec_run(self, *args: Any, **kwargs: Any) -> Any:
        import requests

        refused = ConnectionRefusedError(111, "Connection refused")
        raise requests.exceptions.ConnectionError(("Connection aborted.", refused))


def test_a_daemon_that_stopped_answering_is_one_docker_error() -> None:
    host = testinfra_host.Host(exec_backend(fake_container(GoneSdkContainer())))
    with pytest.raises(DockerError) as gone:
        host.run("true")
    assert gone.value.message == ("container pf-test-web-1: 'true': the Docker daemon at unix:///run/fake.sock "
                                  "stopped answering (Connection refused)")


def test_commands_run_through_exec_with_testinfra_quoting() -> None:
    sdk = FakeSdkContainer()
    host = testinfra_host.Host(exec_backend(fake_container(sdk)))
    assert host.backend.get_pytest_id() == "docker://0123abcd"
    assert host.check_output("echo %s", "a b; rm -rf /") == "out: echo 'a b; rm -rf /'"
    failed = host.run("exit 3")
    assert (failed.rc, failed.stdout, failed.stderr) == (3, "", "failed\n")
    assert failed.command == b"exit 3"
    runs = [call for call in sdk.calls if call[1]]
    assert runs[0] == (["/bin/sh", "-c", "echo 'a b; rm -rf /'"], {"demux": True, "user": ""})
    assert [argv for argv, kwargs in sdk.calls if not kwargs] == [["/bin/sh", "-c", "true"]]  # the shell, once


def test_encoding_is_set_without_running_python_in_the_container() -> None:
    sdk = FakeSdkContainer()
    backend = exec_backend(fake_container(sdk))
    assert backend.encoding == "utf-8"
    assert backend.decode("é".encode()) == "é"
    assert sdk.calls == []  # testinfra's get_encoding would have run python in the container


def test_a_container_without_sh_uses_its_entrypoint_interpreter() -> None:
    sdk = FakeSdkContainer(has_sh=False, entrypoint=b"#!/nix/store/abc-busybox/bin/ash -e\nexec httpd\n")
    assert container_shell(fake_container(sdk)) == ["/nix/store/abc-busybox/bin/ash", "-e"]
    host = testinfra_host.Host(exec_backend(fake_container(sdk)))
    host.run("true")
    assert sdk.calls[-1][0] == ["/nix/store/abc-busybox/bin/ash", "-e", "-c", "true"]


def test_a_container_without_any_shell_is_named() -> None:
    with pytest.raises(DockerError, match=r"container pf-test-web-1 \(web-server:1.0\) has no shell"):
        container_shell(fake_container(FakeSdkContainer(has_sh=False)))
