"""Systemd container parts without systemd-nspawn: loop bookkeeping, command lines, OS trees, the relay, the sweep."""

from __future__ import annotations

import json
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake.errors import InfrastructureError, UsageError
from pytest_flake.images import Tree
from pytest_flake.images import trees as image_trees
from pytest_flake.nspawn import loops, maintenance, trees
from pytest_flake.nspawn.machine import enter_argv, nspawn_argv
from pytest_flake.nspawn.relay import NetnsSockets, Relay
from tests.unit.built_images import built_debian_image


# --------------------------------------------------------------------------- loops
class FakeLoops:
    """A /dev and a /sys/block in tmp_path; LOOP_CTL_ADD/REMOVE create and delete the nodes."""

    def __init__(self, root: Path, numbers: set[int], busy: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.dev = root / "dev"
        self.sys = root / "sys"
        self.dev.mkdir()
        (self.dev / "loop-control").touch()
        for n in numbers:
            self.make(n)
        for n in busy:
            (self.sys / f"loop{n}" / "loop").mkdir(parents=True)
            (self.sys / f"loop{n}" / "loop" / "backing_file").write_text("/x.raw\n")

    def make(self, n: int) -> None:
        (self.dev / f"loop{n}").touch()

    def control(self, request: int, number: int, dev: Path) -> None:
        assert dev == self.dev
        node = dev / f"loop{number}"
        if request == loops.LOOP_CTL_ADD:
            if node.exists():
                raise FileExistsError(17, "File exists")
            node.touch()
        elif request == loops.LOOP_CTL_REMOVE:
            if (self.sys / f"loop{number}" / "loop" / "backing_file").exists():
                raise OSError(16, "Device or resource busy")
            node.unlink()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLoops:
    fake = FakeLoops(tmp_path, {0, 1, 2, 3, 4, 5, 6, 7}, busy={1})
    monkeypatch.setattr(loops, "_control", fake.control)
    return fake


def test_present_lists_loop_nodes_only(fake: FakeLoops) -> None:
    (fake.dev / "loopback").touch()
    assert loops.present(fake.dev) == set(range(8))


def test_prepare_records_baseline_then_restore_puts_it_back(fake: FakeLoops, tmp_path: Path) -> None:
    book = loops.LoopBook(tmp_path / "state" / "loops.json", dev=fake.dev, sys_block=fake.sys)
    devices = book.prepare(spare=10)  # loop1 is busy: 7 free, so 3 more are added
    assert [d.name for d in devices] == [f"loop{n}" for n in range(11)]
    record = json.loads(book.path.read_text())
    assert record == {"baseline": list(range(8)), "added": [8, 9, 10]}
    # a container's systemd removes the devices it used; the kernel re-creates one higher up
    (fake.dev / "loop0").unlink()
    (fake.dev / "loop2").unlink()
    fake.make(12)
    # a second container: the numbers 0..highest exist again, the baseline is not recorded twice
    book.prepare(spare=1)
    assert loops.present(fake.dev) == set(range(13))
    assert json.loads(book.path.read_text())["baseline"] == list(range(8))
    assert book.restore() == []
    assert loops.present(fake.dev) == set(range(8))
    assert not book.path.exists()


def test_restore_leaves_busy_devices_and_keeps_the_record(fake: FakeLoops, tmp_path: Path) -> None:
    book = loops.LoopBook(tmp_path / "loops.json", dev=fake.dev, sys_block=fake.sys)
    book.prepare(spare=9)  # loop1 is busy: loop8 and loop9 are added
    (fake.sys / "loop9" / "loop").mkdir(parents=True)
    (fake.sys / "loop9" / "loop" / "backing_file").write_text("/x\n")  # still attached somewhere
    problems = book.restore()
    assert problems == ["loop9 was added for containers and is still in use"]
    assert 9 in loops.present(fake.dev) and 8 not in loops.present(fake.dev)
    assert book.path.exists()  # the next session's sweep tries again


def test_restore_function_adds_back_what_vanished(fake: FakeLoops) -> None:
    (fake.dev / "loop3").unlink()
    assert loops.restore(set(range(8)), set(), fake.dev, fake.sys) == []
    assert loops.present(fake.dev) == set(range(8))


def test_loops_unavailable_without_loop_control(tmp_path: Path) -> None:
    reason = loops.unavailable(tmp_path)
    assert reason is not None and "loop-control" in reason


# --------------------------------------------------------------------------- command lines
def test_nspawn_argv_has_what_this_machine_needs(tmp_path: Path) -> None:
    argv = nspawn_argv("pf-1234abcd-nspawn-1", tmp_path, [Path("/dev/loop0"), Path("/dev/loop1")])
    assert argv[0] == "systemd-nspawn"
    for flag in ("--boot", "--register=no", "--keep-unit", "--private-network", "--capability=all",
                 "--machine=pf-1234abcd-nspawn-1", f"--directory={tmp_path}"):
        assert flag in argv
    binds = [a for a in argv if a.startswith("--bind=")]
    assert binds == ["--bind=/dev/loop-control", "--bind=/dev/loop0", "--bind=/dev/loop1"]
    assert not [a for a in nspawn_argv("x", tmp_path, []) if a.startswith("--bind=")]


def test_enter_argv_runs_in_every_namespace_with_a_clean_environment() -> None:
    argv = enter_argv(4242, ["systemctl", "is-system-running"])
    assert argv[:5] == ["nsenter", "-t", "4242", "-a", "--"]
    assert argv[5:7] == ["env", "-i"]
    assert any(a.startswith("PATH=") and "/usr/bin" in a for a in argv)
    assert argv[-2:] == ["systemctl", "is-system-running"]


# --------------------------------------------------------------------------- trees
def _os_tree(root: Path, systemd: bool = True) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    if systemd:
        (root / "usr" / "lib" / "systemd").mkdir(parents=True)
        (root / "usr" / "lib" / "systemd" / "systemd").write_text("")
    return root


def test_resolve_tree_takes_a_directory_in_place(tmp_path: Path) -> None:
    root = _os_tree(tmp_path / "tree")
    tree = trees.resolve_tree(str(root), tmp_path / "cache")
    assert tree.root == root
    assert not (tmp_path / "cache").exists()
    relative = trees.resolve_tree("tree", tmp_path / "cache", invocation_dir=tmp_path)
    assert relative.root == root


def test_resolve_tree_rejects_what_cannot_boot(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--container-image 'nothing-here': .*/nothing-here does not exist"):
        trees.resolve_tree("nothing-here", tmp_path, invocation_dir=tmp_path)
    with pytest.raises(UsageError, match=r"'/path/that/does/not/exist': /path/that/does/not/exist does not exist"):
        trees.resolve_tree("/path/that/does/not/exist", tmp_path)
    (tmp_path / "notes.txt").write_text("not a tree\n")
    with pytest.raises(UsageError, match=r"'notes.txt' is neither debian, debian-trixie, debian-sid, a directory"):
        trees.resolve_tree("notes.txt", tmp_path, invocation_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not an OS tree"):
        trees.resolve_tree(str(tmp_path / "empty"), tmp_path)
    no_systemd = _os_tree(tmp_path / "no-systemd", systemd=False)
    with pytest.raises(UsageError, match="has no systemd"):
        trees.resolve_tree(str(no_systemd), tmp_path)


def test_tarball_is_unpacked_once_and_a_bad_one_leaves_nothing(tmp_path: Path) -> None:
    root = _os_tree(tmp_path / "src")
    archive = tmp_path / "os.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    cache = tmp_path / "cache"
    tree = trees.resolve_tree(str(archive), cache)
    assert (tree.root / "etc" / "os-release").read_text() == "ID=test\n"
    stamp = (tree.root / "etc" / "os-release").stat().st_mtime_ns
    assert trees.resolve_tree(str(archive), cache).root == tree.root
    assert (tree.root / "etc" / "os-release").stat().st_mtime_ns == stamp  # not unpacked again

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(_os_tree(tmp_path / "bad-src", systemd=False), arcname=".")
    with pytest.raises(UsageError, match="has no systemd"):
        trees.resolve_tree(str(bad), cache)
    leftovers = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert leftovers == [tree.root.parent.name]


def test_prepare_for_containers_masks_vm_only_units(tmp_path: Path) -> None:
    root = _os_tree(tmp_path / "tree")
    (root / "etc" / "fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    (root / "etc" / "hostname").write_text("pf-debian\n")
    image_trees.prepare_for_containers(root)
    assert "/dev/vda" not in (root / "etc" / "fstab").read_text()
    assert not (root / "etc" / "hostname").exists()
    for unit in image_trees.MASKED_UNITS:
        assert os.readlink(root / "etc" / "systemd" / "system" / unit) == "/dev/null"


def test_debian_tree_is_copied_out_of_the_cached_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fake: FakeLoops) -> None:
    """The image's disk is mounted on a loop device: nspawn's guard puts the host's loop devices back after."""
    from pytest_flake import images

    cache = tmp_path / "cache"
    built_debian_image(cache)
    commands: list[str] = []

    def run(argv: list[str], *, what: str, timeout: float | None = None, error: object = None) -> str:
        commands.append(argv[0] if argv[0] != "qemu-img" else "qemu-img " + argv[1])
        if argv[0] == "mount":
            fake.make(8)  # the mount took a new loop device
        return ""

    def copy(src: Path, dst: Path, **kw: object) -> None:
        commands.append("copy")
        _os_tree(dst / "sub")  # what the mounted file system holds
        for item in (dst / "sub").iterdir():
            item.rename(dst / item.name)
        (dst / "etc" / "hostname").write_text("pf-debian\n")

    monkeypatch.setattr("pytest_flake.images.trees.run", run)
    monkeypatch.setattr("pytest_flake.images.trees.reflink_copy", copy)
    guard = lambda: trees.loops_as_found(fake.dev, fake.sys)  # noqa: E731
    tree = images.debian_tree(cache, loop_guard=guard)
    assert commands == ["qemu-img convert", "mount", "copy", "umount"]
    assert tree.root == images.debian_tree_dir(cache) / "root" and tree.name == "debian"
    assert not (tree.root / "etc" / "hostname").exists()  # made fit for containers
    assert (tree.root.parent / images.MARKER).is_file()
    assert loops.present(fake.dev) == set(range(8))  # loop8 went again
    assert images.debian_tree(cache, loop_guard=guard) == tree and len(commands) == 4  # cached: not copied again


def test_resolve_tree_builds_debian_trees_with_the_loop_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    made = Tree("debian-sid", tmp_path / "root")

    def debian_tree(cache: Path, release: str, *, loop_guard: object) -> Tree:
        calls.append((release, loop_guard))
        return made

    monkeypatch.setattr("pytest_flake.nspawn.trees.debian_tree", debian_tree)
    assert trees.resolve_tree("debian-sid", tmp_path) is made
    assert calls == [("sid", trees.loops_as_found)]


# --------------------------------------------------------------------------- relay
@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_relay_copies_both_ways_and_binds_loopback_only(echo_server: int) -> None:
    relay = Relay(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), echo_server, "test")
    try:
        assert relay._listener.getsockname()[0] == "127.0.0.1"
        for _ in range(2):  # one connection after another
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client:
                client.sendall(b"hello")
                assert client.recv(100) == b"HELLO"
    finally:
        relay.close()


def test_relay_to_a_closed_port_closes_the_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    relay = Relay(lambda: socket.socket(), closed_port, "test")
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client:
            assert client.recv(10) == b""
    except ConnectionResetError:
        pass  # reset (even before connect() returned): as good as closed, and not a hang
    finally:
        relay.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs root")
def test_netns_sockets_in_this_namespace_reach_a_local_server(echo_server: int) -> None:
    sockets = NetnsSockets(Path("/proc/self/ns/net"), "self")
    try:
        with sockets.socket() as sock:
            sock.connect(("127.0.0.1", echo_server))
            sock.sendall(b"ns")
            assert sock.recv(10) == b"NS"
    finally:
        sockets.close()


def test_netns_sockets_name_a_namespace_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="cannot join the network namespace"):
        NetnsSockets(tmp_path / "no-such-ns", "gone")


# --------------------------------------------------------------------------- maintenance
def test_unavailable_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_flake.nspawn.maintenance.os.geteuid", lambda: 1000)
    assert "need root" in (maintenance.unavailable() or "")
    monkeypatch.setattr("pytest_flake.nspawn.maintenance.os.geteuid", lambda: 0)
    monkeypatch.setattr("pytest_flake.nspawn.maintenance.shutil.which", lambda tool: None)
    reason = maintenance.unavailable() or ""
    assert "systemd-nspawn is not installed" in reason and "apt-get install systemd-container" in reason
    lines = maintenance.doctor(None)  # type: ignore[arg-type]
    assert lines == [(False, f"nspawn: {reason}")]


@pytest.mark.parametrize(("script", "line"), [
    pytest.param('echo "systemd 999 (999.1-test)"; echo "+PAM +AUDIT"', "nspawn: systemd 999 (999.1-test)",
                 id="version"),
    pytest.param("exit 1", "nspawn: systemd-nspawn", id="silent"),
])
def test_doctor_names_the_systemd_nspawn_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str,
                                                 line: str) -> None:
    (tmp_path / "systemd-nspawn").write_text(f"#!/bin/sh\n{script}\n")
    (tmp_path / "systemd-nspawn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(maintenance, "unavailable", lambda: None)
    settings = type("Settings", (), {"container_image": str(tmp_path / "no-such-tree")})()
    lines = maintenance.doctor(settings)
    assert lines[0] == (True, line)


def test_sweep_removes_a_dead_sessions_copies_and_restores_its_loops(tmp_path: Path, fake: FakeLoops,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    folder = state / "sessions" / "pf-deadbeef" / "nspawn"
    (folder / "pf-deadbeef-nspawn-1" / "upper").mkdir(parents=True)
    book = loops.LoopBook(folder / "loops.json", dev=fake.dev, sys_block=fake.sys)
    book.prepare(spare=10)
    (fake.dev / "loop4").unlink()  # what a killed session's container did
    book_class = loops.LoopBook
    monkeypatch.setattr("pytest_flake.nspawn.maintenance.loops.LoopBook",
                        lambda path: book_class(path, dev=fake.dev, sys_block=fake.sys))
    maintenance.sweep(["pf-deadbeef", "not-ours"], state)
    assert not folder.exists()
    assert loops.present(fake.dev) == set(range(8))


def test_systemd_container_has_the_guest_api_of_a_vm() -> None:
    from pytest_flake.guest import GuestCommands
    from pytest_flake.nspawn import SystemdContainer

    assert issubclass(SystemdContainer, GuestCommands)
    for member in ("name", "run", "copy_to", "copy_from", "forward", "url", "journal", "host", "succeed", "fail",
                   "wait_until_succeeds", "wait_for_unit", "wait_for_open_port", "wait_timeout"):
        assert hasattr(SystemdContainer, member) or member == "name", member
    assert "journal" not in SystemdContainer.__dict__  # the one journal of GuestCommands, not a copy
