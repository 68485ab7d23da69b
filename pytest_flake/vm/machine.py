"""One guest: :class:`VM`, a context manager that boots (or restores) a domain and reaches it over SSH.

A VM is handed narrow collaborators, never the pool: the libvirt connection, the warm store,
the session's key pair and a :class:`Platform` (images, the accelerator, QEMU's files).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._host import free_port, locked, reflink_copy, write_private
from ..errors import CheckTimeout, FlakeError, FlakeTimeout, NotReady, VMError, tail
from ..guest import GuestCommands
from ..images import Image, create_overlay
from ..waiting import wait_for
from .accel import KVM_TRIAL, watch_kvm_first_boot
from .common import NETDEV_ID, log, step
from .connection import current_domain, destroy_domain, libvirt_module
from .diagnose import Watch, check_floor, domain_state, evidence, panic_in
from .domain import BootSpec, boot_xml, netdev, restore_xml
from .onhost import OnAnotherHost
from .remote import ConsoleReader, RemoteHost, hostfwd_failed
from .savefile import copy_save_with_xml, read_save_xml
from .seed import HostKey, KeyPair, cloud_config, credential, make_seed, render_user_data, skip_dropin
from .ssh import (
    QuietParamiko,
    hostkey_lines_from_console,
    pinned_backend_class,
    sftp_get,
    sftp_put,
    ssh_banner,
    ssh_client,
)
from .warm import WarmState, WarmStore, boot_log_of, warm_slot

if TYPE_CHECKING:
    import paramiko
    from testinfra.backend.base import CommandResult
    from testinfra.host import Host


class Platform(Protocol):
    """What a VM asks of its session besides the connection, the store and the keys (a VMPool is one)."""

    def image(self, spec: str) -> Image: ...

    def accel(self, image: Image) -> str: ...

    def kvm_trial_result(self, works: bool, why: str) -> str: ...

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]: ...

    def prepare_files(self, image: Image | None, *own: Path) -> None: ...

    def seclabel(self) -> str | None: ...

    def remote_host(self) -> RemoteHost | None: ...


@dataclass(frozen=True)
class VMConfig:
    """One VM's name, folder and sizes, and the session it belongs to."""

    name: str
    dir: Path
    session_id: str
    image: str
    memory: int  # MiB
    cpus: int
    disk_size: int  # bytes; the overlay's virtual size
    timeout: float  # --flake-timeout: SSH readiness, wait_until_succeeds...


