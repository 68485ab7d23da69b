"""What counts as a disk image for --vm-image (qemu-img's view, then partition tables and file systems)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_flake.errors import UsageError
from pytest_flake.images.disks import HINT, check_disk_image

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


@needs_qemu_img
def test_qcow2_is_a_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    assert check_disk_image(disk) == "qcow2"


def test_raw_with_a_partition_table_is_a_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    data = bytearray(1 << 20)
    data[510:512] = b"\x55\xaa"
    disk.write_bytes(bytes(data))
    assert check_disk_image(disk) == "raw"


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="mkfs.ext4 is not installed")
def test_raw_ext4_file_system_is_a_disk(tmp_path: Path) -> None:
    disk = tmp_path / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk), "4M"], check=True, capture_output=True)
    assert check_disk_image(disk) == "raw"


@pytest.mark.parametrize("content, kind, hint", [
    (b"hello, I am a text file\n", "a text file starting with 'hello, I am a text file'", HINT),
    (b"", "an empty file", HINT),
    (gzip.compress(b"\0" * 4096, mtime=0), "a gzip file (a docker-archive or tarball?)",
     f"decompress it first, or {HINT}"),
    (b"\0\1\2\3" * 1024, "a binary file starting with 00 01 02 03 00 01 02 03", HINT),
])
def test_other_files_are_refused_with_what_they_are(tmp_path: Path, content: bytes, kind: str, hint: str) -> None:
    path = tmp_path / "image"
    path.write_bytes(content)
    with pytest.raises(UsageError) as raised:
        check_disk_image(path)
    seen = "qemu-img sees raw data with" if shutil.which("qemu-img") else "it has no image format header and"
    assert str(raised.value) == (f"--vm-image {path} is not a disk image: {seen} no partition table or file "
                                 f"system (it is {kind}) ({hint})")


def test_without_qemu_img_the_bytes_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No qemu-img on the PATH: a qcow2 header still counts, a text file is still refused, as what it is."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 1020)
    assert check_disk_image(disk) == "qcow2"
    notes = tmp_path / "notes"
    notes.write_text("not a disk\n")
    with pytest.raises(UsageError, match="it has no image format header and no partition table .*it is a text file"):
        check_disk_image(notes)
