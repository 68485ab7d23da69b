"""``--flake-check``: items collected from the flake itself, with no test code (the pytest side).

:func:`add_items` runs in ``pytest_collection_modifyitems``: it lists the flake's outputs
(:func:`pytest_flake.outputs.inventory`), builds its packages (in parallel, each once per run:
:meth:`~pytest_flake.nix.Flake.build`, so the items' markers follow what each build holds),
and adds one item per output under ``<flake.nix>::<group>``: ``flake.nix::checks::NAME``,
``flake.nix::packages::NAME``, ``flake.nix::apps::NAME``; what is not checked
(``nixosConfigurations``, ``lib``, ``devShells``...) is a skipped item with the reason. Each
item carries the markers of what it uses (``nix``; ``docker``; ``portable`` with ``nspawn``
or ``vm``), so ``-k`` and ``-m`` select them; it runs on the plugin's own fixtures, so its
evidence (build log, container logs, journal) and JUnit facts are those of any test.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from . import outputs
from .config import Settings
from .errors import BuildError, CheckFailed, DockerError, FlakeError, notes_of
from .nix import Build, Flake
from .nixcmd import normalize_ref
from .nodestate import evidence, session_flake, settings_of
from .outputs import Output
from .reporting import record_fact

log = logging.getLogger(__name__)

PARALLEL_BUILDS = 4  # packages built at once at collection
KIND_MARKERS: dict[str, tuple[str, ...]] = {outputs.DOCKER: ("docker",), outputs.PORTABLE: ("portable",)}


class FlakeOutputs(pytest.Collector):
    """The flake's outputs: the parent of one :class:`OutputGroup` per group (``checks``, ``packages``...)."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        return list(getattr(self, "children", []))


class OutputGroup(pytest.Collector):
    """``checks``, ``packages``, ``apps``, ``nixosConfigurations``...: the items of one group of outputs."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        return list(getattr(self, "children", []))


class OutputItem(pytest.Function):
    """One output of the flake, checked by the function of its kind."""

    output: Output
    build: Build | None = None
    error: BaseException | None = None  # the package's build failed at collection
    plain_failure = True  # its failures are reported as repr_failure says (the plugin leaves them alone)
    line = 0  # where flake.nix defines it, if a line says "NAME ="

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, self.line, self.output.attr

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        value = excinfo.value
        if isinstance(value, (CheckFailed, FlakeError)):  # the message says it all; our frames do not
            notes = notes_of(value)
            return f"{type(value).__name__}: {value}" + (f"\n{notes}" if notes else "")
        return super().repr_failure(excinfo)


# --- the items' bodies (their arguments are the plugin's fixtures) -------------------------------------------
def _item(request: pytest.FixtureRequest) -> OutputItem:
    node = request.node
    assert isinstance(node, OutputItem)
    return node


def _build(request: pytest.FixtureRequest, flake: Flake) -> Build:
    """The item's build: made at collection (or now); a failure carries the tail of the build log."""
    item = _item(request)
    if item.error is not None:
        error = item.error
        if isinstance(error, FlakeError) and error.details:
            evidence(request, f"build log of {item.output.attr}", lambda: str(error.details))
        raise error
    try:
        build = item.build or flake.build(item.output.attr)
    except BuildError as exc:
        details = str(exc.details or "")
        evidence(request, f"build log of {item.output.attr}", lambda: details)
        raise
    record_fact(item, f"nix build {item.output.attr}", str(build.out))
    return build


def check_output(request: pytest.FixtureRequest, flake: Flake) -> None:
    """A check, a package (its program, its unit files) or an app."""
    item = _item(request)
    output = item.output
    if output.kind == outputs.BROKEN:
        if item.error is not None:
            raise item.error
        raise CheckFailed(output.reason)
    if output.kind == outputs.APP:
        record_fact(item, f"pytest-flake {output.attr}", outputs.check_app(flake, output))
        return
    build = _build(request, flake)
    if output.kind == outputs.PROGRAM:
        said = outputs.check_program(flake, output, build.out)
    elif output.kind == outputs.UNITS:
        evidence(request, f"unit files of {output.attr}",
                 lambda: "\n".join(f"# {p}\n{p.read_text(errors='replace')}" for p in outputs.unit_files(build.out)))
        said = outputs.check_units(build.out, timeout=float(settings_of(request.config).flake_timeout))
    else:
        said = f"built {build.out}" + (f" ({output.what})" if output.what else "")
    record_fact(item, f"pytest-flake {output.attr}", said)


def check_docker(request: pytest.FixtureRequest, flake: Flake, docker_image: Callable[..., Any],
                 docker_container: Callable[..., Any]) -> None:
    """Loaded, run with every exposed TCP port published on 127.0.0.1, answering, healthy, and still up."""
    item = _item(request)
    _build(request, flake)
    image = docker_image(item.output.attr)
    exposed = image.archive.exposed_ports if image.archive is not None else []
    try:
        container = docker_container(image, ports=[p for p in exposed if p.endswith("/tcp")])
    except DockerError as exc:  # exited before it was ready: its logs are in the error
        logs = str(exc.details or "")
        evidence(request, f"logs of the container of {image.ref}", lambda: logs)
        raise
    outputs.check_still_running(lambda: container.status, container.logs, f"container {container.name} ({image.ref})")
    record_fact(item, f"pytest-flake {item.output.attr}",
                f"{image.ref} ran; ports {', '.join(exposed) or 'none'} answered; still running")


