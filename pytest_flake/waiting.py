"""The one waiting primitive: poll until ready, on tenacity.

Everything in pytest-flake that waits (a port opening, a container running, a guest
answering SSH, a unit becoming active) goes through :func:`wait_for`, so every wait
has a deadline, a poll interval, a named set of transient errors, and a timeout error
that says what was seen on the last attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from ._host import free_port, port_answers, port_open
from .errors import FlakeTimeout, NotReady, add_note

log = logging.getLogger(__name__)

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T],
    *,
    what: str,
    timeout: float,
    interval: float = 0.2,
    max_interval: float = 2.0,
    transient: tuple[type[BaseException], ...] = (),
    on_timeout: Callable[[], str] | None = None,
    hint: str | None = None,
) -> T:
    """Call ``probe`` until it returns without raising, for at most ``timeout`` seconds.

    ``probe`` says "not yet" by raising :class:`NotReady` (or one of ``transient``).
    Any other exception propagates at once: a crash is not a reason to keep waiting.
    On timeout raises :class:`FlakeTimeout` naming ``what`` and the last thing seen;
    ``on_timeout`` may return evidence (logs) that is attached as a note.
    """
    started = time.monotonic()
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_exponential(multiplier=interval, min=interval, max=max_interval),
        retry=tenacity.retry_if_exception_type((NotReady, *transient)),
        reraise=False,
    )
    try:
        result = retrying(probe)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        seen = f"{type(last).__name__}: {last}" if last is not None else "nothing"
        err = FlakeTimeout(
            f"{what}: not ready after {timeout:g}s; last seen: {seen}",
            hint=hint,
        )
        if on_timeout is not None:
            try:
                evidence = on_timeout()
            except Exception as evidence_exc:  # evidence must never hide the timeout
                evidence = f"(could not collect logs: {evidence_exc})"
            if evidence:
                add_note(err, evidence)
        raise err from last
    log.debug("%s: ready after %.2fs", what, time.monotonic() - started)
    return result


__all__ = ["NotReady", "free_port", "port_answers", "port_open", "wait_for"]
