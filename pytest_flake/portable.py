"""systemd portable services in a guest: copy the image in, attach, reattach, detach.

What would be done by hand::

    scp result/web-server_1.0.raw vm:/root/
    ssh vm portablectl attach --now --runtime /root/web-server_1.0.raw
    ssh vm systemctl status web-server.service
    ssh vm portablectl reattach --now --runtime /root/web-server_1.1.raw

:class:`PortableImage` inspects an image on this machine (squashfs, raw/GPT disk or
directory; its os-release; the unit files that match its prefix) so a bad image is
rejected with a precise message before anything reaches the guest.
:class:`PortableService` drives ``portablectl`` in a guest through any object with
``run(command) -> result`` (``.rc``, ``.stdout``, ``.stderr``) and
``copy_to(local, remote)``: the :class:`~pytest_flake.vm.VM` of the ``vm`` fixture.
Attachments are ``--runtime`` by default: nothing persists across a reboot of the guest.

Also here: :func:`parse_unit`, a small parser of systemd unit files, for checking
templated units (``ExecStart`` points into the store path of the package).
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Protocol

from .errors import CheckFailed, PortableError, format_choices, tail
from .waiting import NotReady, wait_for

log = logging.getLogger("pytest_flake")

UNIT_DIRS = ("usr/lib/systemd/system", "etc/systemd/system", "lib/systemd/system")
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path")
OS_RELEASE = ("usr/lib/os-release", "etc/os-release")
REMOTE_DIR = "/root"
STORE_HASH = re.compile(r"^[0-9a-df-np-sv-z]{32}-")  # a Nix store path's "<hash>-" (nix base32)
IMAGE_HINT = "pass a portableService output, a NAME_VERSION.raw file or an image directory (with os-release)"
PORTABLECTL_HINT = ("install systemd-container in the guest (Debian/Ubuntu: apt-get install systemd-container; "
                    "Fedora: dnf install systemd-container; Arch ships it in systemd)")


class Guest(Protocol):
    """What a portable service needs of a machine: a name, run a command, copy a file in."""

    name: str

    def run(self, command: str) -> Any: ...

    def copy_to(self, local: Path | str, remote: str) -> Any: ...


# -- unit files ------------------------------------------------------------------------------
@dataclass
class UnitFile:
    """A parsed systemd unit file: ``sections[section][key]`` is the list of values."""

    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value of ``key`` in ``section`` (systemd's rule for single values)."""
        values = self.sections.get(section, {}).get(key)
        return values[-1] if values else default

    def getall(self, section: str, key: str) -> list[str]:
        """Every value of ``key`` in ``section``; an empty assignment resets the list."""
        return list(self.sections.get(section, {}).get(key, []))

    @property
    def exec_start(self) -> list[str]:
        """``ExecStart=`` of ``[Service]`` split into argv (prefixes like ``-``/``@`` removed)."""
        value = self.get("Service", "ExecStart")
        if not value:
            return []
        return shlex.split(value.lstrip("-@:+!"))

    @property
    def environment(self) -> dict[str, str]:
        """``Environment=`` assignments of ``[Service]``."""
        env: dict[str, str] = {}
        for value in self.getall("Service", "Environment"):
            for item in shlex.split(value):
                key, _, val = item.partition("=")
                env[key] = val
        return env


def parse_unit(text: str) -> UnitFile:
    """Parse a unit file (sections, ``key=value``, comments, ``\\`` continuations)."""
    unit = UnitFile()
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.sections.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


# -- images on this machine ------------------------------------------------------------------
def describe_file(path: Path) -> str:
    """What a file looks like, by its first bytes: for "is not an image" messages."""
    if path.is_dir():
        return "a directory"
    try:
        with path.open("rb") as handle:
            head = handle.read(1024)
    except OSError as exc:
        return f"unreadable ({exc})"
    size = path.stat().st_size
    if head.startswith(b"hsqs"):
        return "a squashfs image"
    if len(head) >= 520 and head[512:520] == b"EFI PART":
        return "a GPT disk image"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (a docker-archive or tarball?)"
    if head.startswith(b"(\xb5/\xfd"):
        return "a zstd file (a docker-archive or tarball?)"
    if head.startswith(b"\x7fELF"):
        return "an ELF executable"
    if head.startswith(b"QFI\xfb"):
        return "a qcow2 disk image"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive"
    if head.startswith(b"#!"):
        return f"a script ({head.splitlines()[0].decode(errors='replace')})"
    if head.lstrip().startswith(b"[Unit]") or b"\n[Service]" in head:
        return "a systemd unit file"
    try:
        head.decode("utf-8")
        return f"a text file ({size} bytes)"
    except UnicodeDecodeError:
        return f"data ({size} bytes)"


