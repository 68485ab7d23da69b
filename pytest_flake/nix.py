"""A flake under test: its outputs, ``nix build`` and ``nix eval``, what ``nix run`` runs, the build cache.

Tested on Nix 2.8 (Debian 12), 2.26 (Debian 13) and 2.34 (Debian unstable): ``scripts/nix-matrix``.
Builds are read from ``nix build --json --no-link`` (2.8 has no ``--print-out-paths``); what
differs between versions is decided by asking Nix (:meth:`Nix.drv_outputs`) or by reading every
wording (:mod:`pytest_flake.nixerrors`), never by a version number. Every call passes
``--extra-experimental-features 'nix-command flakes'`` so no nix.conf change is needed for that,
and ``--no-write-lock-file`` where a flake is read, so no ``flake.lock`` is written into the
user's checkout. The user's ``NIX_CONFIG`` and nix.conf are otherwise left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import nixerrors
from .errors import (
    BuildCancelled,
    BuildError,
    EvalError,
    FlakeWarning,
    MissingOutputError,
    NixError,
    UsageError,
    format_choices,
    tail,
)
from .nixcmd import (
    INSTALL_HINT,
    NIX_FEATURES,
    Build,
    Nix,
    git_toplevel,
    git_untracked,
    link_name,
    nix_string,
    normalize_ref,
)
from .nixrun import OUTPUT_GROUPS, Programs
from .process import Process
from .xdist import Run

log = logging.getLogger(__name__)
build_log = logging.getLogger("pytest_flake.nix")  # every line of every build log, as it comes

_STORE_SOURCE = re.compile(r"/nix/store/[0-9a-z]{32}-source(/[^\s:,']*)?")


def _without_download_noise(log_text: str) -> str:
    """A build log without the retries of an unreachable binary cache."""
    return "\n".join(line for line in log_text.splitlines()
                     if not (line.startswith("warning:") and "unable to download" in line))


class Prefetch:
    """A build running in a background thread (:meth:`Flake.prefetch`)."""

    def __init__(self, flake: Flake, attr: str) -> None:
        self.attr = attr
        self._flake = flake
        self._bindings = list(flake._stack)  # a snapshot: the starter's stack changes while this runs
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._build: Build | None = None
        self._error: BaseException | None = None
        # a daemon thread: an interrupted session does not wait for it at exit (cancel() ends nix)
        self._worker = threading.Thread(target=self._work, name=f"pytest-flake build {attr}", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        local = self._flake._thread
        local.bindings, local.cancelled = self._bindings, self._cancelled
        try:
            self._build = self._flake.build(self.attr)
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc
        finally:
            del local.bindings, local.cancelled
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> Build:
        """Wait for the build; its :class:`Build`, or its error raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._build is not None
        return self._build

    def cancel(self, wait: float = 5.0) -> None:
        """Stop the build (nix is killed at its next tick, within about a second); waits up to ``wait`` s."""
        self._cancelled.set()
        self._done.wait(wait)


@dataclass(frozen=True)
class Binding:
    """What a :class:`Flake` is used for right now (see :meth:`Flake.bound`).

    ``ref_for()``: the flake reference in force (None: the default; read when the flake is
    used, so a bad marker fails only a test that uses it); ``on_run(process)``: takes
    ownership of a process ``run()`` started (stops it when its owner ends); ``on_fact(name,
    value)``: records a fact such as the store path of a build (the JUnit properties of a
    test); None leaves facts to the binding around this one.
    """

    ref_for: Callable[[], str | None] | None = None
    on_run: Callable[[Process], None] | None = None
    on_fact: Callable[[str, str], None] | None = None


@dataclass(frozen=True)
class FlakeOptions:
    """How a session uses a :class:`Flake` (the plugin fills it in; a script needs none of it)."""

    ref_for: Callable[[], str | None] | None = None  # the ref in force when no binding names one (None: ``ref``)
    on_run: Callable[[Process], None] | None = None  # takes what ``run()`` started when no binding does
    log_dir: Path | None = None  # the output of each local run (None: a temporary file)
    timeout: float = 120.0  # ``run()`` waits this long for a port unless told otherwise
    # builds are GC roots while gcroot_dir exists (out-links in it; remove it to drop them)
    gcroot_dir: Path | None = None
    build_timeout: float | None = None  # a nix build is stopped after this long (None: no limit)
    # on_build(installable, seconds, None) while a build runs (about once a second), then with the Build
    on_build: Callable[[str, float, Build | None], None] | None = None
    bindings: list[Binding] | None = None  # shared with whoever binds (see Flake.bound)
    run: Run | None = None  # the pytest-xdist run of this session: its workers build each output once for all


