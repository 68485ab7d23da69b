"""Portable images on this machine (real squashfs files) and portablectl driven through a fake guest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_flake.errors import CheckFailed, PortableError
from pytest_flake.portable import PortableImage, PortableService, describe_file, parse_os_release, parse_unit

needs_mksquashfs = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="mksquashfs (squashfs-tools)")

UNIT = """\
[Unit]
Description=web-server
# a comment
[Service]
Environment=LISTEN=3031 "GREETING=hello world"
ExecStart=-/nix/store/abc-web-server-1.0/bin/web-server \\
    --verbose
ExecStartPre=/bin/true
ExecStartPre=
ExecStartPre=/bin/false
"""


def make_tree(root: Path, *, os_release: bool = True, units: tuple[str, ...] = ("web-server.service",)) -> Path:
    for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "usr/lib/systemd/system", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if os_release:
        (root / "usr/lib/os-release").write_text('ID=web-server\nNAME="Web Server"\nVERSION_ID=1.0\n')
    for unit in units:
        (root / "usr/lib/systemd/system" / unit).write_text("[Service]\nExecStart=/bin/true\n")
    return root


def squash(tree: Path, image: Path) -> Path:
    subprocess.run(["mksquashfs", str(tree), str(image), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    return image


def test_parse_unit_sections_continuations_and_resets():
    unit = parse_unit(UNIT)
    assert unit.get("Unit", "Description") == "web-server"
    assert unit.exec_start == ["/nix/store/abc-web-server-1.0/bin/web-server", "--verbose"]
    assert unit.environment == {"LISTEN": "3031", "GREETING": "hello world"}
    assert unit.getall("Service", "ExecStartPre") == ["/bin/false"]  # the empty assignment reset the list


def test_parse_unit_rejects_what_is_not_a_unit():
    with pytest.raises(ValueError, match="not a unit file line"):
        parse_unit("just some text\n")


def test_parse_os_release_strips_quotes():
    assert parse_os_release('ID=arch\nPRETTY_NAME="Arch Linux"\n# c\n') == {"ID": "arch", "PRETTY_NAME": "Arch Linux"}


@needs_mksquashfs
def test_squashfs_image_is_inspected(tmp_path):
    image = squash(make_tree(tmp_path / "root", units=("web-server.service", "web-server-db.socket", "other.service")),
                   tmp_path / "web-server_1.0.raw")
    found = PortableImage.open(image)
    assert (found.kind, found.name, found.prefix, found.version) == ("squashfs", "web-server_1.0", "web-server", "1.0")
    assert found.units == ["web-server-db.socket", "web-server.service"]
    assert found.os_release["ID"] == "web-server"


@needs_mksquashfs
def test_build_output_directory_with_one_raw_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    squash(make_tree(tmp_path / "root"), out / "web-server_2.raw")
    assert PortableImage.open(out).path == out / "web-server_2.raw"


@needs_mksquashfs
def test_image_without_os_release_is_refused(tmp_path):
    image = squash(make_tree(tmp_path / "root", os_release=False), tmp_path / "web-server_1.raw")
    with pytest.raises(PortableError, match="has no os-release"):
        PortableImage.open(image)


@needs_mksquashfs
def test_image_without_a_matching_unit_lists_its_units(tmp_path):
    image = squash(make_tree(tmp_path / "root", units=("db.service", "web.socket")), tmp_path / "web-server_1.raw")
    with pytest.raises(PortableError, match=r"no unit file starts with the image's prefix 'web-server' "
                                            r"\(units in the image: db.service, web.socket\)"):
        PortableImage.open(image)


def test_directory_image(tmp_path):
    tree = make_tree(tmp_path / "web-server_3")
    found = PortableImage.open(tree)
    assert (found.kind, found.units) == ("directory", ["web-server.service"])


@pytest.mark.parametrize("content, what", [
    (b"\x1f\x8b\x08\x00rest", "a gzip file"),
    (b"[Unit]\nDescription=x\n", "a systemd unit file"),
    (b"\x7fELF\x02\x01", "an ELF executable"),
    (b"#!/bin/sh\necho hi\n", "a script (#!/bin/sh)"),
])
def test_what_is_not_an_image_is_named(tmp_path, content, what):
    path = tmp_path / "thing.raw"
    path.write_bytes(content)
    assert describe_file(path).startswith(what)
    with pytest.raises(PortableError, match="is not a portable service image: it is " + what.split(" (")[0]):
        PortableImage.open(path)


def test_directory_that_is_not_an_image(tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(PortableError, match=r"a directory without usr/lib/os-release .* \(it has: bin\)"):
        PortableImage.open(tmp_path)


class FakeGuest:
    """Answers portablectl and systemctl the way a guest does; records every command."""

    name = "vm://fake"

    def __init__(self, *, portablectl: bool = True, unit_state: str = "active") -> None:
        self.commands: list[str] = []
        self.copied: list[tuple[Path, str]] = []
        self.portablectl = portablectl
        self.unit_state = unit_state
        self.attached: str | None = None
        self.stamp = 100
        self.comm = "busybox"
        self.polls = 0
        self.exec_fails_after: int | None = None

    def run(self, command: str) -> SimpleNamespace:
        self.commands.append(command)
        out, rc = "", 0
        if command == "sh -c 'command -v portablectl'":
            rc = 0 if self.portablectl else 1
        elif command == "sh -c 'command -v systemd-dissect'":
            rc = 1
        elif command.startswith("portablectl attach") or command.startswith("portablectl reattach"):
            self.attached = command.rsplit("/", 1)[1][:-4]
            self.stamp += 1
        elif command.startswith("portablectl detach"):
            self.attached = None
        elif command.startswith("portablectl is-attached"):
            name = command.split()[-1]
            out = "running-runtime" if name == self.attached else "detached"
            rc = 0 if out != "detached" else 1
        elif command.startswith("systemctl is-active"):
            out = self.unit_state if self.attached else "inactive"
        elif command.startswith("sh -c 'echo \"Attached="):
            self.polls += 1
            if self.exec_fails_after is not None and self.polls > self.exec_fails_after:
                self.unit_state, self.comm = "failed", ""
            name, *units = command.split("' sh ", 1)[1].split()
            state = self.unit_state if self.attached else "inactive"
            # as portablectl says it: an image whose unit failed is attached, not running
            attached = "detached" if name != self.attached else (
                "attached-runtime" if state == "failed" else "running-runtime")
            out = f"Attached={attached}\n"
            for unit in units:
                out += (f"Unit={unit}\nActiveState={state}\nMainPID=42\nInvocationID=run{self.stamp}\n"
                        f"ExecMainStartTimestampMonotonic={self.stamp}\nComm={self.comm}\n")
        elif command.startswith(("systemctl status", "journalctl")):
            out = "web-server.service - web-server\n   Active: failed (Result: exit-code)"
        return SimpleNamespace(rc=rc, stdout=out + "\n", stderr="")

    def copy_to(self, local: Path, remote: str) -> None:
        self.copied.append((Path(local), remote))


def fake_image(tmp_path: Path, name: str, unit: str = "web-server.service") -> PortableImage:
    """An inspected image as PortableImage.open returns it (the file need not exist: the guest is fake)."""
    return PortableImage(tmp_path / f"{name}.raw", "squashfs", {"ID": "x"}, (f"usr/lib/systemd/system/{unit}",))


def test_attach_reattach_detach_commands(tmp_path):
    v1 = fake_image(tmp_path, "web-server_1.0")
    v2 = fake_image(tmp_path, "web-server_1.1")
    guest = FakeGuest()
    with PortableService(guest, v1, profile="trusted", timeout=5, settle=0.1) as service:
        assert service.is_active()
        assert "portablectl attach --now --profile=trusted --runtime /root/web-server_1.0.raw" in guest.commands
        assert guest.copied == [(v1.path, "/root/web-server_1.0.raw")]
        service.reattach(v2)
        assert service.name == "web-server_1.1"
        assert "portablectl reattach --now --profile=trusted --runtime /root/web-server_1.1.raw" in guest.commands
        assert "rm -rf /root/web-server_1.0.raw" in guest.commands
    assert "portablectl detach --now --runtime /root/web-server_1.1.raw" in guest.commands
    assert guest.commands[-1] == "rm -rf /root/web-server_1.1.raw"
    assert guest.attached is None


def test_reattach_to_another_prefix_is_refused(tmp_path):
    v1 = fake_image(tmp_path, "web-server_1")
    other = fake_image(tmp_path, "db_1", "db.service")
    with PortableService(FakeGuest(), v1, timeout=5, settle=0.1) as service:
        with pytest.raises(PortableError, match="the prefixes differ"):
            service.reattach(other)


def test_guest_without_portablectl_names_the_package(tmp_path):
    v1 = fake_image(tmp_path, "web-server_1")
    with pytest.raises(PortableError, match="the guest has no portablectl.*systemd-container"):
        PortableService(FakeGuest(portablectl=False), v1).__enter__()


def test_unit_that_fails_to_start_shows_status_and_journal(tmp_path):
    v1 = fake_image(tmp_path, "web-server_1")
    guest = FakeGuest(unit_state="failed")
    expected = r"(?s)web-server.service of portable service web-server_1 failed.*Active: failed"
    with pytest.raises(CheckFailed, match=expected):
        PortableService(guest, v1, timeout=5).__enter__()
    assert guest.attached is None  # a failed start still detaches
    assert guest.commands[-1] == "rm -rf /root/web-server_1.raw"


def test_active_is_not_running_until_the_program_was_executed(tmp_path):
    """A simple service is active from the fork on; its exec may still fail (status 203/EXEC)."""
    guest = FakeGuest()
    guest.comm = "(-program)"  # systemd still sets up the process: nothing was executed yet
    guest.exec_fails_after = 3
    with pytest.raises(CheckFailed, match="web-server.service of portable service web-server_1 failed to start"):
        PortableService(guest, fake_image(tmp_path, "web-server_1"), timeout=10, settle=0.1).__enter__()
    assert guest.polls > 3


def test_running_only_once_the_same_invocation_stayed_up(tmp_path):
    guest = FakeGuest()
    with PortableService(guest, fake_image(tmp_path, "web-server_1"), timeout=10, settle=0.2):
        state_polls = [c for c in guest.commands if c.startswith("sh -c 'echo \"Attached=")]
        assert len(state_polls) >= 2  # seen once, then again after the settle time
