"""Connecting to a Docker daemon, and loading images into it.

:func:`endpoint` finds the daemon the way the docker CLI and SDK do. :meth:`Docker.image`
loads an archive only when the daemon does not hold its image id yet, and reports how many
of its layers were new to the daemon (a rebuild that changed one store path loads one layer).

Why the Docker SDK (``docker`` on PyPI) rather than the ``docker`` CLI: the SDK gives
structured answers (image inspection, port mappings, exit codes, exec results) instead
of text to parse; it streams an archive file or a script's stdout straight into
``/images/load`` without a temporary copy; ``exec`` returns exit code and demuxed
output, so the testinfra host needs no CLI on ``PATH`` and no ``DOCKER_HOST`` set in
the environment; and it talks to the daemon's API version whatever client is
installed, where a CLI is a separate binary of its own version and context settings.
It is imported lazily and is the optional dependency ``pytest-flake[docker]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DockerError, FlakeError
from ..session import LABEL, state_dir
from .archive import KIND_TAR, OPENERS, Archive, inspect_archive, plain_tar
from .container import Container
from .image import Built, Image

if TYPE_CHECKING:
    from ..config import Settings
    from ..tunnel import SSHHost
    from ..xdist import Run

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
# the daemon's socket on the other host of a ``ssh://`` endpoint (what ``docker system dial-stdio`` dials there)
REMOTE_SOCKET = "/var/run/docker.sock"
START_HINT = (
    "start a daemon (`systemctl start docker`; install it with 'apt-get install docker.io' on Debian/Ubuntu or "
    "'virtualisation.docker.enable = true' on NixOS, or run `dockerd --host unix:///PATH/docker.sock --data-root DIR "
    "--exec-root DIR --iptables=false --ip-masq=false &`) and point pytest at it with --docker-host or "
    "DOCKER_HOST; 'pytest --flake-doctor' checks it"
)

# --- endpoint ---------------------------------------------------------------------------------------------
CONTEXT_SOURCE = "docker context "


def endpoint(settings: Settings | None = None) -> tuple[str, str]:
    """The Docker endpoint and where it came from, found the way the docker CLI and SDK find it.

    ``--docker-host`` (or its ini twin), ``$DOCKER_HOST``, the current docker context
    (``$DOCKER_CONTEXT``, else ``currentContext`` in ``~/.docker/config.json``), the rootless
    daemon's ``$XDG_RUNTIME_DIR/docker.sock``, and, when there is no ``/var/run/docker.sock``,
    Podman's Docker-compatible socket; else ``/var/run/docker.sock``. Reads files only.
    """
    if settings is not None and settings.docker_host:
        return settings.docker_host, settings.source("docker_host")
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], "$DOCKER_HOST"
    context = _current_context()
    if context is not None:
        return context
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.geteuid() != 0 and Path(runtime, "docker.sock").exists():
        return f"unix://{runtime}/docker.sock", "rootless docker socket"
    if not Path(DEFAULT_ENDPOINT[len("unix://"):]).exists():
        podman = [Path(runtime, "podman", "podman.sock")] if runtime else []
        for sock in [*podman, Path("/run/podman/podman.sock")]:
            if sock.exists():
                return f"unix://{sock}", "podman socket"
    return DEFAULT_ENDPOINT, "default"


def _docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _current_context() -> tuple[str, str] | None:
    """The endpoint of the current docker context, as the CLI picks it (None for ``default``)."""
    name = os.environ.get("DOCKER_CONTEXT")
    if not name:
        try:
            name = json.loads((_docker_config_dir() / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            name = None
    if not name or name == "default":
        return None
    meta = _docker_config_dir() / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        host = json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, LookupError, TypeError):
        raise DockerError(f"docker context {name!r} (the current context) has no readable endpoint in {meta}",
                          hint="'docker context ls' lists the contexts; 'docker context use default', or pass "
                               "--docker-host") from None
    return str(host), f"{CONTEXT_SOURCE}{name}"


def tls_config(source: str, environ: Mapping[str, str] | None = None) -> Any:
    """The SDK's TLS settings for an endpoint: the context's, or ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``."""
    env = os.environ if environ is None else environ
    docker: Any = importlib.import_module("docker")
    if source.startswith(CONTEXT_SOURCE):
        context_api = importlib.import_module("docker.context").ContextAPI
        context = context_api.get_context(source[len(CONTEXT_SOURCE):])
        return context.TLSConfig if context is not None else None
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        try:
            return docker.utils.kwargs_from_env(environment=dict(env)).get("tls")
        except Exception as exc:  # the SDK's TLSParameterError: files missing or unreadable
            cert_path = env.get("DOCKER_CERT_PATH") or str(Path.home() / ".docker")
            raise DockerError(f"the Docker TLS settings do not work: {exc}",
                              hint=f"DOCKER_CERT_PATH ({cert_path}) must hold ca.pem, cert.pem and key.pem") from None
    return None


def describe_endpoint(settings: Settings | None = None) -> str:
    """One line for the report header: ``unix:///run/docker.sock (from $DOCKER_HOST)``."""
    url, source = endpoint(settings)
    if url.startswith("ssh://"):
        return f"{url} (from {source}; its {REMOTE_SOCKET} and published ports through an ssh tunnel)"
    return f"{url} (from {source})"


