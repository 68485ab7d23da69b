"""The Debian images, built offline from one recipe (``vms/debian``) for each release and variant.

A name is a release and a variant: ``debian`` (Debian 12 bookworm, systemd 252),
``debian-trixie`` (Debian 13, systemd 257) and ``debian-sid`` (Debian unstable, systemd 262,
the generation Arch runs), each also as ``-cloud`` (``debian-cloud``, ``debian-trixie-cloud``,
``debian-sid-cloud``): Debian's cloud-init in a partitioned disk, booted with exactly the seed an
Arch VM gets. Each is cached in ``<image cache>/<name>-<recipe hash>/``; the hash covers
``build.sh``, the package lists it reads for that release and variant, and the release, so a
change to any of them builds a new image (and older ones go once no session may use them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .._host import locked
from ..errors import MissingToolError, UsageError, VMError
from .arch import ArchRecipe
from .cache import (
    RECIPES,
    STALE_IMAGE_SECONDS,
    GiB,
    Image,
    hash_files,
    is_root,
    mounted_below,
    need_space,
    remove_folder,
    run,
    step,
)

log = logging.getLogger(__name__)

DEBIAN_VARIANTS = ("plain", "cloud")  # build.sh OUTDIR VARIANT RELEASE
# release -> (the name's middle part, what it is): "debian" stays Debian 12
DEBIAN_RELEASES: dict[str, tuple[str, str]] = {
    "bookworm": ("", "Debian 12, systemd 252"),
    "trixie": ("-trixie", "Debian 13, systemd 257"),
    "sid": ("-sid", "Debian unstable, systemd 262"),
}


@dataclass(frozen=True)
class DebianName:
    """What a built-in Debian image name means: ``debian-sid-cloud`` is release sid, variant cloud."""

    release: str = "bookworm"
    variant: str = "plain"

    @property
    def name(self) -> str:
        return "debian" + DEBIAN_RELEASES[self.release][0] + ("-cloud" if self.variant == "cloud" else "")

    @property
    def about(self) -> str:
        return DEBIAN_RELEASES[self.release][1] + (", cloud-init" if self.variant == "cloud" else "")


def debian_names(*, cloud: bool = True) -> tuple[str, ...]:
    """Every built-in Debian image name (VMs take all of them, containers only those without cloud)."""
    variants = DEBIAN_VARIANTS if cloud else ("plain",)
    return tuple(DebianName(release, variant).name for release in DEBIAN_RELEASES for variant in variants)


def parse_debian_name(spec: str) -> DebianName | None:
    """The release and variant of a built-in Debian image name, None for anything else."""
    for release in DEBIAN_RELEASES:
        for variant in DEBIAN_VARIANTS:
            if DebianName(release, variant).name == spec:
                return DebianName(release, variant)
    return None


def _check(release: str, variant: str) -> None:
    if variant not in DEBIAN_VARIANTS:
        raise UsageError(f"unknown debian image variant {variant!r}", hint=f"one of {', '.join(DEBIAN_VARIANTS)}")
    if release not in DEBIAN_RELEASES:
        raise UsageError(f"unknown debian release {release!r}", hint=f"one of {', '.join(DEBIAN_RELEASES)}")


def recipe_files(variant: str = "plain", release: str = "bookworm") -> list[Path]:
    """The files ``build.sh`` reads for a release and variant (the builder first)."""
    folder = RECIPES / "debian"
    files = [folder / "build.sh", folder / "private-dev.sh", folder / "packages.txt"]
    if (folder / f"packages-{release}.txt").is_file():
        files.append(folder / f"packages-{release}.txt")
    if variant == "cloud":
        files.append(folder / "packages-cloud.txt")
    return files


def debian_recipe_hash(variant: str = "plain", release: str = "bookworm") -> str:
    """A hash of the recipe of one release and variant (its files and the release): a new hash, a new image."""
    _check(release, variant)
    files = hash_files(*recipe_files(variant, release))
    return hashlib.sha256(f"{release}\0{files}".encode()).hexdigest()[:16]


def _prefix(variant: str, release: str) -> str:
    return DebianName(release, variant).name + "-"


def debian_image_dir(cache: Path, variant: str = "plain", release: str = "bookworm") -> Path:
    """The cache folder of the Debian image of the current recipe (it may not exist yet)."""
    return cache / f"{_prefix(variant, release)}{debian_recipe_hash(variant, release)}"


def _remove_stale(cache: Path, variant: str, release: str, keep: Path) -> None:
    """Remove this image's interrupted builds, and images of older recipes once nobody may use them."""
    pattern = re.compile(re.escape(_prefix(variant, release)) + r"[0-9a-f]{16}(\.work\..*)?")
    for stale in cache.iterdir():
        if stale == keep or not pattern.fullmatch(stale.name):
            continue
        with contextlib.suppress(OSError):
            interrupted = ".work." in stale.name  # under the build lock: its builder is dead
            if interrupted or time.time() - stale.stat().st_mtime > STALE_IMAGE_SECONDS:
                if mounted_below(stale):
                    log.warning("vm: not removing %s: something is mounted below it", stale)
                    continue
                log.info("vm: removing %s %s", "the interrupted build" if interrupted else "the older image", stale)
                remove_folder(stale, f"remove {stale}")


