"""Warm starts that copy nothing, without a daemon: the save file fed through a FIFO, a state's files
read-only and refused once changed, restores from one state at once under a shared lock."""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import vm
from pytest_flake.errors import VMError
from pytest_flake.vm.savefile import HEADER_SIZE, SaveFeed, header_with_xml, xml_of_header

XML = f"""<domain type='qemu' id='7' xmlns:qemu='{vm.QEMU_NS}'>
  <name>pf-aaaa0000-vm-1</name>
  <uuid>b73a346e-39e4-4d0e-8589-af2eb5bda59d</uuid>
  <devices>
    <disk type='file' device='disk'><source file='/state/vms/pf-aaaa0000/pf-aaaa0000-vm-1.qcow2'/>
      <backingStore type='file'><source file='/cache/debian/disk.qcow2'/></backingStore></disk>
    <serial type='file'><source path='/state/vms/pf-aaaa0000/pf-aaaa0000-vm-1.console.log' append='on'/></serial>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=pfnet,restrict=on,hostfwd=tcp:127.0.0.1:22001-:22'/>
  </qemu:commandline>
</domain>
"""
STREAM = b"QEVM" + bytes(range(256)) * 4096  # 1 MiB: more than a pipe holds


def fake_save(path: Path, data_len: int = 8192) -> bytes:
    xml = XML.encode() + b"\0"
    header = struct.pack("<16s19I", b"LibvirtQemudSave", 2, data_len, 1, 0, 0, *([0] * 14)) + xml.ljust(data_len, b"\0")
    path.write_bytes(header + STREAM)
    return header


def read_fifo(fifo: Path, limit: int | None = None) -> bytes:
    """What libvirt and QEMU read off the FIFO (``limit``: stop early and close it, as a failed restore does)."""
    for _ in range(500):
        if fifo.exists():
            break
        time.sleep(0.01)
    with open(fifo, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit)


# --------------------------------------------------------------------------- the feed