class VM(GuestCommands, OnAnotherHost):
    """One libvirt guest reachable over SSH; a context manager.

    ``vm.run("cmd")`` and ``vm.host`` (a testinfra Host) share one SSH connection;
    ``vm.forward(port)`` publishes a guest port on 127.0.0.1; ``vm.console_log()`` is the
    serial console. Entering starts it (cleaning up if the start fails); leaving removes
    the domain, its overlay and its console log. ``close()`` may be called more than once.
    """

    def __init__(self, config: VMConfig, *, conn: Callable[[], Any], store: WarmStore | None,
                 keys: Callable[[], KeyPair], platform: Platform,
                 on_start: Callable[[VM], None] = lambda vm: None, on_ready: Callable[[VM], None] = lambda vm: None,
                 on_close: Callable[[VM], None] = lambda vm: None) -> None:
        self.config = config
        self._conn = conn  # the session's libvirt connection (opened on first use)
        self.store = store  # None: warm starts are off
        self._session_keys = keys  # the session's key pair (made on first use)
        self.platform = platform
        self._on_start, self._on_ready, self._on_close = on_start, on_ready, on_close
        self.image_spec = config.image
        self.memory = int(config.memory)
        self.cpus = int(config.cpus)
        self.disk_size = int(config.disk_size)
        self.name = config.name
        self.dir = config.dir
        self.overlay = self.dir / f"{self.name}.qcow2"
        self.console = self.dir / f"{self.name}.console.log"
        self.seed: Path | None = None
        self.ssh_port = 0
        self.warm = False  # restored from a saved state (of this session or an earlier one)
        self.warm_from = ""  # the session that saved the state it was restored from
        self.keys: KeyPair | None = None  # the key pair authorised in this guest
        self.ready_seconds = 0.0  # start() to SSH ready, including saving a warm state
        self.boot_seconds = 0.0  # start() to the first SSH answer
        self.kept = False
        self.left_behind: list[str] = []  # the steps of close() that failed: the next session's sweep finishes them
        self._dom: Any = None
        self._image: Image | None = None
        self._hostkeys: tuple[str, ...] = ()
        # where the host key checked on SSH comes from: "seed" (made here, handed over by cloud-init),
        # "image" (known from the image build), "warm state", "console", or "first use" (not checked)
        self.host_key_origin = ""
        self._client: paramiko.SSHClient | None = None
        self._host: Host | None = None
        self._forwards: dict[int, int] = {}
        # libvirt on another host (None: this machine): volumes, console stream, ports there
        self.remote = platform.remote_host()
        self._hostfwd_port = 0  # the SSH forward in QEMU's netdev (on the host's 127.0.0.1)
        self._remote_forwards: dict[int, int] = {}  # guest port -> port on the host's 127.0.0.1
        self._volumes: list[str] = []  # volumes of this VM on the host (its teardown deletes them)
        self._console_reader: ConsoleReader | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<VM vm://{self.name} ssh=127.0.0.1:{self.ssh_port}>"

    # ---- lifecycle

    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def boot_kind(self) -> str:
        """``warm`` (restored from a saved state) or ``cold`` (booted)."""
        return "warm" if self.warm else "cold"

    def start(self) -> VM:
        """Start the guest (warm from a saved state when one fits, else cold) and wait for SSH."""
        started = time.monotonic()
        self._on_start(self)
        image = self._image = self.platform.image(self.image_spec)
        check_floor(f"vm://{self.name}", image.name, self.memory, self.cpus, image.min_memory)
        accel = self.platform.accel(image)
        booted = False
        if accel == KVM_TRIAL:  # no kernel to probe KVM with: this boot decides
            booted = self._cold_boot(image, "kvm", trial=True)
            accel = "kvm" if booted else "tcg"
        key: dict[str, Any] | None = None
        store = self.store
        if store is not None:
            try:
                key = self.platform.warm_key(image, self.memory, self.cpus, accel, self.disk_size)
            except Exception as exc:  # warm starts are an optimisation: never an error
                log.warning("vm://%s: no warm starts (%s)", self.name, exc)
        state = store.load(key) if store is not None and key is not None and not booted else None
        with contextlib.ExitStack() as claim:
            if store is not None and key is not None and state is None and not booted:
                # one session (an xdist worker) cold-boots and saves this VM; one that starts it meanwhile
                # waits here, then restores that state instead of booting and saving a second time
                claim.enter_context(locked(store.root / f"{warm_slot(key)}.boot.lock", on_wait=lambda: log.info(
                    "vm://%s: another session boots the same VM; waiting to restore its warm state", self.name)))
                state = store.load(key)
            if store is not None and state is not None:
                try:
                    self._restore(state)
                    self.warm = True
                    self.warm_from = state.created_by
                except FlakeError as exc:
                    log.warning("vm://%s: warm start failed, booting cold: %s", self.name, exc)
                    self._drop_domain()
                    self.overlay.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        store.drop(state)
            if not self.warm:
                if not booted:
                    self._cold_boot(image, accel)
                self.boot_seconds = time.monotonic() - started
                if store is not None and key is not None and store.load(key) is None:
                    self._save_for_later(key, time.monotonic() - started)
        self.ready_seconds = time.monotonic() - started
        if self.warm:
            self.boot_seconds = self.ready_seconds
        self._on_ready(self)
        log.info("vm://%s: SSH ready on 127.0.0.1:%d after %.1fs (%s)", self.name, self.ssh_port,
                 self.ready_seconds, "warm start" if self.warm else "cold boot")
        return self

    def _netdev(self, extra: dict[int, int] | None = None) -> str:
        return netdev(self._hostfwd_port, extra)

    def _pick_hostfwd_port(self) -> None:
        """The SSH forward's port: free here, or (another host) free at its 127.0.0.1."""
        if self.remote is None:
            self.ssh_port = self._hostfwd_port = free_port()
            return
        if self._hostfwd_port:
            self.remote.release_port(self._hostfwd_port)
        self._hostfwd_port = self.remote.pick_port()

    def _cold_boot(self, image: Image, accel: str, *, trial: bool = False) -> bool:
        """Boot ``image`` and wait for SSH; True. With ``trial`` (under KVM), first watch the console
        for kernel progress: without it, record that KVM hangs, remove the domain and return False."""
        conn = self._conn()
        self._pick_hostfwd_port()
        if self.remote is None:
            self.disk_size = create_overlay(image, self.overlay, self.disk_size)
        self.console.write_text("")
        self.keys = self._session_keys()
        oem = [credential("ssh.authorized_keys.root", self.keys.public)]
        for unit in image.skip_units:
            oem.append(credential(f"systemd.unit-dropin.{unit}", skip_dropin(unit)))
        hostkeys, origin = image.hostkeys, "image"
        if image.cloud_init:
            host_key = HostKey.generate()
            hostkeys, origin = (" ".join(host_key.public.split()[:2]),), "seed"  # the first connection is checked
            user_data = render_user_data(cloud_config(self.keys.public, host_key, image.skip_units))
            self.seed = make_seed(self.dir / f"{self.name}.seed.img", user_data, self.name)
        overlay, kernel, initrd, seed = self.overlay, image.kernel, image.initrd, self.seed
        if self.remote is not None:  # nothing of this machine's files is seen there: volumes
            overlay, kernel, initrd, seed = self._remote_disk(self.remote, image)
        self.platform.prepare_files(image, self.overlay, self.console, *([self.seed] if self.seed else []))
        with step(f"vm://{self.name}: cold boot of {image.name} ({accel}, {self.memory} MiB, {self.cpus} CPU)"):
            libvirt = libvirt_module()
            for attempt in range(3):
                xml = boot_xml(BootSpec(
                    name=self.name, session=self.config.session_id, image_key=image.key, accel=accel,
                    memory=self.memory, cpus=self.cpus, overlay=overlay,
                    console=self.console if self.remote is None else None, netdev=self._netdev(),
                    kernel=kernel, initrd=initrd, cmdline=image.cmdline, oem_strings=tuple(oem),
                    seed=seed, seclabel=self.platform.seclabel(),
                ))
                try:
                    paused = libvirt.VIR_DOMAIN_START_PAUSED if self.remote is not None else 0
                    self._dom = conn.createXML(xml, paused)
                    break
                except libvirt.libvirtError as exc:
                    if self.remote is not None and hostfwd_failed(str(exc)) and attempt < 2:
                        log.info("vm://%s: port %d is taken on the host; another one", self.name, self._hostfwd_port)
                        self._pick_hostfwd_port()
                        continue
                    raise VMError(f"vm://{self.name}: libvirt refused to start the domain: {exc}",
                                  details=f"domain XML:\n{xml}") from exc
            self._attach_console()
            self._tunnel_ssh()
            self._hostkeys, self.host_key_origin = hostkeys, origin if hostkeys else ""
            if trial:
                works, why = watch_kvm_first_boot(self.console_log, self._dom.isActive,
                                                  answered=lambda: ssh_banner(self.ssh_port))
                self.platform.kvm_trial_result(works, why)
                if not works:
                    log.warning("vm://%s: %s; booting again under TCG", self.name, why)
                    self._drop_domain()
                    return False
            self._wait_ssh()
        return True

    def _save_for_later(self, key: dict[str, Any], boot_seconds: float) -> None:
        """Save the fresh guest, its overlay and keys as the warm state of ``key``, then resume it.

        Here the save file and a copy of the overlay go into the state's folder; on another host
        they stay there as volumes (:meth:`_save_guest_there`). Failing to save is only a warning
        (the next VM boots cold too); losing the guest is an error.
        """
        libvirt = libvirt_module()
        store, keys, remote = self.store, self.keys, self.remote
        assert store is not None and keys is not None
        kept: tuple[str, ...] = ()  # volumes on the host that became the warm state's
        published = False
        try:
            with store.create(key, self.config.session_id) as tmp:
                if tmp is None:
                    return  # another session saved one meanwhile
                self._disconnect()
                try:
                    with step(f"vm://{self.name}: saving the booted guest{' on the host' if remote else ''} "
                              f"for warm starts"):
                        if remote is None:
                            self._save_guest_here(tmp)
                        else:
                            kept = self._save_guest_there(remote, tmp)
                except (libvirt.libvirtError, VMError, OSError) as exc:
                    if self._dom is None:
                        raise VMError(f"vm://{self.name}: lost the guest while saving it: {exc}") from exc
                    raise
                shutil.copyfile(keys.private, tmp / "id_ed25519")
                (tmp / "id_ed25519.pub").write_text(keys.public + "\n")
                with contextlib.suppress(OSError):  # the boot log, for the console of warm starts
                    shutil.copyfile(self.console, tmp / "console.log")
                store.publish(tmp, key, hostkeys=self._hostkeys, boot_seconds=boot_seconds,
                              session_id=self.config.session_id)
                published = True
        except VMError:
            raise
        except (libvirt.libvirtError, OSError) as exc:
            log.warning("vm://%s: could not save a warm state: %s", self.name, exc)
            if self._dom is None:
                raise VMError(f"vm://{self.name}: lost the guest while saving it: {exc}") from exc
        if published:
            self._disown(*kept)  # the warm state's now: they stay on the host
        if self._client is None:
            self._wait_ssh()

    def _save_guest_here(self, tmp: Path) -> None:
        """Save the guest into ``tmp`` with a copy of its overlay, then let it run on from that save."""
        libvirt = libvirt_module()
        self._dom.save(str(tmp / "state.save"))
        self._dom = None
        reflink_copy(self.overlay, tmp / "overlay.qcow2", error=VMError,
                     what=f"vm://{self.name}: copying the overlay of the saved guest")
        self.platform.prepare_files(self._image, self.overlay, self.console, *([self.seed] if self.seed else []))
        self._conn().restoreFlags(str(tmp / "state.save"), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        self._dom = self._conn().lookupByName(self.name)

    def _restore(self, state: WarmState) -> None:
        libvirt = libvirt_module()
        private = self.dir / f"{self.name}.id_ed25519"
        if self.remote is not None:
            with step(f"vm://{self.name}: warm start on the host from {state.dir.name}"
                      + (f" (saved by {state.created_by})" if state.created_by else "")):
                try:
                    write_private(private, state.private_key.read_bytes())
                    self.keys = KeyPair(private=private, public=state.public_key)
                    self._restore_on_host(self.remote, state)
                except (libvirt.libvirtError, OSError, ET.ParseError) as exc:
                    raise VMError(f"vm://{self.name}: restore failed: {exc}") from exc
                self._hostkeys, self.host_key_origin = state.hostkeys, "warm state"
                self._wait_ssh()
            return
        self._pick_hostfwd_port()
        copy = self.dir / f"{self.name}.save"
        with step(f"vm://{self.name}: warm start from {state.dir.name}"
                   + (f" (saved by {state.created_by})" if state.created_by else "")):
            try:
                reflink_copy(state.overlay, self.overlay, error=VMError,
                             what=f"vm://{self.name}: restore failed: copying the saved overlay")
                write_private(private, state.private_key.read_bytes())
                self.keys = KeyPair(private=private, public=state.public_key)
                self.console.write_text(boot_log_of(state))
                xml = restore_xml(read_save_xml(state.save), name=self.name, overlay=self.overlay,
                                  console=self.console, netdev=self._netdev(), session=self.config.session_id)
                copy_save_with_xml(state.save, copy, xml)
                self.platform.prepare_files(self._image, self.overlay, self.console)
                self._conn().restoreFlags(str(copy), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
                self._dom = self._conn().lookupByName(self.name)
            except (libvirt.libvirtError, OSError, ET.ParseError) as exc:
                raise VMError(f"vm://{self.name}: restore failed: {exc}") from exc
            finally:
                copy.unlink(missing_ok=True)
            self._hostkeys, self.host_key_origin = state.hostkeys, "warm state"
            self._wait_ssh()

    def _wait_ssh(self) -> None:
        import paramiko

        image = self._image
        timeout = float(self.config.timeout)

        def seen() -> str:
            return evidence(self.name, self.console_log(), self._dom, local=self.remote is None)

        def probe() -> paramiko.SSHClient:
            if self._dom is not None:
                try:  # a restarted libvirtd dropped our connection, not the guest: look it up again
                    self._dom = current_domain(self._dom, lambda: self._conn().lookupByName(self.name))
                except (libvirt_module().libvirtError, VMError) as exc:
                    raise NotReady(f"libvirt does not answer: {exc}") from exc
            if self._dom is None or not self._dom.isActive():
                raise VMError(f"vm://{self.name}: the guest stopped before SSH answered ({domain_state(self._dom)})",
                              details=seen())
            panic = panic_in(self.console_log())
            if panic:
                raise VMError(f"vm://{self.name}: the guest's kernel failed before SSH answered: {panic}",
                              hint=f"the console shows why; a guest short of memory panics like this "
                                   f"(it has {self.memory} MiB: raise --vm-memory)", details=seen())
            if not ssh_banner(self.ssh_port):  # no paramiko transport (and its thread's logging) before sshd
                raise NotReady("no SSH banner yet")
            if not self._hostkeys and image is not None and image.cloud_init:
                self._hostkeys = hostkey_lines_from_console(self.console_log())
                self.host_key_origin = "console" if self._hostkeys else ""
            try:
                return ssh_client(self.ssh_port, self.private_key, self._hostkeys, timeout=5)
            except paramiko.BadHostKeyException as exc:
                raise VMError(f"vm://{self.name}: SSH host key mismatch on 127.0.0.1:{self.ssh_port}: {exc}",
                              hint="the image changed under its cache; delete the cached image") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise NotReady(f"{type(exc).__name__}: {exc}") from exc

        quiet = QuietParamiko()
        with quiet:
            client = wait_for(
                probe, what=f"vm://{self.name}: SSH on 127.0.0.1:{self.ssh_port}", timeout=timeout, interval=0.5,
            max_interval=2.0,
            on_timeout=seen,
            hint=f"the guest never answered SSH; the console says why (empty: the kernel printed nothing; check "
                 f"--vm-memory, {self.memory} MiB now, or raise --flake-timeout under TCG)",
        )
        transport = client.get_transport()
        if not self._hostkeys and transport is not None:
            remote = transport.get_remote_server_key()
            self._hostkeys = (f"{remote.get_name()} {remote.get_base64()}",)
            self.host_key_origin = "first use"
            log.warning("vm://%s: no host key known ahead; trusting %s on first use", self.name,
                        remote.get_name())
        self._client = client

    # ---- access

    @property
    def private_key(self) -> Path:
        """The private key authorised for root in this guest (the session's, or a warm state's copy)."""
        return (self.keys or self._session_keys()).private

    def _connection(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active():
                if self._closed:
                    raise VMError(f"vm://{self.name} is closed")
                self._client = ssh_client(self.ssh_port, self.private_key, self._hostkeys)
            assert self._client is not None
            return self._client

    def _cut(self) -> None:
        """Close the SSH connection: a command waiting on a guest that is gone returns."""
        if self._client is not None:
            self._client.close()

    @property
    def host(self) -> Host:
        """A testinfra Host on this VM (over the VM's one SSH connection)."""
        if self._host is None:
            from testinfra.host import Host

            backend = pinned_backend_class()(f"paramiko://root@127.0.0.1:{self.ssh_port}", self._connection)
            self._host = Host(backend)
        return self._host

    def run(self, cmd: str | list[str]) -> CommandResult:
        """Run a shell command as root in the guest; a list is quoted for you."""
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        with Watch(self.name, self.console_log, self._dom, self._cut, local=self.remote is None):
            result = self.host.run(command)
        log.debug("vm://%s: %s -> %s", self.name, command, result.rc)
        return result

    def forward(self, guest_port: int) -> int:
        """Publish ``guest_port`` on a 127.0.0.1 port of the host (added to the running guest)."""
        if guest_port in self._forwards:
            return self._forwards[guest_port]
        import libvirt_qemu

        libvirt = libvirt_module()
        last = ""
        for _ in range(5):
            port = free_port() if self.remote is None else self.remote.pick_port()  # there: on its 127.0.0.1
            command = f"hostfwd_add {NETDEV_ID} tcp:127.0.0.1:{port}-:{int(guest_port)}"
            try:
                out = libvirt_qemu.qemuMonitorCommand(self._dom, command,
                                                      libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            except libvirt.libvirtError as exc:
                raise VMError(f"vm://{self.name}: {command} failed: {exc}") from exc
            if not out.strip():
                if self.remote is not None:
                    self._remote_forwards[guest_port] = port
                    port = self.remote.ssh.forward(port)
                self._forwards[guest_port] = port
                log.info("vm://%s: guest port %d on 127.0.0.1:%d", self.name, guest_port, port)
                return int(port)
            if self.remote is not None:
                self.remote.release_port(port)
            last = out.strip()
        raise VMError(f"vm://{self.name}: could not forward guest port {guest_port}: {last}")

    def url(self, guest_port: int, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` for a guest port (forwarded on first use)."""
        return f"http://127.0.0.1:{self.forward(guest_port)}/{path.lstrip('/')}"

    def copy_to(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a file or a folder (recursively) into the guest over SFTP; modes are kept."""
        sftp_put(self._connection(), Path(local), remote, what=f"vm://{self.name}: copy_to")

    @property
    def wait_timeout(self) -> float:
        """Default ``timeout`` of ``wait_until_succeeds``, ``wait_for_unit``...: ``--flake-timeout``."""
        return float(self.config.timeout)

    def copy_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or a folder (recursively) out of the guest over SFTP; modes are kept."""
        sftp_get(self._connection(), remote, Path(local), what=f"vm://{self.name}: copy_from")

    def wait_for_console_text(self, regex: str, timeout: float | None = None) -> str:
        """Wait until the serial console matches ``regex`` (searched in the whole log); the match.

        A warm-started VM's console begins with the boot log of its saved state, so match
        on text the guest writes after the test started something.
        """
        __tracebackhide__ = True
        pattern = re.compile(regex, re.MULTILINE)

        def probe() -> str:
            found = pattern.search(self.console_log())
            if found is None:
                raise NotReady(f"no match for {regex!r} yet")
            return found.group(0)

        try:
            return wait_for(probe, what=f"vm://{self.name}: console text {regex!r}",
                            timeout=self.wait_timeout if timeout is None else float(timeout), interval=0.3,
                            max_interval=1.0)
        except FlakeTimeout as exc:
            raise CheckTimeout(f"{exc}\n--- console (last lines):\n{tail(self.console_log(), 30)}") from exc

    def console_log(self) -> str:
        """The serial console of the guest so far.

        A warm start begins with the boot log of the cold boot its state was saved from,
        then a line that says so, then what the guest wrote since the restore.
        """
        try:
            return str(self.console.read_text(errors="replace"))
        except OSError:
            return ""

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file :meth:`ssh_command` pins the guest's host key with."""
        return self.dir / f"{self.name}.known_hosts"

    def ssh_command(self) -> str:
        """How a person reaches this VM from a shell (for --flake-keep).

        The guest's host key is pinned (a known_hosts file of its own) when the plugin knows it,
        as it does for every guest it checked on connecting; only a guest whose key was taken on
        first use gets a command that accepts whatever key answers.
        """
        jump = f"-J {shlex.quote(self.remote.ssh.target)} " if self.remote is not None else ""
        port = self._hostfwd_port if self.remote is not None else self.ssh_port  # there: jump through the host
        if self._hostkeys:
            write_private(self.known_hosts, "".join(f"[127.0.0.1]:{port} {key}\n" for key in self._hostkeys))
            checks = f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={shlex.quote(str(self.known_hosts))}"
        else:
            checks = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        return f"ssh {jump}-i {shlex.quote(str(self.private_key))} -p {port} {checks} root@127.0.0.1"

    def keep(self) -> None:
        """Leave this VM running after the test; the next session sweeps it."""
        self.kept = True
        self._disconnect()

    # ---- teardown

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._host = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _drop_domain(self) -> None:
        dom, self._dom = self._dom, None

        def lookup() -> Any:
            return self._conn().lookupByName(self.name)

        if dom is None:
            with contextlib.suppress(Exception):
                dom = lookup()
        if dom is not None:
            destroy_domain(current_domain(dom, lookup))  # through a new connection if libvirtd restarted

    def close(self) -> None:
        """Stop the guest and remove its files; idempotent, and each step's failure is only logged."""
        if self._closed:
            return
        self._closed = True
        if self.kept:
            log.warning("vm://%s kept: %s", self.name, self.ssh_command())
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("close SSH", self._disconnect),
            ("destroy the domain", self._drop_domain),
            ("stop reading the console", self._stop_console),
            ("close the tunnels", self._close_tunnels),
            ("remove the volumes on the host", self._delete_volumes),
            ("remove the overlay", lambda: self.overlay.unlink(missing_ok=True)),
            ("remove the seed", lambda: self.seed.unlink(missing_ok=True) if self.seed else None),
            ("remove the console log", lambda: self.console.unlink(missing_ok=True)),
            ("remove the key copy", lambda: (self.dir / f"{self.name}.id_ed25519").unlink(missing_ok=True)),
            ("remove the known hosts file", lambda: self.known_hosts.unlink(missing_ok=True)),
        ]
        for what, action in steps:
            try:
                action()
            except Exception as exc:  # one failing step must not hide or stop the others
                log.error("vm://%s: could not %s: %s", self.name, what, exc)
                self.left_behind.append(what)
        self._on_close(self)
