"""Checks of the web-server flake: pytest --flake=examples/web-server examples/web-server/tests"""

from __future__ import annotations

import re


def test_outputs(flake):
    assert {"default", "docker", "web-service", "portable"} <= set(flake.outputs())


def test_runs_locally(flake, http):
    server = flake.run(port=0)
    http.get(server.url("/")).expect(200, contains="web-server 1.0")
    http.get(server.url("/info")).expect(200, json={"version": "1.0"})


def test_unit_points_into_the_package(flake):
    unit = flake.build("web-service").out.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    assert exec_start and exec_start.group(1) == f"{flake.build().out}/bin/web-server"


def test_docker_image(docker_container, http):
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/info")).expect(200, json={"version": "1.0"})


def test_portable_service(vm, portable_service, http):
    service = portable_service(vm, "portable")
    assert service.is_active()
    http.get(vm.url(3031, "/info"), retry_for=30).expect(200, json={"portable": f"{service.name}.raw"})
