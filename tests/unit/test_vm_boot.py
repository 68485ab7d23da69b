"""How a VM is booted, without daemons: its disk size, the KVM decision, the cloud-init seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_flake import images, vm
from pytest_flake.config import Settings, parse_size
from pytest_flake.errors import UsageError, VMError


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
def base_image(tmp_path: Path) -> images.Image:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "2G"], check=True)
    return images.Image(name="arch", disk=disk)


def test_overlay_is_made_at_the_configured_size(base_image: images.Image, tmp_path: Path) -> None:
    overlay = tmp_path / "vm.qcow2"
    assert images.create_overlay(base_image, overlay, 8 * vm.GiB) == 8 * vm.GiB
    assert virtual_size(overlay) == 8 * vm.GiB
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["backing-filename"] == str(base_image.disk)
    assert virtual_size(base_image.disk) == 2 * vm.GiB  # the base is left as it was


def test_overlay_never_shrinks_the_image(base_image: images.Image, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    overlay = tmp_path / "vm.qcow2"
    assert images.create_overlay(base_image, overlay, 1 * vm.GiB) == 2 * vm.GiB
    assert virtual_size(overlay) == 2 * vm.GiB
    assert "less than the arch image's disk" in caplog.text


def test_vm_takes_the_disk_size_from_the_settings(tmp_path: Path) -> None:
    from pytest_flake.session import Session

    pool = vm.VMPool(settings(tmp_path, PYTEST_FLAKE_VM_DISK_SIZE="20G"), Session(root=tmp_path))
    assert pool.vm().disk_size == 20 * vm.GiB


def test_warm_states_are_kept_per_disk_size(tmp_path: Path) -> None:
    image = images.Image(name="debian", disk=tmp_path / "disk.qcow2")
    hypervisor = vm.Hypervisor("/usr/bin/qemu-system-x86_64", 7002022, 9000000)

    def key(size: int) -> dict[str, object]:
        return vm.warm_key(image, memory=1024, cpus=1, accel="tcg", uri="qemu:///system", hypervisor=hypervisor,
                           disk_size=size)

    assert key(8 * vm.GiB) != key(12 * vm.GiB)
    assert vm.warm_slot(key(8 * vm.GiB)) != vm.warm_slot(key(12 * vm.GiB))


# --------------------------------------------------------------------------- the KVM decision without a debian image

FAKE_QEMU = """#!/usr/bin/env python3
# A stand-in for qemu-system-x86_64 -accel kvm -kernel ...: MODE working panics like a kernel
# without a root file system; MODE hanging never gets anywhere (a nested KVM guest here).
import sys, time
args = sys.argv[1:]
serial = args[args.index("-serial") + 1].split(":", 1)[1]
open(sys.argv[0] + ".argv", "w").write("\\n".join(args))
if "{mode}" == "working":
    with open(serial, "w") as out:
        out.write("[    0.000000] Linux version 6.1.0\\n[    0.912000] Kernel panic - not syncing: VFS: "
                  "Unable to mount root fs on unknown-block(0,0)\\n")
    sys.exit(0)
time.sleep(120)
"""


@pytest.fixture
def no_debian_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with a KVM device and a kernel in /boot, but no debian image in the cache."""
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-test").write_bytes(b"\x00" * (2 * 1024 * 1024))
    monkeypatch.setattr("pytest_flake.vm.accel.KVM_DEVICE", str(device))
    monkeypatch.setattr("pytest_flake.vm.accel.HOST_KERNEL_GLOBS", (str(boot / "vmlinuz-*"),))
    # a working stub answers at once, even on a busy host
    monkeypatch.setattr("pytest_flake.vm.accel.KVM_PROBE_SECONDS", 30.0)
    cache = tmp_path / "state" / "images"
    assert not images.debian_image_dir(cache).exists()
    return tmp_path


def fake_qemu(root: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> Path:
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU.replace("{mode}", mode))
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return qemu


def arch_pool(root: Path) -> vm.VMPool:
    from pytest_flake.session import Session

    return vm.VMPool(settings(root, LIBVIRT_DEFAULT_URI="qemu:///system"), Session(root=root / "state"))


ARCH = images.Image(name="arch", disk=Path("/nonexistent/arch.qcow2"), cloud_init=True)


