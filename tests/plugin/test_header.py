"""The nix facts after collection: system, Nix version, and the flake's locked revision with its dirty flag."""

from __future__ import annotations

import subprocess

import pytest

from tests.plugin.flake_helpers import write_flake

USES = "def test_uses(flake):\n    assert flake.ref\n"


def git(cwd: object, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.usefixtures("nix")
def test_header_shows_locked_revision_and_dirty_tree(pytester: pytest.Pytester) -> None:
    repo = write_flake(pytester.path / "repo")
    git(repo, "init", "-q")
    git(repo, "add", "flake.nix")
    git(repo, "commit", "-q", "-m", "first")
    rev = git(repo, "rev-parse", "HEAD")
    pytester.makepyfile(USES)

    result = pytester.runpytest(f"--flake={repo}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["collected 1 item", "pytest-flake: system: x86_64-linux, nix *",
                                 f"pytest-flake: flake locked: git rev {rev[:12]} (clean)"])

    (repo / "flake.nix").write_text((repo / "flake.nix").read_text() + "\n# changed\n")
    result = pytester.runpytest(f"--flake={repo}")
    metadata = subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "flake", "metadata",
                               "--json", str(repo)], check=True, capture_output=True, text=True).stdout
    if "dirtyRevision" in metadata:  # Nix 2.17 and later name the commit the dirty tree started from
        result.stdout.fnmatch_lines([f"pytest-flake: flake locked: git rev {rev[:12]} (dirty tree: uncommitted "
                                     "changes)"])
    else:
        result.stdout.fnmatch_lines(["pytest-flake: flake locked: git (dirty tree: uncommitted changes, no revision)"])

    result = pytester.runpytest(f"--flake=path:{repo}")
    result.stdout.fnmatch_lines(["pytest-flake: flake locked: path sha256-* (not under version control: no revision)"])


def test_no_nix_run_when_no_selected_test_uses_nix(pytester: pytest.Pytester, tmp_path: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose selected tests need no nix (here: only settings) runs no nix for its header."""
    from pathlib import Path

    calls = Path(str(tmp_path)) / "nix-calls"
    fake = Path(str(tmp_path)) / "bin"
    fake.mkdir()
    (fake / "nix").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'nix (Nix) 2.8.0'\n")
    (fake / "nix").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    pytester.makepyfile("""
        def test_settings(flake_settings):
            assert flake_settings

        def test_builds(flake):
            assert flake.ref
    """)
    result = pytester.runpytest("--flake-system=x86_64-linux", "-k", "settings")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "pytest-flake: system: x86_64-linux (from --flake-system), nix: not run (no selected test uses nix)"])
    assert not calls.exists()
    result = pytester.runpytest("--flake-system=x86_64-linux", "-k", "builds")
    result.stdout.fnmatch_lines(["pytest-flake: system: x86_64-linux, nix 2.8.0"])
    assert "--version" in calls.read_text()  # the fake is the nix the header runs: the check above can fail


@pytest.mark.parametrize(("version", "shown"), [
    ("nix (Lix, like Nix) 2.91.1", "Lix 2.91.1"),
    ("nix (Determinate Nix 3.4.1) 2.28.2", "Determinate Nix 3.4.1 (Nix 2.28.2)"),
])
def test_header_names_lix_and_determinate_nix(pytester: pytest.Pytester, tmp_path: object,
                                              monkeypatch: pytest.MonkeyPatch, version: str, shown: str) -> None:
    """The version lines of Lix and Determinate Nix (from their releases) are read, not cut at the last word."""
    from pathlib import Path

    fake = Path(str(tmp_path)) / "bin"
    fake.mkdir()
    (fake / "nix").write_text(f"#!/bin/sh\necho '{version}'\n")
    (fake / "nix").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    pytester.makepyfile("def test_builds(flake):\n    assert flake.ref\n")
    result = pytester.runpytest("--flake-system=x86_64-linux")
    result.stdout.fnmatch_lines([f"pytest-flake: system: x86_64-linux, {shown}"])
