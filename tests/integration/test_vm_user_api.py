"""A user's file: only the vm, vm_factory and portable_service API of the design notes."""

from __future__ import annotations

import re
import subprocess

import pytest

pytestmark = pytest.mark.flake("examples/offline")


def test_guest_basics(vm, tmp_path):
    # the name is the guest's libvirt domain (running while the test runs), named after the session
    assert re.fullmatch(r"pf-[0-9a-f]+-vm-[0-9]+", vm.name), vm.name
    state = subprocess.run(["virsh", "domstate", vm.name], capture_output=True, text=True, check=False)
    assert (state.returncode, state.stdout.strip()) == (0, "running"), state.stderr
    result = vm.run("uname -s")
    assert result.rc == 0 and result.stdout.strip() == "Linux"
    assert vm.run("exit 3").rc == 3
    assert vm.host.file("/etc/os-release").exists
    assert vm.host.service("systemd-journald").is_running
    local = tmp_path / "hello.txt"
    local.write_text("hello from the host\n")
    vm.copy_to(local, "/root/hello.txt")
    assert vm.host.file("/root/hello.txt").content_string == "hello from the host\n"
    assert "Linux version" in vm.console_log() or "login" in vm.console_log()


def test_forward_a_guest_port(vm, http):
    vm.run("mkdir -p /srv/www && echo served-from-the-guest > /srv/www/index.html")
    assert vm.run("systemd-run --unit=pf-web busybox httpd -f -p 8080 -h /srv/www").rc == 0
    port = vm.forward(8080)
    assert vm.url(8080, "/index.html") == f"http://127.0.0.1:{port}/index.html"
    http.get(vm.url(8080, "/index.html"), retry_for=30).expect(200, contains="served-from-the-guest")


def test_factory_with_resources(vm_factory):
    small = vm_factory(memory=768, cpus=1)
    memory_kib = int(small.run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
    assert 600 * 1024 < memory_kib <= 768 * 1024


def test_portable_lifecycle(vm, portable_service, http):
    service = portable_service(vm, "portable")
    assert (service.name, service.prefix) == ("web-server_1.0", "web-server")
    assert "web-server.service" in service.units
    assert service.is_active("web-server.service")
    assert "active (running)" in service.status()
    http.get(vm.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
    assert "Started web-server.service" in service.journal()
    service.reattach("portable-next")
    http.get(vm.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.1")
    service.detach()
    assert not service.is_active()
