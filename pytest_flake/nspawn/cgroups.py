"""Which cgroup hierarchy a container's systemd needs, and whether this host can give it that.

systemd 256 and later refuse a legacy (v1) or hybrid cgroup hierarchy ("Detected unsupported
legacy cgroup hierarchy, refusing execution"; 258 and later have no v1 support at all). On a
host that mounts cgroups v1 with a cgroup2 hierarchy beside them at ``/sys/fs/cgroup/unified``
(the hybrid layout), systemd-nspawn hands a container the whole unified hierarchy when its
environment says ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``; on a host with cgroup2 at
``/sys/fs/cgroup`` it does so by itself. The host's mounts are never changed here: a host with no
cgroup2 at all gets an error naming the fix (and ``--flake-doctor`` says the same ahead).

The tree's systemd version is read from the tree itself: the name of ``libsystemd-shared-N.so``
(what systemd-nspawn looks at too), else the ``systemd`` package in dpkg's status file.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import NspawnError

UNIFIED_FROM = 256  # the first systemd that refuses a legacy or hybrid hierarchy
ENV = "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"
MOUNTS = Path("/proc/self/mounts")
_SHARED = re.compile(r"libsystemd-shared-(\d+)(?:[.~-][^/]*)?\.so$")
_SHARED_DIRS = ("usr/lib/systemd", "usr/lib/*/systemd", "lib/systemd", "lib/*/systemd", "usr/lib64/systemd")
FIX = ("mount a cgroup2 hierarchy beside the v1 ones (mkdir -p /sys/fs/cgroup/unified && "
       "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified), or boot the host with systemd.unified_cgroup_hierarchy=1")


def systemd_version(root: Path) -> int | None:
    """The major version of the systemd installed in the OS tree ``root``, None when it cannot be told."""
    for pattern in _SHARED_DIRS:
        for folder in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError):
                for entry in folder.iterdir():
                    match = _SHARED.match(entry.name)
                    if match:
                        return int(match.group(1))
    with contextlib.suppress(OSError):
        status = (root / "var/lib/dpkg/status").read_text(errors="replace")
        for stanza in status.split("\n\n"):
            if re.search(r"^Package: systemd$", stanza, re.MULTILINE):
                version = re.search(r"^Version: (?:\d+:)?(\d+)", stanza, re.MULTILINE)
                if version:
                    return int(version.group(1))
    return None


def host_layout(mounts: Path = MOUNTS) -> str:
    """``unified`` (cgroup2 at /sys/fs/cgroup), ``hybrid`` (v1 plus cgroup2 at /sys/fs/cgroup/unified),
    ``legacy`` (v1 only) or ``none``: what systemd-nspawn finds on this host."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1].startswith("/sys/fs/cgroup"):
                found[fields[1]] = fields[2]
    if found.get("/sys/fs/cgroup") == "cgroup2":
        return "unified"
    if found.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid"
    if "cgroup" in found.values():
        return "legacy"
    return "none"


@dataclass(frozen=True)
class Plan:
    """What a container of a tree gets: ``env`` for systemd-nspawn, and why (for the log and the doctor)."""

    version: int | None
    layout: str
    env: dict[str, str]
    why: str
    problem: str | None = None  # set when this host cannot boot the tree


def plan(root: Path, layout: str | None = None) -> Plan:
    """Decide the hierarchy of a container of the tree ``root`` on this host (nothing is changed here)."""
    version = systemd_version(root)
    layout = layout or host_layout()
    needs = version is not None and version >= UNIFIED_FROM
    named = f"systemd {version}" if version is not None else "its systemd (version unknown)"
    if not needs:
        return Plan(version, layout, {}, f"{named}: the hierarchy systemd-nspawn picks for it ({layout} host)")
    if layout == "unified":
        return Plan(version, layout, {}, f"{named} needs the unified cgroup hierarchy: this host's own")
    if layout == "hybrid":
        return Plan(version, layout, {ENV: "1"},
                    f"{named} needs the unified cgroup hierarchy: {ENV}=1 (this host's cgroup2 at "
                    "/sys/fs/cgroup/unified)")
    return Plan(version, layout, {}, f"{named} needs the unified cgroup hierarchy",
                problem=f"{named} needs the unified cgroup hierarchy (cgroup2), and this host mounts none "
                        f"({layout} cgroups)")


