"""The layering of ARCHITECTURE.md, enforced over every import of the package.

The layer table is the fenced block of ARCHITECTURE.md whose first line is ``layer  units``:
one row per layer, top to bottom, ``·`` between the units of a layer (siblings), ``+`` joining
modules into one unit, ``name/`` a package. Every import counts: at module level, inside
functions, under ``TYPE_CHECKING``, relative or absolute; ``from . import x`` of a submodule is an
import of that submodule, of any other name an import of the package's ``__init__``.

The checks (each failure names the file, the line and the import statement):

- no import cycle, not even inside one unit (the failure prints the cycle's path);
- no import upward, none between sibling units of one layer;
- every module of the package has a place in the table, and every place in the table exists;
- no module over :data:`MAX_LINES` lines; layers below the pytest side never import pytest;
- the heavy libraries (:data:`HEAVY`: libvirt, the Docker SDK...) are imported only where they are used.

:data:`KNOWN` lists the imports that still break the rule in parts being reworked, one entry per
edge (``importer -> imported``); :data:`KNOWN_LONG` the modules still too long. Each entry must
still be needed (:func:`test_every_known_entry_is_still_needed`): fix one and remove it.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_flake"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
MAX_LINES = 550
PYTEST_SIDE = 1  # the only layer that may import pytest
HEAVY = ("libvirt", "libvirt_qemu", "docker", "paramiko", "testinfra", "cryptography", "pycdlib")  # imported when used

# Imports that break the rule in parts other work is rearranging now; one entry per edge.
KNOWN: frozenset[str] = frozenset()
# Modules still over MAX_LINES.
KNOWN_LONG: frozenset[str] = frozenset()


# --- the table --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One unit of a layer: a package (``vm/``) or modules joined with ``+``."""

    layer: int
    label: str  # as written in the table: "vm/", "nix + nixcmd + nixrun + nixerrors"
    package: str | None  # "vm" for ``vm/``
    modules: tuple[str, ...]  # the modules joined with ``+``

    def holds(self, module: str) -> bool:
        if self.package is not None:
            return module == self.package or module.startswith(self.package + ".")
        return module in self.modules


