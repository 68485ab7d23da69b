"""Portable images on this machine (real squashfs files) and portablectl driven through a fake guest."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_flake.errors import CheckFailed, MissingToolError, PortableError
from pytest_flake.portable import (
    IMAGE_HINT,
    PortableImage,
    PortableService,
    describe_file,
    image_name,
    parse_environment,
    parse_os_release,
    parse_unit,
)
from pytest_flake.portable import service as portable_service

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


def test_environment_is_parsed_one_way_for_a_unit_file_and_a_running_unit(tmp_path):
    """``Environment=`` of a unit file and ``systemctl show -P Environment`` go through parse_environment."""
    assert parse_environment('LISTEN=3031 "GREETING=hello world" EMPTY=') == {
        "LISTEN": "3031", "GREETING": "hello world", "EMPTY": ""}
    assert parse_unit("[Service]\nEnvironment=A=1 B=2\nEnvironment=\"A=3 4\"\n").environment == {"A": "3 4", "B": "2"}

    class ShowingGuest(FakeGuest):
        def run(self, command: str) -> SimpleNamespace:
            if command.startswith("systemctl show -P Environment"):
                self.commands.append(command)
                return SimpleNamespace(rc=0, stdout='PORTABLE=web-server_1.0.raw "GREETING=hello world"\n', stderr="")
            return super().run(command)

    guest = ShowingGuest()
    service = PortableService(guest, fake_image(tmp_path, "web-server_1.0"), timeout=5)
    assert service.environment() == {"PORTABLE": "web-server_1.0.raw", "GREETING": "hello world"}
    assert guest.commands[-1] == "systemctl show -P Environment web-server.service"


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
    with pytest.raises(PortableError, match=r"a directory without usr/lib/os-release .* \(it has: bin/\)"):
        PortableImage.open(tmp_path)


class FakeGuest:
    """Answers portablectl and systemctl the way a guest does; records every command."""

    name = "vm://fake"

    def __init__(self, *, portablectl: bool = True, unit_state: str = "active", loop_devices: bool = True) -> None:
        self.loop_devices = loop_devices
        self.commands: list[str] = []
        self.copied: list[tuple[Path, str]] = []
        self.portablectl = portablectl
        self.unit_state = unit_state
        self.attached: str | None = None
        self.stamp = 100
        self.comm = "busybox"
        self.polls = 0
        self.exec_fails_after: int | None = None
        self.attach_fails: int | None = None  # the exit code of a failing portablectl attach/reattach
        self.dissect_fails = False

    def run(self, cmd: str) -> SimpleNamespace:
        command = cmd
        self.commands.append(command)
        argv = shlex.split(command)
        if argv[:2] == ["sh", "-c"] and argv[2] == portable_service._LIFECYCLE_SCRIPT:
            return self._lifecycle(*argv[4:])
        if argv[:2] == ["sh", "-c"] and argv[2] == portable_service._DETACH_SCRIPT:
            runtime, image, *copies = argv[4:]
            self.run(f"portablectl detach --now {'--runtime ' if runtime else ''}{image}")
            for copy in copies:
                self.commands.append(f"rm -rf {copy}")
            return SimpleNamespace(rc=0, stdout="", stderr="")
        out, rc = "", 0
        if command == "sh -c 'command -v portablectl'":
            rc = 0 if self.portablectl else 1
        elif command == "sh -c 'command -v systemd-dissect'":
            rc = 1
        elif command.startswith("portablectl attach") or command.startswith("portablectl reattach"):
            self.attached = command.rsplit("/", 1)[1].removesuffix(".raw")
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
            name, *units = command.split("' sh ", 1)[1].split()
            out = self._states(name, units)
        elif command.startswith(("systemctl status", "journalctl")):
            out = "web-server.service - web-server\n   Active: failed (Result: exit-code)"
        return SimpleNamespace(rc=rc, stdout=out + "\n", stderr="")

    def _states(self, name: str, units: list[str]) -> str:
        """What _STATE_SCRIPT prints; each look counts as a poll."""
        self.polls += 1
        if self.exec_fails_after is not None and self.polls > self.exec_fails_after:
            self.unit_state, self.comm = "failed", ""
        state = self.unit_state if self.attached else "inactive"
        # as portablectl says it: an image whose unit failed is attached, not running
        attached = "detached" if name != self.attached else (
            "attached-runtime" if state == "failed" else "running-runtime")
        out = f"Attached={attached}\n"
        for unit in units:
            out += (f"Unit={unit}\nActiveState={state}\nMainPID=42\nInvocationID=run{self.stamp}\n"
                    f"ExecMainStartTimestampMonotonic={self.stamp}\nComm={self.comm}\n")
        return out

    def _lifecycle(self, verb: str, image: str, name: str, old: str, profile: str, runtime: str, settle: str,
                   poll: str, limit: str, *units: str) -> SimpleNamespace:
        """_LIFECYCLE_SCRIPT: records the commands it stands for, and prints its steps and snapshots."""
        out = "Step=portablectl\n"
        if not self.portablectl:
            return SimpleNamespace(rc=127, stdout=out, stderr="")
        if verb == "reattach":
            out += "Step=before\n" + self._states(name, list(units))
        out += f"Step={verb}\n"
        self.run(f"portablectl {verb} --now --profile={profile}{' --runtime' if runtime else ''} {image}")
        if self.attach_fails is not None:  # then systemd-dissect says whether the image is the reason
            self.attached = None
            out += "Step=dissect\n"
            if self.dissect_fails:
                return SimpleNamespace(rc=1, stdout=out, stderr="Failed to dissect image: No such device\n")
            return SimpleNamespace(rc=self.attach_fails, stdout=out + f"Step={verb}\n", stderr="Failed to attach\n")
        if old:
            self.commands.append(f"rm -rf {old}")
        running = False
        for _ in range(int(limit) * 10):  # the guest's own wait until the programs run
            self.polls += 1
            if self.exec_fails_after is not None and self.polls > self.exec_fails_after:
                self.unit_state, self.comm = "failed", ""
            if self.unit_state == "failed":
                break
            if not self.comm.startswith("("):
                running = True
                break
        out += "Step=state\n" + self._states(name, list(units))
        if running:
            out += "Step=settled\n" + self._states(name, list(units))
        return SimpleNamespace(rc=0, stdout=out, stderr="")

    def copy_to(self, local: Path | str, remote: str) -> None:
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


def test_guest_without_loop_devices_refuses_a_raw_in_one_line(tmp_path):
    guest = FakeGuest(loop_devices=False)
    with pytest.raises(PortableError) as raised:
        PortableService(guest, fake_image(tmp_path, "web-server_1.0"), timeout=5).__enter__()
    assert str(raised.value) == (
        "vm://fake has no loop devices, so web-server_1.0.raw cannot be attached there (attach a directory image "
        "(the image's tree), or run the guest as root, where the host's /dev/loop-control and /dev/loop* are "
        "bound in)")
    assert guest.copied == [] and not any(c.startswith("portablectl attach") for c in guest.commands)


def test_guest_without_loop_devices_attaches_a_directory_image_as_a_tree(tmp_path):
    tree = make_nixpkgs_tree(tmp_path / "web-server_1.0", usrlib=True)
    guest = FakeGuest(loop_devices=False)
    with PortableService(guest, tree, timeout=5, settle=0.1) as service:
        assert guest.copied == [(tree, "/root/web-server_1.0")]
        assert "portablectl attach --now --profile=default --runtime /root/web-server_1.0" in guest.commands
        assert service.portable == "web-server_1.0"
    assert guest.commands[-1] == "rm -rf /root/web-server_1.0"


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
        assert guest.polls >= 2  # seen once, then again after the settle time (in the attach's own command)


def test_attach_and_reattach_are_one_guest_command_each(tmp_path):
    """Each guest command is an SSH round trip (about 0.5 s in an emulated guest): a step is the copy plus one."""
    guest = FakeGuest()
    with PortableService(guest, fake_image(tmp_path, "web-server_1.0"), timeout=5, settle=0.05) as service:
        assert [c.split()[:2] for c in guest.commands] == [["sh", "-c"], ["portablectl", "attach"]]
        guest.commands.clear()
        service.reattach(fake_image(tmp_path, "web-server_1.1"))
        assert [c.split()[:2] for c in guest.commands] == [["sh", "-c"], ["portablectl", "reattach"], ["rm", "-rf"]]
        assert guest.commands[-1] == "rm -rf /root/web-server_1.0.raw"  # the old image, once the reattach worked
        guest.commands.clear()
    assert [c.split()[:2] for c in guest.commands] == [["sh", "-c"], ["portablectl", "detach"], ["rm", "-rf"]]


@pytest.mark.parametrize("dissect_fails", [False, True], ids=["attach-fails", "image-unreadable"])
def test_a_failed_attach_names_the_command_or_the_image(tmp_path, dissect_fails):
    """systemd-dissect runs only after a failed attach, to say whether the image is why."""
    guest = FakeGuest()
    guest.attach_fails, guest.dissect_fails = 1, dissect_fails
    with pytest.raises(PortableError) as raised:
        PortableService(guest, fake_image(tmp_path, "web-server_1"), timeout=5).__enter__()
    if dissect_fails:
        assert str(raised.value).startswith("systemd-dissect cannot read /root/web-server_1.raw (exit code 1)")
        assert "No such device" in (raised.value.details or "")
    else:
        assert str(raised.value).startswith("attach web-server_1: 'portablectl attach --now --profile=default "
                                            "--runtime /root/web-server_1.raw' failed with exit code 1")
        assert "Failed to attach" in (raised.value.details or "")
    assert guest.commands[-1] == "rm -rf /root/web-server_1.raw"  # nothing left in the guest


def test_a_unit_still_set_up_after_the_guest_wait_is_polled_from_here(tmp_path):
    """When the step's own command stops waiting before the program runs, the host polls the states."""
    guest = FakeGuest()
    guest.comm = "(web-server)"
    service = PortableService(guest, fake_image(tmp_path, "web-server_1"), timeout=10, settle=0.05)
    service._copy(service.image)
    snapshots = service._lifecycle("attach", service.remote_path, service.name)
    assert set(snapshots) == {"state"}  # the program never ran within the guest's wait: no "settled" look
    guest.comm = "web-server"
    service._wait_running(service.name, seen=snapshots)
    assert sum(c.startswith("sh -c 'echo \"Attached=") for c in guest.commands) >= 2


