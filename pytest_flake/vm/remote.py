"""libvirt on another host (``--libvirt-uri qemu+ssh://root@host/system``): nothing there sees this machine's files.

On a remote URI (a transport other than local: ``+ssh``, ``+tcp``, ``+tls``, or a host name):

- a dir storage pool, :data:`POOL` under :data:`POOL_DIR`, defined on the host when missing;
- base images (disk, kernel, initrd) uploaded once with libvirt's stream API (sparse where the
  file has holes) as volumes named by their content (``pf-base-<sha256>.<kind>``), and reused by
  later sessions; an upload goes to a session's volume first and is copied to its final name on
  the host only once complete, so a killed upload never looks like a base image;
- each VM's overlay (qcow2 over the base volume, of the disk size), seed and save copies are
  volumes named ``<session id>-vm-N...``: the VM's teardown deletes them, the sweep deletes those
  of dead sessions;
- the serial console is a pty read through ``virDomainOpenConsole`` (:class:`ConsoleReader`)
  into the local console file the VM already reads;
- forwarded ports live on the host's 127.0.0.1 (picked free there, :meth:`RemoteHost.pick_port`)
  and are reached through the session's SSH master (:mod:`pytest_flake.tunnel`);
- warm states keep their save file and overlay as volumes on the host that made them; the local
  warm store keeps only the small part (keys, the save header, ``remote.json`` naming the volumes).

Never imports pytest; libvirt is imported when first used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._host import locked, write_atomic
from ..errors import VMError
from .common import MiB, log, step
from .connection import libvirt_module

if TYPE_CHECKING:
    from ..config import Settings
    from ..images import Image
    from ..tunnel import SSHHost

POOL = "pytest-flake"
POOL_DIR = "/var/lib/libvirt/images/pytest-flake"
BASE_PREFIX = "pf-base-"
REMOTE_FILE = "remote.json"  # in a warm state's folder: the volumes of that state on the host
PORT_RANGE = (20000, 29999)  # where forwarded ports are picked on the host's 127.0.0.1
LOCAL_TRANSPORTS = ("", "unix")


def is_remote(uri: str) -> bool:
    """Whether libvirt at ``uri`` runs on another host (it cannot see this machine's files).

    ``qemu:///system``, ``qemu+unix:///session`` and ``test:///default`` are local; a transport
    (``+ssh``, ``+tcp``, ``+tls``, ``+libssh``...) other than ``unix``, or a host name, is remote.
    """
    parts = urlsplit(uri)
    _, _, transport = parts.scheme.partition("+")
    if transport not in LOCAL_TRANSPORTS:
        return True
    return bool(parts.netloc) and transport != "unix"


def ssh_url(uri: str) -> str:
    """The ssh URL of the host behind a remote libvirt URI (for the port tunnels).

    ``qemu+ssh://`` URIs are kept (user, port and ``keyfile`` are ssh's); for ``+tcp`` and ``+tls``
    the port is libvirt's, so only ``ssh://[user@]host`` remains.
    """
    parts = urlsplit(uri)
    if not parts.hostname:
        raise VMError(f"the libvirt URI {uri} names no host", hint="write qemu+ssh://root@HOST/system")
    if parts.scheme.endswith("+ssh"):
        return uri
    user = f"{parts.username}@" if parts.username else ""
    return f"ssh://{user}{parts.hostname}"


# ---- documents


def _text(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element


def pool_xml(name: str = POOL, path: str = POOL_DIR) -> str:
    """A dir storage pool at ``path`` (searchable by QEMU's user: 0711)."""
    root = ET.Element("pool", {"type": "dir"})
    _text(root, "name", name)
    target = _text(root, "target")
    _text(target, "path", path)
    permissions = _text(target, "permissions")
    _text(permissions, "mode", "0711")
    return ET.tostring(root, encoding="unicode")


def volume_xml(name: str, capacity: int, fmt: str = "raw", *, backing: tuple[str, str] | None = None) -> str:
    """A volume of ``capacity`` bytes; ``backing`` = ``(path, format)`` makes it a copy-on-write overlay."""
    root = ET.Element("volume")
    _text(root, "name", name)
    _text(root, "capacity", str(int(capacity)), unit="bytes")
    if fmt == "raw" and backing is None:
        _text(root, "allocation", "0", unit="bytes")
    target = _text(root, "target")
    _text(target, "format", type=fmt)
    permissions = _text(target, "permissions")
    _text(permissions, "mode", "0600")
    if backing is not None:
        store = _text(root, "backingStore")
        _text(store, "path", backing[0])
        _text(store, "format", type=backing[1])
    return ET.tostring(root, encoding="unicode")


def console_to_pty(root: ET.Element) -> None:
    """Make a domain's serial port a pty with a ``<console>`` on it (read through libvirt, not a file)."""
    devices = root.find("devices")
    serial = root.find("devices/serial")
    if devices is None or serial is None:
        raise VMError("the domain has no serial port")
    serial.set("type", "pty")
    serial.attrib.pop("tty", None)
    for child in serial.findall("source") + serial.findall("log"):
        serial.remove(child)
    consoles = devices.findall("console")
    for console in consoles:  # a saved domain's console keeps its alias; the pty it had is gone
        console.set("type", "pty")
        console.attrib.pop("tty", None)
        for child in console.findall("source") + console.findall("log"):
            console.remove(child)
    if not consoles:
        console = ET.Element("console", {"type": "pty"})
        _text(console, "target", type="serial", port="0")
        devices.insert(list(devices).index(serial) + 1, console)


def drop_backing_chain(root: ET.Element) -> None:
    """Remove the ``<backingStore>`` of the main disk: libvirt probes the new overlay's chain instead."""
    disk = root.find("./devices/disk[@device='disk']")
    if disk is not None:
        for store in disk.findall("backingStore"):
            disk.remove(store)


# ---- content ids


def content_id(path: Path, cache: Path) -> str:
    """The SHA-256 (24 hex digits) of a file's bytes, remembered per size, mtime and inode in ``cache``."""
    stat = path.stat()
    stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    record = cache / "remote" / "content-ids.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    with locked(record.with_suffix(".lock")):
        try:
            known: dict[str, str] = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
        if stamp in known:
            return known[stamp]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(4 * MiB), b""):
                digest.update(chunk)
        known[stamp] = digest.hexdigest()[:24]
        known = {k: v for k, v in known.items() if Path(k.rsplit(":", 3)[0]).exists()}
        write_atomic(record, json.dumps(known, indent=1, sort_keys=True))
        return known[stamp]


# ---- streams


class _SparseFile:
    """The callbacks of ``virStream.sparseSendAll`` over a file descriptor (SEEK_DATA / SEEK_HOLE)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, _stream: Any, nbytes: int, _opaque: Any) -> bytes:
        return os.read(self.fd, nbytes)

    def hole(self, _stream: Any, _opaque: Any) -> tuple[bool, int]:
        current = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            data = os.lseek(self.fd, current, os.SEEK_DATA)
        except OSError:  # ENXIO: in the hole at the end (or at the end itself)
            data = -1
        if data < 0:
            end = os.lseek(self.fd, 0, os.SEEK_END)
            os.lseek(self.fd, current, os.SEEK_SET)
            return False, end - current
        if data > current:
            os.lseek(self.fd, current, os.SEEK_SET)
            return False, data - current
        hole = os.lseek(self.fd, data, os.SEEK_HOLE)
        os.lseek(self.fd, current, os.SEEK_SET)
        return True, hole - data

    def skip(self, _stream: Any, length: int, _opaque: Any) -> int:
        return os.lseek(self.fd, length, os.SEEK_CUR)


def upload_file(conn: Any, vol: Any, path: Path) -> None:
    """Send ``path`` into ``vol`` from offset 0 (holes stay holes)."""
    libvirt = libvirt_module()
    size = path.stat().st_size
    stream = conn.newStream(0)
    fd = os.open(path, os.O_RDONLY)
    try:
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        sparse = _SparseFile(fd)
        stream.sparseSendAll(sparse.read, sparse.hole, sparse.skip, None)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise
    finally:
        os.close(fd)


def upload_bytes(conn: Any, vol: Any, data: bytes, offset: int = 0) -> None:
    """Write ``data`` into ``vol`` at ``offset`` (the rest of the volume stays as it is)."""
    stream = conn.newStream(0)
    try:
        vol.upload(stream, offset, len(data), 0)
        view = memoryview(data)
        while view:
            sent = stream.send(bytes(view[: 256 * 1024]))
            view = view[sent:]
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise


def download_bytes(conn: Any, vol: Any, offset: int, length: int) -> bytes:
    """``length`` bytes of ``vol`` from ``offset``."""
    stream = conn.newStream(0)
    chunks: list[bytes] = []
    try:
        vol.download(stream, offset, length, 0)
        got = 0
        while got < length:
            chunk = stream.recv(min(256 * 1024, length - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.abort()
        raise
    return b"".join(chunks)


class ConsoleReader:
    """Reads a domain's console through libvirt (``virDomainOpenConsole`` on a ``virStream``) into a file.

    A daemon thread appends what the guest writes to ``path`` (the VM's console log, read by
    ``console_log()``); it ends when the domain stops (the stream ends) or :meth:`stop` is called.

    ``conn`` should be a connection of its own (``close_conn``: closed when the reader ends): a
    blocking ``recv`` on libvirt's remote driver holds up other streams of its connection (a volume
    upload there waited for its reply for as long as the console was quiet).
    """

    def __init__(self, conn: Any, dom: Any, path: Path, *, name: str = "", close_conn: bool = False) -> None:
        self.conn, self.dom, self.path, self.name = conn, dom, path, name
        self.close_conn = close_conn
        self.stream: Any = None
        self.error = ""
        self.bytes = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"pf-console-{name}", daemon=True)

    def start(self) -> ConsoleReader:
        libvirt = libvirt_module()
        self.stream = self.conn.newStream(0)
        self.dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with open(self.path, "ab", buffering=0) as out:
                while True:
                    data = self.stream.recv(64 * 1024)
                    if isinstance(data, int) or not data:  # -2 (would block) never comes on a blocking stream
                        break
                    out.write(data)
                    self.bytes += len(data)
        except Exception as exc:  # the domain stopped, or the stream was aborted
            if not self._stopping:
                self.error = str(exc)
                log.debug("vm://%s: console stream ended: %s", self.name, exc)
        finally:
            with contextlib.suppress(Exception):
                self.stream.finish() if not self.error and not self._stopping else self.stream.abort()
            if self.close_conn:
                with contextlib.suppress(Exception):
                    self.conn.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread end (it ends by itself once the domain is gone); abort the stream after ``timeout``."""
        if self._thread.ident is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stopping = True
            with contextlib.suppress(Exception):
                self.stream.abort()
            self._thread.join(timeout)


