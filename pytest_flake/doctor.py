"""The pre-flight check (``pytest --flake-doctor``) and the report header.

Each check is one line: ``ok`` and what was found, or ``FAIL`` and what to do.
Component modules (docker, vm) contribute ``doctor(settings)`` lists of their own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from .components import components
from .config import Settings, image_about
from .errors import FlakeError, MissingToolError, NixError
from .nixcmd import INSTALL_HINT, Nix
from .nixerrors import parse_version

# the registry's components the doctor asks (all of them; a test may narrow it)
COMPONENTS: tuple[str, ...] | None = None


def _nix(args: list[str]) -> subprocess.CompletedProcess[str] | None:
    """``nix ARGS`` through :class:`~pytest_flake.nixcmd.Nix` (its exit code is the caller's to judge); None when
    nix is not installed or does not answer within a minute."""
    try:
        return Nix(timeout=60).run(args, check=False)
    except (MissingToolError, NixError, OSError):
        return None


def _nix_config() -> dict[str, str] | None:
    """Nix's settings (``nix config show``, else ``nix show-config`` before 2.20); None without an answer."""
    try:
        return Nix(timeout=60).config()
    except (MissingToolError, NixError, OSError):
        return None


def nix_facts_known(settings: Settings) -> list[str]:
    """The header's nix line when no selected test uses nix: what the settings say, and no nix run."""
    system = f"system: {settings.flake_system} (from {settings.source('flake_system')}), " if settings.flake_system \
        else ""
    return [f"{system}nix: not run (no selected test uses nix)"]


def nix_checks(settings: Settings) -> list[tuple[bool, str]]:
    """Nix is installed, evaluates flakes (with the features we pass) and builds offline."""
    version = _nix(["--version"])
    if version is None or version.returncode != 0:
        return [(False, f"nix: not found on PATH; {INSTALL_HINT}")]
    first = version.stdout.strip().splitlines()[0] if version.stdout.strip() else "?"
    found = parse_version(version.stdout)
    # Lix and Determinate Nix: which Nix that is, after their own line
    lines = [(True, f"nix: {first}" + ("" if found.implementation == "Nix" else f" ({found})"))]
    system = _nix(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"])
    if system is None or system.returncode != 0:
        err = system.stderr.strip().splitlines()[-1:] if system else ["timed out"]
        lines.append((False, f"nix eval: failed ({' '.join(err)}); check nix.conf and that the store is writable"))
    else:
        lines.append((True, f"nix system: {settings.flake_system or system.stdout.strip()}"))
    values = _nix_config()
    if values is not None:
        subs = values.get("substituters", "").strip()
        lines.append((True, f"nix substituters: {subs or '(none: offline builds)'}"))
        lines.append((True, f"nix sandbox: {values.get('sandbox', '?')}"))
    return lines


def component_checks(settings: Settings) -> list[tuple[bool, str]]:
    """The checks of every registered component (:mod:`pytest_flake.components`), in registry order."""
    lines: list[tuple[bool, str]] = []
    for component in components(settings, COMPONENTS):
        try:
            lines += component.doctor(settings)
        except ImportError as exc:
            lines.append((False, f"{component.name}: cannot import ({exc}); "
                                 f"pip install 'pytest-flake[{component.name}]'"))
        except Exception as exc:  # a broken check is reported, not raised
            lines.append((False, f"{component.name}: check failed: {exc}"))
    return lines


def run(settings: Settings, write: Callable[[str], Any]) -> int:
    """Print every check; exit code 0 when all are ok, 1 otherwise."""
    write("pytest-flake doctor")
    ok = True
    for good, line in nix_checks(settings) + component_checks(settings):
        ok &= good
        write(f"  {'ok  ' if good else 'FAIL'}  {line}")
    write("all checks passed" if ok else "some checks failed: see the FAIL lines above")
    return 0 if ok else 1


def _docker_endpoint(settings: Settings) -> str:
    try:
        from .docker import describe_endpoint
    except ImportError:  # the docker extra is not installed
        return f"{settings.docker_host or 'client default'} (from {settings.source('docker_host')})"
    try:
        return describe_endpoint(settings)
    except FlakeError as exc:  # a broken docker context: said here, raised when a test needs Docker
        return f"unknown ({exc})"


def configured(settings: Settings) -> bool:
    """Whether this run asks for pytest-flake at all: a flake, or a pytest-flake setting not at its default.

    ``DOCKER_HOST`` and ``LIBVIRT_DEFAULT_URI`` belong to everybody: set alone, they are no such request.
    """
    shared = ("$DOCKER_HOST", "$LIBVIRT_DEFAULT_URI", "default")
    return settings.flake is not None or any(source not in shared for source in settings.sources.values())


def header(settings: Settings) -> list[str]:
    """The report header: flake, Docker and libvirt endpoints, VM image. Runs no subprocess."""
    flake = settings.describe("flake") if settings.flake else "none (pass --flake DIR)"
    try:
        from .vm import default_uri, describe_accel, is_remote

        uri = default_uri(settings)
        far = "; another host: images uploaded as volumes, guest ports through an ssh tunnel" if is_remote(uri) else ""
        libvirt, accel = f"{uri} (from {settings.source('libvirt_uri')}{far})", describe_accel(settings)
    except ImportError:  # the vm extra is not installed
        libvirt, accel = settings.libvirt_uri or "qemu:///system (root) / qemu:///session", settings.vm_accel
    lines = [
        f"flake: {flake}",
        f"docker: {_docker_endpoint(settings)}",
        f"libvirt: {libvirt}; vm image: {_image(settings, 'vm_image')}; accel: {accel}",
        f"flake check: {'on' if settings.flake_check else 'off'} (from {settings.source('flake_check')})",
    ]
    if settings.source("container_image") != "default":
        lines.append(f"systemd containers: {_image(settings, 'container_image')}")
    return lines


def _image(settings: Settings, name: str) -> str:
    """``debian-sid (Debian unstable, systemd 262; from --vm-image)``: a built-in Debian name says what it is."""
    about = image_about(str(getattr(settings, name)))
    return f"{getattr(settings, name)} ({f'{about}; ' if about else ''}from {settings.source(name)})"


def locked(metadata: dict[str, Any]) -> str:
    """``git rev 1a2b3c4d5e6f (clean)``, ``git (dirty tree: uncommitted changes)``, or a path's hash."""
    lock = metadata.get("locked") or {}
    kind = lock.get("type", "?")
    rev = metadata.get("revision") or lock.get("rev")
    if kind in ("git", "github", "gitlab", "sourcehut", "hg"):
        if rev:
            return f"{kind} rev {rev[:12]} (clean)"
        # Nix 2.17 and later name the commit a dirty tree starts from: "REV-dirty"
        dirty = metadata.get("dirtyRevision") or lock.get("dirtyRev")
        if isinstance(dirty, str) and dirty:
            return f"{kind} rev {dirty.removesuffix('-dirty')[:12]} (dirty tree: uncommitted changes)"
        return f"{kind} (dirty tree: uncommitted changes, no revision)"
    nar = lock.get("narHash", "?")
    return f"{kind} {nar} (not under version control: no revision)"


def nix_facts(settings: Settings, ref: str | None = None) -> list[str]:
    """After collection, for a run that uses the plugin: Nix version, system, the flake's locked revision."""
    version = _nix(["--version"])
    if version is None:
        return [f"nix: not found on PATH; {INSTALL_HINT}"]
    if version.returncode != 0:
        return [f"nix: 'nix --version' failed with exit code {version.returncode}; try: pytest --flake-doctor"]
    nix_version = parse_version(version.stdout)
    system = settings.flake_system
    if system is None:
        probe = _nix(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"])
        system = probe.stdout.strip() if probe and probe.returncode == 0 else "unknown"
    # "nix 2.8.0"; another implementation by its name: "Lix 2.91.1", "Determinate Nix 3.4.1 (Nix 2.28.2)"
    shown = f"nix {nix_version.version}" if nix_version.implementation == "Nix" else str(nix_version)
    lines = [f"system: {system}, {shown}"]
    ref = ref or settings.flake
    if ref:
        from .nix import normalize_ref

        nix_ref, _ = normalize_ref(ref, settings.invocation_dir)
        meta = _nix(["flake", "metadata", "--json", nix_ref])
        if meta is not None and meta.returncode == 0:
            try:
                lines.append(f"flake locked: {locked(json.loads(meta.stdout))}")
            except ValueError:
                lines.append("flake locked: unknown (unreadable 'nix flake metadata --json')")
        else:
            text = meta.stderr if meta else "timed out"
            err = [line for line in text.splitlines() if line.startswith("error:")][:1]
            err = err or text.strip().splitlines()[-1:]
            lines.append(f"flake locked: unknown ({' '.join(err)})")
    return lines
