"""pytest-flake's hooks and options (fixtures live in :mod:`pytest_flake.fixtures`).

Registered through the ``pytest11`` entry point ``flake``; do not also list it in a
``conftest.py``'s ``pytest_plugins``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from . import doctor
from .config import OPTIONS, TARGETS, Settings, parse_targets
from .errors import CommandLineError, FlakeError
from .fixtures import (
    docker_container,
    docker_image,
    flake,
    flake_containers,
    flake_docker,
    flake_session,
    flake_settings,
    flake_vms,
    http,
    portable_service,
    service,
    systemd_container,
    systemd_container_factory,
    vm,
    vm_factory,
)
from .nodestate import (
    RUN_KEY,
    SETTINGS_ERROR,
    SETTINGS_KEY,
    SWEPT_KEY,
    TEST_STATE,
    TestState,
    end_session,
    ensure_session,
    flake_binding,
)
from .reporting import attach_evidence, describe_error
from .xdist import WORKERINPUT_KEY, Run

log = logging.getLogger(__name__)

# the fixtures this plugin registers (pytest finds them as names of this module)
FIXTURES = (
    flake_settings, flake_session, flake, http,
    flake_docker, docker_image, docker_container,
    flake_vms, vm, vm_factory, portable_service, service,
    flake_containers, systemd_container, systemd_container_factory,
)

# fixture name -> markers added to every test that uses it (directly or through others)
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "flake": ("nix",),
    "flake_docker": ("docker",),
    "docker_image": ("docker",),
    "docker_container": ("docker",),
    "flake_vms": ("vm",),
    "vm": ("vm",),
    "vm_factory": ("vm",),
    "portable_service": ("portable",),  # its guest's fixture adds vm or nspawn
    "flake_containers": ("nspawn",),
    "systemd_container": ("nspawn",),
    "systemd_container_factory": ("nspawn",),
}
MARKERS = (
    "nix: uses Nix to build flake outputs (added automatically to tests using the flake fixture)",
    "docker: needs a Docker daemon (added automatically to tests using docker_image/docker_container)",
    "vm: boots virtual machines through libvirt (added automatically to tests using vm/vm_factory)",
    "portable: attaches systemd portable services in a guest (added automatically to tests using "
    "portable_service; the guest's fixture adds vm or nspawn)",
    "nspawn: boots systemd containers with systemd-nspawn (added automatically to tests using "
    "systemd_container/systemd_container_factory)",
    "flake(ref): test this flake reference instead of --flake, for one test, class or module",
    'flake_service(port, local="default", docker="docker", portable="portable", env=None): how the service '
    "fixture runs the service: the port it listens on, the flake attribute of each target, and its environment "
    "({port} in a value is the port of the local run)",
)
# fixtures of the plugin that need neither settings nor a session: using only these is not using the plugin
LIGHT_FIXTURES = frozenset({"http"})
USES_PLUGIN = pytest.StashKey[bool]()
USES_NIX = pytest.StashKey[bool]()  # a selected test builds with nix: only then does the header run it
FLAKE_FACT = pytest.StashKey[str]()  # "REF (locked: git rev ...)", a property of every test that uses the plugin
CONTROLLER_RUN = pytest.StashKey[Run]()  # the pytest-xdist run this process controls (its workers share it)
NIX_FACTS = pytest.StashKey[list[str]]()  # the controller's nix facts, found once
FACT_KEY = "pytest_flake_fact"  # node.workerinput[...]: the controller's FLAKE_FACT
# marker -> the xdist_group the plugin gives its tests under --dist loadgroup, in this order
XDIST_GROUPS = {"vm": "pytest-flake-vm", "nspawn": "pytest-flake-nspawn"}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-flake's own hooks (:mod:`pytest_flake.hooks`), for a conftest.py or a plugin to implement."""
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flake", "pytest-flake: integration tests of Nix flakes")
    for opt in OPTIONS:
        env = f" [env: {opt.env}]" if opt.env else ""
        default = f" [default: {opt.default}]" if opt.default not in (None, False) else ""
        if opt.kind == "bool":
            group.addoption(opt.flag, dest=opt.name, action="store_true", default=None,
                            help=f"{opt.help}{env}")
            group.addoption("--no-" + opt.flag[2:], dest=opt.name, action="store_false", default=None,
                            help=f"do not {opt.help} (wins over {opt.env or 'the environment'} and the ini file)")
            parser.addini(opt.name, f"{opt.help}{env}", type="bool", default=None)
        else:
            group.addoption(opt.flag, dest=opt.name, default=None, metavar=opt.metavar, choices=opt.choices,
                            help=f"{opt.help}{env}{default}")
            parser.addini(opt.name, f"{opt.help}{env}", default=None)
    group.addoption("--flake-doctor", action="store_true", default=False,
                    help="check Nix, Docker, libvirt, KVM and the VM image cache, print what to fix, and exit")


