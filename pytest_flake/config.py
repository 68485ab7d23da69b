"""Settings: one frozen object, each value resolved option > environment > ini > default.

The source of every value is recorded, so the report header can say
``flake: path:/src (from --flake)`` and a user knows which knob won.
Nothing here imports pytest: ``plugin.py`` hands in the three lookups.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CommandLineError, UsageError, format_choices

VM_ACCELS = ("auto", "kvm", "tcg")
# the Debian images built offline (pytest_flake.images.debian): Debian 12, 13 and unstable, plain and cloud-init
BUILTIN_CONTAINER_IMAGES = ("debian", "debian-trixie", "debian-sid")
BUILTIN_VM_IMAGES = ("arch", "debian", "debian-cloud", "debian-trixie", "debian-trixie-cloud", "debian-sid",
                     "debian-sid-cloud")
IMAGE_ABOUT = {
    "debian": "Debian 12, systemd 252", "debian-trixie": "Debian 13, systemd 257",
    "debian-sid": "Debian unstable, systemd 262",
}
PORTABLE_HOSTS = ("vm", "nspawn")
TARGETS = ("local", "docker", "portable")  # the forms of the service fixture (pytest_flake.service)


@dataclass(frozen=True)
class Option:
    """One setting: its command-line flag, ini key, environment variable and help."""

    name: str  # attribute name on Settings, also the ini key
    flag: str
    help: str
    env: str | None = None
    default: Any = None
    kind: str = "str"  # str | int | float | bool | size (bytes, from "8G", "8GiB", "10240M")
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    path: bool = False  # a relative value from the ini file is relative to the ini file's directory


OPTIONS: tuple[Option, ...] = (
    Option("flake", "--flake", "flake reference to test: a directory, path:DIR, git+file:DIR, github:OWNER/REPO... "
           "(default: the flake.nix of the invocation directory or its parents)", env="PYTEST_FLAKE", metavar="REF",
           path=True),
    Option("flake_system", "--flake-system", "Nix system of the outputs (default: the machine's, e.g. x86_64-linux)",
           env="PYTEST_FLAKE_SYSTEM", metavar="SYSTEM"),
    Option("vm_image", "--vm-image", "VM image: 'arch' (Arch Linux cloud image, downloaded once), 'debian' "
           "(Debian 12), 'debian-trixie' (13), 'debian-sid' (unstable), each built locally and offline, also with "
           "cloud-init as debian-cloud, debian-trixie-cloud, debian-sid-cloud; a qcow2 PATH or an http(s) URL",
           env="PYTEST_FLAKE_VM_IMAGE", default="arch",
           metavar="NAME|PATH|URL", path=True),
    Option("libvirt_uri", "--libvirt-uri", "libvirt connection URI (default: qemu:///system as root, "
           "qemu:///session otherwise)", env="LIBVIRT_DEFAULT_URI", metavar="URI"),
    Option("vm_accel", "--vm-accel", "VM acceleration: auto probes whether KVM really runs a guest, else TCG",
           env="PYTEST_FLAKE_VM_ACCEL", default="auto", choices=VM_ACCELS),
    Option("vm_memory", "--vm-memory", "memory of each VM in MiB", env="PYTEST_FLAKE_VM_MEMORY", default=1024,
           kind="int", metavar="MIB"),
    Option("vm_cpus", "--vm-cpus", "virtual CPUs of each VM", env="PYTEST_FLAKE_VM_CPUS", default=1, kind="int",
           metavar="N"),
    Option("vm_disk_size", "--vm-disk-size", "disk size of each VM, e.g. 8G, 12GiB, 10240M (the overlay is made "
           "this big and cloud images grow their root into it; never less than the image's own disk)",
           env="PYTEST_FLAKE_VM_DISK_SIZE", default="8G", kind="size", metavar="SIZE"),
    Option("docker_host", "--docker-host", "Docker endpoint, e.g. unix:///run/docker.sock (default: DOCKER_HOST, "
           "else the client's default)", env="DOCKER_HOST", metavar="URL"),
    Option("flake_keep", "--flake-keep", "keep the containers and VMs of failed tests and print how to reach them",
           env="PYTEST_FLAKE_KEEP", default=False, kind="bool"),
    Option("flake_timeout", "--flake-timeout", "seconds to wait for a service, container or guest to be ready",
           env="PYTEST_FLAKE_TIMEOUT", default=120.0, kind="float", metavar="SECONDS"),
    Option("flake_build_timeout", "--flake-build-timeout", "seconds a single nix build may take before it is "
           "stopped (default: no limit)", env="PYTEST_FLAKE_BUILD_TIMEOUT", kind="float", metavar="SECONDS"),
    Option("flake_targets", "--flake-targets", "targets the service fixture runs each test against, comma-separated: "
           "local, docker, portable", env="PYTEST_FLAKE_TARGETS", default="local,docker,portable", kind="targets",
           metavar="LIST"),
    Option("container_image", "--container-image", "OS tree of systemd containers: 'debian', 'debian-trixie' or "
           "'debian-sid' (the root of that Debian VM image, built locally), a DIRECTORY or a TARBALL of an OS tree "
           "with systemd", env="PYTEST_FLAKE_CONTAINER_IMAGE", default="debian",
           metavar="NAME|DIR|TARBALL", path=True),
    Option("flake_portable_host", "--flake-portable-host", "where the service fixture's portable target runs: a VM "
           "or a systemd container", env="PYTEST_FLAKE_PORTABLE_HOST", default="vm", choices=PORTABLE_HOSTS),
    Option("flake_xdist_group", "--flake-xdist-group", "keep the tests marked vm (nspawn) on one worker under "
           "pytest-xdist's --dist loadgroup: xdist_group pytest-flake-vm (pytest-flake-nspawn) for each that has "
           "none of its own (on by default)", env="PYTEST_FLAKE_XDIST_GROUP", default=True, kind="bool"),
    Option("flake_check", "--flake-check", "test every output of the flake itself, with no test code: checks and "
           "packages built, programs and apps run-ready, docker images run, unit files verified, portable images "
           "attached (items collected also where there is no test file)", env="PYTEST_FLAKE_CHECK", default=False,
           kind="bool"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of ``8G``, ``8GiB``, ``8 GB`` (binary units, as qemu-img reads them), ``10240M``; ValueError else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt])(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size")
    return size


def _convert(opt: Option, raw: Any, source: str) -> Any:
    where = f"{opt.flag}" if source == "option" else (f"${opt.env}" if source == "env" else f"ini '{opt.name}'")
    bad = CommandLineError if source == "option" else UsageError  # typed on the command line: fails at once
    if opt.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad(f"{where}={raw!r} is not a boolean", hint="use one of: 1, 0, true, false, yes, no")
    if opt.kind == "size":
        try:
            return parse_size(str(raw))
        except ValueError:
            raise bad(f"{where}={raw!r} is not a size", hint="give a number with a unit: 8G, 12GiB, 10240M") \
                from None
    if opt.kind in ("int", "float"):
        try:
            number: float = int(raw) if opt.kind == "int" else float(raw)
        except (TypeError, ValueError):
            raise bad(f"{where}={raw!r} is not a number", hint=f"{opt.help}") from None
        if not math.isfinite(number):
            raise bad(f"{where}={raw!r} is not a finite number", hint=f"give seconds or a count: {opt.help}")
        if number <= 0:
            raise bad(f"{where}={raw!r} must be greater than 0")
        return number
    if opt.kind == "targets":
        try:
            return ",".join(parse_targets(str(raw)))
        except UsageError as exc:
            raise bad(f"{where}={raw!r}: {exc}") from None
    text = str(raw).strip()
    if opt.choices and text not in opt.choices:
        raise bad(f"{where}={raw!r} is not valid", hint=f"valid values: {', '.join(opt.choices)}")
    if not text:
        raise bad(f"{where} is empty", hint=opt.help)
    return text


def parse_targets(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"local,docker"`` -> ``("local", "docker")``, in the order given; unknown names are an error."""
    if text is None:
        return TARGETS
    items = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    names = [t.strip() for t in items if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise UsageError(f"--flake-targets: unknown target {', '.join(map(repr, unknown))}",
                         hint=f"valid targets: {format_choices(TARGETS)}, separated by commas")
    if not names:
        raise UsageError("--flake-targets is empty", hint=f"name at least one of: {format_choices(TARGETS)}")
    return tuple(dict.fromkeys(names))


_LOCAL_SCHEMES = ("path:", "git+file://", "git+file:")


def ini_relative(value: str, ini_dir: Path) -> str:
    """A relative path (or ``path:``/``git+file:`` ref) from the ini file, made absolute against its directory.

    Names (``arch``, ``debian``), URLs and remote flake refs are left alone: only a value
    that names something on disk relative to the ini file is changed.
    """
    scheme = next((s for s in _LOCAL_SCHEMES if value.startswith(s)), "")
    rest = value[len(scheme):]
    if not scheme and (":" in rest or rest in BUILTIN_VM_IMAGES):
        return value  # a URL, a remote ref (github:...), or a built-in name
    if rest.startswith(("/", "~")) or not rest:
        return value
    if not scheme and "/" not in rest and not (ini_dir / rest).exists():
        return value  # a bare word that is no file next to the ini file: a name, not a path
    return f"{scheme}{(ini_dir / rest).resolve()}"


def image_about(name: str) -> str:
    """``Debian unstable, systemd 262, cloud-init`` for a built-in Debian image name, else ``""``."""
    cloud = name.endswith("-cloud")
    about = IMAGE_ABOUT.get(name.removesuffix("-cloud"), "")
    return f"{about}, cloud-init" if about and cloud else about


def check_image_names(vm_image: str, container_image: str, invocation_dir: Path) -> None:
    """A bare ``debian-...`` word that names no built-in image and no file is refused, listing the names."""
    for what, value, names in (("--vm-image", vm_image, BUILTIN_VM_IMAGES),
                               ("--container-image", container_image, BUILTIN_CONTAINER_IMAGES)):
        if not value or value in names or not re.fullmatch(r"(arch|debian)(-[\w.-]*)?", value):
            continue
        if (invocation_dir / value).exists():
            continue  # a file or folder of that name: a path
        extra = " (cloud-init images are for VMs only)" if value in BUILTIN_VM_IMAGES else ""
        raise CommandLineError(f"{what} {value!r} is no built-in image{extra}",
                         hint=f"use one of {', '.join(names)}, or a path")


def find_flake(start: Path) -> Path | None:
    """The directory of the ``flake.nix`` that ``nix`` would use from ``start``: it or a parent.

    Like ``nix``, the search stops at the top of a git checkout.
    """
    for directory in (start, *start.parents):
        if (directory / "flake.nix").is_file():
            return directory
        if (directory / ".git").exists():
            return None
    return None


@dataclass(frozen=True)
class Settings:
    """All pytest-flake settings of a session, with where each value came from."""

    flake: str | None
    flake_system: str | None
    vm_image: str
    libvirt_uri: str | None
    vm_accel: str
    vm_memory: int
    vm_cpus: int
    vm_disk_size: int
    docker_host: str | None
    flake_keep: bool
    flake_timeout: float
    flake_targets: str
    invocation_dir: Path
    sources: Mapping[str, str] = field(default_factory=dict)
    flake_build_timeout: float | None = None  # None: a build takes as long as it takes
    container_image: str = "debian"  # --container-image: debian, debian-trixie, debian-sid, a directory or a tarball
    flake_portable_host: str = "vm"  # --flake-portable-host: vm or nspawn
    flake_xdist_group: bool = True  # --flake-xdist-group: vm / nspawn tests in one xdist_group each
    flake_check: bool = False  # --flake-check: items collected from the flake's own outputs

    def source(self, name: str) -> str:
        """``--flake``, ``$DOCKER_HOST``, ``ini``, ``default``: where ``name`` came from."""
        return self.sources.get(name, "default")

    def describe(self, name: str) -> str:
        """``value (from SOURCE)`` for the report header."""
        value = getattr(self, name)
        return f"{value} (from {self.source(name)})"

    @classmethod
    def resolve(
        cls,
        option: Callable[[str], Any],
        ini: Callable[[str], Any],
        invocation_dir: Path,
        environ: Mapping[str, str] | None = None,
        ini_dir: Path | None = None,
    ) -> Settings:
        """Resolve every option: command line, then environment, then ini, then default.

        ``option(name)`` returns the command-line value or None (False for a ``--no-`` form,
        which wins over env and ini); ``ini(name)`` the ini value or None/empty, relative
        paths in it taken from ``ini_dir``. Raises :class:`UsageError` naming the bad value: a
        :class:`CommandLineError` for a value typed on the command line, and for an image name that
        names no built-in image (both fail the run at once).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for opt in OPTIONS:
            raw = option(opt.name)
            if raw is not None:
                flag = opt.flag if raw is not False else "--no-" + opt.flag[2:]
                values[opt.name], sources[opt.name] = _convert(opt, raw, "option"), flag
                continue
            if opt.env and env.get(opt.env):
                values[opt.name], sources[opt.name] = _convert(opt, env[opt.env], "env"), f"${opt.env}"
                continue
            raw = ini(opt.name)
            if raw not in (None, "", []):
                value = _convert(opt, raw, "ini")
                if opt.path and ini_dir is not None and isinstance(value, str):
                    value = ini_relative(value, ini_dir)
                values[opt.name], sources[opt.name] = value, f"ini {opt.name}"
                continue
            values[opt.name] = parse_size(opt.default) if opt.kind == "size" else opt.default
            sources[opt.name] = "default"
        if values["flake"] is None:
            found = find_flake(invocation_dir)
            if found == invocation_dir:
                values["flake"], sources["flake"] = str(found), "flake.nix in the invocation directory"
            elif found is not None:
                values["flake"], sources["flake"] = str(found), "flake.nix in a parent of the invocation directory"
        check_image_names(values["vm_image"], values["container_image"], invocation_dir)
        return cls(invocation_dir=invocation_dir, sources=sources, **values)
