"""The SSH layer against a fake ``ssh`` program: argv, control socket, forwards, errors, the sweep.

The real ssh to a real sshd is tested in tests/integration/test_remote_docker.py (the other host).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_flake import SSHError
from pytest_flake.components import components
from pytest_flake.nodestate import SESSION_KEY, end_session
from pytest_flake.process import sweep
from pytest_flake.session import Session, alive
from pytest_flake.tunnel import SSHHost, classify, close_all, parse_target, short_socket_path, ssh_host

FAKE_SSH = r'''
import json, os, signal, socket, sys, time
calls = os.environ["FAKE_SSH_CALLS"]
with open(calls, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
mode = os.environ.get("FAKE_SSH_MODE", "ok")
ctl = args[args.index("-S") + 1]
if "ControlMaster=yes" in args:
    if mode == "hostkey":
        sys.stderr.write("No ED25519 host key is known for box and you have requested strict checking.\n"
                         "Host key verification failed.\n")
        sys.exit(255)
    if mode == "auth":
        sys.stderr.write("root@box: Permission denied (publickey).\n")
        sys.exit(255)
    server = socket.socket(socket.AF_UNIX)
    server.bind(ctl)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.05)
        if os.path.exists(ctl + ".exit"):
            os.unlink(ctl)
            os.unlink(ctl + ".exit")
            sys.exit(0)
if "-O" in args:
    op = args[args.index("-O") + 1]
    if not os.path.exists(ctl):
        sys.stderr.write(f"Control socket connect({ctl}): No such file or directory\n")
        sys.exit(255)
    if op == "forward" and mode == "forward-fails":
        sys.stderr.write("mux_client_forward: forwarding request failed: Port forwarding failed\n")
        sys.exit(255)
    if op == "exit":
        open(ctl + ".exit", "w").close()
        sys.stderr.write("Exit request sent.\n")
    sys.exit(0)
sys.stdout.write("ran: " + args[-1] + "\n")
sys.stdout.write(sys.stdin.read())
sys.exit(int(os.environ.get("FAKE_SSH_RC", "0")))
'''


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "ssh"
    program.write_text(f"#!{sys.executable}\n{FAKE_SSH}")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_CALLS", str(calls))
    yield calls
    for directory in {pid.parent for pid in tmp_path.rglob("*.pid")}:  # a failed test's masters end too
        sweep(directory)


def calls_of(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_master_forwards_and_close(fake_ssh: Path, tmp_path: Path) -> None:
    control = tmp_path / "s"
    host = SSHHost("root@box:2222", control_dir=control, timeout=5).open()
    master = calls_of(fake_ssh)[0]
    for needed in (["-o", "BatchMode=yes"], ["-o", "ExitOnForwardFailure=yes"], ["-o", "ControlMaster=yes"],
                   ["-S", str(host.control_path)], ["-p", "2222"]):
        assert any(master[i:i + len(needed)] == needed for i in range(len(master))), (needed, master)
    assert master[-2:] == ["-N", "root@box"]
    assert host.control_path.parent == control or host.control_path.parent.name.startswith("pf-ssh-")
    pid_files = list(control.glob("*.pid"))
    assert len(pid_files) == 1 and alive(int(pid_files[0].stem), pid_files[0].read_text())

    local = host.forward(8080)
    assert host.forward(8080) == local  # one forward per remote port
    assert host.forwards == {8080: local}
    forward = calls_of(fake_ssh)[-1]
    assert forward[forward.index("-O"):] == ["-O", "forward", "-L", f"127.0.0.1:{local}:127.0.0.1:8080", "root@box"]
    assert "ControlMaster=no" in forward
    sock = host.forward_socket("/var/run/docker.sock")
    assert calls_of(fake_ssh)[-1][-3:] == ["-L", f"{sock}:/var/run/docker.sock", "root@box"]

    host.cancel(8080)
    assert host.forwards == {}
    assert calls_of(fake_ssh)[-1][-4:] == ["cancel", "-L", f"127.0.0.1:{local}:127.0.0.1:8080", "root@box"]
    pid = int(pid_files[0].stem)
    host.close()
    ops = [c[c.index("-O") + 1] for c in calls_of(fake_ssh) if "-O" in c]
    assert ops[-2:] == ["cancel", "exit"]  # the socket forward is cancelled, then the master ends
    assert not alive(pid)
    assert not list(control.glob("*.pid")) and not host.control_path.exists() and not sock.exists()
    assert host.control_path.parent == control or not host.control_path.parent.exists()  # a short folder goes
    host.close()  # idempotent


def test_run_quotes_for_the_remote_shell(fake_ssh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SSHHost("box", control_dir=tmp_path, timeout=5) as host:
        done = host.run(["echo", "a b", "$HOME"], input=b"fed")
        assert done.stdout == "ran: echo 'a b' '$HOME'\nfed"
        monkeypatch.setenv("FAKE_SSH_RC", "3")
        assert host.run(["false"]).returncode == 3  # the command's code is the caller's to judge


@pytest.mark.parametrize(("mode", "words"), [
    ("hostkey", ["box", "host key is not known", "known_hosts"]),
    ("auth", ["box", "authentication refused", "BatchMode=yes"]),
])
def test_master_failure_is_one_clear_line(fake_ssh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          mode: str, words: list[str]) -> None:
    monkeypatch.setenv("FAKE_SSH_MODE", mode)
    host = SSHHost("root@box", control_dir=tmp_path, timeout=5)
    with pytest.raises(SSHError) as info:
        host.open()
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)
    assert not list(tmp_path.glob("*.pid")) and not host.is_open  # nothing left behind


def test_forward_failure_is_an_error(fake_ssh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SSHHost("box", control_dir=tmp_path, timeout=5) as host:
        monkeypatch.setenv("FAKE_SSH_MODE", "forward-fails")
        with pytest.raises(SSHError, match="could not forward .* Port forwarding failed"):
            host.forward(80)
        assert host.forwards == {}


def test_sweep_ends_a_killed_sessions_master(fake_ssh: Path, tmp_path: Path) -> None:
    session_id = "pf-" + "0" * 90  # a long session path: the sockets live in a short folder of the temp dir
    host = SSHHost("box", control_dir=tmp_path / "sessions" / session_id, timeout=5).open()
    assert host._proc is not None and host.control_path.parent != host.control_dir
    pid = host._proc.pid
    for component in components(names=("process", "ssh")):  # the masters' records, then their sockets
        component.sweep([session_id], tmp_path)
    deadline = time.monotonic() + 5
    while host._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not host.control_path.parent.exists()
    host.close()


def test_the_end_of_the_run_closes_the_sessions_masters(fake_ssh: Path, tmp_path: Path) -> None:
    """The pytest side ends a session: its ssh masters (remote Docker, libvirt) first, then its directory."""
    config = SimpleNamespace(stash=pytest.Stash())
    session = Session(root=tmp_path).__enter__()
    config.stash[SESSION_KEY] = session
    host = ssh_host("ssh://root@box", control_dir=session.dir).open()
    pid = host._proc.pid if host._proc is not None else 0
    end_session(config)  # type: ignore[arg-type]
    assert not host.is_open and not alive(pid)
    assert not session.dir.exists()


def test_the_process_records_are_the_masters(fake_ssh: Path, tmp_path: Path) -> None:
    with SSHHost("box", control_dir=tmp_path, timeout=5):
        assert sweep(tmp_path) == 1


def test_shared_hosts_and_close_all(fake_ssh: Path, tmp_path: Path) -> None:
    one = ssh_host("ssh://root@box", control_dir=tmp_path)
    assert ssh_host("ssh://root@box", control_dir=tmp_path) is one
    assert ssh_host("root@box", control_dir=tmp_path) is one  # the same host as a target shares the master
    assert ssh_host("ssh://root@other", control_dir=tmp_path) is not one
    one.open()
    close_all(tmp_path)
    assert not one.is_open
    assert ssh_host("ssh://root@box", control_dir=tmp_path) is not one


def test_urls_and_targets(tmp_path: Path) -> None:
    host = SSHHost.from_url("qemu+ssh://root@kvm-box:2200/system?keyfile=/k/id&known_hosts=/k/kh&no_verify=1",
                            control_dir=tmp_path)
    assert (host.user, host.host, host.port, host.identity) == ("root", "kvm-box", 2200, "/k/id")
    assert host.options == ["UserKnownHostsFile=/k/kh", "StrictHostKeyChecking=no"]
    argv = host._argv("x")
    assert argv[argv.index("-i") + 1] == "/k/id" and argv[argv.index("-p") + 1] == "2200"
    plain = SSHHost.from_url("ssh://builder", control_dir=tmp_path)
    assert (plain.user, plain.host, plain.port, plain.identity) == (None, "builder", None, None)
    assert parse_target("u@h:22") == ("u", "h", 22)
    for bad in ("", "u@", "h:x", "a b"):
        with pytest.raises(SSHError):
            parse_target(bad)
    for bad_url in ("http://h", "ssh://"):
        with pytest.raises(SSHError):
            SSHHost.from_url(bad_url, control_dir=tmp_path)


def test_classify() -> None:
    changed = classify("box", "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.",
                       255)
    assert "changed" in str(changed) and "ssh-keygen -R box" in str(changed)
    refused = classify("box", "ssh: connect to host box port 22: Connection refused", 255)
    assert "unreachable" in str(refused) and "Connection refused" in str(refused)
    other = classify("box", "kex_exchange_identification: something odd", 255)
    assert "something odd" in str(other) and "ssh box true" in str(other)
    for err in (changed, refused, other):
        assert "\n" not in str(err)


def test_socket_paths_stay_short(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = short_socket_path(deep, "ssh-0123456789ab.ctl")
    assert len(os.fsencode(path)) <= 88 and path.parent.name.startswith("pf-ssh-")
    assert not path.parent.exists()  # made by whoever binds there
    path.parent.mkdir(mode=0o700)
    assert short_socket_path(deep, "ssh-0123456789ab.ctl") == path
    assert short_socket_path(Path("/tmp/x"), "a.sock") == Path("/tmp/x/a.sock")
    try:
        with socket.socket(socket.AF_UNIX) as server:  # the kernel takes it
            server.bind(str(path) + ".abcdefghijklmnop")
        os.unlink(str(path) + ".abcdefghijklmnop")
    finally:
        path.parent.rmdir()


def test_check_names_what_no_wait_cures(fake_ssh: Path, tmp_path: Path) -> None:
    host = SSHHost("box", control_dir=tmp_path, timeout=5).open()
    host.check()  # a working master: nothing to say
    assert host._log is not None
    with host._log.open("a") as log:  # what ssh writes when the server forbids a forward
        log.write("channel 3: open failed: administratively prohibited: open failed\n")
    with pytest.raises(SSHError, match="refuses forwarding.*AllowTcpForwarding"):
        host.check()
    host._log.write_text("")
    assert host._proc is not None
    host._proc.kill()
    host._proc.wait()
    with pytest.raises(SSHError, match="master connection ended"):
        host.check()
    with pytest.raises(SSHError, match="not open"):
        host._control("-O", "check", what="check")
    host.close()


def test_a_port_forwarded_again_keeps_its_local_port(fake_ssh: Path, tmp_path: Path) -> None:
    with SSHHost("box", control_dir=tmp_path, timeout=5) as host:
        first = host.forward(3031)
        host.cancel(3031)
        assert host.forward(3031) == first  # a container back on the same port keeps its URL
        assert host.forward(3032) != first


def test_docker_over_ssh_talks_to_the_forwarded_socket(fake_ssh: Path, tmp_path: Path) -> None:
    from pytest_flake import DockerError
    from pytest_flake.docker import Docker

    docker = Docker("ssh://root@box", source="$DOCKER_HOST", control_dir=tmp_path)
    with pytest.raises(DockerError) as info:  # the fake forwards to nothing: no daemon answers there
        docker.connect(timeout=2)
    assert "ssh connection works, but /var/run/docker.sock on box does not answer" in str(info.value)
    assert docker.api_url.startswith("unix://") and docker.api_url.endswith(".sock")
    forwards = [c for c in calls_of(fake_ssh) if "forward" in c]
    assert forwards and forwards[0][-2] == f"{docker.api_url[len('unix://'):]}:/var/run/docker.sock"
    assert docker.remote is not None
    assert docker.reach(3031) == docker.remote.forwards[3031] != 3031
    docker.release(3031)
    assert docker.remote.forwards == {}
    docker.close()
    assert not Path(docker.api_url[len("unix://"):]).exists()
    close_all(tmp_path)
    assert not list(tmp_path.glob("*.pid"))


def test_a_local_daemon_needs_no_tunnel(tmp_path: Path) -> None:
    from pytest_flake.docker import Docker

    docker = Docker("unix:///nonexistent/docker.sock", control_dir=tmp_path)
    assert not docker.is_remote and docker.reach(3031) == 3031
    docker.release(3031)  # nothing to do


def test_the_doctor_says_why_ssh_to_the_docker_host_failed(fake_ssh: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_flake.config import Settings
    from pytest_flake.docker import component

    monkeypatch.setenv("FAKE_SSH_MODE", "auth")
    monkeypatch.setenv("DOCKER_HOST", "ssh://root@box")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    settings = Settings.resolve(lambda name: None, lambda name: None, tmp_path)
    checks = component(settings).doctor(settings)
    assert checks[-1][0] is False and "ssh to box: authentication refused" in checks[-1][1]
    component(settings).sweep(["pf-00000000"], tmp_path)  # quiet: the sweep only logs it
    assert list((tmp_path / "tmp").iterdir()) == []  # the doctor's and the sweep's own ssh folders are gone
