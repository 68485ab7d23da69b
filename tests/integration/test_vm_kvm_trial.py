"""The KVM decision when no kernel is at hand to probe with (an Arch user's first run): the first
VM boots under KVM while its console is watched, and falls back to TCG when the kernel shows no
progress. On these machines a KVM guest kernel hangs, so the fallback is what runs here.

Real libvirt, real QEMU, a real KVM domain. Only the lookup of a probe kernel is told to find
none (the debian image used here boots its own kernel directly, which would otherwise be probed),
and the cache is a fresh one, so no earlier decision is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake import images
from pytest_flake import vm as vmmod
from pytest_flake.config import Settings
from pytest_flake.session import Session


@pytest.fixture
def fresh_root(flake_session: Session) -> Iterator[Path]:
    """A state root of its own beside the real one, sharing the built debian image."""
    root = Path(tempfile.mkdtemp(prefix="test-kvm-trial-", dir=flake_session.root))
    try:
        image_dir = images.build_debian(images.image_cache(flake_session.root)).disk.parent
        (root / "images").mkdir()
        (root / "images" / image_dir.name).symlink_to(image_dir)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (the trial is skipped without it)")
def test_first_boot_decides_kvm_and_falls_back_to_tcg(fresh_root: Path, flake_settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_flake.vm.pool.probe_kernel", lambda image, cache: (None, "no kernel at hand"))
    monkeypatch.setattr("pytest_flake.vm.accel.KVM_TRIAL_SECONDS", 20.0)
    env = {"PYTEST_FLAKE_TIMEOUT": str(max(float(flake_settings.flake_timeout), 300.0)),
           "PYTEST_FLAKE_VM_IMAGE": "debian"}
    if flake_settings.libvirt_uri:
        env["LIBVIRT_DEFAULT_URI"] = flake_settings.libvirt_uri
    settings = Settings.resolve(lambda n: None, lambda n: None, fresh_root, environ=env)
    cache = images.image_cache(fresh_root)
    assert not (cache / "kvm-probe.json").exists()
    with Session(root=fresh_root) as session, VMPoolNoWarm(settings, session) as pool:
        image = pool.image("debian")
        assert pool.accel(image) == vmmod.KVM_TRIAL
        with pool.vm(image="debian") as machine:
            assert machine.run("true").rc == 0
            decided = json.loads((cache / "kvm-probe.json").read_text())
            domain_type = pool.conn.lookupByName(machine.name).XMLDesc(0).split("type='", 1)[1].split("'", 1)[0]
            if decided["works"]:  # a machine where KVM runs guests: the trial boot is the VM
                assert domain_type == "kvm" and "ran under KVM" in decided["why"]
            else:  # this machine: the kernel hangs under KVM, the VM was booted again under TCG
                assert domain_type == "qemu", domain_type
                assert "no kernel progress on its console in 20s" in decided["why"] or "stopped" in decided["why"]
            print(f"\nKVM decided by the first boot: works={decided['works']}: {decided['why']}")
        header = vmmod.describe_accel(settings, cache)
        assert header.startswith(("kvm (auto: the first VM", "tcg (auto: the first VM")), header
        assert pool.accel(image) in ("kvm", "tcg")  # decided: the next VM does not try again


class VMPoolNoWarm(vmmod.VMPool):
    """A pool without warm starts: every VM boots, so the trial really runs."""

    def __init__(self, settings: Settings, session: Session) -> None:
        super().__init__(settings, session, warm=False)