def test_kvm_decided_with_the_host_kernel_when_it_works(no_debian_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = fake_qemu(no_debian_host, monkeypatch, "working")
    pool = arch_pool(no_debian_host)
    assert pool.accel(ARCH) == "kvm"
    argv = (qemu.parent / "qemu-system-x86_64.argv").read_text().splitlines()
    assert argv[argv.index("-kernel") + 1] == str(no_debian_host / "boot" / "vmlinuz-6.1.0-test")
    assert argv[argv.index("-accel") + 1] == "kvm"
    header = vm.describe_accel(pool.settings, pool.cache)
    assert header.startswith("kvm (auto: a KVM guest booted its kernel in ")
    assert "probed with the host's kernel" in header
    doctor = [line for ok, line in vm.doctor(pool.settings, no_debian_host / "state") if "KVM" in line]
    assert doctor and doctor[0].startswith("KVM works: ") and "decided since this host booted" in doctor[0]
    qemu.unlink()  # cached for this boot: a new session does not probe again
    assert arch_pool(no_debian_host).accel(ARCH) == "kvm"


def test_kvm_decided_with_the_host_kernel_when_it_hangs(no_debian_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu(no_debian_host, monkeypatch, "hanging")
    monkeypatch.setattr("pytest_flake.vm.accel.KVM_PROBE_SECONDS", 2.0)
    pool = arch_pool(no_debian_host)
    assert pool.accel(ARCH) == "tcg"
    header = vm.describe_accel(pool.settings, pool.cache)
    assert header.startswith("tcg (auto: a KVM guest did not get through kernel start-up in 2s (it hangs)")
    assert "probed with the host's kernel" in header
    doctor = [(ok, line) for ok, line in vm.doctor(pool.settings, no_debian_host / "state") if "KVM" in line]
    assert doctor[0][0] and doctor[0][1].startswith("KVM unusable (a KVM guest did not get through")
    forced = vm.doctor(settings(no_debian_host, LIBVIRT_DEFAULT_URI="qemu:///system", PYTEST_FLAKE_VM_ACCEL="kvm"),
                       no_debian_host / "state")
    assert (False, "KVM unusable") == next((ok, line[:12]) for ok, line in forced if line.startswith("KVM"))


SEABIOS_AND_GRUB = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\nBooting from Hard Disk...\n"
                    "Welcome to GRUB!\n  Booting `Arch Linux'\nLoading Linux linux ...\nLoading initial ramdisk ...\n")


def test_kvm_decided_by_the_first_boot_when_no_kernel_is_at_hand(no_debian_host: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu(no_debian_host, monkeypatch, "working")
    monkeypatch.setattr("pytest_flake.vm.accel.HOST_KERNEL_GLOBS", ())
    pool = arch_pool(no_debian_host)
    assert pool.accel(ARCH) == vm.KVM_TRIAL  # nothing probed, nothing recorded yet
    assert vm.describe_accel(pool.settings, pool.cache) == "auto (KVM is probed when the first VM starts)"
    doctor = [(ok, line) for ok, line in vm.doctor(pool.settings, no_debian_host / "state") if "KVM" in line]
    assert doctor[0][0] and doctor[0][1].startswith("KVM not probed yet: no kernel at hand")

    # a working KVM: the console soon shows the kernel running
    lines = iter([SEABIOS_AND_GRUB, SEABIOS_AND_GRUB + "[    1.2] Run /init as init process\n"])
    works, why = vm.watch_kvm_first_boot(lambda: next(lines), lambda: True, timeout=5, interval=0.01)
    assert works and "ran under KVM" in why
    assert pool.kvm_trial_result(works, why) == "kvm" and pool.accel(ARCH) == "kvm"
    assert arch_pool(no_debian_host).accel(ARCH) == "kvm"  # cached for this boot
    assert vm.describe_accel(pool.settings, pool.cache).startswith("kvm (auto: the first VM's kernel ran under KVM")


def test_kvm_first_boot_that_hangs_falls_back_to_tcg(no_debian_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_flake.vm.accel.HOST_KERNEL_GLOBS", ())
    fake_qemu(no_debian_host, monkeypatch, "working")
    pool = arch_pool(no_debian_host)
    assert pool.accel(ARCH) == vm.KVM_TRIAL
    # firmware and GRUB run to the end under a broken KVM; the kernel then prints nothing more
    works, why = vm.watch_kvm_first_boot(lambda: SEABIOS_AND_GRUB, lambda: True, timeout=0.3, interval=0.01)
    assert not works and "no kernel progress" in why
    assert pool.kvm_trial_result(works, why) == "tcg"
    again = arch_pool(no_debian_host)
    assert again.accel(ARCH) == "tcg"
    header = vm.describe_accel(again.settings, again.cache)
    assert header.startswith("tcg (auto: the first VM under KVM showed no kernel progress")
    doctor = [line for _, line in vm.doctor(again.settings, no_debian_host / "state") if "KVM" in line]
    assert doctor[0].startswith("KVM unusable (the first VM under KVM showed no kernel progress")


def test_kvm_first_boot_answering_ssh_counts_and_a_stopped_guest_does_not() -> None:
    works, _ = vm.watch_kvm_first_boot(lambda: "", lambda: True, answered=lambda: True, timeout=5, interval=0.01)
    assert works
    works, why = vm.watch_kvm_first_boot(lambda: SEABIOS_AND_GRUB, lambda: False, timeout=5, interval=0.01)
    assert not works and "stopped" in why


def test_kernel_progress_needs_the_kernel_not_the_firmware() -> None:
    assert not vm.kernel_progress(SEABIOS_AND_GRUB)
    for line in ("[    0.9] Run /init as init process", "[    0.8] Freeing unused kernel image (initmem) memory",
                 "systemd[1]: Detected virtualization kvm.", "Welcome to Arch Linux!", "archlinux login: ",
                 "Cloud-init v. 24.1 running 'init-local'"):
        assert vm.kernel_progress(SEABIOS_AND_GRUB + line), line


def test_host_kernel_needs_a_readable_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_flake.vm.accel.HOST_KERNEL_GLOBS", (str(tmp_path / "vmlinuz-*"),))
    assert vm.host_kernel() is None
    (tmp_path / "vmlinuz-6.1-small").write_bytes(b"x")  # not a kernel
    assert vm.host_kernel() is None
    (tmp_path / "vmlinuz-6.1").write_bytes(b"\x00" * (2 * 1024 * 1024))
    assert vm.host_kernel() == tmp_path / "vmlinuz-6.1"
    kernel, source = vm.probe_kernel(ARCH, tmp_path / "cache")
    assert kernel == tmp_path / "vmlinuz-6.1" and source == f"the host's kernel {tmp_path / 'vmlinuz-6.1'}"


# --------------------------------------------------------------------------- the cloud-init seed

UNITS = images.ArchRecipe.load().skip_units


def arch_user_data() -> tuple[str, vm.HostKey]:
    host_key = vm.HostKey.generate()
    config = vm.cloud_config("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBHx pf", host_key, UNITS)
    return vm.render_user_data(config), host_key


def cloud_init_schema(user_data: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (scripts/setup installs Debian's cloud-init for this check)")
    path = tmp_path / "user-data"
    path.write_text(user_data)
    return subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_the_arch_seed_passes_cloud_init_schema(tmp_path: Path) -> None:
    user_data, _ = arch_user_data()
    result = cloud_init_schema(user_data, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    assert "deprecat" not in (result.stdout + result.stderr).lower().replace("schema deprecations: \n", "")


def test_cloud_init_schema_catches_a_bad_seed(tmp_path: Path) -> None:
    """The check above can fail: the same seed with a growpart mode cloud-init does not know."""
    user_data, _ = arch_user_data()
    config = json.loads(user_data.split("\n", 1)[1])
    config["growpart"]["mode"] = "sometimes"
    result = cloud_init_schema(vm.render_user_data(config), tmp_path)
    assert result.returncode != 0 and "growpart.mode" in result.stdout + result.stderr


def test_the_seed_pins_host_keys_grows_the_root_and_never_masks(tmp_path: Path) -> None:
    import paramiko

    user_data, host_key = arch_user_data()
    assert user_data.startswith("#cloud-config\n")
    config = json.loads(user_data.split("\n", 1)[1])
    assert config["users"] == [{"name": "root", "lock_passwd": True,
                                "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBHx pf"]}]
    assert config["disable_root"] is False and config["ssh_pwauth"] is False
    # the host key the guest will present, made here: its private half is a real OpenSSH ed25519 key
    assert config["ssh_keys"] == {"ed25519_private": host_key.private, "ed25519_public": host_key.public}
    (tmp_path / "host").write_text(host_key.private)
    loaded = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "host"))
    assert host_key.public.split() == ["ssh-ed25519", loaded.get_base64()]
    assert config["ssh_deletekeys"] is True  # the image's own keys (if any) go
    assert config["growpart"] == {"mode": "auto", "devices": ["/"], "ignore_growroot_disabled": False}
    assert config["resize_rootfs"] is True
    assert "mask" not in user_data and "comment" not in config
    assert vm.HostKey.generate() != host_key  # one per guest


def test_skipping_units_works_on_unit_files_in_etc(tmp_path: Path) -> None:
    """The bootcmd writes runtime drop-ins (any unit file location) and never fails.

    Run here with ``systemctl`` replaced by a recorder and ``/run/systemd/system`` moved into tmp_path.
    """
    argv = vm.skip_units_command(("pacman-init.service", "systemd-time-wait-sync.service"))
    assert argv[:2] == ["sh", "-c"]
    script = argv[2].replace("/run/systemd/system", str(tmp_path / "run"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\necho \"$*\" >> " + str(tmp_path / "calls") + "\n"
        "case \"$*\" in 'show -P ActiveState systemd-time-wait-sync.service') echo activating;; "
        "'show -P ActiveState pacman-init.service') echo inactive;; esac\n")
    (bin_dir / "systemctl").chmod(0o755)
    result = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    for unit in ("pacman-init.service", "systemd-time-wait-sync.service"):
        dropin = tmp_path / "run" / f"{unit}.d" / vm.SKIP_DROPIN
        assert dropin.read_text() == f"[Unit]\nConditionPathExists=/run/pytest-flake-never-{unit}\n"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "daemon-reload"
    assert "stop --no-block systemd-time-wait-sync.service" in calls  # already waiting: stopped
    assert "stop --no-block pacman-init.service" not in calls  # not started yet: its condition skips it
    assert not any(call.startswith("mask") for call in calls)
    # and it exits 0 when systemctl fails (a unit that does not exist on this image)
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 5\n")
    assert subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).returncode == 0


# --------------------------------------------------------------------------- QEMU's user and its files


def test_qemu_user_from_libvirt_capabilities() -> None:
    caps = ("<capabilities><host><secmodel><model>dac</model><doi>0</doi>"
            "<baselabel type='kvm'>+988:+993</baselabel><baselabel type='qemu'>+988:+993</baselabel>"
            "</secmodel></host></capabilities>")
    user = vm.QemuUser.of(caps)
    assert (user.uid, user.gid, user.label) == (988, 993, "+988:+993")


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs acl (scripts/setup installs it)")
def test_qemu_user_gets_search_only_access_that_survives_a_chmod(tmp_path: Path) -> None:
    user = vm.QemuUser(uid=54321, gid=54321)  # nobody's: the ACL names the number
    closed = tmp_path / "home"
    (closed / "cache" / "vms").mkdir(parents=True)
    closed.chmod(0o700)
    overlay = closed / "cache" / "vms" / "vm-1.qcow2"
    overlay.write_bytes(b"")
    assert not user.can_search(closed)
    granted = vm.grant_search(user, overlay)
    assert closed in granted and user.can_search(closed) and user.can_search(closed / "cache")
    assert closed.stat().st_mode & 0o007 == 0  # still closed to everybody else, and not listable by it
    assert vm.acl_user_perm(closed, user.uid) == 0o1
    closed.chmod(0o700)  # what pytest does to its temporary folders at each session start
    assert not user.can_search(closed)  # the entry is there, the mask takes its effect
    assert closed in vm.grant_search(user, overlay) and user.can_search(closed)
    assert vm.grant_search(user, overlay) == []  # nothing to do when it can pass


def test_files_qemu_writes_are_handed_to_its_user(tmp_path: Path) -> None:
    user = vm.QemuUser(uid=54321, gid=54322)
    own = tmp_path / "vm-1.console.log"
    own.write_text("")
    vm.hand_to_qemu(user, own)
    assert (own.stat().st_uid, own.stat().st_gid, own.stat().st_mode & 0o777) == (54321, 54322, 0o600)
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"x")
    base.chmod(0o644)
    vm.check_readable(user, base, None)
    base.chmod(0o600)
    with pytest.raises(VMError, match="cannot read") as err:
        vm.check_readable(user, base)
    assert "chmod a+r" in str(err.value)
