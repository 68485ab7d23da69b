"""What one guest command costs: ``succeed("echo ok")`` in a VM through its agent, in the same VM over SSH,
and in a systemd container, all in one run.

    python benchmarks/guest_command.py [--image debian] [--container-image debian] [--rounds 50] [--no-container]

The VM starts warm when the cache holds a state of it (else it boots cold and saves one, not counted).
Its commands go through the guest agent's virtio-serial port; then the same VM is made to take the SSH
path (testinfra's paramiko backend, a new channel per command), the path of a guest without the agent.
"raw channel" is the agent's round trip alone, without VM.run's kernel-panic watch and result. The
container is pytest_flake.nspawn's (needs root and systemd-container). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pytest_flake.config import Settings
from pytest_flake.nspawn.machine import ContainerPool
from pytest_flake.session import Session
from pytest_flake.vm import VMPool


def timings(call: Callable[[], object], rounds: int) -> list[float]:
    call()  # the first one connects
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return spent


def figures(spent: list[float]) -> tuple[float, float]:
    ordered = sorted(spent)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="debian", help="the VM's --vm-image (default: debian)")
    parser.add_argument("--container-image", default="debian", help="the container's image (default: debian)")
    parser.add_argument("--rounds", type=int, default=50, help="commands timed on each path (default: 50)")
    parser.add_argument("--no-container", action="store_true", help="leave the systemd container out")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    settings = Settings.resolve(lambda name: {"vm_image": args.image}.get(name), lambda name: None, Path.cwd())
    results: dict[str, list[float]] = {}
    with Session() as session, VMPool(settings, session, warm=True) as pool:
        with pool.vm() as machine:
            accel = pool.accel(pool.image(args.image))
            print(f"VM {machine.name}: {args.image} ({accel}, {machine.boot_kind} start), commands through "
                  f"{machine.channel}")
            if machine.channel == "agent":
                results["VM, agent"] = timings(lambda: machine.succeed("echo ok"), args.rounds)
                link = machine._agent
                results["VM, raw channel"] = timings(lambda: link.run("echo ok", None), args.rounds)
            link = machine._agent
            kind, link.kind = link.kind, "ssh"  # the path of a guest without the agent
            try:
                results["VM, SSH"] = timings(lambda: machine.succeed("echo ok"), args.rounds)
            finally:
                link.kind = kind
    if not args.no_container:
        with Session() as session, ContainerPool(session, args.container_image) as containers:
            with containers.container(args.container_image) as container:
                results["systemd container"] = timings(lambda: container.succeed("echo ok"), args.rounds)
    print(f"one succeed('echo ok'), {args.rounds} rounds each:")
    for what, spent in results.items():
        median, p90 = figures(spent)
        print(f"  {what:<18} median {median:7.1f} ms   p90 {p90:7.1f} ms")
    if "VM, agent" in results:
        agent = statistics.median(results["VM, agent"])
        print(f"ratio SSH/agent: {statistics.median(results['VM, SSH']) / agent:.1f}x (medians)")
        if "systemd container" in results:
            print(f"ratio agent/container: {agent / statistics.median(results['systemd container']):.1f}x (medians)")


if __name__ == "__main__":
    main()
