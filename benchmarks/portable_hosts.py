"""The portable-service lifecycle in a systemd container and in a warm VM, timed in one run.

    python benchmarks/portable_hosts.py [--flake examples/offline] [--rounds 3] [--settle SECONDS]

Each round runs the same steps on each host: start the guest, attach the flake's
``portable`` image (``portablectl attach --now``, waiting until the unit runs), get HTTP 200
through the host's 127.0.0.1 port, ``reattach`` to ``portable-next``, get the new version
over HTTP, detach, stop the guest. The VM is the ``debian`` image started warm (a first,
untimed VM makes the saved state if the cache has none); the container boots the same
Debian tree (``--container-image debian``). ``--settle`` is how long ``PortableService`` makes
sure a started unit stays up (by default each guest's own: 0.1 s in a container, 1 s in a VM;
0 measures the hosts alone).
Prints each step, the medians, and the ratio VM / container.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from pytest_flake.config import Settings
from pytest_flake.nix import NIX_FEATURES
from pytest_flake.nspawn import ContainerPool
from pytest_flake.portable import PortableService
from pytest_flake.session import Session
from pytest_flake.vm import VMPool

STEPS = ("start", "attach+http", "reattach+http", "detach", "stop")


def build(flake: Path, attr: str) -> Path:
    out = subprocess.run(["nix", *NIX_FEATURES, "build", "--json", "--no-link", f"path:{flake.resolve()}#{attr}"],
                         capture_output=True, text=True, check=True).stdout
    return Path(json.loads(out)[0]["outputs"]["out"])


def http_until(url: str, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200 and text in response.text:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered with {text!r}")
        time.sleep(0.02)


def lifecycle(start: Callable[[], Any], images: tuple[Path, Path], settle: float | None,
              port: int = 3031) -> dict[str, float]:
    times: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        times[name] = now - mark
        mark = now

    guest = start()
    try:
        step("start")
        service = PortableService(guest, images[0], timeout=120, settle=settle).__enter__()
        http_until(guest.url(port, "/"), "web-server 1.0")
        step("attach+http")
        service.reattach(images[1])
        http_until(guest.url(port, "/"), "web-server 1.1")
        step("reattach+http")
        service.close()
        step("detach")
    finally:
        guest.__exit__(None, None, None)
    step("stop")
    return times


def report(name: str, rounds: list[dict[str, float]]) -> float:
    totals = [sum(r.values()) for r in rounds]
    steps = ", ".join(f"{s} {statistics.median(r[s] for r in rounds):.2f}s" for s in STEPS)
    print(f"{name}: total median {statistics.median(totals):.2f}s (best {min(totals):.2f}s) over {len(rounds)}; "
          f"steps (medians): {steps}")
    return statistics.median(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flake", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "offline")
    parser.add_argument("--rounds", type=int, default=3, help="lifecycles on each host (default: 3)")
    parser.add_argument("--settle", type=float, default=None,
                        help="PortableService settle seconds (default: what each guest says)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    images = (next(build(args.flake, "portable").glob("*.raw")), next(build(args.flake, "portable-next").glob("*.raw")))
    settings = Settings.resolve(lambda name: {"vm_image": "debian"}.get(name), lambda name: None, Path.cwd())

    with Session() as session, ContainerPool(session, "debian") as containers, \
            VMPool(settings, session, warm=True) as vms:
        containers.tree()  # built once and cached: not part of a lifecycle
        with vms.vm() as first:  # makes the warm state when the cache has none
            print(f"vm warm-up: {first.boot_kind} start, ready in {first.ready_seconds:.1f}s")
        nspawn_rounds = [lifecycle(lambda: containers.container().__enter__(), images, args.settle)
                         for _ in range(args.rounds)]
        vm_rounds = [lifecycle(lambda: vms.vm().__enter__(), images, args.settle) for _ in range(args.rounds)]
        accel = vms.accel(vms.image("debian"))
    settle = "each guest's own (container 0.1s, VM 1s)" if args.settle is None else f"{args.settle:g}s"
    print(f"lifecycle: {' -> '.join(STEPS)}; images {images[0].name} -> {images[1].name}; settle {settle}")
    container = report("systemd container (nspawn)", nspawn_rounds)
    vm = report(f"warm VM (debian, {accel})", vm_rounds)
    print(f"ratio warm VM / container: {vm / container:.1f}x (medians of the totals)")


if __name__ == "__main__":
    main()
