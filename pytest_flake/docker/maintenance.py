"""What a session leaves of Docker, and what ``--flake-doctor`` says about it.

:func:`sweep` removes the containers labelled with the ids of dead sessions; :func:`doctor`
checks the SDK, the endpoint, the daemon's version and labelled leftovers.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import DockerError
from ..session import LABEL
from .daemon import Docker, describe_endpoint

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("pytest_flake")


def sweep(session_ids: list[str], settings: Settings) -> None:
    """Remove the containers labelled with these (dead) sessions; quiet when no daemon answers."""
    if not session_ids:
        return
    docker = Docker.from_settings(settings)
    try:
        docker.connect(timeout=5.0)
    except DockerError as exc:
        log.debug("docker: no sweep: %s", exc)
        return
    try:
        for session_id in session_ids:
            for found in docker.containers(session_id):
                try:
                    found.remove(force=True, v=True)
                    log.warning("docker: removed container %s left by session %s", found.name, session_id)
                except Exception as exc:
                    log.warning("docker: could not remove container %s of session %s: %s", found.name,
                                session_id, exc)
    finally:
        docker.close()


def doctor(settings: Settings) -> list[tuple[bool, str]]:
    """Checks for ``--flake-doctor``: the SDK, the endpoint, the daemon's version and leftovers."""
    checks: list[tuple[bool, str]] = []
    try:
        sdk: Any = importlib.import_module("docker")
        checks.append((True, f"docker: SDK {sdk.__version__}"))
    except ImportError:
        return [(False, "docker: the Docker SDK is not installed; pip install 'pytest-flake[docker]'")]
    client = Docker.from_settings(settings)
    try:
        client.connect(timeout=5.0)
    except DockerError as exc:
        return [*checks, (False, f"docker: {exc.message}; {exc.hint}")]
    try:
        info = client.client.info()
        checks.append((True, f"docker: {describe_endpoint(settings)} answers: {client.version}, "
                             f"storage {info.get('Driver', '?')}"))
        leftovers = client.client.containers.list(all=True, filters={"label": LABEL})
        checks.append((not leftovers, f"docker: {len(leftovers)} container(s) labelled {LABEL}"
                                      + (" (a running session, or left by a killed one: the next session sweeps "
                                         "them)" if leftovers else "")))
    finally:
        client.close()
    return checks
