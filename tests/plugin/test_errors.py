"""What a user sees when something goes wrong: one clear message, no plugin traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

USES_FLAKE = """
    def test_outputs(flake):
        flake.outputs()
"""


def assert_no_plugin_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "pytest_flake/" not in text
    assert "pytest_flake\\" not in text
    assert "INTERNALERROR" not in text
    assert "Traceback" not in text


def test_no_nix_on_path(pytester: pytest.Pytester, no_nix_path: Path) -> None:
    (pytester.path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    pytester.makepyfile(USES_FLAKE)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "pytest-flake: nix: not found on PATH*",
        "*ERROR at setup of test_outputs*",
        "MissingToolError: nix is not on PATH (install Nix: 'apt-get install nix-bin' on Debian/Ubuntu (enable "
        "flakes: experimental-features = nix-command flakes), 'nix.settings.experimental-features' on NixOS, "
        "or see https://nixos.org/download; then check with 'pytest --flake-doctor')",
    ])
    assert_no_plugin_traceback(result)


def test_flake_directory_missing(pytester: pytest.Pytester, nix: None) -> None:
    pytester.makepyfile(USES_FLAKE)
    result = pytester.runpytest("--flake", "path:./no-such-dir")
    result.assert_outcomes(failed=1)
    missing = pytester.path.resolve() / "no-such-dir"
    result.stdout.fnmatch_lines([
        f"UsageError: flake directory {missing} does not exist (pass --flake with a directory that has a flake.nix)",
    ])
    assert_no_plugin_traceback(result)


def test_directory_without_flake_nix(pytester: pytest.Pytester, nix: None) -> None:
    (pytester.path / "empty").mkdir()
    pytester.makepyfile(USES_FLAKE)
    result = pytester.runpytest("--flake", "empty")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"UsageError: {pytester.path.resolve() / 'empty'} has no flake.nix*"])
    assert_no_plugin_traceback(result)


def test_no_flake_given(pytester: pytest.Pytester, nix: None) -> None:
    pytester.makepyfile(USES_FLAKE)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "UsageError: no flake to test (pass --flake DIR (or set ini 'flake', or $PYTEST_FLAKE))",
    ])
    assert_no_plugin_traceback(result)


def test_output_attribute_missing_lists_outputs(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("""
        def test_build(flake):
            flake.build("nope")
    """)
    result = pytester.runpytest("--flake", "path:./tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"MissingOutputError: flake path:{tiny_flake.resolve()} has no output 'packages.x86_64-linux.nope' "
        "(outputs under packages.x86_64-linux: broken, crash, default, silent, web)",
    ])
    assert_no_plugin_traceback(result)


def test_build_failure_shows_attribute_exit_code_and_log_tail(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("""
        def test_build(flake):
            flake.build(".#broken")
    """)
    result = pytester.runpytest("--flake", "path:./tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"BuildError: nix build path:{tiny_flake.resolve()}#packages.x86_64-linux.broken failed: "
        "the builder of /nix/store/*-broken.drv failed with exit code 3 "
        "(the last lines of the build log follow*",
        "broken> log line 34",
        "broken> log line 35",
        "broken> compile error: widget.c:3",
    ])
    result.stdout.no_fnmatch_line("broken> log line 2")  # only the tail of the log
    assert_no_plugin_traceback(result)


def test_program_never_opens_its_port(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("""
        def test_run(flake):
            flake.run("silent", port=0, timeout=1)
    """)
    result = pytester.runpytest("--flake", "path:./tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "FlakeTimeout: silent (pid *) listening on 127.0.0.1:*: not ready after 1s; last seen: NotReady: *"
        "(is it listening on 127.0.0.1 and on that port? its output follows)",
        "output of silent:",
        "starting on port *",
    ])
    assert_no_plugin_traceback(result)


def test_program_exits_before_its_port_opens(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("""
        def test_run(flake):
            flake.run("crash", port=0)
    """)
    result = pytester.runpytest("--flake", "path:./tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "ProcessExited: crash exited with code 2 before it opened port * (its output follows)",
        "error: missing config file",
    ])
    assert_no_plugin_traceback(result)


HTTP_SERVER = """
    import logging
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest


    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # into the test's log, not onto the terminal
            logging.getLogger("server").warning("a request from %s failed", client_address, exc_info=True)


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            status, body = (500, b"database is down\\n") if self.path == "/broken" else (200, b"fine\\n")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Request-Id", "r-42")
            self.end_headers()
            self.wfile.write(body)


    @pytest.fixture
    def base():
        server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        server.server_close()
