"""Flake refs, attribute paths, ``nix build --json`` parsing and the build cache, with a fake Nix."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_flake.errors import BuildError, MissingOutputError, MissingToolError, NixError, UsageError
from pytest_flake.nix import Build, Flake, Nix, normalize_ref

SYSTEM = "x86_64-linux"
OUT = "/nix/store/ccgslx07wb873cq4n54f4bqmikliw1m5-web-server-1.0"
DRV = "/nix/store/dqhyqg5rhlvidn2acl2s61sfhqxky5rd-web-server-1.0.drv"
# what Nix 2.8 prints for `nix build --json --no-link INSTALLABLE`
NIX_28_JSON = json.dumps([{"drvPath": DRV, "outputs": {"out": OUT}}])


class FakeNix(Nix):
    """A Nix whose ``run`` answers from a table and counts the processes it would start."""

    def __init__(self, answers: dict[str, tuple[int, str, str]] | None = None) -> None:
        super().__init__(executable="fake-nix")
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
    flake = Flake("unused", invocation_dir=tmp_path, system=SYSTEM, nix=nix, ref_for=lambda: current["ref"])
    flake.build()
    current["ref"] = f"path:{dirs[1]}"
    flake.build()
    assert nix.calls == 2
    assert nix.argvs[1][-1].startswith(f"path:{dirs[1]}#")


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
                               "error: builder for '/nix/store/lq43-broken.drv' failed with exit code 3")
    notes = "\n".join(exc.__notes__)
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
    assert proc.stdout.strip() == "--extra-experimental-features nix-command flakes eval x"
    assert nix.calls == 1
    with pytest.raises(NixError, match="'nix eval x' failed with exit code 7") as err:
        nix.run(["eval", "x"])
    assert "error: nope" in "\n".join(err.value.__notes__)
