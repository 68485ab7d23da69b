"""What differs between Nix versions, checked against the real ``nix`` (scripts/nix-matrix runs these on
Nix 2.8, 2.26 and 2.34): an app's program on a cold store, a build failure's exit code and log, an
evaluation error's message and line in the user's flake.nix, the version and the settings, and that no
``flake.lock`` is written into the user's checkout."""

from __future__ import annotations

import json
import secrets
import subprocess
import textwrap
from pathlib import Path

import pytest

from pytest_flake import doctor
from pytest_flake.errors import BuildError, EvalError
from pytest_flake.nix import Flake, FlakeOptions
from pytest_flake.nixcmd import Nix

pytestmark = pytest.mark.usefixtures("nix")

SYSTEM = "x86_64-linux"
# line numbers matter: the evaluation errors below name them
FLAKE = r'''{
  outputs = { self }: let
    run = name: script: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/busybox";
                                     args = [ "sh" "-euc" script ]; token = "@TOKEN@"; };
  in {
    packages.x86_64-linux = {
      missing = run "missing" ({ }).nothing;
      typeerr = run "typeerr" (1 + "a");
      broken = run "broken"
        "for i in $(/bin/busybox seq 1 40); do echo log line $i; done; echo 'compile error: widget.c:3'; exit 3";
      tool = run "tool-@TOKEN@" ''
        mkdir -p $out/bin
        printf '#!/bin/busybox sh\necho "cold @TOKEN@ $*"\n' > $out/bin/greet
        chmod +x $out/bin/greet
      '';
    };
    apps.x86_64-linux.greet = { type = "app"; program = "${self.packages.x86_64-linux.tool}/bin/greet"; };
    apps.x86_64-linux.bad = { type = "app"; program = "${({ }).nothing}/bin/x"; };
  };
}
'''


def write(directory: Path, text: str = FLAKE) -> str:
    """A flake new to the store (a fresh token in every derivation); returns the token."""
    token = secrets.token_hex(8)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(textwrap.dedent(text).replace("@TOKEN@", token))
    return token


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_app_program_on_a_cold_store_is_built_and_runs(tmp_path: Path) -> None:
    """The program's derivation is new to the store: it must be built from its outputs (DRV^out since Nix 2.15;
    a bare DRV there means the .drv file and builds nothing), then run."""
    token = write(tmp_path / "f")
    flake = Flake(f"path:{tmp_path / 'f'}", system=SYSTEM)
    program = flake.program("greet")
    assert program.name == "greet" and token in str(program.parent.parent)
    out = subprocess.run([str(program), "hi"], capture_output=True, text=True, check=True, timeout=30).stdout
    assert out == f"cold {token} hi\n"


def test_app_program_built_under_a_gc_root(tmp_path: Path) -> None:
    """The out-link made for the program points at its output, not at its .drv file."""
    write(tmp_path / "f")
    roots = tmp_path / "roots"
    flake = Flake(f"path:{tmp_path / 'f'}", system=SYSTEM, options=FlakeOptions(gcroot_dir=roots))
    program = flake.program("greet")
    links = sorted(roots.iterdir())
    assert links, "no out-link for the program"
    assert all(not str(link.resolve()).endswith(".drv") for link in links)
    assert any(program.is_relative_to(link.resolve()) for link in links)


def test_build_failure_names_exit_code_and_ends_with_the_log(tmp_path: Path) -> None:
    write(tmp_path / "f")
    flake = Flake(f"path:{tmp_path / 'f'}", system=SYSTEM)
    with pytest.raises(BuildError) as err:
        flake.build("broken")
    message = str(err.value)
    assert message.startswith(f"nix build path:{tmp_path / 'f'}#packages.{SYSTEM}.broken failed: the builder of "
                              "/nix/store/")
    assert "-broken.drv failed with exit code 3 (the last lines of the build log follow" in message
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "log line 40" in notes and "compile error: widget.c:3" in notes
    assert "log line 2\n" not in notes  # only the tail
    # the log's last line is the last line of the builder's output that is shown
    log_lines = [line for line in notes.splitlines() if "broken>" in line or line.lstrip().startswith(">")]
    assert log_lines and log_lines[-1].endswith("compile error: widget.c:3")