# --- the daemon -------------------------------------------------------------------------------------------
class Docker:
    """A connection to one Docker daemon; loads images and starts containers.

    ``Docker(url)`` does not connect; :meth:`connect` (or the first use) does, and raises
    :class:`DockerError` naming the endpoint and how to start a daemon when none answers.

    An ``ssh://[user@]host`` endpoint is reached through the session's :class:`~pytest_flake.tunnel.SSHHost`
    (the user's own ssh config, agent and known_hosts; its master lives in ``control_dir``): the
    daemon's socket there is forwarded to a unix socket here, which the SDK talks to. A container's
    published ports live on that host's loopback: :meth:`reach` forwards one here.
    """

    def __init__(self, url: str | None = None, *, source: str = "argument", timeout: float = 120.0,
                 session_id: str | None = None, cache_dir: Path | None = None, run: Run | None = None,
                 control_dir: Path | None = None,
                 edit_run: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        if url is None:
            url, source = endpoint(None)
        self.url = url
        self.source = source
        self.timeout = timeout
        self.session_id = session_id
        self.cache_dir = cache_dir if cache_dir is not None else state_dir() / "docker-archives"
        self.run = run  # the pytest-xdist run of this session: its workers load each image once
        self.control_dir = control_dir  # where an ssh:// endpoint's master connection lives (the session dir)
        self.edit_run = edit_run  # edits each container's create arguments in place (image, kwargs)
        self.api_url = url  # what the SDK talks to: the url, or the local end of the ssh tunnel
        self.remote: SSHHost | None = None
        self._own_control: Path | None = None
        self._client: Any = None
        self._loader: Any = None
        self._images: dict[str, Image] = {}
        self._count = 0
        self.version: str = ""
        self.podman = False  # the daemon is Podman's Docker-compatible service (connect() asks)
        self._tls: Any = None  # the SDK's TLS settings of a local endpoint (connect() reads them)

    @classmethod
    def from_settings(cls, settings: Settings, session_id: str | None = None, run: Run | None = None,
                      control_dir: Path | None = None,
                      edit_run: Callable[[str, dict[str, Any]], None] | None = None) -> Docker:
        url, source = endpoint(settings)
        return cls(url, source=source, timeout=settings.flake_timeout, session_id=session_id, run=run,
                    control_dir=control_dir, edit_run=edit_run)

    def __repr__(self) -> str:
        return f"Docker({self.url!r})"

    def connect(self, timeout: float = 30.0) -> Docker:
        """Connect and ping the daemon; idempotent."""
        if self._client is not None:
            return self
        try:
            docker: Any = importlib.import_module("docker")
        except ImportError as exc:
            raise DockerError("the Docker SDK is not installed", hint="pip install 'pytest-flake[docker]'") from exc
        self.api_url = self._tunnel()
        self._tls = None if self.remote is not None else tls_config(self.source)
        try:
            client = docker.DockerClient(base_url=self.api_url, timeout=timeout, version="auto", tls=self._tls)
            info = client.version()
        except Exception as exc:
            raise self._unreachable(exc) from None
        # Podman's Docker-compatible socket (``podman system service``) answers too; it differs in places
        self.podman = any("podman" in str(c.get("Name", "")).lower() for c in info.get("Components") or [])
        engine = "Podman" if self.podman else "Docker"
        self.version = f"{engine} {info.get('Version', '?')}, API {info.get('ApiVersion', '?')}"
        log.debug("docker: %s answers: %s", self.url, self.version)
        self._client = client
        return self

    @property
    def is_remote(self) -> bool:
        """Whether the daemon is on another host (an ``ssh://`` endpoint)."""
        return self.url.startswith("ssh://")

    def _tunnel(self) -> str:
        """The SDK's endpoint: the url itself, or for ``ssh://`` a local socket forwarded to the daemon's there."""
        if not self.is_remote:
            return self.url
        from ..tunnel import ssh_host

        if self.control_dir is None:  # no session (the doctor, a sweep): a master of our own, ended by close()
            self._own_control = Path(tempfile.mkdtemp(prefix="pf-docker-ssh-"))
            self.control_dir = self._own_control
        started = time.monotonic()
        self.remote = ssh_host(self.url, control_dir=self.control_dir)
        local = self.remote.forward_socket(REMOTE_SOCKET)
        log.info("docker: %s through ssh: %s here is %s there (%.2fs)", self.url, local, REMOTE_SOCKET,
                 time.monotonic() - started)
        return f"unix://{local}"

    def reach(self, port: int) -> int:
        """A 127.0.0.1 port here that reaches ``port`` on the daemon's host: the same port, or an ssh forward."""
        return self.remote.forward(port) if self.remote is not None else port

    def check_tunnel(self) -> None:
        """For a remote daemon: an :class:`~pytest_flake.errors.SSHError` when its ssh tunnel cannot work."""
        if self.remote is not None:
            self.remote.check()

    def release(self, port: int) -> None:
        """End the forward :meth:`reach` opened for ``port`` (a container was removed); no-op for a local daemon."""
        if self.remote is not None:
            self.remote.cancel(port)

    def _unreachable(self, exc: BaseException) -> FlakeError:
        text = str(exc)
        if self.remote is not None:
            try:
                self.remote.check()
            except FlakeError as ssh_error:
                return ssh_error
            return DockerError(f"no Docker daemon answers at {self.url} (from {self.source}): the ssh connection "
                               f"works, but {REMOTE_SOCKET} on {self.remote.host} does not answer",
                               hint=f"is dockerd running there, may this user use it (`ssh {self.remote.target} "
                                    f"docker version`), and does its sshd forward sockets (AllowStreamLocalForwarding, "
                                    f"AllowTcpForwarding, PermitOpen)?",
                               details=f"{type(exc).__name__}: {text}")
        if "Permission denied" in text or "PermissionError" in text:
            return DockerError(f"permission denied on the Docker endpoint {self.url} (from {self.source})",
                               hint="add your user to the docker group, or use a daemon you may reach",
                               details=text)
        return DockerError(f"no Docker daemon answers at {self.url} (from {self.source})", hint=START_HINT,
                           details=f"{type(exc).__name__}: {text}")

    @property
    def client(self) -> Any:
        """The ``docker.DockerClient`` (connects on first use)."""
        return self.connect()._client

    def close(self) -> None:
        for client in (self._client, self._loader):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._client = self._loader = None
        if self.remote is not None:
            self.remote.cancel_socket(REMOTE_SOCKET)
            self.remote = None
        if self._own_control is not None:
            from ..tunnel import close_all

            close_all(self._own_control)
            shutil.rmtree(self._own_control, ignore_errors=True)
            self._own_control = self.control_dir = None

    def __enter__(self) -> Docker:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # images
    def has_image(self, ref: str) -> dict[str, Any] | None:
        """The daemon's inspection of an image (by id or tag), or None."""
        import docker.errors

        try:
            return dict(self.client.api.inspect_image(ref))
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 404:
                return None
            raise DockerError(f"cannot inspect image {ref} at {self.url}: {exc.explanation or exc}") from exc

    def known_layers(self) -> set[str]:
        """Diff ids of every layer of every image the daemon holds."""
        known: set[str] = set()
        api = self.client.api
        for image_id in api.images(all=True, quiet=True):
            with contextlib.suppress(Exception):
                known.update((api.inspect_image(image_id).get("RootFS") or {}).get("Layers") or ())
        return known

    def image(self, source: Built | Path | str, *, build: Built | None = None) -> Image:
        """The image of a built output, loaded unless the daemon already holds its id.

        ``source`` is a :class:`~pytest_flake.nix.Build` or a path to a docker-archive or a
        streamLayeredImage script. Cached per archive for the life of this object.
        """
        if isinstance(source, (str, Path)):
            path = Path(source)
        else:
            build = source
            path = Path(source.out)
        archive = inspect_archive(path, self.cache_dir)
        cached = self._images.get(archive.id)
        if cached is not None and self.has_image(archive.id) is not None:  # still there: nothing to load
            return Image(tag=cached.tag, id=cached.id, build=build or cached.build, archive=archive, loaded=False,
                         layers=cached.layers, new_layers=0)
        # under pytest-xdist one worker loads, its siblings wait and find the image held
        with self.run.lock(f"docker-load {self.url} {archive.id}") if self.run else contextlib.nullcontext():
            image = self._ensure(archive, build)
        self._images[archive.id] = image
        return image

    def _ensure(self, archive: Archive, build: Built | None) -> Image:
        tag = archive.tags[0] if archive.tags else ""
        layers = len(set(archive.diff_ids))
        held = self.has_image(archive.id)
        if held is not None:
            self._retag(archive, held)
            log.info("docker: %s (%s) already loaded; nothing to load", tag or archive.id[:19], archive.id[7:19])
            return Image(tag=tag, id=archive.id, build=build, archive=archive, loaded=False, layers=layers)
        before = self.known_layers()
        new = len({d for d in archive.diff_ids if d not in before})
        started = time.monotonic()
        self._load(archive)
        seconds = time.monotonic() - started
        if self.has_image(archive.id) is None:
            raise DockerError(f"loaded {archive.path} but the daemon at {self.url} holds no image {archive.id}",
                              hint="the archive's config digest and the daemon's image id differ; "
                                   "is this a docker-archive written by dockerTools?")
        log.info("docker: loaded %s (%s) from %s in %.2fs: %d of %d layers new to the daemon",
                 tag or "untagged image", archive.id[7:19], archive.what, seconds, new, layers)
        return Image(tag=tag, id=archive.id, build=build, archive=archive, loaded=True, layers=layers,
                     new_layers=new, seconds=seconds)

    def _retag(self, archive: Archive, held: Mapping[str, Any]) -> None:
        """Give an image the daemon holds back the tags of its archive (someone may have removed them)."""
        have = set(held.get("RepoTags") or ())
        for tag in archive.tags:
            if tag not in have:
                repo, _, version = tag.rpartition(":")
                self.client.api.tag(archive.id, repo or tag, version or "latest")
                log.debug("docker: tagged %s as %s", archive.id[7:19], tag)

    def _load(self, archive: Archive) -> None:
        docker: Any = importlib.import_module("docker")
        importlib.import_module("docker.errors")

        if self._loader is None:  # a client without a read timeout: a large image loads for long
            self._loader = docker.APIClient(base_url=self.api_url, timeout=None, version="auto",
                                            tls=self._tls)
        messages: list[str] = []
        plain = self.podman and archive.kind == KIND_TAR and archive.compression in OPENERS
        # Podman 4's /images/load takes only a plain tar: it cannot read a gzip-compressed docker-archive
        with (plain_tar(archive.path, archive.compression) if plain else archive.stream()) as data:
            try:
                for chunk in self._loader.load_image(data):
                    if "error" in chunk or "errorDetail" in chunk:
                        raise DockerError(f"docker load of {archive.path} failed at {self.url}: "
                                          f"{chunk.get('error') or chunk.get('errorDetail')}",
                                          details="\n".join(messages))
                    text = chunk.get("stream") or chunk.get("status") or ""
                    if text.strip():
                        messages.append(text.strip())
            except docker.errors.APIError as exc:
                raise DockerError(f"docker load of {archive.path} failed at {self.url}: {exc.explanation or exc}",
                                  details="\n".join(messages)) from exc
        log.debug("docker: load said: %s", "; ".join(messages))

    # containers
    def container(self, image: Image | str, *, ports: Sequence[int | str] = (),
                  env: Mapping[str, str] | None = None, command: Sequence[str] | str | None = None,
                  name: str | None = None, labels: Mapping[str, str] | None = None,
                  host_ports: Mapping[int | str, int] | None = None) -> Container:
        """A :class:`Container` (not started: use it as a context manager).

        ``host_ports`` pins container ports to given 127.0.0.1 ports (an upgrade keeps the old
        container's port); the others get random ones.
        """
        self._count += 1
        ref = image.ref if isinstance(image, Image) else str(image)
        if name is None:
            base = re.sub(r"[^a-zA-Z0-9_.-]+", "-", ref.split("/")[-1].split(":")[0]).strip("-.") or "container"
            name = f"{self.session_id or 'pf'}-{base}-{self._count}"
        all_labels = dict(labels or {})
        if self.session_id:
            all_labels[LABEL] = self.session_id
        return Container(self, ref, ports=ports, env=env, command=command, name=name, labels=all_labels,
                         timeout=self.timeout, image=image if isinstance(image, Image) else None,
                         host_ports=host_ports)

    def containers(self, session_id: str) -> list[Any]:
        """Containers (running or not) labelled with a session id."""
        return list(self.client.containers.list(all=True, filters={"label": f"{LABEL}={session_id}"}))