def _unsquashfs() -> str:
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise PortableError("unsquashfs is not installed, so a squashfs image cannot be inspected",
                            hint="apt-get install squashfs-tools (scripts/setup does it)")
    return tool


def image_name(path: Path) -> str:
    """The name portablectl gives an image: the file name without a store hash and ``.raw``.

    ``/nix/store/<hash>-web-server_1.0.raw``, ``out/web-server_1.0.raw`` and a directory
    ``/nix/store/<hash>-web-server_1.0`` are all ``web-server_1.0``.
    """
    name = STORE_HASH.sub("", path.name)
    return name[:-4] if name.endswith(".raw") else name


def _not_an_image(path: Path, what: str) -> PortableError:
    """"PATH is not a portable service image: it is WHAT (what to pass instead)"."""
    if "docker-archive" in what:
        hint = f"load it with docker_image/docker_container instead; {IMAGE_HINT}"
    elif what.startswith("a script"):
        hint = f"a streamLayeredImage script goes to docker_image/docker_container; {IMAGE_HINT}"
    elif what.startswith("a systemd unit file"):
        hint = f"put the unit in an image (portableService {{ units = [ ... ]; }}); {IMAGE_HINT}"
    else:
        hint = IMAGE_HINT
    return PortableError(f"{path} is not a portable service image: it is {what}", hint=hint)


@dataclass(frozen=True)
class PortableImage:
    """A portable service image on this machine: squashfs, raw/GPT disk, or directory."""

    path: Path
    kind: str  # squashfs | gpt | directory
    os_release: dict[str, str]
    files: tuple[str, ...]  # unit files of the image, relative (e.g. usr/lib/systemd/system/x.service)

    @property
    def name(self) -> str:
        """``web-server_1.0``: the file name without store hash and ``.raw`` (portablectl's name)."""
        return image_name(self.path)

    @property
    def prefix(self) -> str:
        """``web-server``: unit files must start with this (the name up to ``_``)."""
        return self.name.split("_", 1)[0]

    @property
    def version(self) -> str | None:
        return self.name.split("_", 1)[1] if "_" in self.name else None

    @property
    def units(self) -> list[str]:
        """Names of the unit files that match the prefix: the ones portablectl attaches."""
        names = sorted({PurePosixPath(f).name for f in self.files})
        return [n for n in names if _matches_prefix(n, self.prefix)]

    @property
    def all_units(self) -> list[str]:
        return sorted({PurePosixPath(f).name for f in self.files})

    @classmethod
    def open(cls, path: Path | str) -> PortableImage:
        """Inspect ``path``: every shape a flake's portable output has.

        The ``.raw`` file itself (``<hash>-NAME_VERSION.raw``, nixpkgs' portableService of
        2022), a directory holding one ``NAME_VERSION.raw`` (portableService today), a
        directory image (os-release in ``usr/lib`` or ``etc``), or any path to one of those.
        """
        path = Path(path)
        if not path.exists():
            raise PortableError(f"portable image {path} does not exist", hint=IMAGE_HINT)
        if path.is_dir() and not any((path / f).exists() for f in OS_RELEASE):
            raws = sorted(path.glob("*.raw"))
            if len(raws) == 1:
                path = raws[0]
            elif len(raws) > 1:
                raise PortableError(f"{path} holds {len(raws)} portable images "
                                    f"({', '.join(r.name for r in raws)}), not one",
                                    hint="pass the path of one of them")
            else:
                entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
                listing = format_choices(entries[:10]) + (", ..." if len(entries) > 10 else "")
                raise _not_an_image(path, f"a directory without usr/lib/os-release or etc/os-release and without "
                                          f"a .raw file (it has: {listing or 'nothing'})")
        if path.is_dir():
            image = cls._open_directory(path)
        else:
            what = describe_file(path)
            if what == "a squashfs image":
                image = cls._open_squashfs(path)
            elif what == "a GPT disk image":
                image = cls(path=path, kind="gpt", os_release={}, files=())  # checked in the guest
            else:
                raise _not_an_image(path, what)
        image.validate()
        return image

    @classmethod
    def _open_directory(cls, path: Path) -> PortableImage:
        release = next((path / f for f in OS_RELEASE if (path / f).is_file()), None)
        files = tuple(str(p.relative_to(path)) for d in UNIT_DIRS if (path / d).is_dir()
                      for p in sorted((path / d).iterdir()) if p.name.endswith(UNIT_SUFFIXES))
        return cls(path=path, kind="directory", os_release=parse_os_release(release.read_text()) if release else {},
                   files=files)

    @classmethod
    def _open_squashfs(cls, path: Path) -> PortableImage:
        tool = _unsquashfs()
        listing = subprocess.run([tool, "-lc", "-d", "", str(path)], capture_output=True, text=True, timeout=120)
        if listing.returncode != 0:
            raise PortableError(f"{path}: unsquashfs cannot read it (exit code {listing.returncode})",
                                details=tail(listing.stderr))
        entries = [line.strip().lstrip("/") for line in listing.stdout.splitlines() if line.strip()]
        files = tuple(e for e in entries if str(PurePosixPath(e).parent) in UNIT_DIRS and e.endswith(UNIT_SUFFIXES))
        release: dict[str, str] = {}
        for candidate in OS_RELEASE:
            if candidate in entries:
                with tempfile.TemporaryDirectory(prefix="pf-os-release-") as tmp:
                    # os-release is often a symlink (etc -> ../usr/lib): unsquashfs follows within the image
                    out = subprocess.run([tool, "-q", "-n", "-f", "-d", tmp, str(path), candidate],
                                         capture_output=True, text=True, timeout=120)
                    target = Path(tmp) / candidate
                    if out.returncode == 0 and target.is_file():
                        release = parse_os_release(target.read_text(errors="replace"))
                        break
        return cls(path=path, kind="squashfs", os_release=release, files=files)

    def validate(self) -> None:
        """What portablectl would refuse: no os-release, no unit matching the prefix."""
        if self.kind == "gpt":
            return
        if not self.os_release:
            raise PortableError(f"{self.path} has no os-release (usr/lib/os-release or etc/os-release)",
                                hint="portablectl refuses images without one; portableService adds it")
        if not self.units:
            raise PortableError(
                f"{self.path}: no unit file starts with the image's prefix '{self.prefix}' "
                f"(units in the image: {format_choices(self.all_units)})",
                hint=f"name the unit {self.prefix}.service, or name the image after the unit")