def parse_table(text: str) -> list[Unit]:
    """The units of the layer block of an ARCHITECTURE.md, layer by layer."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    block = next((b for b in blocks if re.match(r"layer\s+units\s*\n", b)), None)
    if block is None:
        raise AssertionError("ARCHITECTURE.md has no layer block (a fenced block whose first line is 'layer  units')")
    units: list[Unit] = []
    for number, row in enumerate(block.splitlines()[1:], start=1):
        match = re.fullmatch(r"(\d+)\s+\S.*?\s{2,}(\S.*)", row.strip())
        if match is None or int(match.group(1)) != number:
            raise AssertionError(f"ARCHITECTURE.md layer block: row {row!r} is not 'NUMBER NAME  UNITS', "
                                 f"layer {number} expected")
        for label in (part.strip() for part in match.group(2).split("·")):
            names = tuple(name.strip() for name in label.split("+"))
            if len(names) == 1 and names[0].endswith("/"):
                units.append(Unit(number, label, names[0].rstrip("/"), ()))
            else:
                units.append(Unit(number, label, None, names))
    return units


# --- the imports ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import statement of a module of the package (names relative to the package: ``vm.remote``)."""

    module: str  # the importer
    target: str  # the module it imports ("" for the package's own __init__)
    path: Path
    line: int
    statement: str

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_names(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by its name inside it (``vm.remote``; ``vm`` for ``vm/__init__.py``;
    ``""`` for the package's own ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(name: str, package_name: str) -> str | None:
    """``pytest_flake.vm.remote`` -> ``vm.remote``; ``pytest_flake`` -> ``""``; another package: None."""
    if name == package_name:
        return ""
    if name.startswith(package_name + "."):
        return name[len(package_name) + 1:]
    return None


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _statement(node: ast.Import | ast.ImportFrom | ast.Call, lines: list[str]) -> str:
    """The import as one line, naming what it imports (a parenthesised import spans lines in the source)."""
    if isinstance(node, ast.Call):
        return lines[node.lineno - 1].strip()
    names = ", ".join(alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return f"from {'.' * node.level}{node.module or ''} import {names}"
    return f"import {names}"


def imports(package: Path) -> list[Import]:
    """Every import of a module of ``package`` by a module of ``package``, wherever it is written."""
    modules = module_names(package)
    package_name = package.name
    found: list[Import] = []
    for module, path in modules.items():
        source = path.read_text()
        is_init = path.name == "__init__.py"
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = _absolute(alias.name, package_name)
                    if name is not None:
                        targets.append(name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if module else []
                    if not is_init:
                        base = base[:-1]
                    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                    origin: str | None = _join(*base, node.module or "")
                else:
                    origin = _absolute(node.module or "", package_name)
                if origin is None:
                    continue
                for alias in node.names:
                    submodule = _join(origin, alias.name)
                    targets.append(submodule if submodule in modules else origin)
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
                name = _absolute(node.args[0].value, package_name)
                if name is not None:
                    targets.append(name)
            for target in dict.fromkeys(targets):
                if target != module and target in modules:
                    found.append(Import(module, target, path, node.lineno, _statement(node, lines)))
    return sorted(found, key=lambda i: (i.module, i.line, i.target))


def imports_pytest(package: Path) -> list[tuple[str, Path, int, str]]:
    """``(module, path, line, statement)`` of every import of pytest (or ``_pytest``) in ``package``."""
    found = []
    for module, path in module_names(package).items():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if not node.level else [])
            if any(name.split(".")[0] in ("pytest", "_pytest") for name in names):
                found.append((module, path, node.lineno, lines[node.lineno - 1].strip()))
    return found


def module_level_imports(source: str) -> list[tuple[int, str]]:
    """``(line, top-level name)`` of the absolute imports that run when the module is imported (not those in
    functions, nor under ``if TYPE_CHECKING``)."""
    found: list[tuple[int, str]] = []
    todo: list[ast.stmt] = list(ast.parse(source).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, (node.module or "").split(".")[0]))
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, (ast.Try, ast.With)):
            todo += node.body
            todo += [stmt for handler in getattr(node, "handlers", ()) for stmt in handler.body]
            todo += getattr(node, "orelse", []) + getattr(node, "finalbody", [])
    return sorted(found)


# --- the rule ---------------------------------------------------------------------------------------------
def edge(found: Import) -> str:
    return f"{found.module or '__init__'} -> {found.target or '__init__'}"


def unit_of(module: str, units: Iterable[Unit]) -> Unit | None:
    return next((unit for unit in units if unit.holds(module)), None)


def describe(found: Import, units: list[Unit], root: Path, why: str) -> str:
    def place(module: str) -> str:
        unit = unit_of(module, units)
        return (module or "__init__") + (f" (layer {unit.layer}, {unit.label})" if unit else "")

    return f"{found.where(root)}: {place(found.module)} imports {place(found.target)}, {why}: {found.statement}"


def violations(found: list[Import], units: list[Unit], root: Path) -> dict[str, list[str]]:
    """``{"upward": [...], "sibling": [...]}``: a line for each import that breaks the layering."""
    out: dict[str, list[str]] = {"upward": [], "sibling": []}
    for each in found:
        if each.module == "":  # the package's __init__ re-exports from every layer
            continue
        if each.target == "":
            out["upward"].append(describe(each, units, root, "the package's __init__ (import the module itself)"))
            continue
        importer, imported = unit_of(each.module, units), unit_of(each.target, units)
        if importer is None or imported is None or importer == imported:
            continue  # unplaced modules fail test_every_module_has_a_place
        if imported.layer < importer.layer:
            why = f"a higher layer ({imported.layer} above {importer.layer})"
            out["upward"].append(describe(each, units, root, why))
        elif imported.layer == importer.layer:
            out["sibling"].append(describe(each, units, root, f"a sibling unit of layer {importer.layer}"))
    return out


def cycles(found: list[Import]) -> list[list[Import]]:
    """One cycle through each strongly connected part of the import graph: its imports, in order.

    A part may hold more modules than its shortest cycle: :func:`tied` names them all.
    """
    graph: dict[str, dict[str, Import]] = {}
    for each in found:
        graph.setdefault(each.module, {}).setdefault(each.target, each)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.add(top)
                if top == node:
                    break
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found_cycles = []
    for part in parts:
        start = min(part)
        previous: dict[str, str] = {}
        queue = deque([start])
        while queue:  # the shortest way from start back to start, inside the part
            node = queue.popleft()
            if start in graph.get(node, {}) and (node != start or not previous):
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                nodes = [*reversed(path), start]
                found_cycles.append([graph[a][b] for a, b in zip(nodes, nodes[1:], strict=False)])
                break
            for nxt in sorted(graph.get(node, {})):
                if nxt in part and nxt not in previous and nxt != start:
                    previous[nxt] = node
                    queue.append(nxt)
    return found_cycles


def tied(found: list[Import], module: str) -> set[str]:
    """The modules on some cycle through ``module`` (its strongly connected part of the graph)."""
    reach = _reach(found)
    return {other for other in reach.get(module, set()) if module in reach.get(other, set())}


def without(found: list[Import], known: Iterable[str]) -> list[Import]:
    skip = set(known)
    return [each for each in found if edge(each) not in skip]


def line_counts(package: Path) -> dict[str, int]:
    return {module: len(path.read_text().splitlines()) for module, path in module_names(package).items()}


# --- the tests of this package ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def units() -> list[Unit]:
    return parse_table(ARCHITECTURE.read_text())


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return imports(PACKAGE)


def test_every_module_has_a_place(units: list[Unit]) -> None:
    unplaced = [f"{path.relative_to(ROOT)} ({module})" for module, path in module_names(PACKAGE).items()
                if module and unit_of(module, units) is None]
    assert not unplaced, ("modules with no place in the layer block of ARCHITECTURE.md (add each to a unit):\n"
                          + "\n".join(unplaced))


def test_every_place_in_the_table_exists(units: list[Unit]) -> None:
    modules = module_names(PACKAGE)
    ghosts = [name for unit in units for name in ([unit.package] if unit.package else unit.modules)
              if name not in modules]
    assert not ghosts, f"the layer block of ARCHITECTURE.md names modules that do not exist: {', '.join(ghosts)}"
    placed = [name for unit in units for name in ([unit.package] if unit.package else unit.modules)]
    assert len(placed) == len(set(placed)), "a module is placed twice in the layer block of ARCHITECTURE.md"


def test_no_import_cycle(found: list[Import]) -> None:
    lines = []
    kept = without(found, KNOWN)
    for cycle in cycles(kept):
        lines.append("cycle " + " -> ".join([cycle[0].module, *(each.target for each in cycle)]) + ":")
        others = tied(kept, cycle[0].module) - {each.module for each in cycle}
        if others:
            lines.append(f"  (tied in the same knot: {', '.join(sorted(others))})")
        lines += [f"  {each.where(PACKAGE)}: {each.statement}" for each in cycle]
    assert not lines, "import cycles (every import counts, inside functions and under TYPE_CHECKING too):\n" \
        + "\n".join(lines)


def test_no_import_upward(found: list[Import], units: list[Unit]) -> None:
    upward = violations(without(found, KNOWN), units, PACKAGE)["upward"]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_between_siblings(found: list[Import], units: list[Unit]) -> None:
    sibling = violations(without(found, KNOWN), units, PACKAGE)["sibling"]
    assert not sibling, "imports between sibling units of one layer:\n" + "\n".join(sibling)


def test_no_module_is_too_long() -> None:
    long = [f"{module}: {count} lines" for module, count in line_counts(PACKAGE).items()
            if count > MAX_LINES and module not in KNOWN_LONG]
    assert not long, f"modules over {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)


def test_only_the_pytest_side_imports_pytest(units: list[Unit]) -> None:
    wrong = []
    for module, path, line, statement in imports_pytest(PACKAGE):
        unit = unit_of(module, units)
        if unit is not None and unit.layer != PYTEST_SIDE:
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {unit.layer}) {statement}")
    assert not wrong, "components import pytest:\n" + "\n".join(wrong)


