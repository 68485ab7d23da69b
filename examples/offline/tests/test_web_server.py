"""The example flake, checked end to end: what would otherwise be done by hand.

    pytest --flake=examples/offline --vm-image=debian examples/offline/tests

Written only against pytest-flake's public fixtures; copy it next to your own flake.
"""

from __future__ import annotations

import re

import pytest


def test_flake_has_the_four_outputs(flake):
    assert {"default", "docker", "web-service", "portable"} <= set(flake.outputs())


def test_server_runs_locally(flake, http):
    # nix build && ./result/bin/web-server &  curl http://127.0.0.1:PORT
    server = flake.run(port=0)  # a free port, passed to the server as $PORT
    http.get(server.url("/")).expect(200, contains="web-server 1.0")
    http.get(server.url("/cgi-bin/info")).expect(200, json={"name": "web-server", "version": "1.0"})


def test_unit_starts_the_built_package(flake):
    # nix build .#web-service && cat result
    unit = flake.build("web-service").out.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    assert exec_start is not None, unit
    assert exec_start.group(1) == f"{flake.build().out}/bin/web-server"


def test_docker_image_answers(docker_container, http):
    # nix build .#docker && docker load < result && docker run -p 3031 web-server:TAG && curl
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/")).expect(200, contains="web-server 1.0")
    assert container.host.file("/nix/store").is_directory


def test_portable_service_in_a_vm(vm, portable_service, http):
    # scp web-server_1.0.raw vm: && portablectl attach --now ... && curl, then reattach
    service = portable_service(vm, "portable")
    assert service.name == "web-server_1.0"
    assert service.is_active()
    info = vm.url(3031, "/cgi-bin/info")
    http.get(info, retry_for=30).expect(200, json={"version": "1.0", "portable": "web-server_1.0.raw"})

    service.reattach("portable-next")
    http.get(info, retry_for=30).expect(200, json={"version": "1.1", "portable": "web-server_1.1.raw"})

    service.detach()
    assert not service.is_active()
    assert vm.run("systemctl is-active web-server.service").stdout.strip() != "active"


# The same service in every form, with one body: [local], [docker] and [portable].
NEXT = {"local": "web-server-next", "docker": "docker-next", "portable": "portable-next"}


@pytest.mark.flake_service(3031)
def test_every_form_of_the_service(service, http):
    # local:    nix build && ./result/bin/web-server
    # docker:   nix build .#docker && docker load < result && docker run -p 127.0.0.1::3031
    # portable: nix build .#portable && scp to a VM && portablectl attach --now
    http.get(service.url("/"), retry_for=30).expect(200, contains="web-server 1.0")
    http.get(service.url("/cgi-bin/info")).expect(200, json={"version": "1.0"})
    if service.vm is not None:  # the guest of the portable target
        service.vm.wait_for_unit("web-server.service")
        assert "web-server" in service.logs()

    # then change the code: restart / a new container on the same port / portablectl reattach
    service.upgrade(NEXT[service.target])
    http.get(service.url("/cgi-bin/info"), retry_for=30).expect(200, json={"version": "1.1"})
