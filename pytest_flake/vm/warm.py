"""Warm states kept across sessions: what makes one valid (the key), where it lives (the slot),
and the store that writes them atomically under a lock, hands them to restores under a shared
lock, and refuses a state whose files changed since it was published."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._host import locked
from ..errors import VMError
from ..images import Image
from .common import RECIPES, hash_files, log

# bump when the layout of a warm state changes (2: QEMU no longer runs as root; 3: restores read the
# state's files in place: read-only, their ids recorded)
WARM_FORMAT = 3
WARM_ENV = "PYTEST_FLAKE_VM_WARM"
_WARM_FILES = ("state.save", "overlay.qcow2", "id_ed25519", "id_ed25519.pub")
# what every restore reads in place: read-only once published (QEMU's user reads the overlay, a backing
# file; only libvirt reads the save file, which holds the guest's memory), ``size:mtime_ns:inode`` recorded
SHARED_FILES = {"state.save": 0o400, "overlay.qcow2": 0o444}
# a state on another host: its save file and overlay are volumes there (named in remote.json)
REMOTE_FILE = "remote.json"
REMOTE_WARM_FILES = ("save.header", REMOTE_FILE, "id_ed25519", "id_ed25519.pub")


def warm_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether warm starts are on: ``PYTEST_FLAKE_VM_WARM`` unset or not one of 0, false, no, off."""
    value = (os.environ if environ is None else environ).get(WARM_ENV, "")
    return value.strip().lower() not in ("0", "false", "no", "off")


def _file_id(path: Path | None) -> str:
    """``size:mtime_ns:inode`` of a file (a rebuilt image changes it), ``""`` for none, ``missing``."""
    if path is None:
        return ""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


@dataclass(frozen=True)
class Hypervisor:
    """What of the host's QEMU and libvirt a saved state depends on."""

    qemu_binary: str
    qemu_version: int
    libvirt_version: int
    host_cpu: str = ""  # another host's CPU (this machine's is read from /proc/cpuinfo)
    remote: bool = False  # on another host: its QEMU binary is not a file here

    @classmethod
    def of(cls, conn: Any, accel: str, *, remote: bool = False) -> Hypervisor:
        """Ask libvirt which QEMU it runs for this accelerator, and the versions of both."""
        binary = ""
        with contextlib.suppress(Exception):
            caps = conn.getDomainCapabilities(None, "x86_64", "pc", "kvm" if accel == "kvm" else "qemu", 0)
            found = re.search(r"<path>([^<]+)</path>", caps)
            binary = found.group(1) if found else ""
        host_cpu = ""
        if remote:
            from .remotehost import host_cpu_of

            host_cpu = host_cpu_of(conn) if accel == "kvm" else ""
        else:
            binary = binary or shutil.which("qemu-system-x86_64") or ""
        return cls(qemu_binary=binary, qemu_version=int(conn.getVersion()),
                   libvirt_version=int(conn.getLibVersion()), host_cpu=host_cpu, remote=remote)