def require(plan_: Plan, what: str) -> dict[str, str]:
    """The environment additions of ``plan_``, or :class:`NspawnError` naming the host's fix."""
    if plan_.problem is not None:
        raise NspawnError(f"{what}: {plan_.problem}", hint=FIX + "; or use --container-image debian (systemd 252)")
    return plan_.env


def doctor_line(layout: str | None = None) -> tuple[bool, str]:
    """The doctor's line about cgroups: trees with systemd 256+ boot here, or what the host would need."""
    layout = layout or host_layout()
    if layout == "unified":
        return True, "nspawn: cgroup2 at /sys/fs/cgroup: containers of any systemd get the unified hierarchy"
    if layout == "hybrid":
        return True, (f"nspawn: cgroups v1 with cgroup2 at /sys/fs/cgroup/unified: trees with systemd >= "
                      f"{UNIFIED_FROM} (debian-trixie, debian-sid) boot with {ENV}=1; host mounts stay as found")
    return True, (f"nspawn: {layout} cgroups, no cgroup2 mounted: trees with systemd >= {UNIFIED_FROM} "
                  "(debian-trixie, debian-sid) cannot boot here, since they refuse a v1 hierarchy; to allow them, "
                  f"{FIX} (pytest-flake changes no host mounts)")


# --------------------------------------------------------------------------- a cgroup of its own

UNIFIED_ROOT = Path("/sys/fs/cgroup/unified")
PARENT = "pytest-flake"  # each container's own group: <unified>/pytest-flake/<container name>


def own_group(name: str, layout: str | None = None, root: Path = UNIFIED_ROOT) -> Path | None:
    """A cgroup of the host's unified hierarchy for one container (hybrid hosts), else None.

    systemd-nspawn with ``--keep-unit`` puts the container below its own cgroup (``payload``,
    ``supervisor``); where nothing gives it one (PID 1 is not systemd), that is the hierarchy's
    root, shared by every container, so each container's nspawn is first moved into a group of
    its own, which :func:`remove_group` takes away after.
    """
    if (layout or host_layout()) != "hybrid":
        return None
    group = root / PARENT / name
    for _attempt in (1, 2):  # another session may remove the empty parent meanwhile
        with contextlib.suppress(FileNotFoundError):
            group.mkdir(parents=True, exist_ok=True)
            return group
    raise NspawnError(f"cannot make the cgroup {group}")


def wrap(argv: list[str], group: Path | None) -> list[str]:
    """``argv`` started inside ``group``: a shell moves itself in, then becomes ``argv`` (same pid)."""
    if group is None:
        return argv
    return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group), *argv]


def remove_group(group: Path | None) -> bool:
    """Remove a container's cgroup and what its systemd made below it (deepest first); True when gone."""
    if group is None:
        return True
    if group.is_dir():
        below = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for folder in [*below, group]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # a cgroup with processes in it stays (EBUSY)
    with contextlib.suppress(OSError):
        group.parent.rmdir()  # the parent, once no session has a container
    return not group.exists()


def sweep_groups(prefixes: list[str], root: Path = UNIFIED_ROOT) -> None:
    """Remove the cgroups of containers whose names start with one of ``prefixes`` (dead sessions)."""
    parent = root / PARENT
    with contextlib.suppress(OSError):
        for group in list(parent.iterdir()):
            if group.is_dir() and any(group.name.startswith(prefix) for prefix in prefixes):
                remove_group(group)
