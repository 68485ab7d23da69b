"""Docker images built by a flake, and containers run from them on loopback ports.

The seed workflow ``nix build .#docker && docker load < result && docker run -p
3031:3031 web-server:TAG && curl ...`` as plain Python, with no pytest in sight:

* :func:`inspect_archive` reads what a flake output holds without a daemon: a
  docker-archive (``dockerTools.buildLayeredImage``, plain, gzip or zstd; the legacy
  layout of ``buildImage``, a directory a layer with ``VERSION``, ``json`` and
  ``layer.tar`` plus ``repositories``) or the ``streamLayeredImage`` script whose stdout
  is the archive. It yields the image id (the digest of its config), the tags, and the
  layers' diff ids. A zstd archive is decompressed on its way to the daemon (daemons
  before 23.0 cannot read zstd), with the ``zstandard`` module (``pytest-flake[docker]``)
  or else the ``zstd`` program.
* :meth:`Docker.image` loads an archive only when the daemon does not hold its image
  id yet, and reports how many of its layers were new to the daemon (a rebuild that
  changed one store path loads one layer).
* :class:`Container` runs an image detached, publishes each port on 127.0.0.1 at a
  random host port (never on every address), waits until it runs and its ports
  answer, labels it with the session id (so a later session can sweep what a killed
  one left), and removes it on exit.

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
import shlex
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import DockerError, MissingToolError, UsageError, tail
from .session import LABEL, state_dir
from .waiting import NotReady, wait_for

if TYPE_CHECKING:
    from testinfra.host import Host

    from .config import Settings
    from .nix import Build

log = logging.getLogger("pytest_flake")

DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
START_HINT = (
    "start a daemon (`systemctl start docker`; install it with 'apt-get install docker.io' on Debian/Ubuntu or "
    "'virtualisation.docker.enable = true' on NixOS, or run `dockerd --host unix:///PATH/docker.sock --data-root DIR "
    "--exec-root DIR --iptables=false --ip-masq=false &`) and point pytest at it with --docker-host or "
    "DOCKER_HOST; 'pytest --flake-doctor' checks it"
)
CHUNK = 1 << 20
KIND_TAR = "docker-archive"
KIND_SCRIPT = "streamLayeredImage script"


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


_OPENERS = {"gzip": "gzip", "bzip2": "bz2", "xz": "lzma"}


def _podman_hint(daemon: Any, text: str) -> str | None:
    """What to do about the errors a Podman service gives where Docker would not, and why."""
    if not getattr(daemon, "podman", False):
        return None
    if "rlimit" in text:
        return ("Podman gives containers ulimits (nofile 1048576 for root) above this machine's hard limits; set "
                "default_ulimits = [\"nofile=N:N\", \"nproc=N:N\"] in containers.conf (ulimit -Hn, ulimit -Hu)")
    if "catatonit" in text or "container-init" in text:
        return "Podman runs containers with an init (docker's --init): install catatonit (apt-get install catatonit)"
    return None


@contextlib.contextmanager
def _plain_tar(path: Path, compression: str) -> Iterator[Iterator[bytes]]:
    """A compressed docker-archive, decompressed on the fly (for a daemon that only reads plain tars)."""
    module: Any = importlib.import_module(_OPENERS[compression])
    with module.open(path, "rb") as handle:
        yield _chunks(handle)


def describe_endpoint(settings: Settings | None = None) -> str:
    """One line for the report header: ``unix:///run/docker.sock (from $DOCKER_HOST)``."""
    url, source = endpoint(settings)
    return f"{url} (from {source})"


