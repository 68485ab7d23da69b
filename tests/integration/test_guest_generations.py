"""Guests of every systemd generation: Debian 12 (252), Debian 13 (257) and unstable (262, Arch's generation).

Containers of each release run the portable lifecycle and the guest API (they boot in about a
second, so every release is in the default suite). A VM of unstable runs the guest API, the
portable lifecycle and the service fixture's portable target. ``PYTEST_FLAKE_TEST_RELEASES``
(``trixie,sid`` or ``all``) adds the VMs of the other releases by hand; the cloud-init variants are
in ``test_vm_cloud_init.py``. Nothing is faked: images are built with debootstrap, guests boot for real.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_flake import CheckFailed
from pytest_flake.nspawn import cgroups
from pytest_flake.nspawn.machine import SystemdContainer
from pytest_flake.vm import VM

pytestmark = pytest.mark.flake("examples/offline")

# image name -> (os-release VERSION_CODENAME, systemd major version at least)
RELEASES = {"debian": ("bookworm", 252), "debian-trixie": ("trixie", 257), "debian-sid": ("sid", 262)}
EXTRA = os.environ.get("PYTEST_FLAKE_TEST_RELEASES", "")


def _vm_images() -> list[object]:
    """debian-sid always; the others when PYTEST_FLAKE_TEST_RELEASES names them (the lead runs them by hand)."""
    wanted = set(RELEASES) if EXTRA == "all" else {f"debian-{r}" if r != "bookworm" else "debian"
                                                     for r in EXTRA.split(",") if r}
    params: list[object] = []
    for image in RELEASES:
        if image == "debian-sid" or image in wanted:
            params.append(image)
        else:
            params.append(pytest.param(image, marks=pytest.mark.skip(
                reason=f"set PYTEST_FLAKE_TEST_RELEASES={RELEASES[image][0]} (or all) to boot a {image} VM")))
    return params


@pytest.fixture(params=list(RELEASES))
def container(request: pytest.FixtureRequest,
              systemd_container_factory: Callable[..., SystemdContainer]) -> SystemdContainer:
    """A systemd container of each release."""
    return systemd_container_factory(request.param)


@pytest.fixture(params=_vm_images())
def release_vm(request: pytest.FixtureRequest, vm_factory: Callable[..., VM]) -> VM:
    """A VM of a release (debian-sid in the default suite)."""
    return vm_factory(image=request.param)


def _systemd_major(guest: SystemdContainer | VM) -> int:
    return int(guest.succeed("systemctl --version | head -n 1").split()[1])


def _check_release(guest: SystemdContainer | VM, image: str) -> None:
    codename, systemd = RELEASES[image]
    os_release = guest.succeed("cat /etc/os-release")
    assert f"VERSION_CODENAME={codename}" in os_release or (codename == "sid" and "forky" in os_release), os_release
    assert _systemd_major(guest) >= systemd


def _lifecycle(guest: SystemdContainer | VM, portable_service, http, *, runtime: bool = True,  # type: ignore[no-untyped-def]
               profile: str = "default") -> None:
    service = portable_service(guest, "portable", profile=profile, runtime=runtime)
    assert service.name == "web-server_1.0" and service.units == ["web-server.service"]
    assert service.attached_state() == ("running-runtime" if runtime else "running")
    assert service.environment()["PORTABLE"] == "web-server_1.0.raw"
    info = guest.url(3031, "/cgi-bin/info")
    http.get(info, retry_for=30).expect(200, json={"version": "1.0", "portable": "web-server_1.0.raw"})
    service.reattach("portable-next")
    http.get(info, retry_for=30).expect(200, json={"version": "1.1", "portable": "web-server_1.1.raw"})
    assert "web-server 1.1" in service.journal()
    service.detach()
    assert service.attached_state() == "detached"
    assert guest.run("systemctl cat web-server.service").rc != 0


def test_portable_lifecycle_in_a_container_of_each_release(container: SystemdContainer, portable_service,  # type: ignore[no-untyped-def]
                                                           http) -> None:
    image = container.tree.name
    _check_release(container, image)
    _lifecycle(container, portable_service, http)


def test_persistent_attach_in_a_container(container: SystemdContainer, portable_service, http) -> None:  # type: ignore[no-untyped-def]
    """Without --runtime the image is attached below /etc, on each release."""
    service = portable_service(container, "portable", runtime=False)
    assert service.attached_state() == "running"
    assert container.succeed("systemctl show -p FragmentPath --value web-server.service").strip() == \
        "/etc/systemd/system.attached/web-server.service"
    http.get(container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")


def test_trusted_profile_in_a_container_by_generation(container: SystemdContainer, portable_service, http) -> None:  # type: ignore[no-untyped-def]
    """The trusted profile binds the container's /run into the service (BindPaths=/run). From systemd 257 on,
    a RootImage service stages the host's os-release below /run/host, which systemd-nspawn mounts read-only
    in a container, so the unit fails there ("Failed to set up mount namespacing: /run/host/.os-release-stage/").
    systemd 252 does not stage it, and the unit runs."""
    if _systemd_major(container) < 257:
        service = portable_service(container, "portable", profile="trusted")
        assert service.attached_state() == "running-runtime"
        http.get(container.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
        return
    with pytest.raises(CheckFailed, match="failed to start") as failure:
        portable_service(container, "portable", profile="trusted")
    evidence = str(failure.value) + "\n".join(getattr(failure.value, "__notes__", []))
    journal = container.succeed("journalctl -u web-server.service --no-pager")
    assert ".os-release-stage" in evidence + journal, evidence + journal


def test_guest_api_in_a_container_of_each_release(container: SystemdContainer, tmp_path: Path) -> None:
    _check_release(container, container.tree.name)
    assert container.succeed("systemctl is-system-running").strip() == "running"
    container.wait_for_unit("systemd-journald.service", timeout=10)
    with pytest.raises(CheckFailed, match="exit code 3"):
        container.succeed("exit 3")
    container.succeed("logger -t pf-gen marker-of-this-release")
    container.wait_until_succeeds("journalctl -t pf-gen | grep -q marker-of-this-release", timeout=10)
    assert "marker-of-this-release" in container.journal(lines=50)
    assert container.host.file("/usr/bin/portablectl").exists
    (tmp_path / "f.txt").write_text("there and back")
    container.copy_to(tmp_path / "f.txt", "/root/f.txt")
    container.copy_from("/root/f.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "there and back"
    # the hierarchy its systemd needs: unified from 256 on (this host's cgroup2 beside cgroups v1)
    hierarchy = container.succeed("stat -f -c %T /sys/fs/cgroup").strip()
    plan = cgroups.plan(container.tree.root)
    if plan.version is not None and plan.version >= cgroups.UNIFIED_FROM:
        assert hierarchy == "cgroup2fs", hierarchy
    if container.cgroup is not None:  # a hybrid host: the container lives in a cgroup of its own
        leader = Path(f"/proc/{container.leader}/cgroup").read_text()
        assert f"/{cgroups.PARENT}/{container.name}/" in leader, leader


def test_vm_of_a_release_guest_api_and_portable_lifecycle(release_vm: VM, portable_service, http,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    vm = release_vm
    _check_release(vm, vm.image_spec)
    assert vm.run("id -un").stdout.strip() == "root"  # the key came as the SMBIOS credential
    key = vm.succeed("cat /root/.ssh/authorized_keys")
    assert vm.keys is not None and vm.keys.public.split()[1] in key
    creds = vm.run("systemd-creds --system list --no-legend 2>/dev/null || true").stdout
    if _systemd_major(vm) >= 256:
        assert "ssh.authorized_keys.root" in creds, creds
    vm.wait_for_unit("ssh.service")
    vm.wait_for_open_port(22)
    assert "sshd" in vm.journal(lines=400) or "ssh" in vm.journal("ssh.service")
    assert vm.host.file("/usr/bin/portablectl").exists
    (tmp_path / "f.txt").write_text("to the vm")
    vm.copy_to(tmp_path / "f.txt", "/root/f.txt")
    vm.copy_from("/root/f.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "to the vm"
    _lifecycle(vm, portable_service, http)
    # in a VM /run/host is the guest's own: the trusted profile runs on every generation
    trusted = portable_service(vm, "portable", profile="trusted")
    assert trusted.attached_state() == "running-runtime"
    http.get(vm.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