def test_the_feed_is_this_vms_header_then_the_shared_stream(tmp_path: Path) -> None:
    save = tmp_path / "state.save"
    header = fake_save(save)
    before = save.stat()
    mine = header_with_xml(header, XML.replace("pf-aaaa0000-vm-1", "pf-bbbb1111-vm-3"))
    fifo = tmp_path / "vm.restore.fifo"
    prepared: list[Path] = []
    with SaveFeed(fifo, save, mine, prepare=prepared.append) as feed:
        assert fifo.exists() and fifo.stat().st_mode & 0o777 == 0o600 and prepared == [fifo]
        got = read_fifo(fifo)
    assert got == mine + STREAM and feed.error is None and feed.written == len(got)
    assert "<name>pf-bbbb1111-vm-3</name>" in xml_of_header(got[:len(mine)])
    assert not fifo.exists()
    after = save.stat()  # the shared file was only read
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_two_feeds_of_one_save_file_at_once(tmp_path: Path) -> None:
    save = tmp_path / "state.save"
    header = fake_save(save)
    got: dict[str, bytes] = {}
    headers = {name: header_with_xml(header, XML.replace("vm-1", name)) for name in ("vm-2", "vm-3")}

    def restore(name: str) -> None:
        with SaveFeed(tmp_path / f"{name}.fifo", save, headers[name]):
            got[name] = read_fifo(tmp_path / f"{name}.fifo")

    threads = [threading.Thread(target=restore, args=(name,)) for name in headers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == {name: headers[name] + STREAM for name in headers}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.save"]


def test_a_restore_that_never_opens_the_fifo_leaves_no_writer(tmp_path: Path) -> None:
    save = tmp_path / "state.save"
    header = fake_save(save)
    fifo = tmp_path / "vm.restore.fifo"
    with SaveFeed(fifo, save, header) as feed:
        pass  # libvirt refused before it opened the path
    assert feed._thread is not None and not feed._thread.is_alive()  # it gave up: the restore returned
    assert feed.written == 0 and feed.error is None and not fifo.exists()


def test_a_reader_that_stops_early_does_not_hang_the_writer(tmp_path: Path) -> None:
    save = tmp_path / "state.save"
    header = fake_save(save)
    fifo = tmp_path / "vm.restore.fifo"
    with SaveFeed(fifo, save, header) as feed:
        assert read_fifo(fifo, limit=HEADER_SIZE) == header[:HEADER_SIZE]  # libvirt read the header, then failed
    assert feed._thread is not None and not feed._thread.is_alive()
    assert feed.error is None and 0 < feed.written < len(header) + len(STREAM) and not fifo.exists()


def test_a_file_that_is_no_save_image_fails_before_any_writer(tmp_path: Path) -> None:
    bogus = tmp_path / "state.save"
    bogus.write_bytes(b"\0" * 200)
    fifo = tmp_path / "vm.restore.fifo"
    with pytest.raises(VMError, match="not a libvirt save image"), SaveFeed(fifo, bogus, b""):
        pass
    assert not fifo.exists()


# --------------------------------------------------------------------------- the state's files


def key_of(tmp_path: Path) -> dict[str, Any]:
    return {"format": vm.warm.WARM_FORMAT, "disk": str(tmp_path / "disk.qcow2"), "memory": 1024, "cpus": 1,
            "accel": "tcg", "uri": "qemu:///system"}


def write_state(store: vm.WarmStore, key: dict[str, Any], session: str = "pf-00000001") -> vm.WarmState:
    (Path(key["disk"])).write_bytes(b"base")
    with store.create(key, session) as tmp:
        assert tmp is not None
        fake_save(tmp / "state.save")
        (tmp / "overlay.qcow2").write_bytes(b"O" * 500)
        (tmp / "id_ed25519").write_bytes(b"PRIVATE")
        (tmp / "id_ed25519.pub").write_text("ssh-ed25519 AAAA warm\n")
        vm.WarmStore.publish(tmp, key, hostkeys=("ssh-ed25519 HOSTKEY",), boot_seconds=30.0, session_id=session)
    state = store.load(key)
    assert state is not None
    return state


def test_published_files_are_read_only_and_recorded(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    state = write_state(store, key_of(tmp_path))
    assert state.save.stat().st_mode & 0o777 == 0o400  # only libvirt reads it: the guest's memory
    assert state.overlay.stat().st_mode & 0o777 == 0o444  # QEMU's user reads it: a backing file
    import json

    ids = json.loads((state.dir / "state.json").read_text())["ids"]
    for path in (state.save, state.overlay):
        stat = path.stat()
        assert ids[path.name] == f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def _touch(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def _rewrite(path: Path) -> None:
    data = path.read_bytes()
    path.chmod(0o600)
    path.write_bytes(data[::-1])  # the same size


def _replace(path: Path) -> None:
    stat = path.stat()
    other = path.with_name("copy")
    other.write_bytes(path.read_bytes())  # the same bytes and times, another inode
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)


@pytest.mark.parametrize("name", ["state.save", "overlay.qcow2"])
@pytest.mark.parametrize("change", [_touch, _rewrite, _replace], ids=["touched", "rewritten", "replaced"])
def test_a_state_whose_files_changed_is_refused_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            name: str, change: Any) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(tmp_path)
    state = write_state(store, key)
    change(state.dir / name)
    with caplog.at_level(logging.WARNING, logger="pytest_flake"):
        assert store.load(key) is None  # the VM boots cold
    assert f"{state.dir / name} changed since it was saved" in caplog.text
    assert not state.dir.exists() and store.usage()[0] == 0
    again = write_state(store, key, session="pf-00000002")  # the cold boot saves a new one
    assert again.created_by == "pf-00000002" and again.id != state.id


def test_a_state_that_changes_while_it_is_being_restored_is_refused(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    state = write_state(store, key_of(tmp_path))
    _touch(state.overlay)
    with pytest.raises(VMError, match=r"overlay\.qcow2 changed since it was saved"), store.using(state):
        pass


def test_a_state_replaced_meanwhile_is_not_restored(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(tmp_path)
    state = write_state(store, key)
    store.drop(state)
    write_state(store, key, session="pf-00000002")
    with pytest.raises(VMError, match="removed or replaced"), store.using(state):
        pass


# --------------------------------------------------------------------------- restores at once


def test_restores_share_a_state_and_its_removal_waits_for_them(tmp_path: Path) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    key = key_of(tmp_path)
    state = write_state(store, key)
    dropped = threading.Event()

    def drop() -> None:
        store.drop(state)
        dropped.set()

    with store.using(state), store.using(state):  # two VMs restore from it at once
        dropper = threading.Thread(target=drop)
        dropper.start()
        assert not dropped.wait(0.5)  # waits for both
        assert state.dir.exists()
    dropper.join(30)
    assert dropped.is_set() and not state.dir.exists()


def test_prune_skips_a_state_being_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = vm.WarmStore(tmp_path / "warm")
    state = write_state(store, key_of(tmp_path))
    Path(key_of(tmp_path)["disk"]).unlink()  # its image was removed
    with caplog.at_level(logging.INFO, logger="pytest_flake"), store.using(state):
        store.prune()
        assert state.dir.exists() and "is being restored" in caplog.text
    store.prune()
    assert not state.dir.exists()


# --------------------------------------------------------------------------- the local launcher


class FakeDomain:
    def isActive(self) -> bool:  # noqa: N802 (libvirt's name)
        return True


class RestoringConn:
    """libvirt's restore: reads the path it is given to the end (``fail``: stops after the header)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.read: list[tuple[str, bytes, Any, int]] = []

    def restoreFlags(self, path: str, dxml: Any, flags: int) -> None:  # noqa: N802 (libvirt's name)
        import libvirt

        data = read_fifo(Path(path), limit=HEADER_SIZE if self.fail else None)
        self.read.append((path, data, dxml, flags))
        if self.fail:
            raise libvirt.libvirtError("operation failed: domain already exists")

    def lookupByName(self, name: str) -> FakeDomain:  # noqa: N802 (libvirt's name)
        return FakeDomain()


@pytest.fixture
def restoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[vm.WarmState, vm.VMConfig, list[Any]]:
    overlays: list[Any] = []

    def overlay_on(backing: Path, overlay: Path, backing_format: str = "qcow2", size: int | None = None) -> None:
        overlays.append((backing, overlay, backing_format, size))
        overlay.write_bytes(b"new overlay")

    monkeypatch.setattr("pytest_flake.vm.local.overlay_on", overlay_on)
    state = write_state(vm.WarmStore(tmp_path / "warm"), key_of(tmp_path))
    config = vm.VMConfig(name="pf-bbbb1111-vm-2", dir=tmp_path / "vms", session_id="pf-bbbb1111", image="debian",
                         memory=1024, cpus=1, disk_size=8 * vm.GiB, timeout=5.0)
    config.dir.mkdir()
    return state, config, overlays


def test_the_local_restore_copies_nothing(restoring: tuple[vm.WarmState, vm.VMConfig, list[Any]]) -> None:
    import libvirt

    state, config, overlays = restoring
    conn = RestoringConn()
    launcher = vm.LocalLauncher(config, lambda: conn)
    before = {path: path.stat().st_mtime_ns for path in (state.save, state.overlay)}
    assert launcher.restore(state, None, config.disk_size) == config.disk_size  # type: ignore[arg-type]
    assert overlays == [(state.overlay, config.overlay, "qcow2", None)]  # a new overlay over the state's
    ((path, data, dxml, flags),) = conn.read
    assert Path(path).parent == config.dir and dxml is None and flags == libvirt.VIR_DOMAIN_SAVE_RUNNING
    assert data.endswith(STREAM) and len(data) == state.save.stat().st_size
    root = ET.fromstring(xml_of_header(data))
    assert root.findtext("name") == config.name and root.findtext("uuid") != "b73a346e-39e4-4d0e-8589-af2eb5bda59d"
    disk = root.find("./devices/disk[@device='disk']")
    assert disk is not None and disk.find("backingStore") is None  # libvirt probes the new chain
    source = disk.find("source")
    assert source is not None and source.get("file") == str(config.overlay)
    assert {path: path.stat().st_mtime_ns for path in before} == before
    assert sorted(p.name for p in config.dir.iterdir()) == [config.overlay.name]  # no FIFO, no copy left
    assert launcher.ssh_port and f"hostfwd=tcp:127.0.0.1:{launcher.ssh_port}-:22" in ET.tostring(root, "unicode")


def test_a_failed_local_restore_leaves_no_fifo(restoring: tuple[vm.WarmState, vm.VMConfig, list[Any]]) -> None:
    import libvirt

    state, config, _ = restoring
    conn = RestoringConn(fail=True)
    launcher = vm.LocalLauncher(config, lambda: conn)
    with pytest.raises(libvirt.libvirtError):  # (its text may be libvirt's last error of this process)
        launcher.restore(state, None, config.disk_size)  # type: ignore[arg-type]
    assert [len(data) for _, data, _, _ in conn.read] == [HEADER_SIZE]  # it read the header, then failed
    assert sorted(p.name for p in config.dir.iterdir()) == [config.overlay.name]  # the VM's teardown removes it
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("save feed")]
