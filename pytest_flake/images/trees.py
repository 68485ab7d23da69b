"""OS trees for systemd containers, cached beside the images: the Debian releases' roots, and unpacked tarballs.

``debian`` (Debian 12, systemd 252), ``debian-trixie`` (Debian 13, 257) and ``debian-sid``
(unstable, 262) are the root file systems of the Debian VM images of those releases
(``vms/debian``, the same recipe, so the same systemd and ``portablectl``), each copied out of
its cached image once and cached beside it as ``<image cache>/nspawn-debian-<recipe hash>-N/root``
(``nspawn-trixie-...``, ``nspawn-sid-...``). A tarball is unpacked once into
``<image cache>/nspawn-tar-<key>/root``. Nothing here starts a container; a container never
writes to these trees (it runs on a copy of its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._host import locked, reflink_copy
from ..errors import NspawnError, UsageError
from .cache import STALE_IMAGE_SECONDS, mounted_below, remove_folder, run
from .debian import DebianName, build_debian, debian_image_dir, debian_recipe_hash

log = logging.getLogger(__name__)

MARKER = ".pytest-flake-tree"
TREE_VERSION = "2"  # of what prepare_for_containers does to the Debian tree: a change makes a new tree
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd", ".tar.bz2")
# units of the VM image that a container has no use for (reached through nsenter, no serial line)
MASKED_UNITS = ("ssh.service", "serial-getty@ttyS0.service")

# entered around the loop mount that reads a disk: the caller keeps the host's loop devices as found
LoopGuard = Callable[[], contextlib.AbstractContextManager[object]]


@dataclass(frozen=True)
class Tree:
    """An OS tree a container boots: ``name`` for messages, ``root`` the directory."""

    name: str
    root: Path


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    return run(argv, what=what, timeout=timeout, error=NspawnError)


def check_os_tree(root: Path, what: str) -> None:
    """Raise :class:`UsageError` unless ``root`` looks like a bootable systemd OS tree."""
    if not root.is_dir():
        raise UsageError(f"{what}: {root} is not a directory")
    if not any(os.path.lexists(root / p) for p in ("etc/os-release", "usr/lib/os-release")):
        raise UsageError(f"{what}: {root} is not an OS tree (no etc/os-release nor usr/lib/os-release)",
                         hint="give the root folder of a distribution with systemd, or use 'debian'")
    if not any(os.path.lexists(root / p) for p in ("usr/lib/systemd/systemd", "lib/systemd/systemd")):
        raise UsageError(f"{what}: {root} has no systemd (usr/lib/systemd/systemd)",
                         hint="install systemd (and systemd-container for portablectl) in the tree, or use 'debian'")


def prepare_for_containers(root: Path) -> None:
    """What the VM image has and a container must not: a hostname, the root in fstab, sshd, a serial getty."""
    (root / "etc" / "hostname").unlink(missing_ok=True)  # the machine name is the hostname
    fstab = root / "etc" / "fstab"
    if fstab.is_file():
        fstab.write_text("# the container's root is set up by systemd-nspawn\n")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        target = units / unit
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to("/dev/null")


def _extract_disk(disk: Path, dest: Path, work: Path, loop_guard: LoopGuard) -> None:
    """Copy the ext4 file system of a qcow2 disk into ``dest`` (mounted read-only on a loop device)."""
    raw = work / "disk.raw"
    _run(["qemu-img", "convert", "-q", "-O", "raw", str(disk), str(raw)], "debian tree")
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        with loop_guard():
            _run(["mount", "-o", "ro,loop", str(raw), str(mnt)], "debian tree: mount the image")
            try:
                reflink_copy(mnt, dest, tree=True, what="debian tree: copy the root", timeout=600, error=NspawnError)
            finally:
                _run(["umount", str(mnt)], "debian tree: unmount the image")
    finally:
        raw.unlink(missing_ok=True)


def debian_tree_dir(cache: Path, release: str = "bookworm") -> Path:
    """The cache folder of the Debian tree of the current VM image recipe of ``release`` (it may not exist yet)."""
    image = debian_image_dir(cache, release=release).name  # debian-HASH, debian-sid-HASH
    # debian-HASH stays nspawn-debian-HASH; the others are nspawn-trixie-HASH, nspawn-sid-HASH, which
    # the removal of older bookworm trees (nspawn-debian-*, in earlier versions too) never matches
    return cache / f"nspawn-{image if release == 'bookworm' else image.removeprefix('debian-')}-{TREE_VERSION}"


def debian_tree(cache: Path, release: str = "bookworm", *, loop_guard: LoopGuard) -> Tree:
    """The Debian tree of the current VM image recipe of ``release``, built (image first, if need be) once.

    The image's disk is read through a loop mount, with ``loop_guard()`` entered around it.
    """
    name = DebianName(release).name
    folder = debian_tree_dir(cache, release)
    root = folder / "root"
    if (folder / MARKER).is_file():
        return Tree(name, root)
    image = build_debian(cache, release=release)
    with locked(cache / f".nspawn-{name}.lock"):
        if (folder / MARKER).is_file():
            return Tree(name, root)
        # trees of older recipes of this release, once no session may use them (as with the images)
        prefix = folder.name[: -len(f"{debian_recipe_hash(release=release)}-{TREE_VERSION}")]
        stale_name = re.compile(re.escape(prefix) + r"[0-9a-f]{16}-\d+")
        for stale in cache.glob(f"{prefix}*"):
            if (stale.is_dir() and stale_name.fullmatch(stale.name) and not mounted_below(stale)
                    and time.time() - stale.stat().st_mtime > STALE_IMAGE_SECONDS):
                remove_folder(stale, f"remove the older tree {stale}", error=NspawnError)
        log.info("nspawn: copying the root of %s into %s", image.disk, folder)
        with tempfile.TemporaryDirectory(prefix=f"nspawn-{name}-", dir=cache) as tmp:
            work = Path(tmp)
            (work / "root").mkdir()
            _extract_disk(image.disk, work / "root", work, loop_guard)
            prepare_for_containers(work / "root")
            check_os_tree(work / "root", f"{name} tree")
            folder.mkdir()
            (work / "root").rename(root)
        (folder / MARKER).write_text(json.dumps({"source": str(image.disk), "release": release}))
    return Tree(name, root)


def tarball_tree(path: Path, cache: Path) -> Tree:
    """The OS tree in a tarball, unpacked once into the cache (keyed on the file's path, size and time)."""
    info = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache / f"nspawn-tar-{key}"
    root = folder / "root"
    if (folder / MARKER).is_file():
        return Tree(path.name, root)
    with locked(cache / f".nspawn-tar-{key}.lock"):
        if not (folder / MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            with tempfile.TemporaryDirectory(prefix="nspawn-tar-", dir=cache) as tmp:
                unpacked = Path(tmp) / "root"
                unpacked.mkdir()
                _run(["tar", "--numeric-owner", "-xpf", str(path), "-C", str(unpacked)],
                     f"--container-image {path}: unpack")
                check_os_tree(unpacked, f"--container-image {path}")
                folder.mkdir(parents=True)
                unpacked.rename(root)
            (folder / MARKER).write_text(json.dumps({"source": str(path)}))
    return Tree(path.name, root)
