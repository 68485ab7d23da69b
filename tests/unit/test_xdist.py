"""The run shared by pytest-xdist workers (pytest_flake.xdist), without daemons: its directory,
its build cache, the sweep of a dead run, sibling sessions, and one cold boot per warm-state key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import plugin, xdist
from pytest_flake.docker.archive import Archive
from pytest_flake.docker.daemon import Docker
from pytest_flake.images import Image
from pytest_flake.nix import Binding, Build, Flake, FlakeOptions
from pytest_flake.session import Session, start_time
from pytest_flake.sweep import dead_runs, dead_sessions, sweep_dead_runs, sweep_dead_sessions
from pytest_flake.vm import VM, LocalLauncher, VMConfig
from pytest_flake.vm.seed import KeyPair
from pytest_flake.vm.warm import WarmStore
from pytest_flake.xdist import Run

SYSTEM = "x86_64-linux"


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the run directory ----------------------------------------------------------------------
def test_the_run_is_named_after_the_uid_and_made_on_first_use(tmp_path: Path) -> None:
    run = Run.for_uid("0123abcd", tmp_path)
    assert run.dir == tmp_path / "runs" / "0123abcd"
    assert not run.dir.exists()  # the controller only names it: a run that never uses the plugin leaves nothing
    run.ensure()
    pid, started = (run.dir / "pid").read_text().split(" ")
    assert int(pid) == os.getpid() and started == start_time(os.getpid())
    run.ensure()  # idempotent
    run.remove()
    assert not run.dir.exists()


def test_a_uid_with_odd_characters_becomes_one_safe_name(tmp_path: Path) -> None:
    run = Run.for_uid("../x y", tmp_path)
    assert run.dir.parent == tmp_path / "runs" and "/" not in run.dir.name and ".." != run.dir.name


def test_workers_join_the_controllers_run_through_workerinput(tmp_path: Path) -> None:
    controller = Run.for_uid("abc", tmp_path)
    workerinput = {"testrunuid": "abc", xdist.WORKERINPUT_KEY: controller.workerinput()}
    joined = Run.from_workerinput(workerinput)
    assert joined is not None
    assert joined.dir == controller.dir and joined.controller == controller.controller
    assert Run.from_workerinput({"testrunuid": "abc"}) is None  # an older controller: no shared run


def test_a_worker_on_another_machine_does_not_share(tmp_path: Path) -> None:
    data = Run.for_uid("abc", tmp_path).workerinput() | {"host": "another-machine.example"}
    assert Run.from_workerinput({xdist.WORKERINPUT_KEY: data}) is None


# --- the build cache ------------------------------------------------------------------------
def test_once_makes_a_value_once_and_siblings_read_it(tmp_path: Path) -> None:
    run = Run.for_uid("r1", tmp_path)
    calls: list[str] = []

    def make() -> dict[str, Any]:
        calls.append("made")
        time.sleep(0.3)  # long enough for the sibling to be waiting on the lock
        return {"out": "/nix/store/x"}

    results: list[tuple[dict[str, Any], bool]] = []
    threads = [threading.Thread(target=lambda: results.append(run.once("k", make))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["made"]
    assert sorted(shared for _, shared in results) == [False, True]
    assert all(value == {"out": "/nix/store/x"} for value, _ in results)
    assert json.loads((run.builds / "k.json").read_text()) == {"out": "/nix/store/x"}


def test_once_makes_again_what_is_no_longer_valid_and_keeps_nothing_on_failure(tmp_path: Path) -> None:
    run = Run.for_uid("r2", tmp_path)
    run.once("k", lambda: {"n": 1})
    assert run.once("k", lambda: {"n": 2}, valid=lambda v: v["n"] == 2) == ({"n": 2}, False)

    def fail() -> dict[str, Any]:
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        run.once("other", fail)
    assert not (run.builds / "other.json").exists()
    assert run.once("other", lambda: {"n": 3}) == ({"n": 3}, False)


class RecordingNix:
    """A stand-in for the nix command: counts builds and answers like ``nix build --json``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.builds: list[list[str]] = []

    def current_system(self) -> str:
        return SYSTEM

    def stream(self, args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.builds.append(args)
        link = args[args.index("--out-link") + 1]
        Path(link).symlink_to(self.out)
        stdout = json.dumps([{"drvPath": "/nix/store/a.drv", "outputs": {"out": str(self.out)}}])
        return subprocess.CompletedProcess(args, 0, stdout, "")


def worker_flake(tmp_path: Path, run: Run, nix: RecordingNix, facts: list[tuple[str, str]]) -> Flake:
    flake_dir = tmp_path / "flake"
    flake_dir.mkdir(exist_ok=True)
    (flake_dir / "flake.nix").write_text("{ outputs = _: { }; }\n")
    return Flake(f"path:{flake_dir}", nix=nix, system=SYSTEM,  # type: ignore[arg-type]
                 options=FlakeOptions(
                     run=run, bindings=[Binding(on_fact=lambda name, value: facts.append((name, value)))]))


def test_the_second_worker_reads_the_build_and_does_not_call_nix(tmp_path: Path) -> None:
    out = tmp_path / "store-path"
    out.mkdir()
    run = Run.for_uid("r3", tmp_path / "state")
    first, second = RecordingNix(out), RecordingNix(out)
    first_facts: list[tuple[str, str]] = []
    second_facts: list[tuple[str, str]] = []
    built = worker_flake(tmp_path, run, first, first_facts).build("docker")
    shared = worker_flake(tmp_path, run, second, second_facts).build("docker")
    assert len(first.builds) == 1 and second.builds == []
    assert first.builds[0][first.builds[0].index("--out-link") + 1].startswith(str(run.gcroots))  # rooted per run
    assert not built.shared and shared.shared
    assert shared == built  # shared is not part of the comparison
    assert shared.out == out and shared.outputs == {"out": out} and shared.drv == Path("/nix/store/a.drv")
    installable = f"path:{tmp_path / 'flake'}#packages.{SYSTEM}.docker"
    assert first_facts == [(f"nix build {installable}", str(out))]
    assert second_facts == [(f"nix build {installable}", str(out)),
                            (f"nix build {installable} shared", f"built by a sibling worker of run {run.id}")]


def test_a_build_whose_store_path_is_gone_is_built_again(tmp_path: Path) -> None:
    out = tmp_path / "store-path"
    out.mkdir()
    run = Run.for_uid("r4", tmp_path / "state")
    worker_flake(tmp_path, run, RecordingNix(out), []).build()
    data = json.loads(next(run.builds.glob("*.json")).read_text())
    data["outputs"]["out"] = str(tmp_path / "collected")
    next(run.builds.glob("*.json")).write_text(json.dumps(data))
    again = RecordingNix(out)
    (run.gcroots / next(run.gcroots.iterdir()).name).unlink()
    build = worker_flake(tmp_path, run, again, []).build()
    assert len(again.builds) == 1 and not build.shared


def test_build_json_round_trip() -> None:
    build = Build(attr="packages.x.docker", out=Path("/nix/store/o"), outputs={"out": Path("/nix/store/o")},
                  drv=Path("/nix/store/d.drv"), seconds=1.5)
    again = Build.from_json(json.loads(json.dumps(build.to_json())), shared=True)
    assert again == build and again.seconds == 1.5 and again.shared


# --- the sweep ------------------------------------------------------------------------------
def test_the_run_of_a_dead_controller_is_swept_and_a_live_one_kept(tmp_path: Path) -> None:
    live = Run.for_uid("live", tmp_path).ensure()
    dead = Run(tmp_path / "runs" / "dead", (dead_pid(), "")).ensure()
    (dead.gcroots).mkdir(parents=True)
    (dead.gcroots / "link").symlink_to("/nix/store/nothing")
    recycled = Run(tmp_path / "runs" / "recycled", (os.getpid(), "1")).ensure()  # a pid reused by another process
    assert dead_runs(tmp_path) == [dead.dir, recycled.dir]
    assert sorted(sweep_dead_runs(tmp_path)) == ["dead", "recycled"]
    assert live.dir.is_dir() and not dead.dir.exists() and not recycled.dir.exists()


def test_a_worker_never_sweeps_the_run_of_its_live_controller(tmp_path: Path) -> None:
    """The sweep a worker's session runs keeps the run its controller (alive) owns, and its own."""
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = Run(tmp_path / "runs" / "uid", (controller.pid, start_time(controller.pid))).ensure()
        with Session(root=tmp_path) as session:
            sweep_dead_sessions(session, None, run)
            assert run.dir.is_dir()
        controller.kill()
        controller.wait()
        assert dead_runs(tmp_path) == [run.dir]
        assert dead_runs(tmp_path, keep=run.dir) == []
    finally:
        controller.kill()
        controller.wait()


def test_a_run_directory_without_registration_is_left_alone_for_a_while(tmp_path: Path) -> None:
    young = tmp_path / "runs" / "young"
    young.mkdir(parents=True)
    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    assert dead_runs(tmp_path) == [old]


def test_sibling_workers_are_live_sessions_that_no_sweep_touches(tmp_path: Path) -> None:
    """Each worker is a Session of its own pid: a sibling's registration is never "dead" while it runs."""
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
              "from pathlib import Path\nfrom pytest_flake.session import Session\n"
              f"s = Session(root=Path({str(tmp_path)!r}), session_id='pf-sibling1').__enter__()\n"
              "print('ready', flush=True)\ntime.sleep(60)\n")
    sibling = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert sibling.stdout is not None and sibling.stdout.readline().strip() == "ready"
        with Session(root=tmp_path, session_id="pf-worker00") as worker:
            assert (tmp_path / "sessions" / "pf-sibling1" / "pid").is_file()
            assert dead_sessions(worker) == []
            sibling.kill()
            sibling.wait()
            assert dead_sessions(worker) == ["pf-sibling1"]
    finally:
        sibling.kill()
        sibling.wait()


