"""The components of pytest-flake that own resources, and the one registry of them.

A component (local processes, Docker, VMs, systemd containers) makes resources that a
killed session may leave behind, and has things a pre-flight check should look at. It
is a :class:`Component`: ``sweep(dead_ids, state_root)`` removes what the dead sessions
``dead_ids`` left (every resource carries its session's id) and says what it did, one short
phrase per kind of resource (``2 containers stopped``), ``doctor(settings)`` returns
``(ok, line)`` checks. The plugin's sweep (:func:`pytest_flake.sweep.sweep_dead_sessions`)
and the doctor (:mod:`pytest_flake.doctor`) both walk :func:`components`, in the order of
:data:`NAMES`.

Each component lives with what it sweeps (``<package>.maintenance``; ``process`` and ``ssh`` in
:mod:`pytest_flake.process` and :mod:`pytest_flake.tunnel`) and provides ``component(settings) ->
Component``. The registry imports it only when a method is called, so a run that never
sweeps nor asks the doctor imports no Docker SDK and no libvirt; an ``ImportError`` (an
extra that is not installed) reaches the caller, which says which extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .config import Settings

Check = tuple[bool, str]


@runtime_checkable
class Component(Protocol):
    """A part of pytest-flake that owns resources: swept after a killed session, checked by the doctor."""

    name: str

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        """Remove what the dead sessions ``dead_ids`` left (``state_root``: the state directory they shared);
        what was done, one phrase per kind of resource (``2 containers stopped``), nothing when nothing was left."""

    def doctor(self, settings: Settings) -> list[Check]:
        """Pre-flight checks: each ``(ok, line)`` says what is fine, or what to do."""


# name -> the module whose ``component(settings)`` makes it, in sweep and doctor order
REGISTRY: tuple[tuple[str, str], ...] = (
    ("process", "pytest_flake.process"),
    ("ssh", "pytest_flake.tunnel"),
    ("docker", "pytest_flake.docker.maintenance"),
    ("vm", "pytest_flake.vm.maintenance"),
    ("nspawn", "pytest_flake.nspawn.maintenance"),
)
NAMES: tuple[str, ...] = tuple(name for name, _ in REGISTRY)


def _load(name: str, module_name: str, settings: Settings | None) -> Component:
    module: Any = importlib.import_module(module_name)
    made = module.component(settings)
    if not isinstance(made, Component) or made.name != name:
        raise TypeError(f"{module_name}.component() made {made!r}, which is not the Component {name!r}")
    return made


class LazyComponent:
    """A registry entry: imports its module and makes the component on first use."""

    def __init__(self, name: str, module: str, settings: Settings | None) -> None:
        self.name = name
        self.module = module
        self._settings = settings
        self._made: Component | None = None

    def load(self) -> Component:
        """The component itself (imports its module: an ``ImportError`` names a missing extra)."""
        if self._made is None:
            self._made = _load(self.name, self.module, self._settings)
        return self._made

    def sweep(self, dead_ids: Sequence[str], state_root: Path) -> list[str]:
        return self.load().sweep(dead_ids, state_root)

    def doctor(self, settings: Settings) -> list[Check]:
        return self.load().doctor(settings)

    def __repr__(self) -> str:
        return f"<component {self.name} ({self.module})>"


def components(settings: Settings | None = None, names: Sequence[str] | None = None) -> list[Component]:
    """The registered components, in :data:`NAMES` order (or only ``names``), made for ``settings``.

    Nothing is imported until a component's ``sweep`` or ``doctor`` runs.
    """
    wanted = NAMES if names is None else tuple(names)
    unknown = [name for name in wanted if name not in NAMES]
    if unknown:
        raise ValueError(f"no such component: {', '.join(unknown)} (known: {', '.join(NAMES)})")
    return [LazyComponent(name, module, settings) for name, module in REGISTRY if name in wanted]


__all__ = ["NAMES", "REGISTRY", "Check", "Component", "LazyComponent", "components"]
