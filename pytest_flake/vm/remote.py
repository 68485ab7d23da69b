"""A VM on another host's libvirt (``--libvirt-uri qemu+ssh://root@host/system``): :class:`RemoteLauncher`.

There, the daemon sees none of this machine's files: the VM's disks are volumes it owns in the
``pytest-flake`` pool (deleted at its teardown), its console is read through libvirt into the local
console file, its forwarded ports live on the host's 127.0.0.1 and are reached through the session's
SSH master, and its warm state stays on that host as volumes (the local warm store keeps the keys,
the save header and ``remote.json`` naming them). :class:`~pytest_flake.vm.remotehost.RemoteHost` has
the host's side: pool, uploads, the console stream, ports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FlakeError, VMError
from ..images import Image, disk_info
from .common import log
from .connection import libvirt_module
from .domain import restore_xml
from .launch import Disks, DomainLauncher, Teardown, VMConfig
from .remotehost import RemoteHost, hostfwd_failed
from .savefile import HEADER_SIZE, header_length, header_with_xml, xml_of_header
from .volumes import BASE_PREFIX, POOL, POOL_DIR, sweep_volumes
from .warm import read_remote_record, referenced_volumes, write_remote_record

if TYPE_CHECKING:
    from .streams import ConsoleReader
    from .warm import WarmState


class RemoteLauncher(DomainLauncher):
    """libvirt on another host: the VM's disks are volumes there, its console a stream, its ports tunnelled."""

    where = " on the host"
    logs_here = False

    def __init__(self, config: VMConfig, conn: Callable[[], Any], host: RemoteHost) -> None:
        super().__init__(config, conn)
        self.host = host
        self._forwards: dict[int, int] = {}  # guest port -> port on the host's 127.0.0.1
        self._volumes: list[str] = []  # volumes of this VM on the host (its teardown deletes them)
        self._kept: tuple[str, ...] = ()  # volumes a warm state being saved keeps once published
        self._console: ConsoleReader | None = None
        self._size = config.disk_size  # the overlay's virtual size

    @property
    def seclabel(self) -> str | None:
        return None  # QEMU's files there are libvirt's to label

    def console_target(self) -> Path | None:
        return None

    def pick_ports(self) -> None:
        if self.hostfwd_port:
            self.host.release_port(self.hostfwd_port)
        self.hostfwd_port = self.host.pick_port()

    def _own(self, name: str) -> str:
        if name not in self._volumes:
            self._volumes.append(name)
        return name

    def _disown(self, *names: str) -> None:
        for name in names:
            if name in self._volumes:
                self._volumes.remove(name)

    def disks(self, image: Image, seed: Path | None, disk_size: int) -> Disks:
        """Upload the base (once), make this VM's overlay and seed volumes: paths on the host."""
        base = self.host.base(image)
        virtual = int(disk_info(image.disk).get("virtual-size") or 0)
        if disk_size < virtual:
            log.warning("vm: --vm-disk-size is less than the %s image's disk; using the image's size", image.name)
            disk_size = virtual
        self._size = disk_size
        overlay = self.host.overlay(self._own(f"{self.name}.qcow2"), base.disk, base.disk_format, disk_size)
        there = None
        if seed is not None:
            there = Path(self.host.upload(self._own(f"{self.name}.seed.img"), seed))
            seed.unlink(missing_ok=True)
        return Disks(overlay=Path(overlay), kernel=Path(base.kernel) if base.kernel else None,
                     initrd=Path(base.initrd) if base.initrd else None, seed=there, size=disk_size)

    def boot(self, domain_xml: Callable[[], str]) -> None:
        """Start paused (the console reader attaches first, so it misses nothing), retrying a taken port."""
        libvirt = libvirt_module()
        for attempt in range(3):
            xml = domain_xml()
            try:
                self.dom = self._conn().createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
                break
            except libvirt.libvirtError as exc:
                if hostfwd_failed(str(exc)) and attempt < 2:
                    log.info("vm://%s: port %d is taken on the host; another one", self.name, self.hostfwd_port)
                    self.pick_ports()
                    continue
                raise self.refused(xml, exc) from exc
        self._attach_console()
        self._tunnel_ssh()

    def _attach_console(self) -> None:
        """Read the console through libvirt into the local console file, then let the guest run."""
        self._stop_console()
        try:
            self._console = self.host.console(self.dom, self.config.console, self.name)
        except FlakeError as exc:  # the guest works without it; only its console log stays empty
            log.warning("vm://%s: cannot read the console through libvirt: %s", self.name, exc)
        finally:
            self.dom.resume()

    def _stop_console(self) -> None:
        reader, self._console = self._console, None
        if reader is not None:
            reader.stop()

    def _tunnel_ssh(self) -> None:
        """The guest's SSH forward there, reached through the session's SSH master."""
        self.ssh_port = self.host.ssh.forward(self.hostfwd_port)

    def save(self, folder: Path, image: Image) -> None:
        """The save file and the overlay stay on the host as volumes (named in ``folder``'s record); this
        guest goes on, restored at once over a new overlay on top of the saved one (nothing is copied)."""
        libvirt = libvirt_module()
        host = self.host
        save, overlay = f"{self.name}.state.save", f"{self.name}.qcow2"
        self.dom.save(host.path(self._own(save)))
        self.dom = None
        self._stop_console()
        host.names()  # the pool sees the save file as a volume
        head = host.read_head(save, HEADER_SIZE)
        header = host.read_head(save, header_length(head, save))
        (folder / "save.header").write_bytes(header)
        running = host.overlay(self._own(f"{self.name}.run.qcow2"), host.path(overlay), "qcow2", self._size)
        xml = restore_xml(xml_of_header(header, save), name=self.name, overlay=Path(running), console=None,
                          netdev=self.netdev(), session=self.config.session_id, new_chain=True, keep_uuid=True)
        self._conn().restoreFlags(host.path(save), xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        self.dom = self.lookup()
        self._attach_console()
        write_remote_record(folder, uri=host.uri, save=save, overlay=overlay)
        self._kept = (save, overlay)

    def saved(self) -> None:
        self._disown(*self._kept)  # the warm state's now: they stay on the host
        self._kept = ()

    def restore(self, state: WarmState, image: Image, disk_size: int) -> int:
        """A new overlay over the state's, a copy of its save file with this VM's XML, a restore."""
        libvirt = libvirt_module()
        host = self.host
        record = read_remote_record(state.dir)
        if record is None or record["uri"] != host.uri:
            raise VMError(f"vm://{self.name}: restore failed: the warm state {state.dir.name} is not on {host.uri}")
        saved = host.volume(record["overlay"])
        if saved is None or host.volume(record["save"]) is None:
            raise VMError(f"vm://{self.name}: restore failed: the warm state's volumes are gone from {host.uri}")
        self._size = max(disk_size, int(saved.info()[1]))
        overlay = host.overlay(self._own(f"{self.name}.qcow2"), host.path(record["overlay"]), "qcow2", self._size)
        header = (state.dir / "save.header").read_bytes()
        copy = self._own(f"{self.name}.save")
        try:
            for attempt in range(3):
                self.pick_ports()
                xml = restore_xml(xml_of_header(header), name=self.name, overlay=Path(overlay), console=None,
                                  netdev=self.netdev(), session=self.config.session_id, new_chain=True)
                path = host.copy_save(record["save"], copy, header_with_xml(header, xml))
                try:
                    self._conn().restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
                    break
                except libvirt.libvirtError as exc:
                    if not (hostfwd_failed(str(exc)) and attempt < 2):
                        raise
                    log.info("vm://%s: port %d is taken on the host; another one", self.name, self.hostfwd_port)
            self.dom = self.lookup()
            self._attach_console()
        finally:
            with contextlib.suppress(VMError):
                host.delete(copy)
                self._disown(copy)
        self._tunnel_ssh()
        return self._size

    def ssh_route(self) -> tuple[str | None, int]:
        return self.host.ssh.target, self.hostfwd_port  # jump through the host

    def _forward_port(self) -> int:
        return self.host.pick_port()  # there: on its 127.0.0.1

    def _reach(self, guest_port: int, port: int) -> int:
        self._forwards[guest_port] = port
        return self.host.ssh.forward(port)

    def _release(self, port: int) -> None:
        self.host.release_port(port)

    def teardown(self) -> Teardown:
        return [("destroy the domain", self.destroy), ("stop reading the console", self._stop_console),
                ("close the tunnels", self._close_tunnels), ("remove the volumes on the host", self._delete_volumes)]

    def _close_tunnels(self) -> None:
        host = self.host
        for port in [self.hostfwd_port, *self._forwards.values()]:
            if port:
                if host.ssh.is_open:
                    host.ssh.cancel(port)
                host.release_port(port)
        self._forwards.clear()

    def _delete_volumes(self) -> None:
        failed = []
        for name in list(self._volumes):
            try:
                self.host.delete(name)
                self._volumes.remove(name)
            except VMError as exc:
                failed.append(str(exc))
        if failed:
            raise VMError("; ".join(failed))

    # ---- the sweep's and the doctor's side

    @staticmethod
    def sweep_host(conn: Any, uri: str, dead_ids: Iterable[str], warm_root: Path) -> int:
        """Delete the overlays, seeds and save copies of dead sessions there (not those warm states keep)."""
        return len(sweep_volumes(conn, uri, dead_ids, keep=referenced_volumes(warm_root, uri)))

    @staticmethod
    def check_host(conn: Any, uri: str, cache: Path) -> tuple[bool, str]:
        """The storage pool on another host: there with its volumes, or made by the first VM."""
        libvirt = libvirt_module()
        try:
            pool = conn.storagePoolLookupByName(POOL)
            names = [str(n) for n in pool.listVolumes()] if pool.isActive() else []
        except libvirt.libvirtError:
            return True, f"another host: the storage pool {POOL} is made in {POOL_DIR} there by the first VM"
        bases = sum(1 for n in names if n.startswith(BASE_PREFIX))
        return True, (f"another host: storage pool {POOL} holds {len(names)} volume(s), {bases} of base images "
                      "(uploaded once, reused)")
