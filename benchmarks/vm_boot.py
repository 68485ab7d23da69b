"""Cold boot vs warm starts of a pytest-flake VM, each timed from start until the guest answers.

    python benchmarks/vm_boot.py [--image debian] [--rounds 3]

Three kinds of start: a cold boot (the first VM of an image and size with no saved
state; saving the state is counted in its time), a warm start later in the same
session, and the first VM of a new session, which restores the state the first
session left in the cache. Each warm start is also split in two: the restore (start
until libvirt's restore returned) and the wait until the restored guest answers SSH.
The saved states live in a temporary folder here, so the cold boot is a real one and
the user's cache is left alone. Uses the same settings sources as the plugin's
environment variables (PYTEST_FLAKE_VM_ACCEL, LIBVIRT_DEFAULT_URI...).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from pytest_flake.config import Settings
from pytest_flake.session import Session
from pytest_flake.vm import VMPool, WarmStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="debian", help="arch, debian, a qcow2 path or URL (default: debian)")
    parser.add_argument("--rounds", type=int, default=3, help="warm starts to time in each session (default: 3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    settings = Settings.resolve(lambda name: {"vm_image": args.image}.get(name), lambda name: None, Path.cwd())
    with tempfile.TemporaryDirectory(prefix="pf-bench-warm-") as states:
        with Session() as session, VMPool(settings, session, warm=True) as pool:
            pool.store = WarmStore(Path(states))
            image_started = time.monotonic()
            pool.image(args.image)
            image_seconds = time.monotonic() - image_started
            with pool.vm() as first:
                assert first.boot_kind == "cold" and first.run("true").rc == 0
                cold, boot = first.ready_seconds, first.boot_seconds
            same: list[float] = []
            splits: list[tuple[float, float]] = []  # (to restore returned, then to the guest answering) of warm starts
            channels: set[str] = set()  # how the warm guests took commands: agent, or ssh
            for _ in range(args.rounds):
                with pool.vm() as machine:
                    assert machine.boot_kind == "warm" and machine.run("true").rc == 0
                    same.append(machine.ready_seconds)
                    channels.add(machine.channel)
                    splits.append((machine.restore_seconds, machine.ready_seconds - machine.restore_seconds))
            accel = pool.accel(pool.image(args.image))
        new: list[float] = []
        for _ in range(args.rounds):  # each a new session whose first VM restores the cached state
            with Session() as session, VMPool(settings, session, warm=True) as pool:
                pool.store = WarmStore(Path(states))
                with pool.vm() as machine:
                    assert machine.boot_kind == "warm" and machine.run("true").rc == 0
                    new.append(machine.ready_seconds)
                    channels.add(machine.channel)
                    splits.append((machine.restore_seconds, machine.ready_seconds - machine.restore_seconds))
        saves = [path.stat().st_size for path in Path(states).glob("*/state.save")]
    print(f"image {args.image} ({accel}): ready in {image_seconds:.1f}s (cached or built)")
    print(f"cold boot to SSH ready: {cold:.1f}s (first SSH answer after {boot:.1f}s, then saved for warm starts)")
    print(f"warm start, same session: best {min(same):.2f}s, median {statistics.median(same):.2f}s "
          f"over {len(same)}")
    print(f"first VM of a new session (warm from the cache): best {min(new):.2f}s, "
          f"median {statistics.median(new):.2f}s over {len(new)}")
    print(f"warm start split (medians over {len(splits)}): restore {statistics.median(s[0] for s in splits):.2f}s "
          f"(start until libvirt's restore returned), then ready {statistics.median(s[1] for s in splits):.2f}s "
          f"(until the guest answers; commands through {', '.join(sorted(channels))}); "
          f"save file {max(saves, default=0) / 2**20:.0f} MiB")
    print(f"ratio cold/warm: same session {cold / statistics.median(same):.1f}x, "
          f"new session {cold / statistics.median(new):.1f}x (medians)")


if __name__ == "__main__":
    main()