# --- the xdist group ------------------------------------------------------------------------
def test_group_for_markers() -> None:
    assert plugin.group_for({"vm", "portable", "nix"}) == "pytest-flake-vm"
    assert plugin.group_for({"nspawn", "portable"}) == "pytest-flake-nspawn"
    assert plugin.group_for({"vm", "nspawn"}) == "pytest-flake-vm"
    assert plugin.group_for({"docker", "nix"}) is None


# --- one cold boot per warm-state key -------------------------------------------------------
class FakePlatform:
    def __init__(self, disk: Path) -> None:
        self.disk = disk

    def image(self, spec: str) -> Image:
        return Image(name=spec, disk=self.disk, key="k1")

    def accel(self, image: Image) -> str:
        return "tcg"

    def kvm_trial_result(self, works: bool, why: str) -> str:
        return "tcg"

    def warm_key(self, image: Image, memory: int, cpus: int, accel: str, disk_size: int = 0) -> dict[str, Any]:
        return {"disk": str(image.disk), "memory": memory, "cpus": cpus, "accel": accel, "uri": "test:///"}

    def prepare_files(self, image: Image | None, *own: Path) -> None:
        pass

    def seclabel(self) -> str | None:
        return None

    def remote_host(self) -> None:  # libvirt on this machine
        return None


