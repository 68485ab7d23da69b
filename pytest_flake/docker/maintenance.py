"""Docker as a :class:`~pytest_flake.components.Component`: the sweep and the doctor.

:meth:`DockerComponent.sweep` removes the containers labelled with the ids of dead sessions
(Docker keeps its state in the daemon, under the session label, not under the state root);
:meth:`DockerComponent.doctor` checks the SDK, the endpoint, the daemon's version and
labelled leftovers. The registry (:mod:`pytest_flake.components`) finds it through
:func:`component`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DockerError, SSHError, counted
from ..session import LABEL, state_dir
from .daemon import Docker, describe_endpoint

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

Check = tuple[bool, str]  # one doctor line: (ok, what was found or what to do)


class DockerComponent:
    """Containers: what killed sessions left is removed by their label; the daemon is checked."""

    name = "docker"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def _docker(self, settings: Settings | None) -> Docker:
        return Docker.from_settings(settings) if settings is not None else Docker()

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        """Remove the containers labelled with these (dead) sessions; quiet when no daemon answers."""
        if not dead_ids:
            return []
        docker = self._docker(self.settings)
        try:
            docker.connect(timeout=5.0)
        except (DockerError, SSHError) as exc:  # SSHError: an ssh:// endpoint's host
            log.debug("docker: no sweep: %s", exc)
            docker.close()
            return []
        removed = 0
        try:
            for session_id in dead_ids:
                for found in docker.containers(session_id):
                    try:
                        found.remove(force=True, v=True)
                        removed += 1
                        log.warning("docker: removed container %s left by session %s", found.name, session_id)
                    except Exception as exc:
                        log.warning("docker: could not remove container %s of session %s: %s", found.name,
                                    session_id, exc)
        finally:
            docker.close()
        return [counted(removed, "container") + " removed"] if removed else []

    def doctor(self, settings: Settings) -> list[Check]:
        """Checks for ``--flake-doctor``: the SDK, the endpoint, the daemon's version and leftovers."""
        checks: list[Check] = []
        try:
            sdk: Any = importlib.import_module("docker")
            checks.append((True, f"docker: SDK {sdk.__version__}"))
        except ImportError:
            return [(False, "docker: the Docker SDK is not installed; pip install 'pytest-flake[docker]'")]
        client = self._docker(settings)
        try:
            client.connect(timeout=5.0)
        except (DockerError, SSHError) as exc:  # SSHError: an ssh:// endpoint's host
            client.close()
            return [*checks, (False, f"docker: {exc.message}; {exc.hint}")]
        try:
            info = client.client.info()
            checks.append((True, f"docker: {describe_endpoint(settings)} answers: {client.version}, "
                                 f"storage {info.get('Driver', '?')}"))
            leftovers = client.client.containers.list(all=True, filters={"label": LABEL})
            checks.append((not leftovers, f"docker: {len(leftovers)} container(s) labelled {LABEL}"
                                          + (" (a running session, or left by a killed one: the next session "
                                             "sweeps them)" if leftovers else "")))
        finally:
            client.close()
        return checks


def component(settings: Settings | None = None) -> DockerComponent:
    """The Docker component, for the registry in :mod:`pytest_flake.components`."""
    return DockerComponent(settings)


# the functions of the single-module ``pytest_flake.docker``, kept for code that imports them
def sweep(session_ids: Sequence[str], settings: Settings) -> None:
    """``component(settings).sweep(session_ids, state_dir())``."""
    DockerComponent(settings).sweep(session_ids, state_dir())


def doctor(settings: Settings) -> list[Check]:
    """``component(settings).doctor(settings)``."""
    return DockerComponent(settings).doctor(settings)
