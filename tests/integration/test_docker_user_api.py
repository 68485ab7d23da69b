"""Written as a user of pytest-flake would, against DESIGN.md's public docker API only.

Run on its own with ``pytest --flake examples/offline tests/integration/test_docker_user_api.py``;
in this suite the module's ``flake`` marker points at the same example.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.flake(f"path:{Path(__file__).resolve().parents[2] / 'examples' / 'offline'}")


def test_image_is_loaded_with_its_tag(docker_image):
    image = docker_image("docker")
    assert image.tag == "web-server:1.0"
    assert image.id.startswith("sha256:")
    assert image.build.out.exists()
    assert docker_image("docker").id == image.id


def test_web_server_answers(docker_image, docker_container, http):
    container = docker_container(docker_image(), ports=[3031])
    http.get(container.url(3031)).expect(200, contains="web-server 1.0")
    info = http.get(container.url(3031, "/cgi-bin/info")).expect(200).json()
    assert info["name"] == "web-server"


def test_attr_straight_to_container(docker_container, http):
    container = docker_container("docker", ports=(3031,), env={"GREETING": "hello"})
    assert container.name and container.id
    response = http.get(f"http://127.0.0.1:{container.port(3031)}/")
    response.expect(status=200, contains="1.0")


def test_inside_the_container(docker_container):
    container = docker_container("docker", ports=[3031], env={"GREETING": "hello"})
    host = container.host
    assert host.file("/nix/store").is_directory
    assert host.check_output("echo $GREETING") == "hello"
    assert host.run("exit 3").rc == 3
    assert host.check_output("echo ok") == "ok"


def test_upgrade_to_next_version(docker_image, docker_container, http):
    old = docker_container("docker", ports=[3031])
    http.get(old.url(3031)).expect(200, contains="web-server 1.0")
    old.wait_for_logs("url:/")  # busybox httpd -vv logs each request, just after it answered
    old.stop()
    new = docker_container(docker_image("docker-next"), ports=[3031])
    http.get(new.url(3031)).expect(200, contains="web-server 1.1")
    assert "url:/" in new.wait_for_logs("url:/")
    assert "url:/" in old.logs()  # kept after the old one stopped