class BootRecordingVM(VM):
    """A VM whose boot, save and restore are recorded instead of run (the warm store is real)."""

    events: list[tuple[str, str]]
    booting: threading.Event

    def _cold_boot(self, image: Image, accel: str, *, trial: bool = False) -> bool:
        self.events.append(("cold boot", self.name))
        self.booting.set()
        time.sleep(0.5)  # the sibling starts the same VM meanwhile
        self.ssh_port = 1
        self.keys = KeyPair(private=self.dir / "key", public="ssh-ed25519 AAAA test")
        return True

    def _save_for_later(self, key: dict[str, Any], boot_seconds: float) -> None:
        assert self.store is not None
        with self.store.create(key, self.config.session_id) as tmp:
            if tmp is None:
                self.events.append(("save skipped", self.name))
                return
            for name in ("state.save", "overlay.qcow2", "id_ed25519", "id_ed25519.pub"):
                (tmp / name).write_text(name)
            self.store.publish(tmp, key, hostkeys=(), boot_seconds=boot_seconds, session_id=self.config.session_id)
            self.events.append(("save", self.name))

    def _restore(self, state: Any) -> None:
        self.events.append(("restore", self.name))
        self.ssh_port = 2


def test_two_workers_starting_the_same_vm_boot_it_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = tmp_path / "debian.qcow2"
    disk.write_text("disk")
    store = WarmStore(tmp_path / "warm")
    events: list[tuple[str, str]] = []
    booting = threading.Event()

    def make(name: str, session: str) -> BootRecordingVM:
        config = VMConfig(name=name, dir=tmp_path, session_id=session, image="debian", memory=1024, cpus=1,
                          disk_size=0, timeout=10.0)
        keys = KeyPair(private=tmp_path / "key", public="ssh-ed25519 AAAA test")
        machine = BootRecordingVM(config, launcher=LocalLauncher(config, lambda: None), store=store,
                                  keys=lambda: keys, platform=FakePlatform(disk))
        machine.events, machine.booting = events, booting
        return machine

    first, second = make("pf-aaaa-vm-1", "pf-aaaa"), make("pf-bbbb-vm-1", "pf-bbbb")
    caplog.set_level("INFO", logger="pytest_flake")
    thread = threading.Thread(target=first.start)
    thread.start()
    assert booting.wait(10)
    second.start()  # starts while the first boots: waits for it, then restores what it saved
    thread.join()
    assert events == [("cold boot", "pf-aaaa-vm-1"), ("save", "pf-aaaa-vm-1"), ("restore", "pf-bbbb-vm-1")]
    assert not first.warm and second.warm
    assert "vm://pf-bbbb-vm-1: another session boots the same VM; waiting to restore its warm state" in caplog.text


