"""One guest: :class:`VM`, a context manager that boots (or restores) a domain; commands go through its agent
(SSH the fallback), testinfra and copies over SSH.

A VM is handed narrow collaborators, never the pool: its :class:`~pytest_flake.vm.launch.Launcher`
(how its domain starts, here or on another host), the warm store, the session's key pair and a
:class:`Platform` (images, the accelerator, the warm-state key).
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._host import locked, write_private
from ..errors import CheckTimeout, FlakeError, FlakeTimeout, NotReady, VMError, tail
from ..guest import GuestCommands
from ..images import Image
from ..waiting import wait_for
from .accel import KVM_TRIAL, watch_kvm_first_boot
from .channel import AgentLink, agent_fingerprint, timed_command
from .common import log, step
from .connection import libvirt_module
from .diagnose import Watch, check_floor, domain_state, evidence, panic_in
from .domain import BootSpec, DomainEdit, boot_xml, edit_fingerprint, edited
from .launch import Disks, Launcher, Platform, VMConfig
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

class VM(GuestCommands):
    """One libvirt guest reachable over SSH; a context manager.

    ``vm.run("cmd")`` and ``vm.host`` (a testinfra Host) share one SSH connection;
    ``vm.forward(port)`` publishes a guest port on 127.0.0.1; ``vm.console_log()`` is the
    serial console. Entering starts it (cleaning up if the start fails); leaving removes
    the domain, its overlay and its console log. ``close()`` may be called more than once.

    ``launcher`` starts the domain, here or on another host; ``edit_domain(name, root)`` edits the
    cold boot's domain XML in place, as the last step before it is defined.
    """

    def __init__(self, config: VMConfig, *, launcher: Launcher, store: WarmStore | None,
                 keys: Callable[[], KeyPair], platform: Platform, edit_domain: DomainEdit | None = None,
                 on_start: Callable[[VM], None] = lambda vm: None, on_ready: Callable[[VM], None] = lambda vm: None,
                 on_close: Callable[[VM], None] = lambda vm: None) -> None:
        self.config = config
        self.launcher = launcher
        self.edit_domain = edit_domain
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
        self.overlay = config.overlay  # this machine's copy-on-write disk (another host's is a volume there)
        self.console = config.console
        self.seed: Path | None = None
        self.ssh_port = 0
        self.warm = False  # restored from a saved state (of this session or an earlier one)
        self.warm_from = ""  # the session that saved the state it was restored from
        self.keys: KeyPair | None = None  # the key pair authorised in this guest
        self.ready_seconds = 0.0  # start() to SSH ready, including saving a warm state
        self.boot_seconds = 0.0  # start() to the first SSH answer
        self.restore_seconds = 0.0  # a warm start: start() to libvirt's restore returned (then: the guest answers)
        self._started = 0.0
        self.kept = False
        self.left_behind: list[str] = []  # the steps of close() that failed: the next session's sweep finishes them
        self._image: Image | None = None
        self._hostkeys: tuple[str, ...] = ()
        # where the host key checked on SSH comes from: "seed" (made here, handed over by cloud-init),
        # "image" (known from the image build), "warm state", "console", or "first use" (not checked)
        self.host_key_origin = ""
        self._client: paramiko.SSHClient | None = None
        self._host: Host | None = None
        self._forwards: dict[int, int] = {}  # guest port -> 127.0.0.1 port here
        self._agent = AgentLink(self.name, launcher.agent_target(), config.timeout)  # run()'s way in, or SSH
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
    def channel(self) -> str:
        """How :meth:`run` reaches the guest: ``agent`` (its virtio-serial port) or ``ssh``."""
        return self._agent.kind

    @property
    def boot_kind(self) -> str:
        """``warm`` (restored from a saved state) or ``cold`` (booted)."""
        return "warm" if self.warm else "cold"

    def start(self) -> VM:
        """Start the guest (warm from a saved state when one fits, else cold) and wait for SSH."""
        started = self._started = time.monotonic()
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
                edit = edit_fingerprint(self._reference_spec(image, accel), self.edit_domain)
                if edit:  # the guest of an edited domain: only a VM edited the same way restores it
                    key["domain_edit"] = edit
                key["agent"] = agent_fingerprint() if self._agent.channel is not None else ""  # runs in the state
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
                    self.launcher.destroy()
                    self.overlay.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        store.drop(state)
            if not self.warm:
                if not booted:
                    self._cold_boot(image, accel)
                self.boot_seconds = time.monotonic() - started
                self._install_agent()
                if store is not None and key is not None and store.load(key) is None:
                    self._save_for_later(key, time.monotonic() - started)
        self._agent.connect()
        self.ready_seconds = time.monotonic() - started
        if self.warm:
            self.boot_seconds = self.ready_seconds
        self._on_ready(self)
        log.info("vm://%s: SSH ready on 127.0.0.1:%d after %.1fs (%s); commands through %s", self.name,
                 self.ssh_port, self.ready_seconds, "warm start" if self.warm else "cold boot",
                 "the agent" if self.channel == "agent" else f"SSH ({self._agent.why})")
        return self

    def _oem_strings(self, image: Image, public_key: str | None) -> tuple[str, ...]:
        """SMBIOS credentials: root's authorized key, and a drop-in for each unit the image skips."""
        oem = [credential("ssh.authorized_keys.root", public_key)] if public_key is not None else []
        for unit in image.skip_units:
            oem.append(credential(f"systemd.unit-dropin.{unit}", skip_dropin(unit)))
        return tuple(oem)

    def _boot_spec(self, image: Image, accel: str, disks: Disks, public_key: str | None) -> BootSpec:
        return BootSpec(
            name=self.name, session=self.config.session_id, image_key=image.key, accel=accel,
            memory=self.memory, cpus=self.cpus, overlay=disks.overlay, console=self.launcher.console_target(),
            netdev=self.launcher.netdev(), kernel=disks.kernel, initrd=disks.initrd, cmdline=image.cmdline,
            oem_strings=self._oem_strings(image, public_key), seed=disks.seed, seclabel=self.launcher.seclabel,
            agent=self._agent.path,
        )

    def _reference_spec(self, image: Image, accel: str) -> BootSpec:
        """The cold boot's document before its disks exist and without the session's key (what an edit does)."""
        disks = Disks(overlay=self.overlay, kernel=image.kernel, initrd=image.initrd,
                      seed=self.config.seed if image.cloud_init else None, size=self.disk_size)
        return self._boot_spec(image, accel, disks, None)

    def _cold_boot(self, image: Image, accel: str, *, trial: bool = False) -> bool:
        """Boot ``image`` and wait for SSH; True. With ``trial`` (under KVM), first watch the console
        for kernel progress: without it, record that KVM hangs, remove the domain and return False."""
        launcher = self.launcher
        launcher.pick_ports()
        self.console.write_text("")
        keys = self.keys = self._session_keys()
        hostkeys, origin = image.hostkeys, "image"
        if image.cloud_init:
            host_key = HostKey.generate()
            hostkeys, origin = (" ".join(host_key.public.split()[:2]),), "seed"  # the first connection is checked
            user_data = render_user_data(cloud_config(keys.public, host_key, image.skip_units))
            self.seed = make_seed(self.config.seed, user_data, self.name)
        disks = launcher.disks(image, self.seed, self.disk_size)
        self.disk_size = disks.size
        with step(f"vm://{self.name}: cold boot of {image.name} ({accel}, {self.memory} MiB, {self.cpus} CPU)"):
            launcher.boot(lambda: edited(boot_xml(self._boot_spec(image, accel, disks, keys.public)), self.name,
                                         self.edit_domain))
            self.ssh_port = launcher.ssh_port
            self._agent.secure()
            self._hostkeys, self.host_key_origin = hostkeys, origin if hostkeys else ""
            if trial:
                works, why = watch_kvm_first_boot(self.console_log, launcher.dom.isActive,
                                                  answered=lambda: ssh_banner(self.ssh_port))
                self.platform.kvm_trial_result(works, why)
                if not works:
                    log.warning("vm://%s: %s; booting again under TCG", self.name, why)
                    launcher.destroy()
                    return False
            self._wait_ssh()
        return True

    def _install_agent(self) -> None:
        """Start the guest agent over SSH after a cold boot; it answers before the guest is saved."""
        if self._agent.install(self.host.run, lambda local, remote: sftp_put(self._connection(), local, remote,
                                                                            what=f"vm://{self.name}: the agent")):
            self._agent.connect(wait=30.0)  # it is starting

    def _save_for_later(self, key: dict[str, Any], boot_seconds: float) -> None:
        """Save the fresh guest, its overlay and keys as the warm state of ``key``, then resume it.

        The launcher saves the guest into the state's folder (here; on another host the save file
        and the overlay stay there as volumes). Failing to save is only a warning (the next VM boots
        cold too); losing the guest is an error.
        """
        libvirt = libvirt_module()
        store, keys, launcher, image = self.store, self.keys, self.launcher, self._image
        assert store is not None and keys is not None and image is not None
        published = False
        try:
            with store.create(key, self.config.session_id) as tmp:
                if tmp is None:
                    return  # another session saved one meanwhile
                self._disconnect()
                try:
                    with step(f"vm://{self.name}: saving the booted guest{launcher.where} for warm starts"):
                        launcher.save(tmp, image)
                except (libvirt.libvirtError, VMError, OSError) as exc:
                    if launcher.dom is None:
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
            if launcher.dom is None:
                raise VMError(f"vm://{self.name}: lost the guest while saving it: {exc}") from exc
        if published:
            launcher.saved()
        if self._client is None:
            self._wait_ssh()

    def _restore(self, state: WarmState) -> None:
        libvirt = libvirt_module()
        image = self._image
        assert image is not None
        with step(f"vm://{self.name}: warm start{self.launcher.where} from {state.dir.name}"
                  + (f" (saved by {state.created_by})" if state.created_by else "")):
            try:
                write_private(self.config.key_copy, state.private_key.read_bytes())
                self.keys = KeyPair(private=self.config.key_copy, public=state.public_key)
                self.console.write_text(boot_log_of(state))
                # the state's files are read in place: no removal of it while libvirt reads them
                with self.store.using(state) if self.store is not None else contextlib.nullcontext():
                    self.disk_size = self.launcher.restore(state, image, self.disk_size)
            except (libvirt.libvirtError, OSError, ET.ParseError) as exc:
                raise VMError(f"vm://{self.name}: restore failed: {exc}") from exc
            self.restore_seconds = time.monotonic() - self._started
            self.ssh_port = self.launcher.ssh_port
            self._agent.secure()
            self._hostkeys, self.host_key_origin = state.hostkeys, "warm state"
            if self._agent.connect() != "agent":  # its agent answers: SSH connects when first used
                self._wait_ssh()  # the restored guest runs: wait until it answers

    def _wait_ssh(self) -> None:
        import paramiko

        image, launcher = self._image, self.launcher
        timeout = float(self.config.timeout)

        def seen() -> str:
            return evidence(self.name, self.console_log(), launcher.dom, local=launcher.logs_here)

        def probe() -> paramiko.SSHClient:
            try:  # a restarted libvirtd dropped our connection, not the guest: look it up again
                launcher.refresh()
            except (libvirt_module().libvirtError, VMError) as exc:
                raise NotReady(f"libvirt does not answer: {exc}") from exc
            if launcher.dom is None or not launcher.dom.isActive():
                raise VMError(f"vm://{self.name}: the guest stopped before SSH answered ({domain_state(launcher.dom)})",
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
        """Close the SSH connection and the agent's: a command waiting on a guest that is gone returns."""
        self._agent.cut()
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

    def run(self, cmd: str | list[str], timeout: float | None = None) -> CommandResult:
        """Run a shell command (bash) as root in the guest; a list is quoted for you.

        Through the guest's agent (:attr:`channel`), else over SSH. ``timeout`` (seconds; None: no limit):
        the command's process group is killed past it and :class:`CheckTimeout` says so.
        """
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        started, timed_out = time.monotonic(), False
        with Watch(self.name, self.console_log, self.launcher.dom, self._cut, local=self.launcher.logs_here):
            reply = self._agent.run(command, timeout)  # None: over SSH
            if reply is None:
                result = self.host.run(timed_command(command, timeout))
                timed_out = bool(timeout) and result.rc == 137 and time.monotonic() - started >= (timeout or 0)
            else:
                result = self.host.backend.result(reply.rc, command.encode(), reply.stdout, reply.stderr)
                timed_out = reply.timed_out
        log.debug("vm://%s: %s -> %s", self.name, command, result.rc)
        if timed_out:
            raise CheckTimeout(f"vm://{self.name}: '{command}' ran past its timeout of {timeout}s and was killed",
                               rc=result.rc, stdout=result.stdout, stderr=result.stderr)
        return result

    def forward(self, guest_port: int) -> int:
        """Publish ``guest_port`` on a 127.0.0.1 port of the host (added to the running guest)."""
        if guest_port in self._forwards:
            return self._forwards[guest_port]
        port = self._forwards[guest_port] = self.launcher.forward(guest_port)
        log.info("vm://%s: guest port %d on 127.0.0.1:%d", self.name, guest_port, port)
        return port

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
        return self.config.known_hosts

    def ssh_command(self) -> str:
        """How a person reaches this VM from a shell (for --flake-keep).

        The guest's host key is pinned (a known_hosts file of its own) when the plugin knows it,
        as it does for every guest it checked on connecting; only a guest whose key was taken on
        first use gets a command that accepts whatever key answers.
        """
        through, port = self.launcher.ssh_route()
        jump = f"-J {shlex.quote(through)} " if through is not None else ""
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
        self._agent.disconnect()
        client, self._client = self._client, None
        self._host = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        """Stop the guest and remove its files; idempotent, and each step's failure is only logged."""
        if self._closed:
            return
        self._closed = True
        if self.kept:
            log.warning("vm://%s kept (commands through %s): %s", self.name, self.channel, self.ssh_command())
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("close SSH", self._disconnect),
            *self.launcher.teardown(),
            ("remove the seed", lambda: self.seed.unlink(missing_ok=True) if self.seed else None),
            ("remove the console log", lambda: self.console.unlink(missing_ok=True)),
            ("remove the key copy", lambda: self.config.key_copy.unlink(missing_ok=True)),
            ("remove the known hosts file", lambda: self.known_hosts.unlink(missing_ok=True)),
        ]
        for what, action in steps:
            try:
                action()
            except Exception as exc:  # one failing step must not hide or stop the others
                log.error("vm://%s: could not %s: %s", self.name, what, exc)
                self.left_behind.append(what)
        self._on_close(self)
