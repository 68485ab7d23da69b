"""The ``nix`` command and flake references: one place for nix's argv, its logging and its errors.

:class:`Nix` runs ``nix`` (with the flake features switched on) and streams build logs;
:func:`normalize_ref` turns what a user typed (``.``, ``path:../x``, ``github:o/r``) into
a reference Nix accepts and the local directory behind it; :func:`git_toplevel` and
:func:`git_untracked` say what Nix sees of a git checkout. :class:`Build` is what ``nix build``
made (its out-link named by :func:`link_name`). What a flake *is* (its outputs, builds,
programs) is :mod:`pytest_flake.nix`, which exports :class:`Build` too. Never imports pytest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._host import run_command
from .errors import FlakeError, FlakeTimeout, MissingToolError, NixError, tail
from .nixerrors import NixVersion, parse_version

log = logging.getLogger(__name__)

NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
INSTALL_HINT = (
    "install Nix: 'apt-get install nix-bin' on Debian/Ubuntu (enable flakes: "
    "experimental-features = nix-command flakes), 'nix.settings.experimental-features' on NixOS, "
    "or see https://nixos.org/download; then check with 'pytest --flake-doctor'"
)
_REMOTE_SCHEMES = ("github:", "gitlab:", "sourcehut:", "git+http", "git+ssh", "http:", "https:", "tarball+",
                   "file+", "flake:", "indirect:", "hg+")


@dataclass(frozen=True)
class Build:
    """A built flake output: its attribute, its store paths and its derivation."""

    attr: str
    out: Path
    outputs: dict[str, Path]
    drv: Path
    seconds: float = field(default=0.0, compare=False)
    # built by a sibling worker of the same pytest-xdist run (this process only read its result)
    shared: bool = field(default=False, compare=False)

    def __fspath__(self) -> str:
        return str(self.out)

    def to_json(self) -> dict[str, Any]:
        """The build as JSON (a run's shared build cache)."""
        return {"attr": self.attr, "out": str(self.out), "outputs": {k: str(v) for k, v in self.outputs.items()},
                "drv": str(self.drv), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, shared: bool = False) -> Build:
        return cls(attr=str(data["attr"]), out=Path(data["out"]),
                   outputs={str(k): Path(v) for k, v in data["outputs"].items()}, drv=Path(data["drv"]),
                   seconds=float(data.get("seconds", 0.0)), shared=shared)


def link_name(ref: str, attr: str) -> str:
    """A file name for the out-link of one build: the attribute, and a hash of the ref it came from."""
    digest = hashlib.sha256(ref.encode()).hexdigest()[:10]
    return f"{digest}-{re.sub(r'[^A-Za-z0-9._+-]', '_', attr)}"



class Nix:
    """Runs the ``nix`` command: one place for its argv, its logging and its errors."""

    def __init__(self, executable: str | None = None, timeout: float = 3600.0) -> None:
        found = executable or shutil.which("nix")
        if not found:
            raise MissingToolError("nix is not on PATH", hint=INSTALL_HINT)
        self.executable = found
        self.timeout = timeout
        self.calls = 0  # how many nix processes ran: the build cache is measured by it
        self._version: NixVersion | None = None
        self._caret: bool | None = None  # whether this Nix reads DRV^OUTPUTS (drv_outputs)

    def run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.executable, *NIX_FEATURES, *_no_lock_writes(args)]
        log.debug("$ %s", " ".join(argv))
        self.calls += 1
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise NixError(f"'nix {' '.join(args)}' did not finish in {self.timeout:g}s") from exc
        if check and proc.returncode != 0:
            raise NixError(f"'nix {' '.join(args)}' failed with exit code {proc.returncode}",
                           details=tail(proc.stderr))
        return proc

    def stream(self, args: Sequence[str], *, timeout: float | None = None,
               on_line: Callable[[str], None] | None = None,
               on_tick: Callable[[float], None] | None = None) -> subprocess.CompletedProcess[str]:
        """Run nix, handing each stderr line to ``on_line`` as it comes (build logs, progress).

        ``on_tick(elapsed)`` is called about once a second while it runs. With ``timeout``
        (seconds; None waits as long as it takes) the whole process group is killed and
        :class:`FlakeTimeout` raised. Returns stdout and the whole stderr, like :meth:`run`.
        """
        argv = [self.executable, *NIX_FEATURES, *_no_lock_writes(args)]
        log.debug("$ %s", " ".join(argv))
        self.calls += 1
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", bufsize=1, start_new_session=True)
        out: list[str] = []
        err: list[str] = []

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        def read_stdout() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.read())

        readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
        for reader in readers:
            reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if timeout is not None and elapsed > timeout:
                        _kill_group(proc)
                        raise FlakeTimeout(f"'nix {' '.join(args)}' did not finish in {timeout:g}s",
                                           hint="raise --flake-build-timeout, or leave it unset to wait",
                                           details=tail("".join(err), 30)) from None
                    if on_tick is not None:
                        on_tick(elapsed)
        except BaseException:
            _kill_group(proc)
            raise
        for reader in readers:
            reader.join()
        return subprocess.CompletedProcess(argv, proc.returncode, "".join(out), "".join(err))

    def version(self) -> str:
        """``2.8.0``: the version number ``nix --version`` ends with (Determinate Nix: the Nix it derives from)."""
        return self.version_info().nix_version

    def version_info(self) -> NixVersion:
        """Which Nix this is: Nix, Lix or Determinate Nix, and its version (``nix --version``, read once)."""
        if self._version is None:
            self._version = parse_version(self.run(["--version"]).stdout)
        return self._version

    def config(self) -> dict[str, str] | None:
        """Nix's settings in force: ``nix config show`` (2.20 and later), else ``nix show-config``; None when
        neither answers."""
        for args in (["config", "show"], ["show-config"]):
            proc = self.run(args, check=False)
            if proc.returncode == 0:
                return dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
        return None

    def drv_outputs(self, drv: str, outputs: Sequence[str]) -> str:
        """The installable that builds ``outputs`` of the derivation ``drv``.

        ``DRV^out`` where Nix knows that syntax (2.13 and later; since 2.15 a bare ``DRV``
        means the .drv file itself, and builds nothing), else the bare ``DRV``, which Nix
        before 2.13 builds with all its outputs. Found by asking this Nix once, not by its
        version number (Lix and Determinate Nix number their own).
        """
        if self._caret is None:
            self._caret = _knows_caret(self)
        return f"{drv}^{','.join(outputs) or '*'}" if self._caret else drv

    def current_system(self) -> str:
        """The machine's Nix system, e.g. ``x86_64-linux``."""
        return self.run(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"]).stdout.strip()

    def eval_json(self, installable: str, apply: str | None = None) -> Any:
        args = ["eval", "--json", installable]
        if apply:
            args += ["--apply", apply]
        return json.loads(self.run(args).stdout)


# Commands that read a flake, and so would write its flake.lock when inputs are unlocked: (words, flag after them)
_READS_FLAKES = (("flake", "metadata"), ("flake", "show"), ("flake", "check"), ("flake", "info"), ("build",),
                 ("eval",), ("run",), ("path-info",), ("derivation", "show"), ("show-derivation",))


def _no_lock_writes(args: Sequence[str]) -> list[str]:
    """``args`` with ``--no-write-lock-file`` after the subcommand when it reads a flake: the plugin never
    writes a ``flake.lock`` into the user's checkout (a flake with inputs and no lock file would get one)."""
    args = list(args)
    if "--no-write-lock-file" in args:
        return args
    for words in _READS_FLAKES:
        if tuple(args[:len(words)]) == words:
            return [*words, "--no-write-lock-file", *args[len(words):]]
    return args


# A derivation path that does not exist: asking about it builds nothing, only the answer's wording counts.
_PROBE_DRV = "/nix/store/" + "0" * 32 + "-pytest-flake-probe.drv"


def _knows_caret(nix: Nix) -> bool:
    """Whether ``nix`` reads ``DRV^out`` as an installable: Nix 2.8 takes it for a flake reference and says
    "'...drv^out' is not a valid URL"; 2.26 and 2.34 say "path '...drv' is not valid" (not in the store)."""
    proc = nix.run(["path-info", f"{_PROBE_DRV}^out"], check=False)
    text = proc.stderr
    knows = proc.returncode == 0 or not ("not a valid URL" in text or "invalid flake reference" in text)
    log.debug("nix reads DRV^out installables: %s (%s)", knows, text.strip().splitlines()[:1])
    return knows


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Interrupt nix (it stops its builders on SIGINT), then kill what is left of its group."""
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def nix_string(value: str) -> str:
    """``value`` as a Nix string literal (quotes, backslashes and ``${`` escaped)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def normalize_ref(ref: str, invocation_dir: Path) -> tuple[str, Path | None]:
    """Turn a user's flake ref into one Nix accepts, and the local directory if any.

    Relative paths are resolved against the invocation directory. A bare directory is
    left for Nix to interpret (a git checkout becomes ``git+file:``, which hides untracked
    files); ``path:DIR`` sees every file. Remote refs pass through unchanged.
    """
    if ref.startswith(_REMOTE_SCHEMES):
        return ref, None
    for scheme in ("path:", "git+file:", "git+file://"):
        if ref.startswith(scheme):
            rest = ref[len(scheme):]
            query = ""
            if "?" in rest:
                rest, query = rest.split("?", 1)
                query = "?" + query
            directory = _flake_dir((invocation_dir / rest).resolve() if not rest.startswith("/") else Path(rest))
            return f"{scheme.rstrip('/') if scheme == 'git+file://' else scheme}{directory}{query}", directory
    directory = _flake_dir((invocation_dir / ref).resolve())
    return str(directory), directory


def _flake_dir(path: Path) -> Path:
    """A ``flake.nix`` file names the flake in its directory."""
    return path.parent if path.name == "flake.nix" and path.is_file() else path


def git_toplevel(directory: Path) -> Path | None:
    """The top of the git checkout ``directory`` is in (``git rev-parse --show-toplevel``), None outside one
    or without git."""
    git = shutil.which("git")
    if not git:
        return None
    try:
        top = run_command([git, "-C", str(directory), "rev-parse", "--show-toplevel"], what="git", timeout=30)
    except FlakeError:
        return None
    return Path(top.stdout.strip()) if top.returncode == 0 and top.stdout.strip() else None


def git_untracked(directory: Path) -> list[str]:
    """Untracked, not ignored files below ``directory`` when it is in a git checkout (Nix does not see them)."""
    git = shutil.which("git")
    if not git or git_toplevel(directory) is None:
        return []
    try:
        proc = run_command([git, "-C", str(directory), "ls-files", "--others", "--exclude-standard", "--", "."],
                           what="git", timeout=30)
    except FlakeError:
        return []
    return [line for line in proc.stdout.splitlines() if line]
