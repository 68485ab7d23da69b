"""Image archive inspection, with small archives made here: no daemon needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pytest_flake.docker import KIND_SCRIPT, KIND_TAR, inspect_archive
from pytest_flake.errors import DockerError, UsageError

CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Cmd": ["/bin/server"], "ExposedPorts": {"3031/tcp": {}, "53/udp": {}}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]},
}


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_archive(manifest_last: bool = False, tags: list[str] | None = None, with_manifest: bool = True,
                 with_config: bool = True) -> tuple[bytes, str]:
    """A docker-archive as bytes (uncompressed) and the image id it holds."""
    config = json.dumps(CONFIG).encode()
    digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{digest}.json", "RepoTags": ["web-server:1.0"] if tags is None else tags,
                            "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if with_manifest and not manifest_last:
            _add(archive, "manifest.json", manifest)
        _add(archive, "aaa/layer.tar", b"\0" * 1024)
        _add(archive, "bbb/layer.tar", b"\0" * 1024)
        if with_config:
            _add(archive, f"{digest}.json", config)
        if with_manifest and manifest_last:
            _add(archive, "manifest.json", manifest)
    return buffer.getvalue(), f"sha256:{digest}"


@pytest.mark.parametrize("manifest_last", [False, True], ids=["manifest-first", "manifest-last"])
def test_plain_tar(tmp_path: Path, manifest_last: bool) -> None:
    data, image_id = make_archive(manifest_last=manifest_last)
    path = tmp_path / "image.tar"
    path.write_bytes(data)
    archive = inspect_archive(path)
    assert archive.kind == KIND_TAR and archive.compression == ""
    assert archive.id == image_id
    assert archive.tags == ("web-server:1.0",)
    assert archive.diff_ids == ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
    assert archive.exposed_ports == ["3031/tcp", "53/udp"]


def test_gzip_archive(tmp_path: Path) -> None:
    data, image_id = make_archive(manifest_last=True)
    path = tmp_path / "docker-image-web-server.tar.gz"
    path.write_bytes(gzip.compress(data))
    archive = inspect_archive(path)
    assert (archive.kind, archive.compression, archive.id) == (KIND_TAR, "gzip", image_id)
    assert archive.what == "a gzip docker-archive"
    with archive.stream() as chunks:
        assert gzip.decompress(b"".join(chunks)) == data


def test_untagged_archive(tmp_path: Path) -> None:
    data, image_id = make_archive(tags=[])
    path = tmp_path / "image.tar"
    path.write_bytes(data)
    assert inspect_archive(path).tags == ()


def test_directory_with_one_archive_inside(tmp_path: Path) -> None:
    data, image_id = make_archive()
    (tmp_path / "image.tar.gz").write_bytes(gzip.compress(data))
    assert inspect_archive(tmp_path).id == image_id


def test_stream_script(tmp_path: Path) -> None:
    """streamLayeredImage's output is a script that writes the archive to stdout."""
    data, image_id = make_archive(manifest_last=True)
    (tmp_path / "payload.tar").write_bytes(data)
    script = tmp_path / "stream-web-server"
    script.write_text(f"#!/bin/sh\nexec cat {tmp_path / 'payload.tar'}\n")
    script.chmod(0o755)
    archive = inspect_archive(script)
    assert (archive.kind, archive.id, archive.tags) == (KIND_SCRIPT, image_id, ("web-server:1.0",))
    assert archive.what == "a streamLayeredImage script"
    with archive.stream() as chunks:
        assert b"".join(chunks) == data


def test_failing_stream_script(tmp_path: Path) -> None:
    script = tmp_path / "stream"
    script.write_text("#!/bin/sh\necho 'cannot read conf.json' >&2\nexit 4\n")
    script.chmod(0o755)
    with pytest.raises(DockerError, match="failed with exit code 4") as raised:
        inspect_archive(script)
    assert "cannot read conf.json" in "".join(raised.value.__notes__)


def test_script_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "stream"
    script.write_text("#!/bin/sh\ncat x\n")
    with pytest.raises(UsageError, match="not executable"):
        inspect_archive(script)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x7fELF\x02\x01\x01" + b"\0" * 100, "an ELF executable"),
        (b"hsqs" + b"\0" * 100, "a squashfs image"),
        (b"[Unit]\nDescription=web-server\n\n[Service]\nExecStart=/nix/store/x/bin/web-server\n", "a systemd unit"),
        (b"hello world\n", "a text file starting with 'hello world'"),
        (b"", "an empty file"),
        (b"QFI\xfb" + b"\0" * 100, "a qcow2 disk image"),
    ],
    ids=["elf", "squashfs", "unit", "text", "empty", "qcow2"],
)
def test_not_an_image(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "result"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="is not a Docker image archive") as raised:
        inspect_archive(path)
    assert what in str(raised.value)
    assert "dockerTools" in str(raised.value)  # the hint says what a docker output looks like


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "share").mkdir()
    with pytest.raises(UsageError, match=r"it is a directory \(bin/, share/\)"):
        inspect_archive(tmp_path)


def test_tar_without_manifest(tmp_path: Path) -> None:
    data, _ = make_archive(with_manifest=False)
    path = tmp_path / "image.tar"
    path.write_bytes(data)
    with pytest.raises(UsageError, match="no manifest.json"):
        inspect_archive(path)


def test_oci_layout_is_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        _add(archive, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(archive, "index.json", b"{}")
    path = tmp_path / "image.tar"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UsageError, match="OCI image layout"):
        inspect_archive(path)


def test_manifest_names_missing_config(tmp_path: Path) -> None:
    data, _ = make_archive(with_config=False)
    path = tmp_path / "image.tar"
    path.write_bytes(data)
    with pytest.raises(UsageError, match="names a config"):
        inspect_archive(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    data, _ = make_archive(manifest_last=True)
    path = tmp_path / "image.tar.gz"
    path.write_bytes(gzip.compress(data)[:200])
    with pytest.raises(UsageError, match="cannot be read as a tar archive"):
        inspect_archive(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        inspect_archive(tmp_path / "nothing")


def test_inspection_is_cached_on_disk(tmp_path: Path) -> None:
    """A script is run once: the next session reads the cached inspection."""
    data, image_id = make_archive()
    (tmp_path / "payload.tar").write_bytes(data)
    counter = tmp_path / "runs"
    script = tmp_path / "stream"
    script.write_text(f"#!/bin/sh\necho run >> {counter}\nexec cat {tmp_path / 'payload.tar'}\n")
    script.chmod(0o755)
    cache = tmp_path / "cache"
    assert inspect_archive(script, cache).id == image_id
    from pytest_flake import docker

    docker._INSPECTED.clear()  # as in a new session
    assert inspect_archive(script, cache).id == image_id
    assert counter.read_text().count("run") == 1
