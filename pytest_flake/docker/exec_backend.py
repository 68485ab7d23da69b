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
import re
import tarfile
from typing import Any, Protocol

from ..errors import DockerError
from .calls import Endpoint, daemon_call

log = logging.getLogger(__name__)


class Execs(Protocol):
    """What the adapter needs of a container (a :class:`~pytest_flake.docker.Container` is one)."""

    name: str
    ref: str

    @property
    def docker(self) -> Endpoint: ...

    @property
    def id(self) -> str: ...

    @property
    def sdk(self) -> Any: ...


_SHELLS = ("/bin/sh", "/usr/bin/sh", "/bin/bash")
_SHELL_IN_STORE = re.compile(r"(?:\./)?store/[^/]+/bin/(sh|bash|busybox)")


def container_shell(container: Execs) -> list[str]:
    """The argv of a shell in a running container (``argv + ["-c", script]`` runs a script).

    ``/bin/sh`` and friends first; else the interpreter of the entrypoint's shebang; else a
    shell or a busybox in ``/nix/store``, as images that ``dockerTools`` builds hold no
    ``/bin``. Each candidate is tried with ``-c true``. None at all is a :class:`DockerError`.
    """
    sdk = container.sdk

    def works(argv: list[str]) -> bool:
        code, _ = sdk.exec_run([*argv, "-c", "true"])
        return int(code or 0) == 0

    for path in _SHELLS:
        if works([path]):
            return [path]
    for argv in (_shebang(sdk), *_store_shells(sdk)):
        if argv and works(argv):
            log.debug("docker: %s has no /bin/sh; using %s", container.name, argv)
            return argv
    raise DockerError(f"container {container.name} ({container.ref}) has no shell",
                      hint="no /bin/sh, no script entrypoint and no shell in /nix/store; add a shell to the image")


def _shebang(sdk: Any) -> list[str]:
    """The interpreter (with its arguments) of the entrypoint's ``#!`` line; [] when it is no script."""
    config = sdk.attrs.get("Config") or {}
    program = ((config.get("Entrypoint") or []) + (config.get("Cmd") or []))[:1]
    if not program:
        return []
    with contextlib.suppress(Exception):
        stream, _stat = sdk.get_archive(program[0])
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r|") as archive:
            for member in archive:
                handle = archive.extractfile(member)
                first = (handle.read(256) if handle else b"").split(b"\n", 1)[0]
                if first.startswith(b"#!"):
                    return first[2:].decode().split()
                break
    return []


def _store_shells(sdk: Any) -> list[list[str]]:
    """Shells and busyboxes in the container's ``/nix/store`` (a shell itself before busybox)."""
    try:
        stream, _ = sdk.get_archive("/nix/store")
    except Exception:
        return []
    found: list[list[str]] = []
    reader: Any = _ChunkReader(stream)
    with contextlib.suppress(tarfile.TarError), tarfile.open(fileobj=reader, mode="r|") as archive:
        for member in archive:
            match = _SHELL_IN_STORE.fullmatch(member.name)
            if match:
                path = "/nix/" + member.name.removeprefix("./")
                found.append([path, "sh"] if match.group(1) == "busybox" else [path])
    return sorted(found, key=len)


class _ChunkReader:
    """A file object (``read``) over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def exec_demux(container: Execs, argv: list[str], user: str = "") -> tuple[int, bytes, bytes]:
    """``exec_run(argv, demux=True)``: exit code, stdout, stderr, without the SDK's lost-output race.

    The SDK reads an exec's output from the raw socket, past the HTTP reader's buffer: output
    that arrived with the response headers is lost (docker-py #2042, #3332). Through an ssh
    tunnel (a daemon on another host) headers and output come together often: about one
    command in seven lost its output. This reads the frames from the buffered reader instead.
    Without the SDK's low-level API (a fake in the unit tests), it is ``exec_run``.
    """
    sdk = container.sdk
    api = getattr(getattr(sdk, "client", None), "api", None)
    if api is None or not hasattr(api, "_post_json"):
        code, (out, err) = sdk.exec_run(argv, demux=True, user=user)
        return code, out or b"", err or b""
    exec_id = api.exec_create(sdk.id, argv, stdout=True, stderr=True, user=user)["Id"]
    response = api._post_json(api._url("/exec/{0}/start", exec_id), headers={"Connection": "Upgrade",
                              "Upgrade": "tcp"}, data={"Tty": False, "Detach": False}, stream=True)
    api._raise_for_status(response)
    reader = response.raw._fp.fp  # the buffered reader: it holds what came with the headers
    with contextlib.suppress(AttributeError):
        reader.raw._sock.settimeout(None)  # a command may run long and print nothing meanwhile
    streams = {1: bytearray(), 2: bytearray()}
    try:
        while True:
            header = reader.read(8)
            if len(header) < 8:
                break
            data = reader.read(int.from_bytes(header[4:8], "big"))
            streams[2 if header[0] == 2 else 1].extend(data)
    finally:
        response.close()
    code = api.exec_inspect(exec_id).get("ExitCode")
    return int(code or 0), bytes(streams[1]), bytes(streams[2])


def exec_backend(container: Execs) -> Any:
    """A testinfra backend (a ``DockerBackend``) that runs each command with the SDK's exec."""
    from testinfra.backend.docker import DockerBackend

    class ExecBackend(DockerBackend):  # type: ignore[misc]
        """testinfra's docker backend, running commands through the SDK's exec."""

        def __init__(self) -> None:
            super().__init__(container.id)
            self._shell: list[str] | None = None
            self._encoding = "utf-8"

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            cmd = self.get_command(command, *args)
            user = self.user or ""
            with daemon_call(container.docker, f"container {container.name}: {command!r}"):
                if self._shell is None:
                    self._shell = container_shell(container)
                code, out, err = exec_demux(container, [*self._shell, "-c", cmd], user=user)
            return self.result(code, self.encode(cmd), out, err)

    return ExecBackend()
