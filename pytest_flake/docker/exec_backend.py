"""The testinfra adapter for containers: ``container.host`` runs commands through the SDK's exec.

testinfra's own ``docker://`` backend shells out to the ``docker`` CLI; this one subclasses
it and overrides only ``run``, so no CLI is needed on ``PATH`` and no ``DOCKER_HOST`` in the
environment. What it relies on in testinfra (checked by ``tests/unit/test_docker_exec_backend.py``
against the installed release; pyproject pins the tested range):

* ``testinfra.backend.docker.DockerBackend(name)``, which sets ``.user`` from ``user@name``;
* ``BaseBackend.get_command(command, *args)``, ``.encode(text)``, ``.result(rc, cmd, out, err)``;
* ``BaseBackend._encoding``, read by ``.encoding`` (set here so testinfra does not run
  python in the container to ask for it);
* ``testinfra.host.Host(backend)``.

testinfra is imported only when a test asks for ``.host``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
from typing import TYPE_CHECKING, Any

from ..errors import DockerError

if TYPE_CHECKING:
    from .container import Container

log = logging.getLogger("pytest_flake")


def container_shell(container: Container) -> list[str]:
    """A shell in the container: /bin/sh, else the interpreter of the entrypoint's shebang."""
    sdk = container._container
    code, _ = sdk.exec_run(["/bin/sh", "-c", "true"])
    if code == 0:
        return ["/bin/sh"]
    config = (sdk.attrs.get("Config") or {})
    program = ((config.get("Entrypoint") or []) + (config.get("Cmd") or []))[:1]
    if program:
        with contextlib.suppress(Exception):
            stream, _stat = sdk.get_archive(program[0])
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r|") as archive:
                for member in archive:
                    handle = archive.extractfile(member)
                    first = (handle.read(256) if handle else b"").split(b"\n", 1)[0]
                    if first.startswith(b"#!"):
                        words = first[2:].decode().split()
                        if words:
                            log.debug("docker: %s has no /bin/sh; using %s", container.name, words)
                            return words
                    break
    raise DockerError(f"container {container.name} ({container.ref}) has no shell for testinfra",
                      hint="no /bin/sh and no script entrypoint; add a shell to the image to use .host")


def exec_backend(container: Container) -> Any:
    """A testinfra backend (a ``DockerBackend``) that runs each command with the SDK's exec."""
    from testinfra.backend.docker import DockerBackend

    class ExecBackend(DockerBackend):  # type: ignore[misc]
        """testinfra's docker backend, running commands through the SDK's exec."""

        def __init__(self) -> None:
            super().__init__(container.id)
            self._shell: list[str] | None = None
            self._encoding = "utf-8"

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            if self._shell is None:
                self._shell = container_shell(container)
            cmd = self.get_command(command, *args)
            user = self.user or ""
            code, (out, err) = container._container.exec_run([*self._shell, "-c", cmd], demux=True, user=user)
            return self.result(code, self.encode(cmd), out or b"", err or b"")

    return ExecBackend()