def test_plugin_registers_every_fixture_by_name() -> None:
    from pytest_flake import fixtures, plugin

    defined = {name for name, value in vars(fixtures).items()
               if getattr(value, "_pytestfixturefunction", None) is not None  # pytest < 8.4
               or type(value).__name__ == "FixtureFunctionDefinition"}
    assert len(defined) >= 15
    registered = {getattr(f, "name", None) or getattr(f, "__name__", "") for f in plugin.FIXTURES}
    assert registered == defined
    assert "import *" not in Path(plugin.__file__).read_text()


def test_heavy_imports_wait_until_a_component_is_used() -> None:
    eager = [f"{path.relative_to(ROOT)}:{line}: imports {name} when the module is imported"
             for path in module_names(PACKAGE).values()
             for line, name in module_level_imports(path.read_text()) if name in HEAVY]
    assert not eager, "import these inside the functions that use them:\n" + "\n".join(eager)


def test_every_known_entry_is_still_needed(found: list[Import], units: list[Unit]) -> None:
    """A KNOWN edge that is no longer imported, or no longer breaks the rule, must go."""
    edges = {edge(each) for each in found}
    broken = {edge(each) for each in found if any(violations([each], units, PACKAGE).values())}
    cyclic = _cyclic_pairs(found)
    stale = sorted(entry for entry in KNOWN if entry not in edges or not (entry in broken or entry in cyclic))
    assert not stale, "KNOWN entries that are fixed (remove them): " + ", ".join(stale)
    counts = line_counts(PACKAGE)
    short = sorted(m for m in KNOWN_LONG if counts.get(m, 0) <= MAX_LINES)
    assert not short, "KNOWN_LONG modules that are no longer too long (remove them): " + ", ".join(short)


