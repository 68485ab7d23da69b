"""Portable services in a real guest (the ``debian`` image) with real portablectl.

Run with ``--vm-image=debian``; the suite's conftest sets it for the integration tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_flake.errors import CheckFailed, PortableError

pytestmark = pytest.mark.flake("examples/offline")


def test_attach_reattach_detach(vm, portable_service, http):
    service = portable_service(vm, "portable")
    assert (service.name, service.prefix, service.units) == ("web-server_1.0", "web-server", ["web-server.service"])
    assert service.attached_state() == "running-runtime"  # --runtime: nothing persists across a reboot
    assert vm.run("ls /etc/systemd/system.attached 2>/dev/null | wc -l").stdout.strip() == "0"
    assert service.environment()["PORTABLE"] == "web-server_1.0.raw"
    assert "web-server.service" in service.inspect()

    info = vm.url(3031, "/cgi-bin/info")
    http.get(info, retry_for=30).expect(200, json={"version": "1.0", "portable": "web-server_1.0.raw"})
    assert "url:/cgi-bin/info" in service.image_journal()

    service.reattach("portable-next")
    assert service.name == "web-server_1.1"
    assert vm.run("test -e /root/web-server_1.0.raw").rc == 1  # the old image is removed
    http.get(info, retry_for=30).expect(200, json={"version": "1.1", "portable": "web-server_1.1.raw"})
    # the journal of an image version holds only what that version logged
    assert service.image_journal().count("url:/cgi-bin/info") == 1
    assert "Started web-server.service - web-server 1.1 (portable)" in service.journal()

    service.detach()
    assert not service.is_active()
    assert service.attached_state() == "detached"
    assert vm.run("systemctl cat web-server.service").rc != 0  # the unit is gone


def test_directory_image(vm, portable_service, flake, tmp_path, http):
    if shutil.which("unsquashfs") is None:
        pytest.fail("unsquashfs (squashfs-tools) is needed: scripts/setup installs it")
    raw = next(flake.build("portable").out.glob("*.raw"))
    tree = tmp_path / "web-server_1.0"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(raw)], check=True)
    service = portable_service(vm, tree)
    assert service.attached_state() == "running-runtime"
    http.get(vm.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")


def _failing_image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "usr/lib/systemd/system", "etc"):
        (root / d).mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=broken\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").write_text("")
    (root / "usr/lib/systemd/system/broken.service").write_text(
        "[Service]\nExecStart=/usr/bin/no-such-program\n")
    image = tmp_path / "broken_1.raw"
    subprocess.run(["mksquashfs", str(root), str(image), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True)
    return image


def test_unit_that_fails_to_start_reports_status_and_journal(vm, portable_service, tmp_path):
    image = _failing_image(tmp_path)
    with pytest.raises(CheckFailed) as failure:
        portable_service(vm, image)
    message = str(failure.value)
    assert "broken.service of portable service broken_1 failed to start" in message
    assert "no-such-program" in message  # the journal or status names what could not run
    assert vm.run("portablectl is-attached broken_1").stdout.strip() == "detached"  # cleaned up


def test_guest_without_portablectl(vm, portable_service):
    assert vm.run("mv /usr/bin/portablectl /usr/bin/portablectl.away").rc == 0
    with pytest.raises(PortableError, match="the guest has no portablectl .*systemd-container"):
        portable_service(vm, "portable")


def test_output_that_is_not_an_image(vm, portable_service):
    with pytest.raises(PortableError, match="is not a portable service image: it is a gzip file"):
        portable_service(vm, "docker")
