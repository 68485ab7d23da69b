"""pytest-flake's fixtures: thin ``with Component(...) as c: yield c`` wrappers.

The real work lives in modules that never import pytest (nix, process, httpcheck,
docker, vm, portable, nspawn). This module adds what only pytest knows, always read from
the node a fixture runs for (``request.node``, through :mod:`pytest_flake.nodestate`): its
markers, whether its test failed (``--flake-keep``), and what to attach to its report.
Factory fixtures keep what they made on a :class:`contextlib.ExitStack`, unwound at the
end of the test.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .config import Settings
from .errors import UsageError
from .httpcheck import HttpChecker
from .nix import Flake
from .nodestate import (
    FLAKE_STACK_KEY,
    ensure_session,
    evidence,
    keep_if_failed,
    leave_for_next_session,
    run_of,
    session_flake,
    settings_of,
)
from .reporting import download_status, record_fact
from .session import Session

log = logging.getLogger(__name__)

# The VMs made for a test (the vm fixture's, the service fixture's portable target's): each is destroyed at
# the test's end, so a portable service in one needs no detach first (portablectl detach takes 2-3 s in an
# emulated guest).
OWN_VMS = pytest.StashKey[list[Any]]()

# --- core -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def flake_settings(request: pytest.FixtureRequest) -> Settings:
    """The resolved pytest-flake settings (option > env > ini > default)."""
    return settings_of(request.config)


@pytest.fixture(scope="session")
def flake_session(request: pytest.FixtureRequest) -> Session:
    """This test session's id and state directory; resources are labelled with the id."""
    return ensure_session(request.config)


@pytest.fixture(scope="session")
def flake(request: pytest.FixtureRequest, flake_settings: Settings, flake_session: Session) -> Iterator[Flake]:
    """The flake under test (``--flake``, or a test's ``@pytest.mark.flake(ref)``).

    ``flake.outputs()`` lists ``packages.<system>``, ``flake.apps()`` ``apps.<system>``;
    ``flake.build(attr)`` builds once per session; ``flake.run(attr, port=...)`` starts what
    ``nix run .#attr`` runs (waiting ``--flake-timeout`` for the port) and stops its process
    group at the end of the test that started it; started in a fixture of a wider scope
    (module, session), at the end of that fixture. The ``flake`` marker of the test, class or
    module a test or fixture belongs to chooses the flake it uses.
    """
    config = request.config
    with contextlib.ExitStack() as stack:
        config.stash[FLAKE_STACK_KEY] = stack
        yield session_flake(config)  # the one --flake-check made at collection, with its builds, or a new one


@pytest.fixture
def http(request: pytest.FixtureRequest) -> Generator[HttpChecker, None, None]:
    """A curl-like HTTP checker: ``http.get(url).expect(200, contains="ok")``.

    Connection errors are retried for ``retry_for`` seconds (default 10); a failed
    ``expect`` is an ``AssertionError`` whose message is a curl-style transcript.
    """
    checker = HttpChecker()
    evidence(request, "http exchanges", checker.transcripts)
    yield checker
    checker.close()


# --- docker -----------------------------------------------------------------------------
if TYPE_CHECKING:
    from .docker import Container, Docker, Image


@pytest.fixture(scope="session")
def flake_docker(request: pytest.FixtureRequest, flake_settings: Settings, flake_session: Session) -> Iterator[Docker]:
    """The Docker daemon of this session (``--docker-host``, else ``DOCKER_HOST``).

    Connects on first use; an unreachable daemon is an error that names the endpoint.
    Images loaded through it are remembered for the session. Each container's arguments
    pass through the ``pytest_flake_container_run`` hook.
    """
    from .docker import Docker

    hook = request.config.hook
    docker = Docker.from_settings(
        flake_settings, session_id=flake_session.id, run=run_of(request.config), control_dir=flake_session.dir,
        edit_run=lambda image, kwargs: hook.pytest_flake_container_run(image=image, kwargs=kwargs))
    yield docker
    docker.close()


