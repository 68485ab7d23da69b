"""How a VM starts: the :class:`Launcher` a :class:`~pytest_flake.vm.VM` is handed, and what every kind shares.

The VM knows what a guest needs (keys, a seed, its domain XML, SSH, warm states); a launcher knows
where the domain runs and where its files live:

- :class:`~pytest_flake.vm.local.LocalLauncher`: libvirt on this machine, the VM's files in the
  session's folder (handed to QEMU's user), its console a file, its ports free here;
- :class:`~pytest_flake.vm.remote.RemoteLauncher`: libvirt on another host (``qemu+ssh://``...),
  the VM's disks volumes in the ``pytest-flake`` pool there, its console read through a stream,
  its ports free at that host's 127.0.0.1 and reached through the session's SSH master.

:class:`~pytest_flake.vm.VMPool` picks the kind once, from the libvirt URI, and makes one launcher
per VM (the NixOS test driver hands a machine its ``StartCommand``; testinfra picks a backend from
the host spec). Each launcher class also carries its side of the sweep and of the doctor
(``sweep_host``, ``check_host``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._host import free_port
from ..errors import VMError
from .common import NETDEV_ID
from .connection import current_domain, destroy_domain, libvirt_module
from .domain import netdev

if TYPE_CHECKING:
    from ..images import Image
    from .warm import WarmState


@dataclass(frozen=True)
class VMConfig:
    """One VM's name, folder and sizes, and the session it belongs to; where its own files are."""

    name: str
    dir: Path
    session_id: str
    image: str
    memory: int  # MiB
    cpus: int
    disk_size: int  # bytes; the overlay's virtual size
    timeout: float  # --flake-timeout: SSH readiness, wait_until_succeeds...

    @property
    def overlay(self) -> Path:
        return self.dir / f"{self.name}.qcow2"

    @property
    def console(self) -> Path:
        return self.dir / f"{self.name}.console.log"

    @property
    def seed(self) -> Path:
        return self.dir / f"{self.name}.seed.img"

    @property
    def key_copy(self) -> Path:
        """The copy of a warm state's private key (that guest authorises it, not the session's)."""
        return self.dir / f"{self.name}.id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / f"{self.name}.known_hosts"

    @property
    def agent_socket(self) -> Path:
        """The host's end of the guest agent's port (a unix socket libvirt binds; see channel.py)."""
        return self.dir / f"{self.name}.agent"


@dataclass(frozen=True)
class Disks:
    """What a cold boot's domain names: paths as its libvirt sees them (here, or on the other host)."""

    overlay: Path
    kernel: Path | None
    initrd: Path | None
    seed: Path | None
    size: int  # the overlay's virtual size: the one asked for, never below the image's


Teardown = list[tuple[str, Callable[[], None]]]  # (what, step): each step's failure is logged on its own


class Platform(Protocol):
    """What a VM asks of its session besides the connection, the store and the keys (a VMPool is one)."""

    def image(self, spec: str) -> Image: ...

    def accel(self, image: Image) -> str: ...

    def kvm_trial_result(self, works: bool, why: str) -> str: ...

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]: ...


