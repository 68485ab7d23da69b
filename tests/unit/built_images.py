"""A built Debian image as the image store leaves it in its cache, without building one."""

from __future__ import annotations

from pathlib import Path

from pytest_flake import images


def built_debian_image(cache: Path, *, cmdline: str = "root=/dev/vda console=ttyS0", hostkeys: str = "") -> Path:
    """The cache folder of the current recipe's ``debian`` image, with the files a build leaves (contents faked)."""
    folder = images.debian_image_dir(cache)
    folder.mkdir(parents=True)
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"x")
    (folder / "cmdline").write_text(cmdline + "\n")
    (folder / "hostkeys.pub").write_text(hostkeys)
    return folder