def check_portable(request: pytest.FixtureRequest, flake: Flake) -> None:
    """Attached in a systemd container (a VM with ``--flake-portable-host vm``), every unit active, then detached.

    The image is read first: one that is not a portable image fails before a guest boots.
    """
    from .portable import PortableImage

    item = _item(request)
    build = _build(request, flake)
    try:
        PortableImage.open(build.out)
    except FlakeError as exc:
        raise CheckFailed(f"{item.output.attr}: {exc}") from None
    guest = request.getfixturevalue("vm" if portable_host(settings_of(request.config)) == "vm" else "systemd_container")
    service = request.getfixturevalue("portable_service")(guest, Path(build.out))
    units = ", ".join(service.units)
    service.detach()
    record_fact(item, f"pytest-flake {item.output.attr}", f"{service.name} attached in {guest.name}: {units} "
                                                          "active; detached")


def not_checked(request: pytest.FixtureRequest) -> None:
    """An output --flake-check does not test: skipped, with the reason."""
    item = _item(request)
    pytest.skip(f"{item.output.attr}: {item.output.reason}")


# --- collection --------------------------------------------------------------------------------------------
def portable_host(settings: Settings) -> str:
    """Where --flake-check attaches portable images: a systemd container, unless --flake-portable-host says."""
    return settings.flake_portable_host if settings.source("flake_portable_host") != "default" else "nspawn"


def _body(output: Output, settings: Settings) -> Callable[..., None]:
    if output.kind == outputs.OTHER:
        return not_checked
    if output.kind == outputs.DOCKER:
        return check_docker
    if output.kind == outputs.PORTABLE:
        return check_portable
    return check_output


def _sort(flake: Flake, found: list[Output]) -> tuple[list[Output], dict[str, Build], dict[str, BaseException]]:
    """Build every package (a few at once) and say what each is."""
    packages = [o for o in found if o.kind == outputs.PACKAGE]
    builds: dict[str, Build] = {}
    errors: dict[str, BaseException] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_BUILDS, thread_name_prefix="pf-build") as pool:
        futures = {o.attr: pool.submit(flake.build, o.attr) for o in packages}
        try:
            for attr, future in futures.items():
                try:
                    builds[attr] = future.result()
                except Exception as exc:  # the item fails with it
                    errors[attr] = exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    sorted_outputs = []
    for output in found:
        if output.attr in builds:
            kind, what = outputs.classify(builds[output.attr].out)
            output = output.with_kind(kind, what)
        sorted_outputs.append(output)
    return sorted_outputs, builds, errors


def _root_id(flake: Flake, settings: Settings, rootpath: Path) -> tuple[str, Path]:
    """The node id of the flake's outputs and its path: ``flake.nix``, or ``examples/offline/flake.nix`` for a
    flake in a folder of the rootdir (a flake elsewhere, or not on this machine, is ``flake.nix`` too)."""
    _, directory = normalize_ref(flake.ref, settings.invocation_dir)
    if directory is None:
        return "flake.nix", rootpath
    path = directory / "flake.nix"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(rootpath)), path
    return "flake.nix", path


def _line_of(path: Path, name: str) -> int:
    """The 0-based line of ``path`` that defines ``name =`` (0 when none does, or it cannot be read)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    pattern = re.compile(rf"(^|[\s{{;.\"]){re.escape(name)}\"?\s*=[^=]")
    return next((number for number, line in enumerate(lines) if pattern.search(line)), 0)


def add_items(session: pytest.Session, items: list[pytest.Item]) -> None:
    """``--flake-check``: the flake's outputs as items, after the user's own tests."""
    config = session.config
    settings = settings_of(config)
    if settings.flake is None:
        raise pytest.UsageError("pytest-flake: --flake-check has no flake to check: pass --flake DIR (or run it "
                                "where a flake.nix is)")
    flake = session_flake(config)
    try:
        found, builds, errors = _sort(flake, outputs.inventory(flake))
    except FlakeError as exc:  # the flake does not evaluate: one item fails with why, the run goes on
        found, builds, errors = [Output("flake", "outputs", "outputs", outputs.BROKEN, str(exc))], {}, {"outputs": exc}
    nodeid, path = _root_id(flake, settings, Path(str(config.rootpath)))
    if any(item.nodeid.startswith(nodeid + "::") for item in items):
        return  # collected already (a second call)
    root = FlakeOutputs.from_parent(session, name=nodeid, nodeid=nodeid, path=path)
    groups: dict[str, OutputGroup] = {}
    root.children = []  # type: ignore[attr-defined]
    for output in found:
        group = groups.get(output.group)
        if group is None:
            group = groups[output.group] = OutputGroup.from_parent(root, name=output.group)
            group.children = []  # type: ignore[attr-defined]
            root.children.append(group)  # type: ignore[attr-defined]
        item = OutputItem.from_parent(group, name=output.name, callobj=_body(output, settings))
        item.output = output
        item.build = builds.get(output.attr)
        item.error = errors.get(output.attr)
        item.add_marker("nix")
        for marker in KIND_MARKERS.get(output.kind, ()):
            item.add_marker(marker)
        if output.kind == outputs.PORTABLE:
            item.add_marker(portable_host(settings))
        if output.kind == outputs.OTHER:
            item.add_marker(pytest.mark.skip(reason=f"{output.attr}: {output.reason}"))
        item.line = _line_of(path, output.name)
        group.children.append(item)  # type: ignore[attr-defined]
        items.append(item)
    for group in groups.values():  # the terminal's "collected N items" counts these
        report = pytest.CollectReport(group.nodeid, "passed", None, group.collect())
        session.ihook.pytest_collectreport(report=report)
    log.info("pytest-flake: --flake-check collected %d outputs of %s", len(found), flake.ref)