# --- one image load per run -----------------------------------------------------------------
class LoadRecordingDocker(Docker):
    """A daemon stand-in shared by two workers: it holds the image once somebody loaded it."""

    def __init__(self, held: set[str], loads: list[str], run: Run, url: str = "unix:///fake.sock") -> None:
        super().__init__(url, session_id="pf-test", cache_dir=Path("/nonexistent"), run=run)
        self.held, self.loads = held, loads

    def has_image(self, ref: str) -> dict[str, Any] | None:
        return {"RepoTags": ["web-server:1.0"]} if ref in self.held else None

    def known_layers(self) -> set[str]:
        return set()

    def _load(self, archive: Archive) -> None:
        self.loads.append(archive.id)
        time.sleep(0.3)  # the sibling asks meanwhile
        self.held.add(archive.id)


def test_two_workers_load_an_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Archive(path=tmp_path / "image.tar.gz", kind="tar", compression="gzip", id="sha256:" + "a" * 64,
                      tags=("web-server:1.0",), diff_ids=("sha256:" + "b" * 64,))
    monkeypatch.setattr("pytest_flake.docker.daemon.inspect_archive", lambda path, cache: archive)
    run = Run.for_uid("r5", tmp_path / "state")
    held: set[str] = set()
    loads: list[str] = []
    images: list[Any] = []
    workers = [LoadRecordingDocker(held, loads, run), LoadRecordingDocker(held, loads, run)]
    threads = [threading.Thread(target=lambda d=docker: images.append(d.image(archive.path))) for docker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [archive.id]
    assert sorted(image.loaded for image in images) == [False, True]
    # another daemon is another load: the lock is per daemon and image
    other: list[str] = []
    LoadRecordingDocker(set(), other, run, url="ssh://elsewhere").image(archive.path)
    assert other == [archive.id]
