"""The service module's pure parts: the marker, the targets and their registry, env placeholders, finding a shell."""

from __future__ import annotations

import inspect
import io
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_flake import config, fixtures
from pytest_flake.config import TARGETS, parse_targets
from pytest_flake.docker.exec_backend import _ChunkReader, container_shell
from pytest_flake.errors import DockerError, UsageError
from pytest_flake.service import (
    PORTABLE_HOSTS,
    REGISTRY,
    DockerService,
    LocalService,
    PortableTarget,
    ServiceSpec,
    ServiceTarget,
    Supplies,
    _systemd_quote,
    portable_host,
    target_markers,
)
from tests.unit.test_guest_protocol import compliance_problems


def test_parse_targets_keeps_order_and_refuses_unknown_names() -> None:
    assert parse_targets(None) == TARGETS
    assert parse_targets("docker, local") == ("docker", "local")
    assert parse_targets("portable,portable") == ("portable",)
    with pytest.raises(UsageError, match=r"unknown target 'podman'.*valid targets: local, docker, portable"):
        parse_targets("local,podman")
    with pytest.raises(UsageError, match="empty"):
        parse_targets(" , ")


def test_marker_arguments_are_validated_with_the_fix() -> None:
    spec = ServiceSpec.from_marker((3031,), {"docker": "image", "env": {"LISTEN": "127.0.0.1:{port}"}})
    assert (spec.port, spec.local, spec.docker, spec.portable) == (3031, "default", "image", "portable")
    assert spec.attr("docker") == "image"
    assert spec.env_for(4000) == {"LISTEN": "127.0.0.1:4000"}
    braces = ServiceSpec.from_marker((), {"port": 80, "env": {"JSON": '{"a": {port}}'}})
    assert braces.env_for(81) == {"JSON": '{"a": 81}'}
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        ((), {}, "missing"), (("80",), {}, "not a TCP port"), ((True,), {}, "not a TCP port"),
        ((70000,), {}, "not a TCP port"), ((80,), {"local": ""}, "local=''"), ((80,), {"env": ["A=1"]}, "env="),
        ((80,), {"dockr": "x"}, "unexpected keyword"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(UsageError, match=message) as info:
            ServiceSpec.from_marker(args, kwargs, where="t.py::test")
        assert str(info.value).startswith("t.py::test: ")


def test_target_markers() -> None:
    assert target_markers("local") == ("nix",)
    assert target_markers("docker") == ("docker",)
    assert set(target_markers("portable")) == {"vm", "portable"}
    assert set(target_markers("portable", "nspawn")) == {"nspawn", "portable"}


def test_systemd_quote() -> None:
    assert _systemd_quote('A=say "hi" 100%') == '"A=say \\"hi\\" 100%%"'


class FakeSdk:
    """A docker SDK container whose files are ``files`` (what exists and can run)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.attrs: dict[str, Any] = {"Config": {}}

    def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
        return (0 if argv[0] in self.files else 126), b""

    def get_archive(self, path: str) -> tuple[Any, dict[str, Any]]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name in self.files:
                if name.startswith("/nix/store/"):
                    info = tarfile.TarInfo(name.removeprefix("/nix/"))
                    info.size = 3
                    archive.addfile(info, io.BytesIO(b"bin"))
        data = buffer.getvalue()
        return (data[i:i + 700] for i in range(0, len(data), 700)), {}


def shell_of(files: list[str]) -> list[str]:
    return container_shell(SimpleNamespace(name="pf-web-1", ref="web:1", sdk=FakeSdk(files)))  # type: ignore[arg-type]


def test_container_shell_prefers_bin_sh_then_a_shell_in_the_store() -> None:
    assert shell_of(["/bin/sh"]) == ["/bin/sh"]
    busybox = "/nix/store/abc-busybox-static/bin/busybox"
    assert shell_of([busybox]) == [busybox, "sh"]
    bash = "/nix/store/def-bash-5.2/bin/bash"
    assert shell_of([busybox, bash]) == [bash]
    with pytest.raises(DockerError, match=r"container pf-web-1 \(web:1\) has no shell"):
        shell_of(["/nix/store/xyz-web/bin/web-server"])


def test_chunk_reader_reads_across_chunks() -> None:
    reader = _ChunkReader(iter([b"ab", b"cde", b"f"]))
    assert reader.read(4) == b"abcd"
    assert reader.read(-1) == b"ef"
    assert reader.read(3) == b""


class RecordingPrefetch:
    """A stand-in for a background build: records when it starts, is waited for or cancelled."""

    def __init__(self, events: list[str], attr: str, fails: bool = False) -> None:
        self.events, self.fails = events, fails
        events.append(f"build {attr} started")

    def result(self) -> object:
        self.events.append("build waited for")
        if self.fails:
            raise UsageError("the build failed")
        return object()

    def cancel(self) -> None:
        self.events.append("build cancelled")


def _portable_target(events: list[str], guest_of: Any, fails: bool = False) -> Any:
    prefetch: Any = lambda attr: RecordingPrefetch(events, attr, fails)  # noqa: E731 (stands in for Flake.prefetch)
    return PortableTarget(ServiceSpec.from_marker((3031,), {}), guest_of, resolve=Path, prefetch=prefetch)


def test_portable_target_builds_its_image_while_the_guest_boots() -> None:
    events: list[str] = []

    def guest_of() -> Any:
        events.append("guest started")
        raise RuntimeError("stop here: the order is what is tested")

    with pytest.raises(RuntimeError, match="stop here"):
        _portable_target(events, guest_of).start()
    assert events == ["build portable started", "guest started", "build cancelled"]

    def guest_up() -> Any:
        events.append("guest started")
        return object()

    events.clear()
    with pytest.raises(UsageError, match="the build failed"):
        _portable_target(events, guest_up, fails=True).start()
    assert events == ["build portable started", "guest started", "build waited for", "build cancelled"]


# --- the registry and the protocol ---------------------------------------------------------------------------
def test_the_registry_holds_one_target_per_name_in_order() -> None:
    assert tuple(REGISTRY) == TARGETS
    for name, cls in REGISTRY.items():
        assert cls.target == name
        assert cls.evidence_title


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=list(REGISTRY))
def test_every_target_complies_with_the_protocol(cls: type) -> None:
    assert compliance_problems(cls, ServiceTarget) == []
    for name in ("create", "markers"):  # the classmethods, which the checker leaves to this test
        member = inspect.getattr_static(cls, name, None)
        assert isinstance(member, classmethod), name
        wanted = list(inspect.signature(getattr(ServiceTarget, name)).parameters)
        assert list(inspect.signature(getattr(cls, name)).parameters) == wanted, name


def test_the_fixture_supplies_and_the_fake_comply() -> None:
    assert compliance_problems(fixtures._Supplies, Supplies) == []
    assert compliance_problems(FakeSupplies, Supplies) == []


def test_target_markers_name_where_the_portable_target_runs() -> None:
    assert target_markers("local", "nspawn") == ("nix",)
    assert target_markers("portable", "vm") == ("vm", "portable")
    with pytest.raises(UsageError, match="--flake-portable-host=qemu is not available.*valid hosts: vm, nspawn"):
        target_markers("portable", "qemu")


def test_every_portable_host_has_a_guest_and_an_option_value() -> None:
    assert set(PORTABLE_HOSTS) == set(config.PORTABLE_HOSTS) == set(fixtures.PORTABLE_GUESTS)
    assert portable_host(None) is PORTABLE_HOSTS["vm"]
    assert not hasattr(fixtures, "PORTABLE_HOSTS")  # no table patched at import any more


class FakeSupplies:
    """What a target may ask for, each ask recorded; the real things are never made."""

    def __init__(self, portable_host: str = "vm") -> None:
        self.timeout = 7.0
        self.portable_host = portable_host
        self.asked: list[str] = []
        self.flake_object = SimpleNamespace(build=lambda attr: SimpleNamespace(out=Path(attr)),
                                            prefetch=lambda attr: None)

    def flake(self) -> Any:
        self.asked.append("flake")
        return self.flake_object

    def log_dir(self) -> Path | None:
        self.asked.append("log_dir")
        return Path("/state")

    def docker(self) -> Any:
        self.asked.append("docker")
        return SimpleNamespace()

    def docker_image(self, attr: str) -> Any:
        self.asked.append(f"docker_image {attr}")
        return SimpleNamespace()

    def guest(self) -> Any:
        self.asked.append("guest")
        return SimpleNamespace(name="guest-1")


def test_each_target_asks_only_for_what_it_uses() -> None:
    spec = ServiceSpec.from_marker((3031,), {"docker": "image"})
    made = {}
    for name, cls in REGISTRY.items():
        supplies = FakeSupplies()
        made[name] = cls.create(spec, supplies)
        assert made[name].attr == spec.attr(name)
        made[name].asked = supplies.asked  # type: ignore[attr-defined]
    local, docker, portable = made["local"], made["docker"], made["portable"]
    assert isinstance(local, LocalService) and local.asked == ["flake", "log_dir"]  # type: ignore[attr-defined]
    assert (local.timeout, local.log_dir) == (7.0, Path("/state"))
    assert isinstance(docker, DockerService) and docker.asked == ["docker"]  # type: ignore[attr-defined]
    assert isinstance(portable, PortableTarget) and portable.asked == ["flake"]  # type: ignore[attr-defined]
    assert portable.host is PORTABLE_HOSTS["vm"] and portable.timeout == 7.0
    assert portable.resolve("portable-next") == Path("portable-next")  # through flake.build


def test_the_portable_host_is_a_parameter_of_the_target() -> None:
    supplies = FakeSupplies("nspawn")
    target = PortableTarget.create(ServiceSpec.from_marker((3031,), {}), supplies)
    assert target.host is PORTABLE_HOSTS["nspawn"]
    assert target.guest_of().name == "guest-1" and supplies.asked == ["flake", "guest"]
    with pytest.raises(UsageError, match="--flake-portable-host=qemu"):
        PortableTarget.create(ServiceSpec.from_marker((3031,), {}), FakeSupplies("qemu"))


class RecordingGuest:
    name = "guest-1"

    def __init__(self) -> None:
        self.ran: list[str] = []

    def run(self, cmd: str) -> Any:
        self.ran.append(cmd)
        return SimpleNamespace(rc=0, stdout="", stderr="")


def _attached(host: str) -> tuple[PortableTarget, list[str], RecordingGuest]:
    guest = RecordingGuest()
    guest_of: Any = lambda: guest  # noqa: E731 (stands in for the fixture's guest factory)
    target = PortableTarget(ServiceSpec.from_marker((3031,), {}), guest_of, resolve=Path, host=PORTABLE_HOSTS[host])
    detached: list[str] = []
    target.guest = guest  # type: ignore[assignment]
    target.portable = SimpleNamespace(close=lambda: detached.append("detached"))  # type: ignore[assignment]
    target._dropins.append("/run/systemd/system/web-server.service.d")
    return target, detached, guest


def test_stopping_the_portable_target_detaches_only_where_the_guest_stays() -> None:
    target, detached, guest = _attached("nspawn")
    target.stop()
    assert detached == ["detached"]
    assert guest.ran == ["rm -rf /run/systemd/system/web-server.service.d"]

    target, detached, guest = _attached("vm")  # the VM is destroyed right after, the attachment with it
    target.stop()
    assert detached == [] and guest.ran == []

    target, detached, guest = _attached("nspawn")
    target.keep()  # --flake-keep: attached, with its drop-ins, in the kept guest
    target.stop()
    assert detached == [] and guest.ran == []
