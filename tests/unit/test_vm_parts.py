"""VM building blocks without daemons: saved-state headers, domain XML, credentials,
seeds, keys, the KVM decision."""

from __future__ import annotations

import base64
import io
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import images, vm
from pytest_flake.config import Settings
from pytest_flake.errors import VMError
from pytest_flake.vm.savefile import header_with_xml, xml_of_header

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


def test_save_header_is_rewritten_and_the_cookie_kept(tmp_path: Path) -> None:
    src = tmp_path / "a.save"
    fake_save(src)
    assert vm.read_save_xml(src) == XML
    header = vm.read_save_header(src)
    assert len(header) == 92 + 8192 and src.read_bytes().startswith(header)
    new = vm.restore_xml(vm.read_save_xml(src), name="pf-aaaa0000-vm-2", overlay=tmp_path / "o2.qcow2",
                         console=tmp_path / "c2.log",
                         netdev="user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:22002-:22")
    patched = header_with_xml(header, new)
    assert len(patched) == len(header)
    got = xml_of_header(patched)
    assert "<name>pf-aaaa0000-vm-2</name>" in got and "b73a346e" not in got
    assert str(tmp_path / "o2.qcow2") in got and str(tmp_path / "c2.log") in got
    assert "hostfwd=tcp:127.0.0.1:22002-:22" in got and "22001" not in got
    assert "id='7'" not in got and "restrict=on" in got
    fields = struct.unpack("<16s19I", patched[:92])
    data = patched[92:92 + fields[2]]
    assert data[fields[5]:].split(b"\0", 1)[0] == COOKIE  # the cookie moved with the XML


def test_save_header_too_small(tmp_path: Path) -> None:
    src = tmp_path / "a.save"
    fake_save(src, data_len=len(XML) + len(COOKIE) + 2)
    with pytest.raises(VMError, match="does not fit"):
        header_with_xml(vm.read_save_header(src), XML + "<!--" + "x" * 100 + "-->")


def test_not_a_save_image(tmp_path: Path) -> None:
    bogus = tmp_path / "x.save"
    bogus.write_bytes(b"\0" * 200)
    with pytest.raises(VMError, match="not a libvirt save image"):
        vm.read_save_xml(bogus)


def test_domain_template_networking_stays_on_loopback() -> None:
    text = (vm.RECIPES / "domain.xml").read_text()
    assert "addr=0x10" in text and "virtio-net-pci" in text
    assert "0.0.0.0" not in text
    # the netdev always restricts and binds 127.0.0.1
    assert vm.netdev(2222, {8080: 40000}) == ("user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
                                              "hostfwd=tcp:127.0.0.1:40000-:8080")


def boot_spec(tmp_path: Path, **changes: Any) -> vm.BootSpec:
    args: dict[str, Any] = dict(
        name="pf-aaaa0000-vm-1", session="pf-aaaa0000", image_key="debian-abc", accel="tcg", memory=1024, cpus=2,
        overlay=tmp_path / "vm-1.qcow2", console=tmp_path / "vm-1.console.log", netdev=vm.netdev(2222),
        kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img", cmdline="root=/dev/vda console=ttyS0",
        oem_strings=("io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA me",),
    )
    args.update(changes)
    return vm.BootSpec(**args)


