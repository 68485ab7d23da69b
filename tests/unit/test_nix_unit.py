"""Flake refs, attribute paths, ``nix build --json`` parsing and the build cache, with a fake Nix."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pytest_flake.errors import BuildCancelled, BuildError, MissingOutputError, MissingToolError, NixError, UsageError
from pytest_flake.nix import Binding, Build, Flake, FlakeOptions, Nix, normalize_ref

SYSTEM = "x86_64-linux"
OUT = "/nix/store/ccgslx07wb873cq4n54f4bqmikliw1m5-web-server-1.0"
DRV = "/nix/store/dqhyqg5rhlvidn2acl2s61sfhqxky5rd-web-server-1.0.drv"
# what Nix 2.8 prints for `nix build --json --no-link INSTALLABLE`
NIX_28_JSON = json.dumps([{"drvPath": DRV, "outputs": {"out": OUT}}])


class FakeNix(Nix):
    """A Nix whose ``run`` answers from a table and counts the processes it would start."""

    def __init__(self, answers: dict[str, tuple[int, str, str]] | None = None) -> None:
        super().__init__(executable="fake-nix")
        self._caret = True  # reads DRV^out, as Nix 2.13 and later do (test_nix_output.py asks real ones)
        self.answers = answers or {}
        self.argvs: list[list[str]] = []

    def run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        self.argvs.append(list(args))
        installable = next((a for a in args if "#" in a), "")
        attr = installable.split("#", 1)[1] if installable else ""
        if args[0] == "build":
            rc, out, err = self.answers.get(attr, (0, json.dumps([{"drvPath": f"/nix/store/x-{attr}.drv",
                                                                     "outputs": {"out": f"/nix/store/x-{attr}"}}]), ""))
        elif args[0] == "eval" and attr == "packages":
            rc, out, err = self.answers.get("eval:packages", (0, json.dumps(["default", "docker"]), ""))
        else:
            rc, out, err = 1, "", f"unexpected {args}"
        proc = subprocess.CompletedProcess(list(args), rc, out, err)
        if check and rc != 0:
            raise NixError(f"nix {args[0]} failed with exit code {rc}")
        return proc

    def stream(self, args: Sequence[str], *, timeout: float | None = None,
               on_line: Callable[[str], None] | None = None,
               on_tick: Callable[[float], None] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(args, check=False)
        for line in proc.stderr.splitlines():
            if on_line is not None:
                on_line(line)
        return proc


@pytest.fixture
def flake_dir(tmp_path: Path) -> Path:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    return d


def make_flake(flake_dir: Path, nix: FakeNix | None = None) -> Flake:
    return Flake(f"path:{flake_dir}", invocation_dir=flake_dir.parent, system=SYSTEM, nix=nix or FakeNix())


# --- normalize_ref -----------------------------------------------------------------------
def test_relative_directory_is_resolved_against_invocation_dir(tmp_path: Path) -> None:
    ref, directory = normalize_ref("examples/offline", tmp_path)
    assert directory == (tmp_path / "examples" / "offline").resolve()
    assert ref == str(directory)
    ref, directory = normalize_ref(".", tmp_path)
    assert ref == str(tmp_path.resolve())


def test_absolute_directory(tmp_path: Path) -> None:
    ref, directory = normalize_ref(str(tmp_path / "f"), Path("/"))
    assert ref == str((tmp_path / "f").resolve())
    assert directory == (tmp_path / "f").resolve()


def test_path_scheme_relative_and_absolute(tmp_path: Path) -> None:
    ref, directory = normalize_ref("path:./sub", tmp_path)
    assert ref == f"path:{(tmp_path / 'sub').resolve()}"
    assert directory == (tmp_path / "sub").resolve()
    assert normalize_ref("path:/srv/flake", tmp_path) == ("path:/srv/flake", Path("/srv/flake"))


def test_path_scheme_keeps_query(tmp_path: Path) -> None:
    ref, directory = normalize_ref("path:sub?narHash=abc", tmp_path)
    assert ref == f"path:{(tmp_path / 'sub').resolve()}?narHash=abc"
    assert directory == (tmp_path / "sub").resolve()


def test_git_file_scheme(tmp_path: Path) -> None:
    ref, directory = normalize_ref("git+file:repo", tmp_path)
    assert ref == f"git+file:{(tmp_path / 'repo').resolve()}"
    assert directory == (tmp_path / "repo").resolve()
    ref, directory = normalize_ref("git+file:///srv/repo?ref=main", tmp_path)
    assert ref == "git+file:/srv/repo?ref=main"
    assert directory == Path("/srv/repo")


@pytest.mark.parametrize("remote", ["github:NixOS/nixpkgs", "github:owner/repo/branch#x",
                                    "git+https://example.org/r.git", "https://example.org/f.tar.gz"])
def test_remote_refs_pass_through(tmp_path: Path, remote: str) -> None:
    assert normalize_ref(remote, tmp_path) == (remote, None)


# --- attr_path ---------------------------------------------------------------------------
@pytest.mark.parametrize("attr, path", [
    ("docker", f"packages.{SYSTEM}.docker"),
    (".#docker", f"packages.{SYSTEM}.docker"),
    ("#docker", f"packages.{SYSTEM}.docker"),
    ("default", f"packages.{SYSTEM}.default"),
    ("", f"packages.{SYSTEM}.default"),
    (".#", f"packages.{SYSTEM}.default"),
    (f"packages.{SYSTEM}.docker", f"packages.{SYSTEM}.docker"),
    (f".#packages.{SYSTEM}.docker", f"packages.{SYSTEM}.docker"),
    (f"checks.{SYSTEM}.x", f"checks.{SYSTEM}.x"),
    ("packages.aarch64-linux.default", "packages.aarch64-linux.default"),
])
def test_attr_path(flake_dir: Path, attr: str, path: str) -> None:
    assert make_flake(flake_dir).attr_path(attr) == path


def test_installable_joins_ref_and_path(flake_dir: Path) -> None:
    assert make_flake(flake_dir).installable(".#docker") == f"path:{flake_dir}#packages.{SYSTEM}.docker"


# --- Build parsing -----------------------------------------------------------------------
def test_parse_nix_28_build_json() -> None:
    build = Flake._parse_build(f"packages.{SYSTEM}.default", NIX_28_JSON, 1.5)
    assert build == Build(attr=f"packages.{SYSTEM}.default", out=Path(OUT), outputs={"out": Path(OUT)},
                          drv=Path(DRV))
    assert build.seconds == 1.5
    assert str(Path(build)) == OUT  # os.fspath works on a Build


def test_parse_multiple_outputs_prefers_out() -> None:
    text = json.dumps([{"drvPath": DRV, "outputs": {"dev": "/nix/store/d-dev", "out": "/nix/store/d"}}])
    build = Flake._parse_build("a", text, 0)
    assert build.out == Path("/nix/store/d")
    assert build.outputs["dev"] == Path("/nix/store/d-dev")
    only_bin = json.dumps([{"drvPath": DRV, "outputs": {"bin": "/nix/store/b-bin"}}])
    assert Flake._parse_build("a", only_bin, 0).out == Path("/nix/store/b-bin")


@pytest.mark.parametrize("stdout", ["", "not json", "[]", '[{"outputs": {}}]', '{"drvPath": 1}'])
def test_parse_garbage_is_a_nix_error(stdout: str) -> None:
    with pytest.raises(NixError, match="cannot read the output of 'nix build --json'"):
        Flake._parse_build("a", stdout, 0)


# --- build cache -------------------------------------------------------------------------
def test_second_build_of_same_attribute_runs_no_nix(flake_dir: Path) -> None:
    nix = FakeNix()
    flake = make_flake(flake_dir, nix)
    first = flake.build("docker")
    assert nix.calls == 1
    assert nix.argvs[0][:3] == ["build", "--json", "--no-link"]
    assert nix.argvs[0][-1] == f"path:{flake_dir}#packages.{SYSTEM}.docker"
    assert flake.build("docker") is first
    assert flake.build(".#docker") is first
    assert flake.build(f"packages.{SYSTEM}.docker") is first
    assert nix.calls == 1
    assert first.attr == f"packages.{SYSTEM}.docker"
    other = flake.build()
    assert nix.calls == 2
    assert other is not first


def test_cache_is_per_ref(tmp_path: Path) -> None:
    dirs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "flake.nix").write_text("{}")
        dirs.append(d)
    current = {"ref": f"path:{dirs[0]}"}
    nix = FakeNix()
    flake = Flake("unused", invocation_dir=tmp_path, system=SYSTEM, nix=nix,
                  options=FlakeOptions(ref_for=lambda: current["ref"]))
    flake.build()
    current["ref"] = f"path:{dirs[1]}"
    flake.build()
    assert nix.calls == 2
    assert nix.argvs[1][-1].startswith(f"path:{dirs[1]}#")



# --- builds in the background (Flake.prefetch) -------------------------------------------------------------
class SlowNix(FakeNix):
    """A FakeNix whose builds tick (like nix.stream, about once a tick) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()
        self.ticks = 0
        self.killed = False

    def stream(self, args: Sequence[str], *, timeout: float | None = None,
               on_line: Callable[[str], None] | None = None,
               on_tick: Callable[[float], None] | None = None) -> subprocess.CompletedProcess[str]:
        self.started.set()
        while not self.release.wait(0.01):
            self.ticks += 1
            if on_tick is not None:
                try:
                    on_tick(self.ticks * 0.01)
                except BaseException:
                    self.killed = True  # the real stream kills nix's process group here
                    raise
        return super().stream(args, timeout=timeout, on_line=on_line, on_tick=on_tick)


