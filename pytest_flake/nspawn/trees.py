"""OS trees for systemd containers: ``debian``, ``debian-trixie``, ``debian-sid`` (built locally), a
directory, or a tarball, and the throwaway copy each container boots.

The Debian trees and unpacked tarballs are made and cached by the image store
(:mod:`pytest_flake.images.trees`); a directory is used in place. A container never writes to
any of them: it runs on a throwaway copy-on-write copy (:func:`writable_copy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .._host import reflink_copy, run_command
from ..errors import NspawnError, UsageError
from ..images import (
    TARBALL_SUFFIXES,
    Tree,
    check_os_tree,
    debian_names,
    debian_tree,
    parse_debian_name,
    tarball_tree,
)
from . import loops

log = logging.getLogger(__name__)


@contextlib.contextmanager
def loops_as_found(dev: Path = loops.DEV, sys_block: Path = loops.SYS_BLOCK) -> Iterator[None]:
    """The host's loop devices as they were before the block: a loop mount can add one (:mod:`.loops`)."""
    before = loops.present(dev)
    try:
        yield
    finally:
        loops.restore(before, set(), dev, sys_block)


def resolve_tree(spec: str, cache: Path, invocation_dir: Path | None = None) -> Tree:
    """``debian``, ``debian-trixie``, ``debian-sid``, a directory holding an OS tree, or a tarball of one."""
    debian = parse_debian_name(spec)
    if debian is not None and debian.variant == "plain":
        return debian_tree(cache, debian.release, loop_guard=loops_as_found)
    if debian is not None:
        raise UsageError(f"--container-image {spec!r}: cloud-init images are for VMs only",
                         hint=f"use one of {', '.join(debian_names(cloud=False))}")
    path = Path(spec).expanduser()
    if not path.is_absolute() and invocation_dir is not None:
        path = invocation_dir / path
    if path.is_dir():
        check_os_tree(path, f"--container-image {spec}")
        return Tree(str(path), path)
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return tarball_tree(path, cache)
    if not os.path.lexists(path):
        raise UsageError(f"--container-image {spec!r}: {path} does not exist",
                         hint="give an existing directory or tarball of an OS tree, or debian, debian-trixie or "
                              "debian-sid (built locally)")
    raise UsageError(f"--container-image {spec!r} is neither {', '.join(debian_names(cloud=False))}, a "
                     f"directory nor a tarball ({', '.join(TARBALL_SUFFIXES)}) of an OS tree",
                     hint="use --container-image debian (built locally from the VM image recipe)")


# --------------------------------------------------------------------------- copies


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
    proc = run_command(["mount", "-t", "overlay", "overlay", "-o", options, str(root)],
                       what=f"nspawn: overlay over {tree.root}", error=NspawnError)
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
        proc = run_command(["umount", str(root)], what=f"nspawn: unmounting {root}", error=NspawnError)
        if proc.returncode != 0:
            run_command(["umount", "-l", str(root)], what=f"nspawn: unmounting {root}", error=NspawnError)
    if not _mounted(root):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        raise NspawnError(f"cannot unmount {root}", hint=f"umount -l {root}; rm -rf {workdir}")
