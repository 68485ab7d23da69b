"""OS trees for systemd containers: ``debian``, ``debian-trixie``, ``debian-sid`` (built locally), a
directory, or a tarball.

``debian`` (Debian 12, systemd 252), ``debian-trixie`` (Debian 13, 257) and ``debian-sid``
(unstable, 262) are the root file systems of the Debian VM images of those releases
(``vms/debian``, the same recipe, so the same systemd and ``portablectl``), each copied out of
its cached image once and cached beside it as ``<image cache>/nspawn-debian-<recipe hash>-N/root``
(``nspawn-trixie-...``, ``nspawn-sid-...``). A tarball is unpacked once
into ``<image cache>/nspawn-tar-<key>/root``. A directory is used in place. A container
never writes to any of them: it runs on a throwaway copy-on-write copy (:func:`writable_copy`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .._host import locked, reflink_copy, run_tool
from ..errors import NspawnError, UsageError
from . import loops

log = logging.getLogger(__name__)

MARKER = ".pytest-flake-tree"
TREE_VERSION = "2"  # of what _prepare_for_containers does to the Debian tree: a change makes a new tree
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd", ".tar.bz2")
# units of the VM image that a container has no use for (reached through nsenter, no serial line)
MASKED_UNITS = ("ssh.service", "serial-getty@ttyS0.service")


@dataclass(frozen=True)
class Tree:
    """An OS tree a container boots: ``name`` for messages, ``root`` the directory."""

    name: str
    root: Path


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    return run_tool(argv, what=what, timeout=timeout, error=NspawnError, hint="run scripts/setup")


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


def _prepare_for_containers(root: Path) -> None:
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


def _extract_disk(disk: Path, dest: Path, work: Path) -> None:
    """Copy the ext4 file system of a qcow2 disk into ``dest`` (mounted read-only on a loop device).

    The loop device is the host's and goes back as it was: one a mount creates is removed after.
    """
    raw = work / "disk.raw"
    _run(["qemu-img", "convert", "-q", "-O", "raw", str(disk), str(raw)], "debian tree")
    mnt = work / "mnt"
    mnt.mkdir()
    before = loops.present()
    try:
        _run(["mount", "-o", "ro,loop", str(raw), str(mnt)], "debian tree: mount the image")
        try:
            reflink_copy(mnt, dest, tree=True, what="debian tree: copy the root", timeout=600, error=NspawnError)
        finally:
            _run(["umount", str(mnt)], "debian tree: unmount the image")
    finally:
        loops.restore(before, set())
        raw.unlink(missing_ok=True)


def debian_tree_dir(cache: Path, release: str = "bookworm") -> Path:
    """The cache folder of the Debian tree of the current VM image recipe of ``release`` (it may not exist yet)."""
    from .. import vm

    image = vm.debian_image_dir(cache, release=release).name  # debian-HASH, debian-sid-HASH
    # debian-HASH stays nspawn-debian-HASH; the others are nspawn-trixie-HASH, nspawn-sid-HASH, which
    # the removal of older bookworm trees (nspawn-debian-*, in earlier versions too) never matches
    return cache / f"nspawn-{image if release == 'bookworm' else image.removeprefix('debian-')}-{TREE_VERSION}"


def debian_tree(cache: Path, release: str = "bookworm") -> Tree:
    """The Debian tree of the current VM image recipe of ``release``, built (image first, if need be) once."""
    from .. import vm

    name = vm.DebianName(release).name
    folder = debian_tree_dir(cache, release)
    root = folder / "root"
    if (folder / MARKER).is_file():
        return Tree(name, root)
    image = vm.build_debian(cache, release=release)
    with locked(cache / f".nspawn-{name}.lock"):
        if (folder / MARKER).is_file():
            return Tree(name, root)
        # trees of older recipes of this release, once no session may use them (as with the images)
        prefix = folder.name[: -len(f"{vm.debian_recipe_hash(release=release)}-{TREE_VERSION}")]
        stale_name = re.compile(re.escape(prefix) + r"[0-9a-f]{16}-\d+")
        for stale in cache.glob(f"{prefix}*"):
            if (stale.is_dir() and stale_name.fullmatch(stale.name) and not _mounted_below(stale)
                    and time.time() - stale.stat().st_mtime > vm.STALE_IMAGE_SECONDS):
                _run(["rm", "-rf", "--one-file-system", str(stale)], f"remove the older tree {stale}")
        log.info("nspawn: copying the root of %s into %s", image.disk, folder)
        with tempfile.TemporaryDirectory(prefix=f"nspawn-{name}-", dir=cache) as tmp:
            work = Path(tmp)
            (work / "root").mkdir()
            _extract_disk(image.disk, work / "root", work)
            _prepare_for_containers(work / "root")
            check_os_tree(work / "root", f"{name} tree")
            folder.mkdir()
            (work / "root").rename(root)
        (folder / MARKER).write_text(json.dumps({"source": str(image.disk), "release": release}))
    return Tree(name, root)


def _tarball_tree(path: Path, cache: Path) -> Tree:
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


def resolve_tree(spec: str, cache: Path, invocation_dir: Path | None = None) -> Tree:
    """``debian``, ``debian-trixie``, ``debian-sid``, a directory holding an OS tree, or a tarball of one."""
    from .. import vm

    debian = vm.parse_debian_name(spec)
    if debian is not None and debian.variant == "plain":
        return debian_tree(cache, debian.release)
    if debian is not None:
        raise UsageError(f"--container-image {spec!r}: cloud-init images are for VMs only",
                         hint=f"use one of {', '.join(vm.debian_names(cloud=False))}")
    path = Path(spec).expanduser()
    if not path.is_absolute() and invocation_dir is not None:
        path = invocation_dir / path
    if path.is_dir():
        check_os_tree(path, f"--container-image {spec}")
        return Tree(str(path), path)
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return _tarball_tree(path, cache)
    if not os.path.lexists(path):
        raise UsageError(f"--container-image {spec!r}: {path} does not exist",
                         hint="give an existing directory or tarball of an OS tree, or debian, debian-trixie or "
                              "debian-sid (built locally)")
    raise UsageError(f"--container-image {spec!r} is neither {', '.join(vm.debian_names(cloud=False))}, a "
                     f"directory nor a tarball ({', '.join(TARBALL_SUFFIXES)}) of an OS tree",
                     hint="use --container-image debian (built locally from the VM image recipe)")


# --------------------------------------------------------------------------- copies


def _mounted_below(folder: Path) -> bool:
    """Whether something is mounted below ``folder``, or an overlay (a container's copy) stands on it."""
    top = str(folder)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 3 and (fields[1] == top or fields[1].startswith(top + "/") or top + "/" in fields[3]):
                return True
    return False


def _mounted(path: Path) -> bool:
    target = str(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return True
    return False


def writable_copy(tree: Tree, workdir: Path) -> Path:
    """A throwaway copy-on-write root over ``tree`` in ``workdir``: an overlay, else a reflink copy.

    Returns the directory to boot (``workdir/root``); :func:`drop_copy` removes it.
    """
    root = workdir / "root"
    for sub in ("upper", "work", "root"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={tree.root},upperdir={workdir / 'upper'},workdir={workdir / 'work'}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return root
    log.warning("nspawn: overlay over %s failed (%s); making a reflink copy instead", tree.root,
                proc.stderr.strip())
    reflink_copy(tree.root, root, tree=True, what=f"copy of the tree {tree.name}", timeout=600, error=NspawnError)
    return root


def drop_copy(workdir: Path) -> None:
    """Unmount and remove a copy made by :func:`writable_copy` (idempotent)."""
    root = workdir / "root"
    if _mounted(root):
        proc = subprocess.run(["umount", str(root)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
    if not _mounted(root):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        raise NspawnError(f"cannot unmount {root}", hint=f"umount -l {root}; rm -rf {workdir}")
