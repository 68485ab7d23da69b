"""libvirt's QEMU save-file format: read the domain XML in its header, copy it with new XML."""

from __future__ import annotations

import struct
from pathlib import Path

from .._host import reflink_copy
from ..errors import VMError

_SAVE_MAGIC = b"LibvirtQemudSave"
_SAVE_HEADER = struct.Struct("<16s19I")  # magic, version, data_len, was_running, compressed, cookie_offset, unused
HEADER_SIZE = _SAVE_HEADER.size


def read_save_xml(path: Path) -> str:
    """The domain XML stored in a libvirt QEMU save image."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SIZE)
        return xml_of_header(head + handle.read(header_length(head) - len(head)), str(path))


def header_length(head: bytes, what: str = "the save image") -> int:
    """How many bytes the header (the fixed part and the XML area) of a save image takes, from its first bytes."""
    if len(head) < HEADER_SIZE or head[:16] != _SAVE_MAGIC:
        raise VMError(f"{what} is not a libvirt save image")
    return HEADER_SIZE + int(_SAVE_HEADER.unpack(head[:HEADER_SIZE])[2])


def xml_of_header(header: bytes, what: str = "the save image") -> str:
    """The domain XML in a save image's header (``header``: at least :func:`header_length` bytes)."""
    data = header[HEADER_SIZE:header_length(header, what)]
    return data.split(b"\0", 1)[0].decode()


def header_with_xml(header: bytes, new_xml: str, what: str = "the save image") -> bytes:
    """A save image's header (same length) with ``new_xml`` in place of its domain XML; the cookie is kept."""
    fields = list(_SAVE_HEADER.unpack(header[:HEADER_SIZE]))
    if fields[0] != _SAVE_MAGIC or fields[1] != 2:
        raise VMError(f"{what}: unknown save image format (version {fields[1]})")
    data_len, cookie_offset = fields[2], fields[5]
    data = header[HEADER_SIZE:HEADER_SIZE + data_len]
    cookie = data[cookie_offset:].split(b"\0", 1)[0] if cookie_offset else b""
    xml = new_xml.encode() + b"\0"
    payload = xml + (cookie + b"\0" if cookie else b"")
    if len(payload) > data_len:
        raise VMError(f"{what}: the new domain XML does not fit in the save header")
    fields[5] = len(xml) if cookie else 0
    return _SAVE_HEADER.pack(*fields) + payload.ljust(data_len, b"\0")


def copy_save_with_xml(src: Path, dst: Path, new_xml: str) -> None:
    """Copy a libvirt save image, replacing its domain XML (name, UUID, disk, ports).

    libvirt's restore only accepts XML with the saved name and UUID, so a second copy
    of one saved guest could never run next to the first; the XML in the header is what
    libvirt starts QEMU with, and the migration stream after it does not depend on it.
    """
    with open(src, "rb") as handle:
        head = handle.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE or head[:16] != _SAVE_MAGIC:
            raise VMError(f"{src}: unknown save image format")
        header = head + handle.read(header_length(head, str(src)) - len(head))
    patched = header_with_xml(header, new_xml, str(src))
    reflink_copy(src, dst, what=f"copying the saved state {src.name}", error=VMError)
    with open(dst, "r+b") as handle:
        handle.write(patched)
