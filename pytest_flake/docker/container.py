"""Containers run detached from an image, with their ports on 127.0.0.1.

:class:`Container` runs an image detached, publishes each port on 127.0.0.1 at a random
host port (never on every address), waits until it runs and its ports answer, labels it
with the session id (so a later session can sweep what a killed one left), and removes it
on exit. On a daemon of another host (``ssh://``) the ports are on that host's loopback:
each is reached through an ssh forward (:meth:`Docker.reach`), closed when the container goes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._host import port_answers
from ..errors import DockerError, UsageError, tail
from ..waiting import NotReady, wait_for
from .calls import Endpoint
from .exec_backend import container_shell, exec_backend

if TYPE_CHECKING:
    from testinfra.host import Host

    from ..tunnel import SSHHost
    from .image import Image

log = logging.getLogger(__name__)


class Daemon(Endpoint, Protocol):
    """What a container needs of its daemon (a :class:`~pytest_flake.docker.Docker` is one)."""

    podman: bool  # Podman's Docker-compatible service, which fails in places where Docker does not
    remote: SSHHost | None  # the ssh master to the daemon's host (None: the daemon runs here)
    edit_run: Callable[[str, dict[str, Any]], None] | None  # edits a container's create arguments (the hook)

    @property
    def client(self) -> Any: ...  # the SDK's DockerClient

    def has_image(self, ref: str) -> dict[str, Any] | None: ...

    def reach(self, port: int) -> int: ...

    def release(self, port: int) -> None: ...


def _podman_hint(daemon: Daemon, text: str) -> str | None:
    """What to do about the errors a Podman service gives where Docker would not, and why."""
    if not daemon.podman:
        return None
    if "rlimit" in text:
        return ("Podman gives containers ulimits (nofile 1048576 for root) above this machine's hard limits; set "
                "default_ulimits = [\"nofile=N:N\", \"nproc=N:N\"] in containers.conf (ulimit -Hn, ulimit -Hu)")
    if "catatonit" in text or "container-init" in text:
        return "Podman runs containers with an init (docker's --init): install catatonit (apt-get install catatonit)"
    return None


# --- containers -------------------------------------------------------------------------------------------
def port_key(port: int | str) -> str:
    """``3031`` -> ``3031/tcp``, ``"53/udp"`` stays; anything else is a :class:`UsageError`."""
    text = str(port)
    if not re.fullmatch(r"\d{1,5}(/(tcp|udp|sctp))?", text):
        raise UsageError(f"port {port!r} is not a container port", hint="use a number like 3031 or '3031/tcp'")
    return text if "/" in text else f"{text}/tcp"


class Container:
    """A container run detached from an image, removed on exit.

    Ports are published on 127.0.0.1 at random host ports: ``.port(3031)`` says which,
    ``.url(3031, "/path")`` makes a URL. ``__enter__`` waits until the container runs and
    the ports given answer; a container that exits first raises :class:`DockerError` with
    its exit code and logs. ``.host`` is a testinfra host (``docker://ID``).

    It runs with an init process (``docker run --init``), so ``.stop()`` ends a server
    that, as PID 1, would ignore SIGTERM, and exited children are reaped.
    """

    def __init__(self, docker: Daemon, ref: str, *, ports: Sequence[int | str] = (),
                 env: Mapping[str, str] | None = None, command: Sequence[str] | str | None = None,
                 name: str, labels: Mapping[str, str] | None = None, timeout: float = 120.0,
                 image: Image | None = None, host_ports: Mapping[int | str, int] | None = None) -> None:
        if isinstance(ports, (int, str)):
            ports = (ports,)
        self.docker = docker
        self.ref = ref
        self.image = image
        self.ports = [port_key(p) for p in ports]
        self.env = dict(env or {})
        self.command = shlex.split(command) if isinstance(command, str) else (list(command) if command else None)
        self.name = name
        self.labels = dict(labels or {})
        self.timeout = timeout
        self.keep = False
        self.host_ports = {port_key(p): int(h) for p, h in (host_ports or {}).items()}
        self._container: Any = None
        self._published: list[str] = []
        self._answering: set[str] = set()
        self._logs = ""
        self._host: Host | None = None
        self._removed = False
        self._forwarded: set[int] = set()  # host ports (on the daemon's host) forwarded here
        self.started_seconds = 0.0

    def __repr__(self) -> str:
        return f"Container(docker://{self.name})"

    # lifecycle
    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            log.warning("docker: keeping container %s (%s)", self.name, self.id)
            return
        self.remove()

    def start(self) -> None:
        """Create and start the container; wait until it runs and the given ports answer."""
        import docker.errors

        client = self.docker.client
        started = time.monotonic()
        exposed = self._exposed()
        self._published = list(dict.fromkeys([*self.ports, *exposed]))
        bindings = {p: ("127.0.0.1", self.host_ports.get(p)) for p in self._published}
        run_args: dict[str, Any] = {"command": self.command, "environment": self.env or None, "name": self.name,
                                    "labels": self.labels, "ports": bindings, "detach": True, "init": True}
        if self.docker.edit_run is not None:  # the pytest_flake_container_run hook
            self.docker.edit_run(self.ref, run_args)
        try:
            self._container = client.containers.create(self.ref, **run_args)
        except docker.errors.ImageNotFound as exc:
            raise DockerError(f"no image {self.ref} at {self.docker.url}",
                              hint="use docker_image(attr) to load the flake's image first") from exc
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            raise DockerError(f"cannot create container {self.name} from {self.ref}: {text}",
                              hint=_podman_hint(self.docker, text)) from exc
        log.info("docker: started %s from %s, publishing %s", self.name, self.ref,
                 ", ".join(self._published) or "no ports")
        try:
            self._container.start()
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            raise DockerError(f"cannot start container {self.name} from {self.ref}: {text}",
                              hint=_podman_hint(self.docker, text), details=self._safe_logs()) from exc
        wait_for(self._probe, what=f"container {self.name} ({self.ref})", timeout=self.timeout,
                 on_timeout=self._safe_logs,
                 hint="the container runs but its ports do not answer; is the service listening on every "
                      "address inside the container, on the port given?")
        self.started_seconds = time.monotonic() - started
        log.info("docker: %s ready in %.2fs%s", self.name, self.started_seconds,
                 "".join(f", {p} on 127.0.0.1:{self.port(p)}" for p in self.ports)
                 + (f" (through ssh to {self.docker.url})" if self._forwarded else ""))

    def _exposed(self) -> list[str]:
        if self.image is not None and self.image.archive is not None:
            return self.image.archive.exposed_ports
        held = self.docker.has_image(self.ref)
        return sorted(((held or {}).get("Config") or {}).get("ExposedPorts") or {})

    def _probe(self) -> None:
        state = self._state()
        status = state.get("Status")
        if status in ("exited", "dead"):
            self._exited_early(state)
        if status != "running":
            raise NotReady(f"status {status}")
        for key in self.ports:
            if not key.endswith("/tcp"):
                continue
            self._port_answers(key)
            self._answering.add(key)
        self._check_health(state)

    def _check_health(self, state: Mapping[str, Any]) -> None:
        """An image with a ``HEALTHCHECK``: ready once Docker reports it healthy; unhealthy is an error at once."""
        health = state.get("Health") or {}
        status = health.get("Status")
        if not status or status == "none" or status == "healthy":
            return
        checks = [str((entry or {}).get("Output") or "").strip() for entry in (health.get("Log") or [])[-3:]]
        if status == "unhealthy":
            raise DockerError(f"container {self.name} ({self.ref}) is unhealthy: its HEALTHCHECK failed "
                              f"{health.get('FailingStreak', '?')} time(s) in a row",
                              hint="the last health check outputs and the container's logs follow",
                              details="\n".join([*(f"health check: {c or '(no output)'}" for c in checks),
                                                  tail(self._safe_logs(), 40) or "(no logs)"]))
        raise NotReady(f"health {status}" + (f" (last check: {checks[-1]})" if checks and checks[-1] else ""))

    def _state(self) -> dict[str, Any]:
        self._container.reload()
        return dict(self._container.attrs.get("State") or {})

    def _exited_early(self, state: Mapping[str, Any]) -> None:
        code = state.get("ExitCode")
        error = state.get("Error") or ""
        raise DockerError(f"container {self.name} ({self.ref}) exited early with code {code}"
                          + (f": {error}" if error else ""),
                          hint="its logs follow", details=tail(self._safe_logs(), 40) or "(no output)")

    def _host_port(self, key: str, wait: bool = False) -> int:
        ports = (self._container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for binding in ports.get(key) or ():
            if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                return int(binding["HostPort"])
        if wait:
            raise NotReady(f"{key} not published yet")
        raise DockerError(f"container {self.name} has no host port for {key}")

    def _local_port(self, key: str, wait: bool = False) -> int:
        """The 127.0.0.1 port *here* for ``key``: the host port, or the ssh forward of it (a remote daemon).

        A forward that ssh refuses is an :class:`~pytest_flake.errors.SSHError` at once, never a wait.
        """
        remote = self._host_port(key, wait=wait)
        local = self.docker.reach(remote)
        if local != remote:
            self._forwarded.add(remote)
        return local

    # what tests use
    @property
    def id(self) -> str:
        """The container id."""
        self._require()
        return str(self._container.id)

    @property
    def sdk(self) -> Any:
        """The Docker SDK's container object (``docker.models.containers.Container``); None until started."""
        return self._container

    @property
    def removed(self) -> bool:
        """Whether the container is gone from the daemon (False: never started, kept, or its removal failed)."""
        return self._removed

    def _require(self) -> None:
        if self._container is None:
            raise UsageError(f"container {self.name} is not started", hint="use it as a context manager")

    def port(self, container_port: int | str) -> int:
        """The 127.0.0.1 port here where ``container_port`` answers (on a remote daemon: an ssh forward of it)."""
        self._require()
        key = port_key(container_port)
        if key not in self._published:
            exposed = self._exposed()
            raise UsageError(
                f"port {key} of container {self.name} ({self.ref}) is not published",
                hint=f"pass ports=({str(container_port).split('/')[0]},) to docker_container; published: "
                     f"{', '.join(self._published) or 'none'}; the image exposes: {', '.join(exposed) or 'none'}")
        if key.endswith("/tcp") and key not in self._answering:
            # published because the image exposes it, not waited for at start: wait now
            wait_for(lambda: self._probe_port(key), what=f"port {key} of container {self.name}",
                     timeout=self.timeout, on_timeout=self._safe_logs)
            self._answering.add(key)
        return self._local_port(key)

    def daemon_port(self, container_port: int | str) -> int:
        """The port on the daemon's host (127.0.0.1 there) where ``container_port`` is published.

        The same as :meth:`port` for a local daemon; for a daemon on another host, :meth:`port` is the
        ssh forward of this one. ``host_ports`` pins this one (a new container on the same port).
        """
        self.port(container_port)
        return self._host_port(port_key(container_port))

    def _probe_port(self, key: str) -> None:
        state = self._state()
        if state.get("Status") in ("exited", "dead"):
            self._exited_early(state)
        self._port_answers(key)

    def _port_answers(self, key: str) -> None:
        """Probe a published port; through ssh, a tunnel that cannot carry it is an error at once, not a wait."""
        try:
            port_answers(self._local_port(key, wait=True))
        except NotReady:
            self.docker.check_tunnel()
            raise

    def url(self, container_port: int | str = 80, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path`` for a published container port (:meth:`port`: works for a remote daemon)."""
        return f"http://127.0.0.1:{self.port(container_port)}/{path.lstrip('/')}"

    def logs(self) -> str:
        """The container's stdout and stderr so far (kept after removal)."""
        if self._container is not None and not self._removed:
            with contextlib.suppress(Exception):
                self._logs = self._container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return self._logs

    def wait_for_logs(self, text: str, timeout: float | None = None) -> str:
        """The logs once ``text`` is in them (a server may log a request after it answered it).

        Waits at most ``timeout`` seconds (default: the session's ``--flake-timeout``); then a
        :class:`~pytest_flake.errors.FlakeTimeout` that carries the logs as they are.
        """

        def probe() -> str:
            logs = self.logs()
            if text not in logs:
                raise NotReady(f"{text!r} not yet in the logs of {self.name}")
            return logs

        return wait_for(probe, what=f"{text!r} in the logs of container {self.name}",
                        timeout=self.timeout if timeout is None else timeout, interval=0.05, max_interval=0.5,
                        on_timeout=lambda: f"logs of {self.name}:\n{tail(self._safe_logs(), 40)}")

    def _safe_logs(self) -> str:
        try:
            return self.logs()
        except Exception as exc:
            return f"(could not read the logs of {self.name}: {exc})"

    @property
    def status(self) -> str:
        """``running``, ``exited``, ...; ``removed`` once removed."""
        if self._removed or self._container is None:
            return "removed" if self._removed else "created"
        return str(self._state().get("Status"))

    @property
    def exit_code(self) -> int | None:
        """The exit code once the container stopped, else None."""
        if self._container is None or self._removed:
            return None
        state = self._state()
        return None if state.get("Running") else int(state.get("ExitCode", 0))

    def stop(self, timeout: int = 5) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``timeout`` s); idempotent.

        A server running as PID 1 without a handler ignores SIGTERM: it is killed after ``timeout``.
        """
        if self._container is None or self._removed:
            return
        self.logs()
        with contextlib.suppress(Exception):
            self._container.stop(timeout=timeout)
        log.info("docker: stopped %s", self.name)

    def _release(self) -> None:
        for remote in sorted(self._forwarded):
            self.docker.release(remote)
        self._forwarded.clear()

    def remove(self) -> None:
        """Remove the container (forcefully) and close its ssh forwards; idempotent, failures logged."""
        self._release()
        if self._container is None or self._removed:
            return
        self.logs()
        try:
            self._container.remove(force=True, v=True)
        except Exception as exc:
            import docker.errors

            if not (isinstance(exc, docker.errors.NotFound)):
                log.warning("docker: could not remove container %s: %s", self.name, exc)
                return
        self._removed = True
        log.debug("docker: removed %s", self.name)

    @property
    def host(self) -> Host:
        """A testinfra host (``docker://ID``) running commands in the container via ``exec``."""
        if self._host is None:
            self._require()
            import testinfra.host

            self._host = testinfra.host.Host(exec_backend(self))
        return self._host

    def how_to_reach(self) -> str:
        """A line telling a user how to reach this container by hand (for --flake-keep); never raises."""
        urls = ""
        with contextlib.suppress(Exception):  # a stopped container has no host ports
            self._container.reload()
            urls = ", ".join(f"{p} at 127.0.0.1:{self._host_port(p)}" for p in self._published if p.endswith("/tcp"))
            remote = self.docker.remote
            if urls and remote is not None:
                urls += f" on {remote.host} (reach them with `ssh -L PORT:127.0.0.1:PORT {remote.target}`)"
        shell, missing = "sh", ""
        try:
            shell = shlex.join(container_shell(self))  # Nix images have no /bin/sh
        except DockerError:
            missing = " (the image has no shell)"
        except Exception as exc:  # never let a hint hide the failure
            log.debug("docker: no shell found in %s: %s", self.name, exc)
        return (f"docker --host {self.docker.url} exec -it {self.name} {shell}"
                + (f"; {urls}" if urls else "") + f"; remove with: docker --host {self.docker.url} rm -f {self.name}"
                + missing)