# ---- the host


def remote_accel(settings: Settings, conn: Any, uri: str) -> str:
    """``kvm`` or ``tcg`` for a remote host: ``--vm-accel`` when set, else whether its capabilities list KVM.

    The local KVM trial (a local kernel boot) says nothing about another host, so it never runs here.
    """
    if settings.vm_accel in ("kvm", "tcg"):
        return str(settings.vm_accel)
    try:
        caps = conn.getCapabilities()
    except Exception as exc:
        raise VMError(f"libvirt at {uri}: cannot read the host's capabilities: {exc}",
                      hint="pass --vm-accel tcg (or kvm)") from exc
    kvm = re.search(r"<domain type=['\"]kvm['\"]", caps) is not None
    log.info("vm: libvirt at %s %s KVM; using %s (pass --vm-accel to choose)", uri, "offers" if kvm else "lacks",
             "kvm" if kvm else "tcg")
    return "kvm" if kvm else "tcg"


def host_cpu_of(conn: Any) -> str:
    """A short hash of the host CPU libvirt reports (a KVM state saved on one CPU may not restore on another)."""
    with contextlib.suppress(Exception):
        found = re.search(r"<host>.*?<cpu>(.*?)</cpu>", conn.getCapabilities(), re.S)
        if found:
            return hashlib.sha256(found.group(1).encode()).hexdigest()[:16]
    return "unknown"


