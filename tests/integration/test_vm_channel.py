"""The guest agent's channel on a real VM of the ``debian`` image (run with ``--vm-image debian``).

``vm.run`` goes through the agent on the guest's virtio-serial port: exit code, stdout and stderr
apart, byte-exact output (binary, NUL bytes, a megabyte), a command killed past its timeout with the
channel usable after it, the socket the running user's alone; SSH stays for testinfra and SFTP.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_flake.config import Settings
from pytest_flake.errors import CheckTimeout
from pytest_flake.session import Session
from pytest_flake.vm import VM, VMPool


def test_commands_go_through_the_agent(vm: VM) -> None:
    assert vm.channel == "agent"
    result = vm.run("echo out; echo err >&2; exit 3")
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.stdout_bytes == b"out\n" and result.stderr_bytes == b"err\n"
    assert result.command == b"echo out; echo err >&2; exit 3"
    assert vm.run(["echo", "it's; $(not run)"]).stdout == "it's; $(not run)\n"
    assert vm.succeed("id -u; echo $HOME; pwd; read x; echo \"[$x]\"") == "0\n/root\n/root\n[]\n"
    assert vm.succeed("systemctl is-active pytest-flake-agent.service").strip() == "active"
    assert vm.host.run("echo over ssh").stdout == "over ssh\n"  # testinfra keeps SSH


def test_output_is_byte_exact(vm: VM) -> None:
    every = "".join(f"\\{c:03o}" for c in range(256))
    assert vm.run(f"printf '{every}'").stdout_bytes == bytes(range(256))
    assert vm.run("printf 'x\\0\\377y' >&2").stderr_bytes == b"x\0\xffy"
    random = vm.run("head -c 4096 /dev/urandom | tee /run/x; sha256sum /run/x >&2")
    assert len(random.stdout_bytes) == 4096
    assert random.stderr.split()[0] == hashlib.sha256(random.stdout_bytes).hexdigest()
    big = vm.run("head -c 1048576 /dev/urandom | tee /run/big; sha256sum /run/big >&2")
    assert len(big.stdout_bytes) == 1048576
    assert big.stderr.split()[0] == hashlib.sha256(big.stdout_bytes).hexdigest()
    text = vm.run("yes 0123456789 | head -c 1000000")
    assert text.stdout_bytes == (b"0123456789\n" * 90910)[:1000000]


def test_a_command_past_its_timeout_is_killed_and_the_next_runs(vm: VM) -> None:
    with pytest.raises(CheckTimeout, match="past its timeout") as caught:
        vm.run("echo started; sleep 60 & sleep 60; echo never", timeout=2)
    assert caught.value.stdout == "started\n"
    assert vm.succeed("echo next") == "next\n"
    assert vm.run("pgrep -x sleep").rc == 1  # its whole process group went
    assert vm.run("true", timeout=30).rc == 0


def test_the_socket_is_the_running_users_alone(vm: VM) -> None:
    path = vm.config.agent_socket
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


def test_a_warm_start_gets_its_own_socket(vm_factory) -> None:  # type: ignore[no-untyped-def]
    first, second = vm_factory(), vm_factory()
    assert second.boot_kind == "warm" and second.channel == "agent"
    assert first.config.agent_socket != second.config.agent_socket
    assert first.succeed("hostname; echo one > /run/mark") and second.run("cat /run/mark").rc == 1


def test_a_lost_connection_reconnects(vm: VM) -> None:
    channel = vm._agent.channel
    assert channel is not None and channel._sock is not None
    channel._sock.shutdown(socket.SHUT_RDWR)  # as if the host's end went away
    with pytest.raises(Exception, match="vm://.*broke"):
        vm.run("echo lost")
    assert vm.succeed("echo back") == "back\n" and vm.channel == "agent"


def test_without_the_agent_commands_go_over_ssh(vm: VM, tmp_path: Path) -> None:
    vm._agent.kind = "ssh"  # the path a guest without the port takes
    assert vm.run("echo out; echo err >&2; exit 3").stderr == "err\n"
    with pytest.raises(CheckTimeout):
        vm.run("sleep 60", timeout=2)
    assert vm.succeed("echo ssh") == "ssh\n"


def test_a_guest_without_the_port_runs_commands_over_ssh(flake_session: Session, flake_settings: Settings) -> None:
    def no_port(name: str, root: ET.Element) -> None:
        devices = root.find("devices")
        assert devices is not None
        for channel in devices.findall("channel"):
            devices.remove(channel)

    with VMPool(flake_settings, flake_session, warm=False, edit_domain=no_port) as pool, pool.vm() as machine:
        assert machine.channel == "ssh" and "did not start" in machine._agent.why
        result = machine.run("echo out; echo err >&2; exit 3")
        assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
        with pytest.raises(CheckTimeout, match="past its timeout"):
            machine.run("sleep 60", timeout=2)
        assert machine.succeed("echo next") == "next\n"
