"""What a VM boots: ``--vm-image`` (``arch``, a Debian name, a disk path or an http(s) URL) as an :class:`Image`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .._host import locked
from ..errors import UsageError
from .arch import fetch_arch
from .cache import Image, step
from .debian import build_debian, debian_names, parse_debian_name
from .disks import disk_format_of
from .download import ProgressCallback, download


def resolve_image(spec: str, cache: Path, *, progress: ProgressCallback | None = None) -> Image:
    """``arch``, a Debian name (``debian``, ``debian-sid-cloud``...), a disk path or http(s) URL -> :class:`Image`.

    Downloads (Arch, a URL) show their ``progress`` (:func:`.download.download`).
    """
    debian = parse_debian_name(spec)
    if debian is not None:
        return build_debian(cache, variant=debian.variant, release=debian.release)
    if spec == "arch":
        return fetch_arch(cache, progress=progress)
    if re.match(r"^https?://", spec):
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        disk = cache / "url" / key / (Path(spec.split("?")[0]).name or "disk.img")
        with locked(cache / ".url.lock"):
            if not disk.is_file():
                with step(f"downloading {spec}"):
                    download(spec, disk, progress=progress)
        return Image(name=disk.name, disk=disk, disk_format=disk_format_of(disk), key=f"url-{key}", cloud_init=True)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--vm-image {spec!r} is neither arch, {', '.join(debian_names())}, an existing file "
                         "nor an http(s) URL")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Image(name=path.name, disk=path.resolve(), disk_format=disk_format_of(path), key=f"file-{key}",
                 cloud_init=True)
