"""The Arch Linux cloud image: its recipe (``vms/arch/image.json``), the checksum file, the download, the cache.

The cached copy lives in ``<image cache>/arch/`` with a ``.sha256`` stamp beside it; a newer
release replaces it, and offline the newest cached version is used.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .._host import locked
from ..errors import VMError
from .cache import RECIPES, Image, step
from .download import ProgressCallback, download

log = logging.getLogger(__name__)


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


def fetch_arch(cache: Path, recipe: ArchRecipe | None = None, *, progress: ProgressCallback | None = None) -> Image:
    """The Arch cloud image: the cached copy of the version the checksum file names, else a download.

    A checksum mismatch is downloaded once more, with the checksum file read again: at a release
    the ``latest`` link can move between the two downloads. Offline, the newest cached version
    is used (with a warning) rather than failing. ``progress`` shows the download (:func:`.download.download`).
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
                actual = download(recipe.url, disk, progress=progress)
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
