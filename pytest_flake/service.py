"""One service in every form: a local run, a Docker container, a portable service in a guest.

The ``service`` fixture runs one test body once per target; this module holds what each
target means, without pytest::

    local     nix build .#default && ./result/bin/web-server       (a Process on this machine)
    docker    nix build .#docker && docker load && docker run -p   (a Container)
    portable  nix build .#portable && portablectl attach --now     (a PortableService in a guest)

Every target is a :class:`ServiceTarget` and answers the same questions: ``.url(path)`` (a
127.0.0.1 URL of the service), ``.logs()`` (program output, container logs, or the unit's
journal), ``.upgrade(attr)`` (local: restart from the new build on the same port; docker: a new
container from the new image on the same host port; portable: ``portablectl reattach``) and
``.vm`` (the guest of the portable target, else None). Each is a context manager; leaving it
removes what it started, whatever happened before, unless :meth:`~ServiceTarget.keep` said not to.

:data:`REGISTRY` maps a target's name to its class; ``cls.create(spec, supplies)`` makes one
from what the caller supplies (:class:`Supplies`: the fixture's pytest fixtures). The portable
target runs on a :class:`PortableHost` (``--flake-portable-host``: a VM or a systemd container),
a parameter of the target; its guest comes from the caller.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .config import TARGETS
from .errors import UsageError, format_choices, tail

if TYPE_CHECKING:
    from .docker import Container, Docker, Image
    from .guest import Guest
    from .nix import Flake, Prefetch
    from .portable import PortableService
    from .process import Process

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PortableHost:
    """Where the portable target runs (``--flake-portable-host``), and the markers its variant carries."""

    name: str
    markers: tuple[str, ...]  # so -m "not vm" drops the VM variant
    # detach the service at the end; False: its guest is destroyed right after, and the attachment with it
    detach: bool


PORTABLE_HOSTS: dict[str, PortableHost] = {host.name: host for host in (
    PortableHost("vm", ("vm", "portable"), detach=False),  # portablectl detach takes 2-3 s in an emulated VM
    PortableHost("nspawn", ("portable", "nspawn"), detach=True),  # a tenth of a second in a container
)}


def portable_host(name: str | None) -> PortableHost:
    """The :class:`PortableHost` named ``name`` (None: ``vm``); an unknown name is a :class:`UsageError`."""
    host = PORTABLE_HOSTS.get(name or "vm")
    if host is None:
        raise UsageError(f"--flake-portable-host={name} is not available",
                         hint=f"valid hosts: {format_choices(tuple(PORTABLE_HOSTS))}")
    return host


def target_markers(target: str, portable_host_name: str = "vm") -> tuple[str, ...]:
    """The markers of a variant; the portable one names where it runs (``vm``, or ``nspawn``...)."""
    return REGISTRY[target].markers(portable_host(portable_host_name))


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


class Supplies(Protocol):
    """What a target asks of its caller, each thing only by the target that needs it.

    The ``service`` fixture answers with pytest fixtures, made on first ask (a ``[local]``
    variant never connects to Docker); a test may answer with fakes.
    """

    timeout: float  # --flake-timeout
    portable_host: str  # --flake-portable-host: "vm" or "nspawn"

    def flake(self) -> Flake:
        """The flake under test."""

    def log_dir(self) -> Path | None:
        """Where a local run writes its output (the session's folder)."""

    def docker(self) -> Docker:
        """The session's Docker daemon."""

    def docker_image(self, attr: str) -> Image:
        """The image of the flake attribute ``attr``, loaded into :meth:`docker` (once a session)."""

    def guest(self) -> Guest:
        """A started guest on :attr:`portable_host`; the caller removes it after the service stops."""


class ServiceTarget(Protocol):
    """What one form of the service does; the ``service`` fixture yields one (see the module's docstring)."""

    target: ClassVar[str]  # its name in REGISTRY and in the test id: local, docker, portable
    evidence_title: ClassVar[str]  # the report section of its logs: "<title> <target> service <attr>"
    attr: str  # the flake attribute running now (upgrade changes it)

    @classmethod
    def create(cls, spec: ServiceSpec, supplies: Supplies) -> ServiceTarget:
        """A target (not started) for ``spec``, from what ``supplies`` gives."""

    @classmethod
    def markers(cls, host: PortableHost) -> tuple[str, ...]:
        """The markers of this target's variant when the portable target runs on ``host``."""

    @property
    def vm(self) -> Guest | None:
        """The guest the portable service runs in; None for the other targets."""

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` where this form of the service answers."""

    def logs(self) -> str:
        """What the service wrote: program output, container logs, or the unit's journal."""

    def upgrade(self, attr: str) -> ServiceTarget:
        """Replace the running service with the build of ``attr`` (the same URL keeps working)."""

    def start(self) -> ServiceTarget:
        """Start the service and wait until it answers."""

    def how_to_reach(self) -> str:
        """A line telling a person how to reach the service by hand (for --flake-keep)."""

    def keep(self) -> None:
        """Leave what was started as it is when the target stops (a failed test under --flake-keep)."""

    def stop(self) -> None:
        """Stop and remove what this target started (unless kept); idempotent."""

    def __enter__(self) -> ServiceTarget: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


_S = TypeVar("_S", bound="Service")


class Service:
    """What the targets share: the spec, the attribute, the context manager; see :class:`ServiceTarget`."""

    target: ClassVar[str] = ""
    evidence_title: ClassVar[str] = ""
    own_markers: ClassVar[tuple[str, ...]] = ()
    attr: str

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.attr = spec.attr(self.target)

    @classmethod
    def markers(cls, host: PortableHost) -> tuple[str, ...]:
        return cls.own_markers

    @property
    def vm(self) -> Guest | None:
        return None

    def url(self, path: str = "/") -> str:
        raise NotImplementedError

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Service {self.target} {self.attr}>"


class LocalService(Service):
    """The flake's program run on this machine on a free port (``$PORT`` and ``{port}`` in env)."""

    target = "local"
    evidence_title = "output of"
    own_markers = ("nix",)

    def __init__(self, spec: ServiceSpec, flake: Flake, *, timeout: float = 120.0,
                 log_dir: Path | None = None) -> None:
        super().__init__(spec)
        self.flake = flake
        self.timeout = timeout
        self.log_dir = log_dir
        self.process: Process | None = None
        self.port = 0
        self._old_logs: list[str] = []

    @classmethod
    def create(cls, spec: ServiceSpec, supplies: Supplies) -> LocalService:
        return cls(spec, supplies.flake(), timeout=supplies.timeout, log_dir=supplies.log_dir())

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

    def keep(self) -> None:
        """Nothing: a local run ends with its test (the line printed names its URL and pid)."""

    def stop(self) -> None:
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
    evidence_title = "logs of the container of"
    own_markers = ("docker",)

    def __init__(self, spec: ServiceSpec, docker: Docker, image_of: Callable[[str], Image]) -> None:
        super().__init__(spec)
        self.docker = docker
        self.image_of = image_of
        self.container: Container | None = None
        self.host_port = 0
        self.daemon_port = 0
        self._old_logs: list[str] = []

    @classmethod
    def create(cls, spec: ServiceSpec, supplies: Supplies) -> DockerService:
        return cls(spec, supplies.docker(), supplies.docker_image)

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

    def stop(self) -> None:
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
        return self.container.how_to_reach()


class PortableTarget(Service):
    """The flake's portable image attached with ``portablectl`` in a guest from ``guest_of()`` on ``host``."""

    target = "portable"
    evidence_title = "journal of"

    def __init__(self, spec: ServiceSpec, guest_of: Callable[[], Guest], resolve: Callable[[str], Path], *,
                 host: PortableHost = PORTABLE_HOSTS["vm"], timeout: float = 120.0,
                 prefetch: Callable[[str], Prefetch] | None = None) -> None:
        super().__init__(spec)
        self.guest_of = guest_of
        self.resolve = resolve
        self.host = host
        self.timeout = timeout
        self.prefetch = prefetch  # starts the image's build in the background: it runs while the guest boots
        self.guest: Guest | None = None
        self.portable: PortableService | None = None
        self.kept = False
        self._dropins: list[str] = []

    @classmethod
    def create(cls, spec: ServiceSpec, supplies: Supplies) -> PortableTarget:
        flake = supplies.flake()
        return cls(spec, supplies.guest, resolve=lambda attr: flake.build(attr).out,
                   host=portable_host(supplies.portable_host), timeout=supplies.timeout, prefetch=flake.prefetch)

    @classmethod
    def markers(cls, host: PortableHost) -> tuple[str, ...]:
        return host.markers

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

    def keep(self) -> None:
        """The service stays attached, with its env drop-ins, in the kept guest."""
        self.kept = True

    def stop(self) -> None:
        """Detach the service and remove its drop-ins; nothing when kept, or when the guest goes right after."""
        if self.kept or not self.host.detach:
            return
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


# the targets by name, in the order of TARGETS: what the service fixture makes for each variant
REGISTRY: dict[str, type[ServiceTarget]] = {"local": LocalService, "docker": DockerService, "portable": PortableTarget}


def _systemd_quote(text: str) -> str:
    """A value for ``Environment=``: double-quoted, with systemd's C-style escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'
