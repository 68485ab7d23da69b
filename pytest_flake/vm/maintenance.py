"""VMs as a registry component (:mod:`pytest_flake.components`): the sweep (what killed sessions left
behind: domains, overlays, half-written warm states) and the doctor (pre-flight checks)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FlakeError, counted
from ..images import debian_image_dir, image_cache, parse_debian_name
from ..session import PREFIX
from .accel import KVM_TRIAL_SECONDS, cached_probe, probe_kernel, probe_kvm, record_probe
from .common import GiB, MiB, log
from .connection import connect, default_uri, destroy_domain, is_remote, libvirt_module
from .pool import launcher_type
from .warm import WARM_ENV, WarmStore, warm_enabled

if TYPE_CHECKING:
    from ..config import Settings


def sweep(dead_ids: Sequence[str], state_root: Path, *, uri: str) -> list[str]:
    """Remove the domains (on libvirt at ``uri``), overlays and half-written warm states of dead sessions.

    Only ids of pytest-flake sessions count, and a domain is a session's when its name is the id
    and a dash. Complete warm states in the image cache are not a session's: they stay.
    """
    ids = [sid for sid in dead_ids if sid.startswith(PREFIX)]
    if not ids:
        return []
    base = state_root / "vms"
    done: list[str] = []
    domains = volumes = folders = 0
    WarmStore(image_cache(state_root) / "warm").sweep(ids)
    try:
        conn = connect(uri)
    except FlakeError as exc:
        log.warning("vm sweep: %s", exc)
        conn = None
    if conn is not None:
        try:
            for dom in conn.listAllDomains(0):
                name = dom.name()
                if any(name.startswith(f"{sid}-") for sid in ids):
                    log.info("vm sweep: removing domain %s of a dead session", name)
                    destroy_domain(dom, ignore_errors=True)
                    domains += 1
            # another host: the overlays, seeds, save copies there (not those warm states keep)
            volumes = launcher_type(uri).sweep_host(conn, uri, ids, image_cache(state_root) / "warm")
        finally:
            conn.close()
    for sid in ids:
        folder = base / sid
        if folder.exists():
            log.info("vm sweep: removing %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            folders += 1
    with contextlib.suppress(OSError):
        base.rmdir()
    for n, what in ((domains, "domain"), (volumes, "volume"), (folders, "VM folder")):
        if n:
            done.append(f"{counted(n, what)} removed")
    return done


def doctor(settings: Settings, root: Path | None = None) -> list[tuple[bool, str]]:
    """Pre-flight checks of the VM side: each ``(ok, line)`` says what is fine or what to do."""
    lines: list[tuple[bool, str]] = []
    uri = default_uri(settings)
    cache = image_cache(root)
    try:
        libvirt_module()
        lines.append((True, "libvirt-python is installed"))
    except FlakeError as exc:
        lines.append((False, str(exc)))
    else:
        try:
            conn = connect(uri)
            try:
                version = conn.getLibVersion()
                lines.append((True, f"libvirt {version // 1000000}.{version // 1000 % 1000} answers at {uri}"))
                lines.append(launcher_type(uri).check_host(conn, uri, cache))
            finally:
                conn.close()
        except FlakeError as exc:
            lines.append((False, str(exc)))
    for tool, why in (("qemu-system-x86_64", "runs the guests"), ("qemu-img", "makes overlays"),
                      ("debootstrap", "builds the debian image"), ("mkfs.ext4", "builds the debian image")):
        found = shutil.which(tool)
        lines.append((bool(found), f"{tool} {'found' if found else 'missing'} ({why})"
                      + ("" if found else ": run scripts/setup")))
    if os.path.exists("/dev/kvm"):
        stat = os.stat("/dev/kvm")
        if stat.st_mode & 0o060 != 0o060:
            lines.append((False, "/dev/kvm is not group read-writable: libvirt then probes QEMU again on every "
                                 "call (about a minute per start); run scripts/setup.d/30-libvirt.sh "
                                 "(chgrp kvm /dev/kvm; chmod 0660 /dev/kvm)"))
    if settings.vm_accel == "tcg":
        lines.append((True, "accelerator: TCG (from settings)"))
    elif is_remote(uri):  # a boot here says nothing about KVM there
        lines.append((True, f"accelerator: {settings.vm_accel} (from settings)" if settings.vm_accel == "kvm" else
                      f"accelerator: KVM if the capabilities of {uri} list it, else TCG (no local probe)"))
    else:
        cached = cached_probe(cache)
        kernel, source = probe_kernel(None, cache)
        if cached is not None:
            works, why = cached[0], f"{cached[1]}; decided since this host booted"
        elif kernel is not None:
            works, why = probe_kvm(kernel)
            why = f"{why} (probed with {source})"
            record_probe(cache, works, why)
        else:
            works, why = probe_kvm(None)
        if works:
            lines.append((True, f"KVM works: {why}"))
        elif kernel is None and cached is None and why == "no kernel to probe KVM with":
            lines.append((True, "KVM not probed yet: no kernel at hand (no debian image built, none in /boot); "
                                "the first VM boots under KVM while its console is watched for kernel progress "
                                f"({KVM_TRIAL_SECONDS:g}s), else under TCG"))
        else:
            ok = settings.vm_accel != "kvm"
            lines.append((ok, f"KVM unusable ({why}); guests run under TCG"
                          + ("" if ok else ": --vm-accel kvm will fail, use auto or tcg")))
    target = debian_image_dir(cache)
    if (target / "disk.qcow2").is_file():
        lines.append((True, f"debian image cached in {target}"))
    else:
        lines.append((settings.vm_image != "debian",
                      "debian image not built yet (built on first use: 1-2 min, needs root and debootstrap)"))
    cloud = debian_image_dir(cache, "cloud")
    if (cloud / "disk.qcow2").is_file():
        lines.append((True, f"debian-cloud image cached in {cloud}"))
    elif settings.vm_image == "debian-cloud":
        lines.append((False, "debian-cloud image not built yet (built on first use: 2-4 min, needs root and "
                             "debootstrap)"))
    chosen = parse_debian_name(settings.vm_image)
    if chosen is not None and chosen.release != "bookworm":
        folder = debian_image_dir(cache, chosen.variant, chosen.release)
        if (folder / "disk.qcow2").is_file():
            lines.append((True, f"{chosen.name} image ({chosen.about}) cached in {folder}"))
        else:
            lines.append((False, f"{chosen.name} image ({chosen.about}) not built yet (built on first use: "
                                 "1.5-3 min, needs root and debootstrap)"))
    arch = sorted((cache / "arch").glob("*.qcow2")) if (cache / "arch").is_dir() else []
    if arch:
        lines.append((True, f"arch image cached: {arch[-1].name}"))
    else:
        lines.append((settings.vm_image != "arch",
                      "arch image not downloaded yet (needs the internet once; offline use --vm-image debian)"))
    count, size = WarmStore(cache / "warm").usage()
    if not warm_enabled():
        lines.append((True, f"warm starts off (${WARM_ENV}); {count} warm state(s) cached"))
    else:
        lines.append((True, f"{count} warm state(s) cached in {cache / 'warm'} ({size / MiB:.0f} MiB)"
                      + ("; the first VM of each image and size boots cold once" if not count else "")))
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        lines.append((free > 4 * GiB, f"{free / GiB:.1f} GiB free for images in {cache}"
                      + ("" if free > 4 * GiB else ": the images need about 4 GiB")))
    return lines


class VMComponent:
    """VMs as a registry component; the settings name the libvirt URI the sweep looks at."""

    name = "vm"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        return sweep(dead_ids, state_root, uri=default_uri(self.settings))

    def doctor(self, settings: Settings) -> list[tuple[bool, str]]:
        return doctor(settings)


def component(settings: Settings | None = None) -> VMComponent:
    """The ``vm`` component."""
    return VMComponent(settings)
