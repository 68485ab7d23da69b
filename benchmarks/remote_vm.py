#!/usr/bin/env python3
"""Prints what a VM costs on libvirt of another host against libvirt here, in one run.

    sudo python3 benchmarks/remote_vm.py

The other host is the namespace host of the integration tests (tests/integration/otherhost.py):
its own sshd and libvirtd, reached with ``qemu+ssh://pf-otherhost/system``. Figures, each side
with warm states of its own (a fresh store), under TCG:
- the upload of the base image (disk, kernel, initrd) into a new host's storage pool;
- a cold boot to SSH, and the save of the warm state after it;
- a warm start (restore) to SSH;
and the ratios remote/local. Nothing is asserted: these are figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def measure(uri: str) -> dict[str, Any]:
    """One cold VM (then saved) and one warm VM on libvirt at ``uri``, with a warm store of their own."""
    from pytest_flake.config import Settings
    from pytest_flake.session import Session
    from pytest_flake.vm import VMPool, WarmStore

    opts = {"libvirt_uri": uri, "vm_accel": "tcg", "vm_image": "debian"}
    settings = Settings.resolve(lambda n: opts.get(n), lambda n: None, Path.cwd(), environ={})
    with tempfile.TemporaryDirectory(prefix="pf-bench-warm-") as warm, Session() as session, \
            VMPool(settings, session) as pool:
        pool.store = WarmStore(Path(warm), forget=pool.forget_remote_state)  # no state of an earlier run
        pool.image("debian")  # built or cached before the clock starts
        started = time.monotonic()
        with pool.vm() as cold:
            cold_total = time.monotonic() - started
            boot = cold.boot_seconds
        started = time.monotonic()
        with pool.vm() as warm_vm:
            warm_total = time.monotonic() - started
            assert warm_vm.warm, "the second VM did not start warm"
        upload = pool.remote.upload_seconds if pool.remote is not None else 0.0
        size = pool.remote.uploaded_bytes if pool.remote is not None else 0
        pool.store.prune()
        for folder in Path(warm).iterdir():  # its volumes there go with it
            if folder.is_dir() and not folder.name.startswith("."):
                pool.forget_remote_state(folder)
    return {"upload": upload, "upload_bytes": size, "cold_boot": boot - upload, "save": cold_total - boot,
            "warm": warm_total}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":  # inside the user namespace of the other host
        print(json.dumps(measure(sys.argv[2])))
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.integration.otherhost import other_host

    local = measure("qemu:///system")
    with other_host(docker=False) as host:
        done = subprocess.run(host.user_argv([sys.executable, __file__, "--measure", host.libvirt_uri]),
                              capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        remote = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"base image upload to a new host: {remote['upload']:.2f} s for {remote['upload_bytes'] / 2**20:.0f} MiB "
          f"({remote['upload_bytes'] / 2**20 / max(remote['upload'], 1e-9):.0f} MiB/s)")
    print(f"{'step':<28}{'local':>10}{'remote':>10}{'remote/local':>14}")
    for step, label in (("cold_boot", "cold boot to SSH"), ("save", "save of the warm state"),
                        ("warm", "warm start to SSH")):
        print(f"{label:<28}{local[step]:>9.2f}s{remote[step]:>9.2f}s{remote[step] / local[step]:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