def test_cold_boot_domain_xml(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(vm.boot_xml(boot_spec(tmp_path)))
    assert root.get("type") == "qemu" and root.findtext("name") == "pf-aaaa0000-vm-1"
    assert root.findtext("memory") == "1024" and root.findtext("vcpu") == "2"
    assert root.findtext("description") == "pytest-flake session=pf-aaaa0000 image=debian-abc"
    assert [child.tag for child in root.find("os") or []] == ["type", "kernel", "initrd", "cmdline", "smbios"]
    assert root.findtext("os/cmdline") == "root=/dev/vda console=ttyS0"
    assert [e.text for e in root.findall("sysinfo/oemStrings/entry")] == [
        "io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA me"]
    disks = root.findall("devices/disk")
    assert len(disks) == 1 and disks[0].find("source").get("file") == str(tmp_path / "vm-1.qcow2")  # type: ignore[union-attr]
    assert root.find("devices/serial/source").get("path") == str(tmp_path / "vm-1.console.log")  # type: ignore[union-attr]
    assert root.find("seclabel") is None
    args = [a.get("value") for a in root.iter(f"{{{vm.QEMU_NS}}}arg")]
    assert args == ["-netdev", vm.netdev(2222), "-device", "virtio-net-pci,netdev=pfnet,addr=0x10"]
    seeded = ET.fromstring(vm.boot_xml(boot_spec(tmp_path, kernel=None, accel="kvm", seed=tmp_path / "s.img",
                                                 seclabel="+64055:+994")))
    assert seeded.get("type") == "kvm" and seeded.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert [d.findtext("target[@dev]") is not None for d in seeded.findall("devices/disk")] == [True, True]
    assert [d.find("target").get("dev") for d in seeded.findall("devices/disk")] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert seeded.find("devices/disk[2]/readonly") is not None
    assert seeded.find("seclabel").get("relabel") == "no" and seeded.findtext("seclabel/label") == "+64055:+994"  # type: ignore[union-attr]


def test_every_domain_value_is_escaped(tmp_path: Path) -> None:
    """Paths, the kernel command line, credentials and the image key are all escaped (not only some)."""
    import xml.etree.ElementTree as ET

    odd = tmp_path / "a&b <c> 'd' \"q\""
    spec = boot_spec(tmp_path, overlay=odd / "vm.qcow2", console=odd / "console.log", seed=odd / "seed.img",
                     kernel=odd / "vmlinuz", initrd=odd / "initrd", cmdline="x='<&>'", image_key="k&<'>",
                     oem_strings=("io.systemd.credential:x=<a & 'b'>",))
    root = ET.fromstring(vm.boot_xml(spec))  # well-formed
    assert root.findtext("os/kernel") == str(odd / "vmlinuz") and root.findtext("os/initrd") == str(odd / "initrd")
    assert root.findtext("os/cmdline") == "x='<&>'"
    assert root.findtext("description") == "pytest-flake session=pf-aaaa0000 image=k&<'>"
    assert root.findtext("sysinfo/oemStrings/entry") == "io.systemd.credential:x=<a & 'b'>"
    sources = [d.find("source").get("file") for d in root.findall("devices/disk")]  # type: ignore[union-attr]
    assert sources == [str(odd / "vm.qcow2"), str(odd / "seed.img")]
    assert root.find("devices/serial/source").get("path") == str(odd / "console.log")  # type: ignore[union-attr]
    # and a restore of it (the same builder) keeps them escaped
    again = ET.fromstring(vm.restore_xml(vm.boot_xml(spec), name="n&<", overlay=odd / "o2", console=odd / "c2",
                                         netdev=vm.netdev(3333)))
    assert again.findtext("name") == "n&<" and again.findtext("os/cmdline") == "x='<&>'"


def test_credentials() -> None:
    assert vm.credential("ssh.authorized_keys.root", "ssh-ed25519 AAAA me") == \
        "io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA me"
    dropin = vm.skip_dropin("pacman-init.service")
    binary = vm.credential("systemd.unit-dropin.pacman-init.service", dropin)
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
    assert vm.hostkey_lines_from_console(console) == ("ssh-ed25519 AAAAC3Nz", "ecdsa-sha2-nistp256 AAAAE2Vj")
    assert vm.hostkey_lines_from_console("booting...") == ()


def _iso_file(iso: object, name: str) -> str:
    data = io.BytesIO()
    iso.get_file_from_iso_fp(data, rr_path=f"/{name}")  # type: ignore[attr-defined]
    return data.getvalue().decode()


def test_cloud_init_seed(tmp_path: Path) -> None:
    """An ISO 9660 volume labelled cidata, read back by its Rock Ridge and Joliet names (as cloud-init mounts it)."""
    import pycdlib

    host_key = vm.HostKey.generate()
    user_data = vm.render_user_data(vm.cloud_config("ssh-ed25519 AAAA key", host_key, ("pacman-init.service",)))
    seed = vm.make_seed(tmp_path / "seed.img", user_data, "pf-x-vm-1")
    assert seed.stat().st_mode & 0o777 == 0o600  # it holds the host key
    assert seed.read_bytes()[0x8001:0x8006] == b"CD001"
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert _iso_file(iso, "user-data") == user_data
        assert "instance-id: pf-x-vm-1" in _iso_file(iso, "meta-data")
        joliet = io.BytesIO()
        iso.get_file_from_iso_fp(joliet, joliet_path="/meta-data")
        assert joliet.getvalue().decode() == _iso_file(iso, "meta-data")
    finally:
        iso.close()
    assert user_data.startswith("#cloud-config\n") and "ssh-ed25519 AAAA key" in user_data
    assert "pacman-init.service" in user_data and host_key.public in user_data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.img"]  # nothing staged beside it


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

    monkeypatch.setattr("pytest_flake.vm.accel.probe_kvm", probe)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    auto = settings(tmp_path)
    assert vm.choose_accel(auto, kernel, tmp_path) == "tcg"
    assert vm.choose_accel(auto, kernel, tmp_path) == "tcg"
    assert calls == [kernel]
    remote = settings(tmp_path, LIBVIRT_DEFAULT_URI="qemu+ssh://elsewhere/system")
    assert vm.choose_accel(remote, kernel, tmp_path / "other") == "tcg" and len(calls) == 1



def test_sessions_that_start_at_once_probe_kvm_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-xdist workers start their first VMs together: one probes, the others wait for its verdict."""
    import threading
    import time

    calls: list[Path | None] = []

    def probe(kernel: Path | None) -> tuple[bool, str]:
        calls.append(kernel)
        time.sleep(0.3)  # a real probe boots a kernel: long enough for a sibling to arrive
        return True, "booted"

    monkeypatch.setattr("pytest_flake.vm.accel.probe_kvm", probe)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    answers: list[str] = []
    workers = [threading.Thread(target=lambda: answers.append(vm.choose_accel(settings(tmp_path), kernel, tmp_path)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert answers == ["kvm"] * 3
    assert calls == [kernel]

def test_kvm_probe_without_a_kernel_does_not_trust_the_device(tmp_path: Path) -> None:
    works, why = vm.probe_kvm(None)
    assert not works and why


def test_unreachable_libvirt_says_how_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(VMError, match="unreachable") as err:
        vm.connect(f"qemu+unix:///system?socket={tmp_path}/nothing-listens-here")
    assert "libvirtd" in str(err.value) and "--libvirt-uri" in str(err.value)


class FakeDomain:
    def __init__(self, name: str, removed: list[str]) -> None:
        self._name, self.removed = name, removed

    def name(self) -> str:
        return self._name

    def isActive(self) -> bool:  # noqa: N802 (libvirt's name)
        return True

    def destroy(self) -> None:
        self.removed.append(f"destroy {self._name}")

    def undefine(self) -> None:
        self.removed.append(f"undefine {self._name}")


class FakeConnection:
    def __init__(self, names: list[str]) -> None:
        self.removed: list[str] = []
        self.domains = [FakeDomain(name, self.removed) for name in names]
        self.closed = False

    def listAllDomains(self, flags: int) -> list[FakeDomain]:  # noqa: N802 (libvirt's name)
        return self.domains

    def close(self) -> None:
        self.closed = True


def test_sweep_removes_only_the_domains_of_dead_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("libvirt")
    conn = FakeConnection(["pf-dead0001-vm-1", "pf-dead0001-vm-2", "pf-dead00011-vm-1", "pf-live0002-vm-1",
                           "not-ours-vm-1", "someone-elses-domain"])
    monkeypatch.setattr("pytest_flake.vm.maintenance.connect", lambda uri: conn)
    vm.component(settings(tmp_path)).sweep(["pf-dead0001", "not-ours", ""], tmp_path)
    # only the dead session's domains; not one whose id merely starts with it, nor a foreign "session" id
    assert conn.removed == ["destroy pf-dead0001-vm-1", "undefine pf-dead0001-vm-1",
                            "destroy pf-dead0001-vm-2", "undefine pf-dead0001-vm-2"]
    assert conn.closed
    conn = FakeConnection(["not-ours-vm-1"])
    vm.component(settings(tmp_path)).sweep(["not-ours", ""], tmp_path)  # no id of ours: libvirt is never asked
    assert conn.removed == [] and not conn.closed


# --------------------------------------------------------------------------- warm states across sessions

HYPERVISOR = vm.Hypervisor(qemu_binary="/usr/bin/qemu-system-x86_64", qemu_version=7002022, libvirt_version=9000000)


def fake_image(tmp_path: Path, name: str = "debian-abc") -> images.Image:
    folder = tmp_path / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (folder / file).write_bytes(b"x" * 100)
    return images.Image(name="debian", disk=folder / "disk.qcow2", key=name, kernel=folder / "vmlinuz",
                    initrd=folder / "initrd.img", cmdline="root=/dev/vda")


def key_of(image: images.Image, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(memory=1024, cpus=1, accel="tcg", uri="qemu:///system", hypervisor=HYPERVISOR)
    args.update(changes)
    return vm.warm_key(image, **args)


def test_warm_key_covers_what_makes_a_state_unusable(tmp_path: Path) -> None:
    image = fake_image(tmp_path)
    base = key_of(image)
    assert key_of(image) == base  # stable
    template = tmp_path / "domain.xml"
    template.write_text((vm.RECIPES / "domain.xml").read_text() + "<!-- changed -->")
    variants = {
        "memory": key_of(image, memory=2048),
        "cpus": key_of(image, cpus=2),
        "accel": key_of(image, accel="kvm"),
        "uri": key_of(image, uri="qemu:///session"),
        "template": key_of(image, template=template),
        "qemu version": key_of(image, hypervisor=vm.Hypervisor(HYPERVISOR.qemu_binary, 8000000, 9000000)),
        "libvirt version": key_of(image, hypervisor=vm.Hypervisor(HYPERVISOR.qemu_binary, 7002022, 10000000)),
        "qemu binary": key_of(image, hypervisor=vm.Hypervisor("/opt/qemu/bin/qemu-system-x86_64", 7002022,
                                                              9000000)),
        "image": key_of(fake_image(tmp_path, "debian-def")),
    }
    for what, key in variants.items():
        assert key != base, what
    # the same image rebuilt in place (same recipe, same path): another disk under the overlay
    image.disk.write_bytes(b"y" * 200)
    assert key_of(image) != base
    assert key_of(image, template=vm.RECIPES / "domain.xml")["template"] == base["template"]
    # one folder per image and size: a new QEMU or a rebuilt image replaces the state in it
    assert vm.warm_slot(key_of(image)) == vm.warm_slot(base)
    assert vm.warm_slot(variants["qemu version"]) == vm.warm_slot(base)
    assert vm.warm_slot(variants["memory"]) != vm.warm_slot(base)
    assert vm.warm_slot(variants["cpus"]) != vm.warm_slot(base)


def test_warm_starts_can_be_turned_off() -> None:
    assert vm.warm_enabled({}) and vm.warm_enabled({"PYTEST_FLAKE_VM_WARM": "1"})
    for off in ("0", "false", "no", "off", " OFF "):
        assert not vm.warm_enabled({"PYTEST_FLAKE_VM_WARM": off})


def write_state(store: vm.WarmStore, key: dict[str, Any], session: str = "pf-00000001") -> Path:
    with store.create(key, session) as tmp:
        assert tmp is not None and tmp.name.endswith(f".{session}.tmp")
        (tmp / "state.save").write_bytes(b"S" * 1000)
        (tmp / "overlay.qcow2").write_bytes(b"O" * 500)
        (tmp / "id_ed25519").write_bytes(b"PRIVATE")
        (tmp / "id_ed25519.pub").write_text("ssh-ed25519 AAAA warm\n")
        vm.WarmStore.publish(tmp, key, hostkeys=("ssh-ed25519 HOSTKEY",), boot_seconds=30.0,
                             session_id=session)
    return store.root / vm.warm_slot(key)


def test_warm_state_round_trip_and_modes(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(fake_image(tmp_path))
    assert store.load(key) is None
    folder = write_state(store, key)
    state = store.load(key)
    assert state is not None and state.dir == folder
    assert state.hostkeys == ("ssh-ed25519 HOSTKEY",) and state.created_by == "pf-00000001"
    assert state.public_key == "ssh-ed25519 AAAA warm"
    assert state.private_key.stat().st_mode & 0o777 == 0o600
    assert state.save.stat().st_mode & 0o777 == 0o400 and state.overlay.stat().st_mode & 0o777 == 0o444
    assert store.root.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == [folder.name]  # no temporary folder left
    assert store.usage()[0] == 1
    with store.create(key, "pf-00000002") as tmp:
        assert tmp is None  # a valid state exists: nothing to write


def test_stale_warm_state_is_ignored_then_replaced(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    image = fake_image(tmp_path)
    old = key_of(image)
    write_state(store, old)
    new = key_of(image, hypervisor=vm.Hypervisor(HYPERVISOR.qemu_binary, 8000000, 9000000))  # QEMU upgraded
    assert store.load(new) is None
    write_state(store, new, session="pf-00000002")
    state = store.load(new)
    assert state is not None and state.created_by == "pf-00000002"
    assert store.load(old) is None and store.usage()[0] == 1


@pytest.mark.parametrize("damage", ["no state.json", "truncated save", "missing overlay", "bad json"])
def test_incomplete_warm_state_is_ignored_then_replaced(tmp_path: Path, damage: str) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(fake_image(tmp_path))
    folder = write_state(store, key)
    if damage == "no state.json":
        (folder / "state.json").unlink()
    elif damage == "truncated save":  # a changed file: refused and dropped
        with open(folder / "state.save", "r+b") as handle:
            handle.truncate(10)
    elif damage == "missing overlay":
        (folder / "overlay.qcow2").unlink()
    else:
        (folder / "state.json").write_text("{not json")
    assert store.load(key) is None
    assert store.usage()[0] == (0 if damage in ("no state.json", "truncated save") else 1)
    write_state(store, key, session="pf-00000002")
    state = store.load(key)
    assert state is not None and state.created_by == "pf-00000002"
    assert not list(store.root.glob(".*"))  # the damaged one is gone, not set aside


def test_half_written_states_of_dead_writers_are_removed(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(fake_image(tmp_path))
    slot = vm.warm_slot(key)
    crashed = store.root / f".{slot}.pf-deadbeef.tmp"
    crashed.mkdir(parents=True)
    (crashed / "state.save").write_bytes(b"half")
    other = store.root / ".0123456789abcdef.pf-dead0002.tmp"
    other.mkdir()
    assert store.load(key) is None  # never read
    write_state(store, key)  # a writer holds the slot's lock: leftovers of that slot are dead
    assert not crashed.exists() and other.exists()
    store.sweep(["pf-dead0002"])  # a dead session's half-written states go; complete ones stay
    assert not other.exists() and store.load(key) is not None


def test_sweep_keeps_the_warm_states(tmp_path: Path) -> None:
    store = vm.WarmStore(images.image_cache(tmp_path) / "warm")
    key = key_of(fake_image(tmp_path))
    write_state(store, key, session="pf-00000001")
    leftover = store.root / ".0123456789abcdef.pf-00000001.tmp"
    leftover.mkdir()
    (tmp_path / "vms" / "pf-00000001").mkdir(parents=True)
    vm.sweep(["pf-00000001"], tmp_path, uri=f"qemu+unix:///system?socket={tmp_path}/none")
    assert not (tmp_path / "vms" / "pf-00000001").exists() and not leftover.exists()
    assert store.load(key) is not None


def test_failed_restore_drops_only_the_state_it_tried(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(fake_image(tmp_path))
    write_state(store, key)
    tried = store.load(key)
    assert tried is not None
    shutil.rmtree(tried.dir)
    write_state(store, key, session="pf-00000002")  # another session replaced it meanwhile
    store.drop(tried)
    assert store.load(key) is not None
    current = store.load(key)
    assert current is not None
    store.drop(current)
    assert store.load(key) is None and not list(store.root.glob(".*.trash"))


def test_states_of_removed_images_are_pruned(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    old_image, new_image = fake_image(tmp_path, "debian-old"), fake_image(tmp_path, "debian-new")
    write_state(store, key_of(old_image))
    shutil.rmtree(old_image.disk.parent)  # a new recipe's build removes the older image
    write_state(store, key_of(new_image))
    assert store.usage()[0] == 1 and store.load(key_of(new_image)) is not None


def test_restored_domain_names_the_new_session(tmp_path: Path) -> None:
    xml = XML.replace("<name>", "<title>pytest-flake VM of session pf-aaaa0000</title>\n  "
                      "<description>pytest-flake session=pf-aaaa0000 image=debian-x</description>\n  <name>", 1)
    new = vm.restore_xml(xml, name="pf-bbbb1111-vm-1", overlay=tmp_path / "o.qcow2", console=tmp_path / "c",
                         netdev="user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:22002-:22", session="pf-bbbb1111")
    assert "pf-aaaa0000" not in new
    assert "session=pf-bbbb1111 image=debian-x" in new and "session pf-bbbb1111" in new


def test_pool_reads_the_warm_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_flake.session import Session

    monkeypatch.setenv("PYTEST_FLAKE_VM_WARM", "0")
    pool = vm.VMPool(settings(tmp_path), Session(root=tmp_path))
    assert not pool.warm and pool.store.root == tmp_path / "images" / "warm"
    monkeypatch.delenv("PYTEST_FLAKE_VM_WARM")
    assert vm.VMPool(settings(tmp_path), Session(root=tmp_path)).warm


def test_warm_console_begins_with_the_saved_boot_log(tmp_path: Path) -> None:
    state = vm.WarmState(dir=tmp_path, id="x", hostkeys=(), boot_seconds=30.0, created_by="pf-12345678")
    assert vm.boot_log_of(state) == (
        "[pytest-flake: restored from a warm state saved by session pf-12345678; the lines above are its boot]\n")
    (tmp_path / "console.log").write_text("Linux version 6.1\nlogin:")
    text = vm.boot_log_of(state)
    assert text.startswith("Linux version 6.1\nlogin:\n[pytest-flake: restored from a warm state")


def test_vm_is_a_registry_component(tmp_path: Path) -> None:
    from pytest_flake.components import Component, LazyComponent, components

    (entry,) = components(settings(tmp_path), ["vm"])
    assert isinstance(entry, LazyComponent)
    made = entry.load()
    assert isinstance(made, vm.VMComponent) and isinstance(made, Component) and made.name == "vm"


def test_two_pools_of_one_session_keep_apart(tmp_path: Path) -> None:
    """A test may open its own pool on the session: closing it leaves the session pool's key pair."""
    from pytest_flake.session import Session

    session = Session(root=tmp_path)
    first = vm.VMPool(settings(tmp_path), session)
    second = vm.VMPool(settings(tmp_path), session)
    assert first.dir != second.dir and first.dir.parent == second.dir.parent == tmp_path / "vms" / session.id
    names = [first.next_name(), second.next_name(), first.next_name()]
    assert len(set(names)) == 3 and all(n.startswith(f"{session.id}-vm-") for n in names)
    key = first.keys.private
    second.keys  # noqa: B018  (made in its own folder)
    second.close()
    assert key.is_file() and not second.dir.exists()
    first.close()
    assert not (tmp_path / "vms").exists()  # the last pool out removes the session's folder and vms/


def test_the_pool_connects_again_when_libvirt_dropped_its_connection(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted libvirtd drops its clients: the next use of the pool's connection opens a new one."""
    from pytest_flake.session import Session

    class Conn:
        def __init__(self) -> None:
            self.alive, self.closed = 1, False

        def isAlive(self) -> int:  # noqa: N802 (libvirt's name)
            return self.alive

        def close(self) -> None:
            self.closed = True

    made: list[Conn] = []

    def connect(uri: str) -> Conn:
        made.append(Conn())
        return made[-1]

    monkeypatch.setattr("pytest_flake.vm.pool.connect", connect)
    with Session(root=tmp_path) as session:
        pool = vm.VMPool(settings(tmp_path), session)
        first = pool.conn
        assert pool.conn is first and len(made) == 1  # alive: the same connection
        first.alive = 0  # what libvirt says once the daemon went away
        second = pool.conn
        assert second is not first and first.closed and len(made) == 2
        pool._conn = None
