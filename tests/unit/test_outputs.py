"""--flake-check's component (pytest_flake.outputs): the output list, what a build holds, the checks without daemons."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pytest_flake import outputs
from pytest_flake.errors import CheckFailed, UsageError
from pytest_flake.outputs import Output, check_program, check_units, classify, exec_programs, outputs_of

SYSTEM = "x86_64-linux"
PKG = {"type": "derivation", "name": "web-1.0", "pname": "web", "mainProgram": None, "parsedName": "web"}


def test_every_output_gets_an_item_and_what_is_not_checked_says_why() -> None:
    data = {
        "names": {"packages": [SYSTEM, "aarch64-linux"], "checks": [SYSTEM], "apps": [SYSTEM],
                  "devShells": [SYSTEM], "lib": ["answer"], "nixosConfigurations": ["web", "db"],
                  "overlays": ["default"], "formatter": [SYSTEM], "myThing": None},
        "packages": {"default": PKG, "odd": {"type": None}},
        "checks": {"unit": {"type": "derivation", "name": "unit"}, "not-a-drv": {"type": None}},
        "apps": {"default": {"type": "app", "program": "/nix/store/x-web/bin/web"}},
        "devShells": ["default"],
    }
    found = {(o.group, o.name): o for o in outputs_of(data, SYSTEM)}
    assert {key: o.kind for key, o in found.items()} == {
        ("checks", "unit"): outputs.CHECK, ("checks", "not-a-drv"): outputs.BROKEN,
        ("packages", "default"): outputs.PACKAGE, ("packages", "odd"): outputs.BROKEN,
        ("apps", "default"): outputs.APP,
        ("other systems", "packages.aarch64-linux"): outputs.OTHER,
        ("devShells", "default"): outputs.OTHER, ("formatter", SYSTEM): outputs.OTHER,
        ("lib", "lib"): outputs.OTHER, ("nixosConfigurations", "db"): outputs.OTHER,
        ("nixosConfigurations", "web"): outputs.OTHER, ("overlays", "default"): outputs.OTHER,
        ("myThing", "myThing"): outputs.OTHER,
    }
    assert found[("checks", "unit")].attr == f"checks.{SYSTEM}.unit"
    assert found[("nixosConfigurations", "web")].attr == "nixosConfigurations.web"
    assert "aarch64-linux" in found[("other systems", "packages.aarch64-linux")].reason
    assert "not a derivation" in found[("checks", "not-a-drv")].reason
    assert all(o.reason for o in found.values() if o.kind == outputs.OTHER)


def _docker_archive(path: Path) -> Path:
    config = json.dumps({"config": {"ExposedPorts": {"80/tcp": {}}}, "rootfs": {"diff_ids": []}}).encode()
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["web:1.0"], "Layers": []}]).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("manifest.json", manifest), ("c.json", config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def test_classify_reads_what_a_build_holds(tmp_path: Path) -> None:
    unit = tmp_path / ("a" * 32 + "-web.service")
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    assert classify(unit)[0] == outputs.UNITS
    units = tmp_path / "units" / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "web.socket").write_text("[Socket]\nListenStream=80\n")
    assert classify(tmp_path / "units")[0] == outputs.UNITS
    program = tmp_path / "program" / "bin"
    program.mkdir(parents=True)
    assert classify(tmp_path / "program")[0] == outputs.PROGRAM
    portable = tmp_path / "portable"
    portable.mkdir()
    (portable / "web_1.0.raw").write_bytes(b"hsqs" + bytes(100))
    assert classify(portable)[0] == outputs.PORTABLE
    tree = tmp_path / "tree" / "etc"
    tree.mkdir(parents=True)
    (tree / "os-release").write_text("ID=web\n")
    assert classify(tmp_path / "tree")[0] == outputs.PORTABLE
    assert classify(_docker_archive(tmp_path / "image.tar.gz")) == (outputs.DOCKER, "a gzip docker-archive (web:1.0)")
    tarball = tmp_path / "source.tar.gz"
    tarball.write_bytes(gzip.compress(b"not a tar at all"))
    assert classify(tarball)[0] == outputs.DATA
    (tmp_path / "share").mkdir()
    assert classify(tmp_path / "share")[0] == outputs.DATA


def test_exec_lines_name_their_programs_without_prefixes() -> None:
    text = ("[Service]\nExecStartPre=-/nix/store/a-x/bin/prep --now\nExecStart=@/nix/store/b-y/bin/web web -v\n"
            "ExecStop=\nExecReload=+/bin/kill -HUP $MAINPID\n")
    assert exec_programs(text) == [("ExecStart", "/nix/store/b-y/bin/web"), ("ExecStartPre", "/nix/store/a-x/bin/prep"),
                                   ("ExecReload", "/bin/kill")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_with_a_missing_program_fail_with_verifys_message(tmp_path: Path) -> None:
    good = tmp_path / ("b" * 32 + "-good.service")
    good.write_text("[Unit]\nDescription=good\n\n[Service]\nExecStart=/bin/true\n")
    assert "good.service: ExecStart=/bin/true" in check_units(good)
    bad = tmp_path / ("c" * 32 + "-bad.service")
    bad.write_text("[Unit]\nDescription=bad\n\n[Service]\nExecStart=/nix/store/nothing-here/bin/web\n")
    with pytest.raises(CheckFailed) as failed:
        check_units(bad)
    text = str(failed.value)
    assert "bad.service: ExecStart=/nix/store/nothing-here/bin/web does not exist" in text
    assert "systemd-analyze verify refuses them" in text and "is not executable" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckFailed, match="holds no unit file"):
        check_units(tmp_path / "empty")


class FakeFlake:
    """Only what check_program asks of a Flake: the program nix run would run."""

    def __init__(self, program: Path | Exception) -> None:
        self.answer = program
        self.asked: list[str] = []

    def program(self, attr: str) -> Path:
        self.asked.append(attr)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _package(tmp_path: Path, files: dict[str, int], **facts: Any) -> tuple[Output, Path]:
    out = tmp_path / "out"
    (out / "bin").mkdir(parents=True)
    for name, mode in files.items():
        (out / "bin" / name).write_text("#!/bin/sh\n")
        (out / "bin" / name).chmod(mode)
    return Output("packages", "web", f"packages.{SYSTEM}.web", outputs.PROGRAM, facts={**PKG, **facts}), out


def test_a_program_nix_run_would_run_must_be_executable(tmp_path: Path) -> None:
    output, out = _package(tmp_path, {"web": 0o644})
    with pytest.raises(CheckFailed, match="is not executable"):
        check_program(FakeFlake(out / "bin" / "web"), output, out)
    (out / "bin" / "web").chmod(0o755)
    assert check_program(FakeFlake(out / "bin" / "web"), output, out).endswith(f"nix run runs {out}/bin/web")


def test_a_package_with_several_tools_and_no_main_program_passes_built(tmp_path: Path) -> None:
    output, out = _package(tmp_path, {"alpha": 0o755, "beta": 0o755}, pname="tools", parsedName="tools")
    flake = FakeFlake(UsageError("never asked"))
    assert "nix run would run no program" in check_program(flake, output, out)
    assert flake.asked == []


def test_a_missing_main_program_fails_with_the_flakes_message(tmp_path: Path) -> None:
    output, out = _package(tmp_path, {"web": 0o755}, mainProgram="ghost")
    message = f"packages.{SYSTEM}.web: meta.mainProgram is 'ghost' but it does not exist"
    with pytest.raises(CheckFailed) as failed:
        check_program(FakeFlake(UsageError(message)), output, out)
    assert str(failed.value) == message  # named once, not twice


def test_a_oneshot_that_exited_0_counts_as_done_and_one_that_failed_does_not() -> None:
    from pytest_flake.portable.service import _oneshot_done

    assert _oneshot_done({"Type": "oneshot", "ActiveState": "inactive", "Result": "success"})
    assert not _oneshot_done({"Type": "oneshot", "ActiveState": "failed", "Result": "exit-code"})
    assert not _oneshot_done({"Type": "oneshot", "ActiveState": "activating", "Result": "success"})
    assert not _oneshot_done({"Type": "simple", "ActiveState": "inactive", "Result": "success"})
