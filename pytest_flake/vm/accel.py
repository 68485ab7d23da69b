"""KVM or TCG: the KVM probe (a real kernel must start), the first-boot trial when no kernel is at
hand, the per-boot cache of the decision, and how the report header describes it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .._host import locked, write_atomic
from ..errors import tail
from ..images import Image, debian_image_dir, image_cache
from .common import log
from .connection import default_uri, is_remote

if TYPE_CHECKING:
    from ..config import Settings


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


KVM_DEVICE = "/dev/kvm"
HOST_KERNEL_GLOBS = ("/boot/vmlinuz-*", "/boot/vmlinuz", "/usr/lib/modules/*/vmlinuz", "/lib/modules/*/vmlinuz")
KVM_TRIAL = "kvm-trial"  # no kernel at hand: the first VM boots under KVM while its console is watched
KVM_TRIAL_SECONDS = 30.0
KVM_PROBE_SECONDS = 12.0
# Lines a Linux kernel (or what it starts) writes to the serial console once it runs; firmware and
# boot loaders (SeaBIOS, GRUB) also run where a KVM guest kernel hangs, so their output proves nothing.
KERNEL_PROGRESS = re.compile(
    r"Run /\S*init as init process|Freeing unused (?:kernel|decrypted)|systemd\[1\]|Welcome to (?!GRUB)|"
    r"Cloud-init v\. |login: ",
)


def host_kernel() -> Path | None:
    """The host's own kernel (``/boot/vmlinuz-*``, Arch's ``/usr/lib/modules/*/vmlinuz``), if readable."""
    import glob

    for pattern in HOST_KERNEL_GLOBS:
        for found in sorted(glob.glob(pattern), reverse=True):
            path = Path(found)
            if path.is_file() and os.access(path, os.R_OK) and path.stat().st_size > 1024 * 1024:
                return path
    return None


def probe_kernel(image: Image | None, cache: Path) -> tuple[Path | None, str]:
    """A kernel to probe KVM with, and where it comes from: the image's, the cached debian image's, the host's."""
    if image is not None and image.kernel is not None and image.kernel.is_file():
        return image.kernel, f"the {image.name} image's kernel"
    candidate = debian_image_dir(cache) / "vmlinuz"
    if candidate.is_file():
        return candidate, "the cached debian image's kernel"
    host = host_kernel()
    if host is not None:
        return host, f"the host's kernel {host}"
    return None, "no kernel at hand"


def probe_kvm(kernel: Path | None, *, timeout: float | None = None, device: str | None = None,
              qemu: str | None = None) -> tuple[bool, str]:
    """Whether KVM really runs a guest: boot ``kernel`` under KVM until it panics for lack of a root.

    ``/dev/kvm`` existing proves nothing (nested virtualisation can hang every guest), so
    a real kernel must get through its whole start-up. Returns ``(works, why)``.
    """
    device = device or KVM_DEVICE
    timeout = KVM_PROBE_SECONDS if timeout is None else timeout
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    if not os.access(device, os.R_OK | os.W_OK):
        return False, f"{device} is not accessible to this user"
    qemu = qemu or shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False, "qemu-system-x86_64 is not installed"
    if kernel is None or not kernel.is_file():
        return False, "no kernel to probe KVM with"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pf-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [qemu, "-accel", "kvm", "-m", "256", "-smp", "1", "-display", "none", "-nodefaults",
                "-no-user-config", "-no-reboot", "-nic", "none", "-serial", f"file:{serial}",
                "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/pf-none rootwait=0"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, f"a KVM guest did not get through kernel start-up in {timeout:g}s (it hangs)"
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if "Kernel panic" in text or "Unable to mount root" in text:
            return True, f"a KVM guest booted its kernel in {time.monotonic() - started:.1f}s"
        return False, f"qemu -accel kvm exited with {proc.returncode}: {tail(err.decode(errors='replace'), 3)}"


def kernel_progress(console: str) -> bool:
    """Whether a serial console shows a Linux kernel running (not only firmware or a boot loader)."""
    return KERNEL_PROGRESS.search(console) is not None


def watch_kvm_first_boot(console: Callable[[], str], running: Callable[[], bool], *,
                         answered: Callable[[], bool] = lambda: False, timeout: float | None = None,
                         interval: float = 0.5) -> tuple[bool, str]:
    """Watch the console of a first boot under KVM: ``(True, why)`` once the kernel shows progress.

    ``answered()`` (the guest's SSH port answering) counts as progress too: a quiet kernel
    command line may keep the console silent.

    ``(False, why)`` when the guest stops, or when ``timeout`` passes without kernel progress
    (a hanging KVM guest: the caller falls back to TCG).
    """
    timeout = KVM_TRIAL_SECONDS if timeout is None else timeout
    started = time.monotonic()
    while True:
        if kernel_progress(console()) or answered():
            return True, f"the first VM's kernel ran under KVM ({time.monotonic() - started:.1f}s to userspace)"
        if not running():
            return False, "the first VM under KVM stopped before its kernel showed progress"
        if time.monotonic() - started >= timeout:
            return False, (f"the first VM under KVM showed no kernel progress on its console in {timeout:g}s "
                           "(a KVM guest kernel hangs here)")
        time.sleep(interval)


def _probe_marker(cache: Path) -> Path:
    return cache / "kvm-probe.json"


def cached_probe(cache: Path) -> tuple[bool, str] | None:
    """The KVM decision made since this host booted, if any: ``(works, why)``."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(_probe_marker(cache).read_text())
        if data.get("boot_id") == _boot_id():
            return bool(data["works"]), str(data.get("why", "probed"))
    return None


def record_probe(cache: Path, works: bool, why: str) -> None:
    """Remember a KVM decision until the host reboots."""
    with contextlib.suppress(OSError):
        write_atomic(_probe_marker(cache), json.dumps({"boot_id": _boot_id(), "works": works, "why": why}))


def choose_accel(settings: Settings, kernel: Path | None, cache: Path, *, kernel_source: str = "") -> str:
    """``kvm``, ``tcg`` or :data:`KVM_TRIAL`: the setting when explicit, else the (cached per boot) probe.

    With no kernel at hand (no debian image, none in ``/boot``), the answer is :data:`KVM_TRIAL`:
    the first VM boots under KVM while its console is watched (see :func:`watch_kvm_first_boot`).
    """
    if settings.vm_accel in ("kvm", "tcg"):
        return str(settings.vm_accel)
    uri = default_uri(settings)
    if is_remote(uri):  # VMPool asks the host's capabilities (remotehost.remote_accel); a local probe says nothing
        log.info("vm: libvirt %s is not local; using TCG (pass --vm-accel kvm to insist)", uri)
        return "tcg"
    cached = cached_probe(cache)
    if cached is not None:
        return "kvm" if cached[0] else "tcg"
    # one probe a host: a session (or pytest-xdist worker) that finds a sibling probing waits for its verdict
    with locked(_probe_marker(cache).with_suffix(".lock")):
        cached = cached_probe(cache)
        if cached is not None:
            log.info("vm: KVM %s: %s (probed by a sibling session)", "works" if cached[0] else "unusable", cached[1])
            return "kvm" if cached[0] else "tcg"
        return _probe_and_record(kernel, cache, kernel_source)


def _probe_and_record(kernel: Path | None, cache: Path, kernel_source: str) -> str:
    if kernel is None:
        works, why = probe_kvm(None)
        if not works and why == "no kernel to probe KVM with":
            log.info("vm: no kernel at hand to probe KVM with; the first VM boots under KVM while its console "
                     "is watched (%gs), else TCG", KVM_TRIAL_SECONDS)
            return KVM_TRIAL
        # /dev/kvm or QEMU is missing: no probe needed
    else:
        works, why = probe_kvm(kernel)
        if kernel_source:
            why = f"{why} (probed with {kernel_source})"
    log.info("vm: KVM %s: %s", "works" if works else "unusable, using TCG", why)
    record_probe(cache, works, why)
    return "kvm" if works else "tcg"


def describe_accel(settings: Settings, cache: Path | None = None) -> str:
    """The accelerator for the report header, from the setting or the cached probe (never probes)."""
    if settings.vm_accel in ("kvm", "tcg"):
        return f"{settings.vm_accel} (from {settings.source('vm_accel')})"
    uri = default_uri(settings)
    if is_remote(uri):
        return f"auto (KVM if the capabilities of {uri} list it, else TCG)"
    cached = cached_probe(cache or image_cache())
    if cached is not None:
        return f"{'kvm' if cached[0] else 'tcg'} (auto: {cached[1]})"
    return "auto (KVM is probed when the first VM starts)"
