"""Reading what ``nix`` prints: its version line, a build failure, an evaluation error.

Each Nix words these its own way, and the plugin is tested on three (2.8, 2.26 and 2.34:
``scripts/nix-matrix``); Lix and Determinate Nix carry version numbers of their own. So
nothing here decides by a version number: each reader knows every wording seen, and the
unit tests quote the text each real binary printed.

* Build failure, 2.8 to 2.28: ``error: builder for '/nix/store/X.drv' failed with exit code 3``
  (``;`` and ``last N log lines:`` without ``-L``); since 2.29: ``error: Cannot build
  '/nix/store/X.drv'.`` then ``Reason: builder failed with exit code 3.``
* Evaluation error, 2.8: ``error: MESSAGE`` first, then its position, then (``--show-trace``)
  the trace. Since 2.13: a bare ``error:`` line, the trace (``… while ...``), then the message
  on an indented ``error: MESSAGE`` line and its position; ``show-trace`` adds to the trace.
* Positions: ``at /nix/store/H-source/flake.nix:5:37:``; since 2.29 also
  ``at «git+file:///DIR?rev=...»/flake.nix:5:37:`` or ``«path:/DIR?...»/flake.nix``, and
  ``«github:o/r/rev»/flake.nix`` under Determinate Nix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# `nix --version`: "nix (Nix) 2.8.0", "nix (Lix, like Nix) 2.91.1", "nix (Determinate Nix 3.4.1) 2.28.2"
_VERSION = re.compile(r"^\S+ \((?P<what>[^)]*)\) (?P<number>\S+)")


@dataclass(frozen=True)
class NixVersion:
    """Which Nix: ``implementation`` (Nix, Lix, Determinate Nix), its own ``version``, and the
    version of Nix it derives from (``nix_version``; the same as ``version`` for Nix itself)."""

    implementation: str
    version: str
    nix_version: str

    def __str__(self) -> str:
        if self.implementation == "Determinate Nix":
            return f"Determinate Nix {self.version} (Nix {self.nix_version})"
        return f"{self.implementation} {self.version}"


def parse_version(text: str) -> NixVersion:
    """What ``nix --version`` printed, read; an unknown format is kept whole as the version."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    match = _VERSION.match(first)
    if match is None:
        return NixVersion("Nix", first.rsplit(" ", 1)[-1] if first else "unknown", first or "unknown")
    what, number = match.group("what").strip(), match.group("number")
    if what.startswith("Lix"):
        return NixVersion("Lix", number, number)
    if what.startswith("Determinate Nix"):
        own = what[len("Determinate Nix"):].strip() or number
        return NixVersion("Determinate Nix", own, number)
    return NixVersion(what or "Nix", number, number)


# -- build failures ------------------------------------------------------------------------
_BUILDER_FAILED = re.compile(r"^\s*error: builder for '(?P<drv>/nix/store/[^']+\.drv)' failed with exit code "
                             r"(?P<code>\d+)", re.MULTILINE)
_CANNOT_BUILD = re.compile(r"^\s*error: Cannot build '(?P<drv>/nix/store/[^']+\.drv)'", re.MULTILINE)
_REASON = re.compile(r"^\s*Reason: builder failed with exit code (?P<code>\d+)", re.MULTILINE)
# lines that say some derivation's builder ran and failed (not an evaluation error), in any wording
_ANY_BUILD_FAILURE = re.compile(r"^\s*error: (builder for|build of|cannot build|Cannot build|\d+ dependenc)",
                                re.MULTILINE)


@dataclass(frozen=True)
class BuildFailure:
    """The derivation whose builder failed and its exit code (None when Nix did not say)."""

    drv: str
    exit_code: int | None

    def __str__(self) -> str:
        code = f" with exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"the builder of {self.drv} failed{code}"


def build_failure(stderr: str) -> BuildFailure | None:
    """The first failed builder named in ``nix build``'s stderr, in either wording; None when there is none."""
    old = _BUILDER_FAILED.search(stderr)
    new = _CANNOT_BUILD.search(stderr)
    if old and (not new or old.start() < new.start()):
        return BuildFailure(old.group("drv"), int(old.group("code")))
    if new:
        reason = _REASON.search(stderr, new.end())
        return BuildFailure(new.group("drv"), int(reason.group("code")) if reason else None)
    return None


def is_build_failure(stderr: str) -> bool:
    """Whether a builder ran and failed (as opposed to an evaluation error)."""
    return _ANY_BUILD_FAILURE.search(stderr) is not None


# -- evaluation errors ---------------------------------------------------------------------
# "at /nix/store/..-source/flake.nix:5:37:", "at «git+file:///d?rev=..»/flake.nix:5:37:"
_POSITION = re.compile(r"^\s*at (?P<pos>(?:«[^»\n]*»|/)[^\s»]*:\d+:\d+):?\s*$", re.MULTILINE)
_ERROR_LINE = re.compile(r"^\s*error:(?P<message>.*)$", re.MULTILINE)
_EVAL_KINDS = re.compile(r"while evaluating|^\s*error: (syntax error|undefined variable|attribute '.*' missing|"
                         r"infinite recursion|value is|cannot coerce|cannot add|getting status of|expected a|"
                         r"function '.*' called)", re.MULTILINE)
# «git+file:///dir?rev=..», «path:/dir?narHash=..»: a locked local flake, named by its directory
_LOCKED_LOCAL = re.compile(r"«(?:git\+file|path):(?://)?(?P<dir>/[^?»]*)(?:\?[^»]*)?»")


@dataclass(frozen=True)
class EvalFailure:
    """An evaluation error: its message (the innermost ``error:``) and its position, when Nix named one."""

    message: str
    position: str | None


def is_eval_failure(stderr: str) -> bool:
    """Whether the text reads as an evaluation error: a position in a .nix file, or one of its kinds of error."""
    return _POSITION.search(stderr) is not None or _EVAL_KINDS.search(stderr) is not None


def eval_failure(stderr: str, prefer: str | None = None) -> EvalFailure:
    """The message and position of an evaluation error, in every format.

    The message is the last non-empty ``error:`` line (2.8 has one; 2.13+ opens with a bare
    ``error:`` and ends with the message), with the lines that continue it. Its position is the
    first after it; when there is none there (``throw`` on 2.8), the last position of the trace
    in a file whose path starts with ``prefer`` (the user's flake), else the trace's last.
    """
    message, after = "", 0
    for match in _ERROR_LINE.finditer(stderr):
        text = match.group("message").strip()
        if text:
            message, after = text, match.end()
    positions = [(m.start(), m.group("pos")) for m in _POSITION.finditer(stderr)]
    position = next((pos for start, pos in positions if start >= after), None)
    if position is None and positions:
        own = [pos for _, pos in positions if prefer and pos.startswith(prefer)]
        position = (own or [pos for _, pos in positions])[-1]
    return EvalFailure(message, position)


def local_positions(text: str) -> str:
    """``«git+file:///dir?rev=..»/flake.nix:5:2`` (and ``«path:/dir?..»``) as ``/dir/flake.nix:5:2``."""
    return _LOCKED_LOCAL.sub(lambda m: unquote(m.group("dir")).rstrip("/"), text)


__all__ = ["BuildFailure", "EvalFailure", "NixVersion", "build_failure", "eval_failure", "is_build_failure",
           "is_eval_failure", "local_positions", "parse_version"]
