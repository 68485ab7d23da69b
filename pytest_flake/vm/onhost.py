"""What a :class:`~pytest_flake.vm.machine.VM` does differently on libvirt of another host.

There, the daemon sees none of this machine's files: the VM's disks are volumes it owns
(deleted at its teardown), its console is read through libvirt, its forwarded ports are
reached through the session's SSH master, and its warm state stays on that host as volumes
(:mod:`pytest_flake.vm.remote` has the host side: pool, uploads, console stream, ports).
:class:`OnAnotherHost` is the part of the VM that handles this; on this machine (``remote``
is None) each of its steps does nothing or is never called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FlakeError, VMError
from ..images import Image, disk_info
from .common import log
from .connection import libvirt_module
from .domain import restore_xml
from .remote import ConsoleReader, RemoteHost, hostfwd_failed, read_remote_record, write_remote_record
from .savefile import HEADER_SIZE, header_length, header_with_xml, xml_of_header
from .warm import WarmState, boot_log_of

if TYPE_CHECKING:
    from .machine import VMConfig


class OnAnotherHost:
    """The steps of a VM on another host's libvirt: volumes, the console stream, tunnels, warm states there."""

    # the VM's own state and steps that these use (the VM sets and defines them)
    name: str
    config: VMConfig
    console: Path
    disk_size: int
    seed: Path | None
    ssh_port: int
    remote: RemoteHost | None
    _conn: Callable[[], Any]
    _dom: Any
    _hostfwd_port: int
    _remote_forwards: dict[int, int]
    _volumes: list[str]
    _console_reader: ConsoleReader | None

    def _netdev(self, extra: dict[int, int] | None = None) -> str:
        raise NotImplementedError

    def _pick_hostfwd_port(self) -> None:
        raise NotImplementedError

    def _own(self, name: str) -> str:
        if name not in self._volumes:
            self._volumes.append(name)
        return name

    def _disown(self, *names: str) -> None:
        for name in names:
            if name in self._volumes:
                self._volumes.remove(name)

    def _attach_console(self) -> None:
        """Another host: read the console through libvirt into the local console file, then let the guest run."""
        if self.remote is None:
            return
        self._stop_console()
        try:
            self._console_reader = self.remote.console(self._dom, self.console, self.name)
        except FlakeError as exc:  # the guest works without it; only its console log stays empty
            log.warning("vm://%s: cannot read the console through libvirt: %s", self.name, exc)
        finally:
            self._dom.resume()

    def _stop_console(self) -> None:
        reader, self._console_reader = self._console_reader, None
        if reader is not None:
            reader.stop()

    def _tunnel_ssh(self) -> None:
        """Another host: the guest's SSH forward there, reached through the session's SSH master."""
        if self.remote is not None:
            self.ssh_port = self.remote.ssh.forward(self._hostfwd_port)

    def _remote_disk(self, remote: RemoteHost, image: Image) -> tuple[Path, Path | None, Path | None, Path | None]:
        """Upload the base (once), make this VM's overlay and seed volumes: paths on the host."""
        base = remote.base(image)
        virtual = int(disk_info(image.disk).get("virtual-size") or 0)
        if self.disk_size < virtual:
            log.warning("vm: --vm-disk-size is less than the %s image's disk; using the image's size", image.name)
            self.disk_size = virtual
        overlay = remote.overlay(self._own(f"{self.name}.qcow2"), base.disk, base.disk_format, self.disk_size)
        seed = None
        if self.seed is not None:
            seed = Path(remote.upload(self._own(f"{self.name}.seed.img"), self.seed))
            self.seed.unlink(missing_ok=True)
        return (Path(overlay), Path(base.kernel) if base.kernel else None, Path(base.initrd) if base.initrd else None,
                seed)

    def _save_guest_there(self, remote: RemoteHost, tmp: Path) -> tuple[str, ...]:
        """Another host: the save file and the overlay stay there as volumes (named in ``tmp``'s record);
        this guest goes on, restored at once over a new overlay on top of the saved one (nothing is
        copied). Returns those two volumes: the warm state's once it is published."""
        libvirt = libvirt_module()
        save, overlay = f"{self.name}.state.save", f"{self.name}.qcow2"
        self._dom.save(remote.path(self._own(save)))
        self._dom = None
        self._stop_console()
        remote.names()  # the pool sees the save file as a volume
        head = remote.read_head(save, HEADER_SIZE)
        header = remote.read_head(save, header_length(head, save))
        (tmp / "save.header").write_bytes(header)
        running = remote.overlay(self._own(f"{self.name}.run.qcow2"), remote.path(overlay), "qcow2", self.disk_size)
        xml = restore_xml(xml_of_header(header, save), name=self.name, overlay=Path(running), console=None,
                          netdev=self._netdev(), session=self.config.session_id, new_chain=True, keep_uuid=True)
        self._conn().restoreFlags(remote.path(save), xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        self._dom = self._conn().lookupByName(self.name)
        self._attach_console()
        write_remote_record(tmp, uri=remote.uri, save=save, overlay=overlay)
        return save, overlay

    def _restore_on_host(self, remote: RemoteHost, state: WarmState) -> None:
        """Another host: a new overlay over the state's, a copy of its save file with this VM's XML, a restore."""
        libvirt = libvirt_module()
        record = read_remote_record(state.dir)
        if record is None or record["uri"] != remote.uri:
            raise VMError(f"vm://{self.name}: restore failed: the warm state {state.dir.name} is not on {remote.uri}")
        saved = remote.volume(record["overlay"])
        if saved is None or remote.volume(record["save"]) is None:
            raise VMError(f"vm://{self.name}: restore failed: the warm state's volumes are gone from {remote.uri}")
        self.disk_size = max(self.disk_size, int(saved.info()[1]))
        overlay = remote.overlay(self._own(f"{self.name}.qcow2"), remote.path(record["overlay"]), "qcow2",
                                 self.disk_size)
        header = (state.dir / "save.header").read_bytes()
        copy = self._own(f"{self.name}.save")
        self.console.write_text(boot_log_of(state))
        try:
            for attempt in range(3):
                self._pick_hostfwd_port()
                xml = restore_xml(xml_of_header(header), name=self.name, overlay=Path(overlay), console=None,
                                  netdev=self._netdev(), session=self.config.session_id, new_chain=True)
                path = remote.copy_save(record["save"], copy, header_with_xml(header, xml))
                try:
                    self._conn().restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
                    break
                except libvirt.libvirtError as exc:
                    if not (hostfwd_failed(str(exc)) and attempt < 2):
                        raise
                    log.info("vm://%s: port %d is taken on the host; another one", self.name, self._hostfwd_port)
            self._dom = self._conn().lookupByName(self.name)
            self._attach_console()
        finally:
            with contextlib.suppress(VMError):
                remote.delete(copy)
                self._disown(copy)
        self._tunnel_ssh()

    def _close_tunnels(self) -> None:
        remote = self.remote
        if remote is None:
            return
        for port in [self._hostfwd_port, *self._remote_forwards.values()]:
            if port:
                if remote.ssh.is_open:
                    remote.ssh.cancel(port)
                remote.release_port(port)
        self._remote_forwards.clear()

    def _delete_volumes(self) -> None:
        remote = self.remote
        failed = []
        for name in list(self._volumes) if remote is not None else []:
            try:
                remote.delete(name)  # type: ignore[union-attr]
                self._volumes.remove(name)
            except VMError as exc:
                failed.append(str(exc))
        if failed:
            raise VMError("; ".join(failed))
