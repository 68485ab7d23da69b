"""Two VMs restore one warm state at once (as pytest-xdist workers do), on the real libvirt daemon.

A warm start copies nothing: each VM runs on a new overlay over the state's (read-only) overlay,
and libvirt reads the shared save file through a FIFO of the VM's own. Nothing is faked.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from pytest_flake.vm import VM, VMPool


def backing_file(overlay: Path) -> Path:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], check=True,
                                     capture_output=True, text=True).stdout)
    return Path(info["full-backing-filename"])


def shared_ids(state: Path) -> dict[str, str]:
    out = {}
    for name in ("state.save", "overlay.qcow2"):
        stat = (state / name).stat()
        out[name] = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    return out


def test_two_vms_restore_one_state_at_once(flake_vms: VMPool) -> None:
    with flake_vms.vm() as first:  # a warm state of this VM exists from here on (a cold boot saves one)
        assert first.succeed("echo ok").strip() == "ok"
    machines = [flake_vms.vm(), flake_vms.vm()]
    failed: list[BaseException] = []

    def start(machine: VM) -> None:
        try:
            machine.start()
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=start, args=(machine,)) for machine in machines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failed == []
        one, two = machines
        assert one.warm and two.warm, [machine.boot_kind for machine in machines]
        for machine in machines:
            assert machine.succeed("echo ok").strip() == "ok"
        # one state under both: each VM's overlay is a new one over the state's overlay (nothing copied)
        state = backing_file(one.overlay).parent
        assert backing_file(two.overlay).parent == state and state.parent == flake_vms.store.root
        recorded = json.loads((state / "state.json").read_text())["ids"]
        # each sees its own disk
        one.succeed("echo one > /root/only-in-one && sync")
        two.succeed("echo two > /root/only-in-two && sync")
        assert two.run("test -e /root/only-in-one").rc == 1 and one.run("test -e /root/only-in-two").rc == 1
        assert one.succeed("cat /root/only-in-one").strip() == "one"
        # the state was only read: its files are those it was published with, and nothing of the restores is left
        assert shared_ids(state) == recorded
        assert not list(flake_vms.dir.glob("*.fifo")) and not list(flake_vms.dir.glob("*.save"))
    finally:
        for machine in machines:
            machine.close()
