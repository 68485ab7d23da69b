"""The guest agent's channel without a VM: framing against a fake agent end in a socketpair (partial
reads, binary, a timeout, a lost connection), the real agent script under this machine's bash, the
port in the domain XML and in a restore."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_flake import vm
from pytest_flake.errors import CheckTimeout, VMError
from pytest_flake.vm.channel import (
    AGENT_SCRIPT,
    GUEST_PORT,
    AgentLink,
    Channel,
    _Frames,
    encode_request,
    install_command,
    parse_header,
    secure_socket,
    timed_command,
    usable_socket_path,
)
from pytest_flake.vm.common import AGENT_PORT

from .test_vm_parts import boot_spec

Answer = Callable[[int, bytes], bytes | None]  # (id, command) -> the bytes the fake agent sends back


def answer(ident: int, rc: int = 0, out: bytes = b"", err: bytes = b"", state: bytes = b"ok") -> bytes:
    return b"%d %d %d %d %s\n" % (ident, rc, len(out), len(err), state) + out + err


class FakeAgent:
    """The guest's end in a thread: reads framed requests, sends what ``respond`` makes of each, in pieces."""

    def __init__(self, sock: socket.socket, respond: Answer, piece: int = 0) -> None:
        self.sock, self.respond, self.piece = sock, respond, piece
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            while True:
                header = b""
                while not header.endswith(b"\n"):
                    header += self._read(1)
                ident, _, length = (int(f) for f in header.split())
                command = self._read(length)
                self.commands.append(command)
                reply = self.respond(ident, command)
                if reply is None:
                    continue  # never answers
                if reply == b"CLOSE":
                    self.sock.close()
                    return
                step = self.piece or len(reply) or 1
                for start in range(0, len(reply), step):
                    self.sock.sendall(reply[start:start + step])
        except (EOFError, OSError):
            return


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    host, guest = socket.socketpair()
    yield host, guest
    host.close()
    guest.close()


def channel_on(sock: socket.socket, grace: float = 5.0) -> Channel:
    return Channel("pf-test-vm-1", Path("unused"), grace=grace, connect=lambda path: sock)


def test_frames() -> None:
    assert encode_request(7, None, b"echo ok") == b"7 0 7\necho ok"
    assert encode_request(7, 1.5, b"") == b"7 1500 0\n"
    assert parse_header(b"7 3 10 0 timeout") == (7, 3, 10, 0, True)
    for bad in (b"7 3 10 0", b"7 x 10 0 ok", b"7 3 10 0 maybe", b""):
        with pytest.raises(ValueError):
            parse_header(bad)
    with pytest.raises(VMError, match="NUL"):
        encode_request(1, None, b"printf a\0b")


