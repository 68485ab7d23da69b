"""Systemd containers on real systemd-nspawn: portable services of the offline example, two at once, the guest API.

Needs root and ``systemd-container`` (scripts/setup.d/40-nspawn.sh); elsewhere these tests are
skipped, and under CI they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_flake import CheckFailed
from pytest_flake.guest import Guest
from pytest_flake.nspawn.machine import SystemdContainer

pytestmark = pytest.mark.flake("examples/offline")


def test_portable_lifecycle_in_a_container(systemd_container, portable_service, http):
    """attach, HTTP through the relay, reattach, HTTP shows the new version, detach."""
    service = portable_service(systemd_container, "portable")
    assert (service.name, service.units) == ("web-server_1.0", ["web-server.service"])
    assert service.attached_state() == "running-runtime"
    assert service.environment()["PORTABLE"] == "web-server_1.0.raw"  # the .raw itself, not unpacked

    info = systemd_container.url(3031, "/cgi-bin/info")
    assert info.startswith("http://127.0.0.1:")
    http.get(info, retry_for=30).expect(200, json={"version": "1.0", "portable": "web-server_1.0.raw"})

    service.reattach("portable-next")
    assert systemd_container.url(3031, "/cgi-bin/info") == info  # the same relay
    http.get(info, retry_for=30).expect(200, json={"version": "1.1", "portable": "web-server_1.1.raw"})
    assert "Started web-server.service - web-server 1.1 (portable)" in service.journal()

    service.detach()
    assert service.attached_state() == "detached"
    assert systemd_container.run("systemctl cat web-server.service").rc != 0  # the unit is gone


def test_two_containers_both_serve_guest_port_8080(systemd_container_factory, portable_service, http):
    """Each container has its own network: the same guest port in both, each reached through its own relay."""
    first, second = systemd_container_factory(), systemd_container_factory()
    assert first.name != second.name
    for container in (first, second):  # the example listens on 3031; move both to 8080
        container.succeed("mkdir -p /etc/systemd/system/web-server.service.d")
        container.succeed("printf '[Service]\\nEnvironment=LISTEN=8080\\n' "
                          "> /etc/systemd/system/web-server.service.d/50-port.conf")
    portable_service(first, "portable")
    portable_service(second, "portable-next")
    first.wait_for_open_port(8080)
    second.wait_for_open_port(8080)
    assert first.forward(8080) != second.forward(8080)
    http.get(first.url(8080, "/"), retry_for=30).expect(200, contains="web-server 1.0")
    http.get(second.url(8080, "/"), retry_for=30).expect(200, contains="web-server 1.1")
    first.fail("grep -q ' 00000000:0BD7 ' /proc/net/tcp")  # nothing left on 3031 in either
    # a port nobody listens on: the relay closes the connection, it does not hang
    with pytest.raises(AssertionError):
        http.get(first.url(9, "/"), retry_for=0.5).expect(200)


def test_same_guest_api_as_a_vm(systemd_container: SystemdContainer, tmp_path: Path) -> None:
    container = systemd_container
    assert isinstance(container, Guest)
    assert container.succeed("systemctl is-system-running").strip() == "running"
    assert container.succeed("id -u").strip() == "0"
    assert container.run(["sh", "-c", "exit 3"]).rc == 3
    with pytest.raises(CheckFailed, match="exit code 3"):
        container.succeed("exit 3")
    container.fail("test -e /nonexistent")
    container.wait_for_unit("systemd-journald.service", timeout=10)
    assert container.host.file("/etc/os-release").contains("VERSION_CODENAME=")
    assert container.host.run("hostname").stdout.strip() == container.name

    # files in and out, modes kept; a folder recursively
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(hostname)\n")
    script.chmod(0o750)
    container.copy_to(script, "/root/hello.sh")
    assert container.succeed("/root/hello.sh").strip() == f"hello from {container.name}"
    assert container.succeed("stat -c %a /root/hello.sh").strip() == "750"
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    container.copy_to(folder, "/srv/tree")
    assert container.succeed("cat /srv/tree/sub/a.txt") == "a"
    container.copy_from("/srv/tree", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "a.txt").read_text() == "a"
    container.copy_from("/root/hello.sh", tmp_path / "hello.back")
    assert os.stat(tmp_path / "hello.back").st_mode & 0o777 == 0o750

    # the tree under the container is a throwaway copy: the cached tree never changes
    assert not (container.tree.root / "root" / "hello.sh").exists()
    container.succeed("logger -t pf-test marker-in-the-journal")
    container.wait_until_succeeds("journalctl -t pf-test | grep -q marker-in-the-journal", timeout=10)
    assert "marker-in-the-journal" in container.journal(lines=50)


def test_private_network_has_only_loopback(systemd_container):
    links = systemd_container.succeed("ls /sys/class/net").split()
    assert links == ["lo"]


def test_directory_image_attaches_in_a_container(systemd_container, portable_service, flake, tmp_path: Path, http):
    if shutil.which("unsquashfs") is None:
        pytest.fail("unsquashfs (squashfs-tools) is needed: scripts/setup installs it")
    raw = next(flake.build("portable").out.glob("*.raw"))
    tree = tmp_path / "web-server_1.0"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(raw)], check=True)
    service = portable_service(systemd_container, tree)
    assert service.attached_state() == "running-runtime"
    http.get(systemd_container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
