"""Disks: what ``qemu-img info`` says of one, whether a file is a disk image at all, and overlays.

``qemu-img info`` names the format of an image file (qcow2, vmdk, vdi, ...); any other file it
calls ``raw``, a text file included. :func:`check_disk_image` takes a raw file as a disk only when
it holds what a disk holds: a partition table (MBR or GPT), or a file system's superblock
(ext2/3/4, XFS, Btrfs, ISO 9660, squashfs). Anything else is refused before any VM boots from it,
with what it looks like, instead of booting it and waiting out the timeout on an empty console.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .._host import describe_file, sniff
from ..errors import MissingToolError, UsageError, VMError
from .cache import GiB, Image, run

log = logging.getLogger(__name__)

# (offset, magic, what) of what makes a raw file a disk
DISK_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (510, b"\x55\xaa", "an MBR partition table"),
    (512, b"EFI PART", "a GPT partition table"),
    (1080, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (0x10040, b"_BHRfS_M", "a Btrfs file system"),
    (0x8001, b"CD001", "an ISO 9660 file system"),
    (0, b"hsqs", "a squashfs file system"),
)
HEAD_BYTES = 0x10048  # enough for every signature above
HINT = "pass a qcow2 or raw disk image, or 'debian' (built locally) or 'arch'"
COMPRESSED = ("gzip", "zstd", "bzip2", "xz")


def disk_info(path: Path) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``path`` (``format``, ``virtual-size``...); failing: :class:`VMError`."""
    info: dict[str, Any] = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                          what=f"qemu-img info {path}", timeout=60))
    return info


def disk_format_of(path: Path) -> str:
    """The format qemu-img gives ``path`` (``raw`` for any file without an image header)."""
    return str(disk_info(path).get("format") or "raw")


def check_disk_image(path: Path, what: str = "--vm-image") -> str:
    """The format of the disk image at ``path``; :class:`UsageError` when it is not one."""
    try:
        fmt: str | None = disk_format_of(path)
    except (MissingToolError, VMError, ValueError):
        fmt = None  # qemu-img is not installed (or failed): the file's own bytes are all there is to go by
    if fmt is not None and fmt != "raw":
        return fmt
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror}", hint=HINT) from None
    for offset, magic, _ in DISK_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return "raw"
    kind = sniff(head)
    if fmt is None and kind == "qcow2":  # no qemu-img to ask, but the header says it
        return kind
    seen = "qemu-img sees raw data with" if fmt == "raw" else "it has no image format header and"
    raise UsageError(f"{what} {path} is not a disk image: {seen} no partition table or file system "
                     f"(it is {describe_file(path, head)})",
                     hint=f"decompress it first, or {HINT}" if kind in COMPRESSED else HINT)


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
    overlay_on(image.disk, overlay, image.disk_format, size)
    return size


def overlay_on(backing: Path, overlay: Path, backing_format: str = "qcow2", size: int | None = None) -> None:
    """A qcow2 ``overlay`` over ``backing`` (nothing copied: QEMU only reads the backing file).

    ``size`` None: the backing file's virtual size (a warm state's overlay: a VM restored on it
    sees the disk it was saved with).
    """
    overlay.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(overlay),
         *([str(size)] if size is not None else [])], what=f"overlay {overlay.name}")