@dataclass(frozen=True)
class RemoteImage:
    """A base image's volumes on the host: paths there (never on this machine)."""

    disk: str
    disk_format: str
    kernel: str | None = None
    initrd: str | None = None


class RemoteHost:
    """The host behind a remote libvirt URI: its storage pool, volumes, free ports and tunnels.

    ``conn`` and ``ssh`` are called on first use (the pool's libvirt connection, the session's
    :class:`~pytest_flake.tunnel.SSHHost`). Thread-safe.
    """

    def __init__(self, uri: str, *, conn: Callable[[], Any], ssh: Callable[[], SSHHost], cache: Path,
                 session_id: str) -> None:
        self.uri = uri
        self._conn = conn
        self._ssh = ssh
        self.cache = cache
        self.session_id = session_id
        self._pool: Any = None
        self._bases: dict[str, RemoteImage] = {}
        self._ports: set[int] = set()
        self._lock = threading.RLock()
        self.upload_seconds = 0.0  # time spent uploading base images in this session
        self.uploaded_bytes = 0

    @property
    def conn(self) -> Any:
        return self._conn()

    @property
    def ssh(self) -> SSHHost:
        return self._ssh()

    # the pool

    def pool(self) -> Any:
        """The pytest-flake dir pool on the host, defined, built and started when missing."""
        with self._lock:
            if self._pool is not None:
                return self._pool
            libvirt = libvirt_module()
            conn = self.conn
            try:
                try:
                    pool = conn.storagePoolLookupByName(POOL)
                except libvirt.libvirtError:
                    log.info("vm: defining the storage pool %s (%s) at %s", POOL, POOL_DIR, self.uri)
                    pool = conn.storagePoolDefineXML(pool_xml(), 0)
                    pool.build(0)  # makes the folder (and its parents) when missing
                    with contextlib.suppress(libvirt.libvirtError):
                        pool.setAutostart(1)
                if not pool.isActive():
                    with contextlib.suppress(libvirt.libvirtError):
                        pool.build(0)
                    pool.create(0)
                pool.refresh(0)
            except libvirt.libvirtError as exc:
                raise VMError(f"libvirt at {self.uri}: cannot make the storage pool {POOL} in {POOL_DIR}: {exc}",
                              hint=f"make {POOL_DIR} writable for libvirtd there, or define a dir pool named {POOL} "
                                   "yourself (virsh pool-define-as pytest-flake dir --target DIR)") from exc
            self._pool = pool
            return pool

    def path(self, name: str) -> str:
        """Where volume ``name`` is (or will be) on the host."""
        target = ET.fromstring(self.pool().XMLDesc(0)).findtext("target/path") or POOL_DIR
        return f"{target.rstrip('/')}/{name}"

    def volume(self, name: str) -> Any | None:
        libvirt = libvirt_module()
        try:
            return self.pool().storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def names(self) -> list[str]:
        """Names of the volumes in the pool (refreshed)."""
        pool = self.pool()
        with contextlib.suppress(Exception):
            pool.refresh(0)
        return [str(n) for n in pool.listVolumes()]

    def delete(self, name: str) -> None:
        """Delete volume ``name``; one that is gone is not an error."""
        vol = self.volume(name)
        if vol is not None:
            libvirt = libvirt_module()
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if self.volume(name) is not None:
                    raise VMError(f"libvirt at {self.uri}: cannot delete the volume {name}: {exc}") from exc

    def create(self, xml: str, what: str) -> Any:
        libvirt = libvirt_module()
        try:
            return self.pool().createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise VMError(f"libvirt at {self.uri}: cannot create {what}: {exc}", details=xml) from exc

    # uploads

    def upload(self, name: str, local: Path, *, fmt: str = "raw") -> str:
        """A new volume ``name`` holding the bytes of ``local``; its path on the host."""
        libvirt = libvirt_module()
        size = local.stat().st_size
        self.delete(name)
        vol = self.create(volume_xml(name, size, "raw"), f"the volume {name}")
        try:
            upload_file(self.conn, vol, local)
        except (libvirt.libvirtError, OSError) as exc:
            with contextlib.suppress(Exception):
                vol.delete(0)
            raise VMError(f"libvirt at {self.uri}: uploading {local.name} into the volume {name} failed: {exc}",
                          hint="is there space in the pool's folder on that host?") from exc
        if fmt != "raw":
            with contextlib.suppress(libvirt.libvirtError):
                self.pool().refresh(0)  # the dir pool probes the format of what was written
        return self.path(name)

    def _base_volume(self, local: Path, kind: str, fmt: str) -> str:
        """The volume of one base file (uploaded once: later sessions find it by its content)."""
        name = f"{BASE_PREFIX}{content_id(local, self.cache)}.{kind}"
        if self.volume(name) is not None:
            return self.path(name)
        with locked(self.cache / "remote" / f".{name}.lock"):  # sessions of this machine upload once
            if self.volume(name) is not None or name in self.names():
                return self.path(name)
            staging = f"{self.session_id}-upload-{name}"
            started = time.monotonic()
            with step(f"vm: uploading {local.name} ({local.stat().st_size / MiB:.0f} MiB) to {self.uri} as {name}"):
                self.upload(staging, local, fmt=fmt)
                try:
                    self._publish(staging, name, fmt)
                finally:
                    self.delete(staging)
            self.upload_seconds += time.monotonic() - started
            self.uploaded_bytes += local.stat().st_size
        return self.path(name)

    def _publish(self, staging: str, name: str, fmt: str) -> None:
        """Copy a complete upload to its final name on the host (a killed upload never has that name)."""
        libvirt = libvirt_module()
        source = self.volume(staging)
        if source is None:
            raise VMError(f"libvirt at {self.uri}: the uploaded volume {staging} is gone")
        capacity = int(source.info()[1])
        try:
            self.pool().createXMLFrom(volume_xml(name, capacity, fmt), source, 0)
        except libvirt.libvirtError as exc:
            if self.volume(name) is None:  # not a race with another session's copy
                raise VMError(f"libvirt at {self.uri}: cannot copy {staging} to {name}: {exc}") from exc

    def base(self, image: Image) -> RemoteImage:
        """The volumes of ``image`` on the host (disk, kernel, initrd), uploaded when missing."""
        with self._lock:
            held = self._bases.get(image.key)
            if held is not None and self.volume(Path(held.disk).name) is not None:
                return held
            disk = self._base_volume(image.disk, image.disk_format, image.disk_format)
            kernel = self._base_volume(image.kernel, "kernel", "raw") if image.kernel is not None else None
            initrd = self._base_volume(image.initrd, "initrd", "raw") if image.initrd is not None else None
            held = RemoteImage(disk=disk, disk_format=image.disk_format, kernel=kernel, initrd=initrd)
            self._bases[image.key] = held
            return held

    def overlay(self, name: str, backing: str, backing_format: str, size: int) -> str:
        """A qcow2 overlay volume ``name`` of ``size`` bytes over the volume at ``backing``; its path."""
        self.delete(name)
        self.create(volume_xml(name, size, "qcow2", backing=(backing, backing_format)), f"the overlay {name}")
        return self.path(name)

    def copy_save(self, source: str, name: str, header: bytes) -> str:
        """A copy ``name`` of the save file volume ``source`` with its header replaced; its path."""
        libvirt = libvirt_module()
        vol = self.volume(source)
        if vol is None:
            raise VMError(f"libvirt at {self.uri}: the saved state {source} is gone")
        self.delete(name)
        try:
            copy = self.pool().createXMLFrom(volume_xml(name, int(vol.info()[1]), "raw"), vol, 0)
            upload_bytes(self.conn, copy, header, 0)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(Exception):
                self.delete(name)
            raise VMError(f"libvirt at {self.uri}: cannot copy the saved state {source}: {exc}") from exc
        return self.path(name)

    def read_head(self, name: str, length: int) -> bytes:
        """The first ``length`` bytes of volume ``name``."""
        vol = self.volume(name)
        if vol is None:
            raise VMError(f"libvirt at {self.uri}: no volume {name}")
        return download_bytes(self.conn, vol, 0, length)

    def console(self, dom: Any, path: Path, name: str) -> ConsoleReader:
        """Start reading ``dom``'s console into ``path``, over a connection of the reader's own."""
        from .connection import connect

        conn = connect(self.uri)
        try:
            own = conn.lookupByUUIDString(dom.UUIDString())
            return ConsoleReader(conn, own, path, name=name, close_conn=True).start()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise

    # ports

    def pick_port(self) -> int:
        """A TCP port nobody listens on at the host's 127.0.0.1 (asked there with ``ss -ltnH``)."""
        used: set[int] = set()
        with contextlib.suppress(Exception):
            done = self.ssh.run(["ss", "-ltnH"], timeout=20)
            if done.returncode == 0:
                used = listening_ports(done.stdout)
        with self._lock:
            candidates = [p for p in range(*PORT_RANGE) if p not in used and p not in self._ports]
            port = random.choice(candidates)
            self._ports.add(port)
            return port

    def release_port(self, port: int) -> None:
        with self._lock:
            self._ports.discard(port)