def squash_directory(tree: Path, raw: Path) -> Path:
    """A squashfs image ``raw`` of the directory image ``tree`` (owned by root, as portableService makes it)."""
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise PortableError(f"mksquashfs is not installed, so the directory image {tree} cannot be packed "
                            "as a .raw file for the guest",
                            hint="apt-get install squashfs-tools (scripts/setup does it)")
    started = time.monotonic()
    result = subprocess.run([tool, str(tree), str(raw), "-all-root", "-noappend", "-quiet", "-no-progress"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise PortableError(f"mksquashfs could not pack the directory image {tree} (exit code {result.returncode})",
                            details=tail(result.stdout + result.stderr))
    log.debug("portable: packed %s as %s in %.2fs", tree, raw.name, time.monotonic() - started)
    return raw


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of an os-release file, with quotes removed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        values[key] = parts[0] if parts else ""
    return values


def _matches_prefix(unit: str, prefix: str) -> bool:
    """portablectl's rule: the unit name is PREFIX followed by ``.``, ``-`` or ``@``."""
    return unit.startswith(prefix) and len(unit) > len(prefix) and unit[len(prefix)] in ".-@"


# -- the service in a guest ------------------------------------------------------------------
class PortableService:
    """A portable service image attached in a guest with ``portablectl``.

    Use as a context manager (or through the ``portable_service`` fixture): entering
    copies the image in, attaches it with ``--now`` (``--runtime`` unless
    ``runtime=False``) and waits until its units are active; leaving detaches it and
    removes the copied files, whatever happened before.
    """

    def __init__(self, guest: Guest, image: PortableImage | Path | str, *, profile: str = "default",
                 runtime: bool = True, timeout: float = 60.0, remote_dir: str = REMOTE_DIR,
                 resolve: Callable[[str], Path] | None = None, settle: float = 1.0) -> None:
        self.guest = guest
        self.settle = settle
        self._resolve = resolve
        self.image = self._open(image)
        self.profile = profile
        self.runtime = runtime
        self.timeout = timeout
        self.remote_dir = remote_dir
        self.attached = False
        self._copied: list[str] = []

    def _open(self, image: PortableImage | Path | str) -> PortableImage:
        """An image from a PortableImage, a path, or (with ``resolve``) a flake attribute."""
        if isinstance(image, PortableImage):
            return image
        if isinstance(image, str) and self._resolve is not None and not Path(image).exists():
            image = self._resolve(image)
        return PortableImage.open(image)

    # -- names ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """``web-server_1.0``: the image name, as portablectl lists it."""
        return self.image.name

    @property
    def prefix(self) -> str:
        """``web-server``: the prefix its unit names start with."""
        return self.image.prefix

    @property
    def units(self) -> list[str]:
        """The unit names attached from the image (``web-server.service``...)."""
        return self.image.units

    @property
    def remote_path(self) -> str:
        """Where the image lies in the guest: ``/root/NAME_VERSION.raw``, whatever its shape.

        Only in a guest without loop devices (a container not given the host's) is a
        directory image copied in as the tree ``/root/NAME_VERSION``: nothing else attaches there.
        """
        return self._remote_for(self.image)

    def _loopless(self) -> bool:
        """Whether the guest says it cannot mount a ``.raw`` (it has no loop devices)."""
        return getattr(self.guest, "loop_devices", True) is False

    def _remote_for(self, image: PortableImage) -> str:
        if self._loopless() and image.kind == "directory":
            return f"{self.remote_dir}/{image.name}"
        return f"{self.remote_dir}/{image.name}.raw"

    @property
    def portable(self) -> str:
        """The ``PORTABLE`` value the units see (the image file name)."""
        return PurePosixPath(self.remote_path).name

    # -- guest commands ---------------------------------------------------------------------
    def _run(self, argv: Sequence[str]) -> Any:
        command = shlex.join(argv)
        log.debug("guest $ %s", command)
        return self.guest.run(command)

    def _check(self, argv: Sequence[str], what: str) -> str:
        result = self._run(argv)
        if result.rc != 0:
            raise PortableError(f"{what}: '{shlex.join(argv)}' failed with exit code {result.rc}",
                                details=tail((result.stdout or "") + (result.stderr or "")))
        return str(result.stdout)

    def _flags(self) -> list[str]:
        flags = ["--now", f"--profile={self.profile}"]
        if self.runtime:
            flags.append("--runtime")
        return flags

    def _require_portablectl(self) -> None:
        result = self._run(["sh", "-c", "command -v portablectl"])
        if result.rc != 0:
            raise PortableError("the guest has no portablectl", hint=PORTABLECTL_HINT)

    def _copy(self, image: PortableImage) -> str:
        """Copy the image in as ``NAME_VERSION.raw``; a directory image is squashed here first,
        so the units see ``PORTABLE=NAME_VERSION.raw`` whatever shape the image had."""
        remote = self._remote_for(image)
        if self._loopless():
            if image.kind != "directory":
                raise PortableError(
                    f"{self.guest.name} has no loop devices, so {image.name}.raw cannot be attached there",
                    hint="attach a directory image (the image's tree), or run the guest as root, where the host's "
                         "/dev/loop-control and /dev/loop* are bound in")
            self.guest.copy_to(image.path, remote)  # a directory image needs no loop device: copied as it is
        elif image.kind == "directory":
            with tempfile.TemporaryDirectory(prefix="pf-portable-") as tmp:
                raw = squash_directory(image.path, Path(tmp) / f"{image.name}.raw")
                self.guest.copy_to(raw, remote)
        else:
            self.guest.copy_to(image.path, remote)
        self._copied.append(remote)
        return remote

    def _validate_in_guest(self, remote: str) -> None:
        """Dissect the image the way systemd's portable tests do, where the tool exists."""
        has = self._run(["sh", "-c", "command -v systemd-dissect"])
        if has.rc != 0:
            return
        result = self._run(["systemd-dissect", "--no-pager", remote])
        if result.rc != 0:
            raise PortableError(f"systemd-dissect cannot read {remote} (exit code {result.rc})",
                                hint="the image is damaged or of a kind this guest's systemd cannot mount",
                                details=tail((result.stdout or "") + (result.stderr or "")))

    # -- lifecycle ----------------------------------------------------------------------------
    def attach(self) -> PortableService:
        """Copy the image in, ``portablectl attach --now`` it, wait until its units are active."""
        self._require_portablectl()
        remote = self._copy(self.image)
        self._validate_in_guest(remote)
        self._check(["portablectl", "attach", *self._flags(), remote], f"attach {self.name}")
        self.attached = True
        self._wait_running(self.name)
        return self

    def reattach(self, image: PortableImage | Path | str) -> PortableService:
        """Upgrade in place: copy ``image`` in, ``portablectl reattach --now``, wait for the new units."""
        new = self._open(image)
        if new.prefix != self.prefix:
            raise PortableError(f"cannot reattach {self.name} to {new.name}: the prefixes differ "
                                f"({self.prefix} and {new.prefix})", hint="detach it and attach the other image")
        old_remote = self.remote_path
        remote = self._copy(new)
        self._validate_in_guest(remote)
        before = {unit: self._start_stamp(unit) for unit in new.units if unit.endswith(".service")}
        self._check(["portablectl", "reattach", *self._flags(), remote], f"reattach {self.name} to {new.name}")
        self.image = new
        self._wait_running(new.name, restarted_after=before)
        if old_remote != remote:
            self._run(["rm", "-rf", old_remote])
            if old_remote in self._copied:
                self._copied.remove(old_remote)
        return self

    def detach(self) -> None:
        """``portablectl detach --now``; the units stop and disappear."""
        if not self.attached:
            return
        self._check(["portablectl", "detach", "--now", *(["--runtime"] if self.runtime else []), self.remote_path],
                    f"detach {self.name}")
        self.attached = False

    def close(self) -> None:
        """Detach if attached and remove the copied files; idempotent, never raises twice."""
        try:
            self.detach()
        except Exception as exc:
            log.warning("pytest-flake: could not detach %s: %s", self.name, exc)
            self.attached = False
        while self._copied:
            remote = self._copied.pop()
            try:
                self._run(["rm", "-rf", remote])
            except Exception as exc:
                log.warning("pytest-flake: could not remove %s from the guest: %s", remote, exc)

    def __enter__(self) -> PortableService:
        try:
            return self.attach()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------------
    def attached_state(self, name: str | None = None) -> str:
        """``portablectl is-attached``: ``running-runtime``, ``attached``, ``detached``..."""
        result = self._run(["portablectl", "is-attached", name or self.name])
        return str(result.stdout).strip() or "detached"

    def _services(self) -> list[str]:
        return [u for u in self.units if u.endswith(".service") and "@." not in u]

    def _states(self, name: str, units: Sequence[str]) -> tuple[str, dict[str, dict[str, str]]]:
        """In one guest command: ``portablectl is-attached name`` and, per unit, ActiveState,
        MainPID, InvocationID, ExecMainStartTimestampMonotonic and its main process's Comm."""
        result = self._run(["sh", "-c", _STATE_SCRIPT, "sh", name, *units])
        attached = "detached"
        states: dict[str, dict[str, str]] = {}
        current: dict[str, str] = {}
        for line in str(result.stdout).splitlines():
            key, _, value = line.partition("=")
            if key == "Attached":
                attached = value.strip() or "detached"
            elif key == "Unit":
                current = states.setdefault(value, {})
            elif key:
                current[key] = value
        return attached, states

    def _start_stamp(self, unit: str) -> int:
        try:
            return int(self._states(self.name, [unit])[1][unit].get("ExecMainStartTimestampMonotonic") or 0)
        except (KeyError, ValueError):
            return 0

    def _wait_running(self, name: str, restarted_after: dict[str, int] | None = None) -> None:
        """Wait until the image is attached and each service runs its own program, and stays up.

        ``active`` alone is not enough: a simple service is active from the fork on, while
        systemd still sets up its mounts and before its program is even executed (the
        process is then called ``(name)``). So a service counts as running once its main
        process has executed its program and the same invocation is still up ``settle``
        seconds later.
        """
        services = self._services()
        first_seen: dict[str, tuple[str, str, float]] = {}  # unit -> (invocation, main pid, when)

        def probe() -> None:
            state, states = self._states(name, services)
            for unit in services:  # a failed unit leaves the image "attached", not "running"
                if states.get(unit, {}).get("ActiveState") == "failed":
                    raise _UnitFailed(unit)
            if not state.startswith("running"):
                raise NotReady(f"portablectl is-attached {name}: {state}")
            for unit in services:
                unit_state = states.get(unit, {})
                active = unit_state.get("ActiveState", "")
                if active != "active":
                    raise NotReady(f"{unit} is {active or 'unknown'}")
                stamp = int(unit_state.get("ExecMainStartTimestampMonotonic") or 0)
                if restarted_after and stamp <= restarted_after.get(unit, -1):
                    raise NotReady(f"{unit} still runs from the old image")
                pid = unit_state.get("MainPID", "0")
                if pid != "0" and unit_state.get("Comm", "").startswith("("):
                    raise NotReady(f"{unit}: systemd is still setting up its process {pid}")
                invocation = (unit_state.get("InvocationID", ""), pid)
                seen = first_seen.get(unit)
                if seen is None or seen[:2] != invocation:
                    first_seen[unit] = (*invocation, time.monotonic())
                    raise NotReady(f"{unit} started (pid {pid}); checking that it stays up")
                if time.monotonic() - seen[2] < self.settle:
                    raise NotReady(f"{unit} up for {time.monotonic() - seen[2]:.1f}s")

        try:
            wait_for(probe, what=f"portable service {name} running", timeout=self.timeout, interval=0.2,
                     max_interval=0.5, on_timeout=self.status)
        except _UnitFailed as failed:
            raise CheckFailed(f"{failed.unit} of portable service {name} failed to start\n"
                              f"{self.status(failed.unit)}\n{self.journal(failed.unit)}") from None

    def is_active(self, unit: str | None = None) -> bool:
        """Whether ``unit`` (default: every service of the image) is active."""
        units = [unit] if unit else self._services()
        if not units:
            return False
        return all(str(self._run(["systemctl", "is-active", u]).stdout).strip() == "active" for u in units)

    def status(self, unit: str | None = None) -> str:
        """``systemctl status`` of ``unit`` (default: the image's units)."""
        units = [unit] if unit else self.units
        result = self._run(["systemctl", "status", "--no-pager", "--full", "--lines=20", *units])
        return str(result.stdout) + str(result.stderr or "")

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        """The journal of the image's units: systemd's messages and the service's output."""
        units = [unit] if unit else self.units
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", f"--lines={lines}"]
        for u in units:
            argv += ["-u", u]
        result = self._run(argv)
        return str(result.stdout)

    def image_journal(self, lines: int = 200) -> str:
        """Only what this image version logged (the ``PORTABLE=`` journal field)."""
        result = self._run(["journalctl", "--no-pager", "-o", "cat", f"--lines={lines}", f"PORTABLE={self.portable}"])
        return str(result.stdout)

    def environment(self, unit: str | None = None) -> dict[str, str]:
        """The ``Environment=`` a unit runs with, as systemd reports it (``PORTABLE``...)."""
        target = unit or self._services()[0]
        result = self._run(["systemctl", "show", "-P", "Environment", target])
        env: dict[str, str] = {}
        for item in shlex.split(str(result.stdout)):
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def inspect(self) -> str:
        """``portablectl inspect`` of the attached image: os-release and unit files."""
        return self._check(["portablectl", "inspect", "--no-pager", self.remote_path], f"inspect {self.name}")

    def __repr__(self) -> str:
        return f"<PortableService {self.name} units={self.units} attached={self.attached}>"


# $1 is the image name, the other arguments unit names: prints Attached=, then per unit
# Unit=, systemctl show's key=value lines, and Comm= of its main process
_STATE_SCRIPT = (
    'echo "Attached=$(portablectl is-attached "$1")"; shift; '
    'for unit; do echo "Unit=$unit"; '
    'systemctl show -p ActiveState -p MainPID -p InvocationID -p ExecMainStartTimestampMonotonic "$unit"; '
    'pid=$(systemctl show -P MainPID "$unit"); '
    'if [ "${pid:-0}" -gt 0 ]; then echo "Comm=$(cat "/proc/$pid/comm" 2>/dev/null)"; fi; done'
)


class _UnitFailed(Exception):
    def __init__(self, unit: str) -> None:
        super().__init__(unit)
        self.unit = unit

