"""Per-test state on the node: the flake marker of the test or fixture's own node, process ownership."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugin.flake_helpers import write_flake


def test_marker_of_the_node_each_test_and_fixture_runs_for(pytester: pytest.Pytester, tiny_flake: Path) -> None:
    write_flake(pytester.path / "other", message="from-other")
    write_flake(pytester.path / "module", message="from-module")
    pytester.makepyfile(test_refs="""
        import pytest

        pytestmark = pytest.mark.flake("path:./module")


        @pytest.fixture(scope="module")
        def module_text(flake):
            return flake.build().out.read_text().strip()


        @pytest.fixture(scope="session")
        def session_text(flake):
            return flake.build().out.read_text().strip()


        @pytest.mark.flake("path:./other")
        def test_own_marker(flake, module_text, session_text):
            assert flake.build().out.read_text().strip() == "from-other"
            assert module_text == "from-module"  # the module fixture reads the module's marker
            assert session_text == "hello"  # a session fixture belongs to no module: --flake


        def test_module_marker(flake):
            assert flake.build().out.read_text().strip() == "from-module"
    """)
    result = pytester.runpytest("--flake", "path:./tiny", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_a_flake_made_during_a_fixture_set_up_sees_the_marker_at_once(pytester: pytest.Pytester,
                                                                      tiny_flake: Path) -> None:
    """The first test's fixture asks for the flake part way through its set-up (as ``service`` does)."""
    write_flake(pytester.path / "module", message="from-module")
    pytester.makepyfile(test_late="""
        import pytest

        pytestmark = pytest.mark.flake("path:./module")


        @pytest.fixture
        def text(request):
            flake = request.getfixturevalue("flake")
            return flake.build().out.read_text().strip()


        def test_first(text):
            assert text == "from-module"
    """)
    result = pytester.runpytest("-p", "no:randomly")  # no --flake: only the marker names one
    result.assert_outcomes(passed=1)


def test_a_process_lives_as_long_as_the_test_or_fixture_that_started_it(pytester: pytest.Pytester,
                                                                         tiny_flake: Path) -> None:
    pytester.makepyfile(test_owners="""
        import os

        import pytest

        seen = {}


        def alive(pid):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True


        @pytest.fixture(scope="module")
        def shared(flake):
            server = flake.run("web", port=0)
            seen["shared"] = server.pid
            return server


        def test_first(flake, shared):
            seen["own"] = flake.run("web", port=0).pid


        def test_second(shared):
            assert alive(seen["shared"])  # the module fixture's server outlived the first test
            assert not alive(seen["own"])  # the first test's own server ended with it
    """)
    pytester.makepyfile(test_zz_later="""
        import os

        from test_owners import seen


        def test_module_server_stopped():
            try:
                os.kill(seen["shared"], 0)
            except ProcessLookupError:
                return
            raise AssertionError("the module fixture's server still runs after its module")
    """)
    result = pytester.runpytest("--flake", "path:./tiny", "-p", "no:randomly", "test_owners.py", "test_zz_later.py")
    result.assert_outcomes(passed=3)

