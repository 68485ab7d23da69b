"""Docker images built by a flake, and containers run from them on loopback ports.

The seed workflow ``nix build .#docker && docker load < result && docker run -p
3031:3031 web-server:TAG && curl ...`` as plain Python, with no pytest in sight:

* :mod:`.archive`: what an image archive (every ``dockerTools`` shape) holds, read without
  a daemon (:func:`inspect_archive`).
* :mod:`.daemon`: finding and connecting to the daemon (:func:`endpoint`), loading images
  only when it does not hold them (:class:`Docker`).
* :mod:`.image`: an image the daemon holds (:class:`Image`) and the build it came from (:class:`Built`).
* :mod:`.container`: a container on 127.0.0.1 ports, removed on exit (:class:`Container`).
* :mod:`.exec_backend`: the testinfra adapter behind ``Container.host``.
* :mod:`.maintenance`: the sweep of what killed sessions left, and the doctor's checks.

The Docker SDK is imported lazily (``pytest-flake[docker]``); importing this package does not.
"""

from __future__ import annotations

from .._host import port_answers
from .archive import KIND_SCRIPT, KIND_TAR, ZSTD_HINT, Archive, forget_inspections, inspect_archive
from .container import Container, port_key
from .daemon import (
    CONTEXT_SOURCE,
    DEFAULT_ENDPOINT,
    START_HINT,
    Docker,
    describe_endpoint,
    endpoint,
    tls_config,
)
from .exec_backend import container_shell, exec_backend
from .image import Built, Image
from .maintenance import DockerComponent, component, doctor, sweep

__all__ = [
    "CONTEXT_SOURCE", "DEFAULT_ENDPOINT", "KIND_SCRIPT", "KIND_TAR", "START_HINT", "ZSTD_HINT", "Archive",
    "Built", "Container", "Docker", "DockerComponent", "Image", "component", "container_shell", "describe_endpoint",
    "doctor", "endpoint", "exec_backend", "forget_inspections", "inspect_archive", "port_answers", "port_key",
    "sweep", "tls_config",
]
