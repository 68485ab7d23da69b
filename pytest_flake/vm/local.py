"""A VM on this machine's libvirt (``qemu:///system``, ``qemu:///session``): :class:`LocalLauncher`.

The daemon reads the VM's own files in the session's folder: its overlay (a qcow2 over the cached
image), its seed and its console log, handed to QEMU's unprivileged user before the domain starts.
Forwarded ports are free ports of this machine's 127.0.0.1. A warm state is a save file and a copy
of the overlay in the state's folder, read-only once published; a restore copies nothing: the VM
runs on a new overlay over the state's, and libvirt reads the shared save file through a FIFO of
the VM's own that begins with its header (:class:`~pytest_flake.vm.savefile.SaveFeed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._host import free_port, reflink_copy
from ..errors import FlakeError, VMError
from ..images import Image, create_overlay, overlay_on
from .channel import usable_socket_path
from .common import is_root
from .connection import libvirt_module
from .domain import restore_xml
from .launch import Disks, DomainLauncher, Teardown, VMConfig
from .qemuuser import QemuUser
from .savefile import SaveFeed, header_with_xml, read_save_header, xml_of_header

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .warm import WarmState


class QemuFiles(Protocol):
    """Who QEMU runs as, and handing it a VM's files (a VMPool is one)."""

    def prepare_files(self, image: Image | None, *own: Path, reads: tuple[Path, ...] = ()) -> None: ...

    def seclabel(self) -> str | None: ...


class LocalLauncher(DomainLauncher):
    """libvirt on this machine: the VM's files in its folder, its console a file, ports free here.

    ``qemu`` hands the VM's files to QEMU's user and names it in the domain; None: QEMU runs as the caller.
    """

    def __init__(self, config: VMConfig, conn: Callable[[], Any], qemu: QemuFiles | None = None) -> None:
        super().__init__(config, conn)
        self.qemu = qemu
        self._seed: Path | None = None

    @property
    def seclabel(self) -> str | None:
        return self.qemu.seclabel() if self.qemu is not None else None

    def _hand_over(self, image: Image | None, *own: Path, reads: tuple[Path, ...] = ()) -> None:
        if self.qemu is not None:
            self.qemu.prepare_files(image, *own, reads=reads)

    def console_target(self) -> Path | None:
        return self.config.console

    def agent_target(self) -> Path | None:
        return usable_socket_path(self.config.agent_socket)

    def pick_ports(self) -> None:
        self.ssh_port = self.hostfwd_port = free_port()

    def disks(self, image: Image, seed: Path | None, disk_size: int) -> Disks:
        overlay = self.config.overlay
        size = create_overlay(image, overlay, disk_size)
        self._seed = seed
        self._hand_over(image, overlay, self.config.console, *([seed] if seed else []))
        return Disks(overlay=overlay, kernel=image.kernel, initrd=image.initrd, seed=seed, size=size)

    def boot(self, domain_xml: Callable[[], str]) -> None:
        libvirt = libvirt_module()
        xml = domain_xml()
        try:
            self.dom = self._conn().createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise self.refused(xml, exc) from exc

    def save(self, folder: Path, image: Image) -> None:
        """The save file and a copy of the overlay go into ``folder``; the guest runs on from that save."""
        libvirt = libvirt_module()
        self.dom.save(str(folder / "state.save"))
        self.dom = None
        reflink_copy(self.config.overlay, folder / "overlay.qcow2", error=VMError,
                     what=f"vm://{self.name}: copying the overlay of the saved guest")
        self._hand_over(image, self.config.overlay, self.config.console, *([self._seed] if self._seed else []))
        self._conn().restoreFlags(str(folder / "state.save"), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        self.dom = self.lookup()

    def saved(self) -> None:
        """Nothing of this VM's went into the state: it holds copies."""

    def restore(self, state: WarmState, image: Image, disk_size: int) -> int:
        """Start from ``state`` copying nothing: a new overlay over the state's, its save file fed through a FIFO.

        The state's files stay as they are (read-only), so VMs of several sessions restore one state at
        once: each reads the shared save file through a FIFO of its own that begins with this VM's
        header (its name, UUID, ports, console, overlay), see :class:`~pytest_flake.vm.savefile.SaveFeed`.
        """
        libvirt = libvirt_module()
        self.pick_ports()
        overlay, console = self.config.overlay, self.config.console
        overlay_on(state.overlay, overlay)  # the state's virtual size; QEMU only reads the state's overlay
        header = read_save_header(state.save)
        xml = restore_xml(xml_of_header(header, str(state.save)), name=self.name, overlay=overlay, console=console,
                          netdev=self.netdev(), session=self.config.session_id, new_chain=True,
                          agent=self.agent_target())
        self._hand_over(image, overlay, console, reads=(state.overlay,))
        feed = SaveFeed(self.config.dir / f"{self.name}.restore.fifo", state.save,
                        header_with_xml(header, xml, str(state.save)), prepare=lambda fifo: self._hand_over(None, fifo))
        with feed:
            try:
                self._conn().restoreFlags(str(feed.fifo), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            except libvirt.libvirtError as exc:
                if feed.error is None:
                    raise
                raise VMError(f"vm://{self.name}: restore failed: feeding {state.save} to libvirt failed: "
                              f"{feed.error}; libvirt: {exc}") from exc
        self.dom = self.lookup()
        return disk_size  # the saved overlay's: a warm state's key holds the disk size

    def ssh_route(self) -> tuple[str | None, int]:
        return None, self.ssh_port

    def teardown(self) -> Teardown:
        return [("destroy the domain", self.destroy),
                ("remove the overlay", lambda: self.config.overlay.unlink(missing_ok=True)),
                ("remove the agent's socket", lambda: self.config.agent_socket.unlink(missing_ok=True))]

    # ---- the sweep's and the doctor's side

    @staticmethod
    def sweep_host(conn: Any, uri: str, dead_ids: Iterable[str], warm_root: Path) -> int:
        """What dead sessions left in libvirt here besides domains: nothing (their files are in their folders)."""
        return 0

    @staticmethod
    def check_host(conn: Any, uri: str, cache: Path) -> tuple[bool, str]:
        """Who QEMU runs as, and whether it can reach the image cache."""
        if not (is_root() and uri.startswith("qemu:///system")):
            return True, (f"QEMU runs as {os.environ.get('USER') or os.geteuid()} (a session daemon runs it as the "
                          "caller)")
        try:
            user = QemuUser.of(conn.getCapabilities())
        except FlakeError as exc:
            return False, str(exc)
        if user.uid == 0:
            return False, "QEMU runs as root: set user and group in /etc/libvirt/qemu.conf to libvirt's qemu user"
        closed = [folder for folder in reversed(cache.resolve().parents)
                  if folder.exists() and not user.can_search(folder)]
        reach = ("it can reach the image cache" if not closed else
                 f"the first VM lets it pass through {', '.join(map(str, closed))} (ACL u:{user.name}:x, search only)")
        return True, f"QEMU runs as {user.name} (uid {user.uid}, gid {user.gid}), not root; {reach}"
