"""How a VM starts, without a daemon: the pool picks a launcher from the URI, both launchers take the
VM's domain edit to the XML libvirt defines, and what an edit does keys the warm state."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import vm
from pytest_flake.config import Settings
from pytest_flake.errors import VMError
from pytest_flake.images import Image
from pytest_flake.session import Session
from pytest_flake.vm.domain import edit_fingerprint
from pytest_flake.vm.launch import Launcher
from pytest_flake.vm.remotehost import RemoteImage


def settings(tmp_path: Path, uri: str) -> Settings:
    return Settings.resolve(lambda n: uri if n == "libvirt_uri" else None, lambda n: None, tmp_path, environ={})


def add_watchdog(name: str, root: ET.Element) -> None:
    """A user's edit: a watchdog device."""
    devices = root.find("devices")
    assert devices is not None
    ET.SubElement(devices, "watchdog", {"model": "i6300esb", "action": "reset"})


def name_it(name: str, root: ET.Element) -> None:
    """A user's edit that writes the VM's name into the domain's description."""
    description = root.find("description")
    assert description is not None
    description.text = f"{description.text} edited-for={name}"


@pytest.mark.parametrize(("uri", "kind"), [("qemu:///system", vm.LocalLauncher),
                                           ("qemu+ssh://root@build-box/system", vm.RemoteLauncher)])
def test_the_pool_picks_the_launcher_from_the_uri_and_hands_every_vm_the_edit(
        tmp_path: Path, uri: str, kind: type) -> None:
    with Session(root=tmp_path) as session:
        pool = vm.VMPool(settings(tmp_path, uri), session, edit_domain=add_watchdog)
        first, second = pool.vm(), pool.vm()
        assert type(first.launcher) is type(second.launcher) is kind and first.launcher is not second.launcher
        assert first.edit_domain is second.edit_domain is add_watchdog
        assert vm.VMPool(settings(tmp_path, uri), session).vm().edit_domain is None
        assert vm.launcher_type(uri) is kind


def test_every_launcher_has_every_step_of_the_protocol() -> None:
    wanted = {name for name in dir(Launcher) if not name.startswith("_")} | set(Launcher.__annotations__)
    for kind in (vm.LocalLauncher, vm.RemoteLauncher):
        config = vm.VMConfig(name="pf-1-vm-1", dir=Path("/nowhere"), session_id="pf-1", image="debian", memory=1,
                             cpus=1, disk_size=0, timeout=1.0)
        launcher: Launcher = (vm.RemoteLauncher(config, lambda: None, FakeHost())  # type: ignore[arg-type]
                              if kind is vm.RemoteLauncher else vm.LocalLauncher(config, lambda: None))
        assert {name for name in wanted if not hasattr(launcher, name)} == set(), kind
        assert callable(kind.sweep_host) and callable(kind.check_host)


# --------------------------------------------------------------------------- a cold boot on fakes


class FakeDomain:
    """A domain that stops at once: the VM's wait for SSH ends there, after the domain was defined."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def isActive(self) -> bool:  # noqa: N802 (libvirt's name)
        return False

    def state(self) -> tuple[int, int]:
        return 5, 1  # shut off

    def resume(self) -> None:
        self.events.append("resume")

    def destroy(self) -> None:
        self.events.append("destroy")

    def undefine(self) -> None:
        self.events.append("undefine")


class FakeConn:
    def __init__(self) -> None:
        self.defined: list[tuple[str, int]] = []
        self.dom = FakeDomain()

    def createXML(self, xml: str, flags: int) -> FakeDomain:  # noqa: N802 (libvirt's name)
        self.defined.append((xml, flags))
        return self.dom


class FakeSSH:
    target = "root@build-box"
    is_open = True

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def forward(self, port: int) -> int:
        return port + 10000

    def cancel(self, port: int) -> None:
        self.cancelled.append(port)


class FakeReader:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class FakeHost:
    """The other host's side: volumes are names in a list, ports count up."""

    uri = "qemu+ssh://root@build-box/system"

    def __init__(self) -> None:
        self.ssh = FakeSSH()
        self.volumes: list[str] = []
        self.readers: list[FakeReader] = []
        self.released: list[int] = []
        self._next = 21000

    def path(self, name: str) -> str:
        return f"/var/lib/libvirt/images/pytest-flake/{name}"

    def base(self, image: Image) -> RemoteImage:
        return RemoteImage(disk=self.path("pf-base-d.qcow2"), disk_format="qcow2")

    def overlay(self, name: str, backing: str, backing_format: str, size: int) -> str:
        self.volumes.append(name)
        return self.path(name)

    def upload(self, name: str, local: Path) -> str:
        self.volumes.append(name)
        return self.path(name)

    def delete(self, name: str) -> None:
        self.volumes.remove(name)

    def console(self, dom: Any, path: Path, name: str) -> FakeReader:
        self.readers.append(FakeReader())
        return self.readers[-1]

    def pick_port(self) -> int:
        self._next += 1
        return self._next

    def release_port(self, port: int) -> None:
        self.released.append(port)


