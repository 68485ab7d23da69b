"""What ``nix run REF#attr`` runs, found and built the way Nix does (the programs of a ``Flake``).

One evaluation per session decides, as ``nix run`` does: ``apps.<system>.<attr>.program``
first (the derivation outputs its string names are built: ``DRV^out`` where Nix reads that,
see :meth:`~pytest_flake.nixcmd.Nix.drv_outputs`), else the package's ``bin/`` and
``meta.mainProgram``, ``pname`` or the name without its version. Never imports pytest.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import nixerrors
from .errors import MissingOutputError, NixError, UsageError, format_choices, tail
from .nixcmd import link_name, nix_string

if TYPE_CHECKING:
    from .nixcmd import Build, Nix
    from .xdist import Run

log = logging.getLogger(__name__)
build_log = logging.getLogger("pytest_flake.nix")  # every line of every build log, as it comes

# Top-level flake output groups: an attribute starting with one of these is a full path.
OUTPUT_GROUPS = (
    "packages", "legacyPackages", "checks", "apps", "devShells", "nixosConfigurations",
    "defaultPackage", "defaultApp", "hydraJobs", "formatter", "overlays", "nixosModules", "lib",
)


# Everything `nix run` decides on, in one evaluation: the first candidate attribute that
# exists; for an app its type, its program and the program's string context (what must be
# built for it to exist); for a package its name, pname, meta.mainProgram, the name that
# builtins.parseDrvName leaves without the version, and the output `nix run` uses.
_FACTS = """
(path: v: let str = x: if builtins.isString x then x else null; in
    if builtins.elem (builtins.head path) [ "apps" "defaultApp" ] then {
      kind = "app";
      type = str (v.type or null);
      program = if builtins.isString (v.program or null) then builtins.unsafeDiscardStringContext v.program else null;
      context = if builtins.isString (v.program or null) then builtins.getContext v.program else { };
    } else {
      kind = "package";
      type = str (v.type or null);
      name = str (v.name or null);
      pname = str (v.pname or null);
      mainProgram = if builtins.isAttrs (v.meta or null) then str (v.meta.mainProgram or null) else null;
      parsedName = if builtins.isString (v.name or null) then (builtins.parseDrvName v.name).name else null;
      outputName = str (v.outputName or null);
    })
"""
_RUN_FACTS = """
let
  flake = builtins.getFlake @REF@;
  lookup = path: builtins.foldl'
    (v: k: if builtins.isAttrs v && builtins.hasAttr k v then builtins.getAttr k v else null) flake path;
  found = builtins.filter (path: lookup path != null) @CANDIDATES@;
  facts = @FACTS@;