def _reach(found: list[Import]) -> dict[str, set[str]]:
    """Every module each module reaches through imports."""
    graph: dict[str, set[str]] = {}
    for each in found:
        graph.setdefault(each.module, set()).add(each.target)
    reach: dict[str, set[str]] = {}
    for node in graph:
        seen: set[str] = set()
        todo = [node]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[node] = seen
    return reach


def _cyclic_pairs(found: list[Import]) -> set[str]:
    """Edges whose two ends are in one strongly connected part (each such edge lies on some cycle)."""
    reach = _reach(found)
    return {edge(each) for each in found if each.module in reach.get(each.target, set())}


# --- the checker itself, on a package of its own ----------------------------------------------------------
TABLE = """
```
layer              units
1 top              plugin
2 middle           a/ · b + b2
3 ground           base
```
"""


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", "plugin.py": "", "a/__init__.py": "", "a/inner.py": "", "b.py": "",
                       "b2.py": "", "base.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_checker_counts_imports_inside_functions_and_under_type_checking(tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "base.py": "def f():\n    from .b import x\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import inner\n",
        "a/inner.py": "import pkg.plugin\n",
    })
    found = violations(imports(package), parse_table(TABLE), package)
    assert found["upward"] == [
        "pkg/a/inner.py:1: a.inner (layer 2, a/) imports plugin (layer 1, plugin), a higher layer (1 above 2): "
        "import pkg.plugin",
        "pkg/base.py:2: base (layer 3, base) imports b (layer 2, b + b2), a higher layer (2 above 3): "
        "from .b import x",
    ]
    assert found["sibling"] == [
        "pkg/b.py:3: b (layer 2, b + b2) imports a.inner (layer 2, a/), a sibling unit of layer 2: "
        "from .a import inner"]


def test_the_checker_allows_a_unit_and_lower_layers(tmp_path: Path) -> None:
    package = _package(tmp_path, {"plugin.py": "from .a import inner\nfrom . import base\n",
                                  "b.py": "from .b2 import y\nfrom .base import z\n",
                                  "a/__init__.py": "from .inner import q\n", "__init__.py": "from .plugin import p\n"})
    assert violations(imports(package), parse_table(TABLE), package) == {"upward": [], "sibling": []}


def test_the_checker_reports_a_cycle_inside_a_function_with_its_path(tmp_path: Path) -> None:
    package = _package(tmp_path, {"b.py": "from .b2 import y\n",
                                  "b2.py": "def later():\n    from . import base\n",
                                  "base.py": "import os\n\n\ndef f():\n    import pkg.b\n"})
    (cycle,) = cycles(imports(package))
    assert [(each.module, each.target, each.line, each.statement) for each in cycle] == [
        ("b", "b2", 1, "from .b2 import y"), ("b2", "base", 2, "from . import base"), ("base", "b", 5, "import pkg.b")]


def test_the_checker_sees_a_heavy_import_at_module_level_only() -> None:
    source = ("from typing import TYPE_CHECKING\nimport docker.errors\nif TYPE_CHECKING:\n    import libvirt\n"
              "try:\n    import paramiko\nexcept ImportError:\n    pass\n\n\ndef f():\n    import testinfra\n")
    assert module_level_imports(source) == [(1, "typing"), (2, "docker"), (6, "paramiko")]


def test_the_checker_reads_from_dot_import_of_a_name_as_the_packages_init(tmp_path: Path) -> None:
    package = _package(tmp_path, {"a/__init__.py": "from .inner import q\n", "a/inner.py": "from . import other\n"})
    (cycle,) = cycles(imports(package))
    assert [edge(each) for each in cycle] == ["a -> a.inner", "a.inner -> a"]
    assert violations(imports(_package(tmp_path, {"b.py": "from . import thing\n"})), parse_table(TABLE),
                      package)["upward"] == [
        "pkg/b.py:1: b (layer 2, b + b2) imports __init__, the package's __init__ (import the module itself): "
        "from . import thing"]