# --- archives ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """What an image archive (or a script that writes one) holds, read without a daemon."""

    path: Path
    kind: str  # KIND_TAR or KIND_SCRIPT
    compression: str  # "", "gzip", "bzip2", "xz", "zstd"
    id: str  # sha256:<digest of the config>, the image id the daemon will give it
    tags: tuple[str, ...]
    diff_ids: tuple[str, ...]
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def exposed_ports(self) -> list[str]:
        """``["3031/tcp"]``: the image config's ``ExposedPorts``."""
        return sorted((self.config.get("config") or {}).get("ExposedPorts") or {})

    @property
    def what(self) -> str:
        """``a gzip docker-archive`` / ``a streamLayeredImage script``, for log lines."""
        return f"a {self.compression + ' ' if self.compression else ''}{self.kind}"

    @contextlib.contextmanager
    def stream(self) -> Iterator[Iterator[bytes]]:
        """The archive's bytes as ``docker load`` takes them (the script's stdout for a script)."""
        if self.kind == KIND_TAR and self.compression == "zstd":
            with _zstd_reader(self.path) as reader:  # the daemon gets the plain tar
                yield _chunks(reader)
            return
        if self.kind == KIND_TAR:
            with open(self.path, "rb") as handle:
                yield _chunks(handle)
            return
        with _run_script(self.path) as stdout:
            yield _chunks(stdout)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "compression": self.compression, "id": self.id,
                "tags": list(self.tags), "diff_ids": list(self.diff_ids), "config": dict(self.config)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Archive:
        return cls(path=Path(data["path"]), kind=data["kind"], compression=data["compression"], id=data["id"],
                   tags=tuple(data["tags"]), diff_ids=tuple(data["diff_ids"]), config=data["config"])


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while True:
        block = handle.read(CHUNK)
        if not block:
            return
        yield block


@contextlib.contextmanager
def _run_script(path: Path) -> Iterator[IO[bytes]]:
    """Run a streamLayeredImage script; yield its stdout; fail with its stderr if it fails."""
    with tempfile.TemporaryFile() as errors:
        log.debug("docker: running %s", path)
        proc = subprocess.Popen([str(path)], stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        failure: BaseException | None = None
        try:
            yield proc.stdout
            for _ in _chunks(proc.stdout):  # drain: a script stopped by SIGPIPE would look failed
                pass
        except BaseException as exc:
            failure = exc
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            raise DockerError(f"the image script {path} failed with exit code {code}",
                              details=tail(errors.read().decode(errors="replace"))) from failure
        if failure is not None:
            raise failure


_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"(\xb5/\xfd", "zstd"),
)
ZSTD_HINT = "pip install 'pytest-flake[docker]' (it brings the zstandard module), or install the zstd program"


