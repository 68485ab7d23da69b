"""Base images (the Debian builds are in :mod:`.debian`): the Arch download and its checksum, URLs and files,
and the copy-on-write overlay each VM boots from."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._host import locked
from ..errors import UsageError, VMError
from ..session import state_dir
from .common import RECIPES, GiB, MiB, log, need_space, run, step


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
    release: str = ""  # of a built-in Debian image: bookworm, trixie, sid
    min_memory: int = 0  # MiB the image needs to boot (its recipe says; 0: unknown)


def image_cache(root: Path | None = None) -> Path:
    """Where base images are cached: ``<state>/images``."""
    return (root or state_dir()) / "images"


@dataclass(frozen=True)
class ArchRecipe:
    """Where the Arch cloud image and its checksum file are, and how to prepare a boot."""

    url: str
    sha256_url: str
    disk_format: str = "qcow2"
    skip_units: tuple[str, ...] = ()
    cloud_init: bool = True
    min_memory: int = 0

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
            min_memory=int(data.get("min_memory_mib", 0)),
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
                need_space(dest.parent, total + 256 * MiB, f"the download of {url}")
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
    with locked(cache / ".arch.lock"):
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
            with step(f"arch: downloading {disk.name}"):
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
                 cloud_init=recipe.cloud_init, skip_units=recipe.skip_units, min_memory=recipe.min_memory)


def disk_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                           what=f"qemu-img info {path}"))
    return info


def disk_format_of(path: Path) -> str:
    return str(disk_info(path).get("format", "raw"))


def create_overlay(image: Image, overlay: Path, size: int) -> int:
    """A qcow2 overlay over ``image``'s disk, ``size`` bytes big (never less than the image's disk).

    Returns the overlay's virtual size. Cloud images grow their root file system into it on
    first boot (cloud-init's growpart and resize_rootfs; on Arch a btrfs resize).
    """
    base = int(disk_info(image.disk).get("virtual-size") or 0)
    if size < base:
        log.warning("vm: --vm-disk-size %.1f GiB is less than the %s image's disk (%.1f GiB); using the image's size",
                    size / GiB, image.name, base / GiB)
        size = base
    overlay.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.disk_format, "-b", str(image.disk),
          str(overlay), str(size)], what=f"overlay {overlay.name}")
    return size


def resolve_image(spec: str, cache: Path) -> Image:
    """``arch``, a Debian name (``debian``, ``debian-sid-cloud``...), a disk path or http(s) URL -> :class:`Image`."""
    from .debian import build_debian, debian_names, parse_debian_name

    debian = parse_debian_name(spec)
    if debian is not None:
        return build_debian(cache, variant=debian.variant, release=debian.release)
    if spec == "arch":
        return fetch_arch(cache)
    if re.match(r"^https?://", spec):
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        disk = cache / "url" / key / (Path(spec.split("?")[0]).name or "disk.img")
        with locked(cache / ".url.lock"):
            if not disk.is_file():
                with step(f"downloading {spec}"):
                    download(spec, disk)
        return Image(name=disk.name, disk=disk, disk_format=disk_format_of(disk), key=f"url-{key}", cloud_init=True)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--vm-image {spec!r} is neither arch, {', '.join(debian_names())}, an existing file "
                         "nor an http(s) URL")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Image(name=path.name, disk=path.resolve(), disk_format=disk_format_of(path), key=f"file-{key}",
                 cloud_init=True)

