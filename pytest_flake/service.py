"""One service in every form: a local run, a Docker container, a portable service in a guest.

The ``service`` fixture runs one test body once per target; this module holds what each
target means, without pytest::

    local     nix build .#default && ./result/bin/web-server       (a Process on this machine)
    docker    nix build .#docker && docker load && docker run -p   (a Container)
    portable  nix build .#portable && portablectl attach --now     (a PortableService in a guest)

Every target answers the same questions: ``.url(path)`` (a 127.0.0.1 URL of the service),
``.logs()`` (program output, container logs, or the unit's journal), ``.upgrade(attr)``
(local: restart from the new build on the same port; docker: a new container from the new
image on the same host port; portable: ``portablectl reattach``) and ``.vm`` (the guest of
the portable target, else None). Each is a context manager; leaving it removes what it
started, whatever happened before.

The guest of the portable target comes from a callable handed in by the caller (the fixture
asks for a VM today; a systemd container can be plugged in the same way).
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import TARGETS
from .errors import UsageError, tail

if TYPE_CHECKING:
    from .docker import Container, Docker, Image
    from .guest import Guest
    from .nix import Flake, Prefetch
    from .portable import PortableService
    from .process import Process

log = logging.getLogger(__name__)

# the markers each variant of a service test carries (so -m "not vm" drops the portable one)
TARGET_MARKERS: dict[str, tuple[str, ...]] = {
    "local": ("nix",),
    "docker": ("docker",),
    "portable": ("vm", "portable"),
}


def target_markers(target: str, portable_host: str = "vm") -> tuple[str, ...]:
    """The markers of a variant; the portable one names where it runs (``vm``, or ``nspawn``...)."""
    if target == "portable" and portable_host != "vm":
        return ("portable", portable_host)
    return TARGET_MARKERS[target]


MARKER_SIGNATURE = 'flake_service(port, local="default", docker="docker", portable="portable", env=None)'
ENV_DROPIN = "50-pytest-flake-env.conf"


@dataclass(frozen=True)
class ServiceSpec:
    """What ``@pytest.mark.flake_service(...)`` says: the port and the attribute of each form."""

    port: int
    local: str = "default"
    docker: str = "docker"
    portable: str = "portable"
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_marker(cls, args: Sequence[Any], kwargs: Mapping[str, Any], where: str = "") -> ServiceSpec:
        """Validate the marker's arguments; a mistake is a :class:`UsageError` naming the fix."""
        prefix = f"{where}: " if where else ""
        usage = f"write @pytest.mark.{MARKER_SIGNATURE}"
        try:
            bound = _bind(*args, **kwargs)
        except TypeError as exc:
            raise UsageError(f"{prefix}bad flake_service marker: {exc}", hint=usage) from None
        port = bound["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise UsageError(f"{prefix}flake_service: port {port!r} is not a TCP port",
                             hint="the port the service listens on, e.g. flake_service(3031)")
        for name in TARGETS:
            if not isinstance(bound[name], str) or not bound[name]:
                raise UsageError(f"{prefix}flake_service: {name}={bound[name]!r} is not a flake attribute",
                                 hint=usage)
        env = bound["env"] or {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in env.items()):
            raise UsageError(f"{prefix}flake_service: env={env!r} is not a mapping of str to str", hint=usage)
        return cls(port=port, local=bound["local"], docker=bound["docker"], portable=bound["portable"],
                   env=dict(env))

    def attr(self, target: str) -> str:
        """The flake attribute of ``target``."""
        return str(getattr(self, target))

    def env_for(self, port: int) -> dict[str, str]:
        """``env`` with ``{port}`` replaced by ``port`` (only that placeholder: other braces stay)."""
        return {key: value.replace("{port}", str(port)) for key, value in self.env.items()}


def _bind(port: Any, local: Any = "default", docker: Any = "docker", portable: Any = "portable",
          env: Any = None) -> dict[str, Any]:
    return {"port": port, "local": local, "docker": docker, "portable": portable, "env": env}