def _settings(config: pytest.Config) -> Settings:
    """The settings of this run; a bad value is a :class:`~pytest_flake.errors.UsageError`."""
    return Settings.resolve(
        option=lambda name: config.getoption(name, default=None),
        ini=lambda name: config.getini(name),
        invocation_dir=Path(config.invocation_params.dir),
        ini_dir=Path(config.inipath).parent if config.inipath else None,
    )


def _resolve_settings(config: pytest.Config) -> Settings:
    try:
        return _settings(config)
    except FlakeError as exc:
        raise pytest.UsageError(f"pytest-flake: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("flake_doctor", default=False):
        return None
    settings = _resolve_settings(config)
    return doctor.run(settings, print)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    try:
        config.stash[SETTINGS_KEY] = _settings(config)
    except CommandLineError as exc:  # a bad value typed on the command line fails at once
        raise pytest.UsageError(f"pytest-flake: {exc}") from None
    except FlakeError as exc:  # from env or ini: only a run that uses the plugin fails
        config.stash[SETTINGS_ERROR] = f"pytest-flake: {exc}"
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # a pytest-xdist worker: the run of its controller, and the facts it found
        run = Run.from_workerinput(workerinput)
        if run is not None:
            config.stash[RUN_KEY] = run
        if workerinput.get(FACT_KEY):
            config.stash[FLAKE_FACT] = str(workerinput[FACT_KEY])
    elif config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(config), "pytest-flake-xdist")
    _teardown_on_sigterm()


