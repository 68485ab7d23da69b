"""VM building blocks without daemons: saved-state headers, domain XML, credentials,
seeds, keys, the KVM decision."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pytest_flake import vm
from pytest_flake.config import Settings
from pytest_flake.errors import VMError

XML = f"""<domain type='qemu' id='7' xmlns:qemu='{vm.QEMU_NS}'>
  <name>pf-aaaa0000-vm-1</name>
  <uuid>b73a346e-39e4-4d0e-8589-af2eb5bda59d</uuid>
  <devices>
    <disk type='file' device='disk'><source file='/state/vms/pf-aaaa0000/pf-aaaa0000-vm-1.qcow2'/></disk>
    <serial type='file'><source path='/state/vms/pf-aaaa0000/pf-aaaa0000-vm-1.console.log' append='on'/></serial>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:22001-:22'/>
  </qemu:commandline>
</domain>
"""
COOKIE = b"<cookie>\n  <slirpHelper/>\n</cookie>\n"
STREAM = b"QEVM" + bytes(range(256)) * 64


def fake_save(path: Path, xml: str = XML, data_len: int = 8192) -> None:
    xml_bytes = xml.encode() + b"\0"
    data = (xml_bytes + COOKIE + b"\0").ljust(data_len, b"\0")
    header = struct.pack("<16s19I", b"LibvirtQemudSave", 2, data_len, 1, 0, len(xml_bytes), *([0] * 14))
    path.write_bytes(header + data + STREAM)


def test_save_header_is_rewritten_and_the_stream_kept(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.save", tmp_path / "b.save"
    fake_save(src)
    assert vm.read_save_xml(src) == XML
    new = vm._edit_domain_xml(vm.read_save_xml(src), name="pf-aaaa0000-vm-2", overlay=tmp_path / "o2.qcow2",
                              console=tmp_path / "c2.log",
                              netdev="user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:22002-:22")
    vm.copy_save_with_xml(src, dst, new)
    assert src.stat().st_size == dst.stat().st_size
    assert dst.read_bytes().endswith(STREAM)
    got = vm.read_save_xml(dst)
    assert "<name>pf-aaaa0000-vm-2</name>" in got and "b73a346e" not in got
    assert str(tmp_path / "o2.qcow2") in got and str(tmp_path / "c2.log") in got
    assert "hostfwd=tcp:127.0.0.1:22002-:22" in got and "22001" not in got
    assert "id='7'" not in got and "restrict=on" in got
    fields = struct.unpack("<16s19I", dst.read_bytes()[:92])
    data = dst.read_bytes()[92:92 + fields[2]]
    assert data[fields[5]:].split(b"\0", 1)[0] == COOKIE  # the cookie moved with the XML
    assert src.read_bytes()[:92 + 8192].startswith(struct.pack("<16s", b"LibvirtQemudSave"))


def test_save_header_too_small(tmp_path: Path) -> None:
    src = tmp_path / "a.save"
    fake_save(src, data_len=len(XML) + len(COOKIE) + 2)
    with pytest.raises(VMError, match="does not fit"):
        vm.copy_save_with_xml(src, tmp_path / "b.save", XML + "<!--" + "x" * 100 + "-->")


def test_not_a_save_image(tmp_path: Path) -> None:
    bogus = tmp_path / "x.save"
    bogus.write_bytes(b"\0" * 200)
    with pytest.raises(VMError, match="not a libvirt save image"):
        vm.read_save_xml(bogus)


def test_domain_template_networking_stays_on_loopback() -> None:
    text = (vm.RECIPES / "domain.xml").read_text()
    assert "addr=0x10" in text and "virtio-net-pci" in text
    assert "0.0.0.0" not in text
    # the netdev comes from VM._netdev, which always restricts and binds 127.0.0.1
    machine = object.__new__(vm.VM)
    machine.ssh_port = 2222
    netdev = vm.VM._netdev(machine, {8080: 40000})
    assert netdev == ("user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
                      "hostfwd=tcp:127.0.0.1:40000-:8080")


def test_credentials() -> None:
    assert vm._credential("ssh.authorized_keys.root", "ssh-ed25519 AAAA me") == \
        "io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA me"
    dropin = vm._skip_dropin("pacman-init.service")
    binary = vm._credential("systemd.unit-dropin.pacman-init.service", dropin)
    prefix = "io.systemd.credential.binary:systemd.unit-dropin.pacman-init.service="
    assert binary.startswith(prefix)
    assert base64.b64decode(binary[len(prefix):]).decode() == dropin
    assert "ConditionPathExists=" in dropin


def test_key_pair(tmp_path: Path) -> None:
    import paramiko

    keys = vm.KeyPair.create(tmp_path, "pytest-flake-pf-test")
    assert keys.public.startswith("ssh-ed25519 ") and keys.public.endswith(" pytest-flake-pf-test")
    assert keys.private.stat().st_mode & 0o777 == 0o600
    loaded = paramiko.Ed25519Key.from_private_key_file(str(keys.private))
    assert keys.public.split()[1] == loaded.get_base64()
    assert vm.KeyPair.create(tmp_path, "other") == keys  # reused within the session


def test_host_keys_from_a_cloud_init_console() -> None:
    console = ("noise\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3Nz root@arch\n"
               "ecdsa-sha2-nistp256 AAAAE2Vj root@arch\n-----END SSH HOST KEY KEYS-----\n")
    assert vm._hostkey_lines_from_console(console) == ("ssh-ed25519 AAAAC3Nz", "ecdsa-sha2-nistp256 AAAAE2Vj")
    assert vm._hostkey_lines_from_console("booting...") == ()


@pytest.mark.skipif(not (shutil.which("mkfs.vfat") and shutil.which("mtype")), reason="needs dosfstools, mtools")
def test_cloud_init_seed(tmp_path: Path) -> None:
    seed = vm.make_seed(tmp_path / "seed.img", "ssh-ed25519 AAAA key", ("pacman-init.service",), "pf-x-vm-1")
    label = subprocess.run(["mlabel", "-i", str(seed), "-s", "::"], capture_output=True, text=True).stdout
    assert "CIDATA" in label
    user_data = subprocess.run(["mtype", "-i", str(seed), "::user-data"], capture_output=True, text=True).stdout
    assert user_data.startswith("#cloud-config") and "ssh-ed25519 AAAA key" in user_data
    assert "pacman-init.service" in user_data
    meta = subprocess.run(["mtype", "-i", str(seed), "::meta-data"], capture_output=True, text=True).stdout
    assert "instance-id: pf-x-vm-1" in meta


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.resolve(lambda n: None, lambda n: None, tmp_path, environ=env)


def test_accel_setting_wins(tmp_path: Path) -> None:
    assert vm.choose_accel(settings(tmp_path, PYTEST_FLAKE_VM_ACCEL="tcg"), None, tmp_path) == "tcg"
    assert vm.choose_accel(settings(tmp_path, PYTEST_FLAKE_VM_ACCEL="kvm"), None, tmp_path) == "kvm"


def test_accel_auto_probes_once_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path | None] = []

    def probe(kernel: Path | None) -> tuple[bool, str]:
        calls.append(kernel)
        return False, "hangs"

    monkeypatch.setattr(vm, "probe_kvm", probe)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    auto = settings(tmp_path)
    assert vm.choose_accel(auto, kernel, tmp_path) == "tcg"
    assert vm.choose_accel(auto, kernel, tmp_path) == "tcg"
    assert calls == [kernel]
    remote = settings(tmp_path, LIBVIRT_DEFAULT_URI="qemu+ssh://elsewhere/system")
    assert vm.choose_accel(remote, kernel, tmp_path / "other") == "tcg" and len(calls) == 1


def test_kvm_probe_without_a_kernel_does_not_trust_the_device(tmp_path: Path) -> None:
    works, why = vm.probe_kvm(None)
    assert not works and why


def test_unreachable_libvirt_says_how_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(VMError, match="unreachable") as err:
        vm.connect(f"qemu+unix:///system?socket={tmp_path}/nothing-listens-here")
    assert "libvirtd" in str(err.value) and "--libvirt-uri" in str(err.value)


def test_sweep_ignores_foreign_names(tmp_path: Path) -> None:
    vm.sweep(["not-ours", ""], settings(tmp_path), root=tmp_path)  # returns before touching libvirt
    assert not (tmp_path / "vms").exists()
