"""pytest-flake: integration tests of Nix flakes with pytest.

The fixtures (``flake``, ``http``, ``docker_image``, ``docker_container``, ``vm``,
``vm_factory``, ``systemd_container``, ``systemd_container_factory``, ``portable_service``)
come with the plugin; the classes they return
and the errors they raise are importable from here for type hints and ``pytest.raises``.
"""

from __future__ import annotations

from .errors import (
    BuildError,
    CheckFailed,
    CheckTimeout,
    DockerError,
    FlakeError,
    FlakeTimeout,
    InfrastructureError,
    MissingOutputError,
    MissingToolError,
    NixError,
    NspawnError,
    PortableError,
    UsageError,
    VMError,
)
from .guest import Guest, GuestCommands
from .httpcheck import HttpChecker, Response
from .nix import Build, Flake, FlakeWarning
from .process import Process

__version__ = "0.1.0"

__all__ = [
    "Build", "BuildError", "CheckFailed", "CheckTimeout", "DockerError", "Flake", "FlakeError", "FlakeTimeout",
    "FlakeWarning", "Guest", "GuestCommands",
    "HttpChecker", "InfrastructureError", "MissingOutputError", "MissingToolError", "NixError", "NspawnError",
    "PortableError",
    "Process", "Response", "UsageError", "VMError", "__version__",
]
