"""The host behind a remote libvirt URI (``--libvirt-uri qemu+ssh://root@host/system``), where nothing
sees this machine's files: :class:`RemoteHost`.

- a dir storage pool, :data:`~pytest_flake.vm.volumes.POOL` under ``POOL_DIR``, defined on the host
  when missing;
- base images (disk, kernel, initrd) uploaded once with libvirt's stream API (sparse where the
  file has holes) as volumes named by their content (``pf-base-<sha256>.<kind>``), and reused by
  later sessions; an upload goes to a session's volume first and is copied to its final name on
  the host only once complete, so a killed upload never looks like a base image;
- overlays (qcow2 over a base volume), uploads, copies of save files, the first bytes of a volume;
- the console of a domain there, read through libvirt (:class:`~pytest_flake.vm.streams.ConsoleReader`);
- ports picked free at the host's 127.0.0.1 (asked there with ``ss``), reached through the session's
  SSH master (:mod:`pytest_flake.tunnel`);
- the accelerator and the CPU it offers.

What a VM does there with all of this is :class:`~pytest_flake.vm.remote.RemoteLauncher`'s.
Never imports pytest; libvirt is imported when first used.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._host import locked
from ..errors import VMError
from .common import MiB, log, step
from .connection import connect, libvirt_module
from .streams import ConsoleReader, download_bytes, upload_bytes, upload_file
from .volumes import BASE_PREFIX, POOL, POOL_DIR, content_id, pool_xml, volume_xml

if TYPE_CHECKING:
    from ..config import Settings
    from ..images import Image
    from ..tunnel import SSHHost

PORT_RANGE = (20000, 29999)  # where forwarded ports are picked on the host's 127.0.0.1



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
