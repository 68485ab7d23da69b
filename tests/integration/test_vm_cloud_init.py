"""The Arch path's cloud-init, checked offline: the ``debian-cloud`` image (Debian's cloud-init on a
partitioned disk, a stand-in for Arch's ``pacman-init.service`` in ``/etc/systemd/system``) booted
with exactly the seed and credentials an Arch VM gets.

``debian-trixie-cloud`` (systemd 257) and ``debian-sid-cloud`` (262, Arch's generation: the
``systemd.unit-dropin.*`` credentials apply) run the same tests when ``PYTEST_FLAKE_TEST_RELEASES``
names them (``trixie,sid`` or ``all``); they are left out of the default suite for its time.

Nothing is faked: the image is built with debootstrap from the Debian mirror, the guest boots
under libvirt, cloud-init reads the NoCloud seed the plugin renders, SSH is real. The boot is
cold (no warm state): the host key must come from the seed and be checked on the first connection.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from pytest_flake import images
from pytest_flake import vm as vmmod
from pytest_flake.config import Settings
from pytest_flake.session import Session
from pytest_flake.vm import VM, VMPool

EXTRA = os.environ.get("PYTEST_FLAKE_TEST_RELEASES", "")


def _images() -> list[object]:
    params: list[object] = ["debian-cloud"]
    for release in ("trixie", "sid"):
        image = f"debian-{release}-cloud"
        if EXTRA == "all" or release in EXTRA.split(","):
            params.append(image)
        else:
            params.append(pytest.param(image, marks=pytest.mark.skip(
                reason=f"set PYTEST_FLAKE_TEST_RELEASES={release} (or all) to boot {image}")))
    return params


@pytest.fixture(scope="module", params=_images())
def cloud_vm(request: pytest.FixtureRequest, flake_session: Session, flake_settings: Settings,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VM, list[logging.LogRecord]]]:
    """A cold-booted cloud VM of each release (debian-cloud by default) and the plugin's log records of its start."""
    env = {"PYTEST_FLAKE_TIMEOUT": str(max(float(flake_settings.flake_timeout), 600.0))}
    if flake_settings.libvirt_uri:
        env["LIBVIRT_DEFAULT_URI"] = flake_settings.libvirt_uri
    settings = Settings.resolve(lambda n: None, lambda n: None, tmp_path_factory.mktemp("cloud"), environ=env)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("pytest_flake")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with VMPool(settings, flake_session, warm=False) as pool, pool.vm(image=request.param) as machine:
            yield machine, records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_ssh_as_root_with_the_host_key_checked_from_the_first_connection(cloud_vm: tuple[VM, list[logging.LogRecord]],
                                                                         tmp_path: Path) -> None:
    machine, records = cloud_vm
    assert not machine.warm and machine.host_key_origin == "seed"
    assert not [r for r in records if "on first use" in r.getMessage()]  # never trusted blindly
    assert machine.run("id -un").stdout.strip() == "root"
    # the image has no host key of its own: the guest presents the one the plugin made
    pinned = machine._hostkeys
    served = machine.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    assert pinned == (" ".join(served),)
    assert machine.run("ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").stdout.strip() == "1"
    # a connection that expects another key is refused: the key really is checked
    other = vmmod.HostKey.generate().public
    with pytest.raises(paramiko.BadHostKeyException):
        vmmod.ssh_client(machine.ssh_port, machine.private_key, (" ".join(other.split()[:2]),)).close()
    vmmod.ssh_client(machine.ssh_port, machine.private_key, pinned).close()


def _errors_in(long_status: str) -> list[str]:
    """The lines of ``cloud-init status --long`` that report an error: cloud-init 22 (bookworm) names none
    when there is none; 24 and later always print ``errors: []`` and ``recoverable_errors: {}``."""
    empty = {"errors: []", "recoverable_errors: {}"}
    return [line for line in long_status.splitlines() if "error" in line.lower() and line.strip() not in empty]


