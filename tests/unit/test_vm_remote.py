"""libvirt on another host, without a daemon: URI classification, volume and domain XML (no local
paths in it), the console stream reader, sparse uploads, save headers, ports, the volume sweep."""

from __future__ import annotations

import json
import os
import struct
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import vm
from pytest_flake.config import Settings
from pytest_flake.errors import VMError
from pytest_flake.vm import connection, remotehost, streams, volumes, warm
from pytest_flake.vm.domain import BootSpec, boot_xml, restore_xml
from pytest_flake.vm.savefile import HEADER_SIZE, header_length, header_with_xml, xml_of_header

POOL_DIR = volumes.POOL_DIR


@pytest.mark.parametrize(("uri", "expected"), [
    ("qemu:///system", False),
    ("qemu:///session", False),
    ("qemu+unix:///system", False),
    ("qemu+unix:///system?socket=/run/x.sock", False),
    ("test:///default", False),
    ("qemu+ssh://root@build-box/system", True),
    ("qemu+ssh://build-box:2222/system?keyfile=/k", True),
    ("qemu+libssh2://root@build-box/system", True),
    ("qemu+tcp://build-box/system", True),
    ("qemu+tls://build-box/system", True),
    ("qemu://build-box/system", True),  # a host name alone: TLS to it
])
def test_uri_classification(uri: str, expected: bool) -> None:
    assert connection.is_remote(uri) is expected


def test_ssh_url_of_a_libvirt_uri() -> None:
    assert connection.ssh_url("qemu+ssh://root@h:2222/system?keyfile=/k") == "qemu+ssh://root@h:2222/system?keyfile=/k"
    assert connection.ssh_url("qemu+tls://admin@h:16514/system") == "ssh://admin@h"  # libvirt's port is not ssh's
    assert connection.ssh_url("qemu+tcp://h/system") == "ssh://h"
    with pytest.raises(VMError, match="names no host"):
        connection.ssh_url("qemu+ssh:///system")


def test_volume_xml() -> None:
    plain = ET.fromstring(volumes.volume_xml("pf-base-abc.kernel", 1234))
    assert plain.findtext("name") == "pf-base-abc.kernel"
    assert plain.findtext("capacity") == "1234" and plain.find("capacity").get("unit") == "bytes"  # type: ignore[union-attr]
    assert plain.find("target/format").get("type") == "raw"  # type: ignore[union-attr]
    assert plain.findtext("target/permissions/mode") == "0600" and plain.find("backingStore") is None
    overlay = ET.fromstring(volumes.volume_xml("pf-1234abcd-vm-1.qcow2", 8 << 30, "qcow2",
                                              backing=(f"{POOL_DIR}/pf-base-abc.qcow2", "qcow2")))
    assert overlay.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert overlay.findtext("backingStore/path") == f"{POOL_DIR}/pf-base-abc.qcow2"
    assert overlay.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert overlay.find("allocation") is None
    pool = ET.fromstring(volumes.pool_xml())
    assert (pool.get("type"), pool.findtext("name"), pool.findtext("target/path")) == ("dir", "pytest-flake",
                                                                                       POOL_DIR)
    # names are text, never markup
    assert ET.fromstring(volumes.volume_xml("a<b>&c", 1)).findtext("name") == "a<b>&c"


def remote_boot_xml(tmp_path: Path) -> str:
    return boot_xml(BootSpec(
        name="pf-1234abcd-vm-1", session="pf-1234abcd", image_key="debian-x", accel="tcg", memory=1024, cpus=1,
        overlay=Path(f"{POOL_DIR}/pf-1234abcd-vm-1.qcow2"), console=None,
        netdev=vm.netdev(23456), kernel=Path(f"{POOL_DIR}/pf-base-k.kernel"),
        initrd=Path(f"{POOL_DIR}/pf-base-i.initrd"), cmdline="root=/dev/vda console=ttyS0",
        oem_strings=("io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA k",),
        seed=Path(f"{POOL_DIR}/pf-1234abcd-vm-1.seed.img"), seclabel=None,
    ))