# --- every shape a flake's portable output has ---------------------------------------------------------------
HASH = "0123456789abcdfghijklmnpqrsvwxyz"  # 32 characters of Nix's base32


@pytest.mark.parametrize(("name", "expected"), [
    (f"{HASH}-web-server_20220227.raw", "web-server_20220227"),
    ("web-server_1.0.raw", "web-server_1.0"),
    (f"{HASH}-web-server_1.0", "web-server_1.0"),
    ("web-server_1.0", "web-server_1.0"),
    ("e" * 32 + "-x_1.raw", "e" * 32 + "-x_1"),  # 'e' is not in Nix's base32: not a store hash
])
def test_image_name_strips_store_hash_and_raw(name, expected):
    assert image_name(Path("/nix/store") / name) == expected


@needs_mksquashfs
def test_bare_raw_store_output(tmp_path):
    """The seed's portableService (2022): the output is the .raw file, named <hash>-NAME_VERSION.raw."""
    image = squash(make_tree(tmp_path / "root"), tmp_path / f"{HASH}-web-server_20220227.raw")
    found = PortableImage.open(image)
    assert (found.name, found.prefix, found.version) == ("web-server_20220227", "web-server", "20220227")
    assert found.units == ["web-server.service"]  # was refused: "no unit file starts with '<hash>-web-server'"
    guest = FakeGuest()
    with PortableService(guest, found, timeout=5, settle=0.1) as service:
        assert guest.copied == [(image, "/root/web-server_20220227.raw")]
        assert (service.remote_path, service.portable) == ("/root/web-server_20220227.raw", "web-server_20220227.raw")
    assert "portablectl detach --now --runtime /root/web-server_20220227.raw" in guest.commands