def test_prefetch_builds_while_the_caller_goes_on_with_the_ref_in_force_when_it_started(tmp_path: Path) -> None:
    dirs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "flake.nix").write_text("{}")
        dirs.append(tmp_path / name)
    nix = SlowNix()
    flake = Flake(f"path:{dirs[0]}", invocation_dir=tmp_path, system=SYSTEM, nix=nix)
    with flake.bound(Binding(ref_for=lambda: f"path:{dirs[1]}")):
        building = flake.prefetch("portable")
        assert nix.started.wait(5)
    # the caller's own binding is gone (and another comes) while the build still runs
    with flake.bound(Binding(ref_for=lambda: f"path:{dirs[0]}")):
        assert not building.done()
        nix.release.set()
        build = building.result()
    assert nix.argvs[0][-1] == f"path:{dirs[1]}#packages.{SYSTEM}.portable"
    assert build.out == Path(f"/nix/store/x-packages.{SYSTEM}.portable")
    with flake.bound(Binding(ref_for=lambda: f"path:{dirs[1]}")):
        assert flake.build("portable") is build  # from the cache: no second nix
    assert nix.calls == 1


def test_prefetch_hands_its_error_to_whoever_waits(flake_dir: Path) -> None:
    nix = FakeNix({f"packages.{SYSTEM}.portable": (1, "", "error: builder for '/nix/store/x.drv' failed")})
    building = make_flake(flake_dir, nix).prefetch("portable")
    with pytest.raises(BuildError, match="failed"):
        building.result()


