"""The host helpers every component shares: tools, sniffing, ports, locks, copies, private files."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

from pytest_flake import _host
from pytest_flake.errors import FlakeError, MissingToolError, NotReady, VMError, notes_of


# --------------------------------------------------------------------------- run_tool
def test_run_tool_returns_stdout() -> None:
    assert _host.run_tool([sys.executable, "-c", "print('hello')"], what="greeting") == "hello\n"


def test_run_tool_failure_names_command_exit_code_and_output_tail() -> None:
    argv = [sys.executable, "-c", "import sys; print('part' + 'ial'); sys.exit('disk' + ' full')"]
    with pytest.raises(VMError) as raised:
        _host.run_tool(argv, what="making a disk", error=VMError)
    message = str(raised.value)
    assert message.startswith("making a disk: ")
    assert message.endswith(" exited with 1")
    assert sys.executable in message
    assert notes_of(raised.value).splitlines() == ["partial", "disk full"]  # stdout, then the stderr tail


def test_run_tool_missing_program_on_path_is_missing_tool_error() -> None:
    with pytest.raises(MissingToolError, match=r"^probe: no-such-tool-pf is not installed \(apt-get it\)$"):
        _host.run_tool(["no-such-tool-pf", "--version"], what="probe", hint="apt-get it", error=VMError)


def test_run_tool_missing_absolute_program_is_missing_tool_error(tmp_path: Path) -> None:
    with pytest.raises(MissingToolError, match="is not installed"):
        _host.run_tool([str(tmp_path / "absent")], what="probe", error=VMError)


def test_run_tool_timeout_is_the_given_error_class() -> None:
    with pytest.raises(VMError, match=r"did not finish in 0.2s"):
        _host.run_tool([sys.executable, "-c", "import time; time.sleep(30)"], what="slow", timeout=0.2,
                       error=VMError)


def test_run_tool_gets_no_terminal_stdin_but_takes_input() -> None:
    read = [sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"]
    assert _host.run_tool(read, what="stdin") == "''\n"  # /dev/null, never the test's terminal
    assert _host.run_tool(read, what="stdin", input="data") == "'data'\n"


def test_run_tool_error_is_a_flake_error_by_default() -> None:
    with pytest.raises(FlakeError) as raised:
        _host.run_tool([sys.executable, "-c", "raise SystemExit(3)"], what="x")
    assert type(raised.value) is FlakeError and "exited with 3" in str(raised.value)


def test_run_command_returns_a_failed_run_for_the_caller_to_judge(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os, sys; print(os.getcwd(), os.environ['PF_X'], sys.stdin.read());"
            " sys.exit('no such mount')"]
    done = _host.run_command(argv, what="umount", input="in", env={"PF_X": "x"}, cwd=tmp_path, error=VMError)
    assert (done.returncode, done.stdout, done.stderr) == (1, f"{tmp_path} x in\n", "no such mount\n")
    assert done.args == argv


@pytest.mark.parametrize(("argv", "raised", "match"), [
    pytest.param(["no-such-tool-pf"], MissingToolError, r"^probe: no-such-tool-pf is not installed \(apt-get it\)$",
                 id="missing"),
    pytest.param([sys.executable, "-c", "import time; time.sleep(30)"], VMError, "did not finish in 0.2s",
                 id="timeout"),
])
def test_run_command_fails_like_run_tool_when_it_cannot_run(argv: list[str], raised: type[FlakeError],
                                                            match: str) -> None:
    with pytest.raises(raised, match=match):
        _host.run_command(argv, what="probe", hint="apt-get it", timeout=0.2, error=VMError)


def test_run_command_cannot_start_is_the_given_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(VMError, match=r"^probe: cannot run .*not-executable: Permission denied$"):
        _host.run_command([str(script)], what="probe", error=VMError)


# --------------------------------------------------------------------------- sniffing
@pytest.mark.parametrize(("head", "kind"), [
    (b"\x7fELF\x02\x01\x01" + b"\0" * 60, "elf"),
    (b"hsqs" + b"\0" * 60, "squashfs"),
    (b"\x1f\x8b\x08\x00rest", "gzip"),
    (b"(\xb5/\xfd" + b"\0" * 8, "zstd"),
    (b"BZh91AY", "bzip2"),
    (b"\xfd7zXZ\x00\x00", "xz"),
    (b"PK\x03\x04" + b"\0" * 8, "zip"),
    (b"QFI\xfb" + b"\0" * 60, "qcow2"),
    (b"\0" * 512 + b"EFI PART" + b"\0" * 8, "gpt"),
    (b"x" * 100 + b"\0" * 157 + b"ustar\x0000" + b"\0" * 20, "tar"),
    (b"#!/bin/sh\necho hi\n", "script"),
    (b"[Unit]\nDescription=x\n", "unit"),
    (b"# comment\n[Service]\nExecStart=/bin/true\n", "unit"),
    (b"", "empty"),
    (b"hello world\n", "text"),
    ("caf\u00e9".encode()[:4], "text"),  # a character cut at the end of the sample is still text
    (b"\x00\x01\x02\x03\xff\xfe", "binary"),
])
def test_sniff(head: bytes, kind: str) -> None:
    assert _host.sniff(head) == kind


@pytest.mark.parametrize(("content", "words"), [
    (b"\x7fELF\x02\x01", "an ELF executable"),
    (b"hsqs" + b"\0" * 60, "a squashfs image (a portable service image?)"),
    (b"\x1f\x8b\x08\x00rest", "a gzip file (a docker-archive or tarball?)"),
    (b"#!/bin/sh\necho hi\n", "a script (#!/bin/sh)"),
    (b"[Unit]\nDescription=x\n", "a systemd unit file"),
    (b"", "an empty file"),
    (b"hello world\nmore\n", "a text file starting with 'hello world'"),
    (b"\xff\xfe\x00\x01\x02\x03\x04\x05\x06", "a binary file starting with ff fe 00 01 02 03 04 05"),
])
def test_describe_file(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "thing"
    path.write_bytes(content)
    assert _host.describe_file(path) == words
    assert _host.describe_file(path, content[:_host.SNIFF_BYTES]) == words  # the caller's head, same words


def test_describe_directory_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "README").write_text("x")
    assert _host.describe_file(tmp_path) == "a directory (README, bin/)"
    assert _host.describe_file(tmp_path / "missing").startswith("unreadable (")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _host.describe_dir(empty) == "a directory (empty)"


# --------------------------------------------------------------------------- ports
def test_port_open_free_port_and_refused() -> None:
    port = _host.free_port()
    with pytest.raises(NotReady, match=f"127.0.0.1:{port} refused"):
        _host.port_open(port)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # free_port gave a bindable port
        server.listen(1)
        _host.port_open(port)


def test_port_answers_tells_a_closing_proxy_from_a_listening_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        closer = threading.Thread(target=lambda: server.accept()[0].close())
        closer.start()
        with pytest.raises(NotReady, match="accepted and closed at once"):
            _host.port_answers(port, timeout=5.0)
        closer.join()
        _host.port_answers(port)  # accepted (in the backlog) and kept open: a server waiting for a request
    with pytest.raises(NotReady, match="refused"):
        _host.port_answers(_host.free_port())


# --------------------------------------------------------------------------- files
def test_locked_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with _host.locked(lock):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with _host.locked(lock):
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(10)
    two = threading.Thread(target=second)  # opens the file anew: flock locks per open file
    two.start()
    two.join(0.3)
    assert two.is_alive()  # blocked while the first holds the lock
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first in", "first out", "second in"]


def test_reflink_copy_of_a_file_and_of_a_tree(tmp_path: Path) -> None:
    src = tmp_path / "disk"
    with open(src, "wb") as handle:
        handle.write(b"head")
        handle.seek(8 << 20)
        handle.write(b"tail")
    dst = tmp_path / "copy"
    _host.reflink_copy(src, dst, what="disk copy")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 < 1 << 20  # sparse: the hole stays a hole
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=test\n")
    os.symlink("../etc/os-release", tree / "link")
    out = tmp_path / "out"
    out.mkdir()
    _host.reflink_copy(tree, out, what="tree copy", tree=True)
    assert (out / "etc" / "os-release").read_text() == "ID=test\n"
    assert os.readlink(out / "link") == "../etc/os-release"


def test_reflink_copy_failure_is_the_given_error(tmp_path: Path) -> None:
    with pytest.raises(VMError) as raised:
        _host.reflink_copy(tmp_path / "absent", tmp_path / "dst", what="overlay copy", error=VMError)
    assert str(raised.value).startswith("overlay copy: cp --reflink=auto ")
    assert str(raised.value).endswith(" exited with 1")
    assert "cannot stat" in notes_of(raised.value)


def test_write_private_is_0600_even_over_an_open_file(tmp_path: Path) -> None:
    key = _host.write_private(tmp_path / "keys" / "id_ed25519", "secret\n")
    assert key.read_text() == "secret\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o644)
    _host.write_private(key, b"other")
    assert key.read_bytes() == b"other" and stat.S_IMODE(key.stat().st_mode) == 0o600