@needs_mksquashfs
def test_store_output_directory_holding_the_raw_file(tmp_path):
    """portableService today: $out/NAME_VERSION.raw, $out named <hash>-NAME-img-VERSION."""
    out = tmp_path / f"{HASH}-web-server-img-1.0"
    out.mkdir()
    squash(make_tree(tmp_path / "root"), out / "web-server_1.0.raw")
    found = PortableImage.open(out)
    assert (found.path, found.name, found.prefix) == (out / "web-server_1.0.raw", "web-server_1.0", "web-server")


def make_nixpkgs_tree(root: Path, *, usrlib: bool) -> Path:
    """The layout of nixpkgs' rootFsScaffold (etc/os-release, etc/systemd/system), or all of it under usr/lib."""
    base = root / ("usr/lib" if usrlib else "etc")
    (base / "systemd/system").mkdir(parents=True)
    (base / "os-release").write_text("PORTABLE_ID=web-server\nID=nixos\nPRETTY_NAME=NixOS\n")
    (base / "systemd/system/web-server.service").write_text("[Service]\nExecStart=/bin/true\n")
    for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "var/lib", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("usrlib", [False, True], ids=["etc", "usr-lib"])
def test_os_release_in_etc_or_usr_lib(tmp_path, usrlib):
    tree = make_nixpkgs_tree(tmp_path / f"{HASH}-web-server_1.0", usrlib=usrlib)
    found = PortableImage.open(tree)
    assert (found.kind, found.name, found.os_release["PORTABLE_ID"]) == ("directory", "web-server_1.0", "web-server")
    assert found.units == ["web-server.service"]


@needs_mksquashfs
@pytest.mark.parametrize("usrlib", [False, True], ids=["etc", "usr-lib"])
def test_squashfs_with_os_release_in_etc_or_usr_lib(tmp_path, usrlib):
    image = squash(make_nixpkgs_tree(tmp_path / "root", usrlib=usrlib), tmp_path / "web-server_1.0.raw")
    assert PortableImage.open(image).os_release["ID"] == "nixos"