"""


def test_http_check_failure_prints_transcript(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HTTP_SERVER)
    pytester.makepyfile("""
        def test_health(http, base):
            http.get(base + "/ok").expect(200, contains="fine")
            http.get(base + "/broken").expect(200, contains="ok")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "E *CheckFailed: GET http://127.0.0.1:*/broken: status 500, expected 200; body does not contain 'ok'",
        "E *> GET /broken HTTP/1.1",
        "E *> User-Agent: *",
        "E *>",
        "E *< HTTP/1.1 500 Internal Server Error",
        "E *< X-Request-Id: r-42",
        "E *<",
        "E *database is down",
    ])
    assert "pytest_flake/" not in result.stdout.str()  # the checker's frames are hidden


def test_failed_test_report_carries_http_exchanges(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HTTP_SERVER)
    pytester.makepyfile("""
        def test_health(http, base):
            r = http.get(base + "/ok")
            assert r.status_code == 201
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*- Captured stdout call (pytest-flake: http exchanges) -*",
        "> GET /ok HTTP/1.1",
        "< HTTP/1.1 200 OK",
        "fine",
    ])


def test_service_not_answering_says_connect_failed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_flake.waiting import free_port

        def test_down(http):
            http.get(f"http://127.0.0.1:{free_port()}/", retry_for=0.3)
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *connect to 127.0.0.1 port * failed (ConnectionError), * attempt(s) in *s"])


def test_failed_run_attaches_program_output_and_stops_it(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("""
        import os

        PIDS = []

        def test_web(flake, http):
            web = flake.run("web", port=0)
            PIDS.append(web.pid)
            http.get(web.url("/")).expect(200, contains="tiny web")
            assert False, "fail on purpose"

        def test_stopped_after_the_test():
            try:
                os.kill(PIDS[0], 0)
            except ProcessLookupError:
                return
            state = open(f"/proc/{PIDS[0]}/stat").read().rsplit(")", 1)[1].split()[0]
            assert state == "Z", "the program outlived its test"
    """)
    result = pytester.runpytest("--flake", "path:./tiny")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: fail on purpose*",
        "*- Captured stdout call (pytest-flake: output of web) -*",
        "127.0.0.1:*: response:200",
    ])


# --- issue 14: the cases that did not give one clear line ---------------------------------
def test_bad_env_value_fails_a_run_that_uses_the_plugin_with_the_same_line(pytester: pytest.Pytester,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_FLAKE_TIMEOUT", "abc")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.runpytest("test_plain.py").assert_outcomes(passed=1)
    assert pytester.runpytest("--help").ret == pytest.ExitCode.OK
    pytester.makepyfile(test_uses=USES_FLAKE)
    result = pytester.runpytest("test_uses.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == ("ERROR: pytest-flake: $PYTEST_FLAKE_TIMEOUT='abc' is not a number (seconds to "
                                      "wait for a service, container or guest to be ready)")
    assert_no_plugin_traceback(result)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_and_inf_timeouts_are_refused(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(USES_FLAKE)
    result = pytester.runpytest(f"--flake-timeout={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (f"ERROR: pytest-flake: --flake-timeout='{value}' is not a finite number (give "
                                      "seconds or a count: seconds to wait for a service, container or guest to be "
                                      "ready)")


def test_vm_image_that_is_not_a_disk_image_is_refused_before_any_boot(pytester: pytest.Pytester) -> None:
    notes = pytester.path / "notes.txt"
    notes.write_text("this is not a disk\n")
    pytester.makepyfile("def test_guest(vm):\n    vm.run('true')\n")
    result = pytester.runpytest(f"--vm-image={notes}", "--libvirt-uri=test:///nowhere")
    result.assert_outcomes(errors=1)
    seen = "qemu-img sees raw data with" if shutil.which("qemu-img") else "it has no image format header and"
    result.stdout.fnmatch_lines([
        f"UsageError: --vm-image {notes} is not a disk image: {seen} no partition table or file "
        "system (it is a text file starting with 'this is not a disk') (pass a qcow2 or raw disk image, or "
        "'debian' (built locally) or 'arch')",
    ])
    result.stdout.no_fnmatch_line("*console*")
    assert_no_plugin_traceback(result)


def test_flake_option_naming_flake_nix_means_its_directory(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile("def test_build(flake):\n    assert flake.build().out.read_text() == 'hello\\n'\n")
    pytester.runpytest(f"--flake={tiny_flake / 'flake.nix'}").assert_outcomes(passed=1)
    pytester.runpytest(f"--flake=path:{tiny_flake / 'flake.nix'}").assert_outcomes(passed=1)


def test_evaluation_error_names_the_users_file(pytester: pytest.Pytester, nix: None) -> None:
    broken = pytester.path / "broken"
    broken.mkdir()
    (broken / "flake.nix").write_text(
        '{\n  outputs = { self }: {\n    packages.x86_64-linux.default = derivation {\n'
        '      name = "x"; system = "x86_64-linux";\n      builder = "/bin/busybox" args = [ ];\n    };\n  };\n}\n')
    pytester.makepyfile("def test_build(flake):\n    flake.build()\n")
    result = pytester.runpytest(f"--flake=path:{broken}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"EvalError: cannot evaluate path:{broken}#packages.x86_64-linux.default: syntax error, unexpected '=', "
        f"expecting ';' at {broken}/flake.nix:5:37 (fix the flake at the position named; 'nix eval' of the same "
        "attribute shows it too)",
    ])
    result.stdout.no_fnmatch_line("*BuildError*")
    result.stdout.no_fnmatch_line("*/nix/store/*-source/flake.nix*")
    assert_no_plugin_traceback(result)


def test_flake_error_report_keeps_the_test_line(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    pytester.makepyfile(test_mine="""
        def test_mine(flake):
            built = flake.build("default")
            flake.build("no-such-output")
    """)
    result = pytester.runpytest(f"--flake={tiny_flake}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_mine _*",
        "test_mine.py:3: in test_mine",
        '    flake.build("no-such-output")',
        f"MissingOutputError: flake {tiny_flake} has no output 'packages.x86_64-linux.no-such-output' *",
    ])
    assert_no_plugin_traceback(result)


def test_error_in_a_fixture_is_an_error_and_in_the_body_a_failure(pytester: pytest.Pytester) -> None:
    """What the README says: a problem while a fixture sets up is an ERROR; the same raised in the test body FAILED."""
    notes = pytester.path / "notes.txt"
    notes.write_text("not a disk\n")
    pytester.makepyfile(test_where="""
        import os
        from pathlib import Path
        from pytest_flake.images import check_disk_image

        def test_in_fixture(vm):
            pass

        def test_in_body(flake_settings):
            check_disk_image(Path(flake_settings.vm_image))
    """)
    result = pytester.runpytest(f"--vm-image={notes}", "-rfE")
    result.assert_outcomes(errors=1, failed=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_in_fixture*",
        f"UsageError: --vm-image {notes} is not a disk image: *",
        "*_ test_in_body _*",
        "test_where.py:9: in test_in_body",
        f"UsageError: --vm-image {notes} is not a disk image: *",
        "FAILED test_where.py::test_in_body - UsageError: --vm-image *",
        "ERROR test_where.py::test_in_fixture - UsageError: --vm-image *",
    ])
