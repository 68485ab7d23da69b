"""docker_container waits for an image's HEALTHCHECK to say healthy; unhealthy is an error at once.

The images are the offline example's web server with a HEALTHCHECK added by ``docker commit``
(no registry, no Dockerfile build): the check runs the image's own busybox.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_flake.docker import Container, Docker, Image
from pytest_flake.errors import DockerError
from pytest_flake.nix import Flake

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
pytestmark = [pytest.mark.flake(f"path:{EXAMPLE}"), pytest.mark.docker]


@pytest.fixture
def with_healthcheck(flake: Flake, docker_image: Callable[..., Image], flake_docker: Docker
                     ) -> Iterator[Callable[..., tuple[str, str, str]]]:
    """Factory: an image of the web server whose HEALTHCHECK runs ``busybox ARGS``; -> (tag, busybox, server)."""
    image = docker_image("docker")
    server = str(flake.build("default").out / "bin" / "web-server")
    found = re.search(r"/nix/store/[^/\s]+-busybox-static/bin/busybox", Path(server).read_text())
    assert found, "the web server script names its busybox"
    busybox = found.group(0)
    made: list[str] = []

    def make(check: list[str], retries: int = 2) -> tuple[str, str, str]:
        tag = f"pf-health-{secrets.token_hex(4)}"
        base = flake_docker.client.containers.create(image.ref)  # never started: its config is the image's
        try:
            test = ", ".join(f'"{arg}"' for arg in [busybox, *check])
            base.commit(repository=tag, tag="1", changes=[
                f"HEALTHCHECK --interval=1s --timeout=5s --retries={retries} CMD [{test}]"])
        finally:
            base.remove(force=True)
        made.append(f"{tag}:1")
        return f"{tag}:1", busybox, server

    yield make
    for tag in made:
        flake_docker.client.images.remove(tag, force=True)


def test_container_is_ready_when_healthy(with_healthcheck: Callable[..., tuple[str, str, str]],
                                         docker_container: Callable[..., Container], flake_docker: Docker) -> None:
    tag, busybox, server = with_healthcheck(["test", "-e", "/healthy"], retries=8)
    # the port answers at once; the check passes only after 3 s
    command = [busybox, "sh", "-c", f"({busybox} sleep 3; {busybox} touch /healthy) & exec {server}"]
    container = docker_container(tag, ports=[3031], command=command)
    state = flake_docker.client.containers.get(container.id).attrs["State"]
    assert state["Health"]["Status"] == "healthy"


def test_unhealthy_container_is_an_error_naming_the_check(with_healthcheck: Callable[..., tuple[str, str, str]],
                                                          docker_container: Callable[..., Container]) -> None:
    tag, busybox, server = with_healthcheck(["sh", "-c", "echo database unreachable; exit 1"])
    with pytest.raises(DockerError) as raised:
        docker_container(tag, ports=[3031])
    message = str(raised.value)
    assert re.fullmatch(rf"container pf-\S+ \({re.escape(tag)}\) is unhealthy: its HEALTHCHECK failed 2 time\(s\) in "
                        r"a row \(the last health check outputs and the container's logs follow\)", message), message
    assert "health check: database unreachable" in "\n".join(getattr(raised.value, "__notes__", []))
