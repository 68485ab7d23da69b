"""A flake's own outputs as checks (``--flake-check``): what each output is, and what checks it.

:func:`inventory` reads every output of a flake in one ``nix eval`` and turns each into an
:class:`Output`: ``checks.<system>.NAME`` (built), ``packages.<system>.NAME`` (built, then
sorted by what the build holds: :func:`classify`), ``apps.<system>.NAME`` (the schema and the
program), and everything else (``nixosConfigurations``, ``lib``, ``devShells``...) with the
reason it is not checked. The checks that need no daemon live here too: the program ``nix run``
would run (:func:`check_program`), an app (:func:`check_app`), unit files (:func:`check_units`:
each ``Exec*=`` program exists, then ``systemd-analyze verify``), and a container that must
stay up (:func:`check_still_running`). Docker images and portable images are checked by the
plugin with the session's daemon and guests. Never imports pytest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._host import SNIFF_BYTES, run_tool, sniff
from .errors import CheckFailed, FlakeError, MissingToolError, NixError, UsageError, format_choices, tail
from .nixcmd import nix_string
from .portable.units import UNIT_DIRS, UNIT_SUFFIXES, parse_unit

log = logging.getLogger(__name__)

# what an output is, and so what its item does
CHECK, PROGRAM, DATA, DOCKER, UNITS, PORTABLE, APP, OTHER, BROKEN = (
    "check", "program", "data", "docker", "units", "portable", "app", "other", "broken")
PACKAGE = "package"  # a package before its build says which of PROGRAM, DATA, DOCKER, UNITS, PORTABLE it is
SETTLE = 1.0  # seconds a container must keep running after it is ready
UNIT_FILE_SUFFIXES = (*UNIT_SUFFIXES, ".mount", ".slice", ".automount", ".swap", ".scope")
STORE_HASH = re.compile(r"^[0-9a-df-np-sv-z]{32}-")
# groups of outputs per system; the rest are flat
PER_SYSTEM = ("packages", "checks", "apps", "devShells", "legacyPackages", "formatter", "defaultPackage",
              "defaultApp", "devShell")
# why an output of a group is not checked (one item each; "" keys: one item for the whole group)
REASONS = {
    "devShells": "a development shell (nix develop enters it): nothing to run",
    "devShell": "a development shell (nix develop enters it): nothing to run",
    "formatter": "the formatter (nix fmt runs it): nothing to check without files to format",
    "legacyPackages": "a package set (legacyPackages): too large to walk; test its members as packages or tests",
    "nixosConfigurations": "a NixOS system: --flake-check neither builds nor boots it (boot it in a test with vm)",
    "darwinConfigurations": "a nix-darwin system: it runs on macOS only",
    "homeConfigurations": "a home-manager configuration: nothing to run on its own",
    "nixosModules": "a NixOS module: it only means something inside a NixOS configuration",
    "overlays": "an overlay: a function over a package set, nothing to build on its own",
    "templates": "a template (nix flake init): files to copy, nothing to build",
    "lib": "a library of Nix functions: nothing to build or run",
    "hydraJobs": "jobs for Hydra: --flake-check tests the packages and checks instead",
}
WHOLE_GROUPS = ("lib", "legacyPackages", "formatter", "hydraJobs", "devShell")

_INVENTORY = """
let
  flake = builtins.getFlake @REF@;
  outputs = flake.outputs;
  system = @SYSTEM@;
  str = x: if builtins.isString x then x else null;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  pkg = v: if !(builtins.isAttrs v) then { type = null; } else {
    type = str (v.type or null);
    name = str (v.name or null);
    pname = str (v.pname or null);
    mainProgram = if builtins.isAttrs (v.meta or null) then str (v.meta.mainProgram or null) else null;
    parsedName = if builtins.isString (v.name or null) then (builtins.parseDrvName v.name).name else null;
  };
  app = v: if !(builtins.isAttrs v) then { type = null; } else {
    type = str (v.type or null);
    program = if builtins.isString (v.program or null) then builtins.unsafeDiscardStringContext v.program else null;
  };
  here = group: f: if outputs ? ${group} && builtins.isAttrs outputs.${group} && outputs.${group} ? ${system}
    then f outputs.${group}.${system} else null;
