"""What every part of the VM package shares: where ``vms/`` is, sizes, timed steps, host commands."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .._host import run_tool
from ..errors import VMError

log = logging.getLogger("pytest_flake.vm")  # the vm package's one logger: its modules log through it


def _recipes() -> Path:
    """``vms/``: next to the package in a checkout, inside it when installed from a wheel."""
    explicit = os.environ.get("PYTEST_FLAKE_VMS")
    if explicit:
        return Path(explicit)
    package = Path(__file__).resolve().parent.parent  # pytest_flake/
    installed = package / "vms"
    return installed if (installed / "domain.xml").is_file() else package.parent / "vms"


RECIPES = _recipes()
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "pfnet"
MiB = 1024 * 1024
GiB = 1024 * MiB


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


def run(argv: list[str], *, what: str, timeout: float | None = None) -> str:
    """Run a host command (:func:`pytest_flake._host.run_tool`); a failure is a :class:`VMError`."""
    return run_tool(argv, what=what, timeout=timeout, error=VMError)


def need_space(directory: Path, needed: int, what: str) -> None:
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