class Flake(Programs):
    """A flake under test: lists its outputs, builds them once per session, runs them.

    ``ref`` may change per test (the ``flake(ref)`` marker): whoever runs the code that uses
    the flake says so with :meth:`bound` (the pytest plugin does, from the marker of the test
    or fixture being run), or passes ``options.ref_for``, a callable returning the ref in force.
    Builds are cached per (ref, attribute). ``options`` (:class:`FlakeOptions`) says how a
    session uses it: where its runs log and its builds are rooted, its hooks and timeouts.
    """

    def __init__(self, ref: str, *, invocation_dir: Path | None = None, system: str | None = None,
                 nix: Nix | None = None, options: FlakeOptions | None = None) -> None:
        options = options or FlakeOptions()
        self._invocation_dir = invocation_dir or Path.cwd()
        self._default_ref = ref
        self._ref_for = options.ref_for
        self._system = system
        self.nix = nix or Nix()
        self._builds: dict[tuple[str, str], Build] = {}
        self._evals: dict[tuple[str, str], Any] = {}
        self._checked: set[str] = set()
        self._on_run = options.on_run
        self._log_dir = options.log_dir
        self._gcroot_dir = options.gcroot_dir
        self._build_timeout = options.build_timeout
        self._on_build = options.on_build
        self.timeout = options.timeout  # flake.run() waits this long for a port unless told otherwise
        self._programs: dict[tuple[str, str], Path] = {}
        # shared with whoever binds it (the plugin binds before the flake exists): see bound()
        self._bindings: list[Binding] = options.bindings if options.bindings is not None else []
        # a background build's thread sees the bindings of when it started (see prefetch())
        self._thread = threading.local()
        self._run = options.run

    @contextlib.contextmanager
    def bound(self, binding: Binding) -> Iterator[Binding]:
        """Within the block, ``binding`` says which ref is in force and who owns what is started.

        Bindings nest (a fixture set up while a test's binding is in force binds its own);
        the innermost one counts. Outside every binding: the default ref and ``on_run``.
        """
        self._bindings.append(binding)
        try:
            yield binding
        finally:
            self._bindings.remove(binding)

    @property
    def _stack(self) -> list[Binding]:
        """The bindings in force for this thread: a background build's own snapshot, else the shared stack."""
        frozen: list[Binding] | None = getattr(self._thread, "bindings", None)
        return self._bindings if frozen is None else frozen

    # -- references -------------------------------------------------------------------
    @property
    def ref(self) -> str:
        """The flake reference in force (normalized: relative paths made absolute)."""
        stack = self._stack
        binding = stack[-1] if stack else None
        raw = ((binding.ref_for() if binding and binding.ref_for else None)
               or (self._ref_for() if self._ref_for else None)
               or self._default_ref)
        ref, directory = normalize_ref(raw, self._invocation_dir)
        if ref not in self._checked:
            if directory is not None:
                self._check_directory(ref, directory)  # raises again on every use until it is fixed
            self._checked.add(ref)
        return ref

    def _check_directory(self, ref: str, directory: Path) -> None:
        if not directory.is_dir():
            raise UsageError(f"flake directory {directory} does not exist",
                             hint="pass --flake with a directory that has a flake.nix")
        if not (directory / "flake.nix").is_file():
            raise UsageError(f"{directory} has no flake.nix", hint="pass --flake with a directory that has a flake.nix")
        if not ref.startswith("path:"):
            untracked = git_untracked(directory)
            if untracked:
                shown = ", ".join(untracked[:5]) + (" ..." if len(untracked) > 5 else "")
                warnings.warn(FlakeWarning(
                    f"flake {ref} is a git checkout with {len(untracked)} untracked file(s) that Nix will not "
                    f"see ({shown}); 'git add' them or use --flake path:{directory}"), stacklevel=2)

    @property
    def system(self) -> str:
        """The Nix system whose packages are tested (``--flake-system``, else the machine's)."""
        if self._system is None:
            self._system = self.nix.current_system()
        return self._system

    def attr_path(self, attr: str = "default") -> str:
        """``docker``, ``.#docker`` or ``#docker`` -> ``packages.SYSTEM.docker``; full paths stay."""
        name = attr.split("#", 1)[1] if "#" in attr else attr
        name = name or "default"
        if name.split(".", 1)[0] in OUTPUT_GROUPS and "." in name:
            return name
        return f"packages.{self.system}.{name}"

    def installable(self, attr: str = "default") -> str:
        return f"{self.ref}#{self.attr_path(attr)}"

    # -- evaluation ---------------------------------------------------------------------
    def outputs(self) -> list[str]:
        """Names of the packages under ``packages.<system>``."""
        return self._names_under("packages")

    def apps(self) -> list[str]:
        """Names of the apps under ``apps.<system>`` (empty when the flake has none)."""
        return self._names_under("apps")

    def _names_under(self, group: str) -> list[str]:
        key = (self.ref, "outputs" if group == "packages" else f"names|{group}")
        if key not in self._evals:
            system = nix_string(self.system)
            proc = self.nix.run(["eval", "--json", f"{self.ref}#{group}", "--apply",
                                 f"g: if g ? {system} then builtins.attrNames g.{system} else null"],
                                check=False)
            if proc.returncode != 0:
                if "does not provide attribute" in proc.stderr:
                    self._evals[key] = []
                else:
                    raise NixError(f"cannot evaluate the {group} of flake {self.ref} (nix exit code {proc.returncode})",
                                   details=tail(proc.stderr))
            else:
                self._evals[key] = json.loads(proc.stdout) or []
        return list(self._evals[key])

    def eval(self, attr: str, apply: str | None = None) -> Any:
        """Evaluate an output attribute (``nix eval --json``), e.g. ``eval('default.meta')``."""
        key = (self.ref, f"{self.attr_path(attr)}|{apply}")
        if key not in self._evals:
            self._evals[key] = self.nix.eval_json(self.installable(attr), apply)
        return self._evals[key]

    def main_program(self, attr: str = "default") -> str | None:
        """``meta.mainProgram`` of a package, or None."""
        value = self.eval(attr, apply="p: (p.meta or {}).mainProgram or null")
        return value if isinstance(value, str) else None

    def _missing(self, attr: str) -> MissingOutputError:
        path = self.attr_path(attr)
        outputs = self.outputs() if path.startswith("packages.") else []
        return MissingOutputError(
            f"flake {self.ref} has no output '{path}'",
            hint=f"outputs under packages.{self.system}: {format_choices(outputs)}",
        )

    # -- building -----------------------------------------------------------------------
    def prefetch(self, attr: str = "default") -> Prefetch:
        """Start building ``attr`` in a background thread: the build runs while the caller waits elsewhere.

        The thread sees the flake reference and the owners in force now. ``.result()`` waits
        and returns the :class:`Build` (or raises the build's error); a later :meth:`build`
        of the same attribute returns it from the cache. ``.cancel()`` stops nix within about
        a second.
        """
        return Prefetch(self, attr)

    def build(self, attr: str = "default") -> Build:
        """Build an output once per session; later calls return the same :class:`Build`.

        Under pytest-xdist, once per run: the first worker builds (its out-link in the run's
        directory), its siblings wait for it and read the result without calling nix.
        """
        path = self.attr_path(attr)
        key = (self.ref, path)
        cached = self._builds.get(key)
        if cached is not None:
            return cached
        installable = f"{self.ref}#{path}"
        run = self._run
        if run is None:
            build = self._nix_build(attr, path, installable, self._gcroot_dir)
        else:
            def valid(data: dict[str, Any]) -> bool:  # a sibling's build whose store paths still exist
                outputs = data.get("outputs")
                return isinstance(outputs, dict) and bool(outputs) and all(Path(p).exists() for p in outputs.values())

            data, shared = run.once(link_name(self.ref, path),
                                    lambda: self._nix_build(attr, path, installable, run.gcroots).to_json(), valid)
            build = Build.from_json(data, shared=shared)
            if shared:
                log.info("nix build %s: shared, built by a sibling worker of run %s: %s", path, run.id, build.out)
        self._builds[key] = build
        if self._on_build is not None:
            self._on_build(installable, build.seconds, build)
        on_fact = next((b.on_fact for b in reversed(self._stack) if b.on_fact is not None), None)
        if on_fact is not None:
            on_fact(f"nix build {installable}", str(build.out))
            if build.shared and run is not None:
                on_fact(f"nix build {installable} shared", f"built by a sibling worker of run {run.id}")
        return build

    def _nix_build(self, attr: str, path: str, installable: str, gcroot_dir: Path | None) -> Build:
        """Run ``nix build`` of ``installable``, its out-link in ``gcroot_dir`` (None: no link)."""
        started = time.monotonic()
        log.info("nix build %s", installable)
        args = ["build", "--json"]
        if gcroot_dir is not None:
            gcroot_dir.mkdir(parents=True, exist_ok=True)
            args += ["--out-link", str(gcroot_dir / link_name(self.ref, path))]
        else:
            args.append("--no-link")
        args.append("--print-build-logs")
        on_build = self._on_build
        cancelled: threading.Event | None = getattr(self._thread, "cancelled", None)

        def on_tick(elapsed: float) -> None:  # about once a second while nix runs
            if cancelled is not None and cancelled.is_set():  # nix.stream kills nix's process group
                raise BuildCancelled(f"nix build {installable} was cancelled after {elapsed:.0f}s")
            if on_build is not None:
                on_build(installable, elapsed, None)

        proc = self.nix.stream([*args, installable], timeout=self._build_timeout,
                               on_line=lambda line: build_log.info("%s", line), on_tick=on_tick)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            if "does not provide attribute" in proc.stderr or "does not provide an attribute" in proc.stderr:
                raise self._missing(attr)
            raise self._build_error(f"nix build {installable}", proc.returncode, proc.stderr,
                                    "run the same 'nix build -L' to see all of it")
        build = self._parse_build(path, proc.stdout, seconds)
        log.info("built %s in %.1fs: %s", path, seconds, build.out)
        return build

    def _build_error(self, what: str, returncode: int, stderr: str, more: str) -> NixError:
        """The error of a failed ``nix build``: an :class:`EvalError` naming the message and its position in
        the user's files, or a :class:`BuildError` naming the failed builder and its exit code; either way
        the tail of nix's output (the build log's last lines) follows the message."""
        stderr = self._local_positions(_without_download_noise(stderr))
        failure = nixerrors.build_failure(stderr)
        if failure is None and not nixerrors.is_build_failure(stderr) and nixerrors.is_eval_failure(stderr):
            _, directory = normalize_ref(self.ref, self._invocation_dir)
            evaluation = nixerrors.eval_failure(stderr, prefer=str(directory) if directory else None)
            reason = evaluation.message or f"nix exit code {returncode}"
            where = f" at {evaluation.position}" if evaluation.position else ""
            return EvalError(f"cannot evaluate {what.split(' ')[-1]}: {reason}{where}",
                             hint="fix the flake at the position named; 'nix eval' of the same attribute shows it too",
                             details=tail(stderr, 30))
        if failure is not None:
            reason = f": {failure}"
        else:
            errors = [line.strip() for line in stderr.splitlines() if line.lstrip().startswith("error:")
                      and line.strip() != "error:"]
            reason = f": {errors[-1]}" if errors else f" with exit code {returncode}"
        return BuildError(f"{what} failed{reason}",
                          hint=f"the last lines of the build log follow; {more}", details=tail(stderr, 30))

    def _local_positions(self, text: str) -> str:
        """Positions in the store copy of the flake (``/nix/store/...-source/flake.nix:5:2``, or a locked
        ``«git+file:///DIR?rev=...»/flake.nix:5:2``) as the user's files."""
        text = nixerrors.local_positions(text)
        _, directory = normalize_ref(self.ref, self._invocation_dir)
        if directory is None:
            return text
        top = git_toplevel(directory)
        bases = [directory] if top is None else [directory, top]

        def local(match: re.Match[str]) -> str:
            rest = (match.group(1) or "").lstrip("/")
            for base in bases:
                if (base / rest).exists():
                    return str(base / rest) if rest else str(base)
            return match.group(0)

        return _STORE_SOURCE.sub(local, text)

    @staticmethod
    def _parse_build(attr: str, stdout: str, seconds: float) -> Build:
        try:
            entries = json.loads(stdout)
            entry = entries[0]
            outputs = {name: Path(p) for name, p in entry["outputs"].items()}
            drv = Path(entry["drvPath"])
        except (ValueError, LookupError, TypeError) as exc:
            raise NixError(f"cannot read the output of 'nix build --json' for {attr}: {stdout[:200]!r}") from exc
        out = outputs.get("out") or next(iter(outputs.values()))
        return Build(attr=attr, out=out, outputs=outputs, drv=drv, seconds=seconds)

    def run(self, attr: str = "default", args: Sequence[str] = (), env: dict[str, str] | None = None,
            port: int | None = None, timeout: float | None = None) -> Process:
        """Build and start what ``nix run REF#attr`` runs, and wait until ``port`` accepts connections.

        ``timeout`` defaults to the session's ``--flake-timeout``. Returns a started
        :class:`~pytest_flake.process.Process`; under pytest it is stopped (its whole
        process group) at the end of the test, or earlier with ``stop()`` or a ``with`` block.
        """
        program = self.program(attr)
        name = ((attr.split("#", 1)[1] if "#" in attr else attr) or "default").rsplit(".", 1)[-1]
        process = Process([str(program), *args], env=env, port=port,
                          timeout=self.timeout if timeout is None else timeout, name=name, log_dir=self._log_dir)
        process.start()
        stack = self._stack
        on_run = stack[-1].on_run if stack else self._on_run
        if on_run is not None:
            on_run(process)
        return process


__all__ = ["INSTALL_HINT", "NIX_FEATURES", "Binding", "Build", "Flake", "FlakeOptions", "FlakeWarning", "Nix",
           "Prefetch", "normalize_ref"]