def build_debian(cache: Path, *, timeout: float = 1800, variant: str = "plain", release: str = "bookworm") -> Image:
    """The Debian image of the current recipe, built with debootstrap when not cached yet.

    ``release`` is ``bookworm`` (``debian``), ``trixie`` or ``sid``; ``variant="cloud"`` adds
    Debian's cloud-init in a partitioned disk, booted with the seed the Arch image gets.
    """
    _check(release, variant)
    target = debian_image_dir(cache, variant, release)
    what = DebianName(release, variant).name
    if (target / "disk.qcow2").is_file():
        return debian_image(target, variant, release)
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f".{what}.lock"):
        if (target / "disk.qcow2").is_file():  # another session built it meanwhile
            return debian_image(target, variant, release)
        if not is_root():
            raise VMError(
                f"the {what} image is built with debootstrap, which needs root",
                hint="build it once as root with the same PYTEST_FLAKE_STATE, or use --vm-image arch|PATH",
            )
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "chroot") + (("sfdisk",) if variant == "cloud" else ()):
            if shutil.which(tool) is None:
                raise MissingToolError(f"building the {what} image needs {tool}", hint="run scripts/setup")
        need_space(cache, 3 * GiB, f"the {what} image")
        _remove_stale(cache, variant, release, keep=target)
        with step(f"building the {what} image {target.name} ({DebianName(release, variant).about}; "
                  "debootstrap, about 1-3 min)"):
            run(["bash", str(RECIPES / "debian" / "build.sh"), str(target), variant, release],
                what=f"{what} image build", timeout=timeout)
    return debian_image(target, variant, release)


def debian_min_memory() -> int:
    """The memory (MiB) a Debian image needs to boot, from its recipe (``vms/debian/limits.json``)."""
    data = json.loads((RECIPES / "debian" / "limits.json").read_text())
    return int(data["min_memory_mib"])


def built_release(directory: Path) -> dict[str, str]:
    """The ``release`` file of a built image (``release=sid``, ``systemd=262.1-1``), {} when absent."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (directory / "release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip():
                info[key.strip()] = value.strip()
    return info


def debian_image(directory: Path, variant: str = "plain", release: str = "bookworm") -> Image:
    """The :class:`Image` of a built Debian image folder."""
    hostkeys = tuple(
        " ".join(line.split()[:2]) for line in (directory / "hostkeys.pub").read_text().splitlines() if line.strip()
    )
    cloud = variant == "cloud"
    return Image(
        name=DebianName(release, variant).name,
        disk=directory / "disk.qcow2",
        key=directory.name,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=(directory / "cmdline").read_text().strip(),
        hostkeys=hostkeys,
        # the cloud variants boot with exactly the seed (and credentials) the Arch path sends
        cloud_init=cloud,
        skip_units=ArchRecipe.load().skip_units if cloud else (),
        release=release,
        min_memory=debian_min_memory(),
    )
