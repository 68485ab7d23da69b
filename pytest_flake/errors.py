"""The one exception hierarchy of pytest-flake.

Two families, kept apart on purpose:

* ``FlakeError`` and its children: *our tooling or the infrastructure* broke (Nix is
  missing, the Docker daemon does not answer, a build failed, a guest never booted).
  Fixtures raise these; pytest reports them as test *errors* with the message alone.
* ``CheckFailed``: *the system under test* failed a check (an HTTP status, a unit that
  is not active). It subclasses ``AssertionError`` so pytest reports a *failure*.

Timeouts subclass both ``FlakeError`` and ``TimeoutError``.

Messages are one line that names the thing and the fix; long evidence (a build log,
a console log, container logs) goes into a note (:func:`add_note`) so it follows the message.
"""

from __future__ import annotations

from collections.abc import Sequence


class FlakeError(Exception):
    """Base of every error pytest-flake raises about its tools or infrastructure."""

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.details = details
        text = message if not hint else f"{message} ({hint})"
        super().__init__(text)
        if details:
            add_note(self, details)


class UsageError(FlakeError):
    """Bad configuration or arguments from the user: a bad option value, a missing flake."""


class CommandLineError(UsageError):
    """A bad value typed on the command line: the run stops at once (from the environment or an ini file, only a
    run that uses the plugin fails)."""


class MissingToolError(FlakeError):
    """A program pytest-flake needs is not installed (nix, ssh-keygen, mksquashfs...)."""


class InfrastructureError(FlakeError):
    """A daemon or service pytest-flake drives is unreachable or misbehaves."""


class NixError(FlakeError):
    """Nix could not evaluate or build something."""


class MissingOutputError(NixError, UsageError):
    """The flake has no such output; the message lists the ones it has."""


class BuildError(NixError):
    """``nix build`` failed; carries the attribute, exit code and the tail of the log."""


class BuildCancelled(NixError):
    """A background build (``Flake.prefetch``) was cancelled: whoever waited for it stopped first."""


class EvalError(NixError):
    """Nix could not evaluate the flake (syntax, type or missing-file error); names the position in the user's file."""


class DockerError(InfrastructureError):
    """The Docker daemon refused or failed an operation."""


class SSHError(InfrastructureError):
    """``ssh`` to another host failed: host key unknown, authentication refused, host unreachable, a forward refused."""


class VMError(InfrastructureError):
    """libvirt, QEMU or the guest failed."""


class NspawnError(InfrastructureError):
    """systemd-nspawn, a container's OS tree or its loop devices failed."""


class PortableError(FlakeError):
    """A portable service image is unusable or portablectl failed."""


class ProcessError(FlakeError):
    """A local program (``flake.run()``, :class:`~pytest_flake.process.Process`) could not be started or used."""


class ProcessExited(ProcessError):
    """A program started by ``flake.run()`` exited before it was ready (its port never opened)."""


class FlakeTimeout(FlakeError, TimeoutError):
    """Something did not become ready in time; the note carries what was seen last."""


class GiveUp(Exception):
    """Raised by a probe given to :func:`~pytest_flake.waiting.wait_for` to stop waiting at once.

    What it saw will not change (a unit that failed, a container that exited): the caller
    turns it into the error it reports. Like :class:`NotReady`, it never leaves the caller.
    """


class FlakeWarning(UserWarning):
    """Something about the flake that is probably not what the user wants (untracked files...)."""


class NotReady(Exception):
    """Raised by a probe given to :func:`~pytest_flake.waiting.wait_for` to say "not yet".

    Its message is what was seen. Not a :class:`FlakeError`: it never leaves ``wait_for``,
    which turns the last one into a :class:`FlakeTimeout`.
    """


class CheckFailed(AssertionError):
    """The system under test failed a check; reported by pytest as a test failure.

    A failed guest command or wait carries what it saw: ``rc`` (None when no command ran),
    ``stdout``, ``stderr`` and ``journal`` (the tail of the guest's journal, or of the unit's).
    """

    def __init__(self, message: str = "", *, rc: int | None = None, stdout: str = "", stderr: str = "",
                 journal: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.journal = journal


class CheckTimeout(CheckFailed, FlakeTimeout):
    """A guest wait (``wait_until_succeeds``, ``wait_for_unit``...) ran out of time.

    Both a :class:`CheckFailed` (a test failure, with rc, stdout, stderr and journal of the
    last attempt) and a :class:`FlakeTimeout`; a check that fails at once is not one.
    """

    def __init__(self, message: str = "", *, rc: int | None = None, stdout: str = "", stderr: str = "",
                 journal: str = "") -> None:
        CheckFailed.__init__(self, message, rc=rc, stdout=stdout, stderr=stderr, journal=journal)
        self.message = message
        self.hint = None
        self.details = None


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` on every Python this package supports.

    ``BaseException.add_note`` is new in 3.11; on 3.10 the note goes into ``__notes__``
    directly, which is where 3.11 keeps it and where pytest reads it on every version.
    """
    if not isinstance(note, str):
        raise TypeError(f"a note must be a str, not {type(note).__name__}")
    notes: list[str] | None = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        setattr(exc, "__notes__", notes)  # noqa: B010 (no such attribute before 3.11 for type checkers)
    notes.append(note)


def notes_of(exc: BaseException) -> str:
    """The notes of ``exc`` as one text (empty without notes), on every supported Python."""
    return "\n".join(getattr(exc, "__notes__", None) or [])


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of ``text`` (for logs in messages)."""
    parts = text.rstrip().splitlines()
    return "\n".join(parts[-lines:])


def counted(n: int, what: str) -> str:
    """``1 container``, ``2 containers``: a count in a message."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def format_choices(choices: Sequence[str]) -> str:
    """``a, b, c`` or ``(none)``: for messages listing what exists."""
    return ", ".join(choices) if choices else "(none)"