def file_paths(xml: str) -> list[str]:
    """Every absolute path in a domain's attributes and texts."""
    root = ET.fromstring(xml)
    found = []
    for element in root.iter():
        for value in [*(element.attrib.values()), element.text or ""]:
            found += [word for word in value.replace(",", " ").split() if word.startswith("/")]
    return found


def test_remote_domain_has_no_local_paths(tmp_path: Path) -> None:
    xml = remote_boot_xml(tmp_path)
    paths = file_paths(xml)
    assert paths, "the domain names its volumes"
    allowed = (f"{POOL_DIR}/", "/dev/urandom")  # volumes in the pool there; the host's own RNG device
    assert [p for p in paths if not p.startswith(allowed)] == []
    root = ET.fromstring(xml)
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty" and serial.find("source") is None
    console = root.find("devices/console")
    assert console is not None and console.get("type") == "pty"
    assert console.find("target").get("type") == "serial"  # type: ignore[union-attr]
    assert root.find("seclabel") is None  # libvirt's own labelling of its volumes there
    disks = [d.find("source").get("file") for d in root.findall("devices/disk")]  # type: ignore[union-attr]
    assert disks == [f"{POOL_DIR}/pf-1234abcd-vm-1.qcow2", f"{POOL_DIR}/pf-1234abcd-vm-1.seed.img"]
    assert "hostfwd=tcp:127.0.0.1:23456-:22" in xml and "restrict=on" in xml
    # the local document, for contrast, names a local console file
    local = boot_xml(BootSpec(name="x", session="pf-1", image_key="k", accel="tcg", memory=1, cpus=1,
                              overlay=tmp_path / "o.qcow2", console=tmp_path / "c.log", netdev=vm.netdev(1)))
    assert str(tmp_path / "c.log") in file_paths(local)


SAVED = f"""<domain type='qemu' id='3' xmlns:qemu='{vm.QEMU_NS}'>
  <name>pf-1234abcd-vm-1</name>
  <uuid>b73a346e-39e4-4d0e-8589-af2eb5bda59d</uuid>
  <devices>
    <disk type='file' device='disk'>
      <source file='{POOL_DIR}/pf-1234abcd-vm-1.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='{POOL_DIR}/pf-base-abc.qcow2'/></backingStore>
    </disk>
    <serial type='pty'><source path='/dev/pts/4'/><target port='0'/><alias name='serial0'/></serial>
    <console type='pty' tty='/dev/pts/4'><source path='/dev/pts/4'/><target type='serial' port='0'/>
      <alias name='serial0'/></console>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:21000-:22'/>
  </qemu:commandline>
</domain>"""


def test_restore_on_the_host_drops_the_chain_and_the_old_pty() -> None:
    new = restore_xml(SAVED, name="pf-99999999-vm-4", overlay=Path(f"{POOL_DIR}/pf-99999999-vm-4.qcow2"),
                      console=None, netdev=vm.netdev(22222), session="pf-99999999", new_chain=True)
    root = ET.fromstring(new)
    assert root.findtext("name") == "pf-99999999-vm-4"
    assert root.findtext("uuid") != "b73a346e-39e4-4d0e-8589-af2eb5bda59d"
    assert root.find("devices/disk/backingStore") is None  # libvirt probes: new overlay -> saved overlay -> base
    assert "/dev/pts/4" not in new and root.find("devices/console").get("tty") is None  # type: ignore[union-attr]
    assert len(root.findall("devices/console")) == 1  # the saved console (and its alias) is kept, not doubled
    assert "hostfwd=tcp:127.0.0.1:22222-:22" in new and "21000" not in new
    same = restore_xml(SAVED, name="pf-1234abcd-vm-1", overlay=Path(f"{POOL_DIR}/pf-1234abcd-vm-1.run.qcow2"),
                       console=None, netdev=vm.netdev(21000), new_chain=True, keep_uuid=True)
    assert ET.fromstring(same).findtext("uuid") == "b73a346e-39e4-4d0e-8589-af2eb5bda59d"