def test_cancelled_prefetch_stops_nix_at_its_next_tick(flake_dir: Path) -> None:
    nix = SlowNix()
    building = make_flake(flake_dir, nix).prefetch("portable")
    assert nix.started.wait(5)
    started = time.monotonic()
    building.cancel()
    assert building.done() and nix.killed
    with pytest.raises(BuildCancelled, match=r"nix build .*#packages\.x86_64-linux\.portable was cancelled"):
        building.result()
    print(f"cancelled in {time.monotonic() - started:.3f}s")

def test_missing_output_lists_outputs(flake_dir: Path) -> None:
    stderr = (f"error: flake 'path:{flake_dir}' does not provide attribute 'packages.{SYSTEM}.nope', "
              f"'legacyPackages.{SYSTEM}.nope' or 'nope'\n")
    nix = FakeNix({f"packages.{SYSTEM}.nope": (1, "", stderr),
                   "eval:packages": (0, json.dumps(["default", "docker", "web-service"]), "")})
    with pytest.raises(MissingOutputError) as err:
        make_flake(flake_dir, nix).build("nope")
    msg = str(err.value)
    assert f"has no output 'packages.{SYSTEM}.nope'" in msg
    assert f"outputs under packages.{SYSTEM}: default, docker, web-service" in msg
    assert isinstance(err.value, UsageError)


def test_outputs_of_flake_without_packages(flake_dir: Path) -> None:
    nix = FakeNix({"eval:packages": (1, "", "error: flake 'x' does not provide attribute 'packages'")})
    flake = make_flake(flake_dir, nix)
    assert flake.outputs() == []
    flake.outputs()
    assert nix.calls == 1  # evaluated once


