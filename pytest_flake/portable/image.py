"""Portable service images on this machine: every shape a flake's portable output has.

:class:`PortableImage` inspects an image (squashfs, raw/GPT disk or directory; its
os-release; the unit files that match its prefix) so a bad image is rejected with a
precise message before anything reaches the guest. :func:`squash_directory` packs a
directory image as a ``.raw`` squashfs.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._host import SNIFF_BYTES, describe_file, run_tool, sniff
from ..errors import PortableError, format_choices
from .units import OS_RELEASE, UNIT_DIRS, UNIT_SUFFIXES, matches_prefix, parse_os_release

log = logging.getLogger(__name__)

STORE_HASH = re.compile(r"^[0-9a-df-np-sv-z]{32}-")  # a Nix store path's "<hash>-" (nix base32)
IMAGE_HINT = "pass a portableService output, a NAME_VERSION.raw file or an image directory (with os-release)"


SQUASHFS_HINT = "apt-get install squashfs-tools (scripts/setup does it)"


def image_name(path: Path) -> str:
    """The name portablectl gives an image: the file name without a store hash and ``.raw``.

    ``/nix/store/<hash>-web-server_1.0.raw``, ``out/web-server_1.0.raw`` and a directory
    ``/nix/store/<hash>-web-server_1.0`` are all ``web-server_1.0``.
    """
    name = STORE_HASH.sub("", path.name)
    return name[:-4] if name.endswith(".raw") else name


def _not_an_image(path: Path, what: str) -> PortableError:
    """"PATH is not a portable service image: it is WHAT (what to pass instead)"."""
    if "docker-archive" in what:
        hint = f"load it with docker_image/docker_container instead; {IMAGE_HINT}"
    elif what.startswith("a script"):
        hint = f"a streamLayeredImage script goes to docker_image/docker_container; {IMAGE_HINT}"
    elif what.startswith("a systemd unit file"):
        hint = f"put the unit in an image (portableService {{ units = [ ... ]; }}); {IMAGE_HINT}"
    else:
        hint = IMAGE_HINT
    return PortableError(f"{path} is not a portable service image: it is {what}", hint=hint)


@dataclass(frozen=True)
class PortableImage:
    """A portable service image on this machine: squashfs, raw/GPT disk, or directory."""

    path: Path
    kind: str  # squashfs | gpt | directory
    os_release: dict[str, str]
    files: tuple[str, ...]  # unit files of the image, relative (e.g. usr/lib/systemd/system/x.service)

    @property
    def name(self) -> str:
        """``web-server_1.0``: the file name without store hash and ``.raw`` (portablectl's name)."""
        return image_name(self.path)

    @property
    def prefix(self) -> str:
        """``web-server``: unit files must start with this (the name up to ``_``)."""
        return self.name.split("_", 1)[0]

    @property
    def version(self) -> str | None:
        return self.name.split("_", 1)[1] if "_" in self.name else None

    @property
    def units(self) -> list[str]:
        """Names of the unit files that match the prefix: the ones portablectl attaches."""
        names = sorted({PurePosixPath(f).name for f in self.files})
        return [n for n in names if matches_prefix(n, self.prefix)]

    @property
    def all_units(self) -> list[str]:
        return sorted({PurePosixPath(f).name for f in self.files})

    @classmethod
    def open(cls, path: Path | str) -> PortableImage:
        """Inspect ``path``: every shape a flake's portable output has.

        The ``.raw`` file itself (``<hash>-NAME_VERSION.raw``, nixpkgs' portableService of
        2022), a directory holding one ``NAME_VERSION.raw`` (portableService today), a
        directory image (os-release in ``usr/lib`` or ``etc``), or any path to one of those.
        """
        path = Path(path)
        if not path.exists():
            raise PortableError(f"portable image {path} does not exist", hint=IMAGE_HINT)
        if path.is_dir() and not any((path / f).exists() for f in OS_RELEASE):
            raws = sorted(path.glob("*.raw"))
            if len(raws) == 1:
                path = raws[0]
            elif len(raws) > 1:
                raise PortableError(f"{path} holds {len(raws)} portable images "
                                    f"({', '.join(r.name for r in raws)}), not one",
                                    hint="pass the path of one of them")
            else:
                entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
                listing = format_choices(entries[:10]) + (", ..." if len(entries) > 10 else "")
                raise _not_an_image(path, f"a directory without usr/lib/os-release or etc/os-release and without "
                                          f"a .raw file (it has: {listing or 'nothing'})")
        if path.is_dir():
            image = cls._open_directory(path)
        else:
            try:
                with path.open("rb") as handle:
                    head = handle.read(SNIFF_BYTES)
            except OSError as exc:
                raise _not_an_image(path, f"unreadable ({exc.strerror or exc})") from None
            kind = sniff(head)
            if kind == "squashfs":
                image = cls._open_squashfs(path)
            elif kind == "gpt":
                image = cls(path=path, kind="gpt", os_release={}, files=())  # checked in the guest
            else:
                raise _not_an_image(path, describe_file(path, head))
        image.validate()
        return image

    @classmethod
    def _open_directory(cls, path: Path) -> PortableImage:
        release = next((path / f for f in OS_RELEASE if (path / f).is_file()), None)
        files = tuple(str(p.relative_to(path)) for d in UNIT_DIRS if (path / d).is_dir()
                      for p in sorted((path / d).iterdir()) if p.name.endswith(UNIT_SUFFIXES))
        return cls(path=path, kind="directory", os_release=parse_os_release(release.read_text()) if release else {},
                   files=files)

    @classmethod
    def _open_squashfs(cls, path: Path) -> PortableImage:
        listing = run_tool(["unsquashfs", "-lc", "-d", "", str(path)], what=f"{path}: unsquashfs cannot read it",
                           timeout=120, error=PortableError, hint=SQUASHFS_HINT)
        entries = [line.strip().lstrip("/") for line in listing.splitlines() if line.strip()]
        files = tuple(e for e in entries if str(PurePosixPath(e).parent) in UNIT_DIRS and e.endswith(UNIT_SUFFIXES))
        release: dict[str, str] = {}
        for candidate in OS_RELEASE:
            if candidate in entries:
                with tempfile.TemporaryDirectory(prefix="pf-os-release-") as tmp:
                    # os-release is often a symlink (etc -> ../usr/lib): unsquashfs follows within the image
                    try:
                        run_tool(["unsquashfs", "-q", "-n", "-f", "-d", tmp, str(path), candidate],
                                 what=f"{path}: unsquashfs cannot extract {candidate}", timeout=120,
                                 error=PortableError, hint=SQUASHFS_HINT)
                    except PortableError:
                        continue
                    target = Path(tmp) / candidate
                    if target.is_file():
                        release = parse_os_release(target.read_text(errors="replace"))
                        break
        return cls(path=path, kind="squashfs", os_release=release, files=files)

    def validate(self) -> None:
        """What portablectl would refuse: no os-release, no unit matching the prefix."""
        if self.kind == "gpt":
            return
        if not self.os_release:
            raise PortableError(f"{self.path} has no os-release (usr/lib/os-release or etc/os-release)",
                                hint="portablectl refuses images without one; portableService adds it")
        if not self.units:
            raise PortableError(
                f"{self.path}: no unit file starts with the image's prefix '{self.prefix}' "
                f"(units in the image: {format_choices(self.all_units)})",
                hint=f"name the unit {self.prefix}.service, or name the image after the unit")


def squash_directory(tree: Path, raw: Path) -> Path:
    """A squashfs image ``raw`` of the directory image ``tree`` (owned by root, as portableService makes it)."""
    started = time.monotonic()
    run_tool(["mksquashfs", str(tree), str(raw), "-all-root", "-noappend", "-quiet", "-no-progress"],
             what=f"packing the directory image {tree} as a .raw file for the guest", timeout=600,
             error=PortableError, hint=SQUASHFS_HINT)
    log.debug("portable: packed %s as %s in %.2fs", tree, raw.name, time.monotonic() - started)
    return raw
