"""What a user sees when something goes wrong: one clear message, no plugin traceback."""

from __future__ import annotations

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
        "error: builder for '/nix/store/*-broken.drv' failed with exit code 3 "
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
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest


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
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