class Service:
    """One form of the service under test; see the module's docstring."""

    target = ""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.attr = spec.attr(self.target)

    # what tests use
    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` where this form of the service answers."""
        raise NotImplementedError

    def logs(self) -> str:
        """What the service wrote: program output, container logs, or the unit's journal."""
        raise NotImplementedError

    def upgrade(self, attr: str) -> Service:
        """Replace the running service with the build of ``attr`` (the same URL keeps working)."""
        raise NotImplementedError

    @property
    def vm(self) -> Guest | None:
        """The guest the portable service runs in; None for the other targets."""
        return None

    # lifecycle
    def start(self) -> Service:
        raise NotImplementedError

    def close(self) -> None:
        """Stop and remove what this service started; idempotent."""
        raise NotImplementedError

    def how_to_reach(self) -> str:
        """A line telling a person how to reach the service by hand (for --flake-keep)."""
        return self.url()

    def __enter__(self) -> Service:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Service {self.target} {self.attr}>"


class LocalService(Service):
    """The flake's program run on this machine on a free port (``$PORT`` and ``{port}`` in env)."""

    target = "local"

    def __init__(self, spec: ServiceSpec, flake: Flake, *, timeout: float = 120.0,
                 log_dir: Path | None = None) -> None:
        super().__init__(spec)
        self.flake = flake
        self.timeout = timeout
        self.log_dir = log_dir
        self.process: Process | None = None
        self.port = 0
        self._old_logs: list[str] = []

    def _start(self, attr: str, port: int) -> Process:
        from .process import Process

        program = self.flake.program(attr)
        process = Process([str(program)], env=self.spec.env_for(port), port=port, timeout=self.timeout,
                          name=f"{Path(str(program)).name}", log_dir=self.log_dir)
        self.process = process
        process.start()
        return process

    def start(self) -> LocalService:
        from .waiting import free_port

        self.port = free_port()
        self._start(self.attr, self.port)
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def logs(self) -> str:
        current = self.process.logs() if self.process is not None else ""
        return "".join(self._old_logs) + current

    def upgrade(self, attr: str) -> LocalService:
        """Stop the program and start the build of ``attr`` on the same port."""
        self.flake.program(attr)  # build first: a build error leaves the old run up
        if self.process is not None:
            self.process.stop()
            self._old_logs.append(f"{self.process.logs()}--- upgraded from {self.attr} to {attr}\n")
        self.attr = attr
        self._start(attr, self.port)
        return self

    def close(self) -> None:
        if self.process is not None:
            try:
                self.process.stop()
            except Exception as exc:
                log.warning("pytest-flake: could not stop %s: %s", self.process.name, exc)

    def how_to_reach(self) -> str:
        pid = self.process.pid if self.process is not None else "?"
        return f"{self.url()} (pid {pid})"


class DockerService(Service):
    """The flake's image run in a container; the service's port published on 127.0.0.1."""

    target = "docker"

    def __init__(self, spec: ServiceSpec, docker: Docker, image_of: Callable[[str], Image]) -> None:
        super().__init__(spec)
        self.docker = docker
        self.image_of = image_of
        self.container: Container | None = None
        self.host_port = 0
        self.daemon_port = 0
        self._old_logs: list[str] = []

    def _run(self, attr: str, host_port: int | None) -> Container:
        image = self.image_of(attr)
        container = self.docker.container(image, ports=[self.spec.port], env=self.spec.env_for(self.spec.port),
                                          host_ports={self.spec.port: host_port} if host_port else None)
        self.container = container
        container.start()
        self.host_port = container.port(self.spec.port)
        self.daemon_port = container.daemon_port(self.spec.port)  # differs through ssh (a remote daemon)
        return container

    def start(self) -> DockerService:
        self._run(self.attr, None)
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.host_port}/{path.lstrip('/')}"

    def logs(self) -> str:
        current = self.container.logs() if self.container is not None else ""
        return "".join(self._old_logs) + current

    def upgrade(self, attr: str) -> DockerService:
        """Load the image of ``attr`` and run it in a new container on the same host port."""
        self.image_of(attr)  # load first (once a session): a bad image leaves the old container up
        old = self.container
        if old is not None:
            self._old_logs.append(f"{old.logs()}--- upgraded from {self.attr} to {attr}\n")
            old.remove()
        self.attr = attr
        self._run(attr, self.daemon_port)
        return self

    def keep(self) -> None:
        if self.container is not None:
            self.container.keep = True

    def close(self) -> None:
        container = self.container
        if container is None:
            return
        if container.keep:
            log.warning("docker: keeping container %s", container.name)
            return
        try:
            container.remove()
        except Exception as exc:
            log.warning("pytest-flake: could not remove container %s: %s", container.name, exc)

    def how_to_reach(self) -> str:
        """``docker exec -it NAME SHELL`` with a shell that exists in the image (Nix images have no /bin/sh)."""
        if self.container is None:
            return "(no container)"
        return reach_container(self.container)


def reach_container(container: Container) -> str:
    """``Container.how_to_reach()`` with a shell that exists in the image (Nix images have no /bin/sh)."""
    line = container.how_to_reach()
    try:
        shell = container_shell(container._container)
    except Exception as exc:  # never let a hint hide the failure
        log.debug("docker: no shell found in %s: %s", container.name, exc)
        return line
    if shell is None:
        return line + " (the image has no shell)"
    return line.replace(f"exec -it {container.name} sh", f"exec -it {container.name} {shlex.join(shell)}", 1)


_SHELL_IN_STORE = re.compile(r"(?:\./)?store/[^/]+/bin/(sh|bash|busybox)")


def container_shell(raw: Any) -> list[str] | None:
    """The argv of an interactive shell in a running container (a docker SDK container), or None.

    ``/bin/sh`` and friends first; else a shell or a busybox in ``/nix/store``, as images that
    ``dockerTools`` builds hold no ``/bin``. Each candidate is tried with ``-c true``.
    """
    import tarfile

    def works(argv: list[str]) -> bool:
        return int(raw.exec_run([*argv, "-c", "true"]).exit_code or 0) == 0

    for path in ("/bin/sh", "/usr/bin/sh", "/bin/bash"):
        if works([path]):
            return [path]
    try:
        stream, _ = raw.get_archive("/nix/store")
    except Exception:
        return None
    found: list[list[str]] = []
    reader: Any = _ChunkReader(stream)
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        for member in archive:
            match = _SHELL_IN_STORE.fullmatch(member.name)
            if match:
                path = "/nix/" + member.name.removeprefix("./")
                found.append([path, "sh"] if match.group(1) == "busybox" else [path])
    found.sort(key=len)  # a shell itself before busybox
    for argv in found:
        if works(argv):
            return argv
    return None


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


class PortableTarget(Service):
    """The flake's portable image attached with ``portablectl`` in a guest from ``guest_of()``."""

    target = "portable"

    def __init__(self, spec: ServiceSpec, guest_of: Callable[[], Guest], resolve: Callable[[str], Path], *,
                 timeout: float = 120.0, prefetch: Callable[[str], Prefetch] | None = None) -> None:
        super().__init__(spec)
        self.guest_of = guest_of
        self.resolve = resolve
        self.timeout = timeout
        self.prefetch = prefetch  # starts the image's build in the background: it runs while the guest boots
        self.guest: Guest | None = None
        self.portable: PortableService | None = None
        self._dropins: list[str] = []

    @property
    def vm(self) -> Guest | None:
        return self.guest

    def start(self) -> PortableTarget:
        from .portable import PortableService

        building = self.prefetch(self.attr) if self.prefetch is not None else None
        started = time.monotonic()
        try:
            self.guest = self.guest_of()
            if building is not None:
                booted = time.monotonic()
                building.result()  # a failed build fails here, after the guest is up (and torn down by its owner)
                log.info("portable: %s built while %s started (%.1fs), then %.1fs more waiting for the build",
                         self.attr, self.guest.name, booted - started, time.monotonic() - booted)
        except BaseException:
            if building is not None:
                building.cancel()
            raise
        service = PortableService(self.guest, self.attr, resolve=self.resolve, timeout=self.timeout)
        self._write_env(service.units)
        self.portable = service
        service.attach()
        return self

    def _write_env(self, units: Sequence[str]) -> None:
        """``env`` as a runtime drop-in of each service unit, written before the attach starts it."""
        env = self.spec.env_for(self.spec.port)
        if not env or self.guest is None:
            return
        lines = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in env.items())
        for unit in units:
            if not unit.endswith(".service"):
                continue
            folder = f"/run/systemd/system/{unit}.d"
            script = (f"mkdir -p {shlex.quote(folder)} && printf '%s' {shlex.quote('[Service]' + chr(10) + lines)}"
                      f" > {shlex.quote(folder + '/' + ENV_DROPIN)}")
            result = self.guest.run(shlex.join(["sh", "-c", script]))
            if result.rc != 0:
                raise UsageError(f"cannot write the env drop-in of {unit} in {self.guest.name}: "
                                 f"{tail(str(result.stderr), 5)}")
            self._dropins.append(folder)

    def url(self, path: str = "/") -> str:
        if self.guest is None:
            raise UsageError("the portable service is not started")
        return self.guest.url(self.spec.port, path)

    def logs(self) -> str:
        if self.portable is None:
            return ""
        return self.portable.journal()

    def upgrade(self, attr: str) -> PortableTarget:
        """``portablectl reattach --now`` to the image of ``attr``; waits for the new units."""
        if self.portable is None:
            raise UsageError("the portable service is not started")
        self.portable.reattach(attr)
        self.attr = attr
        return self

    def close(self) -> None:
        if self.portable is not None:
            self.portable.close()
        if self.guest is not None:
            for folder in self._dropins:
                try:
                    self.guest.run(shlex.join(["rm", "-rf", folder]))
                except Exception as exc:
                    log.warning("pytest-flake: could not remove %s from %s: %s", folder, self.guest.name, exc)
        self._dropins.clear()

    def how_to_reach(self) -> str:
        units = " ".join(self.portable.units) if self.portable is not None else ""
        name = self.guest.name if self.guest is not None else "?"
        return f"{self.url() if self.guest else ''} in {name}: systemctl status {units}; journalctl -u {units}"


def _systemd_quote(text: str) -> str:
    """A value for ``Environment=``: double-quoted, with systemd's C-style escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'