@pytest.fixture(scope="session")
def docker_image(flake: Flake, flake_docker: Docker) -> Callable[..., Image]:
    """Factory: ``docker_image(attr="docker") -> Image`` with ``.tag``, ``.id``, ``.build``.

    Builds the flake output (a docker-archive, or a streamLayeredImage script) and loads
    it only when the daemon does not already hold that image id; ``.loaded`` and
    ``.new_layers`` say what this call loaded. A path to an archive works too.
    """

    def load(attr: str | os.PathLike[str] = "docker") -> Image:
        if isinstance(attr, os.PathLike):
            return flake_docker.image(Path(attr))
        return flake_docker.image(flake.build(attr))

    return load


@pytest.fixture
def docker_container(request: pytest.FixtureRequest, docker_image: Callable[..., Image],
                     flake_docker: Docker) -> Iterator[Callable[..., Container]]:
    """Factory: ``docker_container(image_or_attr, ports=(), env=None, command=None) -> Container``.

    Runs the image (an ``Image``, a flake attribute such as ``"docker"``, or a tag the
    daemon holds such as ``"web-server:1.0"``) detached, publishes each port on
    127.0.0.1 at a random host port (``.port(3031)``, ``.url(3031, "/")``), and waits
    until it runs and the ports answer. Its logs are attached to the report of a failed
    test; it is removed at the end of the test (kept with ``--flake-keep`` if it failed).
    """
    stack = contextlib.ExitStack()

    def run(image_or_attr: Image | str | os.PathLike[str] = "docker", ports: Sequence[int | str] = (),
            env: Mapping[str, str] | None = None, command: Sequence[str] | str | None = None) -> Container:
        from .docker import Image

        image: Image | str
        if isinstance(image_or_attr, Image):
            image = image_or_attr
        elif isinstance(image_or_attr, str) and ":" in image_or_attr and "#" not in image_or_attr:
            image = image_or_attr  # a tag or an id the daemon holds
        else:
            image = docker_image(image_or_attr)
        container = flake_docker.container(image, ports=ports, env=env, command=command)
        container.__enter__()
        stack.callback(_remove_container, request, container)
        evidence(request, f"logs of container {container.name} ({container.ref})", container.logs)
        _container_fact(request, container, image)
        return container

    with stack:
        yield run


def _remove_container(request: pytest.FixtureRequest, container: Container) -> None:
    container.keep = keep_if_failed(request, f"container {container.name}", container.how_to_reach)
    try:
        container.__exit__(None, None, None)
    except Exception as exc:  # one container's teardown must not hide the others
        log.warning("pytest-flake: could not remove container %s: %s", container.name, exc)
    if not container.keep and not container.removed:
        leave_for_next_session(request, f"container {container.name}")




def _container_fact(request: pytest.FixtureRequest, container: Container, image: Any) -> None:
    """The container's name, image id and published ports, as a property of the test (JUnit)."""
    try:
        ports = ", ".join(f"{port}->127.0.0.1:{container.port(port)}" for port in container.ports)
    except Exception as exc:  # a fact must never hide the test's own outcome
        ports = f"(unknown: {exc})"
    image_id = getattr(image, "id", "") or container.ref
    record_fact(request.node, f"docker container {container.name}",
                f"{container.ref} {image_id}; ports {ports or 'none'}")


# --- vm ---------------------------------------------------------------------------------
if TYPE_CHECKING:
    from .vm import VM, VMPool


@pytest.fixture(scope="session")
def flake_vms(request: pytest.FixtureRequest, flake_settings: Settings, flake_session: Session) -> Iterator[VMPool]:
    """The session's VMs: cached images, the KVM probe, the SSH key pair and the warm states.

    Closing it at the end of the session removes every domain and overlay; the warm states
    in the image cache stay for the next session (``PYTEST_FLAKE_VM_WARM=0`` turns them off).
    Each domain's XML passes through the ``pytest_flake_domain_xml`` hook before it is defined.
    """
    from .vm import VMPool

    _check_vm_image(flake_settings.vm_image)
    hook = request.config.hook
    with VMPool(flake_settings, flake_session, progress=download_status(request.config),
                edit_domain=lambda name, root: hook.pytest_flake_domain_xml(name=name, domain=root)) as pool:
        yield pool


def _check_vm_image(spec: str | None, what: str = "--vm-image") -> None:
    """An image that names a file must be a disk image (as ``qemu-img info`` sees it): refused before any boot."""
    from .config import BUILTIN_VM_IMAGES
    from .images import check_disk_image

    if not spec or spec in BUILTIN_VM_IMAGES or "://" in spec:
        return
    path = Path(spec).expanduser()
    if path.is_file():
        check_disk_image(path, what)