def test_build_error_has_headline_and_log_tail(flake_dir: Path) -> None:
    lines = [f"broken> log line {i}" for i in range(1, 61)]
    lines.insert(10, "warning: unable to download 'https://cache.example/x.narinfo': Couldn't resolve host")
    lines.append("error: builder for '/nix/store/lq43-broken.drv' failed with exit code 3")
    nix = FakeNix({f"packages.{SYSTEM}.broken": (1, "", "\n".join(lines) + "\n")})
    with pytest.raises(BuildError) as err:
        make_flake(flake_dir, nix).build("broken")
    exc = err.value
    assert str(exc).startswith(f"nix build path:{flake_dir}#packages.{SYSTEM}.broken failed: "
                               "the builder of /nix/store/lq43-broken.drv failed with exit code 3")
    notes = "\n".join(getattr(exc, "__notes__", []))
    assert "broken> log line 60" in notes
    assert "broken> log line 1\n" not in notes  # only the tail
    assert "unable to download" not in notes


def test_build_error_without_error_line_names_exit_code(flake_dir: Path) -> None:
    nix = FakeNix({f"packages.{SYSTEM}.x": (101, "", "killed\n")})
    with pytest.raises(BuildError, match="failed with exit code 101"):
        make_flake(flake_dir, nix).build("x")


def test_failed_build_is_not_cached(flake_dir: Path) -> None:
    nix = FakeNix({f"packages.{SYSTEM}.x": (1, "", "error: boom\n")})
    flake = make_flake(flake_dir, nix)
    for _ in range(2):
        with pytest.raises(BuildError):
            flake.build("x")
    assert nix.calls == 2


def test_missing_flake_directory(tmp_path: Path) -> None:
    flake = Flake("path:./nope", invocation_dir=tmp_path, system=SYSTEM, nix=FakeNix())
    with pytest.raises(UsageError, match=f"flake directory {tmp_path.resolve() / 'nope'} does not exist"):
        flake.build()


def test_directory_without_flake_nix(tmp_path: Path) -> None:
    flake = Flake(str(tmp_path), invocation_dir=tmp_path, system=SYSTEM, nix=FakeNix())
    with pytest.raises(UsageError, match="has no flake.nix"):
        _ = flake.ref


def test_no_nix_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError) as err:
        Nix()
    msg = str(err.value)
    assert "nix is not on PATH" in msg
    assert "apt-get install nix-bin" in msg and "nixos.org/download" in msg


def test_nix_run_passes_features_and_reports_failure(tmp_path: Path) -> None:
    script = tmp_path / "nix"
    script.write_text("#!/bin/sh\necho \"$@\"\necho 'error: nope' >&2\nexit 7\n")
    script.chmod(0o755)
    nix = Nix(str(script))
    proc = nix.run(["eval", "x"], check=False)
    assert proc.stdout.strip() == "--extra-experimental-features nix-command flakes eval --no-write-lock-file x"
    assert nix.calls == 1
    with pytest.raises(NixError, match="'nix eval x' failed with exit code 7") as err:
        nix.run(["eval", "x"])
    assert "error: nope" in "\n".join(getattr(err.value, "__notes__", []))


# --- what flake.run() runs (nix run's rules), with a faked nix ----------------------------
def _executable(path: Path, text: str = "#!/bin/sh\necho hi\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _package(path: str, name: str, *, pname: str | None = None, main: str | None = None,
             parsed: str | None = None, output: str = "out") -> dict[str, object]:
    """The facts nix eval returns for a package (parsedName: what parseDrvName leaves)."""
    return {"found": path.split("."), "kind": "package", "type": "derivation", "name": name, "pname": pname,
            "mainProgram": main, "parsedName": parsed or name, "outputName": output}


def _app(path: str, program: str | None, context: dict[str, object] | None = None,
         type_: str | None = "app") -> dict[str, object]:
    return {"found": path.split("."), "kind": "app", "type": type_, "program": program, "context": context or {}}