in
if found == [ ] then { found = null; }
else { found = builtins.head found; } // facts (builtins.head found) (lookup (builtins.head found))
""".replace("@FACTS@", _FACTS)


class Programs:
    """The programs of a :class:`~pytest_flake.nix.Flake`: what ``nix run`` would run, built."""

    nix: Nix
    _evals: dict[tuple[str, str], Any]
    _programs: dict[tuple[str, str], Path]
    _run: Run | None
    _gcroot_dir: Path | None
    _build_timeout: float | None

    if TYPE_CHECKING:  # provided by Flake
        @property
        def ref(self) -> str: ...
        @property
        def system(self) -> str: ...
        def build(self, attr: str = "default") -> Build: ...
        def apps(self) -> list[str]: ...
        def outputs(self) -> list[str]: ...
        def _build_error(self, what: str, returncode: int, stderr: str, more: str) -> NixError: ...
        def _local_positions(self, text: str) -> str: ...

    def _run_candidates(self, attr: str) -> list[str]:
        """The attribute paths ``nix run REF#attr`` tries, in its order."""
        name = (attr.split("#", 1)[1] if "#" in attr else attr) or "default"
        if name.split(".", 1)[0] in OUTPUT_GROUPS and "." in name:
            return [name]
        system = self.system
        if name == "default":
            return [f"apps.{system}.default", f"defaultApp.{system}",
                    f"packages.{system}.default", f"defaultPackage.{system}"]
        return [f"apps.{system}.{name}", f"packages.{system}.{name}", f"legacyPackages.{system}.{name}"]

    def _run_facts(self, attr: str) -> dict[str, Any]:
        """What ``nix run`` decides on for ``attr``, from one ``nix eval`` per session."""
        candidates = self._run_candidates(attr)
        key = (self.ref, "run|" + ",".join(candidates))
        if key not in self._evals:
            paths = " ".join("[ " + " ".join(nix_string(part) for part in c.split(".")) + " ]" for c in candidates)
            expr = _RUN_FACTS.replace("@REF@", nix_string(self.ref)).replace("@CANDIDATES@", f"[ {paths} ]")
            # --impure: getFlake of an unlocked ref (a local directory) is refused in pure mode.
            proc = self.nix.run(["eval", "--json", "--impure", "--expr", expr], check=False)
            if proc.returncode != 0 and "requires lock file changes" in proc.stderr:
                # Nix 2.8's getFlake locks no inputs that flake.lock lacks (later ones lock them in memory):
                # ask each candidate through an installable, which locks them without writing flake.lock
                proc = self._run_facts_one_by_one(candidates)
            if proc.returncode != 0:
                stderr = self._local_positions(proc.stderr)
                failure = nixerrors.eval_failure(stderr)
                where = f" at {failure.position}" if failure.position else ""
                reason = f": {failure.message}{where}" if failure.message else f" (nix exit code {proc.returncode})"
                raise NixError(f"cannot evaluate what 'nix run {self.ref}#{attr}' would run{reason}",
                               details=tail(stderr))
            facts = json.loads(proc.stdout)
            if facts.get("found") is None:
                raise MissingOutputError(
                    f"flake {self.ref} has no app or package '{attr}' (looked for {', '.join(candidates)})",
                    hint=f"apps under apps.{self.system}: {format_choices(self.apps())}; "
                         f"packages under packages.{self.system}: {format_choices(self.outputs())}")
            facts["found"] = ".".join(facts["found"])
            self._evals[key] = facts
        return dict(self._evals[key])

    def _run_facts_one_by_one(self, candidates: list[str]) -> subprocess.CompletedProcess[str]:
        """The facts of :data:`_RUN_FACTS`, one ``nix eval REF#candidate`` at a time, until one exists."""
        proc: subprocess.CompletedProcess[str] | None = None
        for candidate in candidates:
            path = "[ " + " ".join(nix_string(part) for part in candidate.split(".")) + " ]"
            proc = self.nix.run(["eval", "--json", f"{self.ref}#{candidate}", "--apply",
                                 f"v: {{ found = {path}; }} // {_FACTS} {path} v"], check=False)
            if proc.returncode == 0 or "does not provide attribute" not in proc.stderr:
                return proc
        assert proc is not None
        return subprocess.CompletedProcess(proc.args, 0, json.dumps({"found": None}), "")

    def program(self, attr: str = "default") -> Path:
        """The program ``nix run REF#attr`` runs, built; the path to execute.

        ``apps.<system>.<attr>.program`` first (what its string refers to is built); else
        the package's ``bin/`` + ``meta.mainProgram``, else ``pname``, else the name without
        its version (``builtins.parseDrvName``), the first that exists; a lone file in
        ``bin/`` only when none of those names exists.
        """
        key = (self.ref, attr)
        cached = self._programs.get(key)
        if cached is not None:
            return cached
        facts = self._run_facts(attr)
        if facts["kind"] == "app":
            program = self._app_program(facts)
        else:
            program = self._package_program(facts)
        log.info("nix run %s#%s runs %s", self.ref, facts["found"], program)
        self._programs[key] = program
        return program

    def _app_program(self, facts: dict[str, Any]) -> Path:
        found = facts["found"]
        hint = 'an app is { type = "app"; program = "${package}/bin/NAME"; }'
        if facts.get("type") != "app":
            raise UsageError(f"{found} has type {facts.get('type')!r}, not 'app'", hint=hint)
        program = facts.get("program")
        if not program:
            raise UsageError(f"{found} has no program (a string)", hint=hint)
        # getContext: {"/nix/store/...drv": {"outputs": ["out"]}} for each derivation output the
        # string refers to; those must be built. Plain store paths ({"path": true}) exist already.
        drvs = {path: sorted(what["outputs"]) for path, what in sorted((facts.get("context") or {}).items())
                if what.get("outputs")}
        run = self._run
        if drvs and run is None:
            self._build_context(found, drvs, self._gcroot_dir)
        elif drvs and run is not None:  # under pytest-xdist, once per run (rooted until the run ends)
            link = link_name(self.ref, found) + "+program"
            _, shared = run.once(link, lambda: self._build_context(found, drvs, run.gcroots),
                                 valid=lambda data: data.get("drvs") == sorted(drvs) and Path(program).is_file())
            if shared:
                log.info("the program of %s: shared, built by a sibling worker of run %s", found, run.id)
        path = Path(program)
        if not path.is_file():
            if path.parent.is_dir():
                where = f"{path.parent} has {format_choices(sorted(p.name for p in path.parent.iterdir()))}"
            else:
                where = f"{path.parent} does not exist"
            raise UsageError(f"{found}: program {program} does not exist ({where})",
                             hint="point the app's program at a file the package installs")
        if not os.access(path, os.X_OK):
            raise UsageError(f"{found}: program {program} is not executable",
                             hint="install it with mode 0755 (chmod +x in the build)")
        return path

    def _build_context(self, found: str, drvs: dict[str, list[str]], gcroot_dir: Path | None) -> dict[str, Any]:
        """Build the derivation outputs an app's program string names, rooted in ``gcroot_dir`` (None: no link)."""
        args = ["build", "--json", "--print-build-logs"]
        if gcroot_dir is not None:  # rooted like the session's builds: out-links LINK, LINK-1, LINK-tools
            gcroot_dir.mkdir(parents=True, exist_ok=True)
            args += ["--out-link", str(gcroot_dir / (link_name(self.ref, found) + "+program"))]
        else:
            args.append("--no-link")
        # DRV^out where this Nix reads it; a bare DRV is the .drv file itself since Nix 2.15
        installables = [self.nix.drv_outputs(drv, outputs) for drv, outputs in drvs.items()]
        proc = self.nix.stream([*args, *installables], timeout=self._build_timeout,
                               on_line=lambda line: build_log.info("%s", line))
        if proc.returncode != 0:
            raise self._build_error(f"nix build of the program of {found}", proc.returncode, proc.stderr,
                                    "run 'nix run -L' on it to see the whole log")
        return {"drvs": sorted(drvs)}

    def _build_output(self, found: str, output: str) -> Path:
        """Build one output of the package ``found`` (``REF#ATTR^OUTPUT``), rooted like the session's builds."""
        run = self._run
        gcroot_dir = run.gcroots if run is not None else self._gcroot_dir
        args = ["build", "--json", "--print-build-logs"]
        if gcroot_dir is not None:
            gcroot_dir.mkdir(parents=True, exist_ok=True)
            args += ["--out-link", str(gcroot_dir / (link_name(self.ref, found) + f"+{output}"))]
        else:
            args.append("--no-link")
        proc = self.nix.stream([*args, f"{self.ref}#{found}^{output}"], timeout=self._build_timeout,
                               on_line=lambda line: build_log.info("%s", line))
        if proc.returncode != 0:
            raise self._build_error(f"nix build {self.ref}#{found}^{output}", proc.returncode, proc.stderr,
                                    "run 'nix run -L' on it to see the whole log")
        try:
            return Path(json.loads(proc.stdout)[0]["outputs"][output])
        except (ValueError, LookupError, TypeError) as exc:
            raise NixError(f"cannot read the output of 'nix build --json' for {found}^{output}: "
                           f"{proc.stdout[:200]!r}") from exc

    def _package_program(self, facts: dict[str, Any]) -> Path:
        found = facts["found"]
        if facts.get("type") != "derivation":
            raise UsageError(f"{found} is neither a package nor an app (type {facts.get('type')!r})",
                             hint="run a package (a derivation) or an app ({ type = \"app\"; program = ...; })")
        build = self.build(found)
        wanted = facts.get("outputName") or "out"
        out = build.outputs.get(wanted)
        if out is None:  # nix build made meta.outputsToInstall (Nix 2.9+); nix run runs the package's own output
            out = self._build_output(found, wanted)
        bindir = out / "bin"
        files = sorted(p.name for p in bindir.iterdir() if not p.is_dir()) if bindir.is_dir() else []
        listing = f"{bindir} has {format_choices(files)}" if bindir.is_dir() else f"{out} has no bin/"
        fix = (f"set meta.mainProgram to the file to run, or add an app: apps.{self.system}.NAME = "
               '{ type = "app"; program = "${package}/bin/FILE"; }')
        main: str | None = facts.get("mainProgram")
        if main:
            if (bindir / main).is_file():
                return bindir / main
            raise UsageError(f"{found}: meta.mainProgram is '{main}' but {bindir / main} does not exist ({listing})",
                             hint="set meta.mainProgram to a file the package installs in bin/")
        names: list[str] = list(dict.fromkeys(n for n in (facts.get("pname"), facts.get("parsedName")) if n))
        for name in names:
            if (bindir / name).is_file():
                return bindir / name
        if len(files) == 1:
            return bindir / files[0]
        tried = "".join(f", no bin/{n}" for n in names)
        raise UsageError(f"{found} has no program to run: no meta.mainProgram{tried}, and not a lone file in bin/ "
                         f"({listing})", hint=fix)