def test_save_header_bytes_round_trip() -> None:
    xml = SAVED.encode() + b"\0"
    cookie = b"<cookie/>\0"
    data_len = 8192
    head = struct.pack("<16s19I", b"LibvirtQemudSave", 2, data_len, 1, 0, len(xml), *([0] * 14))
    header = head + (xml + cookie).ljust(data_len, b"\0")
    assert header_length(header[:HEADER_SIZE]) == len(header)
    assert xml_of_header(header) == SAVED
    patched = header_with_xml(header, "<domain><name>n</name></domain>")
    assert len(patched) == len(header)  # written over the copy in place: the stream after it stays
    assert xml_of_header(patched) == "<domain><name>n</name></domain>"
    offset = struct.unpack("<16s19I", patched[:HEADER_SIZE])[5]
    assert patched[HEADER_SIZE + offset:].split(b"\0", 1)[0] == b"<cookie/>"
    with pytest.raises(VMError, match="not a libvirt save image"):
        header_length(b"x" * HEADER_SIZE)
    with pytest.raises(VMError, match="does not fit"):
        header_with_xml(header, "<domain>" + "x" * data_len + "</domain>")


# --------------------------------------------------------------------------- the console stream


class FakeStream:
    """A blocking virStream: hands out ``chunks``, then ends (b"") or raises like a domain that stopped."""

    def __init__(self, chunks: list[bytes], error: str | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.finished = self.aborted = False
        self.release = threading.Event()

    def recv(self, nbytes: int) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)[:nbytes]
        if self.error is not None:
            raise RuntimeError(self.error)
        self.release.wait(10)
        return b""

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True
        self.release.set()


class FakeConsoleConn:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream

    def newStream(self, flags: int) -> FakeStream:  # noqa: N802 (libvirt's name)
        assert flags == 0  # blocking: the reader thread waits in recv
        return self.stream


class FakeConsoleDomain:
    def __init__(self) -> None:
        self.opened: list[tuple[Any, Any, int]] = []

    def openConsole(self, dev: Any, stream: Any, flags: int) -> None:  # noqa: N802 (libvirt's name)
        self.opened.append((dev, stream, flags))