def test_answers_read_in_pieces_are_byte_exact(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    binary = bytes(range(256)) * 3 + b"\n\0\n"
    FakeAgent(guest, lambda ident, cmd: answer(ident, 3, binary, b"err\n") if cmd != b":" else answer(ident),
              piece=7)
    channel = channel_on(host)
    channel.open(5)
    reply = channel.run("cat /bin/true")
    assert (reply.rc, reply.stdout, reply.stderr, reply.timed_out) == (3, binary, b"err\n", False)


def test_open_skips_what_an_earlier_connection_left(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    guest.sendall(b"tail of an old answer\n\xff\0garbage" + answer(5, 0, b"old"))

    def respond(ident: int, cmd: bytes) -> bytes:
        return answer(ident, 0, b"" if cmd == b":" else b"new\n")

    FakeAgent(guest, respond)
    channel = channel_on(host)
    channel.open(5)
    assert channel.run("echo new").stdout == b"new\n"


def test_open_asks_again_when_a_restored_guest_lost_the_first_request(pair: tuple[socket.socket, socket.socket],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest just restored may drop what reached its port first: the empty command goes again."""
    monkeypatch.setattr("pytest_flake.vm.channel.PING_EVERY", 0.2)
    host, guest = pair
    seen: list[int] = []

    def respond(ident: int, cmd: bytes) -> bytes | None:
        seen.append(ident)
        return None if len(seen) < 3 else answer(ident)  # the first two are lost

    agent = FakeAgent(guest, respond)
    channel = channel_on(host)
    channel.open(5)
    assert agent.commands == [b":"] * 3 and seen == sorted(set(seen))
    mute, silent = socket.socketpair()  # nobody ever answers: still a timeout in the end
    with mute, silent, pytest.raises(CheckTimeout, match="did not answer ':'"):
        channel_on(mute).open(0.5)


def test_agent_timeout_answer_and_the_next_command(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair

    def respond(ident: int, cmd: bytes) -> bytes:
        if cmd.startswith(b"sleep"):
            return answer(ident, 137, b"before\n", state=b"timeout")
        return answer(ident, 0, b"ok\n")

    FakeAgent(guest, respond)
    channel = channel_on(host)
    channel.open(5)
    reply = channel.run("sleep 100", timeout=0.5)
    assert reply.timed_out and reply.rc == 137 and reply.stdout == b"before\n"
    assert channel.run("echo ok").stdout == b"ok\n"


def test_no_answer_times_out_and_the_channel_opens_again(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    FakeAgent(guest, lambda ident, cmd: None if cmd.startswith(b"hang") else answer(ident, 0, b"ok\n"))
    channel = channel_on(host, grace=0.2)
    channel.open(5)
    with pytest.raises(CheckTimeout, match="pf-test-vm-1.*did not answer 'hang'"):
        channel.run("hang", timeout=0.1)
    assert not channel.connected
    host2, guest2 = socket.socketpair()
    try:
        FakeAgent(guest2, lambda ident, cmd: answer(ident, 0, b"ok\n"))
        channel._connect = lambda path: host2
        channel.open(5)
        assert channel.run("echo ok").stdout == b"ok\n"
    finally:
        host2.close()
        guest2.close()


def test_lost_connection_is_a_vm_error_naming_the_vm(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    FakeAgent(guest, lambda ident, cmd: b"CLOSE" if cmd == b"boom" else answer(ident))
    channel = channel_on(host)
    channel.open(5)
    with pytest.raises(VMError, match="vm://pf-test-vm-1: the agent's channel broke: EOFError"):
        channel.run("boom")
    assert not channel.connected
    with pytest.raises(VMError, match="not connected"):
        channel.run("echo")


def test_half_an_answer_then_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    FakeAgent(guest, lambda ident, cmd: answer(ident) if cmd == b":" else answer(ident, 0, b"x" * 100)[:40])
    channel = channel_on(host)
    channel.open(5)
    threading.Timer(0.3, guest.shutdown, args=(socket.SHUT_RDWR,)).start()
    with pytest.raises(VMError, match="broke"):
        channel.run("head -c 100 /dev/zero")


def test_commands_from_threads_take_turns(pair: tuple[socket.socket, socket.socket]) -> None:
    host, guest = pair
    FakeAgent(guest, lambda ident, cmd: answer(ident, 0, cmd), piece=3)
    channel = channel_on(host)
    channel.open(5)
    got: dict[int, bytes] = {}

    def worker(n: int) -> None:
        for i in range(20):
            got[n * 100 + i] = channel.run(f"echo {n} {i}").stdout

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {n * 100 + i: f"echo {n} {i}".encode() for n in range(4) for i in range(20)}


# ---- the real agent script, under this machine's bash, on one end of a socketpair


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Channel]:
    host, guest = socket.socketpair()
    env = {**os.environ, "PYTEST_FLAKE_AGENT_DIR": str(tmp_path / "agent"), "HOME": str(tmp_path)}
    process = subprocess.Popen(["bash", "-c", 'exec 3<&0 0</dev/null; exec bash "$0" fd', str(AGENT_SCRIPT)],
                               stdin=guest.fileno(), env=env, stderr=subprocess.DEVNULL)
    guest.close()
    channel = channel_on(host)
    channel.open(10)
    yield channel
    channel.close()
    process.wait(10)


def test_agent_script_separates_outputs_and_exit_codes(agent: Channel) -> None:
    reply = agent.run("echo out; echo err >&2; exit 3")
    assert (reply.rc, reply.stdout, reply.stderr) == (3, b"out\n", b"err\n")
    assert agent.run("read x; echo \"[$x]\"").stdout == b"[]\n"  # stdin is /dev/null
    assert agent.run("printf %s \"$LC_ALL\"").stdout == b""  # the agent's byte locale stays its own


def test_agent_script_is_byte_exact(agent: Channel, tmp_path: Path) -> None:
    every = "".join(f"\\{c:03o}" for c in range(256))
    assert agent.run(f"printf '{every}'").stdout == bytes(range(256))  # NUL: the slow path
    assert agent.run(f"printf '{every[4:]}' >&2").stderr == bytes(range(1, 256))  # no NUL: the fast path
    reply = agent.run(f"head -c 1000000 /dev/urandom | tee {tmp_path}/x; sha256sum {tmp_path}/x >&2")
    assert len(reply.stdout) == 1000000
    assert reply.stderr.split()[0].decode() == hashlib.sha256(reply.stdout).hexdigest()
    assert agent.run("printf 'a\\n\\n'").stdout == b"a\n\n"


def test_agent_script_kills_a_command_past_its_timeout(agent: Channel) -> None:
    reply = agent.run("echo before; sleep 30 & sleep 30; echo after", timeout=0.5)
    assert reply.timed_out and reply.rc == 137 and reply.stdout == b"before\n"
    assert agent.run("echo ok").stdout == b"ok\n"
    assert not agent.run("true", timeout=5).timed_out


def test_agent_script_cleans_its_files(agent: Channel, tmp_path: Path) -> None:
    for _ in range(70):
        agent.run("true")
    assert agent.run("sleep 0.2; ls " + str(tmp_path / "agent") + " | wc -l").stdout.strip().isdigit()
    assert len(os.listdir(tmp_path / "agent")) < 2 * 64


# ---- the domain, the socket, the way commands go


def test_boot_xml_has_the_agent_port_and_a_restore_moves_its_socket(tmp_path: Path) -> None:
    plain = ET.fromstring(vm.boot_xml(boot_spec(tmp_path)))
    assert plain.find("devices/channel") is None
    xml = vm.boot_xml(boot_spec(tmp_path, agent=tmp_path / "vm-1.agent"))
    channel = ET.fromstring(xml).find("devices/channel")
    assert channel is not None and channel.get("type") == "unix"
    assert channel.find("source").attrib == {"mode": "bind", "path": str(tmp_path / "vm-1.agent")}  # type: ignore
    assert channel.find("target").attrib == {"type": "virtio", "name": AGENT_PORT}  # type: ignore[union-attr]
    restored = ET.fromstring(vm.restore_xml(xml, name="vm-2", overlay=tmp_path / "o2", console=tmp_path / "c2",
                                            netdev=vm.netdev(2223), agent=tmp_path / "vm-2.agent"))
    assert restored.find("devices/channel/source").get("path") == str(tmp_path / "vm-2.agent")  # type: ignore


def test_socket_is_made_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "vm.agent"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        os.chmod(path, 0o777)
        secure_socket(path)
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    finally:
        server.close()


def test_socket_paths_too_long_get_no_port(tmp_path: Path) -> None:
    assert usable_socket_path(tmp_path / "a.agent") == tmp_path / "a.agent"
    assert usable_socket_path(Path("/" + "d" * 120) / "a.agent") is None
    link = AgentLink("pf-x-vm-1", None, 30)
    assert link.kind == "ssh" and link.run("true", None) is None and link.connect() == "ssh"
    assert not link.install(lambda cmd: SimpleNamespace(rc=0, stderr=""), lambda local, remote: None)


def test_install_failure_says_why_and_stays_on_ssh(tmp_path: Path) -> None:
    link = AgentLink("pf-x-vm-1", tmp_path / "vm.agent", 30)
    copied: list[tuple[Path, str]] = []
    assert not link.install(lambda cmd: SimpleNamespace(rc=1, stderr="no port\n"),
                            lambda local, remote: copied.append((local, remote)))
    assert copied == [(AGENT_SCRIPT, "/run/pytest-flake-agent.sh")] and "no port" in link.why
    assert link.connect() == "ssh" and link.run("true", None) is None  # not even a try: nobody serves it


def test_an_agent_that_does_not_answer_leaves_commands_on_ssh(tmp_path: Path) -> None:
    link = AgentLink("pf-x-vm-1", tmp_path / "vm.agent", 30)
    assert link.connect() == "ssh" and "did not answer" in link.why  # no socket there
    assert link.run("true", None) is None


def test_guest_commands_are_quoted() -> None:
    assert install_command().startswith(f"test -c {GUEST_PORT} && systemd-run ")
    assert timed_command("echo 'a b'", None) == "echo 'a b'"
    assert timed_command("echo 'a b'", 2) == "timeout -s KILL 2.000 bash -c 'echo '\"'\"'a b'\"'\"''; exit $?"


def test_agent_script_removes_big_output_at_once(agent: Channel, tmp_path: Path) -> None:
    assert len(agent.run("head -c 200000 /dev/zero").stdout) == 200000
    reply = agent.run(f"sleep 0.3; ls {tmp_path / 'agent'}")
    assert reply.stdout.split().count(b"o.%d" % (reply.ident - 1)) == 0


def test_an_interrupted_answer_leaves_the_next_command_a_new_connection(pair: tuple[socket.socket, socket.socket],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    host, guest = pair
    FakeAgent(guest, lambda ident, cmd: answer(ident, 0, b"x" * 10), piece=4)
    channel = channel_on(host)
    channel.open(5)
    calls = {"n": 0}
    real = _Frames.exact

    def interrupted(self: _Frames, size: int, deadline: float | None) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(self, size, deadline)

    monkeypatch.setattr(_Frames, "exact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        channel.run("echo")
    assert not channel.connected
