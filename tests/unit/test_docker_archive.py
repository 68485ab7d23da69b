"""Image archive inspection, with small archives made here: no daemon needed."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_flake import docker
from pytest_flake.docker import KIND_SCRIPT, KIND_TAR, inspect_archive
from pytest_flake.errors import DockerError, MissingToolError, UsageError

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
    assert "cannot read conf.json" in "".join(getattr(raised.value, "__notes__", []))


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
    docker.forget_inspections()  # as in a new session
    assert inspect_archive(script, cache).id == image_id
    assert counter.read_text().count("run") == 1


# --- the shapes of nixpkgs' dockerTools ---------------------------------------------------------------------
needs_zstandard = pytest.mark.skipif(importlib.util.find_spec("zstandard") is None,
                                     reason="the zstandard module (pytest-flake[docker])")
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd program")


def _zstd(data: bytes) -> bytes:
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is None and shutil.which("zstd") is None,
                    reason="neither zstandard nor zstd")
def test_zstd_archive(tmp_path: Path) -> None:
    """buildLayeredImage { compressor = "zstd"; }: NAME.tar.zst; the daemon gets the plain tar."""
    data, image_id = make_archive(manifest_last=True)
    path = tmp_path / "web-server.tar.zst"
    path.write_bytes(_zstd(data))
    archive = inspect_archive(path)
    assert (archive.kind, archive.compression, archive.id) == (KIND_TAR, "zstd", image_id)
    assert archive.what == "a zstd docker-archive"
    with archive.stream() as chunks:
        assert b"".join(chunks) == data


@needs_zstd
def test_zstd_without_the_module_uses_the_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, image_id = make_archive(manifest_last=True)
    path = tmp_path / "web-server.tar.zst"
    path.write_bytes(_zstd(data))
    _without_zstandard(monkeypatch)
    assert inspect_archive(path).id == image_id
    with inspect_archive(path).stream() as chunks:
        assert b"".join(chunks) == data


@needs_zstd
def test_zstd_program_stopped_early_is_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inspection stops reading once it has the manifest and config: zstd is stopped, not reported."""
    data, image_id = make_archive(manifest_last=False)
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w") as outer:
        for member in tarfile.open(fileobj=io.BytesIO(data)):
            content = tarfile.open(fileobj=io.BytesIO(data)).extractfile(member.name)
            assert content is not None, member.name  # make_archive writes regular files only
            outer.addfile(member, io.BytesIO(content.read()))
        _add(outer, "zzz/layer.tar", os.urandom(4 << 20))  # after the config: never read
    path = tmp_path / "web-server.tar.zst"
    path.write_bytes(_zstd(big.getvalue()))
    _without_zstandard(monkeypatch)
    assert inspect_archive(path).id == image_id


def test_zstd_with_neither_module_nor_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "web-server.tar.zst"
    path.write_bytes(b"(\xb5/\xfd" + b"\0" * 64)
    _without_zstandard(monkeypatch)
    monkeypatch.setattr("pytest_flake.docker.archive.shutil.which", lambda name: None)
    with pytest.raises(MissingToolError) as raised:
        inspect_archive(path)
    assert str(raised.value) == (f"{path} is zstd-compressed and neither the zstandard module nor the zstd program "
                                 "is installed (pip install 'pytest-flake[docker]' (it brings the zstandard module), "
                                 "or install the zstd program)")


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is None and shutil.which("zstd") is None,
                    reason="neither zstandard nor zstd")
def test_truncated_zstd(tmp_path: Path) -> None:
    data, _ = make_archive(manifest_last=True)
    path = tmp_path / "web-server.tar.zst"
    path.write_bytes(_zstd(data)[:100])
    with pytest.raises(UsageError, match="cannot be read as a tar archive"):
        inspect_archive(path)


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is None and shutil.which("zstd") is None,
                    reason="neither zstandard nor zstd")
def test_directory_with_a_zstd_archive_inside(tmp_path: Path) -> None:
    data, image_id = make_archive()
    (tmp_path / "web-server.tar.zst").write_bytes(_zstd(data))
    assert inspect_archive(tmp_path).id == image_id


def _without_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real(name, package)

    monkeypatch.setattr("pytest_flake.docker.archive.importlib.import_module", import_module)


def make_legacy_archive() -> tuple[bytes, str]:
    """dockerTools.buildImage's layout: '.', LAYERID/{VERSION,json,layer.tar}, CONFIG.json, manifest.json
    (jq's indented output), repositories; sorted by name, so the layer comes first."""
    layer = b"\0" * 1024
    diff_id = hashlib.sha256(layer).hexdigest()
    config = (json.dumps({**CONFIG, "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}) + "\n").encode()
    digest = hashlib.sha256(config).hexdigest()
    layer_json = json.dumps({"config": CONFIG["config"], "checksum": f"tarsum.v1+sha256:{diff_id}"}).encode()
    layer_id = hashlib.sha256(layer_json).hexdigest()
    manifest = json.dumps([{"RepoTags": ["web-server:1.0"], "Layers": [f"{layer_id}/layer.tar"],
                            "Config": f"{digest}.json"}], indent=2).encode() + b"\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in (".", layer_id):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        members = {f"{layer_id}/VERSION": b"1.0", f"{layer_id}/json": layer_json, f"{layer_id}/layer.tar": layer,
                   f"{digest}.json": config, "manifest.json": manifest,
                   "repositories": json.dumps({"web-server": {"1.0": layer_id}}).encode()}
        for name in sorted(members):
            _add(archive, name, members[name])
    return buffer.getvalue(), f"sha256:{digest}"


def test_legacy_build_image_layout(tmp_path: Path) -> None:
    data, image_id = make_legacy_archive()
    path = tmp_path / "docker-image-web-server.tar.gz"
    path.write_bytes(gzip.compress(data))
    archive = inspect_archive(path)
    assert (archive.kind, archive.compression, archive.id, archive.tags) == (KIND_TAR, "gzip", image_id,
                                                                            ("web-server:1.0",))
    assert len(archive.diff_ids) == 1


def test_stream_layered_image_layout(tmp_path: Path) -> None:
    """stream_layered_image.py: CHECKSUM/layer.tar members, then CONFIG.json, manifest.json last (indent=4)."""
    layer = b"\0" * 2048
    checksum = hashlib.sha256(layer).hexdigest()
    config = json.dumps({**CONFIG, "rootfs": {"diff_ids": [f"sha256:{checksum}"], "type": "layers"}},
                        indent=4).encode()
    digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{digest}.json", "RepoTags": ["web-server:1.0"],
                            "Layers": [f"{checksum}/layer.tar"]}], indent=4).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as archive:
        _add(archive, f"{checksum}/layer.tar", layer)
        _add(archive, f"{digest}.json", config)
        _add(archive, "manifest.json", manifest)
    (tmp_path / "image.tar").write_bytes(buffer.getvalue())
    script = tmp_path / "stream-web-server"
    script.write_text(f"#!/bin/sh\necho 'Creating layer 1 from paths: [...]' >&2\nexec cat {tmp_path / 'image.tar'}\n")
    script.chmod(0o755)
    image = inspect_archive(script)
    assert (image.kind, image.id, image.diff_ids) == (KIND_SCRIPT, f"sha256:{digest}", (f"sha256:{checksum}",))