def _close_guest(request: pytest.FixtureRequest, label: str, guest: VM | SystemdContainer, reach: str) -> None:
    """End a test's guest: kept (with how to reach it) when the test failed under --flake-keep, else removed."""
    if keep_if_failed(request, label, reach):
        guest.keep()
        return
    try:
        guest.close()
    except Exception as exc:  # one guest's teardown must not hide the others
        log.warning("pytest-flake: could not remove %s: %s", label, exc)


def _close_vm(request: pytest.FixtureRequest, machine: VM) -> None:
    _close_guest(request, f"VM {machine.name} (commands through {machine.channel})", machine, machine.ssh_command())


@pytest.fixture
def vm(request: pytest.FixtureRequest, flake_vms: VMPool) -> Iterator[VM]:
    """A fresh VM of ``--vm-image`` (root over SSH), removed at the end of the test.

    ``vm.run(cmd)`` -> testinfra CommandResult, ``vm.host`` (testinfra Host),
    ``vm.forward(guest_port)`` -> a 127.0.0.1 port, ``vm.url(guest_port, path)``,
    ``vm.copy_to(local, remote)``, ``vm.console_log()``. The first VM of an image boots
    cold and is saved; later ones start warm from that state in seconds. The serial
    console is attached to the report of a failed test.
    """
    with flake_vms.vm() as machine:
        evidence(request, f"console of VM {machine.name}", machine.console_log)
        request.node.stash.setdefault(OWN_VMS, []).append(machine)
        yield machine
        _close_vm(request, machine)


@pytest.fixture
def vm_factory(request: pytest.FixtureRequest, flake_vms: VMPool) -> Iterator[Callable[..., VM]]:
    """Factory: ``vm_factory(image=None, memory=None, cpus=None) -> VM``, each started and ready.

    ``image`` is ``arch``, ``debian``, a qcow2 path or URL (default ``--vm-image``);
    ``memory`` in MiB and ``cpus`` default to ``--vm-memory`` and ``--vm-cpus``. All VMs
    made are removed at the end of the test.
    """
    stack = contextlib.ExitStack()

    def make(image: str | None = None, memory: int | None = None, cpus: int | None = None) -> VM:
        _check_vm_image(image, "vm_factory(image=...)")
        machine = flake_vms.vm(image=image, memory=memory, cpus=cpus)
        machine.__enter__()
        stack.callback(_close_vm, request, machine)
        evidence(request, f"console of VM {machine.name}", machine.console_log)
        return machine

    with stack:
        yield make


# --- portable ---------------------------------------------------------------------------
if TYPE_CHECKING:
    from .portable import PortableService


@pytest.fixture
def portable_service(request: pytest.FixtureRequest, flake: Flake,
                     flake_settings: Settings) -> Iterator[Callable[..., PortableService]]:
    """Factory: ``portable_service(vm, attr_or_path="portable", profile="default") -> PortableService``.

    Builds the flake output (or takes a path to a ``.raw`` file or a directory image),
    checks it is a portable image with an os-release and a unit matching its prefix,
    copies it into the guest keeping its ``NAME_VERSION.raw`` name, runs
    ``portablectl attach --now --runtime --profile PROFILE`` and waits until its units
    are active. ``.reattach(attr_or_path)`` upgrades it in place, ``.detach()`` removes
    it; ``.status()``, ``.journal()``, ``.is_active()``, ``.inspect()``. The journal of
    its units is attached to the report of a failed test; it is detached at test end.
    """
    from .portable import PortableService

    def resolve(attr: str) -> Path:
        return flake.build(attr).out

    stack = contextlib.ExitStack()

    def attach(vm: Any, attr_or_path: str | os.PathLike[str] = "portable", profile: str = "default",
               runtime: bool = True) -> PortableService:
        image = Path(attr_or_path) if isinstance(attr_or_path, os.PathLike) else attr_or_path
        service = PortableService(vm, image, profile=profile, runtime=runtime, resolve=resolve,
                                  timeout=flake_settings.flake_timeout)
        evidence(request, f"journal of portable service {service.name} in {vm.name}", service.journal)
        service.__enter__()
        stack.callback(_detach_service, request, service)
        return service

    with stack:
        yield attach


