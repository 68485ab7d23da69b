"""Systemd containers: a fast second home for portable services (systemd-nspawn).

``trees`` (OS trees: ``debian``, a directory, a tarball), ``machine`` (boot, exec, copy),
``relay`` (127.0.0.1 into the container's private network), ``loops`` (the host's loop
devices left as found), ``maintenance`` (sweep of killed sessions, doctor). Never imports pytest.
"""

from __future__ import annotations

from ..images import Tree
from .machine import ContainerPool, SystemdContainer
from .maintenance import doctor, sweep, unavailable
from .trees import resolve_tree

__all__ = ["ContainerPool", "SystemdContainer", "Tree", "doctor", "resolve_tree", "sweep", "unavailable"]
