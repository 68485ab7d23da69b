"""Sweep what killed sessions left of their containers, and the doctor's checks for containers.

A session killed with SIGKILL leaves its containers running (systemd-nspawn runs in its
own process group), their overlays mounted under ``<state>/sessions/<id>/nspawn/`` and,
perhaps, the host's loop devices changed. :func:`sweep` stops every container whose name
carries a dead session's id, unmounts and removes the copies and puts the loop devices back
from the session's ``loops.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._host import run_command
from ..errors import counted
from ..images import MARKER, debian_tree_dir, image_cache, parse_debian_name
from ..session import PREFIX
from . import cgroups, loops
from .machine import SUBDIR
from .trees import drop_copy

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install systemd-container (scripts/setup does it)"


def unavailable() -> str | None:
    """Why systemd containers cannot run here (one line naming the fix), or None."""
    if os.geteuid() != 0:
        return "systemd containers need root (systemd-nspawn, overlay mounts, loop devices)"
    if shutil.which("systemd-nspawn") is None:
        return f"systemd-nspawn is not installed: {INSTALL_HINT}"
    if shutil.which("nsenter") is None:
        return "nsenter is not installed: apt-get install util-linux"
    return None


def _nspawn_processes(prefixes: list[str]) -> list[int]:
    """Pids of systemd-nspawn processes whose ``--machine=`` starts with one of ``prefixes``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"systemd-nspawn"):
            continue
        for arg in args:
            if arg.startswith(b"--machine=") and any(arg[10:].decode(errors="replace").startswith(p)
                                                     for p in prefixes):
                found.append(int(entry.name))
    return found


def _kill(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)  # the container's systemd halts
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            for child in _child_pids(pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def sweep(dead_ids: Sequence[str], state_root: Path) -> list[str]:
    """Stop the containers of dead sessions, remove their copies, put the host's loop devices back."""
    ids = [sid for sid in dead_ids if sid.startswith(PREFIX)]
    if not ids:
        return []
    copies = 0
    loops_before = loops.present()
    pids = _nspawn_processes([f"{sid}-" for sid in ids])
    if pids:
        log.info("nspawn sweep: stopping %d container(s) of dead sessions", len(pids))
        _kill(pids)
    cgroups.sweep_groups([f"{sid}-" for sid in ids])
    base = state_root / "sessions"
    for sid in ids:
        folder = base / sid / SUBDIR
        if not folder.is_dir():
            continue
        for workdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                drop_copy(workdir)
                copies += 1
            except Exception as exc:
                log.warning("nspawn sweep: %s", exc)
        problems = loops.LoopBook(folder / "loops.json").restore()
        if not problems:
            shutil.rmtree(folder, ignore_errors=True)
    loops_after = loops.present()
    done = [f"{counted(len(pids), 'container')} stopped"] if pids else []
    if copies:
        done.append(f"{counted(copies, 'overlay root')} unmounted and removed")
    if loops_after - loops_before:
        done.append(f"{counted(len(loops_after - loops_before), 'loop device')} put back")
    if loops_before - loops_after:
        done.append(f"{counted(len(loops_before - loops_after), 'loop device')} left by them removed")
    return done


def doctor(settings: Settings) -> list[tuple[bool, str]]:
    """Pre-flight checks of systemd containers: each ``(ok, line)`` says what is fine or what to do."""
    reason = unavailable()
    if reason is not None:
        return [(False, f"nspawn: {reason}")]
    lines: list[tuple[bool, str]] = []
    proc = run_command(["systemd-nspawn", "--version"], what="systemd-nspawn --version", hint=INSTALL_HINT)
    lines.append((True, f"nspawn: {proc.stdout.splitlines()[0] if proc.stdout else 'systemd-nspawn'}"))
    loop_reason = loops.unavailable()
    lines.append((loop_reason is None, "nspawn: loop devices for portable .raw images: "
                  + ("ok" if loop_reason is None else f"{loop_reason}; only directory images will attach")))
    if not Path("/proc/filesystems").read_text().count("overlay"):
        lines.append((True, "nspawn: no overlayfs (modprobe overlay): containers use a reflink or full copy"))
    lines.append(cgroups.doctor_line())
    image = settings.container_image
    debian = parse_debian_name(image)
    if debian is not None:
        folder = debian_tree_dir(image_cache(), debian.release)
        state = "cached" if (folder / MARKER).is_file() else f"made on first use from the {image} VM image"
        lines.append((True, f"nspawn: container image {image} ({debian.about}): {state} ({folder})"))
        if (folder / MARKER).is_file():
            plan = cgroups.plan(folder / "root")
            lines.append((plan.problem is None, f"nspawn: {image}: {plan.problem or plan.why}"
                          + (f"; {cgroups.FIX}" if plan.problem else "")))
    else:
        lines.append((True, f"nspawn: container image {image} (--container-image)"))
    return lines


class NspawnComponent:
    """Systemd containers as a registry component (:mod:`pytest_flake.components`)."""

    name = "nspawn"

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        return sweep(dead_ids, state_root)

    def doctor(self, settings: Settings) -> list[tuple[bool, str]]:
        return doctor(settings)


def component(settings: Settings | None = None) -> NspawnComponent:
    """The ``nspawn`` component; needs no settings to sweep (containers are found by name)."""
    return NspawnComponent()
