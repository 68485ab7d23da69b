"""The VMs of one session: :class:`VMPool` resolves images once, decides the accelerator once, makes
the session's key pair, prepares QEMU's files, chooses once (from the libvirt URI) how its VMs start,
and hands each :class:`VM` what it needs: its own launcher among them."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..images import Image, ProgressCallback, image_cache, resolve_image
from .accel import KVM_TRIAL, choose_accel, probe_kernel, record_probe
from .common import is_root, log
from .connection import alive_connection, connect, default_uri, is_remote, ssh_url
from .domain import DomainEdit
from .launch import Launcher, VMConfig
from .local import LocalLauncher
from .machine import VM
from .qemuuser import QemuUser, check_readable, grant_search, hand_to_qemu
from .remote import RemoteLauncher
from .remotehost import RemoteHost, remote_accel
from .seed import KeyPair
from .warm import Hypervisor, WarmStore, read_remote_record, warm_enabled, warm_key

if TYPE_CHECKING:

    from ..config import Settings
    from ..session import Session
    from ..tunnel import SSHHost


@dataclass
class _Counters:
    """Pool and VM numbers of one session in this process."""

    pools: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    vms: Iterator[int] = field(default_factory=lambda: itertools.count(1))


_COUNTERS: dict[str, _Counters] = {}
_COUNTERS_LOCK = threading.Lock()


def launcher_type(uri: str) -> type[LocalLauncher] | type[RemoteLauncher]:
    """How VMs of libvirt at ``uri`` start: on this machine, or on another host (it sees none of our files)."""
    return RemoteLauncher if is_remote(uri) else LocalLauncher


class VMPool:
    """The VMs of one session: images, accelerator, keys, warm states; a context manager.

    ``pool.vm(image=None, memory=None, cpus=None)`` returns a new :class:`VM` to enter.
    Closing the pool closes every VM it made and removes the session's VM folder.

    ``edit_domain(name, root)`` is handed to every VM: it edits a VM's domain XML (the root
    ``<domain>`` element, in place) as the last step before the domain is defined, here or on
    another host. It is also called on a reference document of the VM's image and size, and what
    it changes there keys the VM's warm state (an edit that changes nothing keeps today's states).
    """

    def __init__(self, settings: Settings, session: Session, *, warm: bool | None = None,
                 edit_domain: DomainEdit | None = None, progress: ProgressCallback | None = None) -> None:
        self.settings = settings
        self.progress = progress  # shows a download of an image (the plugin: on pytest's terminal)
        self.session = session
        self.edit_domain = edit_domain
        self.warm = warm_enabled() if warm is None else warm  # PYTEST_FLAKE_VM_WARM=0 turns it off
        self.uri = default_uri(settings)
        self.cache = image_cache(session.root)
        # How its VMs start, chosen once: libvirt here (the VMs' files in the session's folder), or on
        # another host (volumes in its pool, the console through libvirt, ports through SSH)
        self.remote: RemoteHost | None = None
        self._launch: Callable[[VMConfig], Launcher]
        if launcher_type(self.uri) is RemoteLauncher:
            remote = self.remote = RemoteHost(self.uri, conn=lambda: self.conn, ssh=self._ssh, cache=self.cache,
                                              session_id=session.id)
            self._launch = lambda config: RemoteLauncher(config, lambda: self.conn, remote)
        else:
            self._launch = lambda config: LocalLauncher(config, lambda: self.conn, self)
        self.store = WarmStore(self.cache / "warm", forget=self.forget_remote_state)
        # Several pools may serve one session (a test can open its own): each has its own
        # folder (its key pair, overlays, seeds, consoles) below the session's, and VM numbers
        # are counted per session, so no pool removes or reuses what another one made.
        with _COUNTERS_LOCK:
            counters = _COUNTERS.setdefault(session.id, _Counters())
            self.dir = session.root / "vms" / session.id / f"pool-{next(counters.pools)}"
        self._vm_numbers = counters.vms
        self._conn: Any = None
        self._images: dict[str, Image] = {}
        self._accel: str | None = None
        self._qemu_user: QemuUser | None = None
        self._keys: KeyPair | None = None
        self._hypervisors: dict[str, Hypervisor] = {}
        self._vms: list[VM] = []
        self.starts: list[tuple[str, bool, float]] = []  # (name, warm, seconds to SSH ready)
        self._count = 0
        self._lock = threading.RLock()

    def __enter__(self) -> VMPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> Any:
        """The libvirt connection (opened on first use, and again when the daemon dropped it: restarted)."""
        if self._conn is not None and not alive_connection(self._conn):
            log.warning("vm: the connection to libvirt at %s was lost (libvirtd restarted?); connecting again",
                        self.uri)
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = connect(self.uri)
        return self._conn

    def _ssh(self) -> SSHHost:
        """The session's SSH master to the libvirt host (shared with Docker on that host)."""
        from ..tunnel import ssh_host

        return ssh_host(ssh_url(self.uri), control_dir=self.session.dir)

    def forget_remote_state(self, folder: Path) -> None:
        """A warm state is removed: so are its volumes, when they are on this pool's host."""
        record = read_remote_record(folder)
        if record is None or self.remote is None or record["uri"] != self.uri:
            return
        for name in (record["save"], record["overlay"]):
            self.remote.delete(name)

    @property
    def keys(self) -> KeyPair:
        """The session's SSH key pair."""
        if self._keys is None:
            self._keys = KeyPair.create(self.dir, f"pytest-flake-{self.session.id}")
        return self._keys

    def next_name(self) -> str:
        with self._lock:
            self._count += 1
            self.dir.mkdir(parents=True, exist_ok=True)
            with _COUNTERS_LOCK:
                number = next(self._vm_numbers)
            return str(self.session.name("vm", str(number)))

    def vm(self, image: str | None = None, memory: int | None = None, cpus: int | None = None) -> VM:
        """A new VM (not started: use it as a context manager)."""
        config = VMConfig(
            name=self.next_name(), dir=self.dir, session_id=self.session.id, image=image or self.settings.vm_image,
            memory=int(memory or self.settings.vm_memory), cpus=int(cpus or self.settings.vm_cpus),
            disk_size=int(self.settings.vm_disk_size), timeout=float(self.settings.flake_timeout),
        )
        return VM(config, launcher=self._launch(config), store=self.store if self.warm else None,
                  keys=lambda: self.keys, platform=self, edit_domain=self.edit_domain, on_start=self.register,
                  on_ready=self._started, on_close=self.unregister)

    def _started(self, vm: VM) -> None:
        self.starts.append((vm.name, vm.warm, vm.ready_seconds))

    def image(self, spec: str) -> Image:
        with self._lock:
            if spec not in self._images:
                self._images[spec] = resolve_image(spec, self.cache, progress=self.progress)
            return self._images[spec]

    def accel(self, image: Image) -> str:
        """``kvm`` or ``tcg`` (decided once a session), or :data:`KVM_TRIAL` until a first boot decides."""
        with self._lock:
            if self.remote is not None:  # the local KVM probe says nothing about another host
                if self._accel is None:
                    self._accel = remote_accel(self.settings, self.conn, self.uri)
                return self._accel
            if self._accel is None or self._accel == KVM_TRIAL:
                kernel, source = probe_kernel(image, self.cache)
                self._accel = choose_accel(self.settings, kernel, self.cache, kernel_source=source)
            return self._accel

    def kvm_trial_result(self, works: bool, why: str) -> str:
        """Record what a first boot under KVM showed (until the host reboots); the accelerator to use."""
        with self._lock:
            log.info("vm: KVM %s: %s", "works" if works else "unusable, using TCG", why)
            record_probe(self.cache, works, why)
            self._accel = "kvm" if works else "tcg"
            return self._accel

    @property
    def qemu_user(self) -> QemuUser | None:
        """Who QEMU runs as: libvirt's unprivileged user on the system daemon; None on a session daemon
        (QEMU runs as the caller there)."""
        if not (is_root() and self.uri.startswith("qemu:///system")):
            return None
        with self._lock:
            if self._qemu_user is None:
                self._qemu_user = QemuUser.of(self.conn.getCapabilities())
            return self._qemu_user

    def seclabel(self) -> str | None:
        """QEMU's user as libvirt's DAC label (``+UID:+GID``), never root; None where QEMU runs as the caller.

        The domain gets ``relabel='no'``: libvirt does not chown the shared base images and kernels (they
        stay root's and read-only); each VM's overlay, seed and console are handed to QEMU's user instead.
        """
        user = self.qemu_user
        return user.label if user is not None else None

    def prepare_files(self, image: Image | None, *own: Path, reads: tuple[Path, ...] = ()) -> None:
        """Make ``own`` QEMU's (0600); the image and ``reads`` (a warm state's overlay, a backing file QEMU
        only reads) readable and reachable for QEMU's user (their folders get a search-only ACL entry)."""
        user = self.qemu_user
        if user is None:
            return
        for path in (*own, *reads):
            grant_search(user, path)
        hand_to_qemu(user, *own)
        check_readable(user, *reads)
        if image is not None:
            for shared in (image.disk, image.kernel, image.initrd):
                if shared is not None:
                    grant_search(user, shared)
            check_readable(user, image.disk, image.kernel, image.initrd)

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]:
        """The validity key of a warm state of this image and size here (see :func:`warm_key`)."""
        with self._lock:
            if accel not in self._hypervisors:
                self._hypervisors[accel] = Hypervisor.of(self.conn, accel, remote=self.remote is not None)
            hypervisor = self._hypervisors[accel]
        user = self.qemu_user
        return warm_key(image, memory=memory, cpus=cpus, accel=accel, uri=self.uri, hypervisor=hypervisor,
                        disk_size=disk_size, qemu_label=user.label if user is not None else "")

    def register(self, vm: VM) -> None:
        with self._lock:
            self._vms.append(vm)

    def unregister(self, vm: VM) -> None:
        with self._lock:
            if vm in self._vms:
                self._vms.remove(vm)
        if vm.left_behind:  # the session's registration stays: the next session sweeps what carries its id
            self.session.keep = True
            log.warning("vm://%s: could not %s; the next session will", vm.name, ", ".join(vm.left_behind))

    def close(self) -> None:
        """Close every VM and remove the session's VM folder (the warm states in the cache stay)."""
        for vm in list(self._vms):
            try:
                vm.close()
            except Exception as exc:
                log.error("vm://%s: close failed: %s", vm.name, exc)
        kept = [vm for vm in self._vms if vm.kept]
        if not kept:
            shutil.rmtree(self.dir, ignore_errors=True)
            for folder in (self.dir.parent, self.dir.parent.parent):  # the session's, then vms/
                with contextlib.suppress(OSError):
                    folder.rmdir()  # stays only while something (another pool's) is in it
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