@contextlib.contextmanager
def _zstd_reader(path: Path) -> Iterator[IO[bytes]]:
    """The decompressed bytes of a zstd file: the ``zstandard`` module, else ``zstd -dc``."""
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with open(path, "rb") as handle, \
                zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True) as reader:
            yield reader
        return
    tool = shutil.which("zstd")
    if tool is None:
        raise MissingToolError(f"{path} is zstd-compressed and neither the zstandard module nor the zstd program "
                               "is installed", hint=ZSTD_HINT)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([tool, "-dcq", str(path)], stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            yield proc.stdout
            finished = not proc.stdout.read(1)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()  # the reader stopped early (inspection reads only the head): not a failure
                finished = False
            code = proc.wait()
        if finished and code != 0:
            errors.seek(0)
            raise UsageError(f"zstd cannot decompress {path} (exit code {code})",
                             details=tail(errors.read().decode(errors="replace")))


def _describe_file(path: Path, head: bytes) -> str:
    """What a file that is not an image archive is, in a few words."""
    if head.startswith(b"\x7fELF"):
        return "an ELF executable"
    if head.startswith((b"hsqs", b"sqsh")):
        return "a squashfs image (a portable service image?)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head[:4] == b"QFI\xfb":
        return "a qcow2 disk image"
    if not head:
        return "an empty file"
    try:
        first = head.decode("utf-8").splitlines()[0] if head.strip() else ""
    except UnicodeDecodeError:
        return f"a binary file starting with {head[:8].hex(' ')}"
    if first.startswith("[Unit]") or "[Service]" in head.decode("utf-8", "replace"):
        return "a systemd unit file"
    return f"a text file starting with {first[:60]!r}"


def _describe_dir(path: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
    return f"a directory ({shown or 'empty'})"


def _not_an_image(path: Path, what: str, hint: str | None = None) -> UsageError:
    return UsageError(
        f"{path} is not a Docker image archive: it is {what}",
        hint=hint or "a docker output is a file from dockerTools.buildImage/buildLayeredImage "
                     "(a .tar.gz) or the script of streamLayeredImage",
    )


def _read_tar(stream: IO[bytes], path: Path, what: str) -> tuple[dict[str, Any], bytes]:
    """Stream through a docker-archive; return its first manifest entry and the raw config bytes."""
    small: dict[str, bytes] = {}
    manifest: list[dict[str, Any]] | None = None
    names: list[str] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                names.append(member.name)
                name = member.name.lstrip("./") or member.name
                if not member.isfile() or "/" in name or not name.endswith(".json") or member.size > 8 << 20:
                    continue
                handle = archive.extractfile(member)
                small[name] = handle.read() if handle else b""
                if name == "manifest.json":
                    manifest = json.loads(small[name])
                if manifest and manifest[0].get("Config") in small:
                    break  # everything needed is read: stop before the layers
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
        raise _not_an_image(path, f"{what} that cannot be read as a tar archive ({exc})") from exc
    if not manifest:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        why = "an OCI image layout without manifest.json" if "index.json" in names else "a tar archive"
        raise _not_an_image(path, f"{why} with no manifest.json (members: {shown or 'none'})")
    entry = manifest[0]
    if len(manifest) > 1:
        log.warning("docker: %s holds %d images; using the first (%s)", path, len(manifest), entry.get("RepoTags"))
    config = small.get(str(entry.get("Config")))
    if config is None:
        raise _not_an_image(path, f"a docker-archive whose manifest names a config {entry.get('Config')!r} "
                                  "that is not in the archive")
    return entry, config


def _inspect_uncached(path: Path) -> Archive:
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="build the output first (flake.build(attr))")
    if path.is_dir():
        candidates = [p for p in sorted(path.iterdir())
                      if p.is_file() and re.search(r"\.tar(\.gz|\.xz|\.bz2|\.zst)?$", p.name)]
        if len(candidates) == 1:
            return _inspect_uncached(candidates[0])
        raise _not_an_image(path, _describe_dir(path))
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"#!"):
        if not os.access(path, os.X_OK):
            raise _not_an_image(path, "a script that is not executable")
        with _run_script(path) as stdout:
            entry, config = _read_tar(stdout, path, f"the output of the script {path}")
        kind, compression = KIND_SCRIPT, ""
    else:
        compression = next((name for magic, name in _MAGIC if head.startswith(magic)), "")
        if not compression and head[257:262] != b"ustar":
            raise _not_an_image(path, _describe_file(path, head))
        opener = _zstd_reader(path) if compression == "zstd" else open(path, "rb")
        with opener as handle:
            entry, config = _read_tar(handle, path, f"a {compression + ' ' if compression else ''}file")
        kind = KIND_TAR
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        raise _not_an_image(path, f"a docker-archive whose config is not JSON ({exc})") from exc
    diff_ids = tuple((parsed.get("rootfs") or {}).get("diff_ids") or ())
    return Archive(path=path, kind=kind, compression=compression, id="sha256:" + hashlib.sha256(config).hexdigest(),
                   tags=tuple(entry.get("RepoTags") or ()), diff_ids=diff_ids, config=parsed)


_INSPECTED: dict[tuple[str, int, int], Archive] = {}


def inspect_archive(path: Path | str, cache_dir: Path | None = None) -> Archive:
    """Read an image archive (or run a streamLayeredImage script) and say what image it holds.

    Results are cached by path, size and mtime (store paths never change), in memory and,
    when ``cache_dir`` is given, on disk, so a script is not run again in the next session.
    Raises :class:`UsageError` saying what the file is when it is not an image archive.
    """
    path = Path(path)
    try:
        info = path.stat()
        key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
    except OSError:
        return _inspect_uncached(path)
    if key in _INSPECTED:
        return _INSPECTED[key]
    cached: Path | None = None
    if cache_dir is not None:
        cached = cache_dir / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".json")
        try:
            archive = Archive.from_json(json.loads(cached.read_text()))
            _INSPECTED[key] = archive
            return archive
        except (OSError, ValueError, KeyError):
            pass
    started = time.monotonic()
    archive = _inspect_uncached(path)
    log.debug("docker: inspected %s (%s) in %.2fs", path, archive.what, time.monotonic() - started)
    _INSPECTED[key] = archive
    if cached is not None:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(archive.to_json()))
    return archive


