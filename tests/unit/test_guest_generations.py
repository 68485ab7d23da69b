"""Image names of every Debian release, the recipe hash per release, and the cgroup plan of a container's tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_flake import images, vm
from pytest_flake.config import BUILTIN_CONTAINER_IMAGES, BUILTIN_VM_IMAGES, Settings, image_about
from pytest_flake.errors import NspawnError, UsageError
from pytest_flake.nspawn import cgroups

HYBRID = """tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
"""


def test_builtin_names_are_the_debian_names() -> None:
    assert set(BUILTIN_VM_IMAGES) == {"arch", *images.debian_names()}
    assert BUILTIN_CONTAINER_IMAGES == images.debian_names(cloud=False) == ("debian", "debian-trixie", "debian-sid")
    assert images.parse_debian_name("debian-sid-cloud") == images.DebianName("sid", "cloud")
    assert images.parse_debian_name("debian") == images.DebianName("bookworm", "plain")
    assert images.parse_debian_name("debian-bullseye") is None
    assert image_about("debian-sid") == "Debian unstable, systemd 262"
    assert image_about("debian-trixie-cloud") == "Debian 13, systemd 257, cloud-init"
    assert image_about("arch") == ""


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.resolve(lambda n: None, lambda n: None, tmp_path, environ=env)


def test_image_names_are_checked_early(tmp_path: Path) -> None:
    assert _settings(tmp_path, PYTEST_FLAKE_VM_IMAGE="debian-sid-cloud").vm_image == "debian-sid-cloud"
    assert _settings(tmp_path, PYTEST_FLAKE_CONTAINER_IMAGE="debian-trixie").container_image == "debian-trixie"
    with pytest.raises(UsageError, match="'debian-bullseye' is no built-in image") as bad:
        _settings(tmp_path, PYTEST_FLAKE_VM_IMAGE="debian-bullseye")
    assert "debian-trixie-cloud" in str(bad.value.hint)
    with pytest.raises(UsageError, match="cloud-init images are for VMs only"):
        _settings(tmp_path, PYTEST_FLAKE_CONTAINER_IMAGE="debian-sid-cloud")
    (tmp_path / "debian-mine").mkdir()  # a folder of that name is a path, not a name
    assert _settings(tmp_path, PYTEST_FLAKE_CONTAINER_IMAGE="debian-mine").container_image == "debian-mine"


def test_each_release_has_its_own_recipe_hash_and_folders(tmp_path: Path) -> None:
    hashes = {images.debian_recipe_hash(variant, release)
              for release in images.DEBIAN_RELEASES for variant in ("plain", "cloud")}
    assert len(hashes) == 6
    assert images.debian_image_dir(tmp_path, release="sid").name.startswith("debian-sid-")
    assert images.debian_image_dir(tmp_path, "cloud", "trixie").name.startswith("debian-trixie-cloud-")
    # the bookworm tree keeps its name; the others never match an older version's nspawn-debian-* sweep
    assert images.debian_tree_dir(tmp_path).name.startswith("nspawn-debian-")
    assert images.debian_tree_dir(tmp_path, "sid").name.startswith("nspawn-sid-")
    with pytest.raises(UsageError, match="unknown debian release"):
        images.debian_recipe_hash(release="buster")


def test_recipe_hash_follows_the_release_package_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(vm.RECIPES, tmp_path / "vms")
    monkeypatch.setattr("pytest_flake.images.debian.RECIPES", tmp_path / "vms")
    sid, trixie = images.debian_recipe_hash(release="sid"), images.debian_recipe_hash(release="trixie")
    (tmp_path / "vms" / "debian" / "packages-sid.txt").write_text("curl\n")
    assert images.debian_recipe_hash(release="sid") != sid
    assert images.debian_recipe_hash(release="trixie") == trixie


def _tree(tmp_path: Path, version: int | None, *, dpkg: bool = False) -> Path:
    root = tmp_path / f"tree-{version}-{dpkg}"
    (root / "usr/lib/x86_64-linux-gnu/systemd").mkdir(parents=True)
    if version is not None and not dpkg:
        (root / f"usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-{version}.so").write_bytes(b"")
    if dpkg:
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text(f"Package: systemd-sysv\nVersion: 1\n\nPackage: systemd\n"
                                                  f"Status: install ok installed\nVersion: {version}.1-1\n")
    return root


def test_systemd_version_of_a_tree(tmp_path: Path) -> None:
    assert cgroups.systemd_version(_tree(tmp_path, 262)) == 262
    assert cgroups.systemd_version(_tree(tmp_path, 257, dpkg=True)) == 257
    assert cgroups.systemd_version(_tree(tmp_path, None)) is None


def test_host_layout(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(HYBRID)
    assert cgroups.host_layout(mounts) == "hybrid"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert cgroups.host_layout(mounts) == "unified"
    mounts.write_text("\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line))
    assert cgroups.host_layout(mounts) == "legacy"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroups.host_layout(mounts) == "none"


def test_plan_gives_systemd_256_and_later_the_unified_hierarchy(tmp_path: Path) -> None:
    new, old = _tree(tmp_path, 262), _tree(tmp_path, 252)
    assert cgroups.plan(new, "hybrid").env == {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    assert cgroups.plan(new, "unified").env == {}  # nspawn gives it the host's own
    assert cgroups.plan(old, "hybrid").env == {} and cgroups.plan(old, "legacy").problem is None
    legacy = cgroups.plan(new, "legacy")
    assert legacy.problem is not None and "systemd 262" in legacy.problem
    with pytest.raises(NspawnError, match="needs the unified cgroup hierarchy") as failure:
        cgroups.require(legacy, "nspawn://x")
    assert "mount -t cgroup2" in str(failure.value.hint)
    assert cgroups.doctor_line("legacy")[1].count("mount -t cgroup2") == 1
    assert "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1" in cgroups.doctor_line("hybrid")[1]


def test_own_group_wraps_nspawn_and_goes_away(tmp_path: Path) -> None:
    assert cgroups.own_group("pf-1-nspawn-1", "unified", root=tmp_path) is None
    group = cgroups.own_group("pf-1-nspawn-1", "hybrid", root=tmp_path)
    assert group == tmp_path / cgroups.PARENT / "pf-1-nspawn-1" and group.is_dir()
    argv = cgroups.wrap(["systemd-nspawn", "--boot"], group)
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == [str(group), "systemd-nspawn", "--boot"]
    assert cgroups.wrap(["x"], None) == ["x"]
    (group / "payload" / "init.scope").mkdir(parents=True)  # what the container's systemd makes
    assert cgroups.remove_group(group) and not (tmp_path / cgroups.PARENT).exists()
    kept = cgroups.own_group("pf-2-nspawn-1", "hybrid", root=tmp_path)
    dead = cgroups.own_group("pf-3-nspawn-1", "hybrid", root=tmp_path)
    assert kept is not None and dead is not None
    cgroups.sweep_groups(["pf-3-"], root=tmp_path)
    assert kept.is_dir() and not dead.exists()


def test_host_keys_of_an_unknown_type_are_left_out(tmp_path: Path) -> None:
    """OpenSSH 10 (sid) also has an ssh-mldsa44-ed25519 host key, which paramiko cannot parse."""
    from pytest_flake.errors import VMError

    with pytest.raises(VMError, match="none of the guest's host key types"):
        vm.ssh_client(1, tmp_path / "key", ("ssh-mldsa44-ed25519 AAAAE3NzaC1tbGRzYTQ0LWVkMjU1MTkAAAVA",))
