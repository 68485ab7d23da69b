"""Nix's output as each real binary printed it (tests/unit/nix_recorded.py), read by pytest_flake.nixerrors."""

from __future__ import annotations

import pytest

from pytest_flake.nixcmd import Nix, _knows_caret, _no_lock_writes
from pytest_flake.nixerrors import (
    NixVersion,
    build_failure,
    eval_failure,
    is_build_failure,
    is_eval_failure,
    local_positions,
    parse_version,
)
from tests.unit.nix_recorded import PROBE, RECORDED, SOURCE, SYNTAX_SOURCE, VERSIONS

ALL = sorted(RECORDED)
BROKEN_DRV = "/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv"


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("scenario", ["build_failure", "build_failure_without_L"])
def test_build_failure_names_drv_and_exit_code(version: str, scenario: str) -> None:
    """2.8 and 2.26: "builder for '...drv' failed with exit code 3"; 2.34: "Cannot build" + "Reason: ..."."""
    text = RECORDED[version][scenario]
    failure = build_failure(text)
    assert failure is not None and failure.drv == BROKEN_DRV and failure.exit_code == 3
    assert str(failure) == f"the builder of {BROKEN_DRV} failed with exit code 3"
    assert is_build_failure(text)


def test_the_wordings_differ_between_versions() -> None:
    """What the reader above must know: 2.34's wording is not 2.8's (so one pattern would miss it)."""
    assert "failed with exit code 3" in RECORDED["2.8.0"]["build_failure"]
    assert "Cannot build" not in RECORDED["2.8.0"]["build_failure"]
    assert "error: builder for" not in RECORDED["2.34.8"]["build_failure"]
    assert "Reason: builder failed with exit code 3." in RECORDED["2.34.8"]["build_failure"]


def test_cannot_build_without_a_reason_has_no_exit_code() -> None:
    failure = build_failure(f"error: Cannot build '{BROKEN_DRV}'.\n")
    assert failure is not None and failure.exit_code is None
    assert str(failure) == f"the builder of {BROKEN_DRV} failed"


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(("scenario", "message", "position"), [
    ("missing_attribute", "attribute 'nothing' missing", f"{SOURCE}/flake.nix:8:30"),
    ("missing_attribute_show_trace", "attribute 'nothing' missing", f"{SOURCE}/flake.nix:8:30"),
    ("type_error", "cannot add a string to an integer", f"{SOURCE}/flake.nix:10:35"),
    ("syntax_error", "syntax error, unexpected '=', expecting ';'", f"{SYNTAX_SOURCE}/flake.nix:5:37"),
])
def test_evaluation_error_message_and_its_position(version: str, scenario: str, message: str, position: str) -> None:
    """2.8: message first, then its position; 2.13+: a bare "error:", the trace, then the message and position."""
    text = RECORDED[version][scenario]
    assert not is_build_failure(text) and build_failure(text) is None
    assert is_eval_failure(text)
    failure = eval_failure(text, prefer=SOURCE)
    assert (failure.message, failure.position) == (message, position)


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("scenario", ["throw", "throw_show_trace", "throw_show_trace_option"])
def test_thrown_error_without_its_own_position_names_the_users_flake(version: str, scenario: str) -> None:
    """``throw`` has no position of its own: the trace's last one in the user's flake is named (2.8 without
    --show-trace names none at all)."""
    text = RECORDED[version][scenario]
    failure = eval_failure(text, prefer=SOURCE)
    assert failure.message == "no widget configured"
    if version == "2.8.0" and scenario == "throw":
        assert failure.position is None
    else:
        assert failure.position is not None and failure.position.startswith(f"{SOURCE}/flake.nix:")


@pytest.mark.parametrize("version", ["2.26.3", "2.34.8"])
def test_first_error_line_is_bare_since_2_13(version: str) -> None:
    """The trap the reader avoids: the first "error:" line of 2.13+ is empty."""
    assert RECORDED[version]["missing_attribute"].splitlines()[0] == "error:"
    assert RECORDED["2.8.0"]["missing_attribute"].splitlines()[0] == "error: attribute 'nothing' missing"


def test_show_trace_puts_the_message_first_on_2_8_and_last_since_2_13() -> None:
    old, new = RECORDED["2.8.0"]["throw_show_trace"], RECORDED["2.34.8"]["throw_show_trace"]
    assert old.index("no widget configured") < old.index("while evaluating")
    assert new.index("no widget configured") > new.index("while evaluating")