class SquashfsCheckingGuest(FakeGuest):
    """Records what kind of file each copied image is, while it still exists."""

    def copy_to(self, local: Path | str, remote: str) -> None:
        super().copy_to(local, remote)
        self.kinds = [*getattr(self, "kinds", []), describe_file(Path(local))]


@needs_mksquashfs
def test_directory_image_reaches_the_guest_as_name_version_raw(tmp_path):
    tree = make_nixpkgs_tree(tmp_path / f"{HASH}-web-server_1.0", usrlib=False)
    guest = SquashfsCheckingGuest()
    with PortableService(guest, tree, timeout=5, settle=0.1) as service:
        assert [remote for _, remote in guest.copied] == ["/root/web-server_1.0.raw"]
        assert [kind.split(" (")[0] for kind in guest.kinds] == ["a squashfs image"]
        assert service.portable == "web-server_1.0.raw"
        assert "portablectl attach --now --profile=default --runtime /root/web-server_1.0.raw" in guest.commands
    assert not guest.copied[0][0].exists()  # the packed copy is gone


def test_store_hash_never_reaches_names(tmp_path):
    image = PortableImage(tmp_path / f"{HASH}-web-server_1.0.raw", "squashfs", {"ID": "x"},
                          ("etc/systemd/system/web-server.service",))
    assert HASH not in image.name and HASH not in image.prefix


# --- what is not an image: one line, what it is, what to pass -----------------------------------------------
@pytest.mark.parametrize(("content", "what", "hint"), [
    (b"\x1f\x8b\x08\x00rest", "a gzip file (a docker-archive or tarball?)",
     "load it with docker_image/docker_container instead; " + IMAGE_HINT),
    (b"(\xb5/\xfd rest", "a zstd file (a docker-archive or tarball?)",
     "load it with docker_image/docker_container instead; " + IMAGE_HINT),
    (b"#!/nix/store/x-bash/bin/bash -e\nexec stream\n", "a script (#!/nix/store/x-bash/bin/bash -e)",
     "a streamLayeredImage script goes to docker_image/docker_container; " + IMAGE_HINT),
    (b"[Unit]\nDescription=x\n", "a systemd unit file",
     "put the unit in an image (portableService { units = [ ... ]; }); " + IMAGE_HINT),
    (b"\x7fELF\x02\x01", "an ELF executable", IMAGE_HINT),
], ids=["gzip", "zstd", "script", "unit", "elf"])
def test_not_an_image_message_is_one_line(tmp_path, content, what, hint):
    path = tmp_path / "result"
    path.write_bytes(content)
    with pytest.raises(PortableError) as raised:
        PortableImage.open(path)
    assert str(raised.value) == f"{path} is not a portable service image: it is {what} ({hint})"


def test_package_directory_is_not_an_image(tmp_path):
    for d in ("bin", "share"):
        (tmp_path / d).mkdir()
    (tmp_path / "README").write_text("x")
    with pytest.raises(PortableError) as raised:
        PortableImage.open(tmp_path)
    assert str(raised.value) == (f"{tmp_path} is not a portable service image: it is a directory without "
                                 "usr/lib/os-release or etc/os-release and without a .raw file "
                                 f"(it has: README, bin/, share/) ({IMAGE_HINT})")


def test_directory_with_two_images(tmp_path):
    for name in ("web-server_1.0.raw", "web-server_1.1.raw"):
        (tmp_path / name).write_bytes(b"hsqs")
    with pytest.raises(PortableError) as raised:
        PortableImage.open(tmp_path)
    assert str(raised.value) == (f"{tmp_path} holds 2 portable images (web-server_1.0.raw, web-server_1.1.raw), "
                                 "not one (pass the path of one of them)")


def test_missing_path(tmp_path):
    with pytest.raises(PortableError, match=r"portable image .*/nothing does not exist \(pass a portableService"):
        PortableImage.open(tmp_path / "nothing")


@needs_mksquashfs
def test_directory_image_without_mksquashfs(tmp_path, monkeypatch):
    tree = make_nixpkgs_tree(tmp_path / "web-server_1.0", usrlib=True)
    monkeypatch.setattr("pytest_flake._host.shutil.which", lambda name: None)
    with pytest.raises(MissingToolError, match=r"mksquashfs is not installed.*apt-get install squashfs-tools"):
        PortableService(FakeGuest(), tree, timeout=5).__enter__()



def test_settle_time_comes_from_the_guest_unless_given(tmp_path):
    image = fake_image(tmp_path, "web-server_1")
    assert PortableService(FakeGuest(), image).settle == 1.0  # a guest that says nothing: an emulated VM's second
    quick = FakeGuest()
    quick.settle = 0.1  # type: ignore[attr-defined]  # what a systemd container says
    assert PortableService(quick, image).settle == 0.1
    assert PortableService(quick, image, settle=0.5).settle == 0.5
