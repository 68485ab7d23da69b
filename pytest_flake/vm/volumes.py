"""Volumes in the ``pytest-flake`` storage pool of another host: the pool's and a volume's XML, content
ids that name base images, and the sweep of the volumes of dead sessions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._host import locked, write_atomic
from .common import MiB, log
from .connection import libvirt_module

POOL = "pytest-flake"
POOL_DIR = "/var/lib/libvirt/images/pytest-flake"
BASE_PREFIX = "pf-base-"


def _text(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element


def pool_xml(name: str = POOL, path: str = POOL_DIR) -> str:
    """A dir storage pool at ``path`` (searchable by QEMU's user: 0711)."""
    root = ET.Element("pool", {"type": "dir"})
    _text(root, "name", name)
    target = _text(root, "target")
    _text(target, "path", path)
    permissions = _text(target, "permissions")
    _text(permissions, "mode", "0711")
    return ET.tostring(root, encoding="unicode")


def volume_xml(name: str, capacity: int, fmt: str = "raw", *, backing: tuple[str, str] | None = None) -> str:
    """A volume of ``capacity`` bytes; ``backing`` = ``(path, format)`` makes it a copy-on-write overlay."""
    root = ET.Element("volume")
    _text(root, "name", name)
    _text(root, "capacity", str(int(capacity)), unit="bytes")
    if fmt == "raw" and backing is None:
        _text(root, "allocation", "0", unit="bytes")
    target = _text(root, "target")
    _text(target, "format", type=fmt)
    permissions = _text(target, "permissions")
    _text(permissions, "mode", "0600")
    if backing is not None:
        store = _text(root, "backingStore")
        _text(store, "path", backing[0])
        _text(store, "format", type=backing[1])
    return ET.tostring(root, encoding="unicode")


def content_id(path: Path, cache: Path) -> str:
    """The SHA-256 (24 hex digits) of a file's bytes, remembered per size, mtime and inode in ``cache``."""
    stat = path.stat()
    stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    record = cache / "remote" / "content-ids.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    with locked(record.with_suffix(".lock")):
        try:
            known: dict[str, str] = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
        if stamp in known:
            return known[stamp]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(4 * MiB), b""):
                digest.update(chunk)
        known[stamp] = digest.hexdigest()[:24]
        known = {k: v for k, v in known.items() if Path(k.rsplit(":", 3)[0]).exists()}
        write_atomic(record, json.dumps(known, indent=1, sort_keys=True))
        return known[stamp]


def sweep_volumes(conn: Any, uri: str, dead_ids: Iterable[str], keep: set[str]) -> list[str]:
    """Delete the volumes of dead sessions (``<id>-...``) in the pytest-flake pool, except ``keep``."""
    libvirt = libvirt_module()
    ids = tuple(f"{sid}-" for sid in dead_ids)
    removed: list[str] = []
    if not ids:
        return removed
    try:
        pool = conn.storagePoolLookupByName(POOL)
        if not pool.isActive():
            return removed
        pool.refresh(0)
        names = [str(n) for n in pool.listVolumes()]
    except libvirt.libvirtError:
        return removed  # no pool: nothing of ours
    for name in names:
        if name.startswith(ids) and name not in keep:
            log.info("vm sweep: removing the volume %s of a dead session at %s", name, uri)
            with contextlib.suppress(libvirt.libvirtError):
                pool.storageVolLookupByName(name).delete(0)
                removed.append(name)
    return removed
