"""Every guest, real or fake, complies with the protocol it is used as: member by member, parameter by parameter.

``pytest_flake.guest.Guest`` is what tests get (a VM, a systemd container); the portable
package asks less of a machine (``pytest_flake.portable.service.Guest``). Each class is
checked with :func:`inspect.signature` against the protocol: every member exists, and a
call the protocol allows (positional or by keyword, with or without the defaulted
arguments) is a call the class accepts. mypy checks the same statically in
:func:`_static_compliance`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from pytest_flake.guest import Guest, GuestCommands
from pytest_flake.nspawn import SystemdContainer
from pytest_flake.portable.service import Guest as PortableGuest
from pytest_flake.vm import VM
from tests.unit import test_guest, test_portable_image

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)


def protocol_members(protocol: type) -> dict[str, Any]:
    """Name -> the protocol's member (a function, a property, or ``None`` for an annotated attribute)."""
    members: dict[str, Any] = {name: None for name in getattr(protocol, "__annotations__", {})}
    for name, value in vars(protocol).items():
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
            members[name] = value
    return members


def call_problems(name: str, wanted: Callable[..., Any], given: Callable[..., Any]) -> list[str]:
    """Why a call that ``wanted``'s signature allows could fail on ``given`` (both unbound, ``self`` first)."""
    want = list(inspect.signature(wanted).parameters.values())[1:]
    have = list(inspect.signature(given).parameters.values())[1:]
    positional = [p for p in have if p.kind in POSITIONAL]
    by_name = {p.name: p for p in have if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    var_pos = any(p.kind == P.VAR_POSITIONAL for p in have)
    var_kw = any(p.kind == P.VAR_KEYWORD for p in have)
    problems: list[str] = []
    for index, param in enumerate(want):
        if param.kind in POSITIONAL and index >= len(positional) and not var_pos:
            problems.append(f"{name}: takes no positional argument {index + 1} ({param.name})")
            continue
        if param.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            match = by_name.get(param.name)
            if match is None and not var_kw:
                problems.append(f"{name}: no parameter named {param.name!r}")
                continue
            if match is not None and param.kind == P.POSITIONAL_OR_KEYWORD and index < len(positional) \
                    and positional[index].name != param.name:
                problems.append(f"{name}: argument {index + 1} is {positional[index].name!r}, not {param.name!r}")
            if param.default is not P.empty and match is not None and match.default is P.empty:
                problems.append(f"{name}: {param.name!r} has a default in the protocol but not here")
    wanted_names = {p.name for p in want}
    for param in have:
        if param.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD) or param.name in wanted_names:
            continue
        if param.default is P.empty:
            problems.append(f"{name}: extra parameter {param.name!r} without a default")
    return problems


def compliance_problems(cls: type, protocol: type) -> list[str]:
    problems: list[str] = []
    for name, member in protocol_members(protocol).items():
        found = inspect.getattr_static(cls, name, None)
        if member is None:  # an attribute: a class attribute, a property or an annotation in the MRO
            annotated = any(name in getattr(base, "__annotations__", {}) for base in cls.__mro__)
            if found is None and not annotated and not _set_in_init(cls, name):
                problems.append(f"{name}: missing")
        elif isinstance(member, property):
            if not isinstance(found, property):
                problems.append(f"{name}: not a property ({type(found).__name__})")
        elif found is None:
            problems.append(f"{name}: missing")
        elif not callable(found):
            problems.append(f"{name}: not a method")
        else:
            problems += call_problems(name, member, getattr(cls, name))
    return problems


def _set_in_init(cls: type, name: str) -> bool:
    init = cls.__dict__.get("__init__")
    return init is not None and f"self.{name} =" in inspect.getsource(init)


FULL_GUESTS: list[type] = [VM, SystemdContainer, test_guest.FakeGuest]
PORTABLE_GUESTS: list[type] = [*FULL_GUESTS, test_portable_image.FakeGuest, test_portable_image.SquashfsCheckingGuest]


@pytest.mark.parametrize("cls", FULL_GUESTS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_guest_protocol(cls: type) -> None:
    assert compliance_problems(cls, Guest) == []


@pytest.mark.parametrize("cls", FULL_GUESTS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_guest_commands_are_the_shared_ones(cls: type) -> None:
    """The NixOS-style commands come from GuestCommands, not from a copy that could drift."""
    assert issubclass(cls, GuestCommands)
    for name in ("succeed", "fail", "wait_until_succeeds", "wait_until_fails", "wait_for_unit",
                 "wait_for_open_port", "wait_for_closed_port"):
        assert getattr(cls, name) is getattr(GuestCommands, name), name
    assert compliance_problems(cls, GuestCommands) == []


@pytest.mark.parametrize("cls", PORTABLE_GUESTS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_portable_guest_protocol(cls: type) -> None:
    assert compliance_problems(cls, PortableGuest) == []


def test_the_portable_protocol_asks_nothing_a_guest_lacks() -> None:
    """Every machine that is a Guest can host a portable service."""
    full = protocol_members(Guest)
    for name, member in protocol_members(PortableGuest).items():
        assert name in full, name
        if member is not None:
            assert call_problems(name, member, full[name]) == [], name


def test_the_checker_sees_a_broken_signature() -> None:
    class Renamed(test_guest.FakeGuest):
        def url(self, port: int, path: str = "/") -> str:  # type: ignore[override]
            return ""

    class NoDefault(test_guest.FakeGuest):
        def journal(self, unit: str | None, lines: int = 200) -> str:  # type: ignore[override]
            return ""

    class ExtraRequired(test_guest.FakeGuest):
        def forward(self, guest_port: int, proto: str) -> int:  # type: ignore[override]
            return 0

    class NoCopy:
        name = "x"

        def run(self, cmd: str) -> Any:
            return None

    assert compliance_problems(Renamed, Guest) == ["url: no parameter named 'guest_port'",
                                                   "url: extra parameter 'port' without a default"]
    assert compliance_problems(NoDefault, Guest) == ["journal: 'unit' has a default in the protocol but not here"]
    assert compliance_problems(ExtraRequired, Guest) == ["forward: extra parameter 'proto' without a default"]
    assert compliance_problems(NoCopy, PortableGuest) == ["copy_to: missing"]


def _static_compliance(vm: VM, container: SystemdContainer, fake: test_guest.FakeGuest,
                       portable_fake: test_portable_image.FakeGuest) -> list[PortableGuest]:
    """Not run: mypy checks that each is assignable to its protocol."""
    guests: list[Guest] = [vm, container, fake]
    return [*guests, portable_fake]
