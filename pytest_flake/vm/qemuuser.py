"""QEMU's unprivileged user on the system daemon, and the files it must read, write or reach:
overlays and seeds handed to it (0600), base images checked readable, folders opened by ACL."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingToolError, VMError
from .common import log, run


@dataclass(frozen=True)
class QemuUser:
    """Who QEMU runs as on the system daemon: libvirt's own unprivileged user (its DAC base label)."""

    uid: int
    gid: int

    @property
    def name(self) -> str:
        import pwd

        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @property
    def label(self) -> str:
        return f"+{self.uid}:+{self.gid}"

    @classmethod
    def of(cls, capabilities: str) -> QemuUser:
        """libvirt's DAC base label for QEMU guests (``<baselabel type='qemu'>+988:+993</baselabel>``)."""
        found = re.search(r"<baselabel type=['\"](?:qemu|kvm)['\"]>\+?(\d+):\+?(\d+)</baselabel>", capabilities)
        if found:
            return cls(int(found.group(1)), int(found.group(2)))
        import pwd

        for name in ("libvirt-qemu", "qemu"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise VMError("libvirt names no unprivileged user for QEMU (no DAC base label, no libvirt-qemu user)",
                      hint="run scripts/setup.d/30-libvirt.sh, or set user/group in /etc/libvirt/qemu.conf")

    def can_search(self, directory: Path) -> bool:
        """Whether this user may pass through ``directory`` (mode bits and POSIX ACLs)."""
        stat = directory.stat()
        if stat.st_uid == self.uid:
            return bool(stat.st_mode & 0o100)
        named = acl_user_perm(directory, self.uid)
        if named is not None:
            return bool(named & 0o1)
        if stat.st_gid == self.gid:
            return bool(stat.st_mode & 0o010)
        return bool(stat.st_mode & 0o001)


_ACL_USER, _ACL_MASK = 0x02, 0x10  # tags of a system.posix_acl_access entry


def acl_user_perm(path: Path, uid: int) -> int | None:
    """The effective permission bits (rwx = 4|2|1) of ``uid``'s named ACL entry on ``path``, None without one.

    Read from the ``system.posix_acl_access`` attribute (version 2: 4-byte header, 8-byte entries
    ``tag:u16 perm:u16 id:u32``); the mask limits a named entry: a chmod of the folder since (pytest
    does one on its temporary folders) can leave the entry without effect.
    """
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None
    perm = None
    mask = 0o7
    for offset in range(4, len(raw) - 7, 8):
        tag, bits, ident = struct.unpack_from("<HHI", raw, offset)
        if tag == _ACL_USER and ident == uid:
            perm = bits
        elif tag == _ACL_MASK:
            mask = bits
    return None if perm is None else perm & mask


def grant_search(user: QemuUser, path: Path) -> list[Path]:
    """Let ``user`` pass through every folder above ``path`` (search only, through an ACL entry; no listing).

    The folders keep their modes: root's 0700 home stays closed to everybody else. Returns the
    folders that got an entry. Called right before each start or restore of a domain: a chmod
    since (pytest narrows its temporary folders at each session start) takes the entry's effect.
    """
    granted = []
    for folder in reversed(path.resolve().parents):
        if user.can_search(folder):
            continue
        if shutil.which("setfacl") is None:
            raise MissingToolError(f"QEMU (as {user.name}) cannot reach {path}: {folder} is closed to it, and "
                                   "setfacl is not installed", hint="apt-get install acl (scripts/setup does), or "
                                   "point PYTEST_FLAKE_STATE to a folder QEMU's user can reach")
        run(["setfacl", "-m", f"u:{user.uid}:x", str(folder)], what=f"let QEMU's user {user.name} reach {path}")
        log.info("vm: %s may now pass through %s (ACL u:%s:x)", user.name, folder, user.name)
        granted.append(folder)
    return granted


def hand_to_qemu(user: QemuUser, *files: Path) -> None:
    """Files QEMU writes (overlay, console) or that hold a secret (seed): its user's alone, mode 0600."""
    for path in files:
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o600)


def check_readable(user: QemuUser, *files: Path | None) -> None:
    """Base images, kernels, initrds stay root's and read-only; QEMU's user only needs to read them."""
    for path in files:
        if path is None:
            continue
        stat = path.stat()
        readable = (stat.st_uid == user.uid and stat.st_mode & 0o400) or (
            stat.st_gid == user.gid and stat.st_mode & 0o040) or stat.st_mode & 0o004
        if not readable:
            raise VMError(f"QEMU's user {user.name} cannot read {path} (mode {stat.st_mode & 0o777:o})",
                          hint=f"chmod a+r {shlex.quote(str(path))}")