def _detach_service(request: pytest.FixtureRequest, service: PortableService) -> None:
    if keep_if_failed(request, f"portable service {service.name}",
                      f"in {service.guest.name}: portablectl list; systemctl status {' '.join(service.units)}"):
        return
    if any(machine is service.guest for machine in request.node.stash.get(OWN_VMS, [])):
        return  # the test's own VM goes right after, with the image and its attachment
    service.close()


# --- service ----------------------------------------------------------------------------
if TYPE_CHECKING:
    from .guest import Guest
    from .service import ServiceTarget


def _vm_guest(request: pytest.FixtureRequest, stack: contextlib.ExitStack) -> Guest:
    """A fresh VM of ``--vm-image`` for the portable target; its console goes to the report."""
    pool: VMPool = request.getfixturevalue("flake_vms")
    machine = pool.vm()
    stack.callback(_close_vm, request, machine)
    evidence(request, f"console of VM {machine.name}", machine.console_log)
    machine.__enter__()
    request.node.stash.setdefault(OWN_VMS, []).append(machine)
    return machine


class _Supplies:
    """What the service fixture's targets ask for (:class:`~pytest_flake.service.Supplies`), as fixtures."""

    def __init__(self, request: pytest.FixtureRequest, guests: contextlib.ExitStack) -> None:
        settings: Settings = request.getfixturevalue("flake_settings")
        self.request = request
        self.guests = guests  # the portable target's guest, unwound after the service stops
        self.timeout = float(settings.flake_timeout)
        self.portable_host = settings.flake_portable_host
        self._flake: Flake = request.getfixturevalue("flake")

    def flake(self) -> Flake:
        return self._flake

    def log_dir(self) -> Path | None:
        session: Session = self.request.getfixturevalue("flake_session")
        return session.dir

    def docker(self) -> Docker:
        docker: Docker = self.request.getfixturevalue("flake_docker")
        return docker

    def docker_image(self, attr: str) -> Image:
        image: Image = self.request.getfixturevalue("docker_image")(attr)
        return image

    def guest(self) -> Guest:
        return PORTABLE_GUESTS[self.portable_host](self.request, self.guests)  # a known host: the target checked


@pytest.fixture
def service(request: pytest.FixtureRequest) -> Iterator[ServiceTarget]:
    """One form of the service under test; the test runs once per target: [local], [docker], [portable].

    Configure it with ``@pytest.mark.flake_service(port, local="default", docker="docker",
    portable="portable", env=None)``. ``service.url(path)`` is where it answers on 127.0.0.1,
    ``service.logs()`` what it wrote, ``service.upgrade(attr)`` replaces it with another build
    (local: restart on the same port; docker: a new container on the same host port; portable:
    ``portablectl reattach``), ``service.target`` names the form and ``service.vm`` is the guest
    of the portable target (else None). ``--flake-targets`` chooses the targets; each variant
    carries its markers (``nix``; ``docker``; ``vm`` and ``portable``). A failed variant's report
    carries that target's evidence.
    """
    from .service import REGISTRY, ServiceSpec

    node = request.node
    param = getattr(request, "param", None)
    target = REGISTRY.get(param) if isinstance(param, str) else None
    if target is None:
        raise UsageError(f"{node.nodeid}: the service fixture is parametrised by pytest-flake, not by hand",
                         hint="request 'service' from the test function or from its fixtures")
    marker = node.get_closest_marker("flake_service")
    if marker is None:
        raise UsageError(f"{node.nodeid} uses the service fixture but has no flake_service marker",
                         hint="add @pytest.mark.flake_service(PORT) with the port the service listens on")
    spec = ServiceSpec.from_marker(marker.args, marker.kwargs, where=node.nodeid)
    with contextlib.ExitStack() as guests:
        svc = target.create(spec, _Supplies(request, guests))
        evidence(request, f"{svc.evidence_title} {svc.target} service {svc.attr}", svc.logs)
        with svc:
            yield svc
            if keep_if_failed(request, f"{svc.target} service", svc.how_to_reach):
                svc.keep()


