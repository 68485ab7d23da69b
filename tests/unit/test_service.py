"""The service module's pure parts: the marker, the targets, env placeholders, finding a shell."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_flake.config import TARGETS, parse_targets
from pytest_flake.errors import UsageError
from pytest_flake.service import (
    ServiceSpec,
    _ChunkReader,
    _systemd_quote,
    container_shell,
    target_markers,
)


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


@dataclass
class Exec:
    exit_code: int


class FakeContainer:
    """A docker SDK container whose files are ``files`` (what exists and can run)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.ran: list[list[str]] = []

    def exec_run(self, argv: list[str]) -> Exec:
        self.ran.append(argv)
        return Exec(0 if argv[0] in self.files else 126)

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


def test_container_shell_prefers_bin_sh_then_a_shell_in_the_store() -> None:
    assert container_shell(FakeContainer(["/bin/sh"])) == ["/bin/sh"]
    busybox = "/nix/store/abc-busybox-static/bin/busybox"
    assert container_shell(FakeContainer([busybox])) == [busybox, "sh"]
    bash = "/nix/store/def-bash-5.2/bin/bash"
    assert container_shell(FakeContainer([busybox, bash])) == [bash]
    assert container_shell(FakeContainer(["/nix/store/xyz-web/bin/web-server"])) is None


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
    from pytest_flake.service import PortableTarget

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