class RunNix(FakeNix):
    """Also answers the one ``nix eval --impure --expr`` behind ``flake.run()``, ``#apps``
    and ``nix build`` of the derivations an app's program names."""

    def __init__(self, facts: dict[str, object] | None, *, apps: list[str] | None = None,
                 eval_error: str | None = None, drv_build_error: str | None = None) -> None:
        super().__init__()
        self.facts = facts
        self.apps = apps
        self.eval_error = eval_error
        self.drv_build_error = drv_build_error
        self.exprs: list[str] = []
        self.drv_builds: list[list[str]] = []
        self.drv_installables: list[list[str]] = []

    def package_out(self, attr: str, outputs: dict[str, Path]) -> None:
        self.answers[attr] = (0, json.dumps([{"drvPath": f"/nix/store/x-{attr}.drv",
                                              "outputs": {k: str(v) for k, v in outputs.items()}}]), "")

    def run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = list(args)
        if "--expr" in args:
            self.calls += 1
            self.argvs.append(args)
            self.exprs.append(args[args.index("--expr") + 1])
            if self.eval_error:
                return subprocess.CompletedProcess(args, 1, "", self.eval_error)
            return subprocess.CompletedProcess(args, 0, json.dumps(self.facts), "")
        if args[0] == "eval" and args[2].endswith("#apps"):
            self.calls += 1
            self.argvs.append(args)
            if self.apps is None:
                return subprocess.CompletedProcess(args, 1, "", "error: flake 'x' does not provide attribute 'apps'")
            return subprocess.CompletedProcess(args, 0, json.dumps(self.apps), "")
        if args[0] == "build" and not any("#" in a for a in args):
            self.calls += 1
            self.argvs.append(args)
            self.drv_installables.append([a for a in args[1:] if ".drv" in a])
            drvs = [a.split("^", 1)[0] for a in args[1:] if ".drv" in a]
            self.drv_builds.append(drvs)
            if self.drv_build_error:
                return subprocess.CompletedProcess(args, 1, "", self.drv_build_error)
            return subprocess.CompletedProcess(args, 0, json.dumps([{"drvPath": d, "outputs": {}} for d in drvs]), "")
        return super().run(args, check=check)


def _pkg_flake(flake_dir: Path, tmp_path: Path, files: Sequence[str], **facts: str | None) -> tuple[Flake, Path]:
    attr = f"packages.{SYSTEM}.tool"
    out = tmp_path / "store" / "tool-out"
    for file in files:
        _executable(out / "bin" / file)
    nix = RunNix(_package(attr, str(facts.pop("name", None) or "tool-1.0"), **facts))  # type: ignore[arg-type]
    nix.package_out(attr, {"out": out})
    return make_flake(flake_dir, nix), out / "bin"


@pytest.mark.parametrize("files, facts, expected", [
    # meta.mainProgram first, though pname's and the parsed name's files exist too
    (["main", "hello", "tool"], {"main": "main", "pname": "hello", "parsed": "tool"}, "main"),
    # then pname, though the parsed name's file exists
    (["hello", "tool"], {"pname": "hello", "parsed": "tool"}, "hello"),
    # then the name without its version (what parseDrvName gives), not the other file
    (["busybox", "greeter"], {"name": "greeter-2", "parsed": "greeter"}, "greeter"),
    # a pname whose file is missing: the parsed name's file
    (["tool", "zzz"], {"pname": "hello", "parsed": "tool"}, "tool"),
    # none of the names: the one lone file
    (["solo"], {"pname": "hello", "parsed": "tool"}, "solo"),
])
def test_package_program_follows_nix_run(flake_dir: Path, tmp_path: Path, files: list[str],
                                         facts: dict[str, str], expected: str) -> None:
    flake, bindir = _pkg_flake(flake_dir, tmp_path, files, **facts)
    assert flake.program("tool") == bindir / expected


def test_main_program_that_is_missing_is_an_error_naming_it(flake_dir: Path, tmp_path: Path) -> None:
    flake, bindir = _pkg_flake(flake_dir, tmp_path, ["tool"], main="ghost", parsed="tool")
    with pytest.raises(UsageError) as err:
        flake.program("tool")  # no fallback to bin/tool, as nix run and lib.getExe would fail
    msg = str(err.value)
    assert f"packages.{SYSTEM}.tool: meta.mainProgram is 'ghost' but {bindir}/ghost does not exist" in msg
    assert f"{bindir} has tool" in msg
    assert "\n" not in msg


def test_two_files_and_no_matching_name_lists_bin_and_says_how_to_fix(flake_dir: Path, tmp_path: Path) -> None:
    flake, bindir = _pkg_flake(flake_dir, tmp_path, ["beta", "alpha"], name="ambiguous-1.0", parsed="ambiguous")
    with pytest.raises(UsageError) as err:
        flake.program("tool")
    msg = str(err.value)
    assert f"packages.{SYSTEM}.tool has no program to run: no meta.mainProgram, no bin/ambiguous" in msg
    assert f"{bindir} has alpha, beta" in msg
    assert "set meta.mainProgram" in msg and f'apps.{SYSTEM}.NAME = {{ type = "app"' in msg
    assert "\n" not in msg