def _seed_file(seed: Path, name: str) -> str:
    """A file of the seed, read by its Rock Ridge name (as the guest mounts it)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        data = io.BytesIO()
        iso.get_file_from_iso_fp(data, rr_path=f"/{name}")
        return data.getvalue().decode()
    finally:
        iso.close()


def test_cloud_init_finished_with_the_seed_the_arch_path_sends(cloud_vm: tuple[VM, list[logging.LogRecord]]) -> None:
    machine, _ = cloud_vm
    status = machine.run("cloud-init status --wait --long")
    assert status.rc == 0, status.stdout + status.stderr
    assert "status: done" in status.stdout and not _errors_in(status.stdout), status.stdout
    result = json.loads(machine.run("cat /run/cloud-init/result.json").stdout)
    assert result["v1"]["errors"] == [], result
    # cloud-init read exactly the user-data the plugin rendered for an Arch VM (the seed is still there)
    assert machine.seed is not None
    sent = _seed_file(machine.seed, "user-data")
    # the seed is an ISO 9660 volume labelled cidata, which the guest's cloud-init found and read
    assert machine.run("blkid -t LABEL=cidata -o value -s TYPE").stdout.split() == ["iso9660"]
    assert "DataSourceNoCloud" in result["v1"]["datasource"], result
    assert sent.startswith("#cloud-config\n")
    expected = vmmod.cloud_config(machine.keys.public if machine.keys else "", vmmod.HostKey("x", "y"),
                                  images.ArchRecipe.load().skip_units)
    got = json.loads(sent.split("\n", 1)[1])
    assert {k: v for k, v in got.items() if k != "ssh_keys"} == {k: v for k, v in expected.items() if k != "ssh_keys"}
    assert machine.run("cat /var/lib/cloud/instance/user-data.txt").stdout == sent
    # root's key came with the seed (and with the SMBIOS credential, as on Arch)
    assert machine.keys is not None and machine.keys.public in machine.run("cat /root/.ssh/authorized_keys").stdout


def test_first_boot_units_skipped_without_mask(cloud_vm: tuple[VM, list[logging.LogRecord]]) -> None:
    """The stand-in pacman-init.service is a unit file in /etc (mask refuses it) that fails if it runs."""
    machine, _ = cloud_vm
    show = machine.run("systemctl show -p ConditionResult -p ActiveState -p Result -p FragmentPath "
                       "-p DropInPaths pacman-init.service").stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["FragmentPath"] == "/etc/systemd/system/pacman-init.service"
    assert props["ConditionResult"] == "no" and props["ActiveState"] == "inactive", show
    assert f"/run/systemd/system/pacman-init.service.d/{vmmod.SKIP_DROPIN}" in props["DropInPaths"]
    assert machine.run("test -L /etc/systemd/system/pacman-init.service").rc == 1  # not masked
    systemd = int(machine.run("systemctl --version").stdout.split()[1])
    creds = machine.run("systemd-creds --system list --no-legend").stdout
    if systemd >= 256:  # Arch's generation: the SMBIOS credentials carry the key and the drop-ins
        assert "ssh.authorized_keys.root" in creds and "systemd.unit-dropin.pacman-init.service" in creds, creds
        assert len(props["DropInPaths"].split()) >= 2, props  # the credential's drop-in beside the seed's
    failed = machine.run("systemctl list-units --failed --plain --no-legend").stdout
    assert failed.strip() == "", failed
    state = machine.run("systemctl is-system-running --wait").stdout.strip()
    assert state == "running", state + "\n" + failed


def test_root_grew_into_the_disk(cloud_vm: tuple[VM, list[logging.LogRecord]]) -> None:
    machine, _ = cloud_vm
    image = machine.platform.image(machine.image_spec)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(image.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    room = machine.disk_size - int(info["virtual-size"])
    assert room > 4 * vmmod.GiB  # the default leaves a few GiB
    assert machine.run("lsblk -bdno SIZE /dev/vda").stdout.strip() == str(machine.disk_size)
    part = int(machine.run("lsblk -bdno SIZE /dev/vda1").stdout.strip())
    assert part > machine.disk_size - 8 * vmmod.MiB  # growpart moved the partition's end to the disk's
    free = int(machine.run("df -B1 --output=avail / | tail -n 1").stdout.strip())
    print(f"\ndisk {machine.disk_size / vmmod.GiB:.1f} GiB, image {int(info['virtual-size']) / vmmod.GiB:.2f} GiB, "
          f"free in the guest {free / vmmod.GiB:.2f} GiB")
    assert free >= room, (free, room)
