"""Every one-shot host program runs through ``_host.run_command`` (and ``run_tool`` on top of it).

A direct ``subprocess.run`` elsewhere is allowed only where a component owns the way its
commands run: Nix (counted calls, its own errors), the SSH master (bytes in and out), and a
container's own commands (bytes, nsenter). Long-running or streamed programs (``Popen``) are
not one-shots and are not checked here.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_flake"
ONE_SHOTS = {"run", "check_output", "check_call", "call", "getoutput", "getstatusoutput"}
RUNNERS = {
    "_host.run_command",  # the one runner of host tools
    "nixcmd.Nix.run",  # the Nix component's runner: counts calls, NixError with the log's tail
    "tunnel.SSHHost._control",  # the SSH master's control commands
    "tunnel.SSHHost.run",  # commands on another host over the master (bytes)
    "nspawn.machine.SystemdContainer.exec",  # a container's commands (bytes, through nsenter)
    "nspawn.machine.SystemdContainer.copy_from",  # tar out of a container into a local tar
}


def direct_one_shots(source: str, module: str) -> list[tuple[str, int]]:
    """Where ``source`` calls ``subprocess.<one-shot>`` or ``os.system``: (module.Class.function, line)."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(child, [*scope, child.name])
                continue
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Name)
                    and ((child.func.value.id == "subprocess" and child.func.attr in ONE_SHOTS)
                         or (child.func.value.id == "os" and child.func.attr in {"system", "popen"}))):
                found.append((".".join([module, *scope]), child.lineno))
            walk(child, scope)

    walk(ast.parse(source), [])
    return found


def package_one_shots() -> list[tuple[str, int, Path]]:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        calls += [(where, line, path) for where, line in direct_one_shots(path.read_text(), module)]
    return calls


def test_one_shot_host_programs_run_through_one_runner() -> None:
    outside = [f"{path.relative_to(PACKAGE.parent)}:{line}: {where} calls subprocess directly "
               "(use _host.run_command or run_tool)"
               for where, line, path in package_one_shots() if where not in RUNNERS]
    assert not outside, "\n".join(outside)


def test_every_runner_named_still_runs_something() -> None:
    seen = {where for where, _, _ in package_one_shots()}
    assert RUNNERS <= seen, f"no longer calls subprocess (remove it from RUNNERS): {sorted(RUNNERS - seen)}"


def test_the_check_sees_calls_inside_methods_and_os_system() -> None:
    source = textwrap.dedent("""
        import os, subprocess

        def probe():
            return subprocess.run(["true"])

        class Tool:
            def go(self):
                os.system("true")
                subprocess.Popen(["sleep", "1"])  # long-running: not a one-shot
    """)
    assert direct_one_shots(source, "m") == [("m.probe", 5), ("m.Tool.go", 9)]