def listening_ports(ss_output: str) -> set[int]:
    """The local ports of ``ss -ltnH`` lines (``LISTEN 0 128 127.0.0.1:22 0.0.0.0:*``)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            _, _, port = fields[3].rpartition(":")
            if port.isdigit():
                ports.add(int(port))
    return ports


def hostfwd_failed(text: str) -> bool:
    """Whether QEMU's or libvirt's message says a host forward could not be set up (the port is taken)."""
    return "host forwarding rule" in text or "Could not set up host forwarding" in text


# ---- warm states


def write_remote_record(folder: Path, *, uri: str, save: str, overlay: str) -> None:
    (folder / REMOTE_FILE).write_text(json.dumps({"uri": uri, "save": save, "overlay": overlay}, sort_keys=True))


def read_remote_record(folder: Path) -> dict[str, str] | None:
    try:
        data = json.loads((folder / REMOTE_FILE).read_text())
        return {"uri": str(data["uri"]), "save": str(data["save"]), "overlay": str(data["overlay"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def referenced_volumes(warm_root: Path, uri: str) -> set[str]:
    """Volumes on ``uri`` that the warm states of this machine use (the sweep keeps them)."""
    names: set[str] = set()
    if not warm_root.is_dir():
        return names
    for record in warm_root.glob(f"*/{REMOTE_FILE}"):
        data = read_remote_record(record.parent)
        if data is not None and data["uri"] == uri:
            names.update((data["save"], data["overlay"]))
    return names


def sweep_volumes(conn: Any, uri: str, dead_ids: Iterable[str], keep: set[str]) -> list[str]:
    """Delete the volumes of dead sessions (``<id>-...``) in the pytest-flake pool, except ``keep``."""
    libvirt = libvirt_module()
    ids = tuple(f"{sid}-" for sid in dead_ids)
    removed: list[str] = []
    if not ids:
        return removed
    try:
        pool = conn.storagePoolLookupByName(POOL)
        if not pool.isActive():
            return removed
        pool.refresh(0)
        names = [str(n) for n in pool.listVolumes()]
    except libvirt.libvirtError:
        return removed  # no pool: nothing of ours
    for name in names:
        if name.startswith(ids) and name not in keep:
            log.info("vm sweep: removing the volume %s of a dead session at %s", name, uri)
            with contextlib.suppress(libvirt.libvirtError):
                pool.storageVolLookupByName(name).delete(0)
                removed.append(name)
    return removed