@pytest.mark.parametrize(("text", "local"), [
    ("at «git+file:///home/me/web?ref=refs/heads/main&rev=0123abc»/flake.nix:5:37:",
     "at /home/me/web/flake.nix:5:37:"),
    ("at «path:/home/me/my%20web?lastModified=1&narHash=sha256-x»/sub/flake.nix:1:2",
     "at /home/me/my web/sub/flake.nix:1:2"),
    ("at «github:o/r/0123abc»/flake.nix:5:37:", "at «github:o/r/0123abc»/flake.nix:5:37:"),
])
def test_locked_local_positions_become_the_users_files(text: str, local: str) -> None:
    assert local_positions(text) == local


@pytest.mark.parametrize("text", [
    "error:\n       … while evaluating\n       error: oops\n       at «git+file:///w?rev=1»/flake.nix:3:4:\n",
    "error:\n       error: oops\n       at «github:o/r/0123abc»/flake.nix:3:4:\n",
])
def test_positions_in_locked_flakes_are_found(text: str) -> None:
    failure = eval_failure(text)
    assert failure.message == "oops" and failure.position is not None and failure.position.endswith("flake.nix:3:4")


@pytest.mark.parametrize(("text", "expected", "shown"), [
    (VERSIONS["2.8.0"], NixVersion("Nix", "2.8.0", "2.8.0"), "Nix 2.8.0"),
    (VERSIONS["2.26.3"], NixVersion("Nix", "2.26.3", "2.26.3"), "Nix 2.26.3"),
    (VERSIONS["2.34.8"], NixVersion("Nix", "2.34.8", "2.34.8"), "Nix 2.34.8"),
    ("nix (Lix, like Nix) 2.91.1\n", NixVersion("Lix", "2.91.1", "2.91.1"), "Lix 2.91.1"),
    ("nix (Determinate Nix 3.4.1) 2.28.2\n", NixVersion("Determinate Nix", "3.4.1", "2.28.2"),
     "Determinate Nix 3.4.1 (Nix 2.28.2)"),
    ("something else\n", NixVersion("Nix", "else", "something else"), "Nix else"),
])
def test_version_strings(text: str, expected: NixVersion, shown: str) -> None:
    assert parse_version(text) == expected
    assert str(parse_version(text)) == shown


class _Answers(Nix):
    def __init__(self, stderr: str) -> None:
        super().__init__(executable="fake-nix")
        self.stderr = stderr
        self.argvs: list[list[str]] = []

    def run(self, args, *, check=True):  # type: ignore[no-untyped-def]
        import subprocess

        self.argvs.append(list(args))
        return subprocess.CompletedProcess(list(args), 1, "", self.stderr)


@pytest.mark.parametrize(("version", "knows"), [("2.8.0", False), ("2.26.3", True), ("2.34.8", True)])
def test_drv_outputs_syntax_is_asked_of_nix(version: str, knows: bool) -> None:
    """2.8 says "... is not a valid URL" to DRV^out; 2.26 and 2.34 say the path is not valid (not in the store)."""
    nix = _Answers(PROBE[version])
    assert _knows_caret(nix) is knows
    drv = "/nix/store/aaaa-x.drv"
    assert nix.drv_outputs(drv, ["out"]) == (f"{drv}^out" if knows else drv)
    nix.drv_outputs(drv, ["bin", "out"])
    assert len([a for a in nix.argvs if a[0] == "path-info"]) == 2  # _knows_caret above, then once for the object


@pytest.mark.parametrize(("args", "expected"), [
    (["build", "--json", "x#y"], ["build", "--no-write-lock-file", "--json", "x#y"]),
    (["flake", "metadata", "--json", "x"], ["flake", "metadata", "--no-write-lock-file", "--json", "x"]),
    (["eval", "--impure", "--expr", "1"], ["eval", "--no-write-lock-file", "--impure", "--expr", "1"]),
    (["--version"], ["--version"]),
    (["config", "show"], ["config", "show"]),
    (["build", "--no-write-lock-file", "x"], ["build", "--no-write-lock-file", "x"]),
])
def test_no_lock_file_is_written(args: list[str], expected: list[str]) -> None:
    assert _no_lock_writes(args) == expected
