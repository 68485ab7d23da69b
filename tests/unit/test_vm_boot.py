"""How a VM is booted, without daemons: its disk size, the KVM decision, the cloud-init seed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_flake import vm
from pytest_flake.config import Settings, parse_size
from pytest_flake.errors import UsageError


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.resolve(lambda n: None, lambda n: None, tmp_path, environ=env)


# --------------------------------------------------------------------------- disk size


def test_disk_size_option_env_and_default(tmp_path: Path) -> None:
    default = settings(tmp_path)
    assert default.vm_disk_size == 8 * vm.GiB and default.source("vm_disk_size") == "default"
    from_env = settings(tmp_path, PYTEST_FLAKE_VM_DISK_SIZE="12GiB")
    assert from_env.vm_disk_size == 12 * vm.GiB and from_env.source("vm_disk_size") == "$PYTEST_FLAKE_VM_DISK_SIZE"
    from_ini = Settings.resolve(lambda n: None, lambda n: "10240M" if n == "vm_disk_size" else None, tmp_path,
                                environ={})
    assert from_ini.vm_disk_size == 10 * vm.GiB and from_ini.source("vm_disk_size") == "ini vm_disk_size"
    from_option = Settings.resolve(lambda n: "6g" if n == "vm_disk_size" else None,
                                   lambda n: "10240M" if n == "vm_disk_size" else None, tmp_path,
                                   environ={"PYTEST_FLAKE_VM_DISK_SIZE": "12G"})
    assert from_option.vm_disk_size == 6 * vm.GiB and from_option.source("vm_disk_size") == "--vm-disk-size"


@pytest.mark.parametrize("bad", ["lots", "8", "-2G", "0G", "8X"])
def test_bad_disk_size_names_the_option_and_the_fix(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match=r"\$PYTEST_FLAKE_VM_DISK_SIZE=.* is not a size") as err:
        settings(tmp_path, PYTEST_FLAKE_VM_DISK_SIZE=bad)
    assert "8G" in str(err.value)


def test_parse_size() -> None:
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8 GB") == parse_size("8192M") == 8 << 30
    assert parse_size("1.5G") == 3 << 29 and parse_size("512k") == 512 << 10


def virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(json.loads(out)["virtual-size"])


@pytest.fixture
def base_image(tmp_path: Path) -> vm.Image:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "2G"], check=True)
    return vm.Image(name="arch", disk=disk)


def test_overlay_is_made_at_the_configured_size(base_image: vm.Image, tmp_path: Path) -> None:
    overlay = tmp_path / "vm.qcow2"
    assert vm.create_overlay(base_image, overlay, 8 * vm.GiB) == 8 * vm.GiB
    assert virtual_size(overlay) == 8 * vm.GiB
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["backing-filename"] == str(base_image.disk)
    assert virtual_size(base_image.disk) == 2 * vm.GiB  # the base is left as it was


def test_overlay_never_shrinks_the_image(base_image: vm.Image, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    overlay = tmp_path / "vm.qcow2"
    assert vm.create_overlay(base_image, overlay, 1 * vm.GiB) == 2 * vm.GiB
    assert virtual_size(overlay) == 2 * vm.GiB
    assert "less than the arch image's disk" in caplog.text


def test_vm_takes_the_disk_size_from_the_settings(tmp_path: Path) -> None:
    from pytest_flake.session import Session

    pool = vm.VMPool(settings(tmp_path, PYTEST_FLAKE_VM_DISK_SIZE="20G"), Session(root=tmp_path))
    assert pool.vm().disk_size == 20 * vm.GiB


def test_warm_states_are_kept_per_disk_size(tmp_path: Path) -> None:
    image = vm.Image(name="debian", disk=tmp_path / "disk.qcow2")
    hypervisor = vm.Hypervisor("/usr/bin/qemu-system-x86_64", 7002022, 9000000)

    def key(size: int) -> dict[str, object]:
        return vm.warm_key(image, memory=1024, cpus=1, accel="tcg", uri="qemu:///system", hypervisor=hypervisor,
                           disk_size=size)

    assert key(8 * vm.GiB) != key(12 * vm.GiB)
    assert vm.warm_slot(key(8 * vm.GiB)) != vm.warm_slot(key(12 * vm.GiB))