class FakePlatform:
    def __init__(self, image: Image) -> None:
        self.image_ = image
        self.keys: list[dict[str, Any]] = []

    def image(self, spec: str) -> Image:
        return self.image_

    def accel(self, image: Image) -> str:
        return "tcg"

    def kvm_trial_result(self, works: bool, why: str) -> str:
        return "tcg"

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]:
        self.keys.append({"image": image.key, "memory": memory, "uri": "test:///"})
        return self.keys[-1]


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Image:
    """An image whose disk qemu-img never reads: the overlay here is a file, the size there a number."""
    def overlay(image: Image, path: Path, size: int) -> int:
        path.write_bytes(b"overlay")
        return size

    monkeypatch.setattr("pytest_flake.vm.local.create_overlay", overlay)
    monkeypatch.setattr("pytest_flake.vm.remote.disk_info", lambda disk: {"virtual-size": vm.GiB})
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    return Image(name="debian", disk=tmp_path / "base.qcow2", key="debian-test", kernel=kernel, initrd=kernel,
                    cmdline="root=/dev/vda", hostkeys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey",))


def a_vm(tmp_path: Path, image: Image, kind: str, conn: FakeConn, host: FakeHost, *,
         store: vm.WarmStore | None = None, edit: vm.DomainEdit | None = None,
         platform: FakePlatform | None = None) -> vm.VM:
    config = vm.VMConfig(name="pf-1234abcd-vm-1", dir=tmp_path / "vms", session_id="pf-1234abcd", image="debian",
                         memory=1024, cpus=1, disk_size=2 * vm.GiB, timeout=5.0)
    config.dir.mkdir(exist_ok=True)
    launcher: Launcher = (vm.LocalLauncher(config, lambda: conn) if kind == "local" else
                          vm.RemoteLauncher(config, lambda: conn, host))  # type: ignore[arg-type]
    keys = vm.KeyPair(private=tmp_path / "key", public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISession session")
    return vm.VM(config, launcher=launcher, store=store, keys=lambda: keys, platform=platform or FakePlatform(image),
                 edit_domain=edit)


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_the_edit_is_the_last_step_before_the_domain_is_defined(tmp_path: Path, image: Image, kind: str) -> None:
    libvirt = pytest.importorskip("libvirt")
    conn, host = FakeConn(), FakeHost()
    seen: list[tuple[str, str, str]] = []

    def edit(name: str, root: ET.Element) -> None:
        # what it is handed is the finished document: this VM's name, disk and network are in it
        disk = root.find("./devices/disk/source")
        seen.append((name, root.tag, disk.get("file", "") if disk is not None else ""))
        add_watchdog(name, root)
        name_it(name, root)

    machine = a_vm(tmp_path, image, kind, conn, host, edit=edit)
    with pytest.raises(VMError, match="the guest stopped before SSH answered"):
        machine.start()
    overlay = str(machine.overlay) if kind == "local" else host.path("pf-1234abcd-vm-1.qcow2")
    assert seen == [("pf-1234abcd-vm-1", "domain", overlay)]
    [(xml, flags)] = conn.defined
    root = ET.fromstring(xml)
    assert root.find("devices/watchdog") is not None and root.findtext("name") == "pf-1234abcd-vm-1"
    assert root.findtext("description", "").endswith("edited-for=pf-1234abcd-vm-1")
    assert "hostfwd=tcp:127.0.0.1:" in xml  # the edited document is still the whole domain
    if kind == "local":
        assert flags == 0 and root.find("devices/serial/source").get("path") == str(machine.console)  # type: ignore[union-attr]
        assert machine.overlay.exists()
    else:  # started paused, the console read through libvirt, SSH through the tunnel
        assert flags == libvirt.VIR_DOMAIN_START_PAUSED and conn.dom.events == ["resume"]
        assert root.find("devices/serial").get("type") == "pty" and machine.ssh_port == 21001 + 10000  # type: ignore[union-attr]
        assert host.volumes == ["pf-1234abcd-vm-1.qcow2"] and not machine.overlay.exists()
    machine.close()
    assert conn.dom.events[-1] == "undefine" and machine.left_behind == []
    assert not machine.overlay.exists() and not machine.console.exists()
    if kind == "remote":
        assert host.volumes == [] and host.readers[0].stopped and host.ssh.cancelled == [21001]


def test_without_an_edit_the_defined_xml_is_the_built_one(tmp_path: Path, image: Image) -> None:
    pytest.importorskip("libvirt")
    conn = FakeConn()
    machine = a_vm(tmp_path, image, "local", conn, FakeHost())
    with pytest.raises(VMError):
        machine.start()
    root = ET.fromstring(conn.defined[0][0])
    assert root.find("devices/watchdog") is None
    assert root.findtext("description") == "pytest-flake session=pf-1234abcd image=debian-test"
    machine.close()


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_an_edit_keys_the_warm_state(tmp_path: Path, image: Image, kind: str) -> None:
    pytest.importorskip("libvirt")

    def nothing(name: str, root: ET.Element) -> None:
        root.find("name")

    keys = {}
    for label, edit in (("none", None), ("no-op", nothing), ("watchdog", add_watchdog)):
        platform = FakePlatform(image)
        machine = a_vm(tmp_path, image, kind, FakeConn(), FakeHost(), store=vm.WarmStore(tmp_path / "warm"),
                       edit=edit, platform=platform)
        with pytest.raises(VMError):
            machine.start()
        machine.close()
        keys[label] = platform.keys[0]
    assert "domain_edit" not in keys["none"] and keys["no-op"] == keys["none"]  # today's states stay valid
    assert keys["watchdog"]["domain_edit"] and keys["watchdog"] != keys["none"]


def test_what_an_edit_does_is_the_same_for_every_vm_and_session(tmp_path: Path) -> None:
    def spec(name: str, session: str) -> vm.BootSpec:
        return vm.BootSpec(name=name, session=session, image_key="debian-x", accel="tcg", memory=1024, cpus=1,
                           overlay=tmp_path / f"{name}.qcow2", console=tmp_path / f"{name}.log", netdev=vm.netdev(2222),
                           oem_strings=("io.systemd.credential:x=y",))

    def memory(name: str, root: ET.Element) -> None:
        element = root.find("memory")
        assert element is not None
        element.text = "2048"

    one = edit_fingerprint(spec("pf-aaaa-vm-1", "pf-aaaa"), add_watchdog)
    assert one == edit_fingerprint(spec("pf-bbbb-vm-7", "pf-bbbb"), add_watchdog)  # the name it writes is normalised
    assert edit_fingerprint(spec("pf-aaaa-vm-1", "pf-aaaa"), memory) not in ("", one)
    # an edit that writes a VM's name where the key cannot tell it from the rest keys each VM apart
    named = [edit_fingerprint(spec(f"pf-aaaa-vm-{n}", "pf-aaaa"), name_it) for n in (1, 2)]
    assert "" not in named and named[0] != named[1]
    assert edit_fingerprint(spec("pf-aaaa-vm-1", "pf-aaaa"), None) == ""
