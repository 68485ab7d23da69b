"""The image cache: where it is, the :class:`Image` record, where the recipes are, and what every builder shares.

The cache is ``<state>/images``; its folders' names are part of the contract with sessions already
run (a built image is found again, never rebuilt): ``arch/``, ``url/<key>/``, ``debian-<hash>/``
(``debian-sid-cloud-<hash>/``...), ``nspawn-debian-<hash>-N/`` and ``nspawn-tar-<key>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._host import run_tool
from ..errors import FlakeError, VMError
from ..session import state_dir

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
STALE_IMAGE_SECONDS = 24 * 3600  # an older recipe's image stays this long: running sessions may still use it


def _recipes() -> Path:
    """``vms/``: next to the package in a checkout, inside it when installed from a wheel."""
    explicit = os.environ.get("PYTEST_FLAKE_VMS")
    if explicit:
        return Path(explicit)
    package = Path(__file__).resolve().parent.parent  # pytest_flake/
    installed = package / "vms"
    return installed if (installed / "domain.xml").is_file() else package.parent / "vms"


RECIPES = _recipes()


@dataclass(frozen=True)
class Image:
    """A bootable base image: its disk, how to boot it, and what identifies this build of it."""

    name: str
    disk: Path
    disk_format: str = "qcow2"
    key: str = ""  # changes whenever the image changes: warm states are keyed on it
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    hostkeys: tuple[str, ...] = ()  # "ssh-ed25519 AAAA..." lines known ahead of boot
    cloud_init: bool = False
    skip_units: tuple[str, ...] = ()
    release: str = ""  # of a built-in Debian image: bookworm, trixie, sid
    min_memory: int = 0  # MiB the image needs to boot (its recipe says; 0: unknown)


def image_cache(root: Path | None = None) -> Path:
    """Where base images are cached: ``<state>/images``."""
    return (root or state_dir()) / "images"


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Log a timed step: ``what ...`` then ``what: done in 1.23s``."""
    started = time.monotonic()
    log.info("%s ...", what)
    try:
        yield
    except BaseException:
        log.info("%s: failed after %.2fs", what, time.monotonic() - started)
        raise
    log.info("%s: done in %.2fs", what, time.monotonic() - started)


def run(argv: list[str], *, what: str, timeout: float | None = None, error: type[FlakeError] = VMError) -> str:
    """Run a host command (:func:`pytest_flake._host.run_tool`); a failure is ``error`` (a :class:`VMError`)."""
    return run_tool(argv, what=what, timeout=timeout, error=error)


def need_space(directory: Path, needed: int, what: str) -> None:
    """Raise :class:`VMError` unless ``directory`` has ``needed`` bytes free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise VMError(
            f"no space for {what}: {free / GiB:.1f} GiB free in {directory}, {needed / GiB:.1f} GiB needed",
            hint="free some space or point PYTEST_FLAKE_STATE to a bigger disk",
        )


def is_root() -> bool:
    return os.geteuid() == 0


def hash_files(*paths: Path) -> str:
    """A short hash of files' names and contents (a recipe or template changed: a new one)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def mounted_below(folder: Path, mounts: Path = Path("/proc/self/mounts")) -> bool:
    """Whether something is mounted on or below ``folder``, or an overlay (a container's copy) stands on it."""
    top = str(folder)
    with contextlib.suppress(OSError):
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 3 and (fields[1] == top or fields[1].startswith(top + "/") or top + "/" in fields[3]):
                return True
    return False


def remove_folder(folder: Path, what: str, error: type[FlakeError] = VMError) -> None:
    """Remove a cache folder without crossing into another file system (a bind mount of ``/dev`` stays whole)."""
    run(["rm", "-rf", "--one-file-system", str(folder)], what=what, timeout=600, error=error)