def test_package_without_bin(flake_dir: Path, tmp_path: Path) -> None:
    flake, bindir = _pkg_flake(flake_dir, tmp_path, [], parsed="tool")
    bindir.parent.mkdir(parents=True)
    with pytest.raises(UsageError, match=f"no bin/tool, and not a lone file in bin/ \\({bindir.parent} has no bin/\\)"):
        flake.program("tool")


def test_package_program_is_in_the_output_nix_run_uses(flake_dir: Path, tmp_path: Path) -> None:
    attr = f"packages.{SYSTEM}.split"
    nix = RunNix(_package(attr, "split-1.0", parsed="split", output="bin"))
    nix.package_out(attr, {"out": tmp_path / "out", "bin": tmp_path / "bin-output"})
    _executable(tmp_path / "out" / "bin" / "split")
    program = _executable(tmp_path / "bin-output" / "bin" / "split")
    assert make_flake(flake_dir, nix).program("split") == program


def test_app_program_on_a_nix_without_drv_outputs_syntax_builds_the_bare_drv(flake_dir: Path,
                                                                           tmp_path: Path) -> None:
    """Nix 2.8 reads no DRV^out (its answer to the probe: test_nix_output.py); a bare DRV builds its outputs."""
    program = _executable(tmp_path / "store" / "toolbox" / "bin" / "bye")
    drv = "/nix/store/aaaa-toolbox-1.0.drv"
    nix = RunNix(_app(f"apps.{SYSTEM}.bye", str(program), {drv: {"outputs": ["out", "man"]}}))
    nix._caret = False
    assert make_flake(flake_dir, nix).program("bye") == program
    assert nix.drv_installables == [[drv]]


def test_app_program_context_is_built_then_run(flake_dir: Path, tmp_path: Path) -> None:
    program = _executable(tmp_path / "store" / "toolbox" / "bin" / "bye")
    drv = "/nix/store/aaaa-toolbox-1.0.drv"
    context = {drv: {"outputs": ["out"]}, "/nix/store/bbbb-source": {"path": True},
               "/nix/store/cccc-other.drv": {"allOutputs": True}}
    nix = RunNix(_app(f"apps.{SYSTEM}.bye", str(program), context))
    flake = make_flake(flake_dir, nix)
    assert flake.program("bye") == program
    assert nix.drv_builds == [[drv]]  # only derivation outputs are built; a source path is there already
    assert nix.drv_installables == [[f"{drv}^out"]]  # the outputs, not the .drv file (Nix 2.15 and later)
    build = next(a for a in nix.argvs if a[0] == "build")
    assert build[:2] == ["build", "--json"] and "--no-link" in build
    assert not any(a for a in nix.argvs if a[0] == "build" and any("#" in x for x in a)), "built the package too"



def test_under_xdist_an_apps_program_is_built_once_per_run(flake_dir: Path, tmp_path: Path) -> None:
    from pytest_flake.xdist import Run

    program = _executable(tmp_path / "store" / "toolbox" / "bin" / "bye")
    drv = "/nix/store/aaaa-toolbox-1.0.drv"
    facts = _app(f"apps.{SYSTEM}.bye", str(program), {drv: {"outputs": ["out"]}})
    run = Run.for_uid("r-app", tmp_path / "state")
    first, second = RunNix(facts), RunNix(facts)
    for nix in (first, second):  # two workers of one run
        worker = Flake(f"path:{flake_dir}", invocation_dir=flake_dir.parent, system=SYSTEM, nix=nix,
                       options=FlakeOptions(run=run))
        assert worker.program("bye") == program
    assert first.drv_builds == [[drv]] and second.drv_builds == []
    build = next(a for a in first.argvs if a[0] == "build")
    assert build[build.index("--out-link") + 1].startswith(str(run.gcroots))  # rooted until the run ends

def test_app_program_is_a_gc_root_like_the_builds(flake_dir: Path, tmp_path: Path) -> None:
    program = _executable(tmp_path / "store" / "toolbox" / "bin" / "bye")
    nix = RunNix(_app(f"apps.{SYSTEM}.bye", str(program), {"/nix/store/aaaa-toolbox-1.0.drv": {"outputs": ["out"]}}))
    roots = tmp_path / "session" / "gcroots"
    flake = Flake(f"path:{flake_dir}", system=SYSTEM, nix=nix, options=FlakeOptions(gcroot_dir=roots))
    assert flake.program("bye") == program
    build = next(a for a in nix.argvs if a[0] == "build")
    assert "--no-link" not in build
    link = Path(build[build.index("--out-link") + 1])
    assert link.parent == roots and roots.is_dir()
    assert link.name.endswith(f"-apps.{SYSTEM}.bye+program")


