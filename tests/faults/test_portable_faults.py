"""Portable images changed under a running guest, for real (a systemd container, real portablectl)."""

from __future__ import annotations

import pytest

from pytest_flake.errors import PortableError

pytestmark = pytest.mark.flake("path:examples/offline")


def test_the_attached_image_replaced_on_disk_before_reattach(systemd_container, portable_service, http):
    """The guest's copy of 1.0 is overwritten with junk while attached: the reattach to 1.1 still works
    (systemd reads the attached image through its loop device, not the file), and so does the clean-up."""
    guest = systemd_container
    service = portable_service(guest, "portable")
    http.get(guest.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.0")
    guest.succeed(f"echo junk > {service.remote_path}.new && mv {service.remote_path}.new {service.remote_path}")
    assert guest.succeed(f"cat {service.remote_path}").strip() == "junk"
    service.reattach("portable-next")
    http.get(guest.url(3031, "/"), retry_for=30).expect(200, contains="web-server 1.1")
    assert service.is_active()
    service.detach()
    assert guest.succeed("portablectl list --no-legend || true").strip() == ""


def test_a_junk_image_attached_fails_in_one_line(systemd_container, portable_service, tmp_path):
    """A file that is no image, given where an image is expected: refused before portablectl, by name."""
    junk = tmp_path / "web-server_9.9.raw"
    junk.write_text("not a squashfs\n")
    with pytest.raises(PortableError) as refused:
        portable_service(systemd_container, junk)
    message = str(refused.value)
    assert message.startswith(f"{junk} is not a portable service image: it is a text file starting with "
                              "'not a squashfs'"), message
    assert systemd_container.succeed("portablectl list --no-legend || true").strip() == ""