def test_console_reader_appends_to_the_local_log(tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    log = tmp_path / "vm.console.log"
    log.write_text("[restored]\n")
    stream = FakeStream([b"Linux version 6.1\r\n", b"Welcome to ", b"Debian\r\nlogin: "])
    stream.release.set()  # then the stream ends: the domain stopped
    dom = FakeConsoleDomain()
    reader = streams.ConsoleReader(FakeConsoleConn(stream), dom, log, name="pf-1-vm-1").start()
    reader.stop()
    assert not reader.alive
    assert dom.opened == [(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)]
    assert log.read_bytes() == b"[restored]\nLinux version 6.1\r\nWelcome to Debian\r\nlogin: "
    assert reader.bytes == len("Linux version 6.1\r\nWelcome to Debian\r\nlogin: ") and stream.finished


def test_console_reader_ends_on_a_stream_error_and_on_stop(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    log = tmp_path / "c.log"
    failing = FakeStream([b"boot\n"], error="domain is not running")
    reader = streams.ConsoleReader(FakeConsoleConn(failing), FakeConsoleDomain(), log).start()
    reader.stop()
    assert log.read_text() == "boot\n" and "not running" in reader.error and failing.aborted
    hanging = FakeStream([b"x"])  # never ends by itself: stop() aborts it
    reader = streams.ConsoleReader(FakeConsoleConn(hanging), FakeConsoleDomain(), log).start()
    reader.stop(timeout=0.2)
    assert not reader.alive and hanging.aborted and reader.error == ""


# --------------------------------------------------------------------------- uploads


def test_sparse_file_callbacks_send_data_and_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with open(path, "wb") as out:
        out.write(b"A" * 4096)
        out.seek(8 * 1024 * 1024)
        out.write(b"B" * 4096)
        out.truncate(16 * 1024 * 1024)  # a hole at the end too
    fd = os.open(path, os.O_RDONLY)
    sparse = streams._SparseFile(fd)
    rebuilt = bytearray()
    holes = 0
    try:
        while True:  # what virStream.sparseSendAll does with the callbacks
            in_data, length = sparse.hole(None, None)
            if not in_data and length > 0:
                rebuilt += b"\0" * length
                holes += length
                sparse.skip(None, length, None)
                continue
            got = sparse.read(None, min(length, 65536), None)
            if not got:
                break
            rebuilt += got
    finally:
        os.close(fd)
    assert bytes(rebuilt) == path.read_bytes()
    assert holes >= 14 * 1024 * 1024  # the holes travel as lengths, not as zeros


def test_content_id_is_of_the_bytes_and_remembered(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    cache = tmp_path / "cache"
    assert volumes.content_id(a, cache) == volumes.content_id(b, cache)  # by content, not by path
    record = json.loads((cache / "remote" / "content-ids.json").read_text())
    assert len(record) == 2
    b.write_bytes(b"different")
    assert volumes.content_id(b, cache) != volumes.content_id(a, cache)


def test_listening_ports_of_ss() -> None:
    out = ("LISTEN 0 128 127.0.0.1:22345 0.0.0.0:*\nLISTEN 0 4096 [::]:22 [::]:*\n"
           "LISTEN 0 5 10.213.1.2:22 0.0.0.0:*\n")
    assert remotehost.listening_ports(out) == {22345, 22}
    assert remotehost.hostfwd_failed("internal error: qemu unexpectedly closed the monitor: Could not set up host "
                                 "forwarding rule 'tcp:127.0.0.1:22-:22'")
    assert not remotehost.hostfwd_failed("Permission denied")


def test_pick_port_avoids_ports_in_use_there(tmp_path: Path) -> None:
    class Done:
        returncode = 0
        stdout = "".join(f"LISTEN 0 1 127.0.0.1:{p} 0.0.0.0:*\n" for p in range(*remotehost.PORT_RANGE) if p != 21111)

    class FakeSSH:
        def run(self, argv: list[str], timeout: float = 60.0) -> Done:
            assert argv == ["ss", "-ltnH"]
            return Done()

    host = remotehost.RemoteHost("qemu+ssh://h/system", conn=lambda: None, ssh=lambda: FakeSSH(),  # type: ignore[arg-type,return-value]
                             cache=tmp_path, session_id="pf-1")
    assert host.pick_port() == 21111  # the only free one
    with pytest.raises(IndexError):
        host.pick_port()  # and it is not handed out twice
    host.release_port(21111)
    assert host.pick_port() == 21111


def test_accel_of_a_remote_host(tmp_path: Path) -> None:
    class Conn:
        def __init__(self, caps: str) -> None:
            self.caps = caps

        def getCapabilities(self) -> str:  # noqa: N802 (libvirt's name)
            return self.caps

    auto = Settings.resolve(lambda n: None, lambda n: None, tmp_path, environ={})
    with_kvm = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>"
    assert remotehost.remote_accel(auto, Conn(with_kvm), "qemu+ssh://h/system") == "kvm"
    assert remotehost.remote_accel(auto, Conn("<guest><domain type='qemu'/></guest>"), "qemu+ssh://h/system") == "tcg"
    tcg = Settings.resolve(lambda n: "tcg" if n == "vm_accel" else None, lambda n: None, tmp_path, environ={})
    assert remotehost.remote_accel(tcg, Conn(with_kvm), "qemu+ssh://h/system") == "tcg"


def test_pool_of_a_remote_uri_never_probes_kvm_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_flake.session import Session

    def no_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the local KVM probe ran for a remote host")

    monkeypatch.setattr("pytest_flake.vm.pool.probe_kernel", no_probe)
    monkeypatch.setattr("pytest_flake.vm.pool.choose_accel", no_probe)
    settings = Settings.resolve(lambda n: "qemu+ssh://root@h/system" if n == "libvirt_uri" else None,
                                lambda n: None, tmp_path, environ={})
    with Session(root=tmp_path) as session:
        pool = vm.VMPool(settings, session)
        pool._conn = type("Conn", (), {"getCapabilities": lambda self: "<domain type='qemu'/>",
                                       "isAlive": lambda self: 1})()
        assert pool.remote is not None
        assert pool.accel(None) == "tcg"  # type: ignore[arg-type]
        assert pool.qemu_user is None and pool.seclabel() is None  # QEMU's files there are libvirt's to label
        pool._conn = None


# --------------------------------------------------------------------------- warm states and the sweep


def test_remote_warm_state_is_kept_locally_small_and_its_volumes_named(tmp_path: Path) -> None:
    forgotten: list[Path] = []
    store = vm.WarmStore(tmp_path / "warm", forget=lambda folder: forgotten.append(folder))
    disk = tmp_path / "disk.qcow2"  # the local image it was made from (a state of a removed image is pruned)
    disk.write_bytes(b"q")
    uri = "qemu+ssh://h/system"
    key: dict[str, object] = {"image": "debian-x", "uri": uri, "disk": str(disk), "memory": 1, "cpus": 1,
                              "accel": "tcg"}
    with store.create(key, "pf-11111111") as tmp:
        assert tmp is not None
        (tmp / "save.header").write_bytes(b"h" * 100)
        (tmp / "id_ed25519").write_text("private")
        (tmp / "id_ed25519.pub").write_text("ssh-ed25519 AAAA\n")
        warm.write_remote_record(tmp, uri=uri, save="pf-11111111-vm-1.state.save",
                                   overlay="pf-11111111-vm-1.qcow2")
        store.publish(tmp, key, hostkeys=("ssh-ed25519 AAAA",), boot_seconds=30.0, session_id="pf-11111111")
    state = store.load(key)
    assert state is not None and state.remote
    assert not (state.dir / "state.save").exists() and not (state.dir / "overlay.qcow2").exists()
    assert warm.referenced_volumes(tmp_path / "warm", uri) == {"pf-11111111-vm-1.state.save",
                                                                         "pf-11111111-vm-1.qcow2"}
    assert warm.referenced_volumes(tmp_path / "warm", "qemu+ssh://other/system") == set()
    (state.dir / "remote.json").write_text("{}")  # a state without its record is incomplete
    assert store.load(key) is None
    store.drop(state)
    assert forgotten == [state.dir] and not state.dir.exists()


class FakeVolume:
    def __init__(self, name: str, gone: list[str]) -> None:
        self.name, self.gone = name, gone

    def delete(self, flags: int) -> None:
        self.gone.append(self.name)


class FakePool:
    def __init__(self, names: list[str]) -> None:
        self.names, self.gone = names, []  # type: ignore[var-annotated]

    def isActive(self) -> bool:  # noqa: N802 (libvirt's name)
        return True

    def refresh(self, flags: int) -> None:
        pass

    def listVolumes(self) -> list[str]:  # noqa: N802 (libvirt's name)
        return self.names

    def storageVolLookupByName(self, name: str) -> FakeVolume:  # noqa: N802 (libvirt's name)
        return FakeVolume(name, self.gone)


def test_sweep_removes_the_volumes_of_dead_sessions_only(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    pool = FakePool(["pf-dead0001-vm-1.qcow2", "pf-dead0001-vm-1.seed.img", "pf-dead0001-upload-pf-base-a.qcow2",
                     "pf-dead0001-vm-2.state.save", "pf-dead0001-vm-2.qcow2", "pf-dead00011-vm-1.qcow2",
                     "pf-live0002-vm-1.qcow2", "pf-base-abc.qcow2", "someone-elses.img"])
    conn = type("Conn", (), {"storagePoolLookupByName": lambda self, name: pool})()
    keep = {"pf-dead0001-vm-2.state.save", "pf-dead0001-vm-2.qcow2"}  # a warm state made by that session
    removed = volumes.sweep_volumes(conn, "qemu+ssh://h/system", ["pf-dead0001"], keep)
    assert removed == pool.gone == ["pf-dead0001-vm-1.qcow2", "pf-dead0001-vm-1.seed.img",
                                    "pf-dead0001-upload-pf-base-a.qcow2"]


def test_sweep_of_a_remote_uri_removes_domains_and_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("libvirt")
    pool = FakePool(["pf-dead0001-vm-1.qcow2", "pf-base-abc.qcow2"])

    class Conn:
        closed = False

        def listAllDomains(self, flags: int) -> list[Any]:  # noqa: N802 (libvirt's name)
            return []

        def storagePoolLookupByName(self, name: str) -> FakePool:  # noqa: N802 (libvirt's name)
            assert name == "pytest-flake"
            return pool

        def close(self) -> None:
            self.closed = True

    conn = Conn()
    monkeypatch.setattr("pytest_flake.vm.maintenance.connect", lambda uri: conn)
    settings = Settings.resolve(lambda n: "qemu+ssh://root@h/system" if n == "libvirt_uri" else None,
                                lambda n: None, tmp_path, environ={})
    vm.component(settings).sweep(["pf-dead0001"], tmp_path)
    assert pool.gone == ["pf-dead0001-vm-1.qcow2"] and conn.closed


def test_unreachable_remote_uri_is_one_clear_line() -> None:
    pytest.importorskip("libvirt")
    # a unix socket that does not exist, but through the ssh transport's classification: use tcp to a
    # closed port on this machine's loopback (nothing is sent anywhere else)
    with pytest.raises(VMError) as err:
        vm.connect("qemu+tcp://127.0.0.1:1/system")
    text = str(err.value)
    assert "qemu+tcp://127.0.0.1:1/system" in text and "virsh -c qemu+tcp://127.0.0.1:1/system version" in text
    assert "\n" not in err.value.args[0]


def test_a_pool_that_cannot_be_made_is_one_clear_line(tmp_path: Path) -> None:
    libvirt = pytest.importorskip("libvirt")

    class Conn:
        def storagePoolLookupByName(self, name: str) -> Any:  # noqa: N802 (libvirt's name)
            raise libvirt.libvirtError("Storage pool not found")

        def storagePoolDefineXML(self, xml: str, flags: int) -> Any:  # noqa: N802 (libvirt's name)
            raise libvirt.libvirtError("cannot create directory '/var/lib/libvirt/images': Read-only file system")

    host = remotehost.RemoteHost("qemu+ssh://root@kvm-box/system", conn=lambda: Conn(), ssh=lambda: None,  # type: ignore[arg-type,return-value]
                             cache=tmp_path, session_id="pf-1")
    with pytest.raises(VMError) as err:
        host.pool()
    message = err.value.args[0]
    # (libvirtError's text is libvirt's last error of this thread: not asserted here)
    assert message.startswith("libvirt at qemu+ssh://root@kvm-box/system: cannot make the storage pool pytest-flake")
    assert "\n" not in message and "virsh pool-define-as pytest-flake dir --target" in str(err.value)


def test_doctor_of_a_remote_uri_never_probes_kvm_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("libvirt")

    def no_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the local KVM probe ran for a remote host")

    class Conn:
        def getLibVersion(self) -> int:  # noqa: N802 (libvirt's name)
            return 9000000

        def storagePoolLookupByName(self, name: str) -> FakePool:  # noqa: N802 (libvirt's name)
            return FakePool(["pf-base-a.qcow2", "pf-base-a.kernel", "pf-1234abcd-vm-1.qcow2"])

        def close(self) -> None:
            pass

    monkeypatch.setattr("pytest_flake.vm.maintenance.probe_kvm", no_probe)
    monkeypatch.setattr("pytest_flake.vm.maintenance.connect", lambda uri: Conn())
    settings = Settings.resolve(lambda n: "qemu+ssh://root@h/system" if n == "libvirt_uri" else None,
                                lambda n: None, tmp_path, environ={})
    lines = [text for _, text in vm.doctor(settings, tmp_path)]
    assert any("storage pool pytest-flake holds 3 volume(s), 2 of base images" in line for line in lines), lines
    assert any("capabilities of qemu+ssh://root@h/system" in line for line in lines), lines


def test_the_header_says_the_libvirt_endpoint_is_another_host(tmp_path: Path) -> None:
    from pytest_flake import doctor

    def libvirt_line(uri: str) -> str:
        settings = Settings.resolve(lambda name: None, lambda name: None, tmp_path,
                                    environ={"LIBVIRT_DEFAULT_URI": uri})
        return next(line for line in doctor.header(settings) if line.startswith("libvirt: "))

    far = libvirt_line("qemu+ssh://root@build-box/system")
    assert far.startswith("libvirt: qemu+ssh://root@build-box/system (from $LIBVIRT_DEFAULT_URI; another host: ")
    assert "through an ssh tunnel" in far
    assert "another host" not in libvirt_line("qemu:///system")
