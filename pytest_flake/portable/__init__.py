"""systemd portable services: images inspected on this machine, attached in a guest.

* :mod:`.units`: unit files (:func:`parse_unit`, :func:`parse_environment`) and os-release.
* :mod:`.image`: every shape of a portable image (:class:`PortableImage`).
* :mod:`.service`: ``portablectl`` driven in a guest (:class:`PortableService`).
"""

from __future__ import annotations

from .._host import describe_file
from .image import IMAGE_HINT, SQUASHFS_HINT, STORE_HASH, PortableImage, image_name, squash_directory
from .service import PORTABLECTL_HINT, REMOTE_DIR, Guest, PortableService
from .units import (
    OS_RELEASE,
    UNIT_DIRS,
    UNIT_SUFFIXES,
    UnitFile,
    matches_prefix,
    parse_environment,
    parse_os_release,
    parse_unit,
)

__all__ = [
    "IMAGE_HINT", "OS_RELEASE", "PORTABLECTL_HINT", "REMOTE_DIR", "SQUASHFS_HINT", "STORE_HASH", "UNIT_DIRS",
    "UNIT_SUFFIXES", "Guest", "PortableImage", "PortableService", "UnitFile", "describe_file", "image_name",
    "matches_prefix", "parse_environment", "parse_os_release", "parse_unit", "squash_directory",
]
