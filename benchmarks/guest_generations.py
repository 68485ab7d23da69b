"""Cold boot and warm start of each Debian release's guest, beside Debian 12's: VMs and systemd containers.

    python benchmarks/guest_generations.py [--images debian,debian-trixie,debian-sid] [--rounds 2] [--no-vm]

For each image: a VM's cold boot to SSH ready (no saved state: the states live in a temporary
folder, so the boot is a real cold one; saving the state is counted in it), then warm starts
(restores of that state), and a systemd container's boot to ``running`` (best and median of
``--rounds``). Images are built first when not cached (the build time is printed, not counted).
The accelerator is the plugin's choice (``PYTEST_FLAKE_VM_ACCEL``: TCG where KVM does not work).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from pytest_flake.config import Settings, image_about
from pytest_flake.nspawn.machine import ContainerPool
from pytest_flake.session import Session
from pytest_flake.vm import VMPool, WarmStore


def _vm_times(settings: Settings, image: str, rounds: int) -> tuple[str, float, float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="pf-bench-gen-") as states:
        with Session() as session, VMPool(settings, session, warm=True) as pool:
            pool.store = WarmStore(Path(states))
            started = time.monotonic()
            base = pool.image(image)
            built = time.monotonic() - started
            accel = pool.accel(base)
            with pool.vm(image=image) as first:
                assert first.boot_kind == "cold" and first.run("true").rc == 0
                cold = first.ready_seconds
            warm = []
            for _ in range(rounds):
                with pool.vm(image=image) as machine:
                    assert machine.boot_kind == "warm" and machine.run("true").rc == 0
                    warm.append(machine.ready_seconds)
    return accel, built, cold, warm


def _container_times(image: str, rounds: int) -> tuple[float, list[float]]:
    with Session() as session, ContainerPool(session, image) as pool:
        started = time.monotonic()
        pool.tree(image)
        built = time.monotonic() - started
        boots = []
        for _ in range(rounds):
            with pool.container(image) as container:
                assert container.succeed("systemctl is-system-running").strip() == "running"
                assert container.boot_seconds is not None
                boots.append(container.boot_seconds)
    return built, boots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="debian,debian-trixie,debian-sid", help="comma-separated image names")
    parser.add_argument("--rounds", type=int, default=2, help="warm starts and container boots per image")
    parser.add_argument("--no-vm", action="store_true", help="containers only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    rows = []
    for image in args.images.split(","):
        chosen: dict[str, str] = {"vm_image": image}
        settings = Settings.resolve(chosen.get, lambda name: None, Path.cwd())
        built, boots = _container_times(image, args.rounds)
        row = [f"{image} [{image_about(image)}]",
               f"container: boot {min(boots):.2f}s best, {statistics.median(boots):.2f}s median "
               f"(tree ready in {built:.1f}s)"]
        if not args.no_vm:
            accel, vm_built, cold, warm = _vm_times(settings, image, args.rounds)
            row.append(f"VM ({accel}): cold boot {cold:.1f}s, warm start {min(warm):.1f}s best, "
                       f"{statistics.median(warm):.1f}s median (image ready in {vm_built:.1f}s)")
        rows.append(row)
        print("\n  ".join(row), flush=True)


if __name__ == "__main__":
    main()