def _host_cpu() -> str:
    """The host CPU's model and flags (a KVM guest saved on one CPU may not restore on another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]


def warm_key(image: Image, *, memory: int, cpus: int, accel: str, uri: str, hypervisor: Hypervisor,
             template: Path | None = None, disk_size: int = 0, qemu_label: str = "") -> dict[str, Any]:
    """Everything a saved state depends on: any difference makes it unusable."""
    return {
        "format": WARM_FORMAT,
        "image": image.key,
        "disk": str(image.disk),
        "disk_id": _file_id(image.disk),
        "kernel_id": _file_id(image.kernel),
        "initrd_id": _file_id(image.initrd),
        "cmdline": image.cmdline or "",
        "cloud_init": image.cloud_init,
        "skip_units": list(image.skip_units),
        "memory": int(memory),
        "cpus": int(cpus),
        "disk_size": int(disk_size),
        "accel": accel,
        "host_cpu": (hypervisor.host_cpu if hypervisor.remote else _host_cpu()) if accel == "kvm" else "",
        "uri": uri,
        "qemu_user": qemu_label,  # who QEMU runs as: the label is in the saved domain XML
        "template": hash_files(template or RECIPES / "domain.xml"),
        "qemu_binary": hypervisor.qemu_binary,
        "qemu_binary_id": _file_id(Path(hypervisor.qemu_binary)) if hypervisor.qemu_binary and not hypervisor.remote
        else "",
        "qemu_version": hypervisor.qemu_version,
        "libvirt_version": hypervisor.libvirt_version,
    }


def warm_slot(key: dict[str, Any]) -> str:
    """The folder name of a key's state: what a user would call "the same VM"; the rest only validates.

    A state of the same slot with another key (a new QEMU, a rebuilt image) is stale and replaced.
    """
    slot = {name: key.get(name) for name in ("disk", "memory", "cpus", "accel", "uri")}
    if key.get("disk_size"):
        slot["disk_size"] = key["disk_size"]
    return hashlib.sha256(json.dumps(slot, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WarmState:
    """A saved running guest: the save image, the overlay it belongs to, its keys and host keys."""

    dir: Path
    id: str  # unique per written state: a failed restore drops only the state it tried
    hostkeys: tuple[str, ...]
    boot_seconds: float
    created_by: str = ""  # the session that saved it

    @property
    def save(self) -> Path:
        return self.dir / "state.save"

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.qcow2"

    @property
    def console(self) -> Path:
        """The serial console of the cold boot that made this state (may be missing)."""
        return self.dir / "console.log"

    @property
    def private_key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def public_key(self) -> str:
        return (self.dir / "id_ed25519.pub").read_text().strip()

    @property
    def remote(self) -> bool:
        """Whether the save file and the overlay are volumes on another host (``remote.json`` names them)."""
        return (self.dir / REMOTE_FILE).is_file()


def boot_log_of(state: WarmState) -> str:
    """What a warm-started console begins with: the saved boot log and a line that says so."""
    try:
        boot = state.console.read_text(errors="replace")
    except OSError:
        boot = ""
    origin = f" saved by session {state.created_by}" if state.created_by else ""
    marker = f"[pytest-flake: restored from a warm state{origin}; the lines above are its boot]\n"
    return (boot if boot.endswith("\n") or not boot else boot + "\n") + marker


@dataclass(frozen=True)
class _Changed:
    """What :meth:`WarmStore._read` finds when a published state's file is not the one it was published with."""

    name: str
    state_id: str


