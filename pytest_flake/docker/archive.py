"""Docker image archives, read without a daemon: every shape ``dockerTools`` writes.

:func:`inspect_archive` reads what a flake output holds: a docker-archive
(``dockerTools.buildLayeredImage``, plain, gzip or zstd; the legacy layout of ``buildImage``,
a directory a layer with ``VERSION``, ``json`` and ``layer.tar`` plus ``repositories``) or the
``streamLayeredImage`` script whose stdout is the archive. It yields the image id (the digest
of its config), the tags, and the layers' diff ids. A zstd archive is decompressed on its way
to the daemon (daemons before 23.0 cannot read zstd), with the ``zstandard`` module
(``pytest-flake[docker]``) or else the ``zstd`` program.
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
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._host import SNIFF_BYTES, describe_dir, describe_file, sniff
from ..errors import DockerError, MissingToolError, UsageError, tail

log = logging.getLogger(__name__)

CHUNK = 1 << 20
KIND_TAR = "docker-archive"
KIND_SCRIPT = "streamLayeredImage script"

OPENERS = {"gzip": "gzip", "bzip2": "bz2", "xz": "lzma"}
COMPRESSIONS = ("gzip", "bzip2", "xz", "zstd")  # kinds of _host.sniff a docker-archive may have

@contextlib.contextmanager
def plain_tar(path: Path, compression: str) -> Iterator[Iterator[bytes]]:
    """A compressed docker-archive, decompressed on the fly (for a daemon that only reads plain tars)."""
    module: Any = importlib.import_module(OPENERS[compression])
    with module.open(path, "rb") as handle:
        yield _chunks(handle)



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
        raise _not_an_image(path, describe_dir(path))
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(b"#!"):
        if not os.access(path, os.X_OK):
            raise _not_an_image(path, "a script that is not executable")
        with _run_script(path) as stdout:
            entry, config = _read_tar(stdout, path, f"the output of the script {path}")
        kind, compression = KIND_SCRIPT, ""
    else:
        sniffed = sniff(head)
        compression = sniffed if sniffed in COMPRESSIONS else ""
        if not compression and sniffed != "tar":
            raise _not_an_image(path, describe_file(path, head))
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




def forget_inspections() -> None:
    """Empty the in-memory cache of :func:`inspect_archive` (as at the start of a new session)."""
    _INSPECTED.clear()
