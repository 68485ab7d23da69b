"""Cold boot vs warm start of a pytest-flake VM, each timed from start to SSH ready.

    python benchmarks/vm_boot.py [--image debian] [--rounds 3]

The first VM of a session boots cold (and is saved for warm starts, which is counted
in its time); the next ones restore that saved state. Uses the same settings sources
as the plugin's environment variables (PYTEST_FLAKE_VM_ACCEL, LIBVIRT_DEFAULT_URI...).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from pytest_flake.config import Settings
from pytest_flake.session import Session
from pytest_flake.vm import VMPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="debian", help="arch, debian, a qcow2 path or URL (default: debian)")
    parser.add_argument("--rounds", type=int, default=3, help="warm starts to time (default: 3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    settings = Settings.resolve(lambda name: {"vm_image": args.image}.get(name), lambda name: None, Path.cwd())
    with Session() as session, VMPool(settings, session) as pool:
        image_started = time.monotonic()
        pool.image(args.image)
        image_seconds = time.monotonic() - image_started
        with pool.vm() as first:
            assert first.run("true").rc == 0
            cold, boot = first.ready_seconds, first.boot_seconds
        warm = []
        for _ in range(args.rounds):
            with pool.vm() as machine:
                assert machine.warm and machine.run("true").rc == 0
                warm.append(machine.ready_seconds)
        accel = pool.accel(pool.image(args.image))
    best = min(warm)
    print(f"image {args.image} ({accel}): ready in {image_seconds:.1f}s (cached or built)")
    print(f"cold boot to SSH ready: {cold:.1f}s (first SSH answer after {boot:.1f}s, then saved for warm starts)")
    print(f"warm start to SSH ready: best {best:.1f}s, median {statistics.median(warm):.1f}s over {len(warm)}")
    print(f"ratio cold/warm: {cold / best:.1f}x")


if __name__ == "__main__":
    main()