def test_app_without_derivation_context_builds_nothing(flake_dir: Path, tmp_path: Path) -> None:
    program = _executable(tmp_path / "script")
    nix = RunNix(_app(f"apps.{SYSTEM}.script", str(program), {str(program): {"path": True}}))
    assert make_flake(flake_dir, nix).program("script") == program
    assert nix.drv_builds == []


@pytest.mark.parametrize("type_", ["derivation", None])
def test_app_of_wrong_type_is_an_error(flake_dir: Path, tmp_path: Path, type_: str | None) -> None:
    program = _executable(tmp_path / "bin" / "hi")
    nix = RunNix(_app(f"apps.{SYSTEM}.hi", str(program), {"/nix/store/a.drv": {"outputs": ["out"]}}, type_=type_))
    with pytest.raises(UsageError) as err:
        make_flake(flake_dir, nix).program("hi")
    assert str(err.value).startswith(f"apps.{SYSTEM}.hi has type {type_!r}, not 'app'")
    assert 'type = "app"; program =' in str(err.value)
    assert nix.drv_builds == []


def test_app_program_that_does_not_exist(flake_dir: Path, tmp_path: Path) -> None:
    _executable(tmp_path / "bin" / "hi")
    _executable(tmp_path / "bin" / "bye")
    missing = tmp_path / "bin" / "nope"
    nix = RunNix(_app(f"apps.{SYSTEM}.nope", str(missing), {"/nix/store/a.drv": {"outputs": ["out"]}}))
    with pytest.raises(UsageError) as err:
        make_flake(flake_dir, nix).program("nope")
    msg = str(err.value)
    assert f"apps.{SYSTEM}.nope: program {missing} does not exist ({tmp_path / 'bin'} has bye, hi)" in msg
    assert "\n" not in msg


def test_app_program_that_is_not_executable(flake_dir: Path, tmp_path: Path) -> None:
    program = tmp_path / "plain"
    program.write_text("echo\n")
    nix = RunNix(_app(f"apps.{SYSTEM}.plain", str(program)))
    with pytest.raises(UsageError, match=f"program {program} is not executable"):
        make_flake(flake_dir, nix).program("plain")


def test_app_without_program(flake_dir: Path) -> None:
    nix = RunNix(_app(f"apps.{SYSTEM}.x", None))
    with pytest.raises(UsageError, match=f"apps.{SYSTEM}.x has no program"):
        make_flake(flake_dir, nix).program("x")


def test_failed_build_of_app_program_is_a_build_error(flake_dir: Path, tmp_path: Path) -> None:
    nix = RunNix(_app(f"apps.{SYSTEM}.x", str(tmp_path / "x"), {"/nix/store/a.drv": {"outputs": ["out"]}}),
                 drv_build_error="building...\nerror: builder for '/nix/store/a.drv' failed with exit code 1\n")
    with pytest.raises(BuildError) as err:
        make_flake(flake_dir, nix).program("x")
    assert str(err.value).startswith(f"nix build of the program of apps.{SYSTEM}.x failed: "
                                     "the builder of /nix/store/a.drv failed with exit code 1")


@pytest.mark.parametrize("attr, candidates", [
    ("default", [f"apps.{SYSTEM}.default", f"defaultApp.{SYSTEM}", f"packages.{SYSTEM}.default",
                 f"defaultPackage.{SYSTEM}"]),
    (".#", [f"apps.{SYSTEM}.default", f"defaultApp.{SYSTEM}", f"packages.{SYSTEM}.default",
            f"defaultPackage.{SYSTEM}"]),
    ("bye", [f"apps.{SYSTEM}.bye", f"packages.{SYSTEM}.bye", f"legacyPackages.{SYSTEM}.bye"]),
    (".#bye", [f"apps.{SYSTEM}.bye", f"packages.{SYSTEM}.bye", f"legacyPackages.{SYSTEM}.bye"]),
    (f"apps.{SYSTEM}.bye", [f"apps.{SYSTEM}.bye"]),
    (f"packages.{SYSTEM}.bye", [f"packages.{SYSTEM}.bye"]),
])
def test_nix_run_candidates_are_looked_up_in_its_order(flake_dir: Path, attr: str, candidates: list[str]) -> None:
    nix = RunNix({"found": None}, apps=[])
    with pytest.raises(MissingOutputError) as err:
        make_flake(flake_dir, nix).program(attr)
    [expr] = nix.exprs
    wanted = " ".join("[ " + " ".join(f'"{part}"' for part in c.split(".")) + " ]" for c in candidates)
    assert f"[ {wanted} ]" in expr
    assert f"(looked for {', '.join(candidates)})" in str(err.value)
    assert f'builtins.getFlake "path:{flake_dir}"' in expr
    assert "--impure" in nix.argvs[0]


