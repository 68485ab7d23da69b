"""Is a file a disk image? Asked before any VM boots from it.

``qemu-img info`` names the format of an image file (qcow2, vmdk, vdi, ...); any other
file it calls ``raw``, a text file included. A raw file is taken as a disk only when it
holds what a disk holds: a partition table (MBR or GPT), or a file system's superblock
(ext2/3/4, XFS, Btrfs, ISO 9660, squashfs). Anything else is refused at once, with
what it looks like, instead of booting it and waiting out the timeout on an empty console.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .errors import UsageError

# (offset, magic) of what makes a raw file a disk
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (510, b"\x55\xaa", "an MBR partition table"),
    (512, b"EFI PART", "a GPT partition table"),
    (1080, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (0x10040, b"_BHRfS_M", "a Btrfs file system"),
    (0x8001, b"CD001", "an ISO 9660 file system"),
    (0, b"hsqs", "a squashfs file system"),
)
HINT = "pass a qcow2 or raw disk image, or 'debian' (built locally) or 'arch'"


def qemu_img_format(path: Path) -> str | None:
    """The format ``qemu-img info`` gives ``path`` (None when qemu-img is missing or fails)."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        return None
    try:
        proc = subprocess.run([qemu_img, "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        return str(json.loads(proc.stdout).get("format") or "raw")
    except ValueError:
        return None


def _looks_like(head: bytes) -> str:
    if not head:
        return "an empty file"
    sample = head[:4096]
    if b"\0" not in sample:
        try:
            sample.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    if sample.startswith(b"\x1f\x8b"):
        return "gzip data (decompress it first)"
    if sample.startswith(b"\xfd7zXZ"):
        return "xz data (decompress it first)"
    if sample.startswith(b"\x7fELF"):
        return "an ELF program"
    return "data without a partition table or file system"


def check_disk_image(path: Path, what: str = "--vm-image") -> str:
    """The format of the disk image at ``path``; :class:`UsageError` when it is not one."""
    fmt = qemu_img_format(path)
    if fmt is not None and fmt != "raw":
        return fmt
    try:
        with open(path, "rb") as handle:
            head = handle.read(0x10048)
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror}", hint=HINT) from None
    for offset, magic, _ in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return "raw"
    # fmt None: qemu-img is not installed (or failed); the file's own bytes are all there is to go by
    seen = "qemu-img sees raw data with" if fmt == "raw" else "it has no image format header and"
    raise UsageError(f"{what} {path} is not a disk image: {seen} no partition table or file system "
                     f"(it is {_looks_like(head)})", hint=HINT)
