"""Calls to a Docker daemon that may stop answering while a test runs.

The SDK reports a daemon that died (killed, restarted, its socket gone) as a ``requests``
connection error, whose traceback runs through urllib3 for a page. :func:`daemon_call` turns it
into one :class:`~pytest_flake.errors.DockerError` that names the daemon, what was being done,
and why the connection failed; for a daemon on another host whose ssh master connection ended,
an :class:`~pytest_flake.errors.SSHError` that says so (the daemon may be fine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from ..errors import DockerError, SSHError


class Endpoint(Protocol):
    """What a call needs of its daemon (a :class:`~pytest_flake.docker.Docker` is one)."""

    url: str

    def check_tunnel(self) -> None: ...


def _why(exc: BaseException) -> str:
    """``Connection refused``: the operating system's reason, from the innermost error that has one."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if isinstance(item, tuple):  # urllib3 wraps the OS's error in a tuple: ("Connection aborted.", error)
            todo += list(item)
            continue
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        todo += [item.__cause__, item.__context__, *item.args]
    return type(exc).__name__


@contextlib.contextmanager
def daemon_call(docker: Endpoint, what: str) -> Iterator[None]:
    """Within the block, a daemon that stopped answering raises one :class:`DockerError` about it."""
    import requests

    try:
        yield
    except requests.exceptions.ConnectionError as exc:
        try:
            docker.check_tunnel()  # another host's: its ssh master may be what ended
        except SSHError as tunnel:
            raise SSHError(f"{what}: {tunnel.message}", hint=tunnel.hint, details=tunnel.details) from exc
        raise DockerError(f"{what}: the Docker daemon at {docker.url} stopped answering ({_why(exc)})",
                          hint="it answered when the container started: was dockerd stopped or restarted? "
                               "the next session removes what this one could not") from exc