# --- images -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    """An image the daemon holds: ``.tag`` (``web-server:1.0``), ``.id`` (``sha256:...``), ``.build``.

    ``loaded`` says whether this call loaded it (False: the daemon already had it);
    ``new_layers`` how many of its ``layers`` the daemon did not have before.
    """

    tag: str
    id: str
    build: Build | None
    archive: Archive | None = field(default=None, compare=False)
    loaded: bool = False
    layers: int = 0
    new_layers: int = 0
    seconds: float = 0.0

    @property
    def ref(self) -> str:
        """What to run: the tag, else the id."""
        return self.tag or self.id

    def __str__(self) -> str:
        return self.ref


# --- the daemon -------------------------------------------------------------------------------------------
class Docker:
    """A connection to one Docker daemon; loads images and starts containers.

    ``Docker(url)`` does not connect; :meth:`connect` (or the first use) does, and raises
    :class:`DockerError` naming the endpoint and how to start a daemon when none answers.
    """

    def __init__(self, url: str | None = None, *, source: str = "argument", timeout: float = 120.0,
                 session_id: str | None = None, cache_dir: Path | None = None) -> None:
        if url is None:
            url, source = endpoint(None)
        self.url = url
        self.source = source
        self.timeout = timeout
        self.session_id = session_id
        self.cache_dir = cache_dir if cache_dir is not None else state_dir() / "docker-archives"
        self._client: Any = None
        self._loader: Any = None
        self._images: dict[str, Image] = {}
        self._count = 0
        self.version: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, session_id: str | None = None) -> Docker:
        url, source = endpoint(settings)
        return cls(url, source=source, timeout=settings.flake_timeout, session_id=session_id)

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
        self._tls = tls_config(self.source)
        try:
            client = docker.DockerClient(base_url=self.url, timeout=timeout, version="auto", tls=self._tls)
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

    def _unreachable(self, exc: BaseException) -> DockerError:
        text = str(exc)
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

    def image(self, source: Build | Path | str, *, build: Build | None = None) -> Image:
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
        image = self._ensure(archive, build)
        self._images[archive.id] = image
        return image

    def _ensure(self, archive: Archive, build: Build | None) -> Image:
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
            self._loader = docker.APIClient(base_url=self.url, timeout=None, version="auto",
                                            tls=getattr(self, "_tls", None))
        messages: list[str] = []
        plain = getattr(self, "podman", False) and archive.kind == KIND_TAR and archive.compression in _OPENERS
        # Podman 4's /images/load takes only a plain tar: it cannot read a gzip-compressed docker-archive
        with (_plain_tar(archive.path, archive.compression) if plain else archive.stream()) as data:
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


# --- containers -------------------------------------------------------------------------------------------
def _port_key(port: int | str) -> str:
    text = str(port)
    if not re.fullmatch(r"\d{1,5}(/(tcp|udp|sctp))?", text):
        raise UsageError(f"port {port!r} is not a container port", hint="use a number like 3031 or '3031/tcp'")
    return text if "/" in text else f"{text}/tcp"


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> None:
    """Probe: raise :class:`NotReady` unless something behind ``host:port`` takes a connection.

    A published port is held by docker-proxy from the start, so a bare connect succeeds
    before the service listens; the proxy then closes the connection at once. A service
    that listens keeps it open (or speaks first): that is "ready".
    """
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(timeout)
            try:
                data = sock.recv(1)
            except TimeoutError:  # socket.timeout is TimeoutError since 3.10
                return  # open and silent: a server waiting for a request
            except OSError as exc:
                raise NotReady(f"{host}:{port} reset: {exc}") from exc
            if not data:
                raise NotReady(f"{host}:{port} accepted and closed at once (nothing listens in the container yet)")
    except OSError as exc:
        raise NotReady(f"{host}:{port} refused: {exc}") from exc


class Container:
    """A container run detached from an image, removed on exit.

    Ports are published on 127.0.0.1 at random host ports: ``.port(3031)`` says which,
    ``.url(3031, "/path")`` makes a URL. ``__enter__`` waits until the container runs and
    the ports given answer; a container that exits first raises :class:`DockerError` with
    its exit code and logs. ``.host`` is a testinfra host (``docker://ID``).

    It runs with an init process (``docker run --init``), so ``.stop()`` ends a server
    that, as PID 1, would ignore SIGTERM, and exited children are reaped.
    """

    def __init__(self, docker: Docker, ref: str, *, ports: Sequence[int | str] = (),
                 env: Mapping[str, str] | None = None, command: Sequence[str] | str | None = None,
                 name: str, labels: Mapping[str, str] | None = None, timeout: float = 120.0,
                 image: Image | None = None, host_ports: Mapping[int | str, int] | None = None) -> None:
        if isinstance(ports, (int, str)):
            ports = (ports,)
        self.docker = docker
        self.ref = ref
        self.image = image
        self.ports = [_port_key(p) for p in ports]
        self.env = dict(env or {})
        self.command = shlex.split(command) if isinstance(command, str) else (list(command) if command else None)
        self.name = name
        self.labels = dict(labels or {})
        self.timeout = timeout
        self.keep = False
        self.host_ports = {_port_key(p): int(h) for p, h in (host_ports or {}).items()}
        self._container: Any = None
        self._published: list[str] = []
        self._answering: set[str] = set()
        self._logs = ""
        self._host: Host | None = None
        self._removed = False
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
        try:
            self._container = client.containers.create(
                self.ref, command=self.command, environment=self.env or None, name=self.name, labels=self.labels,
                ports=bindings, detach=True, init=True)
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
                 "".join(f", {p} on 127.0.0.1:{self.port(p)}" for p in self.ports))

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
            port_answers(self._host_port(key, wait=True))
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

    # what tests use
    @property
    def id(self) -> str:
        """The container id."""
        self._require()
        return str(self._container.id)

    def _require(self) -> None:
        if self._container is None:
            raise UsageError(f"container {self.name} is not started", hint="use it as a context manager")

    def port(self, container_port: int | str) -> int:
        """The 127.0.0.1 host port where ``container_port`` is published."""
        self._require()
        key = _port_key(container_port)
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
        return self._host_port(key)

    def _probe_port(self, key: str) -> None:
        state = self._state()
        if state.get("Status") in ("exited", "dead"):
            self._exited_early(state)
        port_answers(self._host_port(key, wait=True))

    def url(self, container_port: int | str = 80, path: str = "/") -> str:
        """``http://127.0.0.1:HOSTPORT/path`` for a published container port."""
        return f"http://127.0.0.1:{self.port(container_port)}/{path.lstrip('/')}"

    def logs(self) -> str:
        """The container's stdout and stderr so far (kept after removal)."""
        if self._container is not None and not self._removed:
            with contextlib.suppress(Exception):
                self._logs = self._container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return self._logs

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

    def remove(self) -> None:
        """Remove the container (forcefully); idempotent, failures logged."""
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

            self._host = testinfra.host.Host(_exec_backend(self))
        return self._host

    def how_to_reach(self) -> str:
        """A line telling a user how to reach this container by hand (for --flake-keep); never raises."""
        urls = ""
        with contextlib.suppress(Exception):  # a stopped container has no host ports
            self._container.reload()
            urls = ", ".join(f"{p} at 127.0.0.1:{self._host_port(p)}" for p in self._published if p.endswith("/tcp"))
        return (f"docker --host {self.docker.url} exec -it {self.name} sh"
                + (f"; {urls}" if urls else "") + f"; remove with: docker --host {self.docker.url} rm -f {self.name}")

    def _shell(self) -> list[str]:
        """A shell in the container: /bin/sh, else the interpreter of the entrypoint's shebang."""
        code, _ = self._container.exec_run(["/bin/sh", "-c", "true"])
        if code == 0:
            return ["/bin/sh"]
        config = (self._container.attrs.get("Config") or {})
        program = ((config.get("Entrypoint") or []) + (config.get("Cmd") or []))[:1]
        if program:
            with contextlib.suppress(Exception):
                stream, _stat = self._container.get_archive(program[0])
                import io

                with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r|") as archive:
                    for member in archive:
                        handle = archive.extractfile(member)
                        first = (handle.read(256) if handle else b"").split(b"\n", 1)[0]
                        if first.startswith(b"#!"):
                            words = first[2:].decode().split()
                            if words:
                                log.debug("docker: %s has no /bin/sh; using %s", self.name, words)
                                return words
                        break
        raise DockerError(f"container {self.name} ({self.ref}) has no shell for testinfra",
                          hint="no /bin/sh and no script entrypoint; add a shell to the image to use .host")


def _exec_backend(container: Container) -> Any:
    from testinfra.backend.docker import DockerBackend

    class ExecBackend(DockerBackend):  # type: ignore[misc]
        """testinfra's docker backend, running commands through the SDK's exec."""

        def __init__(self) -> None:
            super().__init__(container.id)
            self._shell: list[str] | None = None
            self._encoding = "utf-8"

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            if self._shell is None:
                self._shell = container._shell()
            cmd = self.get_command(command, *args)
            user = self.user or ""
            code, (out, err) = container._container.exec_run([*self._shell, "-c", cmd], demux=True, user=user)
            return self.result(code, self.encode(cmd), out or b"", err or b"")

    return ExecBackend()


# --- session hooks ----------------------------------------------------------------------------------------
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