class XdistController:
    """Hooks of the pytest-xdist controller (registered only when xdist is installed).

    The controller owns the run directory its workers share (:class:`~pytest_flake.xdist.Run`):
    it names it after xdist's ``testrunuid``, hands it to each worker, and removes it at the end.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_configure_node(self, node: Any) -> None:
        run = self.config.stash.get(CONTROLLER_RUN, None)
        if run is None:
            run = self.config.stash[CONTROLLER_RUN] = Run.for_uid(str(node.workerinput["testrunuid"]))
        node.workerinput[WORKERINPUT_KEY] = run.workerinput()
        settings = self.config.stash.get(SETTINGS_KEY, None)
        if settings is not None and doctor.configured(settings):
            _nix_facts(self.config, settings)  # found once here, not once per worker
        fact = self.config.stash.get(FLAKE_FACT, None)
        if fact is not None:
            node.workerinput[FACT_KEY] = fact

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        run = self.config.stash.get(CONTROLLER_RUN, None)
        if run is not None:  # the workers have ended: their shared builds lose their GC roots now
            run.remove()


def distributing(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist controller that hands the tests to workers (and collects none)."""
    return not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("dsession")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _teardown_on_sigterm() -> None:
    """SIGTERM (a CI time limit, ``kill``) tears fixtures down like Ctrl-C does.

    Only when nobody else handles SIGTERM; SIGKILL cannot be caught, and what it leaves
    is swept by the next session.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What the settings say, without running anything (nix facts come after collection)."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or not doctor.configured(settings):
        return []
    lines = doctor.header(settings)
    if distributing(config):  # the workers print nothing: the controller says it all, from the settings
        lines += _nix_facts(config, settings)
    return ["pytest-flake: " + line for line in lines]


def _nix_facts(config: pytest.Config, settings: Settings) -> list[str]:
    """Nix facts, found once per process; the flake's locked revision becomes every test's FLAKE_FACT."""
    lines = config.stash.get(NIX_FACTS, None)
    if lines is None:
        lines = config.stash[NIX_FACTS] = doctor.nix_facts(settings)
        for line in lines:
            if line.startswith("flake locked: ") and settings.flake:
                config.stash[FLAKE_FACT] = f"{settings.flake} (locked: {line[len('flake locked: '):]})"
    return lines


def uses_plugin(item: pytest.Item) -> bool:
    """Whether a test uses a fixture of pytest-flake (other than the stand-alone ``http``)."""
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (getattr(info, "name2fixturedefs", None) or {}).items():
        if name in LIGHT_FIXTURES:
            continue
        if any(getattr(d.func, "__module__", "").startswith("pytest_flake.") for d in defs):
            return True
    return False


def uses_nix(item: pytest.Item) -> bool:
    """Whether a test builds with nix: the ``nix`` marker (the ``flake`` fixture adds it), or ``service``."""
    return item.get_closest_marker("nix") is not None or "service" in getattr(item, "fixturenames", ())


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """Nix facts (version, system, the flake's locked revision), only for a run that uses the plugin."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or not config.stash.get(USES_PLUGIN, False):
        return []
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller printed the facts
        return []
    if not config.stash.get(USES_NIX, False):
        lines = ["pytest-flake: " + line for line in doctor.nix_facts_known(settings)]
    else:
        lines = ["pytest-flake: " + line for line in _nix_facts(config, settings)]
    if not config.option.collectonly and not config.pluginmanager.has_plugin("dsession"):  # xdist: workers sweep
        try:
            ensure_session(config)  # the sweep of killed sessions runs now, so that the header says what it did
        except FlakeError as exc:  # each test that uses the plugin fails with it (its fixtures try again)
            lines.append(f"pytest-flake: {exc}")
        swept = config.stash.get(SWEPT_KEY, None)
        if swept is not None:
            lines.append(f"pytest-flake: {swept}")
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    end_session(session.config)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group markers, and -k/-m
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.flake_check:  # --flake-check: the flake's own outputs, as items
        from .flakecheck import add_items

        add_items(session, items)
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker in sorted({m for f, marks in FIXTURE_MARKERS.items() if f in names for m in marks}):
            item.add_marker(marker)
    if config.getoption("loadgroup", False) and settings is not None and settings.flake_xdist_group:
        _xdist_groups(items)


def _xdist_groups(items: list[pytest.Item]) -> None:
    """``--dist loadgroup``: one worker runs the VM tests (and one the systemd container tests).

    Each test marked ``vm`` (``nspawn``) without an ``xdist_group`` of its own gets
    ``xdist_group("pytest-flake-vm")`` (``pytest-flake-nspawn``): that worker boots the
    guests and keeps their warm states, and the others run the lighter tests.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = group_for({m.name for m in item.iter_markers()})
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def group_for(markers: set[str]) -> str | None:
    """The ``xdist_group`` the plugin gives a test with these markers: VMs first, then systemd containers."""
    for marker, group in XDIST_GROUPS.items():
        if marker in markers:
            return group
    return None


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter asks for pytest_report_collectionfinish
def pytest_collection_finish(session: pytest.Session) -> None:
    """A bad setting fails the run here, and only when a selected test uses the plugin."""
    config = session.config
    used = any(uses_plugin(item) for item in session.items)
    config.stash[USES_PLUGIN] = used
    config.stash[USES_NIX] = used and any(uses_nix(item) for item in session.items)
    error = config.stash.get(SETTINGS_ERROR, None)
    if used and error is not None:
        raise pytest.UsageError(error)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """The test's state lives on the test; an interrupted test (Ctrl-C, SIGTERM) is cleaned up here."""
    item.stash[TEST_STATE] = TestState(item)
    yield
    item.stash[TEST_STATE].cleanup()  # nothing left after a normal teardown


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    fact = item.config.stash.get(FLAKE_FACT, None)
    if fact is not None and uses_plugin(item):
        item.user_properties.append(("pytest-flake flake", fact))
    with flake_binding(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """A fixture wider than a test uses the ``flake`` marker of its own node and owns the processes it starts."""
    if request.scope == "function" or fixturedef.argname == "flake":
        yield
        return
    with flake_binding(request.node, owner=request.addfinalizer):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with flake_binding(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    _no_timeout_in_teardown(item)
    with flake_binding(item):
        yield
    state = item.stash.get(TEST_STATE, None)
    if state is not None:
        state.cleanup()


def _no_timeout_in_teardown(item: pytest.Item) -> None:
    """pytest-timeout: a test that timed out (or not) still gets its VMs, containers and processes removed.

    pytest-timeout's signal method fails the test where it hangs, then teardown runs; its timer
    may also cover teardown, and firing there would stop our teardown half-way and leave a
    domain or a container behind. So the timer ends where our teardown begins, for tests that
    use a resource of ours; each teardown step has a deadline of its own.
    """
    if not item.config.pluginmanager.hasplugin("timeout"):
        return
    names = set(getattr(item, "fixturenames", ()))
    if names & (set(FIXTURE_MARKERS) | {"service"}):
        item.config.hook.pytest_timeout_cancel_timer(item=item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    state = item.stash.get(TEST_STATE, None)
    if state is not None:
        state.reports[report.when] = report
        failed = report.failed and report.when in ("call", "setup")
        attach_evidence(item, report, list(state.collect_evidence()) if failed else [])
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, FlakeError) and not isinstance(excinfo.value, AssertionError) \
            and not (getattr(item, "plain_failure", False) and call.when == "call"):
        report.longrepr = describe_error(excinfo, Path(str(item.config.rootpath)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses ``service`` runs once per target of ``--flake-targets``, each with its markers."""
    if "service" not in metafunc.fixturenames:
        return
    from .service import target_markers

    settings = metafunc.config.stash.get(SETTINGS_KEY, None)
    targets = parse_targets(settings.flake_targets) if settings is not None else TARGETS
    host = settings.flake_portable_host if settings is not None else "vm"
    params = [pytest.param(t, id=t, marks=[getattr(pytest.mark, m) for m in target_markers(t, host)])
              for t in targets]
    metafunc.parametrize("service", params, indirect=True)
