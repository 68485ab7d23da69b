"""libvirt's QEMU save-file format: read the domain XML in its header, copy it with new XML."""

from __future__ import annotations

import struct
from pathlib import Path

from .._host import reflink_copy
from ..errors import VMError

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
    reflink_copy(src, dst, what=f"copying the saved state {src.name}", error=VMError)
    with open(dst, "r+b") as handle:
        handle.write(_SAVE_HEADER.pack(*fields))
        handle.write(payload.ljust(data_len, b"\0"))
