"""VM images without daemons: the Arch recipe (download, checksum, cache) against a local
HTTP server on 127.0.0.1, the Debian recipe hash, user images, seeds and keys."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_flake import images, vm
from pytest_flake.errors import UsageError, VMError
from tests.httpserver import LoggingHTTPServer, serving
from tests.unit.built_images import built_debian_image

IMAGE = "latest/Arch-Linux-x86_64-cloudimg.qcow2"


@dataclass
class FakeMirror:
    """A mirror on 127.0.0.1 serving ``files``; ``hits`` counts GETs per path."""

    root: str
    files: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    server: LoggingHTTPServer | None = None
    after_get: Callable[[str], None] | None = None  # called after each GET with the path served

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def publish(self, content: bytes, *, claimed: str | None = None, checksum_only: bool = False) -> None:
        """Publish ``latest`` as Arch's mirrors do: the ``.SHA256`` file names the unversioned file.

        ``claimed`` is the hash the .SHA256 file says (default: the real one).
        """
        digest = claimed or hashlib.sha256(content).hexdigest()
        if not checksum_only:
            self.files[IMAGE] = content
        self.files[IMAGE + ".SHA256"] = f"{digest}  Arch-Linux-x86_64-cloudimg.qcow2\n".encode()

    def recipe(self) -> images.ArchRecipe:
        return images.ArchRecipe(url=self.url(IMAGE), sha256_url=self.url(IMAGE + ".SHA256"),
                             skip_units=("systemd-time-wait-sync.service",))


@pytest.fixture
def mirror() -> Iterator[FakeMirror]:
    state = FakeMirror(root="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            name = self.path.lstrip("/")
            state.hits[name] = state.hits.get(name, 0) + 1
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if state.after_get is not None:
                state.after_get(name)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as server:
        state.server = server
        state.root = f"http://127.0.0.1:{server.server_address[1]}"
        yield state


FAKE = b"QFI\xfb" + os.urandom(3 * 1024 * 1024)


SHA = IMAGE + ".SHA256"


def test_arch_downloads_checks_and_caches(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.publish(FAKE)
    image = images.fetch_arch(tmp_path, mirror.recipe())
    digest = hashlib.sha256(FAKE).hexdigest()
    assert image.name == "arch"
    # the checksum file names the unversioned file: the cached copy carries the hash
    assert image.disk == tmp_path / "arch" / f"Arch-Linux-x86_64-cloudimg-{digest[:16]}.qcow2"
    assert image.disk.read_bytes() == FAKE
    assert image.key == "arch-" + digest[:16]
    assert image.cloud_init and image.skip_units == ("systemd-time-wait-sync.service",)
    assert mirror.hits == {SHA: 1, IMAGE: 1}
    assert not list((tmp_path / "arch").glob("*.part"))

    again = images.fetch_arch(tmp_path, mirror.recipe())  # cached: only the checksum file is fetched
    assert again == image
    assert mirror.hits == {SHA: 2, IMAGE: 1}


def test_arch_new_version_replaces_the_old(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.publish(FAKE)
    old = images.fetch_arch(tmp_path, mirror.recipe())
    newer = FAKE[:-1] + b"!"
    mirror.publish(newer)
    new = images.fetch_arch(tmp_path, mirror.recipe())
    assert new.disk.name == f"Arch-Linux-x86_64-cloudimg-{hashlib.sha256(newer).hexdigest()[:16]}.qcow2"
    assert new.disk.read_bytes() == newer
    assert new.key != old.key
    assert not old.disk.exists()
    assert mirror.hits[IMAGE] == 2


def test_arch_release_moving_between_the_downloads_is_downloaded_once_more(mirror: FakeMirror,
                                                                           tmp_path: Path) -> None:
    """The checksum file was read before a release, the image after it: the second try matches."""
    newer = FAKE[:-1] + b"!"
    mirror.publish(FAKE, checksum_only=True)
    mirror.files[IMAGE] = newer  # the link moved after the checksum file was read

    def release_done(name: str) -> None:
        if name == IMAGE:
            mirror.publish(newer, checksum_only=True)

    mirror.after_get = release_done
    image = images.fetch_arch(tmp_path, mirror.recipe())
    assert image.disk.read_bytes() == newer and image.key == "arch-" + hashlib.sha256(newer).hexdigest()[:16]
    assert mirror.hits == {SHA: 2, IMAGE: 2}
    assert sorted(p.name for p in (tmp_path / "arch").iterdir()) == [image.disk.name, image.disk.name + ".sha256"]


def test_arch_checksum_mismatch_keeps_nothing(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.publish(FAKE, claimed="0" * 64)
    with pytest.raises(VMError, match="checksum mismatch") as err:
        images.fetch_arch(tmp_path, mirror.recipe())
    assert "0" * 64 in str(err.value) and hashlib.sha256(FAKE).hexdigest() in str(err.value)
    assert "downloaded twice" in str(err.value)
    assert mirror.hits == {SHA: 2, IMAGE: 2}  # once more before giving up, not more
    assert list((tmp_path / "arch").iterdir()) == []


def test_arch_offline_uses_the_cache_or_says_what_to_do(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.publish(FAKE)
    recipe = mirror.recipe()
    with pytest.raises(VMError, match="unreachable and nothing is cached") as err:
        images.fetch_arch(tmp_path / "empty", images.ArchRecipe(url=mirror.url("gone"), sha256_url=mirror.url("gone")))
    assert "--vm-image debian" in str(err.value)
    cached = images.fetch_arch(tmp_path, recipe)
    assert mirror.server is not None
    mirror.server.shutdown()
    mirror.server.server_close()
    offline = images.fetch_arch(tmp_path, recipe)
    assert offline.disk == cached.disk and offline.key == cached.key


def test_download_failure_leaves_no_partial_file(mirror: FakeMirror, tmp_path: Path) -> None:
    with pytest.raises(VMError, match="404"):
        images.download(mirror.url("missing.qcow2"), tmp_path / "x.qcow2")
    assert list(tmp_path.iterdir()) == []


def test_download_needs_space(mirror: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror.files["big.qcow2"] = FAKE
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1024))
    with pytest.raises(VMError, match="no space for"):
        images.download(mirror.url("big.qcow2"), tmp_path / "big.qcow2")
    assert not (tmp_path / "big.qcow2").exists()


def test_download_hands_its_progress_to_the_callback(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.publish(FAKE)
    seen: list[images.Progress] = []
    image = images.fetch_arch(tmp_path, mirror.recipe(), progress=seen.append)
    assert image.disk.read_bytes() == FAKE
    assert [p.percent for p in seen] == [33, 66, 99, 100, 100]  # a MiB at a time (and 4 bytes), then the end
    assert [p.finished for p in seen] == [False, False, False, False, True]
    assert {p.total for p in seen} == {len(FAKE)} and seen[-1].done == len(FAKE)
    assert seen[0].what == f"downloading {image.disk.name}"
    assert seen[-1].bar() == f"downloading {image.disk.name}: [{'#' * 25}] 100% of 3 MiB"
    assert seen[0].bar().endswith(f"[{'#' * 8:<25}]  33% of 3 MiB")


def test_download_without_a_callback_logs_every_ten_percent(mirror: FakeMirror, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    mirror.files["big.qcow2"] = FAKE * 4  # 12 MiB: a MiB at a time is 8%
    caplog.set_level("INFO", logger="pytest_flake")
    images.download(mirror.url("big.qcow2"), tmp_path / "big.qcow2")
    shares = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading big.qcow2")]
    # a line each time the tens change (41% and 49% share one), none for the end
    assert [int(line.split(": ")[1].split("%")[0]) for line in shares] == [8, 16, 24, 33, 41, 58, 66, 74, 83, 91, 100]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what Arch's latest/Arch-Linux-x86_64-cloudimg.qcow2.SHA256 holds: the unversioned name
        ("ab" * 32 + "  Arch-Linux-x86_64-cloudimg.qcow2\n", ("ab" * 32, "Arch-Linux-x86_64-cloudimg.qcow2")),
        ("ab" * 32 + "  Arch-Linux-x86_64-cloudimg-20250101.1.qcow2\n",
         ("ab" * 32, "Arch-Linux-x86_64-cloudimg-20250101.1.qcow2")),
        ("cd" * 32 + " *image.img\n", ("cd" * 32, "image.img")),
        ("# comment\n" + "AB" * 32 + "  notes.txt\n" + "ef" * 32 + "  disk.qcow2\n", ("ef" * 32, "disk.qcow2")),
    ],
)
def test_parse_sha256_file(text: str, expected: tuple[str, str]) -> None:
    assert images.parse_sha256_file(text) == expected


def test_parse_sha256_file_prefers_the_downloaded_name() -> None:
    text = "ab" * 32 + "  Arch-Linux-x86_64-basic.qcow2\n" + "cd" * 32 + "  Arch-Linux-x86_64-cloudimg.qcow2\n"
    assert images.parse_sha256_file(text, "Arch-Linux-x86_64-cloudimg.qcow2") == ("cd" * 32,
                                                                              "Arch-Linux-x86_64-cloudimg.qcow2")


def test_parse_sha256_file_without_entries() -> None:
    with pytest.raises(VMError, match="names no image"):
        images.parse_sha256_file("<html>not found</html>")


def test_the_shipped_arch_recipe() -> None:
    recipe = images.ArchRecipe.load()
    assert recipe.url.startswith("https://") and recipe.sha256_url == recipe.url + ".SHA256"
    for unit in ("systemd-time-wait-sync.service", "pacman-init.service",
                 "archlinux-keyring-wkd-sync.service", "systemd-networkd-wait-online.service",
                 "reflector-init.service"):
        assert unit in recipe.skip_units


def test_debian_recipe_hash_follows_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(vm.RECIPES, tmp_path / "vms")
    monkeypatch.setattr("pytest_flake.images.debian.RECIPES", tmp_path / "vms")
    before = images.debian_recipe_hash()
    assert images.debian_image_dir(tmp_path) == tmp_path / f"debian-{before}"
    packages = tmp_path / "vms" / "debian" / "packages.txt"
    packages.write_text(packages.read_text() + "curl\n")
    assert images.debian_recipe_hash() != before


def test_debian_recipe_has_what_portable_services_need() -> None:
    packages = (vm.RECIPES / "debian" / "packages.txt").read_text().split()
    for name in ("systemd", "systemd-container", "dbus", "openssh-server", "linux-image-cloud-amd64"):
        assert name in packages


def test_cached_debian_image_is_used_without_building(tmp_path: Path) -> None:
    keys = "ssh-ed25519 AAAAC3Nza root@pf-debian\nssh-rsa AAAAB3 root@pf-debian\n"
    folder = built_debian_image(tmp_path, hostkeys=keys)
    image = images.resolve_image("debian", tmp_path)
    assert image.kernel == folder / "vmlinuz" and image.cmdline == "root=/dev/vda console=ttyS0"
    assert image.hostkeys == ("ssh-ed25519 AAAAC3Nza", "ssh-rsa AAAAB3")
    assert image.key == folder.name and not image.cloud_init


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_user_image_path(tmp_path: Path) -> None:
    disk = tmp_path / "mine.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = images.resolve_image(str(disk), tmp_path / "cache")
    assert image.disk == disk and image.disk_format == "qcow2" and image.cloud_init
    assert image.kernel is None
    with pytest.raises(UsageError, match="neither arch, debian"):
        images.resolve_image(str(tmp_path / "nope.qcow2"), tmp_path / "cache")


def test_user_image_url_is_downloaded_once(mirror: FakeMirror, tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    raw = b"\0" * (1024 * 1024)
    mirror.files["custom.img"] = raw
    first = images.resolve_image(mirror.url("custom.img"), tmp_path)
    second = images.resolve_image(mirror.url("custom.img"), tmp_path)
    assert first == second and first.disk_format == "raw" and first.disk.read_bytes() == raw
    assert mirror.hits["custom.img"] == 1


def test_recipes_are_found_in_a_checkout_and_in_a_wheel_layout(tmp_path: Path) -> None:
    """``vms/`` sits beside the package in a checkout and inside it (``pytest_flake/vms``) when installed."""
    import sys

    root = Path(__file__).resolve().parents[2]
    code = "import pytest_flake.vm as v; print(v.RECIPES)"
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_FLAKE_VMS"}

    def recipes(path: Path) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**env, "PYTHONPATH": str(path)}, cwd=tmp_path).stdout.strip()

    assert recipes(root) == str(root / "vms")
    installed = tmp_path / "site"
    shutil.copytree(root / "pytest_flake", installed / "pytest_flake",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "vms", installed / "pytest_flake" / "vms")
    assert recipes(installed) == str(installed / "pytest_flake" / "vms")
