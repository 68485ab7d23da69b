"""An image download's progress reaches pytest's terminal with capture suspended (a real inner run)."""

from __future__ import annotations

import pytest

INNER = """
import http.server
import threading

from pytest_flake.images import download
from pytest_flake.reporting import download_status

BLOB = bytes(range(256)) * 4096 * 3  # 3 MiB: three chunks


def serve():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download(request, tmp_path, capsys):
    server = serve()
    try:
        progress = download_status(request.config)
        assert progress is not None  # the terminal counts as one (conftest)
        download(f"http://127.0.0.1:{server.server_address[1]}/blob.img", tmp_path / "blob.img", progress=progress)
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "blob.img").read_bytes() == BLOB
    out, err = capsys.readouterr()
    assert "downloading" not in out + err  # not the test's output: the terminal's
"""

CONFTEST = """
import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reporter.isatty = type(reporter.isatty)(True)  # a bool before pytest 8.4, a callable one since
"""


def test_download_progress_goes_to_the_terminal_not_to_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # a passing test's captured output is dropped: the bar is seen only if capture was suspended for it
    result.stdout.re_match_lines([r"pytest-flake: downloading blob\.img: \[#{1,24} +\] +\d\d% of 3 MiB$",
                                  r"pytest-flake: downloading blob\.img: \[#{25}\] 100% of 3 MiB *$"])


def test_off_a_terminal_the_store_logs_instead(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="""
        from pytest_flake.reporting import download_status

        def test_no_terminal(request):
            assert download_status(request.config) is None
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
