"""pytest-flake's own hooks: what a ``conftest.py`` or a plugin may change before a guest starts.

Each hook gets a mutable object and edits it in place; what it returns is ignored. Every
implementation is called (in pytest's order: plugins, then conftest files), so several may
each add their part. ``plugin.pytest_addhooks`` registers them; the fixtures hand each
component a plain callable that calls the hook, so no component imports pytest.

Implement one in a ``conftest.py``::

    def pytest_flake_container_run(image, kwargs):
        kwargs["mem_limit"] = "256m"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element


@pytest.hookspec
def pytest_flake_domain_xml(name: str, domain: Element) -> None:
    """Edit a VM's libvirt domain XML before libvirt defines it (``vm``, ``vm_factory``, ``service``).

    ``name`` is the domain's name (the session id and a number); ``domain`` is the root
    ``<domain>`` element (``xml.etree.ElementTree``), to change in place: add a device, a
    ``<memoryBacking>``, a QEMU argument under ``{http://libvirt.org/schemas/domain/qemu/1.0}commandline``.
    The disk, the serial console, the network and the SMBIOS credentials are what pytest-flake
    reaches the guest through: leave them as they are.
    """


@pytest.hookspec
def pytest_flake_container_run(image: str, kwargs: dict[str, Any]) -> None:
    """Edit the arguments a Docker container is created with (``docker_container``, ``service``).

    ``image`` is the image's reference (a tag or an id); ``kwargs`` are the keyword arguments
    of the Docker SDK's ``client.containers.create(image, **kwargs)`` (the ones of
    ``containers.run``): ``command``, ``environment``, ``name``, ``labels``, ``ports``,
    ``detach``, ``init``, and any the SDK takes (``mem_limit``, ``cap_add``, ``volumes``,
    ``extra_hosts``...), changed in place. Keep ``name`` and ``labels`` (the sweep finds a killed
    session's containers by them) and ``ports`` (published on 127.0.0.1; choose them with
    ``docker_container(ports=...)``).
    """


@pytest.hookspec
def pytest_flake_nspawn_command(name: str, argv: list[str]) -> None:
    """Edit the ``systemd-nspawn`` command line of a systemd container before it boots.

    ``name`` is the machine's name (``--machine=``); ``argv``, changed in place, starts with
    ``systemd-nspawn`` and holds options only, so appending one (``--setenv=K=V``, ``--bind-ro=SRC:DST``,
    ``--property=MemoryMax=512M``) works. Keep ``--boot``, ``--directory``, ``--private-network``
    and ``--console=pipe``: pytest-flake boots, reaches and watches the container through them.
    """
