"""Virtual machines through libvirt: images, SSH, port forwards, and warm starts.

A :class:`VMPool` owns the VMs of one test session. ``pool.vm()`` returns a :class:`VM`,
a context manager: entering it starts a guest (a copy-on-write overlay over a cached
base image, QEMU user networking with ``restrict=on`` and forwards bound to 127.0.0.1)
and waits until SSH answers; leaving it removes the domain and its files.

Warm starts: the first VM of an image is booted, then saved (``virDomainSave``) with a
copy of its overlay; later VMs of the same image and size restore a copy of that saved
state with a fresh name, fresh ports and a fresh overlay, and answer SSH within
seconds instead of half a minute. Anything that goes wrong with a restore falls back
to a cold boot.

Saved states outlive the session: each lives in ``<state>/images/warm/<slot>/`` (the
save file, the overlay it belongs to, the SSH key pair authorised in that guest, its
host keys, and ``state.json`` with everything that makes it valid: the image and its
disk, memory, CPUs, accelerator, libvirt URI, the domain template, the QEMU binary and
version, the libvirt version). The next session's first VM restores it in seconds. A
state whose ``state.json`` does not match is stale: the session boots cold and replaces
it. States are written under a lock into a temporary folder that is renamed into place
when complete; readers only copy. ``PYTEST_FLAKE_VM_WARM=0`` turns warm starts off (every
VM boots cold, nothing is saved); deleting ``<state>/images/warm`` drops the states.

Every domain and file carries the session id, so :func:`sweep` can remove what a
killed session left behind. This module never imports pytest; libvirt and paramiko
are imported when first needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from .errors import CheckTimeout, FlakeError, FlakeTimeout, MissingToolError, UsageError, VMError, tail
from .guest import GuestCommands
from .session import PREFIX, state_dir
from .waiting import NotReady, free_port, wait_for

if TYPE_CHECKING:
    import paramiko
    from testinfra.backend.base import CommandResult
    from testinfra.host import Host

    from .config import Settings
    from .session import Session

log = logging.getLogger("pytest_flake")

def _recipes() -> Path:
    """``vms/``: next to the package in a checkout, inside it when installed from a wheel."""
    explicit = os.environ.get("PYTEST_FLAKE_VMS")
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve().parent
    installed = here / "vms"
    return installed if (installed / "domain.xml").is_file() else here.parent / "vms"


RECIPES = _recipes()
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "pfnet"
MiB = 1024 * 1024
GiB = 1024 * MiB


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Log a timed step: ``what ...`` then ``what: done in 1.23s``."""
    started = time.monotonic()
    log.info("%s ...", what)
    try:
        yield
    except BaseException:
        log.info("%s: failed after %.2fs", what, time.monotonic() - started)
        raise
    log.info("%s: done in %.2fs", what, time.monotonic() - started)


def _run(argv: list[str], *, what: str, timeout: float | None = None) -> str:
    """Run a host command; raise :class:`VMError` naming it, its exit code and output."""
    log.debug("run: %s", shlex.join(argv))
    if shutil.which(argv[0]) is None and not os.path.isabs(argv[0]):
        raise MissingToolError(f"{what}: {argv[0]} is not installed", hint="run scripts/setup or install it")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VMError(f"{what}: {shlex.join(argv)} did not finish in {timeout}s") from exc
    if proc.returncode != 0:
        raise VMError(
            f"{what}: {shlex.join(argv)} exited with {proc.returncode}",
            details=tail(proc.stdout + proc.stderr, 30),
        )
    return proc.stdout