in {
  names = builtins.mapAttrs (n: v: if builtins.isAttrs v && !(isDrv v) then builtins.attrNames v else null) outputs;
  packages = here "packages" (builtins.mapAttrs (n: pkg));
  checks = here "checks" (builtins.mapAttrs (n: pkg));
  apps = here "apps" (builtins.mapAttrs (n: app));
  defaultPackage = here "defaultPackage" pkg;
  defaultApp = here "defaultApp" app;
  devShells = here "devShells" (v: if builtins.isAttrs v then builtins.attrNames v else [ ]);
}
"""


@dataclass(frozen=True)
class Output:
    """One output of the flake, as ``--flake-check`` tests it.

    ``group`` is the item's parent (``packages``, ``checks``, ``apps``, ``nixosConfigurations``,
    ``other systems``...), ``name`` the item's name (``NAME`` of ``checks.<system>.NAME``),
    ``attr`` the full attribute path, ``kind`` what is checked (a package's is known once it is
    built: :meth:`with_kind`), ``reason`` why an output is not checked (kind ``other``) or what
    is wrong with it (kind ``broken``), ``facts`` what the evaluation said (name, pname,
    mainProgram...), ``what`` what the build holds.
    """

    group: str
    name: str
    attr: str
    kind: str
    reason: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)
    what: str = ""

    def with_kind(self, kind: str, what: str = "", reason: str = "") -> Output:
        return Output(self.group, self.name, self.attr, kind, reason or self.reason, self.facts, what)


def inventory(flake: Any) -> list[Output]:
    """Every output of ``flake`` (a :class:`~pytest_flake.nix.Flake`), in one ``nix eval``; packages unbuilt."""
    system = flake.system
    expr = _INVENTORY.replace("@REF@", nix_string(flake.ref)).replace("@SYSTEM@", nix_string(system))
    # --impure: getFlake of an unlocked ref (a local directory) is refused in pure mode
    proc = flake.nix.run(["eval", "--json", "--impure", "--expr", expr], check=False)
    if proc.returncode != 0:
        errors = [line.strip() for line in proc.stderr.splitlines() if line.startswith("error:")]
        reason = f": {errors[-1]}" if errors else f" (nix exit code {proc.returncode})"
        raise NixError(f"cannot list the outputs of flake {flake.ref}{reason}",
                       hint="'nix flake show' on the same flake shows the error too", details=tail(proc.stderr, 30))
    return outputs_of(json.loads(proc.stdout), system)


def outputs_of(data: Mapping[str, Any], system: str) -> list[Output]:
    """The :class:`Output` list of what :data:`_INVENTORY` evaluated to (separate, for unit tests)."""
    found: list[Output] = []
    for name, facts in sorted((data.get("checks") or {}).items()):
        attr = f"checks.{system}.{name}"
        if facts.get("type") != "derivation":
            found.append(Output("checks", name, attr, BROKEN, f"{attr} is not a derivation (nix flake check "
                                f"refuses it too): it is of type {facts.get('type')!r}", facts))
        else:
            found.append(Output("checks", name, attr, CHECK, facts=facts))
    packages = dict(data.get("packages") or {})
    for name, facts in sorted(packages.items()):
        found.append(_package(f"packages.{system}.{name}", "packages", name, facts))
    if data.get("defaultPackage") is not None:
        found.append(_package(f"defaultPackage.{system}", "defaultPackage", system, data["defaultPackage"]))
    for name, facts in sorted((data.get("apps") or {}).items()):
        found.append(Output("apps", name, f"apps.{system}.{name}", APP, facts=facts))
    if data.get("defaultApp") is not None:
        found.append(Output("defaultApp", system, f"defaultApp.{system}", APP, facts=data["defaultApp"]))
    names: Mapping[str, list[str] | None] = data.get("names") or {}
    for group, members in sorted(names.items()):
        if group in PER_SYSTEM:
            for other in sorted(members or []):
                if other != system:
                    found.append(Output("other systems", f"{group}.{other}", f"{group}.{other}", OTHER,
                                        f"for system {other}; this run tests {system} (--flake-system)"))
            if system not in (members or []) or group in ("packages", "checks", "apps", "defaultPackage",
                                                           "defaultApp"):
                continue
            if group in WHOLE_GROUPS:
                found.append(Output(group, system, f"{group}.{system}", OTHER, REASONS[group]))
                continue
            for member in _members(data, group, system):
                found.append(Output(group, member, f"{group}.{system}.{member}", OTHER,
                                    REASONS.get(group, "not an output --flake-check knows")))
            continue
        reason = REASONS.get(group, "not a standard flake output: --flake-check does not know what to do with it")
        if members is None or group in WHOLE_GROUPS:
            found.append(Output(group, group, group, OTHER, reason))
        else:
            found += [Output(group, member, f"{group}.{member}", OTHER, reason) for member in sorted(members)]
    return found


def _members(data: Mapping[str, Any], group: str, system: str) -> list[str]:
    return sorted(data.get(group) or []) or [system]


def _package(attr: str, group: str, name: str, facts: Mapping[str, Any]) -> Output:
    if facts.get("type") != "derivation":
        return Output(group, name, attr, BROKEN, f"{attr} is not a derivation (nix build refuses it): it is of "
                                                 f"type {facts.get('type')!r}", facts)
    return Output(group, name, attr, PACKAGE, facts=facts)


# --- what a build holds ----------------------------------------------------------------------------------
def store_name(path: Path) -> str:
    """``web-server.service`` of ``/nix/store/<hash>-web-server.service``."""
    return STORE_HASH.sub("", path.name)


def unit_files(out: Path) -> list[Path]:
    """The unit files of an output: the output itself, or every file of a folder of units (or its unit dirs)."""
    if out.is_file():
        return [out] if store_name(out).endswith(UNIT_FILE_SUFFIXES) else []
    if not out.is_dir():
        return []
    for base in (*(out / d for d in UNIT_DIRS), out):
        if not base.is_dir():
            continue
        files = sorted(p for p in base.iterdir() if p.is_file() or p.is_symlink())
        units = [p for p in files if p.name.endswith(UNIT_FILE_SUFFIXES)]
        if units and (base != out or len(units) == len(files)):
            return units
    return []


def classify(out: Path) -> tuple[str, str]:
    """What a built package is (:data:`DOCKER`, :data:`PORTABLE`, :data:`UNITS`, :data:`PROGRAM` or
    :data:`DATA`) and a few words on why; reads the files, runs nothing."""
    if unit_files(out) and not (out.is_dir() and (out / "bin").is_dir()):
        return UNITS, "a unit file" if out.is_file() else "a folder of unit files"
    if out.is_dir():
        if any((out / f).is_file() for f in ("usr/lib/os-release", "etc/os-release")):
            return PORTABLE, "a directory image (it has an os-release)"
        raws = sorted(p.name for p in out.glob("*.raw"))
        if raws:
            return PORTABLE, f"a folder with {format_choices(raws)}"
        if (out / "bin").is_dir():
            return PROGRAM, "a package with bin/"
        return DATA, "a folder without bin/"
    try:
        with out.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        return DATA, f"unreadable ({exc.strerror or exc})"
    kind = sniff(head)
    if kind in ("squashfs", "gpt") or store_name(out).endswith(".raw"):
        return PORTABLE, f"a {kind} image"
    if head.startswith(b"#!") and store_name(out).startswith("stream-") and os.access(out, os.X_OK):
        return DOCKER, "a streamLayeredImage script"
    if kind in ("tar", "gzip", "zstd", "bzip2", "xz"):
        from .docker.archive import inspect_archive

        try:
            archive = inspect_archive(out)
        except (FlakeError, OSError, ValueError, EOFError) as exc:
            return DATA, f"a {kind} file that is no docker-archive ({str(exc).splitlines()[0][:120]})"
        return DOCKER, f"{archive.what} ({', '.join(archive.tags) or archive.id[:19]})"
    return DATA, "a file"


# --- checks that need no daemon ----------------------------------------------------------------------------
def check_program(flake: Any, output: Output, out: Path) -> str:
    """The program ``nix run`` would run for a package exists and is executable; what was checked.

    ``meta.mainProgram`` must exist when it is set; without it, ``pname``, the parsed name and a
    lone file in ``bin/`` are tried (:meth:`~pytest_flake.nix.Flake.program`). A package whose
    ``bin/`` has several files and none of those names has no program ``nix run`` would run: it
    passes, built.
    """
    facts = output.facts
    bindir = out / "bin"
    files = sorted(p.name for p in bindir.iterdir() if not p.is_dir()) if bindir.is_dir() else []
    names = [n for n in (facts.get("pname"), facts.get("parsedName")) if n]
    if not facts.get("mainProgram") and not any(n in files for n in names) and len(files) != 1:
        return f"built {out}; nix run would run no program of it (bin/ has {format_choices(files)})"
    try:
        program = Path(flake.program(output.attr))
    except UsageError as exc:
        raise CheckFailed(_named(output, exc)) from None
    if not os.access(program, os.X_OK):
        raise CheckFailed(f"{output.attr}: {program}, the program nix run would run, is not executable "
                          "(install it with mode 0755)")
    return f"built {out}; nix run runs {program}"


def check_app(flake: Any, output: Output) -> str:
    """An app as ``nix flake check`` has it (``type = "app"``, ``program`` a store path), and its program."""
    facts = output.facts
    program = facts.get("program")
    if facts.get("type") != "app":
        raise CheckFailed(f"{output.attr} has type {facts.get('type')!r}, not 'app' (nix flake check refuses it: "
                          'an app is { type = "app"; program = "${package}/bin/NAME"; })')
    if not isinstance(program, str) or not program.startswith("/nix/store/"):
        raise CheckFailed(f"{output.attr}: program {program!r} is not a path in the Nix store (nix flake check "
                          "refuses it: point it at a file a package installs)")
    try:
        path = flake.program(output.attr)
    except UsageError as exc:
        raise CheckFailed(_named(output, exc)) from None
    return f"nix run runs {path}"


def _named(output: Output, exc: BaseException) -> str:
    """The message of ``exc``, starting with the output's attribute path."""
    text = str(exc)
    return text if text.startswith(output.attr) else f"{output.attr}: {text}"


_EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost",
              "ExecCondition")


def exec_programs(text: str) -> list[tuple[str, str]]:
    """``(key, program)`` of each ``Exec*=`` line of a unit's ``[Service]`` (prefixes ``-@:+!`` removed)."""
    unit = parse_unit(text)
    found: list[tuple[str, str]] = []
    for key in _EXEC_KEYS:
        for value in unit.getall("Service", key):
            try:
                argv = shlex.split(value.lstrip("-@:+!|"))
            except ValueError:
                argv = value.lstrip("-@:+!|").split()
            if argv:
                found.append((key, argv[0]))
    return found


def check_units(out: Path, timeout: float = 120.0) -> str:
    """Every program an ``Exec*=`` line names exists and is executable, then ``systemd-analyze verify``.

    Verify runs on this machine (it needs no running systemd) on copies named as systemd
    will name them (without the store hash). A unit that names a missing program, or that
    verify refuses, fails with the line and verify's message.
    """
    units = unit_files(out)
    if not units:
        raise CheckFailed(f"{out} holds no unit file (a .service, .socket, .timer... file or a folder of them)")
    problems: list[str] = []
    checked: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pf-units-") as tmp:
        copies: list[str] = []
        for unit in units:
            name = store_name(unit)
            text = unit.read_text(errors="replace")
            try:
                programs = exec_programs(text)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
                continue
            for key, program in programs:
                if not program.startswith("/"):
                    problems.append(f"{name}: {key}={program}: not an absolute path (a unit of a flake names its "
                                    "program in the store)")
                elif not Path(program).is_file():
                    problems.append(f"{name}: {key}={program} does not exist")
                elif not os.access(program, os.X_OK):
                    problems.append(f"{name}: {key}={program} is not executable")
                else:
                    checked.append(f"{name}: {key}={program}")
            (Path(tmp) / name).write_text(text)
            copies.append(str(Path(tmp) / name))
        verdict = _verify(copies, timeout) if copies else ""
    if verdict:
        problems.append(verdict)
    if problems:
        raise CheckFailed("unit files of " + str(out) + " are broken:\n" + "\n".join(problems))
    return "\n".join(checked) or f"{len(units)} unit(s) without Exec lines"


def _verify(copies: list[str], timeout: float) -> str:
    """``systemd-analyze verify``: empty when it passes (or is not installed), else its message."""
    try:
        run_tool(["systemd-analyze", "verify", "--man=no", *copies], what="systemd-analyze verify of the unit files",
                 timeout=timeout, error=FlakeError, hint="apt-get install systemd")
    except MissingToolError as exc:
        log.warning("pytest-flake: %s; unit files checked without it", exc)
        return ""
    except FlakeError as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        return f"systemd-analyze verify refuses them: {exc.message}\n{notes}".rstrip()
    return ""


def check_still_running(status: Any, logs: Any, what: str, settle: float = SETTLE) -> None:
    """A ready container (``status()`` -> ``running``) is still running ``settle`` seconds later; else its logs."""
    time.sleep(settle)
    state = status()
    if state != "running":
        raise CheckFailed(f"{what} stopped within {settle:g}s of being ready (status {state})\n"
                          f"{tail(logs(), 40) or '(no output)'}")
