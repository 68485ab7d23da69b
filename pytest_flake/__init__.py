"""pytest-flake: integration tests of Nix flakes with pytest.

The fixtures (``flake``, ``http``, ``docker_image``, ``docker_container``, ``vm``,
``vm_factory``, ``systemd_container``, ``systemd_container_factory``, ``portable_service``)
come with the plugin; the classes they return
and the errors they raise are importable from here for type hints and ``pytest.raises``.
"""

from __future__ import annotations

from .errors import (
    BuildCancelled,
    BuildError,
    CheckFailed,
    CheckTimeout,
    CommandLineError,
    DockerError,
    EvalError,
    FlakeError,
    FlakeTimeout,
    FlakeWarning,
    GiveUp,
    InfrastructureError,
    MissingOutputError,
    MissingToolError,
    NixError,
    NotReady,
    NspawnError,
    PortableError,
    ProcessError,
    ProcessExited,
    SSHError,
    UsageError,
    VMError,
)
from .guest import Guest, GuestCommands
from .httpcheck import HttpChecker, Response
from .nix import Build, Flake
from .process import Process

__version__ = "0.1.0"

__all__ = [
    "Build", "BuildCancelled", "BuildError", "CheckFailed", "CheckTimeout", "CommandLineError", "DockerError",
    "EvalError", "Flake", "FlakeError", "FlakeTimeout", "FlakeWarning", "GiveUp", "Guest", "GuestCommands",
    "HttpChecker", "InfrastructureError", "MissingOutputError", "MissingToolError", "NixError", "NotReady",
    "NspawnError", "PortableError", "Process", "ProcessError", "ProcessExited", "Response", "SSHError",
    "UsageError", "VMError", "__version__",
]