def _need_space(directory: Path, needed: int, what: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise VMError(
            f"no space for {what}: {free / GiB:.1f} GiB free in {directory}, {needed / GiB:.1f} GiB needed",
            hint="free some space or point PYTEST_FLAKE_STATE to a bigger disk",
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two sessions never build or download the same image at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_root() -> bool:
    return os.geteuid() == 0


def default_uri(settings: Settings) -> str:
    """The libvirt URI: the setting, else ``qemu:///system`` as root and ``qemu:///session`` otherwise."""
    return settings.libvirt_uri or ("qemu:///system" if _is_root() else "qemu:///session")


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise MissingToolError(
            "the vm fixtures need libvirt-python",
            hint="pip install 'pytest-flake[vm]' (it builds against libvirt-dev and pkg-config)",
        ) from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
    return libvirt


def connect(uri: str) -> Any:
    """Open a libvirt connection or raise :class:`VMError` saying how to start the daemon."""
    libvirt = _libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise VMError(
            f"libvirt at {uri} is unreachable: {exc}",
            hint="start it (systemctl start libvirtd, or scripts/setup.d/30-libvirt.sh starts virtlogd and "
            "libvirtd privately) or pass --libvirt-uri",
        ) from exc


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Image:
    """A bootable base image: its disk, how to boot it, and what identifies this build of it."""

    name: str
    disk: Path
    disk_format: str = "qcow2"
    key: str = ""  # changes whenever the image changes: warm states are keyed on it
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    hostkeys: tuple[str, ...] = ()  # "ssh-ed25519 AAAA..." lines known ahead of boot
    cloud_init: bool = False
    skip_units: tuple[str, ...] = ()


def image_cache(root: Path | None = None) -> Path:
    """Where base images are cached: ``<state>/images``."""
    return (root or state_dir()) / "images"


def _hash_files(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


DEBIAN_VARIANTS = ("plain", "cloud")  # build.sh OUTDIR VARIANT; "cloud" is --vm-image debian-cloud
STALE_IMAGE_SECONDS = 24 * 3600  # an older recipe's image stays this long: running sessions may still use it


def debian_recipe_hash(variant: str = "plain") -> str:
    """A hash of the Debian recipe (builder and package lists): a new hash means a new image."""
    lists = ["packages.txt"] + (["packages-cloud.txt"] if variant == "cloud" else [])
    return _hash_files(RECIPES / "debian" / "build.sh", *(RECIPES / "debian" / name for name in lists))


def _debian_prefix(variant: str) -> str:
    return "debian-" if variant == "plain" else f"debian-{variant}-"


def debian_image_dir(cache: Path, variant: str = "plain") -> Path:
    """The cache folder of the Debian image of the current recipe (it may not exist yet)."""
    return cache / f"{_debian_prefix(variant)}{debian_recipe_hash(variant)}"


def _debian_image(directory: Path, variant: str = "plain") -> Image:
    hostkeys = tuple(
        " ".join(line.split()[:2]) for line in (directory / "hostkeys.pub").read_text().splitlines() if line.strip()
    )
    cloud = variant == "cloud"
    return Image(
        name="debian" if not cloud else "debian-cloud",
        disk=directory / "disk.qcow2",
        key=directory.name,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=(directory / "cmdline").read_text().strip(),
        hostkeys=hostkeys,
        # debian-cloud boots with exactly the seed (and credentials) the Arch path sends
        cloud_init=cloud,
        skip_units=ArchRecipe.load().skip_units if cloud else (),
    )


def _remove_stale_debian_images(cache: Path, variant: str, keep: Path) -> None:
    """Remove this variant's interrupted builds, and images of older recipes once nobody may use them."""
    pattern = re.compile(re.escape(_debian_prefix(variant)) + r"[0-9a-f]{16}(\.work\..*)?")
    for stale in cache.iterdir():
        if stale == keep or not pattern.fullmatch(stale.name):
            continue
        with contextlib.suppress(OSError):
            interrupted = ".work." in stale.name  # under the build lock: its builder is dead
            if interrupted or time.time() - stale.stat().st_mtime > STALE_IMAGE_SECONDS:
                log.info("vm: removing %s %s", "the interrupted build" if interrupted else "the older image", stale)
                shutil.rmtree(stale, ignore_errors=True)


def build_debian(cache: Path, *, timeout: float = 1800, variant: str = "plain") -> Image:
    """The Debian image of the current recipe, built with debootstrap when not cached yet.

    ``variant="cloud"`` is ``debian-cloud``: Debian's cloud-init in a partitioned disk, booted with
    the seed the Arch image gets (the offline check of that path).
    """
    if variant not in DEBIAN_VARIANTS:
        raise UsageError(f"unknown debian image variant {variant!r}", hint=f"one of {', '.join(DEBIAN_VARIANTS)}")
    target = debian_image_dir(cache, variant)
    what = "debian" if variant == "plain" else f"debian-{variant}"
    if (target / "disk.qcow2").is_file():
        return _debian_image(target, variant)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{what}.lock"):
        if (target / "disk.qcow2").is_file():  # another session built it meanwhile
            return _debian_image(target, variant)
        if not _is_root():
            raise VMError(
                f"the {what} image is built with debootstrap, which needs root",
                hint="build it once as root with the same PYTEST_FLAKE_STATE, or use --vm-image arch|PATH",
            )
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img") + (("sfdisk",) if variant == "cloud" else ()):
            if shutil.which(tool) is None:
                raise MissingToolError(f"building the {what} image needs {tool}", hint="run scripts/setup")
        _need_space(cache, 3 * GiB, f"the {what} image")
        _remove_stale_debian_images(cache, variant, keep=target)
        with _step(f"building the {what} image {target.name} (debootstrap, about 1-3 min)"):
            _run(["bash", str(RECIPES / "debian" / "build.sh"), str(target), variant], what=f"{what} image build",
                 timeout=timeout)
    return _debian_image(target, variant)


@dataclass(frozen=True)
class ArchRecipe:
    """Where the Arch cloud image and its checksum file are, and how to prepare a boot."""

    url: str
    sha256_url: str
    disk_format: str = "qcow2"
    skip_units: tuple[str, ...] = ()
    cloud_init: bool = True

    @classmethod
    def load(cls, path: Path | None = None) -> ArchRecipe:
        """Read ``vms/arch/image.json``."""
        data = json.loads((path or RECIPES / "arch" / "image.json").read_text())
        return cls(
            url=data["url"],
            sha256_url=data["sha256_url"],
            disk_format=data.get("format", "qcow2"),
            skip_units=tuple(data.get("skip_units", ())),
            cloud_init=bool(data.get("cloud_init", True)),
        )


def parse_sha256_file(text: str, wanted: str | None = None) -> tuple[str, str]:
    """``(hash, file name)`` of the image named in a ``.SHA256`` file (``HASH  NAME`` lines).

    Arch's ``latest/*.SHA256`` names the unversioned file (``HASH  Arch-Linux-x86_64-cloudimg.qcow2``):
    the entry named ``wanted`` (the download's own file name) wins, then the first image entry.
    """
    entries = []
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            entries.append((parts[0].lower(), parts[-1].lstrip("*")))
    for digest, name in entries:
        if wanted is not None and Path(name).name == wanted:
            return digest, name
    for digest, name in entries:
        if name.endswith((".qcow2", ".img", ".raw")):
            return digest, name
    if entries:
        return entries[0]
    raise VMError("the checksum file names no image", details=text[:500])


class _Progress:
    """A one-line progress bar on the terminal (when there is one), else a log line per 10%."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total, self.done, self.shown = what, total, 0, -1
        stream = sys.__stderr__
        self.stream = stream if stream is not None and stream.isatty() else None

    def update(self, n: int) -> None:
        self.done += n
        if not self.total:
            return
        percent = min(100, self.done * 100 // self.total)
        if self.stream is not None and percent != self.shown:
            bar = "#" * (percent // 4)
            self.stream.write(f"\r{self.what}: [{bar:<25}] {percent:3d}% of {self.total / MiB:.0f} MiB")
            self.stream.flush()
        elif self.stream is None and percent // 10 != self.shown // 10:
            log.info("%s: %d%% of %.0f MiB", self.what, percent, self.total / MiB)
        self.shown = percent

    def close(self) -> None:
        if self.stream is not None and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


def download(url: str, dest: Path, *, expected_sha256: str | None = None, timeout: float = 60) -> str:
    """Download ``url`` to ``dest`` (atomically), return its SHA256, check it when expected."""
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0) or None
            if total:
                _need_space(dest.parent, total + 256 * MiB, f"the download of {url}")
            progress = _Progress(f"downloading {dest.name}", total)
            try:
                with open(part, "wb") as out:
                    for chunk in response.iter_content(chunk_size=1 * MiB):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(len(chunk))
            finally:
                progress.close()
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise VMError(f"download of {url} failed: {exc}", hint="check the URL and the network, or use "
                      "--vm-image debian (built offline)") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if expected_sha256 and actual != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise VMError(
            f"checksum mismatch for {url}: got sha256 {actual}, the checksum file says {expected_sha256}",
            hint="the download is corrupt or the mirror is changing; run again later",
        )
    part.replace(dest)
    return actual


def _arch_checksum(recipe: ArchRecipe) -> tuple[str, Path]:
    """The SHA256 the checksum file gives for the image, and the cache file name of that version.

    The ``latest`` file names are unversioned, so the cached copy carries the first hex digits of
    its hash (``Arch-Linux-x86_64-cloudimg-<hash>.qcow2``); a versioned name is kept as it is.
    """
    import requests

    response = requests.get(recipe.sha256_url, timeout=30)
    response.raise_for_status()
    wanted = Path(recipe.url.split("?")[0]).name
    digest, name = parse_sha256_file(response.text, wanted)
    path = Path(Path(name).name)
    if path.name == wanted:
        path = path.with_name(f"{path.stem}-{digest[:16]}{path.suffix}")
    return digest, path


def fetch_arch(cache: Path, recipe: ArchRecipe | None = None) -> Image:
    """The Arch cloud image: the cached copy of the version the checksum file names, else a download.

    A checksum mismatch is downloaded once more, with the checksum file read again: at a release
    the ``latest`` link can move between the two downloads. Offline, the newest cached version
    is used (with a warning) rather than failing.
    """
    import requests

    recipe = recipe or ArchRecipe.load()
    folder = cache / "arch"
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".arch.lock"):
        try:
            digest, name = _arch_checksum(recipe)
        except requests.RequestException as exc:
            cached = sorted((p for p in folder.glob("*.sha256")), key=lambda p: p.stat().st_mtime)
            if cached:
                newest = cached[-1]
                disk = folder / newest.name[: -len(".sha256")]
                if disk.is_file():
                    log.warning("arch: %s unreachable (%s); using the cached %s", recipe.sha256_url, exc, disk.name)
                    return _arch_image(disk, newest.read_text().strip(), recipe)
            raise VMError(
                f"the Arch image checksum {recipe.sha256_url} is unreachable and nothing is cached: {exc}",
                hint="connect to the internet once, or use --vm-image debian (built offline)",
            ) from exc
        for attempt in (1, 2):
            disk = folder / name
            stamp = folder / (disk.name + ".sha256")
            if disk.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
                log.info("arch: using the cached %s", disk.name)
                return _arch_image(disk, digest, recipe)
            with _step(f"arch: downloading {disk.name}"):
                actual = download(recipe.url, disk)
            if actual == digest:
                break
            disk.unlink(missing_ok=True)
            if attempt == 2:
                raise VMError(
                    f"checksum mismatch for {recipe.url}: got sha256 {actual}, the checksum file says {digest} "
                    "(downloaded twice)",
                    hint="the download is corrupt or the mirror is changing; run again later",
                )
            log.warning("arch: %s has sha256 %s, the checksum file says %s; the release may have moved "
                        "meanwhile: reading the checksum file and downloading once more", recipe.url, actual, digest)
            try:
                digest, name = _arch_checksum(recipe)
            except requests.RequestException as exc:
                raise VMError(f"checksum mismatch for {recipe.url}, and {recipe.sha256_url} is now "
                              f"unreachable: {exc}", hint="run again later") from exc
        stamp.write_text(digest + "\n")
        for old in folder.iterdir():  # older versions are not needed any more
            if old.name not in (disk.name, stamp.name):
                old.unlink(missing_ok=True)
        return _arch_image(disk, digest, recipe)


def _arch_image(disk: Path, digest: str, recipe: ArchRecipe) -> Image:
    return Image(name="arch", disk=disk, disk_format=recipe.disk_format, key=f"arch-{digest[:16]}",
                 cloud_init=recipe.cloud_init, skip_units=recipe.skip_units)


def _disk_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(_run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                           what=f"qemu-img info {path}"))
    return info


def _disk_format(path: Path) -> str:
    return str(_disk_info(path).get("format", "raw"))


def create_overlay(image: Image, overlay: Path, size: int) -> int:
    """A qcow2 overlay over ``image``'s disk, ``size`` bytes big (never less than the image's disk).

    Returns the overlay's virtual size. Cloud images grow their root file system into it on
    first boot (cloud-init's growpart and resize_rootfs; on Arch a btrfs resize).
    """
    base = int(_disk_info(image.disk).get("virtual-size") or 0)
    if size < base:
        log.warning("vm: --vm-disk-size %.1f GiB is less than the %s image's disk (%.1f GiB); using the image's size",
                    size / GiB, image.name, base / GiB)
        size = base
    overlay.unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.disk_format, "-b", str(image.disk),
          str(overlay), str(size)], what=f"overlay {overlay.name}")
    return size


def resolve_image(spec: str, cache: Path) -> Image:
    """``arch``, ``debian``, ``debian-cloud``, a path to a disk image or an http(s) URL of one -> :class:`Image`."""
    if spec == "debian":
        return build_debian(cache)
    if spec == "debian-cloud":
        return build_debian(cache, variant="cloud")
    if spec == "arch":
        return fetch_arch(cache)
    if re.match(r"^https?://", spec):
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        disk = cache / "url" / key / (Path(spec.split("?")[0]).name or "disk.img")
        with _locked(cache / ".url.lock"):
            if not disk.is_file():
                with _step(f"downloading {spec}"):
                    download(spec, disk)
        return Image(name=disk.name, disk=disk, disk_format=_disk_format(disk), key=f"url-{key}", cloud_init=True)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--vm-image {spec!r} is neither arch, debian, debian-cloud, an existing file nor an "
                         "http(s) URL")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Image(name=path.name, disk=path.resolve(), disk_format=_disk_format(path), key=f"file-{key}",
                 cloud_init=True)


# --------------------------------------------------------------------------- keys, seeds


@dataclass(frozen=True)
class KeyPair:
    """The session's SSH key pair (ed25519, OpenSSH format)."""

    private: Path
    public: str

    @classmethod
    def create(cls, directory: Path, comment: str) -> KeyPair:
        """Make a new key pair in ``directory`` (or reuse the one there)."""
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = directory / "id_ed25519"
        public = directory / "id_ed25519.pub"
        if not private.is_file():
            key = Ed25519PrivateKey.generate()
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
            text = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
            public.write_text(f"{text} {comment}\n")
        return cls(private=private, public=public.read_text().strip())


def _credential(name: str, value: str) -> str:
    """An SMBIOS type-11 string carrying a systemd credential (binary form when not one line)."""
    if "\n" in value or "," in value:
        import base64

        return f"io.systemd.credential.binary:{name}={base64.b64encode(value.encode()).decode()}"
    return f"io.systemd.credential:{name}={value}"


SKIP_DROPIN = "50-pytest-flake-skip.conf"


def _skip_dropin(unit: str) -> str:
    return f"[Unit]\nConditionPathExists=/run/pytest-flake-never-{unit}\n"


@dataclass(frozen=True)
class HostKey:
    """An SSH host key pair made for one guest (ed25519): handed over in the seed, checked from the start."""

    private: str  # OpenSSH PEM
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> HostKey:
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
        public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
        return cls(private=private, public=public)


def skip_units_command(units: tuple[str, ...]) -> list[str]:
    """A bootcmd entry that skips ``units`` on images whose systemd predates unit drop-in credentials (256).

    ``systemctl mask`` refuses a unit whose file is in /etc (Arch's ``pacman-init.service``), so each
    unit gets a runtime drop-in with a condition that never holds, systemd reloads, and a unit that
    is already waiting (``systemd-time-wait-sync``) is stopped. Never fails: a unit may not exist.
    """
    lines = []
    for unit in units:
        folder = shlex.quote(f"/run/systemd/system/{unit}.d")
        lines.append(f"mkdir -p {folder} && printf %s {shlex.quote(_skip_dropin(unit))} > {folder}/{SKIP_DROPIN}")
    lines.append("systemctl daemon-reload")
    for unit in units:
        quoted = shlex.quote(unit)
        lines.append(f'[ "$(systemctl show -P ActiveState {quoted} 2>/dev/null)" != activating ] || '
                     f"systemctl stop --no-block {quoted}")
    lines.append("true")
    return ["sh", "-c", "\n".join(lines)]


def cloud_config(public_key: str, host_key: HostKey, skip_units: tuple[str, ...]) -> dict[str, Any]:
    """The cloud-config of a cloud image's seed: ``vms/arch/cloud-config.json`` plus this VM's keys and units."""
    config: dict[str, Any] = json.loads((RECIPES / "arch" / "cloud-config.json").read_text())
    config.pop("comment", None)
    config["users"] = [{"name": "root", "lock_passwd": True, "ssh_authorized_keys": [public_key]}]
    config["ssh_keys"] = {"ed25519_private": host_key.private, "ed25519_public": host_key.public}
    if skip_units:
        config["bootcmd"] = [skip_units_command(skip_units)]
    return config


def render_user_data(config: Mapping[str, Any]) -> str:
    """``#cloud-config`` followed by the config as JSON (YAML 1.2 accepts JSON; no YAML library needed)."""
    return "#cloud-config\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"


def make_seed(path: Path, user_data: str, instance: str) -> Path:
    """A cloud-init NoCloud seed (a FAT volume labelled ``cidata``) with ``user-data`` and ``meta-data``."""
    for tool in ("mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            raise MissingToolError(f"a cloud-init seed needs {tool}", hint="apt-get install dosfstools mtools")
    folder = path.with_suffix(".d")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / "user-data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a host key
        with os.fdopen(fd, "w") as out:
            out.write(user_data)
        (folder / "meta-data").write_text(f"instance-id: {instance}\nlocal-hostname: pf-vm\n")
        path.unlink(missing_ok=True)
        _run(["mkfs.vfat", "-n", "CIDATA", "-C", str(path), "2048"], what="cloud-init seed")
        _run(["mcopy", "-i", str(path), str(folder / "user-data"), str(folder / "meta-data"), "::"],
             what="cloud-init seed")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- KVM probe


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


KVM_DEVICE = "/dev/kvm"
HOST_KERNEL_GLOBS = ("/boot/vmlinuz-*", "/boot/vmlinuz", "/usr/lib/modules/*/vmlinuz", "/lib/modules/*/vmlinuz")
KVM_TRIAL = "kvm-trial"  # no kernel at hand: the first VM boots under KVM while its console is watched
KVM_TRIAL_SECONDS = 30.0
KVM_PROBE_SECONDS = 12.0
# Lines a Linux kernel (or what it starts) writes to the serial console once it runs; firmware and
# boot loaders (SeaBIOS, GRUB) also run where a KVM guest kernel hangs, so their output proves nothing.
KERNEL_PROGRESS = re.compile(
    r"Run /\S*init as init process|Freeing unused (?:kernel|decrypted)|systemd\[1\]|Welcome to (?!GRUB)|"
    r"Cloud-init v\. |login: ",
)


def host_kernel() -> Path | None:
    """The host's own kernel (``/boot/vmlinuz-*``, Arch's ``/usr/lib/modules/*/vmlinuz``), if readable."""
    import glob

    for pattern in HOST_KERNEL_GLOBS:
        for found in sorted(glob.glob(pattern), reverse=True):
            path = Path(found)
            if path.is_file() and os.access(path, os.R_OK) and path.stat().st_size > 1024 * 1024:
                return path
    return None


def probe_kernel(image: Image | None, cache: Path) -> tuple[Path | None, str]:
    """A kernel to probe KVM with, and where it comes from: the image's, the cached debian image's, the host's."""
    if image is not None and image.kernel is not None and image.kernel.is_file():
        return image.kernel, f"the {image.name} image's kernel"
    candidate = debian_image_dir(cache) / "vmlinuz"
    if candidate.is_file():
        return candidate, "the cached debian image's kernel"
    host = host_kernel()
    if host is not None:
        return host, f"the host's kernel {host}"
    return None, "no kernel at hand"


def probe_kvm(kernel: Path | None, *, timeout: float | None = None, device: str | None = None,
              qemu: str | None = None) -> tuple[bool, str]:
    """Whether KVM really runs a guest: boot ``kernel`` under KVM until it panics for lack of a root.

    ``/dev/kvm`` existing proves nothing (nested virtualisation can hang every guest), so
    a real kernel must get through its whole start-up. Returns ``(works, why)``.
    """
    device = device or KVM_DEVICE
    timeout = KVM_PROBE_SECONDS if timeout is None else timeout
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    if not os.access(device, os.R_OK | os.W_OK):
        return False, f"{device} is not accessible to this user"
    qemu = qemu or shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False, "qemu-system-x86_64 is not installed"
    if kernel is None or not kernel.is_file():
        return False, "no kernel to probe KVM with"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pf-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [qemu, "-accel", "kvm", "-m", "256", "-smp", "1", "-display", "none", "-nodefaults",
                "-no-user-config", "-no-reboot", "-nic", "none", "-serial", f"file:{serial}",
                "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/pf-none rootwait=0"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, f"a KVM guest did not get through kernel start-up in {timeout:g}s (it hangs)"
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if "Kernel panic" in text or "Unable to mount root" in text:
            return True, f"a KVM guest booted its kernel in {time.monotonic() - started:.1f}s"
        return False, f"qemu -accel kvm exited with {proc.returncode}: {tail(err.decode(errors='replace'), 3)}"


def kernel_progress(console: str) -> bool:
    """Whether a serial console shows a Linux kernel running (not only firmware or a boot loader)."""
    return KERNEL_PROGRESS.search(console) is not None


def watch_kvm_first_boot(console: Callable[[], str], running: Callable[[], bool], *,
                         answered: Callable[[], bool] = lambda: False, timeout: float | None = None,
                         interval: float = 0.5) -> tuple[bool, str]:
    """Watch the console of a first boot under KVM: ``(True, why)`` once the kernel shows progress.

    ``answered()`` (the guest's SSH port answering) counts as progress too: a quiet kernel
    command line may keep the console silent.

    ``(False, why)`` when the guest stops, or when ``timeout`` passes without kernel progress
    (a hanging KVM guest: the caller falls back to TCG).
    """
    timeout = KVM_TRIAL_SECONDS if timeout is None else timeout
    started = time.monotonic()
    while True:
        if kernel_progress(console()) or answered():
            return True, f"the first VM's kernel ran under KVM ({time.monotonic() - started:.1f}s to userspace)"
        if not running():
            return False, "the first VM under KVM stopped before its kernel showed progress"
        if time.monotonic() - started >= timeout:
            return False, (f"the first VM under KVM showed no kernel progress on its console in {timeout:g}s "
                           "(a KVM guest kernel hangs here)")
        time.sleep(interval)


def _probe_marker(cache: Path) -> Path:
    return cache / "kvm-probe.json"


def cached_probe(cache: Path) -> tuple[bool, str] | None:
    """The KVM decision made since this host booted, if any: ``(works, why)``."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(_probe_marker(cache).read_text())
        if data.get("boot_id") == _boot_id():
            return bool(data["works"]), str(data.get("why", "probed"))
    return None


def record_probe(cache: Path, works: bool, why: str) -> None:
    """Remember a KVM decision until the host reboots."""
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = _probe_marker(cache).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"boot_id": _boot_id(), "works": works, "why": why}))
        tmp.replace(_probe_marker(cache))


def choose_accel(settings: Settings, kernel: Path | None, cache: Path, *, kernel_source: str = "") -> str:
    """``kvm``, ``tcg`` or :data:`KVM_TRIAL`: the setting when explicit, else the (cached per boot) probe.

    With no kernel at hand (no debian image, none in ``/boot``), the answer is :data:`KVM_TRIAL`:
    the first VM boots under KVM while its console is watched (see :func:`watch_kvm_first_boot`).
    """
    if settings.vm_accel in ("kvm", "tcg"):
        return str(settings.vm_accel)
    uri = default_uri(settings)
    if not (uri.startswith("qemu:///") or uri.startswith("qemu+unix:///")):
        log.info("vm: libvirt %s is not local; using TCG (pass --vm-accel kvm to insist)", uri)
        return "tcg"
    cached = cached_probe(cache)
    if cached is not None:
        return "kvm" if cached[0] else "tcg"
    if kernel is None:
        works, why = probe_kvm(None)
        if not works and why == "no kernel to probe KVM with":
            log.info("vm: no kernel at hand to probe KVM with; the first VM boots under KVM while its console "
                     "is watched (%gs), else TCG", KVM_TRIAL_SECONDS)
            return KVM_TRIAL
        # /dev/kvm or QEMU is missing: no probe needed
    else:
        works, why = probe_kvm(kernel)
        if kernel_source:
            why = f"{why} (probed with {kernel_source})"
    log.info("vm: KVM %s: %s", "works" if works else "unusable, using TCG", why)
    record_probe(cache, works, why)
    return "kvm" if works else "tcg"


def describe_accel(settings: Settings, cache: Path | None = None) -> str:
    """The accelerator for the report header, from the setting or the cached probe (never probes)."""
    if settings.vm_accel in ("kvm", "tcg"):
        return f"{settings.vm_accel} (from {settings.source('vm_accel')})"
    cached = cached_probe(cache or image_cache())
    if cached is not None:
        return f"{'kvm' if cached[0] else 'tcg'} (auto: {cached[1]})"
    return "auto (KVM is probed when the first VM starts)"


# --------------------------------------------------------------------------- saved states

_SAVE_MAGIC = b"LibvirtQemudSave"
_SAVE_HEADER = struct.Struct("<16s19I")  # magic, version, data_len, was_running, compressed, cookie_offset, unused


def read_save_xml(path: Path) -> str:
    """The domain XML stored in a libvirt QEMU save image."""
    with open(path, "rb") as handle:
        header = handle.read(_SAVE_HEADER.size)
        fields = _SAVE_HEADER.unpack(header)
        if fields[0] != _SAVE_MAGIC:
            raise VMError(f"{path} is not a libvirt save image")
        data = handle.read(fields[2])
    return data.split(b"\0", 1)[0].decode()


def copy_save_with_xml(src: Path, dst: Path, new_xml: str) -> None:
    """Copy a libvirt save image, replacing its domain XML (name, UUID, disk, ports).

    libvirt's restore only accepts XML with the saved name and UUID, so a second copy
    of one saved guest could never run next to the first; the XML in the header is what
    libvirt starts QEMU with, and the migration stream after it does not depend on it.
    """
    with open(src, "rb") as handle:
        fields = list(_SAVE_HEADER.unpack(handle.read(_SAVE_HEADER.size)))
        if fields[0] != _SAVE_MAGIC or fields[1] != 2:
            raise VMError(f"{src}: unknown save image format (version {fields[1]})")
        data_len, cookie_offset = fields[2], fields[5]
        data = handle.read(data_len)
    cookie = data[cookie_offset:].split(b"\0", 1)[0] if cookie_offset else b""
    xml = new_xml.encode() + b"\0"
    payload = xml + (cookie + b"\0" if cookie else b"")
    if len(payload) > data_len:
        raise VMError(f"{src}: the new domain XML does not fit in the save header")
    fields[5] = len(xml) if cookie else 0
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)], check=True)
    with open(dst, "r+b") as handle:
        handle.write(_SAVE_HEADER.pack(*fields))
        handle.write(payload.ljust(data_len, b"\0"))


def _edit_domain_xml(xml: str, *, name: str, overlay: Path, console: Path, netdev: str,
                     session: str | None = None) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(xml)
    if session is not None:  # the state may come from an earlier session
        for tag in ("title", "description"):
            element = root.find(tag)
            if element is not None and element.text:
                element.text = re.sub(rf"{PREFIX}[0-9a-f]+", session, element.text)
    for tag, value in (("name", name), ("uuid", str(uuid.uuid4()))):
        element = root.find(tag)
        if element is None:
            raise VMError(f"saved domain XML has no <{tag}>")
        element.text = value
    disk = root.find("./devices/disk[@device='disk']/source")
    serial = root.find("./devices/serial/source")
    if disk is None or serial is None:
        raise VMError("saved domain XML has no disk or serial source")
    disk.set("file", str(overlay))
    serial.set("path", str(console))
    args = root.findall(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    for arg in args:
        if arg.get("value", "").startswith(f"user,id={NETDEV_ID},"):
            arg.set("value", netdev)
            break
    else:
        raise VMError("saved domain XML has no user network")
    # Live-only elements of the saved XML (the monitor's aliases stay; the id must go).
    root.attrib.pop("id", None)
    return ET.tostring(root, encoding="unicode")


# --------------------------------------------------------------------------- warm states across sessions

WARM_FORMAT = 2  # bump when the layout of a warm state changes (2: QEMU no longer runs as root)
WARM_ENV = "PYTEST_FLAKE_VM_WARM"
_WARM_FILES = ("state.save", "overlay.qcow2", "id_ed25519", "id_ed25519.pub")


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

    @classmethod
    def of(cls, conn: Any, accel: str) -> Hypervisor:
        """Ask libvirt which QEMU it runs for this accelerator, and the versions of both."""
        binary = ""
        with contextlib.suppress(Exception):
            caps = conn.getDomainCapabilities(None, "x86_64", "pc", "kvm" if accel == "kvm" else "qemu", 0)
            found = re.search(r"<path>([^<]+)</path>", caps)
            binary = found.group(1) if found else ""
        binary = binary or shutil.which("qemu-system-x86_64") or ""
        return cls(qemu_binary=binary, qemu_version=int(conn.getVersion()),
                   libvirt_version=int(conn.getLibVersion()))


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
        "host_cpu": _host_cpu() if accel == "kvm" else "",
        "uri": uri,
        "qemu_user": qemu_label,  # who QEMU runs as: the label is in the saved domain XML
        "template": _hash_files(template or RECIPES / "domain.xml"),
        "qemu_binary": hypervisor.qemu_binary,
        "qemu_binary_id": _file_id(Path(hypervisor.qemu_binary)) if hypervisor.qemu_binary else "",
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
class _WarmState:
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


def _boot_log_of(state: _WarmState) -> str:
    """What a warm-started console begins with: the saved boot log and a line that says so."""
    try:
        boot = state.console.read_text(errors="replace")
    except OSError:
        boot = ""
    origin = f" saved by session {state.created_by}" if state.created_by else ""
    marker = f"[pytest-flake: restored from a warm state{origin}; the lines above are its boot]\n"
    return (boot if boot.endswith("\n") or not boot else boot + "\n") + marker


class WarmStore:
    """Warm states kept across sessions in ``<image cache>/warm``: ``<slot>/`` each, ``<slot>.lock`` beside.

    Writers hold the slot's lock and write into ``.<slot>.<session>.tmp`` that is renamed into
    place once complete; readers take no lock and only copy out of a complete state.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _lock(self, slot: str) -> contextlib.AbstractContextManager[None]:
        return _locked(self.root / f"{slot}.lock")

    def load(self, key: dict[str, Any]) -> _WarmState | None:
        """The complete state saved for exactly ``key``, else None (stale or incomplete ones are ignored)."""
        return self._read(self.root / warm_slot(key), key)

    @staticmethod
    def _read(folder: Path, key: dict[str, Any] | None) -> _WarmState | None:
        try:
            meta = json.loads((folder / "state.json").read_text())
            if key is not None and meta.get("key") != key:
                log.info("vm: the warm state in %s is stale (made for another image, size or QEMU)", folder)
                return None
            sizes = meta["sizes"]
            for name in _WARM_FILES:
                if (folder / name).stat().st_size != sizes[name]:
                    raise ValueError(f"{name} is incomplete")
            return _WarmState(dir=folder, id=str(meta["id"]), hostkeys=tuple(meta["hostkeys"]),
                              boot_seconds=float(meta.get("boot_seconds", 0.0)),
                              created_by=str(meta.get("session", "")))
        except FileNotFoundError:
            if folder.exists():
                _incomplete(folder, "a file is missing")
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _incomplete(folder, str(exc))
            return None

    def drop(self, state: _WarmState) -> None:
        """Remove ``state`` (a restore of it failed) unless another session replaced it meanwhile."""
        slot = state.dir.name
        with self._lock(slot):
            current = self._read(state.dir, None)
            if current is None or current.id == state.id:
                log.warning("vm: dropping the warm state %s", state.dir)
                _remove_tree(state.dir)

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
                _remove_tree(leftover)
            if self.load(key) is not None:
                yield None
                return
            tmp = self.root / f".{slot}.{session_id}.tmp"
            tmp.mkdir(mode=0o700)
            try:
                yield tmp
            except BaseException:
                _remove_tree(tmp)
                raise
            if not (tmp / "state.json").is_file():  # the caller gave up
                _remove_tree(tmp)
                return
            final = self.root / slot
            if final.exists():  # stale or incomplete: moved aside first, so the rename stays atomic
                _remove_tree(final)
            os.rename(tmp, final)
            log.info("vm: warm state saved in %s", final)
        self.prune()

    @staticmethod
    def publish(tmp: Path, key: dict[str, Any], *, hostkeys: tuple[str, ...], boot_seconds: float,
                session_id: str) -> None:
        """Write ``state.json`` (the key and the size of every file) once the files are complete."""
        for name in _WARM_FILES:
            os.chmod(tmp / name, 0o600)
        meta = {
            "id": uuid.uuid4().hex, "key": key, "hostkeys": list(hostkeys), "boot_seconds": boot_seconds,
            "session": session_id, "created": time.time(),
            "sizes": {name: (tmp / name).stat().st_size for name in _WARM_FILES},
        }
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
                    log.info("vm: removing the warm state %s of a removed image", folder)
                    _remove_tree(folder)

    def sweep(self, session_ids: list[str]) -> None:
        """Remove the half-written states of dead sessions (complete states stay)."""
        if not self.root.is_dir():
            return
        for sid in session_ids:
            for leftover in self.root.glob(f".*.{sid}.tmp"):
                log.info("vm sweep: removing the incomplete warm state %s", leftover)
                _remove_tree(leftover)

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


# --------------------------------------------------------------------------- SSH


def _hostkey_lines_from_console(text: str) -> tuple[str, ...]:
    """Host keys cloud-init prints between ``-----BEGIN SSH HOST KEY KEYS-----`` markers."""
    match = re.search(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", text, re.S)
    if not match:
        return ()
    keys = []
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
            keys.append(f"{parts[0]} {parts[1]}")
    return tuple(keys)


def _ssh_client(port: int, key: Path, hostkeys: tuple[str, ...], timeout: float = 10.0) -> paramiko.SSHClient:
    """One paramiko connection to root@127.0.0.1:port that accepts only the known host keys."""
    import paramiko

    client = paramiko.SSHClient()
    known = client.get_host_keys()
    entry = f"[127.0.0.1]:{port}"
    for line in hostkeys:
        kind, blob = line.split()[:2]
        known.add(entry, kind, paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob)))
    if hostkeys:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.WarningPolicy())
    client.connect(
        "127.0.0.1", port=port, username="root", key_filename=str(key), look_for_keys=False, allow_agent=False,
        timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
    )
    return client


def _ssh_banner(port: int) -> bool:
    """Whether an SSH server answers on 127.0.0.1:port (QEMU accepts a forward's connection either way)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.settimeout(1.0)
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


class _QuietParamiko:
    """While waiting for sshd, paramiko's transport thread logs every refused banner as an error."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("paramiko.transport")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


@functools.lru_cache(maxsize=1)
def _pinned_backend_class() -> type:
    from testinfra.backend.paramiko import ParamikoBackend

    class PinnedParamikoBackend(ParamikoBackend):  # type: ignore[misc]
        """testinfra's paramiko backend on the VM's own connection (host key checked)."""

        def __init__(self, hostspec: str, factory: Callable[[], paramiko.SSHClient]) -> None:
            super().__init__(hostspec)
            self._factory = factory

        @functools.cached_property
        def client(self) -> paramiko.SSHClient:
            return self._factory()

    return PinnedParamikoBackend


# --------------------------------------------------------------------------- VM


class VM(GuestCommands):
    """One libvirt guest reachable over SSH; a context manager.

    ``vm.run("cmd")`` and ``vm.host`` (a testinfra Host) share one SSH connection;
    ``vm.forward(port)`` publishes a guest port on 127.0.0.1; ``vm.console_log()`` is the
    serial console. Entering starts it (cleaning up if the start fails); leaving removes
    the domain, its overlay and its console log. ``close()`` may be called more than once.
    """

    def __init__(self, pool: VMPool, image: str | None = None, memory: int | None = None,
                 cpus: int | None = None) -> None:
        self.pool = pool
        self.image_spec = image or pool.settings.vm_image
        self.memory = int(memory or pool.settings.vm_memory)
        self.cpus = int(cpus or pool.settings.vm_cpus)
        self.disk_size = int(pool.settings.vm_disk_size)  # bytes; the overlay's virtual size
        self.name = pool.next_name()
        self.dir = pool.dir
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
        self._dom: Any = None
        self._image: Image | None = None
        self._hostkeys: tuple[str, ...] = ()
        # where the host key checked on SSH comes from: "seed" (made here, handed over by cloud-init),
        # "image" (known from the image build), "warm state", "console", or "first use" (not checked)
        self.host_key_origin = ""
        self._client: paramiko.SSHClient | None = None
        self._host: Host | None = None
        self._forwards: dict[int, int] = {}
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
        self.pool.register(self)
        image = self._image = self.pool.image(self.image_spec)
        accel = self.pool.accel(image)
        booted = False
        if accel == KVM_TRIAL:  # no kernel to probe KVM with: this boot decides
            booted = self._cold_boot(image, "kvm", trial=True)
            accel = "kvm" if booted else "tcg"
        key: dict[str, Any] | None = None
        if self.pool.warm:
            try:
                key = self.pool.warm_key(image, self.memory, self.cpus, accel, self.disk_size)
            except Exception as exc:  # warm starts are an optimisation: never an error
                log.warning("vm://%s: no warm starts (%s)", self.name, exc)
        state = self.pool.store.load(key) if key is not None and not booted else None
        if state is not None:
            try:
                self._restore(state)
                self.warm = True
                self.warm_from = state.created_by
            except FlakeError as exc:
                log.warning("vm://%s: warm start failed, booting cold: %s", self.name, exc)
                self._drop_domain()
                self.overlay.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.pool.store.drop(state)
        if not self.warm:
            if not booted:
                self._cold_boot(image, accel)
            self.boot_seconds = time.monotonic() - started
            if key is not None and self.pool.store.load(key) is None:
                self._save_for_later(key, time.monotonic() - started)
        self.ready_seconds = time.monotonic() - started
        if self.warm:
            self.boot_seconds = self.ready_seconds
        self.pool.starts.append((self.name, self.warm, self.ready_seconds))
        log.info("vm://%s: SSH ready on 127.0.0.1:%d after %.1fs (%s)", self.name, self.ssh_port,
                 self.ready_seconds, "warm start" if self.warm else "cold boot")
        return self

    def _netdev(self, extra: dict[int, int] | None = None) -> str:
        rules = [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        rules += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in (extra or {}).items()]
        return ",".join([f"user,id={NETDEV_ID},restrict=on", *rules])

    def _cold_boot(self, image: Image, accel: str, *, trial: bool = False) -> bool:
        """Boot ``image`` and wait for SSH; True. With ``trial`` (under KVM), first watch the console
        for kernel progress: without it, record that KVM hangs, remove the domain and return False."""
        conn = self.pool.conn
        self.ssh_port = free_port()
        self.disk_size = create_overlay(image, self.overlay, self.disk_size)
        self.console.write_text("")
        self.keys = self.pool.keys
        oem = [_credential("ssh.authorized_keys.root", self.keys.public)]
        for unit in image.skip_units:
            oem.append(_credential(f"systemd.unit-dropin.{unit}", _skip_dropin(unit)))
        seed_disk = ""
        hostkeys, origin = image.hostkeys, "image"
        if image.cloud_init:
            host_key = HostKey.generate()
            hostkeys, origin = (" ".join(host_key.public.split()[:2]),), "seed"  # the first connection is checked
            user_data = render_user_data(cloud_config(self.keys.public, host_key, image.skip_units))
            self.seed = make_seed(self.dir / f"{self.name}.seed.img", user_data, self.name)
            seed_disk = (f"    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
                         f"      <source file='{self.seed}'/>\n      <target dev='vdb' bus='virtio'/>\n"
                         "      <readonly/>\n    </disk>")
        if image.kernel is not None:
            boot = (f"    <kernel>{image.kernel}</kernel>\n    <initrd>{image.initrd}</initrd>\n"
                    f"    <cmdline>{_xml_escape(image.cmdline or '')}</cmdline>")
        else:
            boot = "    <boot dev='hd'/>"
        xml = Template((RECIPES / "domain.xml").read_text()).substitute(
            domain_type="kvm" if accel == "kvm" else "qemu",
            name=self.name,
            uuid=str(uuid.uuid4()),
            session=self.pool.session.id,
            image=_xml_escape(image.key),
            memory=self.memory,
            cpus=self.cpus,
            boot=boot,
            oem_strings="\n".join(f"      <entry>{_xml_escape(s)}</entry>" for s in oem),
            cpu="",
            overlay=self.overlay,
            seed_disk=seed_disk,
            console=self.console,
            seclabel=self.pool.seclabel(),
            netdev=self._netdev(),
        )
        self.pool.prepare_files(image, self.overlay, self.console, *([self.seed] if self.seed else []))
        with _step(f"vm://{self.name}: cold boot of {image.name} ({accel}, {self.memory} MiB, {self.cpus} CPU)"):
            libvirt = _libvirt()
            try:
                self._dom = conn.createXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise VMError(f"vm://{self.name}: libvirt refused to start the domain: {exc}",
                              details=f"domain XML:\n{xml}") from exc
            self._hostkeys, self.host_key_origin = hostkeys, origin if hostkeys else ""
            if trial:
                works, why = watch_kvm_first_boot(self.console_log, self._dom.isActive,
                                                  answered=lambda: _ssh_banner(self.ssh_port))
                self.pool.kvm_trial_result(works, why)
                if not works:
                    log.warning("vm://%s: %s; booting again under TCG", self.name, why)
                    self._drop_domain()
                    return False
            self._wait_ssh()
        return True

    def _save_for_later(self, key: dict[str, Any], boot_seconds: float) -> None:
        """Save the fresh guest, its overlay and keys as the warm state of ``key``, then resume it.

        Failing to save is only a warning (the next VM boots cold too); losing the guest is an error.
        """
        libvirt = _libvirt()
        store, keys = self.pool.store, self.keys
        assert keys is not None
        try:
            with store.create(key, self.pool.session.id) as tmp:
                if tmp is None:
                    return  # another session saved one meanwhile
                self._disconnect()
                try:
                    with _step(f"vm://{self.name}: saving the booted guest for warm starts"):
                        self._dom.save(str(tmp / "state.save"))
                        self._dom = None
                        subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(self.overlay),
                                        str(tmp / "overlay.qcow2")], check=True)
                        self.pool.prepare_files(self._image, self.overlay, self.console,
                                                *([self.seed] if self.seed else []))
                        self.pool.conn.restoreFlags(str(tmp / "state.save"), None,
                                                    libvirt.VIR_DOMAIN_SAVE_RUNNING)
                        self._dom = self.pool.conn.lookupByName(self.name)
                except (libvirt.libvirtError, subprocess.CalledProcessError, OSError) as exc:
                    if self._dom is None:
                        raise VMError(f"vm://{self.name}: lost the guest while saving it: {exc}") from exc
                    raise
                shutil.copyfile(keys.private, tmp / "id_ed25519")
                (tmp / "id_ed25519.pub").write_text(keys.public + "\n")
                with contextlib.suppress(OSError):  # the boot log, for the console of warm starts
                    shutil.copyfile(self.console, tmp / "console.log")
                store.publish(tmp, key, hostkeys=self._hostkeys, boot_seconds=boot_seconds,
                              session_id=self.pool.session.id)
        except VMError:
            raise
        except (libvirt.libvirtError, subprocess.CalledProcessError, OSError) as exc:
            log.warning("vm://%s: could not save a warm state: %s", self.name, exc)
            if self._dom is None:
                raise VMError(f"vm://{self.name}: lost the guest while saving it: {exc}") from exc
        if self._client is None:
            self._wait_ssh()

    def _restore(self, state: _WarmState) -> None:
        libvirt = _libvirt()
        self.ssh_port = free_port()
        copy = self.dir / f"{self.name}.save"
        private = self.dir / f"{self.name}.id_ed25519"
        with _step(f"vm://{self.name}: warm start from {state.dir.name}"
                   + (f" (saved by {state.created_by})" if state.created_by else "")):
            try:
                subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(state.overlay), str(self.overlay)],
                               check=True)
                fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(state.private_key.read_bytes())
                self.keys = KeyPair(private=private, public=state.public_key)
                self.console.write_text(_boot_log_of(state))
                xml = _edit_domain_xml(read_save_xml(state.save), name=self.name, overlay=self.overlay,
                                       console=self.console, netdev=self._netdev(),
                                       session=self.pool.session.id)
                copy_save_with_xml(state.save, copy, xml)
                self.pool.prepare_files(self._image, self.overlay, self.console)
                self.pool.conn.restoreFlags(str(copy), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
                self._dom = self.pool.conn.lookupByName(self.name)
            except (libvirt.libvirtError, subprocess.CalledProcessError, OSError, ET.ParseError) as exc:
                raise VMError(f"vm://{self.name}: restore failed: {exc}") from exc
            finally:
                copy.unlink(missing_ok=True)
            self._hostkeys, self.host_key_origin = state.hostkeys, "warm state"
            self._wait_ssh()

    def _wait_ssh(self) -> None:
        import paramiko

        image = self._image
        timeout = float(self.pool.settings.flake_timeout)

        def probe() -> paramiko.SSHClient:
            if self._dom is None or not self._dom.isActive():
                raise VMError(f"vm://{self.name}: the guest stopped before SSH answered",
                              details="console (last lines):\n" + tail(self.console_log(), 40))
            if not self._hostkeys and image is not None and image.cloud_init:
                self._hostkeys = _hostkey_lines_from_console(self.console_log())
                self.host_key_origin = "console" if self._hostkeys else ""
            try:
                return _ssh_client(self.ssh_port, self._private_key(), self._hostkeys, timeout=5)
            except paramiko.BadHostKeyException as exc:
                raise VMError(f"vm://{self.name}: SSH host key mismatch on 127.0.0.1:{self.ssh_port}: {exc}",
                              hint="the image changed under its cache; delete the cached image") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise NotReady(f"{type(exc).__name__}: {exc}") from exc

        quiet = _QuietParamiko()
        with quiet:
            client = wait_for(
                probe, what=f"vm://{self.name}: SSH on 127.0.0.1:{self.ssh_port}", timeout=timeout, interval=0.5,
            max_interval=2.0,
            on_timeout=lambda: "console (last lines):\n" + tail(self.console_log(), 40),
            hint="the guest never answered SSH; the console log says why (raise --flake-timeout under TCG)",
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

    def _private_key(self) -> Path:
        return (self.keys or self.pool.keys).private

    def _connection(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active():
                if self._closed:
                    raise VMError(f"vm://{self.name} is closed")
                self._client = _ssh_client(self.ssh_port, self._private_key(), self._hostkeys)
            assert self._client is not None
            return self._client

    @property
    def host(self) -> Host:
        """A testinfra Host on this VM (over the VM's one SSH connection)."""
        if self._host is None:
            from testinfra.host import Host

            backend = _pinned_backend_class()(f"paramiko://root@127.0.0.1:{self.ssh_port}", self._connection)
            self._host = Host(backend)
        return self._host

    def run(self, cmd: str | list[str]) -> CommandResult:
        """Run a shell command as root in the guest; a list is quoted for you."""
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        result = self.host.run(command)
        log.debug("vm://%s: %s -> %s", self.name, command, result.rc)
        return result

    def forward(self, guest_port: int) -> int:
        """Publish ``guest_port`` on a 127.0.0.1 port of the host (added to the running guest)."""
        if guest_port in self._forwards:
            return self._forwards[guest_port]
        import libvirt_qemu

        libvirt = _libvirt()
        last = ""
        for _ in range(5):
            port = free_port()
            command = f"hostfwd_add {NETDEV_ID} tcp:127.0.0.1:{port}-:{int(guest_port)}"
            try:
                out = libvirt_qemu.qemuMonitorCommand(self._dom, command,
                                                      libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            except libvirt.libvirtError as exc:
                raise VMError(f"vm://{self.name}: {command} failed: {exc}") from exc
            if not out.strip():
                self._forwards[guest_port] = port
                log.info("vm://%s: guest port %d on 127.0.0.1:%d", self.name, guest_port, port)
                return int(port)
            last = out.strip()
        raise VMError(f"vm://{self.name}: could not forward guest port {guest_port}: {last}")

    def url(self, guest_port: int, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` for a guest port (forwarded on first use)."""
        return f"http://127.0.0.1:{self.forward(guest_port)}/{path.lstrip('/')}"

    def copy_to(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a file or a folder (recursively) into the guest over SFTP; modes are kept."""
        source = Path(local)
        sftp = self._connection().open_sftp()
        try:
            if source.is_dir():
                with contextlib.suppress(OSError):
                    sftp.mkdir(remote)
                for path in sorted(source.rglob("*")):
                    target = f"{remote.rstrip('/')}/{path.relative_to(source).as_posix()}"
                    if path.is_dir():
                        with contextlib.suppress(OSError):
                            sftp.mkdir(target)
                    else:
                        sftp.put(str(path), target)
                        sftp.chmod(target, path.stat().st_mode & 0o7777)
                return
            if not source.is_file():
                raise UsageError(f"vm://{self.name}: copy_to: {source} does not exist")
            sftp.put(str(source), remote)
            sftp.chmod(remote, source.stat().st_mode & 0o7777)
        finally:
            sftp.close()

    @property
    def wait_timeout(self) -> float:
        """Default ``timeout`` of ``wait_until_succeeds``, ``wait_for_unit``...: ``--flake-timeout``."""
        return float(self.pool.settings.flake_timeout)

    def copy_from(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or a folder (recursively) out of the guest over SFTP; modes are kept."""
        import stat

        target = Path(local)
        sftp = self._connection().open_sftp()
        try:
            try:
                info = sftp.stat(remote)
            except OSError as exc:
                raise UsageError(f"vm://{self.name}: copy_from: {remote} does not exist in the guest") from exc

            def get(src: str, dst: Path, mode: int) -> None:
                if stat.S_ISDIR(mode):
                    dst.mkdir(parents=True, exist_ok=True)
                    for entry in sftp.listdir_attr(src):
                        get(f"{src.rstrip('/')}/{entry.filename}", dst / entry.filename, entry.st_mode or 0)
                else:
                    sftp.get(src, str(dst))
                    dst.chmod(mode & 0o7777)

            get(remote, target, info.st_mode or 0)
        finally:
            sftp.close()

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

    def ssh_command(self) -> str:
        """How a person reaches this VM from a shell (for --flake-keep)."""
        return (f"ssh -i {shlex.quote(str(self._private_key()))} -p {self.ssh_port} "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1")

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
        if dom is None:
            with contextlib.suppress(Exception):
                dom = self.pool.conn.lookupByName(self.name)
        if dom is None:
            return
        libvirt = _libvirt()
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()

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
            ("remove the overlay", lambda: self.overlay.unlink(missing_ok=True)),
            ("remove the seed", lambda: self.seed.unlink(missing_ok=True) if self.seed else None),
            ("remove the console log", lambda: self.console.unlink(missing_ok=True)),
            ("remove the key copy", lambda: (self.dir / f"{self.name}.id_ed25519").unlink(missing_ok=True)),
        ]
        for what, action in steps:
            try:
                action()
            except Exception as exc:  # one failing step must not hide or stop the others
                log.error("vm://%s: could not %s: %s", self.name, what, exc)
        self.pool.unregister(self)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


# --------------------------------------------------------------------------- QEMU's user and its files


@dataclass(frozen=True)
class QemuUser:
    """Who QEMU runs as on the system daemon: libvirt's own unprivileged user (its DAC base label)."""

    uid: int
    gid: int

    @property
    def name(self) -> str:
        import pwd

        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @property
    def label(self) -> str:
        return f"+{self.uid}:+{self.gid}"

    @classmethod
    def of(cls, capabilities: str) -> QemuUser:
        """libvirt's DAC base label for QEMU guests (``<baselabel type='qemu'>+988:+993</baselabel>``)."""
        found = re.search(r"<baselabel type=['\"](?:qemu|kvm)['\"]>\+?(\d+):\+?(\d+)</baselabel>", capabilities)
        if found:
            return cls(int(found.group(1)), int(found.group(2)))
        import pwd

        for name in ("libvirt-qemu", "qemu"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise VMError("libvirt names no unprivileged user for QEMU (no DAC base label, no libvirt-qemu user)",
                      hint="run scripts/setup.d/30-libvirt.sh, or set user/group in /etc/libvirt/qemu.conf")

    def can_search(self, directory: Path) -> bool:
        """Whether this user may pass through ``directory`` (mode bits and POSIX ACLs)."""
        stat = directory.stat()
        if stat.st_uid == self.uid:
            return bool(stat.st_mode & 0o100)
        named = _acl_user_perm(directory, self.uid)
        if named is not None:
            return bool(named & 0o1)
        if stat.st_gid == self.gid:
            return bool(stat.st_mode & 0o010)
        return bool(stat.st_mode & 0o001)


_ACL_USER, _ACL_MASK = 0x02, 0x10  # tags of a system.posix_acl_access entry


def _acl_user_perm(path: Path, uid: int) -> int | None:
    """The effective permission bits (rwx = 4|2|1) of ``uid``'s named ACL entry on ``path``, None without one.

    Read from the ``system.posix_acl_access`` attribute (version 2: 4-byte header, 8-byte entries
    ``tag:u16 perm:u16 id:u32``); the mask limits a named entry: a chmod of the folder since (pytest
    does one on its temporary folders) can leave the entry without effect.
    """
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None
    perm = None
    mask = 0o7
    for offset in range(4, len(raw) - 7, 8):
        tag, bits, ident = struct.unpack_from("<HHI", raw, offset)
        if tag == _ACL_USER and ident == uid:
            perm = bits
        elif tag == _ACL_MASK:
            mask = bits
    return None if perm is None else perm & mask


def grant_search(user: QemuUser, path: Path) -> list[Path]:
    """Let ``user`` pass through every folder above ``path`` (search only, through an ACL entry; no listing).

    The folders keep their modes: root's 0700 home stays closed to everybody else. Returns the
    folders that got an entry. Called right before each start or restore of a domain: a chmod
    since (pytest narrows its temporary folders at each session start) takes the entry's effect.
    """
    granted = []
    for folder in reversed(path.resolve().parents):
        if user.can_search(folder):
            continue
        if shutil.which("setfacl") is None:
            raise MissingToolError(f"QEMU (as {user.name}) cannot reach {path}: {folder} is closed to it, and "
                                   "setfacl is not installed", hint="apt-get install acl (scripts/setup does), or "
                                   "point PYTEST_FLAKE_STATE to a folder QEMU's user can reach")
        _run(["setfacl", "-m", f"u:{user.uid}:x", str(folder)], what=f"let QEMU's user {user.name} reach {path}")
        log.info("vm: %s may now pass through %s (ACL u:%s:x)", user.name, folder, user.name)
        granted.append(folder)
    return granted


def hand_to_qemu(user: QemuUser, *files: Path) -> None:
    """Files QEMU writes (overlay, console) or that hold a secret (seed): its user's alone, mode 0600."""
    for path in files:
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o600)


def check_readable(user: QemuUser, *files: Path | None) -> None:
    """Base images, kernels, initrds stay root's and read-only; QEMU's user only needs to read them."""
    for path in files:
        if path is None:
            continue
        stat = path.stat()
        readable = (stat.st_uid == user.uid and stat.st_mode & 0o400) or (
            stat.st_gid == user.gid and stat.st_mode & 0o040) or stat.st_mode & 0o004
        if not readable:
            raise VMError(f"QEMU's user {user.name} cannot read {path} (mode {stat.st_mode & 0o777:o})",
                          hint=f"chmod a+r {shlex.quote(str(path))}")


# --------------------------------------------------------------------------- pool


class VMPool:
    """The VMs of one session: images, accelerator, keys, warm states; a context manager.

    ``pool.vm(image=None, memory=None, cpus=None)`` returns a new :class:`VM` to enter.
    Closing the pool closes every VM it made and removes the session's VM folder.
    """

    def __init__(self, settings: Settings, session: Session, *, warm: bool | None = None) -> None:
        self.settings = settings
        self.session = session
        self.warm = warm_enabled() if warm is None else warm  # PYTEST_FLAKE_VM_WARM=0 turns it off
        self.uri = default_uri(settings)
        self.cache = image_cache(session.root)
        self.store = WarmStore(self.cache / "warm")
        self.dir = session.root / "vms" / session.id
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
        """The libvirt connection (opened on first use)."""
        if self._conn is None:
            self._conn = connect(self.uri)
        return self._conn

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
            return str(self.session.name("vm", str(self._count)))

    def vm(self, image: str | None = None, memory: int | None = None, cpus: int | None = None) -> VM:
        """A new VM (not started: use it as a context manager)."""
        return VM(self, image=image, memory=memory, cpus=cpus)

    def image(self, spec: str) -> Image:
        with self._lock:
            if spec not in self._images:
                self._images[spec] = resolve_image(spec, self.cache)
            return self._images[spec]

    def accel(self, image: Image) -> str:
        """``kvm`` or ``tcg`` (decided once a session), or :data:`KVM_TRIAL` until a first boot decides."""
        with self._lock:
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
        if not (_is_root() and self.uri.startswith("qemu:///system")):
            return None
        with self._lock:
            if self._qemu_user is None:
                self._qemu_user = QemuUser.of(self.conn.getCapabilities())
            return self._qemu_user

    def seclabel(self) -> str:
        """libvirt's DAC model with its own unprivileged user, never root; files are prepared by us.

        ``relabel='no'``: libvirt does not chown the shared base images and kernels (they stay root's
        and read-only); each VM's overlay, seed and console are handed to QEMU's user instead.
        """
        user = self.qemu_user
        if user is None:
            return ""
        return f"  <seclabel type='static' model='dac' relabel='no'><label>{user.label}</label></seclabel>"

    def prepare_files(self, image: Image | None, *own: Path) -> None:
        """Make ``own`` QEMU's (0600) and the image readable and reachable for QEMU's user."""
        user = self.qemu_user
        if user is None:
            return
        for path in own:
            grant_search(user, path)
        hand_to_qemu(user, *own)
        if image is not None:
            for shared in (image.disk, image.kernel, image.initrd):
                if shared is not None:
                    grant_search(user, shared)
            check_readable(user, image.disk, image.kernel, image.initrd)

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]:
        """The validity key of a warm state of this image and size here (see :func:`warm_key`)."""
        with self._lock:
            if accel not in self._hypervisors:
                self._hypervisors[accel] = Hypervisor.of(self.conn, accel)
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
            with contextlib.suppress(OSError):
                self.dir.parent.rmdir()  # the overlay folder stays only while something is in it
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- sweep, doctor


def sweep(session_ids: list[str], settings: Settings, root: Path | None = None) -> None:
    """Remove the domains, overlays and half-written warm states of dead sessions (killed runs).

    Complete warm states in the image cache are not a session's: they stay.
    """
    ids = [sid for sid in session_ids if sid.startswith(PREFIX)]
    if not ids:
        return
    base = (root or state_dir()) / "vms"
    WarmStore(image_cache(root) / "warm").sweep(ids)
    try:
        conn = connect(default_uri(settings))
    except FlakeError as exc:
        log.warning("vm sweep: %s", exc)
        conn = None
    if conn is not None:
        libvirt = _libvirt()
        try:
            for dom in conn.listAllDomains(0):
                name = dom.name()
                if any(name.startswith(f"{sid}-") for sid in ids):
                    log.info("vm sweep: removing domain %s of a dead session", name)
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
        finally:
            conn.close()
    for sid in ids:
        folder = base / sid
        if folder.exists():
            log.info("vm sweep: removing %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        base.rmdir()


def _qemu_user_check(conn: Any, uri: str, cache: Path) -> tuple[bool, str]:
    """Who QEMU runs as, and whether it can reach the image cache."""
    if not (_is_root() and uri.startswith("qemu:///system")):
        return True, f"QEMU runs as {os.environ.get('USER') or os.geteuid()} (a session daemon runs it as the caller)"
    try:
        user = QemuUser.of(conn.getCapabilities())
    except FlakeError as exc:
        return False, str(exc)
    if user.uid == 0:
        return False, "QEMU runs as root: set user and group in /etc/libvirt/qemu.conf to libvirt's qemu user"
    closed = [folder for folder in reversed(cache.resolve().parents) if folder.exists() and not user.can_search(folder)]
    reach = ("it can reach the image cache" if not closed else
             f"the first VM lets it pass through {', '.join(map(str, closed))} (ACL u:{user.name}:x, search only)")
    return True, f"QEMU runs as {user.name} (uid {user.uid}, gid {user.gid}), not root; {reach}"


def doctor(settings: Settings, root: Path | None = None) -> list[tuple[bool, str]]:
    """Pre-flight checks of the VM side: each ``(ok, line)`` says what is fine or what to do."""
    lines: list[tuple[bool, str]] = []
    uri = default_uri(settings)
    cache = image_cache(root)
    try:
        _libvirt()
        lines.append((True, "libvirt-python is installed"))
    except FlakeError as exc:
        lines.append((False, str(exc)))
    else:
        try:
            conn = connect(uri)
            try:
                version = conn.getLibVersion()
                lines.append((True, f"libvirt {version // 1000000}.{version // 1000 % 1000} answers at {uri}"))
                lines.append(_qemu_user_check(conn, uri, cache))
            finally:
                conn.close()
        except FlakeError as exc:
            lines.append((False, str(exc)))
    for tool, why in (("qemu-system-x86_64", "runs the guests"), ("qemu-img", "makes overlays"),
                      ("debootstrap", "builds the debian image"), ("mkfs.ext4", "builds the debian image"),
                      ("mkfs.vfat", "makes cloud-init seeds"), ("mcopy", "makes cloud-init seeds")):
        found = shutil.which(tool)
        lines.append((bool(found), f"{tool} {'found' if found else 'missing'} ({why})"
                      + ("" if found else ": run scripts/setup")))
    if os.path.exists("/dev/kvm"):
        stat = os.stat("/dev/kvm")
        if stat.st_mode & 0o060 != 0o060:
            lines.append((False, "/dev/kvm is not group read-writable: libvirt then probes QEMU again on every "
                                 "call (about a minute per start); run scripts/setup.d/30-libvirt.sh "
                                 "(chgrp kvm /dev/kvm; chmod 0660 /dev/kvm)"))
    if settings.vm_accel == "tcg":
        lines.append((True, "accelerator: TCG (from settings)"))
    else:
        cached = cached_probe(cache)
        kernel, source = probe_kernel(None, cache)
        if cached is not None:
            works, why = cached[0], f"{cached[1]}; decided since this host booted"
        elif kernel is not None:
            works, why = probe_kvm(kernel)
            why = f"{why} (probed with {source})"
            record_probe(cache, works, why)
        else:
            works, why = probe_kvm(None)
        if works:
            lines.append((True, f"KVM works: {why}"))
        elif kernel is None and cached is None and why == "no kernel to probe KVM with":
            lines.append((True, "KVM not probed yet: no kernel at hand (no debian image built, none in /boot); "
                                "the first VM boots under KVM while its console is watched for kernel progress "
                                f"({KVM_TRIAL_SECONDS:g}s), else under TCG"))
        else:
            ok = settings.vm_accel != "kvm"
            lines.append((ok, f"KVM unusable ({why}); guests run under TCG"
                          + ("" if ok else ": --vm-accel kvm will fail, use auto or tcg")))
    target = debian_image_dir(cache)
    if (target / "disk.qcow2").is_file():
        lines.append((True, f"debian image cached in {target}"))
    else:
        lines.append((settings.vm_image != "debian",
                      "debian image not built yet (built on first use: 1-2 min, needs root and debootstrap)"))
    cloud = debian_image_dir(cache, "cloud")
    if (cloud / "disk.qcow2").is_file():
        lines.append((True, f"debian-cloud image cached in {cloud}"))
    elif settings.vm_image == "debian-cloud":
        lines.append((False, "debian-cloud image not built yet (built on first use: 2-4 min, needs root and "
                             "debootstrap)"))
    arch = sorted((cache / "arch").glob("*.qcow2")) if (cache / "arch").is_dir() else []
    if arch:
        lines.append((True, f"arch image cached: {arch[-1].name}"))
    else:
        lines.append((settings.vm_image != "arch",
                      "arch image not downloaded yet (needs the internet once; offline use --vm-image debian)"))
    count, size = WarmStore(cache / "warm").usage()
    if not warm_enabled():
        lines.append((True, f"warm starts off (${WARM_ENV}); {count} warm state(s) cached"))
    else:
        lines.append((True, f"{count} warm state(s) cached in {cache / 'warm'} ({size / MiB:.0f} MiB)"
                      + ("; the first VM of each image and size boots cold once" if not count else "")))
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        lines.append((free > 4 * GiB, f"{free / GiB:.1f} GiB free for images in {cache}"
                      + ("" if free > 4 * GiB else ": the images need about 4 GiB")))
    return lines


__all__ = [
    "VM", "VMPool", "Image", "ArchRecipe", "KeyPair", "sweep", "doctor", "resolve_image", "fetch_arch",
    "build_debian", "download", "parse_sha256_file", "probe_kvm", "choose_accel", "default_uri",
    "debian_recipe_hash", "image_cache", "connect",
]