def test_missing_app_or_package_lists_both(flake_dir: Path) -> None:
    nix = RunNix({"found": None}, apps=["bye", "default"])
    with pytest.raises(MissingOutputError) as err:
        make_flake(flake_dir, nix).program("nope")
    msg = str(err.value)
    assert msg.startswith(f"flake path:{flake_dir} has no app or package 'nope'")
    assert f"apps under apps.{SYSTEM}: bye, default; packages under packages.{SYSTEM}: default, docker" in msg


def test_failed_evaluation_names_the_nix_error(flake_dir: Path) -> None:
    nix = RunNix(None, eval_error="warning: x\nerror: undefined variable 'pkgs'\n       at flake.nix:3\n")
    with pytest.raises(NixError) as err:
        make_flake(flake_dir, nix).program("x")
    assert str(err.value) == (f"cannot evaluate what 'nix run path:{flake_dir}#x' would run: "
                              "undefined variable 'pkgs'")


def test_program_is_decided_once_per_session(flake_dir: Path, tmp_path: Path) -> None:
    flake, bindir = _pkg_flake(flake_dir, tmp_path, ["tool"], parsed="tool")
    assert flake.program("tool") == bindir / "tool"
    calls = flake.nix.calls
    assert flake.program("tool") == bindir / "tool"
    assert flake.nix.calls == calls


def test_ref_with_quotes_and_interpolation_is_escaped_for_nix(tmp_path: Path) -> None:
    odd = tmp_path / 'a"b${c}\\d'
    odd.mkdir()
    (odd / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    nix = RunNix({"found": None}, apps=[])
    with pytest.raises(MissingOutputError):
        Flake(f"path:{odd}", system=SYSTEM, nix=nix).program()
    assert f'builtins.getFlake "path:{tmp_path}/a\\"b\\${{c}}\\\\d"' in nix.exprs[0]


def test_apps_lists_apps_of_the_system(flake_dir: Path) -> None:
    nix = RunNix(None, apps=["bye", "default"])
    flake = make_flake(flake_dir, nix)
    assert flake.apps() == ["bye", "default"]
    [argv] = nix.argvs
    assert argv[:3] == ["eval", "--json", f"path:{flake_dir}#apps"]
    assert argv[4] == f'g: if g ? "{SYSTEM}" then builtins.attrNames g."{SYSTEM}" else null'
    assert flake.apps() == ["bye", "default"] and len(nix.argvs) == 1  # cached


def test_flake_without_apps_has_an_empty_list(flake_dir: Path) -> None:
    assert make_flake(flake_dir, RunNix(None, apps=None)).apps() == []


def test_apps_evaluation_failure_is_a_nix_error(flake_dir: Path) -> None:
    class Broken(RunNix):
        def run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(list(args), 1, "", "error: syntax error, unexpected '}'\n")

    with pytest.raises(NixError, match=f"cannot evaluate the apps of flake path:{flake_dir}"):
        make_flake(flake_dir, Broken(None)).apps()


@pytest.mark.parametrize("given, expected", [(None, 7.5), (3.0, 3.0)])
def test_run_timeout_defaults_to_the_flake_timeout(flake_dir: Path, tmp_path: Path,
                                                   given: float | None, expected: float) -> None:
    flake, _bindir = _pkg_flake(flake_dir, tmp_path, ["tool"], parsed="tool")
    flake.timeout = 7.5  # what the flake fixture passes: --flake-timeout
    process = flake.run("tool", timeout=given)
    try:
        assert process.timeout == expected
        assert process.name == "tool"
    finally:
        process.stop()


def test_flake_timeout_is_passed_in() -> None:
    assert Flake("path:/x", system=SYSTEM, nix=FakeNix(), options=FlakeOptions(timeout=42.0)).timeout == 42.0
