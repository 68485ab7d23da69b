"""Every image shape real flakes produce, from the conformance flake, through the public fixtures.

Portable services: the ``.raw`` file as the output itself (nixpkgs' portableService of
2022, the seed's), a directory holding one ``NAME_VERSION.raw`` (portableService today),
os-release under ``usr/lib``, and a directory image. Docker: ``buildLayeredImage`` with
gzip and with zstd, ``streamLayeredImage``, and ``buildImage``'s legacy layout. Outputs
that are not images get a one-line error that says what they are and what to pass.

The portable tests need a VM (``vm_image = "debian"`` in the suite's ini); docker ones
the daemon DOCKER_HOST names.
"""

from __future__ import annotations

import re
import shlex

import pytest

from pytest_flake.errors import PortableError, UsageError

pytestmark = pytest.mark.flake("path:tests/flakes/conformance")

STORE_HASH = re.compile(r"[0-9a-df-np-sv-z]{32}-")


# --- portable services ------------------------------------------------------------------------------------
# attr -> (NAME_VERSION, prefix, guest port), as images.nix builds them
PORTABLE = {
    "portable-raw": ("raw-server_20220227", "raw-server", 8081),
    "portable-dir": ("dir-server_1.0", "dir-server", 8082),
    "portable-usrlib": ("usrlib-server_1.0", "usrlib-server", 8083),
    "portable-tree": ("tree-server_1.0", "tree-server", 8084),
}


@pytest.mark.parametrize("attr", list(PORTABLE))
def test_portable_shape(attr, vm, portable_service, flake, http):
    name, prefix, port = PORTABLE[attr]
    service = portable_service(vm, attr)
    assert (service.name, service.prefix) == (name, prefix)
    assert not STORE_HASH.search(service.name) and not STORE_HASH.search(service.prefix)
    assert service.units == [f"{prefix}.service"]
    assert service.attached_state() == "running-runtime"
    # the guest holds NAME_VERSION.raw whatever the shape, and nothing else of it
    assert vm.run(f"ls /root | grep -F {shlex.quote(prefix)}").stdout.split() == [f"{name}.raw"]
    assert service.environment()["PORTABLE"] == f"{name}.raw"
    # what the running program itself sees
    version = name.split("_", 1)[1]
    http.get(vm.url(port, "/cgi-bin/info"), retry_for=30).expect(
        200, json={"name": prefix, "version": version, "portable": f"{name}.raw"})
    service.detach()
    assert service.attached_state() == "detached"


def test_bare_raw_output_is_the_image_file(flake):
    """The 2022 shape: the output is the .raw file itself, with the store hash in its name."""
    out = flake.build("portable-raw").out
    assert out.is_file() and STORE_HASH.match(out.name) and out.name.endswith("-raw-server_20220227.raw")


# --- docker -----------------------------------------------------------------------------------------------
# attr -> (tag, file name of the output, as the builder names it)
DOCKER = {
    "docker-gzip": ("gzip-server:1.0", "gzip-server.tar.gz"),
    "docker-zstd": ("zstd-server:1.0", "zstd-server.tar.zst"),
    "docker-stream": ("stream-server:1.0", "stream-stream-server"),
    "docker-legacy": ("legacy-server:1.0", "docker-image-legacy-server.tar.gz"),
}


@pytest.mark.parametrize("attr", list(DOCKER))
def test_docker_shape(attr, docker_image, docker_container, http):
    tag, filename = DOCKER[attr]
    image = docker_image(attr)
    assert image.tag == tag and image.id.startswith("sha256:")
    assert image.build is not None and image.build.out.name.endswith(filename)
    container = docker_container(image, ports=[8080])
    name = tag.split(":")[0]
    http.get(container.url(8080, "/")).expect(200, contains=f"{name} 1.0")
    http.get(container.url(8080, "/cgi-bin/info")).expect(200, json={"name": name, "version": "1.0", "portable": ""})
    assert "url:/cgi-bin/info" in container.wait_for_logs("url:/cgi-bin/info")


# --- not images ---------------------------------------------------------------------------------------------
IMAGE_HINT = "pass a portableService output, a NAME_VERSION.raw file or an image directory (with os-release)"
DOCKER_HINT = ("a docker output is a file from dockerTools.buildImage/buildLayeredImage (a .tar.gz) "
               "or the script of streamLayeredImage")


@pytest.mark.parametrize(("attr", "what"), [
    ("not-image-program", "it is a directory without usr/lib/os-release or etc/os-release and without a .raw file "
                          f"(it has: bin/, share/) ({IMAGE_HINT})"),
    ("not-image-unit", "it is a systemd unit file (put the unit in an image (portableService { units = [ ... ]; }); "
                       f"{IMAGE_HINT})"),
    ("docker-gzip", "it is a gzip file (a docker-archive or tarball?) (load it with docker_image/docker_container "
                    f"instead; {IMAGE_HINT})"),
    ("docker-stream", "it is a script (#!{busybox}/bin/busybox sh) (a streamLayeredImage script goes to "
                      f"docker_image/docker_container; {IMAGE_HINT})"),
], ids=["program", "unit", "docker-archive", "stream-script"])
def test_portable_service_of_what_is_not_an_image(attr, what, vm, portable_service, flake):
    out = flake.build(attr).out
    with pytest.raises(PortableError) as raised:
        portable_service(vm, attr)
    message = str(raised.value)
    expected = re.escape(f"{out} is not a portable service image: {what}")
    assert re.fullmatch(expected.replace(re.escape("{busybox}"), "/nix/store/[0-9a-z]{32}-busybox-static"), message)
    assert "\n" not in message
    assert vm.run("ls /root | grep -c '\\.raw$'").stdout.strip() == "0"  # nothing reached the guest


def test_portable_service_of_two_images(vm, portable_service, flake):
    out = flake.build("not-image-two-raws").out
    with pytest.raises(PortableError) as raised:
        portable_service(vm, "not-image-two-raws")
    assert str(raised.value) == (f"{out} holds 2 portable images (dir-server_1.0.raw, dir-server_1.1.raw), not one "
                                 "(pass the path of one of them)")


@pytest.mark.parametrize(("attr", "what"), [
    ("portable-raw", "it is a squashfs image (a portable service image?)"),
    ("not-image-unit", "it is a systemd unit file"),
    ("not-image-program", "it is a directory (bin/, share/)"),
], ids=["portable-raw", "unit", "program"])
def test_docker_image_of_what_is_not_an_image(attr, what, docker_image, flake):
    out = flake.build(attr).out
    with pytest.raises(UsageError) as raised:
        docker_image(attr)
    assert str(raised.value) == f"{out} is not a Docker image archive: {what} ({DOCKER_HINT})"