# --- systemd containers -----------------------------------------------------------------
if TYPE_CHECKING:
    from .nspawn import ContainerPool, SystemdContainer


def _require_nspawn() -> None:
    """Skip (one line saying why) where systemd containers cannot run; under CI fail instead."""
    from .nspawn import unavailable

    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"pytest-flake: {reason} (CI is set: systemd containers are required)", pytrace=False)
    pytest.skip(f"pytest-flake: {reason}")


@pytest.fixture(scope="session")
def flake_containers(request: pytest.FixtureRequest, flake_settings: Settings,
                     flake_session: Session) -> Iterator[ContainerPool]:
    """The session's systemd containers: OS trees (``--container-image``), names, loop devices.

    Skips the tests that use it where systemd-nspawn cannot run (not root, no
    ``systemd-container``; ``pytest --flake-doctor`` says what to install), fails them under
    ``CI``. Closing it stops every container and puts the host's loop devices back.
    """
    _require_nspawn()
    from .nspawn import ContainerPool

    hook = request.config.hook
    with ContainerPool(flake_session, flake_settings.container_image, timeout=flake_settings.flake_timeout,
                       invocation_dir=flake_settings.invocation_dir,
                       edit_command=lambda name, argv: hook.pytest_flake_nspawn_command(name=name, argv=argv)) as pool:
        yield pool


def _start_container(request: pytest.FixtureRequest, pool: ContainerPool, image: str | None) -> SystemdContainer:
    container = pool.container(image)
    evidence(request, f"journal of container nspawn://{container.name}", container.journal)
    evidence(request, f"units of container nspawn://{container.name}", container.units_status)
    container.__enter__()
    return container


def _close_container(request: pytest.FixtureRequest, container: SystemdContainer) -> None:
    _close_guest(request, f"container nspawn://{container.name}", container, container.enter_command())


@pytest.fixture
def systemd_container(request: pytest.FixtureRequest, flake_containers: ContainerPool) -> Iterator[SystemdContainer]:
    """A fresh systemd container of ``--container-image`` (systemd-nspawn), removed at the end of the test.

    The same guest API as ``vm``: ``run(cmd)``, ``succeed``, ``fail``, ``wait_until_succeeds``,
    ``wait_for_unit``, ``wait_for_open_port``, ``journal``, ``copy_to``, ``copy_from``,
    ``forward(port)`` / ``url(port, path)`` (a 127.0.0.1 relay into its private network) and
    ``host`` (testinfra); ``portable_service(systemd_container, ...)`` attaches a ``.raw`` in it.
    It boots a throwaway copy-on-write copy of the tree in well under a second. Its journal
    and the status of its portable and failed units go to the report of a failed test.
    """
    container = _start_container(request, flake_containers, None)
    try:
        yield container
    finally:
        _close_container(request, container)


@pytest.fixture
def systemd_container_factory(request: pytest.FixtureRequest,
                              flake_containers: ContainerPool) -> Iterator[Callable[..., SystemdContainer]]:
    """Factory: ``systemd_container_factory(image=None) -> SystemdContainer``, each booted and ready.

    ``image`` is ``debian``, ``debian-trixie``, ``debian-sid``, a directory or a tarball of an OS tree
    (default ``--container-image``).
    Each container has its own network, so two can serve the same port. All are removed at
    the end of the test.
    """
    stack = contextlib.ExitStack()

    def make(image: str | os.PathLike[str] | None = None) -> SystemdContainer:
        container = _start_container(request, flake_containers, None if image is None else os.fspath(image))
        stack.callback(_close_container, request, container)
        return container

    with stack:
        yield make


def _container_guest(request: pytest.FixtureRequest, stack: contextlib.ExitStack) -> Guest:
    """A fresh systemd container for the service fixture's portable target (--flake-portable-host nspawn)."""
    container = _start_container(request, request.getfixturevalue("flake_containers"), None)
    stack.callback(_close_container, request, container)
    return container


# where the service fixture's portable target runs (--flake-portable-host, service.PORTABLE_HOSTS): a started
# guest whose removal goes on the stack, unwound after the service stops
PORTABLE_GUESTS: dict[str, Callable[[pytest.FixtureRequest, contextlib.ExitStack], Guest]] = {
    "vm": _vm_guest,
    "nspawn": _container_guest,
}