class Launcher(Protocol):
    """How one VM's domain is started, saved, restored, reached and removed; the VM calls nothing else
    that depends on where libvirt runs."""

    where: str  # for log lines: "" (this machine) or " on the host"
    logs_here: bool  # QEMU's log of the domain is a file on this machine
    dom: Any  # the running domain (None: none)
    ssh_port: int  # the guest's SSH on this machine's 127.0.0.1 (after boot or restore)

    @property
    def seclabel(self) -> str | None:
        """QEMU's user as libvirt's DAC label for the domain, or None."""
        ...

    def console_target(self) -> Path | None:
        """Where the domain's serial port writes: the VM's console file, or None (a pty read through libvirt)."""
        ...

    def agent_target(self) -> Path | None:
        """The unix socket here of the guest agent's port, or None: the domain gets no port (commands: SSH)."""
        ...

    def pick_ports(self) -> None:
        """Choose the port of the guest's SSH forward in QEMU's user network (again: another one)."""
        ...

    def netdev(self) -> str:
        """QEMU's ``-netdev`` value with the SSH forward on the picked port."""
        ...

    def disks(self, image: Image, seed: Path | None, disk_size: int) -> Disks:
        """Make the VM's overlay over ``image`` (and place its seed, a local file): what the domain names."""
        ...

    def boot(self, domain_xml: Callable[[], str]) -> None:
        """Define and start the domain of ``domain_xml()`` (called again for a retry), its console read,
        its SSH forward reachable at :attr:`ssh_port`."""
        ...

    def save(self, folder: Path, image: Image) -> None:
        """Save the running guest into a warm state's folder; the guest runs on. :attr:`dom` is None once
        the guest was saved and until it runs again (a failure then lost it)."""
        ...

    def saved(self) -> None:
        """The state :meth:`save` wrote was published: what it keeps is no longer this VM's to remove."""
        ...

    def restore(self, state: WarmState, image: Image, disk_size: int) -> int:
        """Start this VM from a warm state (new name, ports, overlay); SSH reachable at :attr:`ssh_port`.
        Returns the overlay's virtual size."""
        ...

    def refresh(self) -> None:
        """Look the domain up again when libvirtd dropped the connection it came from (it restarted)."""
        ...

    def destroy(self) -> None:
        """Stop and undefine the domain (one that is gone is not an error)."""
        ...

    def forward(self, guest_port: int) -> int:
        """Add a forward of ``guest_port`` to the running guest; the 127.0.0.1 port here that reaches it."""
        ...

    def ssh_route(self) -> tuple[str | None, int]:
        """How a person's ssh reaches the guest: ``(host to jump through or None, port at its 127.0.0.1)``."""
        ...

    def teardown(self) -> Teardown:
        """The steps that remove the domain and what it ran on, in order (the VM adds its own files)."""
        ...


class DomainLauncher:
    """What every launcher does the same way: the domain, its lookup, its removal, adding a forward."""

    where = ""
    logs_here = True

    def __init__(self, config: VMConfig, conn: Callable[[], Any]) -> None:
        self.config = config
        self._conn = conn  # the session's libvirt connection (opened on first use)
        self.dom: Any = None
        self.ssh_port = 0
        self.hostfwd_port = 0  # the SSH forward in QEMU's netdev (on its host's 127.0.0.1)

    @property
    def name(self) -> str:
        return self.config.name

    def netdev(self) -> str:
        return netdev(self.hostfwd_port)

    def agent_target(self) -> Path | None:
        return None

    def lookup(self) -> Any:
        return self._conn().lookupByName(self.name)

    def refresh(self) -> None:
        if self.dom is not None:
            self.dom = current_domain(self.dom, self.lookup)

    def destroy(self) -> None:
        dom, self.dom = self.dom, None
        if dom is None:
            try:
                dom = self.lookup()
            except Exception:
                return
        if dom is not None:
            destroy_domain(current_domain(dom, self.lookup))  # through a new connection if libvirtd restarted

    def refused(self, xml: str, exc: Exception) -> VMError:
        return VMError(f"vm://{self.name}: libvirt refused to start the domain: {exc}", details=f"domain XML:\n{xml}")

    def forward(self, guest_port: int) -> int:
        import libvirt_qemu

        libvirt = libvirt_module()
        last = ""
        for _ in range(5):
            port = self._forward_port()
            command = f"hostfwd_add {NETDEV_ID} tcp:127.0.0.1:{port}-:{int(guest_port)}"
            try:
                out = libvirt_qemu.qemuMonitorCommand(self.dom, command,
                                                      libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            except libvirt.libvirtError as exc:
                raise VMError(f"vm://{self.name}: {command} failed: {exc}") from exc
            if not out.strip():
                return int(self._reach(guest_port, port))
            self._release(port)
            last = out.strip()
        raise VMError(f"vm://{self.name}: could not forward guest port {guest_port}: {last}")

    def _forward_port(self) -> int:
        """A port for a new forward, free where QEMU runs."""
        return free_port()

    def _reach(self, guest_port: int, port: int) -> int:
        """The port here that reaches QEMU's new forward on ``port``."""
        return port

    def _release(self, port: int) -> None:
        """A forward on ``port`` was refused."""