@pytest.mark.parametrize(("attr", "message", "line"), [
    ("missing", "attribute 'nothing' missing", "flake.nix:7:"),
    ("typeerr", "cannot add a string to an integer", "flake.nix:8:"),
])
@pytest.mark.parametrize("kind", ["path", "git"])
@pytest.mark.parametrize("show_trace", [False, True])
def test_evaluation_error_names_message_and_the_users_line(tmp_path: Path, attr: str, message: str, line: str,
                                                           kind: str, show_trace: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix 2.8 prints the message first; 2.13+ a bare "error:", the trace, then the message; show-trace (which
    install actions write into nix.conf) lengthens the trace. Each names the user's line."""
    if show_trace:
        monkeypatch.setenv("NIX_CONFIG", "show-trace = true")
    directory = tmp_path / "f"
    write(directory)
    if kind == "git":
        git(directory, "init", "-q")
        git(directory, "add", "flake.nix")
        git(directory, "commit", "-q", "-m", "first")
    ref = f"path:{directory}" if kind == "path" else str(directory)
    flake = Flake(ref, system=SYSTEM)
    with pytest.raises(EvalError) as err:
        flake.build(attr)
    text = str(err.value)
    assert text.startswith(f"cannot evaluate {ref}#packages.{SYSTEM}.{attr}: {message} at {directory}/{line}"), text
    assert "/nix/store/" not in text.split(" (")[0]


def test_evaluation_error_of_an_apps_program_names_the_users_line(tmp_path: Path) -> None:
    from pytest_flake.errors import NixError

    write(tmp_path / "f")
    flake = Flake(f"path:{tmp_path / 'f'}", system=SYSTEM)
    with pytest.raises(NixError) as err:
        flake.program("bad")
    assert str(err.value).startswith(f"cannot evaluate what 'nix run path:{tmp_path / 'f'}#bad' would run: "
                                     f"attribute 'nothing' missing at {tmp_path / 'f'}/flake.nix:18:"), str(err.value)


def test_syntax_error_names_the_users_line(tmp_path: Path) -> None:
    directory = tmp_path / "f"
    write(directory, '{\n  outputs = { self }: {\n    packages.x86_64-linux.default = derivation {\n'
                     '      name = "x"; system = "x86_64-linux";\n      builder = "/bin/busybox" args = [ ];\n'
                     '    };\n  };\n}\n')
    with pytest.raises(EvalError, match=rf"syntax error, unexpected '=', expecting ';' at {directory}/flake.nix:5:37"):
        Flake(f"path:{directory}", system=SYSTEM).build()


def test_no_lock_file_is_written_into_the_checkout(tmp_path: Path) -> None:
    """A flake with an input and no flake.lock: building, listing, running and the header's metadata leave
    the checkout as it was (Nix would write flake.lock there)."""
    dep = tmp_path / "dep"
    dep.mkdir()
    (dep / "flake.nix").write_text('{ outputs = { self }: { message = "from dep"; }; }\n')
    main = tmp_path / "main"
    write(main, FLAKE.replace("outputs = { self }: let", f'inputs.dep.url = "path:{dep}";\n'
                              "  outputs = { self, dep }: let")
          .replace('echo "cold @TOKEN@ $*"', 'echo "${dep.message} @TOKEN@"'))
    flake = Flake(f"path:{main}", system=SYSTEM)
    assert "tool" in flake.outputs()
    program = flake.program("greet")
    assert subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.startswith("from dep")
    flake.build("tool")
    settings_ref = f"path:{main}"
    meta = Nix().run(["flake", "metadata", "--json", settings_ref])
    assert json.loads(meta.stdout)["locks"]["nodes"]["dep"]
    assert sorted(p.name for p in main.iterdir()) == ["flake.nix"]
    assert not (dep / "flake.lock").exists()


def test_nix_without_the_flag_would_write_the_lock_file(tmp_path: Path) -> None:
    """The check above can fail: this Nix, asked the same without --no-write-lock-file, writes flake.lock."""
    dep = tmp_path / "dep"
    dep.mkdir()
    (dep / "flake.nix").write_text('{ outputs = { self }: { message = "from dep"; }; }\n')
    main = tmp_path / "main"
    main.mkdir()
    (main / "flake.nix").write_text(f'{{ inputs.dep.url = "path:{dep}"; outputs = {{ self, dep }}: '
                                    '{ message = dep.message; }; }\n')
    nix = Nix()
    subprocess.run([nix.executable, "--extra-experimental-features", "nix-command flakes", "eval", "--raw",
                    f"path:{main}#message"], check=True, capture_output=True, text=True)
    assert (main / "flake.lock").exists()


def test_version_and_settings_are_read(tmp_path: Path) -> None:
    nix = Nix()
    version = nix.version_info()
    first = subprocess.run([nix.executable, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.version in first and str(version).split(" ")[0] in first
    config = nix.config()  # `nix config show` (2.20 and later) or `nix show-config` (2.8)
    assert config is not None and "substituters" in config and "experimental-features" in config


def test_header_names_the_commit_of_a_dirty_tree_where_nix_says_it(tmp_path: Path) -> None:
    directory = tmp_path / "f"
    write(directory)
    git(directory, "init", "-q")
    git(directory, "add", "flake.nix")
    git(directory, "commit", "-q", "-m", "first")
    rev = git(directory, "rev-parse", "HEAD")
    (directory / "flake.nix").write_text((directory / "flake.nix").read_text() + "# changed\n")
    meta = json.loads(Nix().run(["flake", "metadata", "--json", str(directory)]).stdout)
    shown = doctor.locked(meta)
    if "dirtyRevision" in meta:  # Nix 2.17 and later
        assert meta["dirtyRevision"] == f"{rev}-dirty"
        assert shown == f"git rev {rev[:12]} (dirty tree: uncommitted changes)"
    else:
        assert shown == "git (dirty tree: uncommitted changes, no revision)"


# each output's bin/tool says which output it is in
SPLIT_SCRIPT = (r"for o in out bin; do eval d=\\$$o; mkdir -p $d/bin; "
                r"printf '#!/bin/busybox sh\\necho from %s\\n' $o > $d/bin/tool; chmod +x $d/bin/tool; done")
SPLIT = r'''{
  outputs = { self }: {
    packages.x86_64-linux.tool = (derivation {
      name = "tool-@TOKEN@"; system = "x86_64-linux"; builder = "/bin/busybox"; outputs = [ "out" "bin" ];
      args = [ "sh" "-c" "@SCRIPT@" ];
    }) // { pname = "tool"; meta.outputsToInstall = [ "bin" ]; };
  };
}
'''.replace("@SCRIPT@", SPLIT_SCRIPT)


def test_package_program_is_in_the_output_nix_run_uses_though_nix_build_makes_another(tmp_path: Path) -> None:
    """Since Nix 2.9 ``nix build REF#tool`` makes ``meta.outputsToInstall`` (here: bin only), while ``nix run``
    runs the package's own output (out): the plugin builds that one too, and runs what ``nix run`` runs."""
    write(tmp_path / "f", SPLIT)
    ref = f"path:{tmp_path / 'f'}"
    nix = Nix()
    real = subprocess.run([nix.executable, "--extra-experimental-features", "nix-command flakes", "run",
                           "--no-write-lock-file", f"{ref}#tool"], capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr
    assert real.stdout == "from out\n"
    flake = Flake(ref, system=SYSTEM, options=FlakeOptions(gcroot_dir=tmp_path / "roots"))
    program = flake.program("tool")
    assert subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout == real.stdout