class WarmStore:
    """Warm states kept across sessions in ``<image cache>/warm``: ``<slot>/`` each, ``<slot>.lock`` beside.

    Writers hold the slot's lock and write into ``.<slot>.<session>.tmp`` that is renamed into
    place once complete. A restore reads the state's files in place (its overlay is the backing
    file of the VM's own, its save file is fed to libvirt), holding a shared ``flock`` on the
    state's folder (:meth:`using`); removing a state takes that lock exclusively, so it waits for
    restores under way (:meth:`prune` skips a state in use). The save file and the overlay are
    read-only once published and their ``size:mtime_ns:inode`` is in ``state.json``: a state whose
    files changed since is refused and dropped (the VM boots cold).
    """

    def __init__(self, root: Path, *, forget: Callable[[Path], None] | None = None) -> None:
        self.root = root
        self.forget = forget  # called with a state's folder before it is removed (its volumes on another host)

    def _remove(self, folder: Path, *, wait: bool = True) -> bool:
        """Remove a state's folder once no restore reads it (``wait`` False: False when one does)."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            if self.forget is not None:
                try:
                    self.forget(folder)
                except Exception as exc:  # the folder goes either way; the sweep of the host is the user's
                    log.warning("vm: could not remove what the warm state %s kept on another host: %s", folder, exc)
            _remove_tree(folder)
            return True
        finally:
            os.close(fd)  # releases the lock; a restore that waited finds the state gone

    def _lock(self, slot: str) -> contextlib.AbstractContextManager[None]:
        return locked(self.root / f"{slot}.lock")

    def load(self, key: dict[str, Any]) -> WarmState | None:
        """The complete state saved for exactly ``key``, else None (stale or incomplete ones are ignored;
        one whose save file or overlay changed since it was published is dropped, with a warning)."""
        return self._load(key, drop_changed=True)

    def _load(self, key: dict[str, Any], *, drop_changed: bool) -> WarmState | None:
        folder = self.root / warm_slot(key)
        changed = self._read(folder, key)
        if isinstance(changed, _Changed):
            log.warning("vm: refusing the warm state %s: %s changed since it was saved; dropping it (the VM boots "
                        "cold and saves a new one)", folder, folder / changed.name)
            if drop_changed:
                self._drop(folder, changed.state_id)
            return None
        return changed

    def _read(self, folder: Path, key: dict[str, Any] | None) -> WarmState | _Changed | None:
        """The state in ``folder`` (of ``key``, unless None); :class:`_Changed` when a shared file changed."""
        try:
            meta = json.loads((folder / "state.json").read_text())
            if key is not None and meta.get("key") != key:
                log.info("vm: the warm state in %s is stale (made for another image, size or QEMU)", folder)
                return None
            sizes = meta["sizes"]
            remote = REMOTE_FILE in sizes
            if not remote:
                ids = meta["ids"]
                if not isinstance(ids, dict) or set(ids) != set(SHARED_FILES):
                    raise ValueError("state.json names other files than a warm state has")
                for name, recorded in ids.items():
                    stat = (folder / name).stat()  # missing: incomplete (below)
                    if f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}" != recorded:
                        return _Changed(name, str(meta["id"]))
            for name in REMOTE_WARM_FILES if remote else _WARM_FILES:
                if (folder / name).stat().st_size != sizes[name]:
                    raise ValueError(f"{name} is incomplete")
            return WarmState(dir=folder, id=str(meta["id"]), hostkeys=tuple(meta["hostkeys"]),
                              boot_seconds=float(meta.get("boot_seconds", 0.0)),
                              created_by=str(meta.get("session", "")))
        except FileNotFoundError:
            if folder.exists():
                _incomplete(folder, "a file is missing")
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _incomplete(folder, str(exc))
            return None

    def drop(self, state: WarmState) -> None:
        """Remove ``state`` (a restore of it failed) unless another session replaced it meanwhile."""
        self._drop(state.dir, state.id)

    def _drop(self, folder: Path, state_id: str) -> None:
        with self._lock(folder.name):
            current = self._read(folder, None)
            current_id = current.id if isinstance(current, WarmState) else current.state_id if current else None
            if current_id is None or current_id == state_id:
                log.warning("vm: dropping the warm state %s", folder)
                self._remove(folder)

    @contextlib.contextmanager
    def using(self, state: WarmState) -> Iterator[None]:
        """Hold a shared lock on ``state`` while a VM restores from it (several at once: each its own lock).

        Raises :class:`VMError` when the state was removed, replaced or changed since :meth:`load`
        read it. Removing a state waits for the lock (:meth:`prune` skips a state in use).
        """
        try:
            fd = os.open(state.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise VMError(f"the warm state {state.dir} is gone ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                here = os.stat(state.dir).st_ino == os.fstat(fd).st_ino  # not renamed away while we waited
            except OSError:
                here = False
            current = self._read(state.dir, None) if here else None
            if isinstance(current, _Changed):
                raise VMError(f"the warm state {state.dir}: {current.name} changed since it was saved")
            if current is None or current.id != state.id:
                raise VMError(f"the warm state {state.dir} was removed or replaced while it was being restored")
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def create(self, key: dict[str, Any], session_id: str) -> Iterator[Path | None]:
        """A temporary folder to write the state of ``key`` into, published when the block ends.

        Yields None when a valid state appeared meanwhile (another session saved it). The
        caller writes ``state.save``, ``overlay.qcow2`` and the key pair; :meth:`publish`
        adds ``state.json`` and renames the folder into place.
        """
        slot = warm_slot(key)
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.root.chmod(0o700)  # the states hold private keys and guest memory
        with self._lock(slot):
            for leftover in self.root.glob(f".{slot}.*.tmp"):  # writers that died mid-write
                log.info("vm: removing the incomplete warm state %s", leftover)
                self._remove(leftover)
            if self._load(key, drop_changed=False) is not None:  # a changed one is replaced below
                yield None
                return
            tmp = self.root / f".{slot}.{session_id}.tmp"
            tmp.mkdir(mode=0o700)
            try:
                yield tmp
            except BaseException:
                self._remove(tmp)
                raise
            if not (tmp / "state.json").is_file():  # the caller gave up
                self._remove(tmp)
                return
            final = self.root / slot
            if final.exists():  # stale or incomplete: moved aside first, so the rename stays atomic
                self._remove(final)
            os.rename(tmp, final)
            log.info("vm: warm state saved in %s", final)
        self.prune()

    @staticmethod
    def publish(tmp: Path, key: dict[str, Any], *, hostkeys: tuple[str, ...], boot_seconds: float,
                session_id: str) -> None:
        """Write ``state.json`` (the key and the size of every file) once the files are complete.

        The save file and the overlay become read-only (:data:`SHARED_FILES`) and their
        ``size:mtime_ns:inode`` is recorded: every later restore reads them in place.
        """
        remote = (tmp / REMOTE_FILE).is_file()
        files = REMOTE_WARM_FILES if remote else _WARM_FILES
        for name in files:
            os.chmod(tmp / name, 0o600 if remote else SHARED_FILES.get(name, 0o600))
        meta = {
            "id": uuid.uuid4().hex, "key": key, "hostkeys": list(hostkeys), "boot_seconds": boot_seconds,
            "session": session_id, "created": time.time(),
            "sizes": {name: (tmp / name).stat().st_size for name in files},
        }
        if not remote:
            meta["ids"] = {name: _file_id(tmp / name) for name in SHARED_FILES}
        fd = os.open(tmp / "state.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(meta, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())

    def prune(self) -> None:
        """Remove the states of images that no longer exist (an older recipe's Debian image)."""
        if not self.root.is_dir():
            return
        for trash in self.root.glob(".*.trash"):  # a removal that was interrupted
            shutil.rmtree(trash, ignore_errors=True)
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                disk = json.loads((folder / "state.json").read_text())["key"]["disk"]
                if not Path(disk).exists():
                    if self._remove(folder, wait=False):
                        log.info("vm: removed the warm state %s of a removed image", folder)
                    else:
                        log.info("vm: the warm state %s of a removed image is being restored; a later prune "
                                 "removes it", folder)

    def sweep(self, session_ids: list[str]) -> None:
        """Remove the half-written states of dead sessions (complete states stay)."""
        if not self.root.is_dir():
            return
        for sid in session_ids:
            for leftover in self.root.glob(f".*.{sid}.tmp"):
                log.info("vm sweep: removing the incomplete warm state %s", leftover)
                self._remove(leftover)

    def usage(self) -> tuple[int, int]:
        """``(number of complete states, bytes they take on disk)``."""
        count = size = 0
        if not self.root.is_dir():
            return 0, 0
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not (folder / "state.json").is_file():
                continue
            count += 1
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    size += path.stat().st_blocks * 512
        return count, size


def write_remote_record(folder: Path, *, uri: str, save: str, overlay: str) -> None:
    """Name, in a warm state's folder, the volumes on the host at ``uri`` that hold its save file and overlay."""
    (folder / REMOTE_FILE).write_text(json.dumps({"uri": uri, "save": save, "overlay": overlay}, sort_keys=True))


def read_remote_record(folder: Path) -> dict[str, str] | None:
    """The volumes a warm state keeps on another host (``uri``, ``save``, ``overlay``), or None."""
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


def _remove_tree(folder: Path) -> None:
    """Rename aside, then delete: nobody ever sees a half-deleted state under its real name."""
    if not folder.exists():
        return
    trash = folder.with_name(f".{folder.name.lstrip('.')}.{uuid.uuid4().hex[:8]}.trash")
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _incomplete(folder: Path, why: str) -> None:
    log.warning("vm: ignoring the incomplete warm state %s (%s); the next save replaces it", folder, why)
